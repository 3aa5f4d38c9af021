//! Encrypted media through the real binary and real sockets: files in 1:1
//! chats and groups with the CLI, uploads and downloads cut and resumed,
//! a tampered blob refused by the receiver, nothing of a file's bytes or
//! name on the server, blobs deleted once fetched, and `kill -9` during an
//! upload.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;
use dak_client::blobs::{self, BlobEndpoint};
use dak_client::{Attachment, TextOptions};
use dak_core::media::MediaKey;

/// The paths `dak sync --json` saved files to.
fn saved(sync_output: &str) -> Vec<std::path::PathBuf> {
    json_lines(sync_output)
        .iter()
        .filter(|v| v["type"] == "media_saved")
        .map(|v| v["path"].as_str().unwrap().into())
        .collect()
}

/// A file of `len` bytes that holds `marker` and is otherwise not
/// compressible: what a photo looks like to the server.
fn photo(len: usize, marker: &str) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..len as u64)
        .map(|i| {
            (i.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407)
                >> 33) as u8
        })
        .collect();
    bytes[..8].copy_from_slice(b"\x89PNG\r\n\x1a\n");
    bytes[1000..1000 + marker.len()].copy_from_slice(marker.as_bytes());
    bytes
}

/// Blob directories the server's filesystem store holds.
fn stored_blobs(server: &TestServer) -> usize {
    std::fs::read_dir(server.data.join("media").join("blobs"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_reaches_a_chat_and_a_group_whole_and_the_server_learns_nothing_of_it() {
    let server = TestServer::start();
    let (alice, bob, carol) = registered_trio(&server).await;
    let marker = "MEDIAMARKER7741";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{marker}-receipt.png"));
    let bytes = photo(300_000, marker);
    std::fs::write(&file, &bytes).unwrap();
    let caption = format!("the caption {marker}");

    // 1:1: alice to bob, with a caption.
    let sent = ok(
        &alice.dir,
        &[
            "--json",
            "send",
            &bob.phone,
            "--file",
            file.to_str().unwrap(),
            "--caption",
            &caption,
        ],
    );
    assert_eq!(json_lines(&sent)[0]["tick"], "sent", "{sent}");
    assert_eq!(stored_blobs(&server), 1);
    let got = ok(&bob.dir, &["--json", "sync"]);
    let message = json_lines(&got)
        .into_iter()
        .find(|v| v["type"] == "message")
        .expect("a message");
    assert_eq!(message["text"], caption);
    assert_eq!(message["attachment"]["media_type"], "image/png");
    assert_eq!(message["attachment"]["size"], 300_000);
    let paths = saved(&got);
    assert_eq!(paths.len(), 1, "{got}");
    assert_eq!(std::fs::read(&paths[0]).unwrap(), bytes, "byte-identical");
    assert!(paths[0].ends_with(format!("{marker}-receipt.png")));
    // Bob was its only recipient device: the server forgot it.
    assert_eq!(
        stored_blobs(&server),
        0,
        "deleted once every recipient fetched it"
    );
    // history shows the file and where it was saved.
    let id = message["id"].as_str().unwrap();
    let history = ok(&bob.dir, &["history", &alice.phone]);
    assert!(history.contains("receipt.png (300.0 kB)"), "{history}");
    assert!(history.contains("saved at"), "{history}");
    // Fetching it again: the server no longer has it, and says so.
    let (success, _, stderr) = dak(&bob.dir, &["media", "get", id]);
    assert!(!success);
    assert!(stderr.contains("no longer on the server"), "{stderr}");

    // A group of three: both others get it; the blob waits for both.
    ok(
        &alice.dir,
        &["group", "create", "Media club", &bob.phone, &carol.phone],
    );
    ok(&bob.dir, &["sync"]);
    ok(&carol.dir, &["sync"]);
    ok(
        &alice.dir,
        &["send", "Media club", "--file", file.to_str().unwrap()],
    );
    let bob_got = ok(&bob.dir, &["--json", "sync"]);
    let bob_paths = saved(&bob_got);
    assert_eq!(bob_paths.len(), 1, "{bob_got}");
    assert_eq!(std::fs::read(&bob_paths[0]).unwrap(), bytes);
    assert!(
        bob_paths[0].to_string_lossy().ends_with("receipt (1).png"),
        "never over another file"
    );
    assert_eq!(stored_blobs(&server), 1, "carol has not fetched it yet");
    let carol_got = ok(&carol.dir, &["--json", "sync"]);
    let carol_paths = saved(&carol_got);
    assert_eq!(std::fs::read(&carol_paths[0]).unwrap(), bytes);
    assert_eq!(stored_blobs(&server), 0);

    // Deleting a file's message for everyone deletes the file on the server.
    let kept = ok(
        &alice.dir,
        &[
            "--json",
            "send",
            &bob.phone,
            "--file",
            file.to_str().unwrap(),
        ],
    );
    let kept_id = json_lines(&kept)[0]["id"].as_str().unwrap().to_string();
    assert_eq!(stored_blobs(&server), 1);
    ok(&alice.dir, &["delete", &kept_id]);
    assert_eq!(stored_blobs(&server), 0, "deleted for everyone");
    let (success, gone, stderr) = dak(&bob.dir, &["--json", "sync"]);
    assert!(success && saved(&gone).is_empty(), "{gone}");
    assert!(
        !gone.contains("media_error") && stderr.is_empty(),
        "not fetched at all: {gone} {stderr}"
    );

    // Forwarding uploads nothing: the same blob goes to the new chat.
    let before = metric(&server, "dak_media_uploads_started_total");
    let group_id = json_lines(&carol_got)
        .into_iter()
        .find(|v| v["type"] == "message")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    ok(&carol.dir, &["forward", &group_id, &alice.phone]);
    assert_eq!(metric(&server, "dak_media_uploads_started_total"), before);

    // Nothing of the file, its name or its caption is on the server.
    assert!(assert_no_marker_under(&server.data, marker) > 0);
    assert!(!server.log_text().contains(marker), "the log names it");
}

fn metric(server: &TestServer, name: &str) -> u64 {
    let text = http_get(&server.metrics_url());
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

fn http_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = TcpStream::connect(host).unwrap();
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A sealed file and its slot, uploaded by hand in the tests below.
struct Upload {
    attachment: Attachment,
    token: Vec<u8>,
    sealed: std::path::PathBuf,
    plain: Vec<u8>,
}

async fn prepared(client: &mut dak_client::Client, dir: &std::path::Path, len: usize) -> Upload {
    let plain = photo(len, "resumable");
    let input = dir.join("in.bin");
    std::fs::write(&input, &plain).unwrap();
    let key = [7u8; 32];
    let capability = vec![9u8; 32];
    let sealed = blobs::seal_file(&MediaKey(key), &input, &dir.join("in.sealed")).unwrap();
    let slot = client
        .create_blob(sealed.length, &sealed.sha256, &capability)
        .await
        .unwrap();
    Upload {
        attachment: Attachment {
            blob_id: slot.blob_id,
            capability,
            key: key.to_vec(),
            sha256: sealed.sha256.to_vec(),
            size: sealed.size,
            media_type: "application/octet-stream".into(),
            file_name: "big.bin".into(),
            ..Default::default()
        },
        token: slot.upload_token,
        sealed: sealed.path,
        plain,
    }
}

/// A PATCH that announces the whole rest but stops after `send` bytes and
/// drops the socket: a network that broke mid-upload.
fn cut_patch(addr: &str, u: &Upload, send: usize) {
    let s = start_patch(addr, u, send);
    std::thread::sleep(std::time::Duration::from_millis(200));
    s.shutdown(std::net::Shutdown::Both).unwrap();
}

/// A PATCH that announces the whole rest, sends `send` bytes of it, and
/// stays open (the caller holds the socket).
fn start_patch(addr: &str, u: &Upload, send: usize) -> TcpStream {
    let bytes = std::fs::read(&u.sealed).unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    // One request per connection, so a reader of the answer meets its end
    // (a kept-alive connection whose limits the blob's secret lifted would
    // stay open); and a stuck server fails the test instead of hanging it.
    let limit = Some(std::time::Duration::from_secs(60));
    s.set_read_timeout(limit).unwrap();
    s.set_write_timeout(limit).unwrap();
    write!(
        s,
        "PATCH /v1/blobs/{} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        hex::encode(&u.attachment.blob_id),
        hex::encode(&u.token),
        bytes.len()
    )
    .unwrap();
    s.write_all(&bytes[..send]).unwrap();
    s.flush().unwrap();
    s
}

/// The first `n` bytes of the blob, by GET with Range, as a download that
/// broke halfway leaves them.
fn ranged_get(addr: &str, a: &Attachment, n: u64) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /v1/blobs/{} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Range: bytes=0-{}\r\nConnection: close\r\n\r\n",
        hex::encode(&a.blob_id),
        hex::encode(&a.capability),
        n - 1
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&out[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert!(
        head.to_lowercase()
            .contains(&format!("content-range: bytes 0-{}/", n - 1)),
        "{head}"
    );
    out[head_end..].to_vec()
}

fn status_of(addr: &str, method: &str, a: &Attachment, secret: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} /v1/blobs/{} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Tus-Resumable: 1.0.0\r\nConnection: close\r\n\r\n",
        hex::encode(&a.blob_id),
        hex::encode(secret)
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

async fn wait_for_offset(endpoint: &BlobEndpoint, u: &Upload, at_least: u64) -> u64 {
    for _ in 0..100 {
        let at = endpoint
            .upload_offset(&u.attachment.blob_id, &u.token)
            .await
            .unwrap();
        if at >= at_least {
            return at;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the server never kept the bytes that arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_at_60_percent_and_a_download_cut_halfway_both_resume() {
    let server = TestServer::start_insecure();
    let (alice, bob) = registered_pair(&server).await;
    let addr = server.url.strip_prefix("ws://").unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut a = alice.connect().await;
    let u = prepared(&mut a, dir.path(), 3_000_000).await;
    let len = u.attachment.stored_len();
    let endpoint = BlobEndpoint::new(&server.url, &a.server_trust().unwrap()).unwrap();

    let sixty = (len * 6 / 10) as usize;
    cut_patch(&addr, &u, sixty);
    let kept = wait_for_offset(&endpoint, &u, sixty as u64).await;
    assert_eq!(kept, sixty as u64, "what arrived before the cut is kept");
    // Not offered to anyone while unfinished.
    assert!(status_of(&addr, "GET", &u.attachment, &u.attachment.capability).contains("404"));
    endpoint
        .upload(&u.attachment.blob_id, &u.token, &u.sealed, blobs::quiet())
        .await
        .expect("resumed");
    assert_eq!(
        endpoint
            .upload_offset(&u.attachment.blob_id, &u.token)
            .await
            .unwrap(),
        len
    );
    let bytes_in = metric(&server, "dak_media_bytes_in_total");
    assert_eq!(bytes_in, len, "the first 60% was not sent twice");

    let opts = TextOptions {
        attachment: Some(Box::new(u.attachment.clone())),
        ..Default::default()
    };
    a.send_text_with(&bob.phone, "", &opts).await.unwrap();
    let events = sync_events(&bob).await;
    let got = events
        .iter()
        .find_map(|e| match e {
            dak_client::Event::Message(m) => m.attachment.clone(),
            _ => None,
        })
        .expect("bob got the file's message");
    assert_eq!(*got, u.attachment);

    // Half the ciphertext arrived before the network broke...
    let part = dir.path().join("download.part");
    let half = ranged_get(&addr, &got, len / 2);
    assert_eq!(half.len() as u64, len / 2);
    std::fs::write(&part, &half).unwrap();
    // ...and the download picks up there.
    let bob_client = bob.connect().await;
    let bob_endpoint = BlobEndpoint::new(&server.url, &bob_client.server_trust().unwrap()).unwrap();
    let before = metric(&server, "dak_media_bytes_out_total");
    bob_endpoint
        .download(&got, &part, blobs::quiet())
        .await
        .expect("resumed download");
    assert_eq!(
        metric(&server, "dak_media_bytes_out_total") - before,
        len - len / 2,
        "only the rest was sent"
    );
    let out = dir.path().join("big.bin");
    blobs::open_file(&got, &part, &out).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), u.plain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_blob_is_refused_by_the_receiver_and_nothing_is_saved() {
    let server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ticket.pdf");
    std::fs::write(&file, photo(200_000, "ticket")).unwrap();
    ok(
        &alice.dir,
        &["send", &bob.phone, "--file", file.to_str().unwrap()],
    );
    // Someone with the server's disk flips one byte of the ciphertext.
    let (segment, mut bytes) = files_under(&server.data.join("media").join("blobs"))
        .into_iter()
        .next()
        .expect("the blob's segment");
    bytes[150_000] ^= 1;
    std::fs::write(&segment, bytes).unwrap();
    let (success, stdout, stderr) = dak(&bob.dir, &["sync"]);
    assert!(success, "the message itself arrives: {stderr}");
    assert!(stdout.contains("ticket.pdf"), "{stdout}");
    assert!(stderr.contains("failed its check"), "{stderr}");
    let media = bob.dir.join("media");
    let kept: Vec<_> = files_under(&media).into_iter().map(|(p, _)| p).collect();
    assert!(kept.is_empty(), "nothing saved or half-kept: {kept:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_upload_offers_no_half_blob_and_the_upload_resumes_after() {
    let mut server = TestServer::start_insecure();
    let (alice, _bob) = registered_pair(&server).await;
    let addr = server.url.strip_prefix("ws://").unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut a = alice.connect().await;
    let u = prepared(&mut a, dir.path(), 5_000_000).await;
    let len = u.attachment.stored_len();
    a.close().await;
    let endpoint = BlobEndpoint::new(&server.url, &dak_client::CertTrust::FirstUse).unwrap();
    // The server dies while the body is still coming: one segment is
    // stored, the rest of what arrived is in its memory.
    let open = start_patch(&addr, &u, (len / 2) as usize);
    let kept = wait_for_offset(&endpoint, &u, 1).await;
    assert!(kept < len / 2, "the body is still arriving");
    server.kill9();
    drop(open);
    server.restart();
    assert!(
        status_of(&addr, "GET", &u.attachment, &u.attachment.capability).contains("404"),
        "an unfinished upload is offered to no one"
    );
    let after = endpoint
        .upload_offset(&u.attachment.blob_id, &u.token)
        .await
        .unwrap();
    assert_eq!(
        after, kept,
        "what was stored before the kill is still there"
    );
    endpoint
        .upload(&u.attachment.blob_id, &u.token, &u.sealed, blobs::quiet())
        .await
        .expect("resumed after the restart");
    assert!(status_of(&addr, "GET", &u.attachment, &u.attachment.capability).contains("200"));
    // A wrong capability, and the upload token, get nothing.
    assert!(status_of(&addr, "GET", &u.attachment, &[1u8; 32]).contains("404"));
    assert!(status_of(&addr, "GET", &u.attachment, &u.token).contains("405"));
}

/// A raw HTTP exchange on the insecure listener: the status line and the
/// headers, lowercased.
fn exchange(addr: &str, head: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_lowercase();
    text.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_upload_gets_a_clear_answer_and_nothing_half_stored_is_served() {
    let server = TestServer::build_with(&[("DAK_MEDIA_QUOTA_DEVICE_BYTES", "3000000")], true);
    let (alice, bob) = registered_pair(&server).await;
    let addr = server.url.strip_prefix("ws://").unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut a = alice.connect().await;
    let u = prepared(&mut a, dir.path(), 1_000_000).await;
    let bytes = std::fs::read(&u.sealed).unwrap();
    let id = hex::encode(&u.attachment.blob_id);
    let token = hex::encode(&u.token);
    let patch = |offset: u64, extra: &str, len: usize| {
        format!(
            "PATCH /v1/blobs/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n{extra}\
             Upload-Offset: {offset}\r\nContent-Type: application/offset+octet-stream\r\n\
             Content-Length: {len}\r\nConnection: close\r\n\r\n"
        )
    };
    // No Tus-Resumable: 412. A wrong offset: 409 with the right one.
    assert!(exchange(&addr, &patch(0, "", 10), &bytes[..10]).starts_with("http/1.1 412"));
    let conflict = exchange(
        &addr,
        &patch(5, "Tus-Resumable: 1.0.0\r\n", 10),
        &bytes[..10],
    );
    assert!(conflict.starts_with("http/1.1 409"), "{conflict}");
    assert!(conflict.contains("upload-offset: 0"), "{conflict}");
    // More than the file: 413, before a byte is read.
    let over = exchange(
        &addr,
        &patch(0, "Tus-Resumable: 1.0.0\r\n", bytes.len() + 1),
        &[],
    );
    assert!(over.starts_with("http/1.1 413"), "{over}");
    // A malformed offset or token: 400 / 401, never a crash.
    let bad = exchange(
        &addr,
        &patch(0, "Tus-Resumable: 1.0.0\r\n", 0).replace("Upload-Offset: 0", "Upload-Offset: -1"),
        &[],
    );
    assert!(bad.starts_with("http/1.1 400"), "{bad}");
    let anonymous = exchange(
        &addr,
        &format!("GET /v1/blobs/{id} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        &[],
    );
    assert!(anonymous.starts_with("http/1.1 401"), "{anonymous}");

    // Bytes that do not match the hash given at creation: 460, and gone.
    let mut wrong = bytes.clone();
    wrong[500] ^= 1;
    let refused = exchange(
        &addr,
        &patch(0, "Tus-Resumable: 1.0.0\r\n", wrong.len()),
        &wrong,
    );
    assert!(refused.starts_with("http/1.1 460"), "{refused}");
    assert!(status_of(&addr, "HEAD", &u.attachment, &u.token).contains("404"));
    assert_eq!(stored_blobs(&server), 0);

    // Too large for the server, and over the device's quota: refused
    // before any upload, with the reason.
    let too_big = a
        .create_blob(200 * 1024 * 1024, &[0; 32], &[1; 32])
        .await
        .unwrap_err();
    assert_eq!(too_big.code(), Some(dak_proto::v1::ErrorCode::BodyTooLarge));
    assert!(too_big.to_string().contains("too large"), "{too_big}");
    a.create_blob(2_000_000, &[0; 32], &[1; 32]).await.unwrap();
    let over_quota = a
        .create_blob(2_000_000, &[0; 32], &[1; 32])
        .await
        .unwrap_err();
    assert_eq!(
        over_quota.code(),
        Some(dak_proto::v1::ErrorCode::QuotaExceeded)
    );
    assert!(
        over_quota.to_string().contains("waiting to be fetched"),
        "{over_quota}"
    );

    // Delete for everyone: only the uploader's account may; then it is gone.
    let done = prepared(&mut a, dir.path(), 10_000).await;
    BlobEndpoint::new(&server.url, &dak_client::CertTrust::FirstUse)
        .unwrap()
        .upload(
            &done.attachment.blob_id,
            &done.token,
            &done.sealed,
            blobs::quiet(),
        )
        .await
        .unwrap();
    // A connection that showed a blob's capability carries transfers, and
    // cannot become a device's WebSocket without a device's signature.
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "GET /v1/blobs/{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        hex::encode(&done.attachment.blob_id),
        hex::encode(&done.attachment.capability)
    )
    .unwrap();
    let want = done.attachment.stored_len() as usize;
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .is_none_or(|end| got.len() < end + 4 + want)
    {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the connection closed early");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    write!(
        s,
        "GET /v1/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let n = s.read(&mut buf).unwrap();
    let upgrade = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(upgrade.starts_with("HTTP/1.1 403"), "{upgrade}");

    let mut b = bob.connect().await;
    let not_hers = b.delete_blob(&done.attachment.blob_id).await.unwrap_err();
    assert_eq!(
        not_hers.code(),
        Some(dak_proto::v1::ErrorCode::BlobNotFound)
    );
    assert!(status_of(&addr, "GET", &done.attachment, &done.attachment.capability).contains("200"));
    a.delete_blob(&done.attachment.blob_id).await.unwrap();
    assert!(status_of(&addr, "GET", &done.attachment, &done.attachment.capability).contains("404"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_patch_cannot_change_a_finished_file() {
    let server = TestServer::start_insecure();
    let (alice, _bob) = registered_pair(&server).await;
    let addr = server.url.strip_prefix("ws://").unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut a = alice.connect().await;
    let u = prepared(&mut a, dir.path(), 3_000_000).await;
    let len = u.attachment.stored_len() as usize;
    // A PATCH at offset 0 starts and waits; meanwhile the file is uploaded
    // whole and checked.
    let mut late = start_patch(&addr, &u, 10);
    let endpoint = BlobEndpoint::new(&server.url, &dak_client::CertTrust::FirstUse).unwrap();
    endpoint
        .upload(&u.attachment.blob_id, &u.token, &u.sealed, blobs::quiet())
        .await
        .unwrap();
    // Then the late one sends other bytes, more than a segment of them.
    late.write_all(&vec![0x55; len - 10]).unwrap();
    let mut answer = Vec::new();
    let _ = late.read_to_end(&mut answer);
    let head = String::from_utf8_lossy(&answer).to_string();
    assert!(head.starts_with("HTTP/1.1 409"), "{head}");
    // What is served is still the file, and only its recorded segments
    // are stored.
    let part = dir.path().join("got.part");
    endpoint
        .download(&u.attachment, &part, blobs::quiet())
        .await
        .unwrap();
    let out = dir.path().join("got.bin");
    blobs::open_file(&u.attachment, &part, &out).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), u.plain);
    let stored = files_under(&server.data.join("media").join("blobs"));
    assert_eq!(
        stored.len(),
        2,
        "the late write's segment was deleted: {:?}",
        stored.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
}
