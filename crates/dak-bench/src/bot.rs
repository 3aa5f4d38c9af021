//! The bot scenario: a real `dak bot serve` (this same executable) on its
//! own SQLite profile, a webhook receiver here, and `--clients` people,
//! each a real client core (in memory) with a conversation with the bot.
//!
//! 1. Setup: every person writes to the bot once (an MLS conversation
//!    each); the bot's resident memory is then read: what `--clients`
//!    conversations cost it.
//! 2. Inbound: the people send `--rate` messages a second for
//!    `--duration`, each carrying the time it was sent; the receiver
//!    records when each reaches the webhook. Figures: messages a second
//!    handed to the webhook, and the latency from a person's send to the
//!    webhook, p50 and p99 (the person's encryption, the server, the bot's
//!    decryption and store, its queue and the signed POST).
//! 3. Outbound: `POST /v1/messages` at `--rate` a second for `--duration`
//!    to the same people (all inside the 24-hour window). Figures:
//!    messages a second the API accepted (201: the server holds each) and
//!    the API's latency.
//!
//! The load generator, the server and the bot share the machine: on two
//! cores, each figure is what all three manage together.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dak_client::{Client, Profile};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use crate::device::Codes;
use crate::report::Report;
use crate::scenarios::Params;
use crate::target::{Target, rss_of};

const BOT_PHONE: &str = "+919700000000";

/// What the webhook receiver saw of the stamped messages sent inside the
/// measured window.
struct Received {
    latency: Histogram<u64>,
    measured: u64,
}

/// `dak bot serve` as a child, killed on drop.
struct BotProcess(Child);

impl Drop for BotProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn person(url: &str, codes: &Codes, phone: &str) -> Result<Client> {
    let profile = Profile::new(
        Box::new(dak_core::memory::MemoryStore::new()),
        Box::new(dak_client::SystemEnvironment),
    );
    Client::request_code(&profile, url, phone).await?;
    let code = codes.wait_for(phone).await?;
    Client::verify(&profile, &code, "", "bench").await?;
    Ok(Client::connect(profile).await?)
}

pub async fn run(
    target: &Target,
    p: &Params,
    progress: &(dyn Fn(String) + Sync),
) -> Result<Report> {
    let Some(exe) = p.exe.clone() else {
        bail!("the bot scenario starts `dak bot serve`, so it needs the dak executable");
    };
    let dir = tempfile::Builder::new()
        .prefix("dak-bench-bot-")
        .tempdir()?;
    let codes = Codes::new(target.outbox.clone());

    // The bot's device, on a real SQLite profile.
    progress("registering the bot".into());
    let bot_dir = dir.path().join("bot");
    let profile = dak_client::open_profile(&bot_dir)?;
    Client::request_code(&profile, &target.url, BOT_PHONE).await?;
    let code = codes.wait_for(BOT_PHONE).await?;
    Client::verify(&profile, &code, "", "bot").await?;
    let mut c = Client::connect(profile).await?;
    c.set_business_profile(dak_proto::v1::BusinessProfile {
        display_name: "Bench".into(),
        ..Default::default()
    })
    .await?;
    c.close().await;

    // The webhook receiver.
    let received = Arc::new(Mutex::new(Received {
        latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        measured: 0,
    }));
    let window = Arc::new((AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook = format!("http://{}/hook", listener.local_addr()?);
    let app = {
        let (received, window) = (received.clone(), window.clone());
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let (received, window) = (received.clone(), window.clone());
                async move {
                    let at = now_ms();
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    if let Some(sent) = v["message"]["text"]
                        .as_str()
                        .and_then(|t| t.strip_prefix("b:"))
                        .and_then(|t| t.parse::<i64>().ok())
                    {
                        let mut r = received.lock();
                        let (from, to) = (window.0.load(Relaxed), window.1.load(Relaxed));
                        if (sent as u64) >= from && (sent as u64) < to {
                            r.measured += 1;
                            let _ = r.latency.record(((at - sent).max(0) as u64) * 1000);
                        }
                    }
                    axum::http::StatusCode::OK
                }
            }),
        )
    };
    tokio::spawn(async move { axum::serve(listener, app).await });

    progress("starting dak bot serve".into());
    let secret = dir.path().join("secret");
    let token_file = dir.path().join("token");
    let token = hex::encode(rand::random::<[u8; 16]>());
    std::fs::write(&secret, hex::encode(rand::random::<[u8; 16]>()))?;
    std::fs::write(&token_file, &token)?;
    let bot = spawn_bot(&exe, &bot_dir, &hook, &secret, &token_file)?;
    let api = bot.1.clone();
    let bot = bot.0;
    let bot_pid = bot.0.id();
    let rss_empty = rss_of(bot_pid);

    // Setup: every person writes once; those past --clients then leave.
    progress(format!(
        "{} people each start a conversation with the bot",
        p.conversations
    ));
    let gate = Arc::new(Semaphore::new(16));
    let codes = Arc::new(codes);
    let mut tasks = Vec::new();
    for i in 0..p.conversations {
        let (url, gate, codes) = (target.url.clone(), gate.clone(), codes.clone());
        let keep = i < p.clients;
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let phone = format!("+9196{:08}", i);
            let mut c = person(&url, &codes, &phone).await?;
            c.send_text(BOT_PHONE, "hello").await?;
            if keep {
                return anyhow::Ok(Some((phone, c)));
            }
            c.close().await;
            anyhow::Ok(None)
        }));
    }
    let mut kept = Vec::with_capacity(p.clients);
    for (n, t) in tasks.into_iter().enumerate() {
        kept.extend(t.await??);
        if (n + 1) % 500 == 0 {
            progress(format!("  {} conversations", n + 1));
        }
    }
    // A long setup leaves the first connections idle past the server's
    // timeout: the senders connect afresh.
    let mut people = Vec::with_capacity(kept.len());
    for (phone, c) in kept {
        people.push((phone, Client::connect(c.close().await).await?));
    }
    // Until the bot has handed the setup messages on.
    wait_drained(&api, p.conversations as u64, Duration::from_secs(1800)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_conversations = rss_of(bot_pid);

    // Inbound.
    progress(format!(
        "inbound: {} messages/s for {:?}",
        p.rate, p.duration
    ));
    let warm = Duration::from_secs(1);
    let start = Instant::now() + Duration::from_millis(200);
    let start_ms = now_ms() + 200;
    window
        .0
        .store((start_ms + warm.as_millis() as i64) as u64, Relaxed);
    window.1.store(
        (start_ms + (warm + p.duration).as_millis() as i64) as u64,
        Relaxed,
    );
    let n = people.len();
    let per_person = p.rate / n as f64;
    let total = warm + p.duration;
    let mut senders = Vec::new();
    let phones: Vec<String> = people.iter().map(|(ph, _)| ph.clone()).collect();
    for (i, (_, mut c)) in people.into_iter().enumerate() {
        senders.push(tokio::spawn(async move {
            let gap = Duration::from_secs_f64(1.0 / per_person);
            let mut at = start + gap.mul_f64(i as f64 / n as f64);
            let mut sent = 0u64;
            while at < start + total {
                tokio::time::sleep_until(at.into()).await;
                c.send_text(BOT_PHONE, &format!("b:{}", now_ms())).await?;
                sent += 1;
                at += gap;
            }
            // Take the bot's receipts, then go.
            let _ = tokio::time::timeout(Duration::from_millis(200), c.next_events()).await;
            c.close().await;
            anyhow::Ok(sent)
        }));
    }
    let mut offered = 0u64;
    for s in senders {
        offered += s.await??;
    }
    let offered_measured = offered as f64 * p.duration.as_secs_f64() / total.as_secs_f64();
    wait_drained(&api, 0, Duration::from_secs(120)).await?;
    let (inbound_latency, inbound_measured) = {
        let r = received.lock();
        (r.latency.clone(), r.measured)
    };

    // Outbound.
    progress(format!(
        "outbound: {} API sends/s for {:?}",
        p.rate, p.duration
    ));
    let http = reqwest::Client::new();
    let api_latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let gap = Duration::from_secs_f64(1.0 / p.rate);
    let started = Instant::now();
    let mut at = started;
    let mut k = 0usize;
    let inflight = Arc::new(Semaphore::new(256));
    let mut calls = Vec::new();
    while at < started + p.duration {
        tokio::time::sleep_until(at.into()).await;
        let permit = inflight.clone().acquire_owned().await?;
        let (http, api, token) = (http.clone(), api.clone(), token.clone());
        let to = phones[k % phones.len()].clone();
        let (lat, ok, bad) = (api_latency.clone(), accepted.clone(), refused.clone());
        calls.push(tokio::spawn(async move {
            let _permit = permit;
            let t = Instant::now();
            let r = http
                .post(format!("{api}/v1/messages"))
                .bearer_auth(&token)
                .json(&serde_json::json!({"to": to, "text": "Your ticket: DR-1234"}))
                .send()
                .await;
            match r {
                Ok(r) if r.status().as_u16() == 201 => {
                    ok.fetch_add(1, Relaxed);
                    let _ = lat.lock().record(t.elapsed().as_micros() as u64);
                }
                _ => {
                    bad.fetch_add(1, Relaxed);
                }
            }
        }));
        k += 1;
        at += gap;
    }
    for c in calls {
        let _ = c.await;
    }
    let outbound_secs = started.elapsed().as_secs_f64();
    let rss_end = rss_of(bot_pid);
    drop(bot);

    let mut report = Report::new(
        "bot",
        serde_json::json!({"people": p.clients, "conversations": p.conversations, "rate": p.rate, "duration_secs": p.duration.as_secs_f64(), "tls": p.tls}),
        "a real `dak bot serve` (its own SQLite profile) and a webhook receiver in the bench; \
         --clients people, each a real client core in memory with a conversation with the bot. \
         Inbound: the people send --rate messages/s for --duration (after 1 s of warm-up), each \
         stamped with its send time; latency is from that stamp to the webhook's receipt. \
         Outbound: POST /v1/messages at --rate/s for --duration, 201 counted. Server, bot and \
         bench share the machine.",
    );
    report.add(
        "inbound offered",
        offered_measured / p.duration.as_secs_f64(),
        "msg/s",
    );
    report.add(
        "inbound to webhook",
        inbound_measured as f64 / p.duration.as_secs_f64(),
        "msg/s",
    );
    report.add_latency("send to webhook", &inbound_latency);
    report.add(
        "outbound accepted (201)",
        accepted.load(Relaxed) as f64 / outbound_secs,
        "msg/s",
    );
    report.add("outbound refused", refused.load(Relaxed) as f64, "");
    report.add_latency("API send", &api_latency.lock());
    if let Some(b) = rss_empty {
        report.add("bot RSS, no conversations", b as f64 / 1_048_576.0, "MiB");
    }
    if let Some(b) = rss_conversations {
        report.add(
            format!("bot RSS, {} conversations", p.conversations),
            b as f64 / 1_048_576.0,
            "MiB",
        );
    }
    if let Some(b) = rss_end {
        report.add("bot RSS, end", b as f64 / 1_048_576.0, "MiB");
    }
    report.server_rss_bytes_end = target.rss_bytes();
    Ok(report)
}

/// Starts `dak bot serve`: the process and its API's base URL.
fn spawn_bot(
    exe: &Path,
    profile: &Path,
    hook: &str,
    secret: &Path,
    token: &Path,
) -> Result<(BotProcess, String)> {
    use std::io::BufRead;
    let mut child = Command::new(exe)
        .arg("--profile")
        .arg(profile)
        .args([
            "--json",
            "bot",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--webhook",
            hook,
        ])
        .arg("--secret-file")
        .arg(secret)
        .arg("--token-file")
        .arg(token)
        .env("DAK_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start dak bot serve")?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("bot stdout")?).read_line(&mut line)?;
    let v: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("the bot said {line:?}"))?;
    let addr = v["listening"].as_str().context("no listening address")?;
    Ok((BotProcess(child), format!("http://{addr}")))
}

/// Waits until the bot's queue is empty and it has delivered at least
/// `at_least` events since it started.
async fn wait_drained(api: &str, at_least: u64, patience: Duration) -> Result<()> {
    let deadline = Instant::now() + patience;
    let http = reqwest::Client::new();
    loop {
        let health: serde_json::Value = http
            .get(format!("{api}/v1/health"))
            .send()
            .await?
            .json()
            .await?;
        let waiting = health["queue"]["waiting"].as_u64().unwrap_or(u64::MAX);
        let delivered = health["queue"]["delivered"].as_u64().unwrap_or(0);
        if waiting == 0 && delivered >= at_least {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the bot's webhook queue did not drain ({waiting} waiting, {delivered} delivered)"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
