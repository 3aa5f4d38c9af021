//! Test harness: the real `dak` binary on an ephemeral loopback port with a
//! temporary data directory, and real clients (`dak_client`) talking to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dak_client::{Client, Profile};

pub struct TestServer {
    child: Option<Child>,
    pub url: String,
    pub data: PathBuf,
    pub log: PathBuf,
    listen: String,
    env: Vec<(String, String)>,
    pub insecure: bool,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// A TLS server (self-signed certificate, pinned by clients on first use).
    pub fn start() -> TestServer {
        Self::with_env(&[])
    }

    /// A plain ws:// server on loopback (`--insecure`).
    pub fn start_insecure() -> TestServer {
        Self::build(&[], true)
    }

    pub fn with_env(env: &[(&str, &str)]) -> TestServer {
        Self::build(env, false)
    }

    /// A server with extra environment, plain ws:// when `insecure`.
    pub fn build_with(env: &[(&str, &str)], insecure: bool) -> TestServer {
        Self::build(env, insecure)
    }

    fn build(env: &[(&str, &str)], insecure: bool) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = TestServer {
            child: None,
            url: String::new(),
            data: dir.path().join("data"),
            log: dir.path().join("server.log"),
            listen: "127.0.0.1:0".into(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            insecure,
            _dir: dir,
        };
        s.spawn();
        s
    }

    /// A TLS server on an existing data directory (one a previous release
    /// wrote, say), its certificate and key included; its log goes elsewhere.
    pub fn start_on(data: &Path) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = TestServer {
            child: None,
            url: String::new(),
            data: data.to_path_buf(),
            log: dir.path().join("server.log"),
            listen: "127.0.0.1:0".into(),
            env: Vec::new(),
            insecure: false,
            _dir: dir,
        };
        s.spawn();
        s
    }

    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dak"));
        cmd.args(["server", "--data"])
            .arg(&self.data)
            .args(["--listen", &self.listen])
            .env("DAK_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if self.insecure {
            cmd.arg("--insecure");
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn dak server");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read first line");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}; log: {}", self.log_text()))
            .to_string();
        // Restarts reuse the port, so profiles that saved the URL still work.
        self.listen = url.rsplit("//").next().unwrap_or_default().to_string();
        self.url = url;
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            c.wait().expect("wait");
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        for _ in 0..100 {
            if let Some(status) = c.try_wait().expect("wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("server did not exit within 10 s of SIGTERM");
    }

    /// Asks this server for a code for `phone` (as `dak register` does) and
    /// returns the code from the SMS outbox.
    pub async fn send_code(&self, profile: &Profile, phone: &str) -> String {
        Client::request_code(profile, &self.url, phone)
            .await
            .expect("request code");
        self.code_for(phone)
    }

    /// The last code the SMS outbox holds for `phone`.
    pub fn code_for(&self, phone: &str) -> String {
        let text = std::fs::read_to_string(self.data.join("sms-outbox.jsonl")).expect("sms outbox");
        text.lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["to"] == phone)
            .and_then(|v| v["code"].as_str().map(String::from))
            .unwrap_or_else(|| panic!("no code sent to {phone}"))
    }

    /// The running server's process id, to read its memory from /proc.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// `http://127.0.0.1:PORT/metrics`, as the server logged it at start.
    pub fn metrics_url(&self) -> String {
        for _ in 0..100 {
            // The last one: a restarted server logs again.
            let log = self.log_text();
            if let Some(line) = log.lines().rev().find(|l| l.starts_with("metrics on ")) {
                return line.trim_start_matches("metrics on ").trim().to_string();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the server did not log its metrics address")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A person with one device: a profile directory that outlives connections.
pub struct Person {
    pub phone: String,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Person {
    pub fn new(phone: &str) -> Person {
        let tmp = tempfile::tempdir().expect("tempdir");
        Person {
            phone: phone.into(),
            dir: tmp.path().join("profile"),
            _tmp: Some(tmp),
        }
    }

    /// A person whose profile directory already exists (and outlives them).
    pub fn at(phone: &str, dir: &Path) -> Person {
        Person {
            phone: phone.into(),
            dir: dir.to_path_buf(),
            _tmp: None,
        }
    }

    pub fn profile(&self) -> Profile {
        dak_client::open_profile(&self.dir).expect("profile")
    }

    pub async fn register(&self, server: &TestServer) {
        let profile = self.profile();
        let code = server.send_code(&profile, &self.phone).await;
        Client::verify(&profile, &code, "", "phone")
            .await
            .expect("verify");
    }

    pub async fn connect(&self) -> Client {
        Client::connect(self.profile()).await.expect("connect")
    }

    /// A bare protocol connection, authenticated as this person's device,
    /// for tests that must send frames the client would not.
    pub async fn raw_connection(&self, server: &TestServer) -> dak_client::Connection {
        let profile = self.profile();
        let reg = profile.registration().expect("registered");
        let pin = profile
            .get_str("cert")
            .unwrap()
            .expect("pinned certificate");
        let (t, _) = dak_client::transport::WsTransport::connect(
            &server.url,
            &dak_client::transport::CertTrust::Pinned(pin),
        )
        .await
        .expect("connect");
        let mut conn = dak_client::Connection::open(
            Box::new(t),
            std::sync::Arc::new(dak_client::SystemEnvironment),
        )
        .await
        .expect("challenge");
        conn.authenticate(&profile.identity().unwrap(), reg.device_id)
            .await
            .expect("authenticate");
        conn
    }

    /// Syncs and returns the texts of new messages.
    pub async fn sync_texts(&self) -> Vec<String> {
        texts(&sync_events(self).await)
    }
}

/// The texts of the messages among `events`, in order.
pub fn texts(events: &[dak_client::Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            dak_client::Event::Message(m) => Some(m.text.clone()),
            _ => None,
        })
        .collect()
}

/// Connects `who` afresh, receives everything waiting (and lets the
/// follow-up work run), and returns the events.
pub async fn sync_events(who: &Person) -> Vec<dak_client::Event> {
    let mut client = who.connect().await;
    let mut events = Vec::new();
    client.sync(|e| events.push(e.clone())).await.expect("sync");
    client.close().await;
    events
}

pub fn alice() -> Person {
    Person::new("+919800000001")
}

pub fn bob() -> Person {
    Person::new("+919800000002")
}

pub fn carol() -> Person {
    Person::new("+919800000003")
}

/// alice and bob, each registered on `server`.
pub async fn registered_pair(server: &TestServer) -> (Person, Person) {
    let (a, b) = (alice(), bob());
    a.register(server).await;
    b.register(server).await;
    (a, b)
}

/// alice, bob and carol, each registered on `server`.
pub async fn registered_trio(server: &TestServer) -> (Person, Person, Person) {
    let (a, b) = registered_pair(server).await;
    let c = carol();
    c.register(server).await;
    (a, b, c)
}

/// Links `new` as a device of `primary`'s account.
pub async fn link(
    server: &TestServer,
    primary: &Person,
    new: &Person,
) -> dak_client::profile::Registration {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let profile = new.profile();
    let url = server.url.clone();
    let waiter = tokio::spawn(async move {
        let mut tx = Some(tx);
        Client::link(&profile, &url, "laptop", |code, _| {
            if let Some(tx) = tx.take() {
                let _ = tx.send(code.to_string());
            }
        })
        .await
    });
    let code = rx.await.expect("link code");
    let mut p = primary.connect().await;
    p.approve_link(&code).await.expect("approve");
    p.close().await;
    waiter.await.expect("link task").expect("linked")
}

/// Every file under `dir`, as bytes.
pub fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

/// Asserts that no file under `root` holds `marker` in its bytes or its
/// name; returns how many bytes it read (a scan that read nothing proves
/// nothing).
pub fn assert_no_marker_under(root: &Path, marker: &str) -> usize {
    let mut scanned = 0;
    for (path, content) in files_under(root) {
        scanned += content.len();
        assert!(
            !contains(&content, marker),
            "{} holds the marker",
            path.display()
        );
        assert!(
            !path.to_string_lossy().contains(marker),
            "{} names it",
            path.display()
        );
    }
    scanned
}

pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Reads the envelope bodies waiting in a device's mailbox in the server's
/// store, shared bodies (stored once for many devices) included.
pub fn mailbox_bodies(server: &TestServer, device: u64) -> Vec<Vec<u8>> {
    dak_store::testing::sqlite_mailbox_bodies(&server.dir().join("data").join("dak.db"), device)
}

/// Runs the `dak` binary on a profile: (success, stdout, stderr).
pub fn dak(profile: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dak"))
        .arg("--profile")
        .arg(profile)
        .args(args)
        .output()
        .expect("run dak");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `dak` that must succeed: its stdout.
pub fn ok(profile: &Path, args: &[&str]) -> String {
    let (success, stdout, stderr) = dak(profile, args);
    assert!(success, "dak {args:?} failed: {stderr}");
    stdout
}

/// `--json` output: one object per line.
pub fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// A bare HTTP/1.1 GET on a server's (plain, --insecure) address.
pub async fn http_get(ws_url: &str, path: &str) -> String {
    http_get_with(ws_url, path, "").await
}

/// As `http_get`, with extra header lines (each ending in \r\n).
pub async fn http_get_with(ws_url: &str, path: &str, headers: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = ws_url.trim_start_matches("ws://");
    let mut s = tokio::net::TcpStream::connect(authority).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n{headers}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
