//! The operator's notices on the server's side (PROTOCOL.md §17): the
//! notice key, the log file `dak admin notice` appends to, and the
//! `NoticeBoard` every connection reads from.
//!
//! Invariants:
//! - The log lives in a file of its own, not in the store, so notices are
//!   published and served while the store is down: that is when they are
//!   needed most. A record is a 4-byte big-endian length and an encoded
//!   `SignedNotice`; targeted notices' bodies are records of an encoded
//!   `TargetedNotice` in a second file beside it (`<log>.targeted`).
//! - Only `append` writes the files, under an exclusive lock, after
//!   checking the whole log with the notice key, and each append is
//!   fsynced before it returns. A torn last record (a crash mid-append)
//!   is ignored by readers and cut off by the next append.
//! - The board holds only entries that verify, in order, from index 0: a
//!   record that does not (a foreign key, an edited file) stops the reading
//!   there, with a warning, and nothing after it is served.
//! - The board re-reads the files when their size changes (polled each
//!   second) and then wakes every connection's session, which pushes the
//!   new entries to its device.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use dak_proto::notices::{NOTICES_PER_PAGE, NoticeChain, decode_signed_notice};
use dak_proto::v1;
use ed25519_dalek::{SigningKey, VerifyingKey};
use prost::Message;
use tokio::sync::watch;

/// How often the board looks at the files for new records.
const POLL: Duration = Duration::from_secs(1);
/// The most bytes one record may claim (a notice's own limit, with room).
const MAX_RECORD: usize = dak_proto::notices::MAX_NOTICE_BYTES + 64;
/// The most entry bytes in one `NoticeLog` frame: well inside the
/// protocol's frame limit, whatever the entries' sizes.
const PAGE_BYTES: usize = dak_proto::MAX_FRAME_BYTES / 4;

/// Reads the notice key, making one (mode 0600) if there is none yet.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                anyhow::anyhow!(
                    "{} is not a notice key (32 bytes); move it away to make a new one",
                    path.display()
                )
            })?;
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options
                .open(path)
                .with_context(|| format!("cannot create the notice key {}", path.display()))?;
            file.write_all(&key.to_bytes())?;
            file.sync_all()?;
            tracing::info!(path = %path.display(), "made a signing key (the notice key or the key directory's VRF key)");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read the notice key {}", path.display())),
    }
}

/// Reads the key without making one (the admin commands: the server makes it).
pub fn read_key(path: &Path) -> Result<SigningKey> {
    if !path.exists() {
        bail!(
            "no notice key at {}: start the server once (it makes the key), or give --data",
            path.display()
        );
    }
    load_or_create_key(path)
}

/// The file of targeted notices beside a log.
pub fn targeted_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".targeted");
    PathBuf::from(name)
}

/// Whether `rest` (what follows the complete records) is an append cut
/// short: shorter than the length its prefix announces, or zeros.
fn torn_tail(rest: &[u8]) -> bool {
    if rest.iter().all(|b| *b == 0) || rest.len() < 4 {
        return true;
    }
    let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
    len <= MAX_RECORD && rest.len() - 4 < len
}

/// Complete records from `bytes`; the length of the complete part.
fn records(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 4 {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len > MAX_RECORD || bytes.len() - at - 4 < len {
            break;
        }
        out.push(&bytes[at + 4..at + 4 + len]);
        at += 4 + len;
    }
    (out, at)
}

fn read_all(path: &Path) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// A log as read and checked: its verified entries and where the verified
/// part of the file ends.
#[derive(Default, Clone)]
pub struct CheckedLog {
    pub entries: Vec<v1::SignedNotice>,
    pub notices: Vec<v1::OperatorNotice>,
    pub chain: NoticeChain,
    pub good_bytes: usize,
    /// Why reading stopped before the file's end, if it did.
    pub problem: Option<String>,
    /// What stopped it is an append cut short (`torn_tail`): harmless, and
    /// cut off by the next append; any other problem stops appends.
    pub torn: bool,
}

/// Reads and checks a log file with the notice key.
pub fn read_log(path: &Path, key: &VerifyingKey) -> Result<CheckedLog> {
    let bytes = read_all(path)?;
    let (recs, _) = records(&bytes);
    let mut log = CheckedLog::default();
    for rec in recs {
        let checked = decode_signed_notice(rec).and_then(|e| {
            let n = log.chain.append(key, &e)?;
            Ok((e, n))
        });
        match checked {
            Ok((e, n)) => {
                log.good_bytes += 4 + rec.len();
                log.entries.push(e);
                log.notices.push(n);
            }
            Err(_) if torn_tail(&bytes[log.good_bytes..]) => break,
            Err(err) => {
                log.problem = Some(format!(
                    "entry {} of {}: {err}",
                    log.entries.len(),
                    path.display()
                ));
                return Ok(log);
            }
        }
    }
    if log.good_bytes < bytes.len() {
        log.torn = torn_tail(&bytes[log.good_bytes..]);
        log.problem = Some(if log.torn {
            format!(
                "{} ends in an incomplete record (an append cut short)",
                path.display()
            )
        } else {
            format!("{} holds a record this version cannot read", path.display())
        });
    }
    Ok(log)
}

/// Targeted notices by account, from their file; only those whose log
/// entry (already checked) commits to them.
fn read_targeted(
    path: &Path,
    log: &CheckedLog,
) -> Result<HashMap<String, Vec<v1::TargetedNotice>>> {
    let bytes = read_all(path)?;
    let mut out: HashMap<String, Vec<v1::TargetedNotice>> = HashMap::new();
    for rec in records(&bytes).0 {
        let Ok(t) = v1::TargetedNotice::decode(rec) else {
            continue;
        };
        let Some(entry) = log.notices.get(t.index as usize) else {
            continue; // its log entry is not (yet) readable
        };
        let Ok(body) = v1::TargetedNoticeBody::decode(t.sealed.as_slice()) else {
            continue;
        };
        if dak_proto::notices::open_targeted(entry, &t.sealed, &body.phone).is_ok() {
            out.entry(body.phone).or_default().push(t);
        }
    }
    Ok(out)
}

fn write_record(file: &mut File, bytes: &[u8]) -> Result<()> {
    let mut rec = Vec::with_capacity(4 + bytes.len());
    rec.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    rec.extend_from_slice(bytes);
    file.write_all(&rec)?;
    Ok(())
}

/// Appends one notice: `make` gets the checked log and returns the notice
/// (its index and prev_hash are filled in here) and, for a targeted one,
/// the sealed body. Returns the notice as signed.
pub fn append(
    path: &Path,
    key: &SigningKey,
    make: impl FnOnce(&CheckedLog) -> Result<(v1::OperatorNotice, Option<Vec<u8>>)>,
) -> Result<v1::OperatorNotice> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot open the notice log {}", path.display()))?;
    file.lock()
        .with_context(|| format!("cannot lock {}", path.display()))?;
    let log = read_log(path, &key.verifying_key())?;
    if let Some(problem) = &log.problem
        && !log.torn
    {
        bail!("the notice log does not check, so nothing is added to it: {problem}");
    }
    let (mut notice, sealed) = make(&log)?;
    notice.index = log.chain.length;
    notice.prev_hash = log.chain.head.to_vec();
    if let Some(sealed) = &sealed {
        notice.commitment = dak_proto::notices::commitment(sealed).to_vec();
    }
    let signed = dak_proto::notices::sign_notice(key, &notice)?;
    if let Some(sealed) = sealed {
        // The body first: once the entry is in the log, its body is there.
        // Under the log's lock; a torn tail (a crash mid-append) is cut.
        let tpath = targeted_path(path);
        let existing = read_all(&tpath)?;
        let complete = records(&existing).1;
        if complete < existing.len() && !torn_tail(&existing[complete..]) {
            bail!(
                "{} holds a record this version cannot read; nothing is added (move it away to start a new one)",
                tpath.display()
            );
        }
        let mut t = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&tpath)
            .with_context(|| format!("cannot open {}", tpath.display()))?;
        t.set_len(complete as u64)?;
        t.seek(SeekFrom::Start(complete as u64))?;
        write_record(
            &mut t,
            &v1::TargetedNotice {
                index: notice.index,
                sealed,
            }
            .encode_to_vec(),
        )?;
        t.sync_all()?;
    }
    // Cut a torn tail, then append.
    file.set_len(log.good_bytes as u64)?;
    file.seek(SeekFrom::Start(log.good_bytes as u64))?;
    write_record(&mut file, &signed.encode_to_vec())?;
    file.sync_all()?;
    Ok(notice)
}

/// What the server serves: the checked log, the targeted notices, and a
/// counter that wakes sessions when the log grows.
pub struct NoticeBoard {
    key: VerifyingKey,
    path: PathBuf,
    inner: RwLock<Board>,
    length: watch::Sender<u64>,
}

#[derive(Default)]
struct Board {
    log: Arc<CheckedLog>,
    targeted: HashMap<String, Vec<v1::TargetedNotice>>,
    sizes: (FileStamp, FileStamp),
}

type FileStamp = (u64, Option<std::time::SystemTime>);

impl NoticeBoard {
    /// Loads the key (making it at first start) and the log.
    pub fn open(key_path: &Path, log_path: &Path) -> Result<Arc<NoticeBoard>> {
        let key = load_or_create_key(key_path)?.verifying_key();
        let (length, _) = watch::channel(0);
        let board = Arc::new(NoticeBoard {
            key,
            path: log_path.to_owned(),
            inner: RwLock::new(Board::default()),
            length,
        });
        board.refresh()?;
        Ok(board)
    }

    /// Re-reads the files if their sizes changed; wakes sessions on growth.
    pub fn refresh(&self) -> Result<()> {
        // Size and modification time: a file replaced by one of the same
        // size is read again too.
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| (m.len(), m.modified().ok()))
                .unwrap_or((0, None))
        };
        let tpath = targeted_path(&self.path);
        let sizes = (stamp(&self.path), stamp(&tpath));
        let empty = ((0, None), (0, None));
        if self.inner.read().expect("board lock").sizes == sizes && sizes != empty {
            return Ok(());
        }
        let log = read_log(&self.path, &self.key)?;
        match &log.problem {
            // Seen while `dak admin notice` is writing: not worth a warning.
            Some(problem) if log.torn => tracing::debug!(%problem, "notice log tail torn"),
            Some(problem) => tracing::warn!(%problem, "the notice log is served only up to here"),
            None => {}
        }
        let targeted = read_targeted(&tpath, &log)?;
        let length = log.chain.length;
        {
            let mut b = self.inner.write().expect("board lock");
            b.log = Arc::new(log);
            b.targeted = targeted;
            b.sizes = sizes;
        }
        self.length.send_if_modified(|l| {
            let grew = *l != length;
            *l = length;
            grew
        });
        Ok(())
    }

    /// Polls the files until the process ends.
    pub fn spawn_poll(self: &Arc<Self>) {
        let board = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(POLL).await;
                let Some(board) = board.upgrade() else { return };
                let b = board.clone();
                // File reads off the async threads.
                match tokio::task::spawn_blocking(move || b.refresh()).await {
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the notice log"),
                    Err(e) => tracing::warn!(error = %e, "reading the notice log failed"),
                    Ok(Ok(())) => {}
                }
            }
        });
    }

    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    /// The checked log as of now.
    pub fn log(&self) -> Arc<CheckedLog> {
        self.inner.read().expect("board lock").log.clone()
    }

    /// Wakes when the log's length changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.length.subscribe()
    }

    /// Up to a page of entries from `from` on (at most `NOTICES_PER_PAGE`
    /// and `PAGE_BYTES`, at least one), with the log's length and head.
    pub fn page(&self, from: u64) -> v1::NoticeLog {
        let log = self.log();
        let from = (from as usize).min(log.entries.len());
        let mut entries = Vec::new();
        let mut size = 0;
        for e in log.entries[from..].iter().take(NOTICES_PER_PAGE) {
            size += e.encoded_len() + 8;
            if size > PAGE_BYTES && !entries.is_empty() {
                break;
            }
            entries.push(e.clone());
        }
        v1::NoticeLog {
            entries,
            length: log.chain.length,
            head: log.chain.head.to_vec(),
        }
    }

    /// An account's targeted notices with log index in `from..to`, those
    /// published since `since_ms` only (a number given to someone new is
    /// not told about its previous owner's attack).
    pub fn targeted_for(
        &self,
        phone: &str,
        from: u64,
        to: u64,
        since_ms: i64,
    ) -> Vec<v1::TargetedNotice> {
        let b = self.inner.read().expect("board lock");
        let Some(list) = b.targeted.get(phone) else {
            return Vec::new();
        };
        list.iter()
            .filter(|t| (from..to).contains(&t.index))
            .filter(|t| {
                b.log
                    .notices
                    .get(t.index as usize)
                    .is_some_and(|n| n.published_ms >= since_ms)
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use v1::{NoticeState, OperatorNoticeKind};

    fn incident(title: &str) -> v1::OperatorNotice {
        v1::OperatorNotice {
            kind: OperatorNoticeKind::Incident as i32,
            state: NoticeState::Ongoing as i32,
            title: title.into(),
            ..Default::default()
        }
    }

    #[test]
    fn appended_notices_are_read_back_checked_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let key = load_or_create_key(&dir.path().join("k")).unwrap();
        let again = load_or_create_key(&dir.path().join("k")).unwrap();
        assert_eq!(key.to_bytes(), again.to_bytes(), "the key is kept");
        let log = dir.path().join("notices.log");
        for t in ["one", "two"] {
            append(&log, &key, |_| Ok((incident(t), None))).unwrap();
        }
        let read = read_log(&log, &key.verifying_key()).unwrap();
        assert_eq!(read.chain.length, 2);
        assert!(read.problem.is_none());
        // A crash mid-append leaves half a record.
        let mut f = OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(&[0, 0, 1, 0, 9, 9]).unwrap();
        let torn = read_log(&log, &key.verifying_key()).unwrap();
        assert_eq!(torn.chain.length, 2);
        assert!(torn.problem.is_some());
        // Or zeros (space allocated, never written).
        f.write_all(&[0; 64]).unwrap();
        let zeros = read_log(&log, &key.verifying_key()).unwrap();
        assert_eq!(zeros.chain.length, 2);
        assert!(zeros.problem.unwrap().contains("incomplete record"));
        let third = append(&log, &key, |_| Ok((incident("three"), None))).unwrap();
        assert_eq!(third.index, 2);
        let read = read_log(&log, &key.verifying_key()).unwrap();
        assert_eq!(read.chain.length, 3);
        assert!(read.problem.is_none());
        // Another key's log is not extended.
        let other = SigningKey::from_bytes(&[9; 32]);
        assert!(append(&log, &other, |_| Ok((incident("x"), None))).is_err());
    }

    #[test]
    fn a_page_of_large_notices_stays_well_inside_a_frame() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("notice.key");
        let log = dir.path().join("notices.log");
        let board = NoticeBoard::open(&key_path, &log).unwrap();
        let key = read_key(&key_path).unwrap();
        // Bengali text: three bytes a character, near the 8 KiB limit.
        let long = "অ".repeat(1200);
        for _ in 0..40 {
            append(&log, &key, |_| {
                let mut n = incident("বড়");
                n.what_happened = long.clone();
                n.advice = long.clone();
                Ok((n, None))
            })
            .unwrap();
        }
        board.refresh().unwrap();
        let mut from = 0;
        while from < 40 {
            let page = board.page(from);
            assert!(!page.entries.is_empty());
            assert!(page.encoded_len() < dak_proto::MAX_FRAME_BYTES / 2);
            from += page.entries.len() as u64;
        }
        assert!(board.page(0).entries.len() < 40);
    }

    #[test]
    fn the_board_serves_pages_and_targeted_notices_to_their_account_only() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("notice.key");
        let log = dir.path().join("notices.log");
        let board = NoticeBoard::open(&key_path, &log).unwrap();
        assert_eq!(board.page(0).length, 0);
        let key = read_key(&key_path).unwrap();
        let mut rx = board.subscribe();
        append(&log, &key, |_| Ok((incident("one"), None))).unwrap();
        let body = v1::TargetedNoticeBody {
            nonce: vec![1; 16],
            phone: "+919800000001".into(),
            title: "You may have been targeted".into(),
            ..Default::default()
        }
        .encode_to_vec();
        append(&log, &key, |_| {
            Ok((
                v1::OperatorNotice {
                    kind: OperatorNoticeKind::TargetedAttack as i32,
                    state: NoticeState::Ongoing as i32,
                    ..Default::default()
                },
                Some(body.clone()),
            ))
        })
        .unwrap();
        board.refresh().unwrap();
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 2);
        let page = board.page(1);
        assert_eq!((page.entries.len(), page.length), (1, 2));
        assert_eq!(board.targeted_for("+919800000001", 0, 2, 0).len(), 1);
        assert!(board.targeted_for("+919800000002", 0, 2, 0).is_empty());
        assert!(board.targeted_for("+919800000001", 2, 3, 0).is_empty());
        assert!(board.targeted_for("+919800000001", 0, 1, 0).is_empty());
        assert!(
            board
                .targeted_for("+919800000001", 0, 2, i64::MAX)
                .is_empty(),
            "not for a device registered after it"
        );
    }
}
