//! `dak bench SCENARIO`: wiring for the load generator in `dak-bench`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use dak_bench::target::{Target, raise_fd_limit};
use dak_bench::{Params, Scenario};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// connect | pairs | offline | group | media | bot
    #[arg(value_enum)]
    scenario: ScenarioArg,
    /// Simulated devices (connect, pairs).
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Offered messages per second, all devices together (pairs; the start rate with --max).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// How long to measure (pairs: each step), e.g. 10s.
    #[arg(long, default_value = "10s")]
    duration: humantime::Duration,
    /// Load before measuring starts (pairs).
    #[arg(long, default_value = "2s")]
    warmup: humantime::Duration,
    /// Body bytes per message.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Messages queued for the offline device (offline; default 100000), or sent to the group
    /// one at a time (group; default 20).
    #[arg(long)]
    messages: Option<usize>,
    /// Member devices of the group, one account each (group).
    #[arg(long, default_value_t = 1024)]
    members: usize,
    /// Least time between two messages to the group; each also waits until the previous one
    /// reached every member (group).
    #[arg(long, default_value = "1s")]
    interval: humantime::Duration,
    /// Members, spread over the tree, that send a self-update before the removal is measured
    /// again (group).
    #[arg(long, default_value_t = 4)]
    updates: usize,
    /// Most devices added by one commit while creating the group (dak-client adds 128); halved
    /// while the commit and its Welcome do not fit in one frame (group).
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Fan-out messages each member decrypts after the fan-out, from the first; each decrypt is
    /// timed alone (group).
    #[arg(long, default_value_t = 2)]
    decrypt: usize,
    /// Threads for the MLS work of the members that do not act; 0 = one per core (group).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Search for the highest rate whose p99 delivery latency stays under 50 ms (pairs).
    #[arg(long)]
    max: bool,
    /// Client sockets come from 127.0.0.1..=K, so N is not capped by one address's ports.
    #[arg(long, default_value_t = 16)]
    source_ips: usize,
    /// The file's size in MB (media).
    #[arg(long, default_value_t = 100)]
    file_mb: u64,
    /// Conversations the bot holds when its memory is read; the first --clients of them also
    /// send the load (bot; default: --clients).
    #[arg(long)]
    conversations: Option<usize>,
    /// Start a server with a fresh data directory (the default when --server is absent).
    #[arg(long)]
    spawn: bool,
    /// Use a running server instead; needs --sms-outbox to read registration codes.
    #[arg(long, conflicts_with = "spawn")]
    server: Option<String>,
    /// The running server's DATA/sms-outbox.jsonl.
    #[arg(long, requires = "server")]
    sms_outbox: Option<PathBuf>,
    /// Spawn the server with plain ws:// instead of TLS.
    #[arg(long)]
    insecure: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ScenarioArg {
    /// --clients idle authenticated connections: rate and memory per connection.
    Connect,
    /// --clients devices in 1:1 pairs sending at --rate: delivery and ack latency.
    Pairs,
    /// --messages queued for an offline device, then drained.
    Offline,
    /// One MLS group of --members devices: time to create it, fan-out latency, and the bytes of
    /// a member removal next to Sender Keys.
    Group,
    /// One --file-mb MB file: sealing and opening speed, and upload and download throughput
    /// next to curl on the same listener, with the server's memory per transfer.
    Media,
    /// A real `dak bot serve` between --clients people and a webhook: messages a second each way
    /// at --rate, send-to-webhook latency, and the bot's memory with --clients conversations.
    Bot,
}

pub async fn run(args: BenchArgs, json: bool) -> Result<()> {
    let fd_limit = raise_fd_limit();
    let target = match (&args.server, &args.sms_outbox) {
        (Some(url), Some(outbox)) => Target::external(url.clone(), outbox.clone()),
        (Some(_), None) => bail!(
            "--server needs --sms-outbox (the server's DATA/sms-outbox.jsonl) to register devices"
        ),
        _ => Target::spawn(&std::env::current_exe()?, args.insecure)?,
    };
    // Each connection costs a descriptor here and one in a spawned server.
    let devices = match args.scenario {
        ScenarioArg::Connect | ScenarioArg::Pairs => args.clients,
        ScenarioArg::Group => args.members,
        ScenarioArg::Offline | ScenarioArg::Media => 2,
        ScenarioArg::Bot => args.clients + 2,
    };
    let needed = devices as u64 + 64;
    if needed > fd_limit {
        bail!(
            "{devices} devices need about {needed} open files, but this machine allows {fd_limit} per \
             process (hard limit; raise it with `ulimit -Hn` as an administrator)"
        );
    }
    let params = Params {
        scenario: match args.scenario {
            ScenarioArg::Connect => Scenario::Connect,
            ScenarioArg::Pairs => Scenario::Pairs,
            ScenarioArg::Offline => Scenario::Offline,
            ScenarioArg::Group => Scenario::Group,
            ScenarioArg::Media => Scenario::Media,
            ScenarioArg::Bot => Scenario::Bot,
        },
        clients: args.clients,
        rate: args.rate,
        duration: Duration::from(args.duration),
        warmup: Duration::from(args.warmup),
        size: args.size,
        messages: args.messages.unwrap_or(match args.scenario {
            ScenarioArg::Group => 20,
            _ => 100_000,
        }),
        members: args.members,
        interval: Duration::from(args.interval),
        updates: args.updates,
        batch: args.batch,
        decrypt: args.decrypt,
        workers: args.workers,
        max: args.max,
        source_ips: args.source_ips,
        tls: target.url.starts_with("wss://"),
        file_mb: args.file_mb,
        conversations: args.conversations.unwrap_or(args.clients).max(args.clients),
        exe: std::env::current_exe().ok(),
    };
    eprintln!("dak bench {:?} against {}", args.scenario, target.url);
    let progress = |line: String| eprintln!("  {line}");
    let mut report = dak_bench::run(&target, &params, &progress).await?;
    if report.server_rss_bytes_end.is_none() {
        report.server_rss_bytes_end = target.rss_bytes();
    }
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", report.table());
    }
    Ok(())
}
