//! The scenarios. Each registers its devices first (not measured), then
//! measures one thing and says how in `Report::method`. The group scenario
//! has its own module, `large_group`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use dak_client::Connection;
use dak_proto::v1::{self, client_frame::Request, server_frame::Body};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::device::{self, Device};
use crate::groups;
use crate::report::{Report, histogram, micros};
use crate::target::Target;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    Connect,
    Pairs,
    Offline,
    Group,
    Media,
    Bot,
}

#[derive(Debug, Clone, Serialize)]
pub struct Params {
    pub scenario: Scenario,
    /// Devices (connect, pairs).
    pub clients: usize,
    /// Offered messages per second, all devices together (pairs).
    pub rate: f64,
    #[serde(with = "secs")]
    pub duration: Duration,
    #[serde(with = "secs")]
    pub warmup: Duration,
    /// Text bytes per message, before MLS encryption (the ciphertext the
    /// server carries is larger; the report gives its size).
    pub size: usize,
    /// Queued messages (offline); messages sent to the group (group).
    pub messages: usize,
    /// Member devices of the group (group).
    pub members: usize,
    /// Least time between two messages to the group (group).
    #[serde(with = "secs")]
    pub interval: Duration,
    /// Members that send a self-update before the removal is measured again (group).
    pub updates: usize,
    /// Most devices added by one commit while creating the group (group).
    pub batch: usize,
    /// Fan-out messages each member decrypts afterwards, from the first (group).
    pub decrypt: usize,
    /// Threads for the MLS work of the members that do not act; 0 = one per core (group).
    pub workers: usize,
    /// Search for the highest rate with p99 under 50 ms (pairs).
    pub max: bool,
    /// Source addresses 127.0.0.1..=k for client sockets.
    pub source_ips: usize,
    pub tls: bool,
    /// The file's size in MB (media).
    pub file_mb: u64,
    /// Conversations the bot holds before it is measured; the first
    /// `clients` of them send the load (bot).
    pub conversations: usize,
    /// This executable, for scenarios that start another of its commands
    /// (bot: `dak bot serve`).
    #[serde(skip)]
    pub exe: Option<std::path::PathBuf>,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

pub async fn run(
    target: &Target,
    p: &Params,
    progress: &(dyn Fn(String) + Sync),
) -> Result<Report> {
    match p.scenario {
        Scenario::Connect => connect(target, p, progress).await,
        Scenario::Pairs => pairs(target, p, progress).await,
        Scenario::Offline => offline(target, p, progress).await,
        Scenario::Group => crate::large_group::run(target, p, progress).await,
        Scenario::Media => crate::media::run(target, p, progress).await,
        Scenario::Bot => crate::bot::run(target, p, progress).await,
    }
}

fn params_json(p: &Params) -> serde_json::Value {
    serde_json::to_value(p).unwrap_or_default()
}

// ---- connect ----

async fn connect(
    target: &Target,
    p: &Params,
    progress: &(dyn Fn(String) + Sync),
) -> Result<Report> {
    let devices =
        device::register_many(&target.url, target.outbox.clone(), p.clients, progress).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = target.rss_bytes();
    progress(format!("connecting {} devices", devices.len()));
    let gate = Arc::new(Semaphore::new(256));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(devices.len());
    for (i, d) in devices.into_iter().enumerate() {
        let (url, gate, k) = (target.url.clone(), gate.clone(), p.source_ips);
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            device::connect(&url, &d, device::source_ip(i, k)).await
        }));
    }
    let mut held: Vec<Connection> = Vec::with_capacity(tasks.len());
    for t in tasks {
        held.push(t.await??);
        if held.len().is_multiple_of(1000) {
            progress(format!("connected {}/{}", held.len(), p.clients));
        }
    }
    let storm = started.elapsed();
    progress("all connected; letting the server settle".into());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = target.rss_bytes();
    let mut r = Report::new(
        "connect",
        params_json(p),
        "N devices open a WebSocket (TLS 1.3 unless --insecure), answer the challenge and stay idle; \
         256 handshakes in flight at a time. Bytes per connection = (server RSS after - RSS before) / N, \
         RSS from /proc/PID/status of the spawned server.",
    );
    r.add("connections", held.len() as f64, "");
    r.add("storm duration", storm.as_secs_f64(), "s");
    r.add(
        "connections/s",
        held.len() as f64 / storm.as_secs_f64(),
        "conn/s",
    );
    if let (Some(a), Some(b)) = (rss_before, rss_after) {
        r.add(
            "resident bytes per idle connection",
            (b.saturating_sub(a)) as f64 / held.len().max(1) as f64,
            "B",
        );
        r.server_rss_bytes_start = Some(a);
        r.server_rss_bytes_end = Some(b);
    }
    r.server_cpu_seconds = target.cpu_seconds();
    Ok(r)
}

// ---- pairs ----

/// The message id of each message sent: the step it belongs to and when it
/// was scheduled (ns since the run's epoch), then 7 random bytes. The body
/// is MLS ciphertext the recipient does not decrypt, so the timing travels
/// in the id, which the envelope carries in the clear.
fn message_id(step: u8, scheduled: Duration) -> Vec<u8> {
    let mut id = Vec::with_capacity(16);
    id.push(step);
    id.extend_from_slice(&(scheduled.as_nanos() as u64).to_be_bytes());
    id.extend_from_slice(&rand::random::<[u8; 7]>());
    id
}

fn parse_message_id(id: &[u8]) -> Option<(u8, Duration)> {
    let ns = u64::from_be_bytes(id.get(1..9)?.try_into().ok()?);
    Some((*id.first()?, Duration::from_nanos(ns)))
}

/// Sets up a conversation (an MLS group) for each pair of devices, 32
/// pairs at a time, and returns each device's pool of pre-encrypted
/// messages for its partner (see `groups::POOL` for why pre-encrypted).
async fn pair_groups(
    devices: &[Device],
    conns: Vec<Connection>,
    size: usize,
    progress: &(dyn Fn(String) + Sync),
) -> Result<(Vec<Connection>, Vec<Arc<Vec<Vec<u8>>>>)> {
    let gate = Arc::new(Semaphore::new(32));
    let mut tasks = Vec::with_capacity(devices.len() / 2);
    let mut conns = conns.into_iter();
    for pair in devices.chunks(2) {
        let (a, b) = (pair[0].clone(), pair[1].clone());
        let (ca, cb) = (conns.next(), conns.next());
        let (Some(ca), Some(cb)) = (ca, cb) else {
            bail!("a device has no connection")
        };
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            groups::conversation(a, b, ca, cb, size, groups::POOL).await
        }));
    }
    let pairs = tasks.len();
    let mut back = Vec::with_capacity(devices.len());
    let mut pools = Vec::with_capacity(devices.len());
    for (i, t) in tasks.into_iter().enumerate() {
        let ((ca, pa), (cb, pb)) = t.await??;
        back.extend([ca, cb]);
        pools.extend([Arc::new(pa), Arc::new(pb)]);
        if (i + 1).is_multiple_of(100) || i + 1 == pairs {
            progress(format!("MLS groups set up: {}/{pairs}", i + 1));
        }
    }
    Ok((back, pools))
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    errors: AtomicU64,
}

struct StepResult {
    offered: f64,
    delivered_in_window: u64,
    window: Duration,
    deliver: Histogram<u64>,
    ack: Histogram<u64>,
    errors: u64,
}

async fn pairs(target: &Target, p: &Params, progress: &(dyn Fn(String) + Sync)) -> Result<Report> {
    if p.clients < 2 || !p.clients.is_multiple_of(2) {
        bail!("pairs needs an even number of clients (at least 2)");
    }
    let devices =
        device::register_many(&target.url, target.outbox.clone(), p.clients, progress).await?;
    let mut conns = Vec::with_capacity(devices.len());
    for (i, d) in devices.iter().enumerate() {
        conns.push(device::connect(&target.url, d, device::source_ip(i, p.source_ips)).await?);
    }
    let (mut conns, pools) = pair_groups(&devices, conns, p.size, progress).await?;
    let ciphertext = pools.first().and_then(|p| p.first()).map_or(0, Vec::len);
    let epoch = Instant::now();
    let cpu_start = target.cpu_seconds();
    let mut r = Report::new(
        "pairs",
        params_json(p),
        &format!(
            "Devices in 1:1 pairs, each pair an MLS group (set up before measuring: KeyPackages \
             uploaded, group created by an epoch-0 commit with the partner's Welcome), each device sending \
             MLS application messages to its partner on a fixed schedule (open loop: rate/N per device, \
             missed ticks are sent late but timed from their scheduled instant, so queueing shows as \
             latency). Each sender pre-encrypts a pool of {} ciphertexts before the timed phase and sends \
             them in turn, so the bench's CPU goes to the server, not to client-side MLS (the server \
             checks a message's group and epoch, which are real, and cannot see generations); recipients \
             ack without decrypting. The send time travels in the message id. Delivery latency = \
             scheduled send -> Deliver frame read at the recipient; ack latency = scheduled send -> \
             SendAck read at the sender. Counted over the window after warm-up; every delivery is acked.",
            groups::POOL
        ),
    );
    r.add("MLS ciphertext bytes per message", ciphertext as f64, "B");
    if !p.max {
        let (_, step) = pairs_step(conns, &pools, p, p.rate, 0, epoch, progress).await?;
        record_step(&mut r, &step, "");
    } else {
        let mut rate = p.rate.max(100.0);
        let (mut good, mut bad): (Option<f64>, Option<f64>) = (None, None);
        let mut step_no = 0u8;
        for _ in 0..10 {
            let (back, step) = pairs_step(conns, &pools, p, rate, step_no, epoch, progress).await?;
            conns = back;
            step_no = step_no.wrapping_add(1);
            let p99 = step.deliver.value_at_quantile(0.99) as f64 / 1000.0;
            let kept_up =
                step.delivered_in_window as f64 >= 0.95 * step.offered * step.window.as_secs_f64();
            let ok = kept_up && p99 < 50.0 && step.errors == 0;
            progress(format!(
                "rate {rate:.0}/s: p99 {p99:.1} ms, kept up: {kept_up} -> {}",
                if ok { "ok" } else { "too much" }
            ));
            record_step(&mut r, &step, &format!("@{rate:.0}/s "));
            if ok {
                good = Some(rate)
            } else {
                bad = Some(rate)
            }
            rate = match (good, bad) {
                (Some(g), None) => g * 2.0,
                (Some(g), Some(b)) if b / g > 1.1 => (g + b) / 2.0,
                (None, Some(b)) if b > 100.0 => b / 2.0,
                _ => break,
            };
        }
        r.add("max rate with p99 < 50 ms", good.unwrap_or(0.0), "msg/s");
    }
    if let (Some(a), Some(b)) = (cpu_start, target.cpu_seconds()) {
        r.server_cpu_seconds = Some(b - a);
    }
    r.server_rss_bytes_end = target.rss_bytes();
    Ok(r)
}

fn record_step(r: &mut Report, s: &StepResult, prefix: &str) {
    r.add(format!("{prefix}offered rate"), s.offered, "msg/s");
    r.add(
        format!("{prefix}delivered rate"),
        s.delivered_in_window as f64 / s.window.as_secs_f64(),
        "msg/s",
    );
    r.add_latency(&format!("{prefix}send->deliver"), &s.deliver);
    r.add_latency(&format!("{prefix}send->ack"), &s.ack);
    r.add(format!("{prefix}errors"), s.errors as f64, "");
}

#[allow(clippy::too_many_arguments)]
async fn pairs_step(
    conns: Vec<Connection>,
    pools: &[Arc<Vec<Vec<u8>>>],
    p: &Params,
    rate: f64,
    step: u8,
    epoch: Instant,
    progress: &(dyn Fn(String) + Sync),
) -> Result<(Vec<Connection>, StepResult)> {
    let n = conns.len();
    let per_device = rate / n as f64;
    let interval = Duration::from_secs_f64(1.0 / per_device.max(1e-6));
    let start = epoch.elapsed() + Duration::from_millis(200);
    let window_start = start + p.warmup;
    let stop = window_start + p.duration;
    let counters = Arc::new(Counters::default());
    let mut tasks = Vec::with_capacity(n);
    for (i, conn) in conns.into_iter().enumerate() {
        let (pool, counters) = (pools[i].clone(), counters.clone());
        // Spread the devices' schedules over one interval.
        let phase = interval.mul_f64(i as f64 / n as f64);
        tasks.push(tokio::spawn(device_loop(
            conn,
            pool,
            step,
            epoch,
            start + phase,
            interval,
            window_start,
            stop,
            counters,
        )));
    }
    let reporter = {
        let counters = counters.clone();
        async move {
            let t0 = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                progress(format!(
                    "[{rate:.0}/s offered] t={:.0}s sent={} acked={} delivered={} errors={}",
                    t0.elapsed().as_secs_f64(),
                    counters.sent.load(Relaxed),
                    counters.acked.load(Relaxed),
                    counters.delivered.load(Relaxed),
                    counters.errors.load(Relaxed)
                ));
            }
        }
    };
    let collect = async {
        let mut back = Vec::with_capacity(n);
        let (mut deliver, mut ack) = (histogram(), histogram());
        let mut delivered = 0;
        for t in tasks {
            let (conn, d, a, c) = t.await??;
            deliver.add(&d)?;
            ack.add(&a)?;
            delivered += c;
            back.push(conn);
        }
        Ok::<_, anyhow::Error>((back, deliver, ack, delivered))
    };
    let (back, deliver, ack, delivered) = tokio::select! {
        r = collect => r?,
        _ = reporter => unreachable!("the reporter never ends"),
    };
    Ok((
        back,
        StepResult {
            offered: rate,
            delivered_in_window: delivered,
            window: p.duration,
            deliver,
            ack,
            errors: counters.errors.load(Relaxed),
        },
    ))
}

/// One device: sends on its schedule until `stop`, reads answers and
/// deliveries throughout, then drains for a while. Returns its connection,
/// its histograms and how many deliveries fell in the measured window.
#[allow(clippy::too_many_arguments)]
async fn device_loop(
    mut conn: Connection,
    pool: Arc<Vec<Vec<u8>>>,
    step: u8,
    epoch: Instant,
    first: Duration,
    interval: Duration,
    window_start: Duration,
    stop: Duration,
    counters: Arc<Counters>,
) -> Result<(Connection, Histogram<u64>, Histogram<u64>, u64)> {
    let (mut deliver, mut ack) = (histogram(), histogram());
    let mut in_flight: HashMap<u64, Duration> = HashMap::new();
    let mut in_window = 0u64;
    let mut ticker = tokio::time::interval_at((epoch + first).into(), interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let drain_until = epoch + stop + Duration::from_secs(3);
    let mut sending = true;
    let mut next = 0usize;
    loop {
        tokio::select! {
            at = ticker.tick(), if sending => {
                let scheduled = at.into_std().duration_since(epoch);
                if scheduled >= stop {
                    sending = false;
                    continue;
                }
                let body = pool[next % pool.len()].clone();
                next += 1;
                let id = conn
                    .send(Request::SendMessage(v1::SendMessage {
                        message_id: message_id(step, scheduled),
                        body,
                        ..Default::default()
                    }))
                    .await?;
                in_flight.insert(id, scheduled);
                counters.sent.fetch_add(1, Relaxed);
            }
            frame = conn.next_frame() => {
                let frame = frame?;
                let now = epoch.elapsed();
                match frame.body {
                    Some(Body::SendAck(_)) => {
                        if let Some(s) = in_flight.remove(&frame.request_id)
                            && s >= window_start
                        {
                            ack.record(micros(now.saturating_sub(s)))?;
                        }
                        counters.acked.fetch_add(1, Relaxed);
                    }
                    Some(Body::Error(e)) => {
                        in_flight.remove(&frame.request_id);
                        counters.errors.fetch_add(1, Relaxed);
                        if counters.errors.load(Relaxed) < 5 {
                            eprintln!("server error: {e}");
                        }
                    }
                    Some(Body::Deliver(d)) => {
                        let seqs = d.envelopes.iter().map(|e| e.seq).collect();
                        for e in &d.envelopes {
                            if let Some((s_step, s)) = parse_message_id(&e.message_id)
                                && s_step == step
                                && s >= window_start
                                && s < stop
                            {
                                deliver.record(micros(now.saturating_sub(s)))?;
                                in_window += 1;
                            }
                        }
                        counters.delivered.fetch_add(d.envelopes.len() as u64, Relaxed);
                        conn.send(Request::AckDeliveries(v1::AckDeliveries { seqs })).await?;
                    }
                    _ => {}
                }
            }
            _ = tokio::time::sleep_until(drain_until.into()) => break,
        }
        if !sending
            && in_flight.is_empty()
            && Instant::now() > epoch + stop + Duration::from_millis(500)
        {
            // Our sends are all acked; keep reading a little for deliveries.
            if Instant::now() >= drain_until - Duration::from_millis(2500) {
                break;
            }
        }
    }
    Ok((conn, deliver, ack, in_window))
}

// ---- offline ----

async fn offline(
    target: &Target,
    p: &Params,
    progress: &(dyn Fn(String) + Sync),
) -> Result<Report> {
    let devices = device::register_many(&target.url, target.outbox.clone(), 2, progress).await?;
    let (sender, receiver): (&Device, &Device) = (&devices[0], &devices[1]);
    // Setup: the two devices' conversation, with the recipient online to
    // upload its KeyPackages and join; then it goes offline.
    progress("setting up the MLS group".into());
    let s = device::connect(&target.url, sender, None).await?;
    let r_setup = device::connect(&target.url, receiver, None).await?;
    let ((mut s, pool), (r_setup, _)) = groups::conversation(
        sender.clone(),
        receiver.clone(),
        s,
        r_setup,
        p.size,
        groups::POOL,
    )
    .await?;
    r_setup.close().await;
    progress(format!(
        "queueing {} messages for an offline device",
        p.messages
    ));
    let queued_at = Instant::now();
    let mut in_flight = 0usize;
    let mut sent = 0usize;
    let mut acked = 0usize;
    while acked < p.messages {
        while sent < p.messages && in_flight < 512 {
            s.send(Request::SendMessage(v1::SendMessage {
                message_id: rand::random::<[u8; 16]>().to_vec(),
                body: pool[sent % pool.len()].clone(),
                ..Default::default()
            }))
            .await?;
            sent += 1;
            in_flight += 1;
        }
        let frame = s.next_frame().await?;
        match frame.body {
            Some(Body::SendAck(_)) => {
                acked += 1;
                in_flight -= 1;
                if acked.is_multiple_of(20_000) {
                    progress(format!("queued {acked}/{}", p.messages));
                }
            }
            Some(Body::Error(e)) => bail!("the server refused a message: {e}"),
            _ => {}
        }
    }
    let queue_time = queued_at.elapsed();
    s.close().await;

    progress("the device comes online".into());
    let online = Instant::now();
    let mut r_conn = device::connect(&target.url, receiver, None).await?;
    let mut got = 0usize;
    let mut first = None;
    while got < p.messages {
        let frame = r_conn.next_frame().await?;
        if let Some(Body::Deliver(d)) = frame.body {
            first.get_or_insert_with(|| online.elapsed());
            got += d.envelopes.len();
            let seqs = d.envelopes.iter().map(|e| e.seq).collect();
            r_conn
                .send(Request::AckDeliveries(v1::AckDeliveries { seqs }))
                .await?;
        }
    }
    let drain = online.elapsed();
    let mut r = Report::new(
        "offline",
        params_json(p),
        &format!(
            "One device queues M MLS application messages for another that is offline, in their 1:1 \
             group (set up before measuring, the recipient joining while online). The sender pre-encrypts \
             a pool of {} ciphertexts and sends them in turn, so the bench's CPU goes to the server, not \
             to client-side MLS (512 sends in flight, each acked after commit). The recipient then \
             connects, authenticates and acks every Deliver frame as it arrives; drain rate = M / (time \
             from starting to connect until the last envelope is read).",
            groups::POOL
        ),
    );
    r.add("messages", p.messages as f64, "");
    r.add(
        "MLS ciphertext bytes per message",
        pool.first().map_or(0, Vec::len) as f64,
        "B",
    );
    r.add(
        "queue rate (sender, acked)",
        p.messages as f64 / queue_time.as_secs_f64(),
        "msg/s",
    );
    r.add(
        "time to first delivery",
        first.unwrap_or_default().as_secs_f64() * 1000.0,
        "ms",
    );
    r.add("drain time", drain.as_secs_f64(), "s");
    r.add(
        "drain rate",
        p.messages as f64 / drain.as_secs_f64(),
        "msg/s",
    );
    r.server_cpu_seconds = target.cpu_seconds();
    r.server_rss_bytes_end = target.rss_bytes();
    Ok(r)
}
