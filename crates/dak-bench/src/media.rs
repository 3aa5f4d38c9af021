//! The media scenario: one file of `--file-mb` MB, sealed and opened on
//! this machine (the client's encryption speed), then moved to and from
//! the server over its real listener (TLS unless --insecure) by Dak's own
//! transfer code (`dak_client::blobs`) and, alternately, by `curl` moving
//! the same bytes with the same tus PATCH and GET on the same listener: the
//! figure to compare with. Each round uploads and downloads once each way;
//! medians are quoted. The server's resident memory is sampled during
//! Dak's uploads and downloads: what one transfer costs it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dak_client::blobs::{self, BlobEndpoint};
use dak_client::{Attachment, CertTrust};
use dak_core::media::MediaKey;
use dak_proto::v1::{self, client_frame::Request, server_frame::Body};
use sha2::Digest;

use crate::device;
use crate::report::Report;
use crate::scenarios::Params;
use crate::target::Target;

/// Rounds of (Dak, curl) uploads and downloads; the medians are quoted.
const ROUNDS: usize = 3;

pub async fn run(
    target: &Target,
    p: &Params,
    progress: &(dyn Fn(String) + Sync),
) -> Result<Report> {
    let dir = tempfile::Builder::new()
        .prefix("dak-bench-media-")
        .tempdir()?;
    let bytes = p.file_mb * 1_000_000;
    let plain = dir.path().join("file.bin");
    progress(format!("writing a {} MB file", p.file_mb));
    write_file(&plain, bytes)?;

    // The client's side: sealing and opening, each timed alone.
    let key = MediaKey(rand::random());
    let sealed_path = dir.path().join("file.sealed");
    let started = Instant::now();
    let sealed = blobs::seal_file(&key, &plain, &sealed_path)?;
    let seal_secs = started.elapsed().as_secs_f64();
    let capability: [u8; 32] = rand::random();
    let attachment = |blob_id: Vec<u8>| Attachment {
        blob_id,
        capability: capability.to_vec(),
        key: key.0.to_vec(),
        sha256: sealed.sha256.to_vec(),
        size: sealed.size,
        ..Default::default()
    };
    let opened = dir.path().join("file.opened");
    let started = Instant::now();
    blobs::open_file(&attachment(vec![0; 16]), &sealed_path, &opened)?;
    let open_secs = started.elapsed().as_secs_f64();
    std::fs::remove_file(&opened)?;
    progress(format!(
        "sealed in {seal_secs:.2} s, opened in {open_secs:.2} s"
    ));

    let codes = device::Codes::new(target.outbox.clone());
    let me = device::register(
        &target.url,
        &codes,
        format!("+9198{:08}", rand::random::<u32>() % 100_000_000),
    )
    .await?;
    let mut conn = device::connect(&target.url, &me, None).await?;
    let endpoint = BlobEndpoint::new(&target.url, &CertTrust::FirstUse)?;
    let has_curl = Command::new("curl").arg("--version").output().is_ok();
    let (mut dak_up, mut curl_up, mut dak_down, mut curl_down) = (vec![], vec![], vec![], vec![]);
    let mut peak_up = 0u64;
    let mut peak_down = 0u64;
    for round in 1..=ROUNDS {
        progress(format!("round {round}/{ROUNDS}"));
        let request = Request::CreateBlob(v1::CreateBlob {
            length: sealed.length,
            sha256: sealed.sha256.to_vec(),
            capability_sha256: sha2::Sha256::digest(capability).to_vec(),
        });
        let Body::BlobSlot(a) = conn.call(request.clone()).await? else {
            bail!("no upload slot")
        };
        let Body::BlobSlot(b) = conn.call(request).await? else {
            bail!("no upload slot")
        };

        let base = target.rss_bytes().unwrap_or(0);
        let sampler = Sampler::start(target.pid());
        let started = Instant::now();
        endpoint
            .upload(&a.blob_id, &a.upload_token, &sealed_path, blobs::quiet())
            .await?;
        dak_up.push(started.elapsed().as_secs_f64());
        peak_up = peak_up.max(sampler.stop().await.saturating_sub(base));

        if has_curl {
            let url = endpoint.url(&b.blob_id);
            let started = Instant::now();
            curl(&[
                "-X",
                "PATCH",
                "-H",
                &format!("Authorization: Bearer {}", hex::encode(&b.upload_token)),
                "-H",
                "Tus-Resumable: 1.0.0",
                "-H",
                "Upload-Offset: 0",
                "-H",
                "Content-Type: application/offset+octet-stream",
                "--data-binary",
                &format!("@{}", sealed_path.display()),
                &url,
            ])?;
            curl_up.push(started.elapsed().as_secs_f64());
        }

        let part = dir.path().join("download.part");
        let _ = std::fs::remove_file(&part);
        let base = target.rss_bytes().unwrap_or(0);
        let sampler = Sampler::start(target.pid());
        let started = Instant::now();
        endpoint
            .download(&attachment(a.blob_id.clone()), &part, blobs::quiet())
            .await?;
        dak_down.push(started.elapsed().as_secs_f64());
        peak_down = peak_down.max(sampler.stop().await.saturating_sub(base));
        if std::fs::metadata(&part)?.len() != sealed.length {
            bail!("the download is not the file's length");
        }
        std::fs::remove_file(&part)?;

        if has_curl {
            let url = endpoint.url(&b.blob_id);
            let started = Instant::now();
            let curl_part = dir.path().join("curl.part");
            curl(&[
                "-H",
                &format!("Authorization: Bearer {}", hex::encode(capability)),
                "-o",
                curl_part.to_str().unwrap_or_default(),
                &url,
            ])?;
            curl_down.push(started.elapsed().as_secs_f64());
            std::fs::remove_file(&curl_part)?;
        }
        for id in [&a.blob_id, &b.blob_id] {
            conn.call(Request::DeleteBlob(v1::DeleteBlob {
                blob_id: id.clone(),
            }))
            .await?;
        }
    }
    conn.close().await;

    let mb = bytes as f64 / 1e6;
    let stored_mb = sealed.length as f64 / 1e6;
    let mut r = Report::new(
        "media",
        serde_json::json!({"file_mb": p.file_mb, "rounds": ROUNDS, "tls": p.tls}),
        "One file of --file-mb MB. Sealing (pad + ChaCha20-Poly1305 STREAM + SHA-256, file to file) and \
         opening (hash, then decrypt, file to file) timed once on this machine. Then ROUNDS rounds, each: \
         a Dak upload (dak_client::blobs, tus PATCH over reqwest with the device's TLS settings), a curl \
         upload of the same ciphertext (one PATCH), a Dak download (GET into a .part file) and a curl \
         download (GET into a file), on the server's one listener (TLS 1.3 unless --insecure), loopback. \
         MB/s are of the stored (padded) ciphertext, medians of the rounds. Server memory per transfer = \
         peak RSS (/proc, sampled every 20 ms) during one Dak transfer minus RSS just before.",
    );
    r.add("seal MB/s", mb / seal_secs, "MB/s");
    r.add("open MB/s", mb / open_secs, "MB/s");
    r.add("dak upload MB/s", stored_mb / median(&mut dak_up), "MB/s");
    r.add(
        "dak download MB/s",
        stored_mb / median(&mut dak_down),
        "MB/s",
    );
    if has_curl {
        r.add("curl upload MB/s", stored_mb / median(&mut curl_up), "MB/s");
        r.add(
            "curl download MB/s",
            stored_mb / median(&mut curl_down),
            "MB/s",
        );
        r.add(
            "upload: dak time / curl time",
            median(&mut dak_up) / median(&mut curl_up),
            "x",
        );
        r.add(
            "download: dak time / curl time",
            median(&mut dak_down) / median(&mut curl_down),
            "x",
        );
    }
    r.add("server memory during an upload", peak_up as f64 / 1e6, "MB");
    r.add(
        "server memory during a download",
        peak_down as f64 / 1e6,
        "MB",
    );
    r.server_cpu_seconds = target.cpu_seconds();
    Ok(r)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Pseudo-random bytes (not compressible), written in 1 MB steps.
fn write_file(path: &Path, bytes: u64) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x = 0x9e3779b97f4a7c15u64;
    let mut buf = vec![0u8; 1_000_000];
    let mut left = bytes;
    while left > 0 {
        for b in buf.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

fn curl(args: &[&str]) -> Result<()> {
    let out = Command::new("curl")
        .args(["-sS", "-k", "--fail", "--http1.1"])
        .args(args)
        .output()
        .context("cannot run curl")?;
    if !out.status.success() {
        bail!("curl failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Samples a process's resident memory until stopped; returns the peak.
struct Sampler {
    stop: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<u64>,
}

impl Sampler {
    fn start(pid: Option<u32>) -> Sampler {
        let stop = Arc::new(AtomicU64::new(0));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak = 0;
            while flag.load(Relaxed) == 0 {
                if let Some(rss) = pid.and_then(rss_of) {
                    peak = peak.max(rss);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        });
        Sampler { stop, task }
    }

    async fn stop(self) -> u64 {
        self.stop.store(1, Relaxed);
        self.task.await.unwrap_or(0)
    }
}

fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(PathBuf::from(format!("/proc/{pid}/status"))).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}
