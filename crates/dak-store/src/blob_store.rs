//! Where media blobs' bytes live: the `BlobStore` trait, a filesystem
//! backend in the data directory (the embedded default) and an
//! S3-compatible backend for clusters, through `object_store`. A blob is
//! stored as segments, each one object named by the blob's id, the
//! segment's offset and its write (`blobs/<hex id>/<offset>.<write>`, the
//! write a random number per request); the `Store` keeps which segments a
//! blob has, so a resumed upload adds segments and never rewrites what is
//! stored, two requests writing at one offset never touch each other's
//! object, and any node reads any blob.
//!
//! Invariants:
//! - `put` is whole or nothing: a segment is visible under its name only
//!   once every byte is durable (the filesystem backend writes a temporary
//!   file, fsyncs it and renames it; S3 PUTs are atomic). A crash leaves at
//!   most a temporary file, which no record names.
//! - `get` streams: memory per reader is one read buffer, whatever the
//!   segment's size.
//! - A full disk or bucket is `BlobStoreError::Full`, so the server can say
//!   so instead of "internal error".

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};

use crate::BlobSegment;

/// A stream of a segment's bytes.
pub type ByteStream = BoxStream<'static, Result<Bytes, BlobStoreError>>;

/// Bytes read from a file per step of a filesystem `get`.
const FS_READ_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BlobStoreError {
    #[error("the media store is full")]
    Full,
    #[error("segment {0} is missing from the media store")]
    Missing(String),
    #[error("media store: {0}")]
    Backend(String),
}

#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores a segment whole and durably.
    async fn put(&self, blob: &[u8], s: &BlobSegment, bytes: Bytes) -> Result<(), BlobStoreError>;
    /// Bytes `range` of a segment (relative to the segment's start).
    async fn get(
        &self,
        blob: &[u8],
        s: &BlobSegment,
        range: Range<u64>,
    ) -> Result<ByteStream, BlobStoreError>;
    /// Deletes a segment; one already gone is not an error.
    async fn delete(&self, blob: &[u8], s: &BlobSegment) -> Result<(), BlobStoreError>;
    /// The names of every object the blob has here, recorded or not (for
    /// an operator's check and the tests).
    async fn objects(&self, blob: &[u8]) -> Result<Vec<String>, BlobStoreError>;
    /// Where the bytes are, for the log and `--print-config`.
    fn describe(&self) -> String;
}

/// The object name of a segment, the same on every backend.
pub fn segment_key(blob: &[u8], s: &BlobSegment) -> String {
    format!("blobs/{}/{:020}.{:016x}", hex(blob), s.offset, s.write)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Segments as files under a directory (`DATA/media` by default).
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    pub fn open(root: &Path) -> Result<FsBlobStore, BlobStoreError> {
        std::fs::create_dir_all(root.join("blobs")).map_err(io)?;
        Ok(FsBlobStore {
            root: root.to_path_buf(),
        })
    }

    fn path(&self, blob: &[u8], s: &BlobSegment) -> PathBuf {
        self.root.join(segment_key(blob, s))
    }
}

fn io(e: std::io::Error) -> BlobStoreError {
    match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => BlobStoreError::Full,
        _ => BlobStoreError::Backend(e.to_string()),
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn put(&self, blob: &[u8], s: &BlobSegment, bytes: Bytes) -> Result<(), BlobStoreError> {
        let path = self.path(blob, s);
        tokio::task::spawn_blocking(move || -> Result<(), BlobStoreError> {
            use std::io::Write;
            let dir = path.parent().expect("a segment has a directory");
            std::fs::create_dir_all(dir).map_err(io)?;
            // The write's own name: no other request writes this file.
            let mut tmp = path.clone().into_os_string();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            let written = (|| {
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                std::fs::File::open(dir)?.sync_all()
            })();
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            written.map_err(io)
        })
        .await
        .map_err(|e| BlobStoreError::Backend(e.to_string()))?
    }

    async fn get(
        &self,
        blob: &[u8],
        s: &BlobSegment,
        range: Range<u64>,
    ) -> Result<ByteStream, BlobStoreError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let path = self.path(blob, s);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BlobStoreError::Missing(segment_key(blob, s)));
            }
            Err(e) => return Err(io(e)),
        };
        file.seek(std::io::SeekFrom::Start(range.start))
            .await
            .map_err(io)?;
        let left = range.end.saturating_sub(range.start);
        let stream =
            futures_util::stream::try_unfold((file, left), |(mut file, left)| async move {
                if left == 0 {
                    return Ok(None);
                }
                let want = left.min(FS_READ_BYTES as u64) as usize;
                let mut buf = vec![0u8; want];
                let mut got = 0;
                while got < want {
                    let n = file.read(&mut buf[got..]).await.map_err(io)?;
                    if n == 0 {
                        return Err(BlobStoreError::Backend(
                            "a segment is shorter than its record".into(),
                        ));
                    }
                    got += n;
                }
                Ok(Some((Bytes::from(buf), (file, left - want as u64))))
            });
        Ok(stream.boxed())
    }

    async fn delete(&self, blob: &[u8], s: &BlobSegment) -> Result<(), BlobStoreError> {
        let path = self.path(blob, s);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        // The blob's directory goes with its last segment.
        if let Some(dir) = path.parent() {
            let _ = tokio::fs::remove_dir(dir).await;
        }
        Ok(())
    }

    async fn objects(&self, blob: &[u8]) -> Result<Vec<String>, BlobStoreError> {
        let dir = self.root.join("blobs").join(hex(blob));
        let mut names = Vec::new();
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for e in entries.flatten() {
                    names.push(format!(
                        "blobs/{}/{}",
                        hex(blob),
                        e.file_name().to_string_lossy()
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        names.sort();
        Ok(names)
    }

    fn describe(&self) -> String {
        format!("files in {}", self.root.display())
    }
}

/// An S3-compatible bucket (AWS S3, Garage, MinIO, Ceph RGW, ...).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// `https://s3.example.com` or, for a server on this machine,
    /// `http://127.0.0.1:3900`; absent: AWS's endpoint for the region.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

pub struct S3BlobStore {
    store: Arc<dyn ObjectStore>,
    describe: String,
}

impl S3BlobStore {
    pub fn new(c: &S3Config) -> Result<S3BlobStore, BlobStoreError> {
        let mut builder = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&c.bucket)
            .with_region(&c.region)
            .with_access_key_id(&c.access_key_id)
            .with_secret_access_key(&c.secret_access_key);
        if let Some(endpoint) = &c.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let store = builder.build().map_err(s3)?;
        Ok(S3BlobStore {
            store: Arc::new(store),
            describe: format!(
                "S3 bucket {} at {}",
                c.bucket,
                c.endpoint.as_deref().unwrap_or("AWS")
            ),
        })
    }
}

fn s3(e: object_store::Error) -> BlobStoreError {
    match e {
        object_store::Error::NotFound { path, .. } => BlobStoreError::Missing(path),
        e => {
            let text = e.to_string();
            // S3 has no "disk full"; a server that runs out of room says
            // so in words (Garage, MinIO: "storage full", "no space").
            let lower = text.to_lowercase();
            if lower.contains("storage full")
                || lower.contains("no space")
                || lower.contains("quota")
            {
                BlobStoreError::Full
            } else {
                BlobStoreError::Backend(text)
            }
        }
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put(&self, blob: &[u8], s: &BlobSegment, bytes: Bytes) -> Result<(), BlobStoreError> {
        let path = object_store::path::Path::from(segment_key(blob, s));
        self.store
            .put(&path, bytes.into())
            .await
            .map(|_| ())
            .map_err(s3)
    }

    async fn get(
        &self,
        blob: &[u8],
        s: &BlobSegment,
        range: Range<u64>,
    ) -> Result<ByteStream, BlobStoreError> {
        let path = object_store::path::Path::from(segment_key(blob, s));
        let options = object_store::GetOptions {
            range: Some(object_store::GetRange::Bounded(range)),
            ..Default::default()
        };
        let got = self.store.get_opts(&path, options).await.map_err(s3)?;
        Ok(got.into_stream().map(|r| r.map_err(s3)).boxed())
    }

    async fn delete(&self, blob: &[u8], s: &BlobSegment) -> Result<(), BlobStoreError> {
        let path = object_store::path::Path::from(segment_key(blob, s));
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s3(e)),
        }
    }

    async fn objects(&self, blob: &[u8]) -> Result<Vec<String>, BlobStoreError> {
        use futures_util::TryStreamExt;
        let prefix = object_store::path::Path::from(format!("blobs/{}", hex(blob)));
        let mut names: Vec<String> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .map_err(s3)?;
        names.sort();
        Ok(names)
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(s: ByteStream) -> Vec<u8> {
        let parts: Vec<Bytes> = s.map(|b| b.unwrap()).collect().await;
        parts.concat()
    }

    fn seg(offset: u64, len: u64, write: u64) -> BlobSegment {
        BlobSegment { offset, len, write }
    }

    /// What every backend must do with a segment.
    async fn segment_round_trip(store: &dyn BlobStore, id: &[u8]) {
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let (first, second) = (seg(0, 200_000, 1), seg(200_000, 6, 2));
        store
            .put(id, &first, Bytes::from(bytes.clone()))
            .await
            .unwrap();
        store
            .put(id, &second, Bytes::from_static(b"second"))
            .await
            .unwrap();
        let whole = read_all(store.get(id, &first, 0..200_000).await.unwrap()).await;
        assert_eq!(whole, bytes);
        let part = read_all(store.get(id, &first, 70_000..70_010).await.unwrap()).await;
        assert_eq!(part, &bytes[70_000..70_010]);
        let got = read_all(store.get(id, &second, 1..6).await.unwrap()).await;
        assert_eq!(got, b"econd");
        // Another write at the same offset is another object: the first
        // is untouched, whatever the second holds.
        let rival = seg(200_000, 3, 3);
        store
            .put(id, &rival, Bytes::from_static(b"2nd"))
            .await
            .unwrap();
        assert_eq!(
            read_all(store.get(id, &second, 0..6).await.unwrap()).await,
            b"second"
        );
        assert_eq!(
            read_all(store.get(id, &rival, 0..3).await.unwrap()).await,
            b"2nd"
        );
        assert_eq!(store.objects(id).await.unwrap().len(), 3);
        for s in [first, second, rival] {
            store.delete(id, &s).await.unwrap();
            store.delete(id, &s).await.unwrap();
        }
        assert_eq!(store.objects(id).await.unwrap(), Vec::<String>::new());
        assert!(matches!(
            store.get(id, &first, 0..1).await,
            Err(BlobStoreError::Missing(_))
        ));
    }

    #[tokio::test]
    async fn the_filesystem_backend_keeps_segments() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        segment_round_trip(&store, &[3u8; 16]).await;
        assert!(!dir.path().join("blobs").join(hex(&[3u8; 16])).exists());
    }

    /// Against a real S3-compatible server (Garage, which
    /// `scripts/garage.sh` starts; or `DAK_TEST_S3_*`).
    #[tokio::test]
    async fn the_s3_backend_keeps_segments() {
        let config = crate::testing::test_s3();
        let store = S3BlobStore::new(&config).unwrap();
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&std::process::id().to_be_bytes().repeat(2));
        id[8..].copy_from_slice(
            &(std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos() as u64).to_be_bytes(),
        );
        segment_round_trip(&store, &id).await;
    }

    #[tokio::test]
    async fn the_filesystem_backend_stores_reads_ranges_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        let id = [9u8; 16];
        let s = seg(0, 200_000, 9);
        let bytes: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        store
            .put(&id, &s, Bytes::from(bytes.clone()))
            .await
            .unwrap();
        let whole = read_all(store.get(&id, &s, 0..200_000).await.unwrap()).await;
        assert_eq!(whole, bytes);
        let part = read_all(store.get(&id, &s, 70_000..70_010).await.unwrap()).await;
        assert_eq!(part, &bytes[70_000..70_010]);
        // A record longer than the file is an error, not short data.
        let mut long = store.get(&id, &s, 199_990..200_100).await.unwrap();
        let mut failed = false;
        while let Some(r) = long.next().await {
            failed |= r.is_err();
        }
        assert!(failed);
        store.delete(&id, &s).await.unwrap();
        store.delete(&id, &s).await.unwrap();
        assert!(matches!(
            store.get(&id, &s, 0..1).await,
            Err(BlobStoreError::Missing(_))
        ));
        assert!(!dir.path().join("blobs").join(hex(&id)).exists());
    }
}
