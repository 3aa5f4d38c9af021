//! The server under test.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

pub struct Target {
    pub url: String,
    /// The SMS outbox the devices read their codes from.
    pub outbox: PathBuf,
    child: Option<Child>,
    _data: Option<tempfile::TempDir>,
}

impl Target {
    /// Starts `dak server` (this same executable) on a free loopback port
    /// with a fresh data directory and limits raised for load.
    pub fn spawn(exe: &std::path::Path, insecure: bool) -> Result<Target> {
        let data = tempfile::Builder::new().prefix("dak-bench-").tempdir()?;
        let mut cmd = Command::new(exe);
        cmd.args(["server", "--listen", "127.0.0.1:0", "--data"])
            .arg(data.path())
            // A benchmark is one network registering thousands of numbers
            // of one range and sending as fast as it can: the limits that
            // stop an attacker doing that are raised (docs/SECURITY.md).
            .env("DAK_CODES_PER_IP_PER_HOUR", "100000000")
            .env("DAK_VERIFIES_PER_IP_PER_HOUR", "100000000")
            .env("DAK_CODES_PER_RANGE_PER_HOUR", "100000000")
            .env("DAK_CODES_PER_COUNTRY_PER_HOUR", "100000000")
            .env("DAK_CODES_PER_HOUR", "100000000")
            .env("DAK_MAX_UNAUTHENTICATED_PER_IP", "1000000")
            .env("DAK_REQUESTS_PER_DEVICE_PER_SEC", "1000000")
            .env("DAK_REQUEST_BURST", "1000000")
            .env("DAK_BUSINESS_REQUESTS_PER_DEVICE_PER_SEC", "1000000")
            .env("DAK_BUSINESS_MESSAGES_PER_CHAT_PER_MINUTE", "1000000")
            .env("DAK_MAX_CONNECTIONS_PER_DEVICE", "1000")
            .env("DAK_LOOKUPS_PER_DAY", "100000000")
            // `offline` queues more for one device than a mailbox may hold.
            .env("DAK_MAILBOX_MAX_ENVELOPES", "100000000")
            .env("DAK_HANDSHAKE_TIMEOUT", "60s")
            .env("DAK_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if insecure {
            cmd.arg("--insecure");
        }
        let mut child = cmd.spawn().context("cannot start the server")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            bail!("the server did not start (first line {line:?})");
        };
        Ok(Target {
            url: url.to_string(),
            outbox: data.path().join("sms-outbox.jsonl"),
            child: Some(child),
            _data: Some(data),
        })
    }

    /// An already running server whose SMS outbox file this machine can read.
    pub fn external(url: String, outbox: PathBuf) -> Target {
        Target {
            url,
            outbox,
            child: None,
            _data: None,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Resident set size of the spawned server, from /proc (None if not spawned).
    pub fn rss_bytes(&self) -> Option<u64> {
        rss_of(self.pid()?)
    }

    /// CPU seconds (user + system) the spawned server has used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?)).ok()?;
        let after = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
        Some(ticks / hz as f64)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Raises this process's open-file limit to its hard limit (children
/// inherit it). Returns the limit now in force.
/// Resident set size of process `pid`, from /proc.
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((_, hard)) => {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
            getrlimit(Resource::RLIMIT_NOFILE)
                .map(|(s, _)| s)
                .unwrap_or(hard)
        }
        Err(_) => 1024,
    }
}
