//! The client commands. Each opens the profile, does one thing through
//! `dak_client`, and prints for people or, with `--json`, for scripts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use dak_client::{Client, Event, Profile, TextOptions, TickState, format_id, parse_id, tick_of};
use serde_json::json;

use crate::server_cmd::{self, ServerArgs};
use crate::show::{Businesses, message_json, print_event, print_event_from};

#[derive(Parser, Debug)]
#[command(
    name = "dak",
    version,
    about = "Dak: an end-to-end encrypted messenger — server and client in one binary"
)]
pub struct Args {
    /// The device profile directory (keys and local messages).
    #[arg(
        long,
        global = true,
        env = "DAK_PROFILE",
        default_value = "dak-profile"
    )]
    profile: PathBuf,
    /// Machine-readable output: one JSON object per line.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum MediaAction {
    /// Download a message's file again (into the profile's media folder,
    /// or --to DIR), check it and save it.
    Get {
        /// The message's id (as `history` shows it).
        id: String,
        /// Save it in this folder instead.
        #[arg(long)]
        to: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (embedded store in --data).
    Server(ServerArgs),
    /// Ask for a verification code by SMS to register this number here.
    Register {
        /// Server address, e.g. wss://chat.example.org:7443; repeat it (or
        /// separate with commas) for the nodes of a cluster.
        #[arg(long, env = "DAK_SERVER", required = true, value_delimiter = ',')]
        server: Vec<String>,
        /// Phone number in international form, e.g. +919800000001
        phone: String,
        /// Offer only the classic MLS suite, as devices from before
        /// post-quantum suites do (for trying conversations with them).
        #[arg(long, hide = true)]
        classic_suite_only: bool,
    },
    /// Finish registering with the 6-digit code from the SMS.
    Verify {
        code: String,
        /// The registration-lock PIN, if the number has one.
        #[arg(long, default_value = "")]
        pin: String,
        /// A name for this device, shown in `devices list`.
        #[arg(long, default_value = "primary")]
        name: String,
    },
    /// Two-step verification: the registration-lock PIN.
    Pin {
        #[command(subcommand)]
        action: PinAction,
    },
    /// Send a text message, a file or a voice note to a number or a group
    /// (its title or id).
    Send {
        /// A number (+919800000002) or a group (its title, or the start of its id).
        to: String,
        /// The text; with --file or --voice, the caption (or give --caption).
        #[arg(required_unless_present_any = ["file", "voice"])]
        text: Option<String>,
        /// Send this file (a photo, video or document; up to 100 MB),
        /// encrypted on this device. An upload that stops is resumed by the
        /// next `dak sync`.
        #[arg(long, conflicts_with = "voice")]
        file: Option<PathBuf>,
        /// Send this recording as a voice note (a WAV file shows its length
        /// and waveform; for others give --duration).
        #[arg(long)]
        voice: Option<PathBuf>,
        /// The file's caption.
        #[arg(long)]
        caption: Option<String>,
        /// A voice note's length, when the file does not say (e.g. 7s).
        #[arg(long)]
        duration: Option<humantime::Duration>,
        /// Reply to this message (it is quoted).
        #[arg(long)]
        reply_to: Option<String>,
        /// Wait for this tick before exiting.
        #[arg(long, value_enum, default_value = "sent")]
        wait: WaitFor,
        /// Give up waiting after this long (e.g. 30s, 5m).
        #[arg(long, default_value = "5m")]
        timeout: humantime::Duration,
    },
    /// Receive everything waiting, send delivery receipts, print, exit.
    Sync,
    /// The server operator's notices (incidents, maintenance, security,
    /// an attack on your account), each checked against the operator's key
    /// and the public notice log.
    Notices,
    /// Check a server's public logs as an outside auditor, with this
    /// profile as the auditor's memory (it never registers).
    Audit {
        #[command(subcommand)]
        what: AuditWhat,
    },
    /// Stay connected and print messages and ticks as they arrive.
    Listen,
    /// Send read receipts (blue ticks).
    Read {
        /// Mark every unread message read.
        #[arg(long)]
        all: bool,
        /// Message ids to mark read.
        ids: Vec<String>,
    },
    /// Show a sent message's ticks per member and device.
    Status { id: String },
    /// Show the messages of a conversation (a number or a group) stored in this profile.
    /// Files in messages: fetch one again.
    Media {
        #[command(subcommand)]
        action: MediaAction,
    },
    History {
        conversation: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Interactive chat in the terminal, with a number or a group.
    Chat { conversation: String },
    /// React to a message with an emoji (an empty emoji takes it back).
    React {
        /// The conversation: a number (the sender's, or the recipient's for your own message) or a group.
        conversation: String,
        id: String,
        emoji: String,
    },
    /// Change the text of a message you sent (within 15 minutes).
    Edit { id: String, text: String },
    /// Delete a message you sent for everyone (within 48 hours).
    Delete { id: String },
    /// Disappearing messages: new messages in the chat are deleted after
    /// this long (e.g. 1h, 7days), on every device and on the server.
    Timer {
        conversation: String,
        /// A duration such as 24h or 7days, or "off".
        duration: String,
    },
    /// Forward a message to chats (numbers or groups); it is labelled
    /// "Forwarded", and "Forwarded many times" after 5 hops.
    Forward {
        id: String,
        #[arg(required = true)]
        to: Vec<String>,
        /// Chats one forward may reach.
        #[arg(long, env = "DAK_FORWARD_MAX_CHATS", default_value_t = 5)]
        max_chats: usize,
        /// Chats one forward may reach when the message was forwarded many times.
        #[arg(long, env = "DAK_FORWARD_MAX_CHATS_FREQUENT", default_value_t = 1)]
        max_chats_frequent: usize,
    },
    /// Groups: create, add and remove members, admins, settings, invite links.
    Group {
        #[command(subcommand)]
        action: crate::group_cmd::GroupAction,
    },
    /// Broadcast lists: one message to many contacts, each in their 1:1 chat.
    Broadcast {
        #[command(subcommand)]
        action: crate::group_cmd::BroadcastAction,
    },
    /// Show the conversation's safety number: compare it with your contact's
    /// (in person or on a call). It changes when either side's devices change.
    Safety { phone: String },
    /// Link this profile as a new device of an existing account.
    Link {
        /// Server address; repeat it (or separate with commas) for a cluster's nodes.
        #[arg(long, env = "DAK_SERVER", required = true, value_delimiter = ',')]
        server: Vec<String>,
        #[arg(long, default_value = "linked device")]
        name: String,
    },
    /// Linked devices of this account.
    Devices {
        #[command(subcommand)]
        action: DevicesAction,
    },
    /// Show this profile's number, device and server.
    Whoami,
    /// Message requests: chats that numbers you do not know started.
    Requests,
    /// Accept a message request (a number or a group): read receipts go
    /// out from now on. Writing in the chat accepts it too.
    Accept { conversation: String },
    /// Block a number: its messages and group invitations stop reaching
    /// every device of your account.
    Block { phone: String },
    /// Unblock a number.
    Unblock { phone: String },
    /// Report a number for spam or abuse (the server's operator counts
    /// reports; they never see your messages), and block it.
    Report { phone: String },
    /// Answer a business's reply buttons or list: the choice's number as
    /// `history` shows it ([1], [2], …) or its id.
    Choose {
        /// The message with the buttons or list.
        id: String,
        choice: String,
    },
    /// Show whether a number is a business, and its profile.
    Business { phone: String },
    /// The server operator's commands, on the server's store.
    Admin(crate::admin_cmd::AdminArgs),
    /// Run a business's or public service's bot: a device of its own that
    /// hands messages to the service's webhook and sends what its API is
    /// given (docs/BOTS.md).
    Bot {
        #[command(subcommand)]
        action: crate::bot::BotAction,
    },
    /// Load-test a server with simulated devices (see docs/BENCHMARKS.md).
    Bench(crate::bench_cmd::BenchArgs),
}

#[derive(Subcommand, Debug)]
enum AuditWhat {
    /// The operator's notice log: reads all of it, checks every entry's
    /// signature and place, pins the notice key at the first audit, and
    /// fails if the log does not extend the one checked last time (the
    /// operator rewrote what it had told people). Run it from time to time,
    /// from another machine than the server's.
    Notices {
        /// Server address; repeat it (or separate with commas) for a
        /// cluster's nodes.
        #[arg(long, env = "DAK_SERVER", required = true, value_delimiter = ',')]
        server: Vec<String>,
    },
    /// The key directory (key transparency): checks that every epoch since
    /// the one checked last time only added to the directory (akd's
    /// append-only proofs), and fails if its history was rewritten or cut.
    /// Devices trust a contact's keys because auditors run this.
    Keys {
        /// Server address; repeat it (or separate with commas) for a
        /// cluster's nodes.
        #[arg(long, env = "DAK_SERVER", required = true, value_delimiter = ',')]
        server: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum PinAction {
    /// Set a 6-digit PIN needed to register this number on a new phone.
    Set { pin: String },
    /// Remove the PIN.
    Clear,
}

#[derive(Subcommand, Debug)]
enum DevicesAction {
    List,
    /// Approve a device that shows this code (from `dak link`), then send
    /// it this device's recent chats and their last messages (end to end
    /// encrypted), as WhatsApp does for linked devices.
    Approve {
        code: String,
        /// How many of the most recent chats the new device gets.
        #[arg(long, default_value_t = dak_client::HistoryLimits::default().chats)]
        history_chats: usize,
        /// How many of each chat's last messages it gets.
        #[arg(long, default_value_t = dak_client::HistoryLimits::default().messages_per_chat)]
        history_messages: usize,
        /// Send no history: the new device shows only what arrives from now on.
        #[arg(long)]
        no_history: bool,
    },
    /// Unlink a device.
    Remove {
        device_id: u64,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum WaitFor {
    Sent,
    Delivered,
    Read,
}

pub async fn run(args: Args) -> Result<()> {
    let json = args.json;
    let dir = args.profile.clone();
    match args.command {
        Command::Server(s) => server_cmd::run(s).await,
        Command::Register {
            server,
            phone,
            classic_suite_only,
        } => {
            if classic_suite_only {
                open(&dir)?.offer_classic_suite_only()?;
            }
            register(&dir, &server.join(","), &phone, json).await
        }
        Command::Verify { code, pin, name } => verify(&dir, &code, &pin, &name, json).await,
        Command::Pin { action } => pin(&dir, action).await,
        Command::Send {
            to,
            text,
            file,
            voice,
            caption,
            duration,
            reply_to,
            wait,
            timeout,
        } => {
            let reply_to = reply_to.as_deref().map(parse_id).transpose()?;
            if let Some(path) = file.as_deref().or(voice.as_deref()) {
                if text.is_some() && caption.is_some() {
                    bail!("give the caption once: as the text or with --caption");
                }
                let caption = caption.or(text).unwrap_or_default();
                let f = crate::media_cmd::FileToSend {
                    path,
                    caption: &caption,
                    voice: voice.is_some(),
                    duration_ms: duration
                        .map(|d| Duration::from(d).as_millis().min(u32::MAX as u128) as u32),
                    reply_to,
                    wait: match wait {
                        WaitFor::Sent => TickState::Sent,
                        WaitFor::Delivered => TickState::Delivered,
                        WaitFor::Read => TickState::Read,
                    },
                    timeout: timeout.into(),
                };
                return crate::media_cmd::send_file(&dir, &to, f, json).await;
            }
            let opts = TextOptions {
                reply_to,
                ..Default::default()
            };
            let text = text.unwrap_or_default();
            send(&dir, &to, &text, &opts, wait, timeout.into(), json).await
        }
        Command::Media { action } => match action {
            MediaAction::Get { id, to } => {
                crate::media_cmd::get(&dir, &id, to.as_deref(), json).await
            }
        },
        Command::Sync => sync(&dir, json).await,
        Command::Notices => notices(&dir, json).await,
        Command::Audit {
            what: AuditWhat::Notices { server },
        } => audit_notices(&dir, &server.join(","), json).await,
        Command::Audit {
            what: AuditWhat::Keys { server },
        } => audit_keys(&dir, &server.join(","), json).await,
        Command::Listen => listen(&dir, json).await,
        Command::Read { all, ids } => read(&dir, all, &ids, json).await,
        Command::Status { id } => status(&dir, &id, json),
        Command::History {
            conversation,
            limit,
        } => history(&dir, &conversation, limit, json),
        Command::Chat { conversation } => {
            let peer = open(&dir)?.resolve(&conversation)?.key();
            crate::chat::run(connect(&dir).await?, peer).await
        }
        Command::React {
            conversation,
            id,
            emoji,
        } => react(&dir, &conversation, &id, &emoji, json).await,
        Command::Edit { id, text } => crate::group_cmd::edit(&dir, &id, &text, json).await,
        Command::Delete { id } => crate::group_cmd::delete(&dir, &id, json).await,
        Command::Timer {
            conversation,
            duration,
        } => crate::group_cmd::timer(&dir, &conversation, &duration, json).await,
        Command::Forward {
            id,
            to,
            max_chats,
            max_chats_frequent,
        } => {
            let limits = dak_client::ForwardLimits {
                max_chats,
                max_chats_when_frequent: max_chats_frequent,
            };
            crate::group_cmd::forward(&dir, &id, &to, limits, json).await
        }
        Command::Group { action } => crate::group_cmd::group(&dir, action, json).await,
        Command::Broadcast { action } => crate::group_cmd::broadcast(&dir, action, json).await,
        Command::Safety { phone } => safety(&dir, &phone, json).await,
        Command::Link { server, name } => link(&dir, &server.join(","), &name, json).await,
        Command::Devices { action } => devices(&dir, action, json).await,
        Command::Whoami => whoami(&dir, json),
        Command::Requests => requests(&dir, json),
        Command::Accept { conversation } => {
            let profile = open(&dir)?;
            let mut client = Client::connect(profile).await?;
            client.accept_request(&conversation)?;
            done(json, "accepted", &conversation);
            Ok(())
        }
        Command::Block { phone } => {
            connect(&dir).await?.block(&phone, true).await?;
            done(json, "blocked", &phone);
            Ok(())
        }
        Command::Unblock { phone } => {
            connect(&dir).await?.block(&phone, false).await?;
            done(json, "unblocked", &phone);
            Ok(())
        }
        Command::Report { phone } => {
            connect(&dir).await?.report(&phone).await?;
            done(json, "reported", &phone);
            Ok(())
        }
        Command::Choose { id, choice } => {
            let id = parse_id(&id)?;
            let sent = connect(&dir).await?.choose(&id, &choice).await?;
            done(json, "sent", &format_id(&sent.id));
            Ok(())
        }
        Command::Bot { action } => crate::bot::run(&dir, action, json).await,
        Command::Admin(a) => crate::admin_cmd::run(a, json).await,
        Command::Business { phone } => business(&dir, &phone, json).await,
        Command::Bench(b) => crate::bench_cmd::run(b, json).await,
    }
}

pub(crate) fn open(dir: &std::path::Path) -> Result<Profile> {
    dak_client::open_profile(dir).with_context(|| format!("cannot open profile {}", dir.display()))
}

/// Connects this profile's device. The operator's new notices are
/// printed framed on stderr first, whatever the command. When the server
/// cannot be reached, says since when and what waits to be sent.
pub(crate) async fn connect(dir: &std::path::Path) -> Result<Client> {
    let mut client = connect_keeping_notices(dir, true).await?;
    print_notices(&mut client);
    Ok(client)
}

/// The operator's notices the connect found, framed, on stderr.
fn print_notices(client: &mut Client) {
    for e in client.take_notice_events() {
        if let Some(text) = crate::show::notice_text(&e) {
            eprintln!("{text}");
        }
    }
}

/// As `connect`, leaving the notice events to the caller; `frame_ongoing`:
/// an outage note also frames the ongoing notices (`dak notices` lists
/// them itself).
async fn connect_keeping_notices(dir: &std::path::Path, frame_ongoing: bool) -> Result<Client> {
    let profile = open(dir)?;
    match Client::try_connect(profile).await {
        Ok(client) => {
            client.profile().delete("unreachable_since")?;
            Ok(client)
        }
        Err((profile, e)) if e.is_retryable() => {
            eprintln!("{}", outage_note(&profile, frame_ongoing)?);
            Err(e.into())
        }
        Err((_, e)) => Err(e.into()),
    }
}

/// What a device knows while its server does not work: since when (the
/// first failure this profile saw since its last good connection) and
/// what waits in its outbox.
/// `with_notices`: also frame the operator's ongoing notices (those read so
/// far), for a device that could not connect to show them at connect.
pub(crate) fn outage_note(profile: &Profile, with_notices: bool) -> Result<String> {
    let now = profile.now_ms();
    let since = match profile
        .get_str("unreachable_since")?
        .and_then(|s| s.parse().ok())
    {
        Some(t) => t,
        None => {
            profile.set("unreachable_since", now.to_string().as_bytes())?;
            now
        }
    };
    let waiting = profile.store().outbox()?.len();
    let mut note = String::new();
    // What the operator has said of it, as far as this device has read.
    let ongoing = if with_notices {
        dak_client::notices::ongoing(profile)?
    } else {
        Vec::new()
    };
    for n in ongoing {
        note.push_str(&crate::show::notice_frame(&n));
        note.push('\n');
    }
    note.push_str(&format!(
        "The server has not been working for this device since {}; {waiting} message(s) waiting \
         to send (🕓), sent when it is back. The operator's notices so far: dak notices",
        dak_server::status_time(since)
    ));
    Ok(note)
}

/// `dak audit notices`: one audit (`dak_client::notices::audit`); fails
/// when the log does not check.
async fn audit_notices(dir: &std::path::Path, server: &str, json: bool) -> Result<()> {
    let profile = open(dir)?;
    let mut shown = 0;
    let mut progress = |checked: u64, length: u64| {
        // Long logs say how far they are, on stderr, every 10 pages.
        if !json && length > 640 && checked >= shown + 640 {
            shown = checked;
            eprintln!("checked {checked} of {length} entries…");
        }
    };
    let audit = dak_client::notices::audit(&profile, server, &mut progress).await?;
    let (before, after) = (audit.before, audit.after);
    if json {
        println!(
            "{}",
            json!({
                "ok": audit.refused.is_empty(),
                "server_length": audit.server_length,
                "before": {"length": before.0, "head": hex::encode(before.1)},
                "checked": {"length": after.0, "head": hex::encode(after.1)},
                "refused": audit.refused,
            })
        );
    } else if audit.refused.is_empty() {
        println!(
            "The notice log checks: {} entries in all, {} new since the last audit; head {}.",
            after.0,
            after.0 - before.0,
            &hex::encode(after.1)[..16]
        );
        if audit.server_length < after.0 {
            println!(
                "This node announced {} entries: it is behind the others.",
                audit.server_length
            );
        }
    } else {
        for reason in &audit.refused {
            eprintln!("REFUSED: {reason}");
        }
    }
    if !audit.refused.is_empty() {
        bail!(
            "the notice log does not check: the operator's log is not the one this auditor saw \
             (kept: {} entries, head {})",
            after.0,
            &hex::encode(after.1)[..16]
        );
    }
    Ok(())
}

/// `dak audit keys`: one audit of the key directory
/// (`dak_client::kt_audit::audit`); fails when a step does not check.
async fn audit_keys(dir: &std::path::Path, server: &str, json: bool) -> Result<()> {
    let profile = open(dir)?;
    let mut shown = 0;
    let mut progress = |checked: u64, latest: u64| {
        // Long catch-ups say how far they are, on stderr, every 100 epochs.
        if !json && checked >= shown + 100 {
            shown = checked;
            eprintln!("checked epoch {checked} of {latest}…");
        }
    };
    let audit = dak_client::kt_audit::audit(&profile, server, &mut progress).await?;
    if json {
        println!(
            "{}",
            json!({
                "ok": audit.problem.is_none(),
                "before": audit.before,
                "checked": audit.after,
                "latest": audit.latest,
                "problem": audit.problem,
            })
        );
    } else if audit.problem.is_none() {
        println!(
            "The key directory checks: every epoch up to {} only added to the one before ({} new since the last audit).",
            audit.after,
            audit.after - audit.before
        );
    }
    if let Some(problem) = audit.problem {
        bail!(
            "the key directory does not check: {problem} (checked up to epoch {})",
            audit.after
        );
    }
    Ok(())
}

/// `dak notices`: connects to fetch new ones (if it can), then lists all.
async fn notices(dir: &std::path::Path, json: bool) -> Result<()> {
    let shown = match connect_keeping_notices(dir, false).await {
        Ok(mut client) => {
            // Refusals are said here; accepted notices are in the list.
            for e in client.take_notice_events() {
                if let dak_client::Event::NoticeRefused { .. } = e
                    && let Some(text) = crate::show::notice_text(&e)
                {
                    eprintln!("{text}");
                }
            }
            let list = client.notices()?;
            client.close().await;
            list
        }
        Err(e) if !json => {
            eprintln!("({e}; these are the notices already received)");
            dak_client::notices::notices(&open(dir)?)?
        }
        Err(_) => dak_client::notices::notices(&open(dir)?)?,
    };
    // The log as this device checked it: compare it with a contact's (the
    // same length and head means the same story).
    let (length, head) = dak_client::notices::log_state(&open(dir)?)?;
    let head = hex::encode(head);
    if json {
        println!(
            "{}",
            json!({"notices": shown, "log": {"length": length, "head": head}})
        );
        return Ok(());
    }
    if shown.is_empty() {
        println!("No notices from the server's operator.");
    }
    for n in &shown {
        println!("{}", crate::show::notice_frame(n));
    }
    if length > 0 {
        println!(
            "The log this device checked: {length} entries, head {}… (the same on a contact's device: the same story).",
            &head[..16]
        );
    }
    Ok(())
}

async fn register(dir: &std::path::Path, server: &str, phone: &str, json: bool) -> Result<()> {
    let profile = open(dir)?;
    let expires = Client::request_code(&profile, server, phone).await?;
    if json {
        println!("{}", json!({"code_sent": true, "expires_in_secs": expires}));
    } else {
        println!(
            "A 6-digit code was sent by SMS; it expires in {} minutes.",
            expires / 60
        );
        println!("Finish with: dak --profile {} verify CODE", dir.display());
    }
    Ok(())
}

async fn verify(
    dir: &std::path::Path,
    code: &str,
    pin: &str,
    name: &str,
    json: bool,
) -> Result<()> {
    let profile = open(dir)?;
    let reg = Client::verify(&profile, code, pin, name).await?;
    if json {
        println!(
            "{}",
            json!({"phone": reg.phone, "device_id": reg.device_id, "server": reg.server})
        );
    } else {
        println!(
            "Registered {} as device {} on {}.",
            reg.phone, reg.device_id, reg.server
        );
    }
    Ok(())
}

async fn pin(dir: &std::path::Path, action: PinAction) -> Result<()> {
    let mut client = connect(dir).await?;
    match action {
        PinAction::Set { pin } => {
            client.set_pin(&pin).await?;
            println!(
                "Registration lock is on: registering this number on a new phone now needs the PIN."
            );
        }
        PinAction::Clear => {
            client.set_pin("").await?;
            println!("Registration lock is off.");
        }
    }
    client.close().await;
    Ok(())
}

async fn send(
    dir: &std::path::Path,
    to: &str,
    text: &str,
    opts: &TextOptions,
    wait: WaitFor,
    timeout: Duration,
    json: bool,
) -> Result<()> {
    let mut client = match Client::connect(open(dir)?).await {
        Ok(mut c) => {
            c.profile().delete("unreachable_since")?;
            print_notices(&mut c);
            c
        }
        Err(e) if e.is_retryable() => return queue_offline(dir, to, text, opts, e, json),
        Err(e) => return Err(e.into()),
    };
    let sent = match client.send_text_with(to, text, opts).await {
        Ok(sent) => sent,
        Err(e) if e.is_retryable() => {
            eprintln!("{}", outage_note(client.profile(), false)?);
            bail!(
                "{e}; the message is queued (🕓) and goes out with your next `dak send`, `sync` or `listen`"
            )
        }
        Err(e) => return Err(e.into()),
    };
    let want = match wait {
        WaitFor::Sent => TickState::Sent,
        WaitFor::Delivered => TickState::Delivered,
        WaitFor::Read => TickState::Read,
    };
    if !json {
        println!("{} ✓", format_id(&sent.id));
    }
    if want > TickState::Sent {
        let id = sent.id.clone();
        let waited = tokio::time::timeout(
            timeout,
            client.wait_for_tick(&id, want, |e| print_event(e, false)),
        )
        .await;
        match waited {
            Ok(r) => r?,
            Err(_) => bail!(
                "the message is stored on the server (✓) but did not reach {want:?} within {timeout:?}"
            ),
        }
    }
    let state = client.tick(&sent.id)?.state;
    if json {
        println!(
            "{}",
            json!({"id": format_id(&sent.id), "tick": state, "server_time_ms": sent.server_time_ms, "recipient_devices": sent.recipient_devices})
        );
    } else if want > TickState::Sent {
        println!(
            "{} {}",
            format_id(&sent.id),
            crate::show::tick_symbol(state)
        );
    }
    client.close().await;
    Ok(())
}

/// The server is unreachable: keep the message (🕓) for the next connection.
fn queue_offline(
    dir: &std::path::Path,
    to: &str,
    text: &str,
    opts: &TextOptions,
    why: dak_client::ClientError,
    json: bool,
) -> Result<()> {
    let (id, _, _) = dak_client::queue_text_with(&open(dir)?, to, text, opts)?;
    if json {
        println!(
            "{}",
            json!({"id": format_id(&id), "tick": TickState::Pending})
        );
    } else {
        println!("{} 🕓", format_id(&id));
    }
    eprintln!("{}", outage_note(&open(dir)?, true)?);
    bail!("{why}; the message is queued and goes out with your next `dak send`, `sync` or `listen`")
}

async fn sync(dir: &std::path::Path, json: bool) -> Result<()> {
    let mut client = connect(dir).await?;
    crate::media_cmd::resume_uploads(&mut client, dir, json).await?;
    let mut count = 0usize;
    let mut with_files = Vec::new();
    let mut events = Vec::new();
    client
        .sync(|e| {
            if let Event::Message(m) = e {
                count += 1;
                if m.attachment.is_some() {
                    with_files.push(m.clone());
                }
            }
            events.push(e.clone());
        })
        .await?;
    let businesses = businesses_among(&mut client, &events).await;
    events
        .iter()
        .for_each(|e| print_event_from(e, json, &businesses));
    crate::media_cmd::save_received(&mut client, dir, &with_files, json).await;
    if !json {
        eprintln!("{count} new message(s).");
    }
    client.close().await;
    Ok(())
}

/// The senders of these messages that are businesses, so they are named
/// as such (from the profile's cache, asking the server about numbers not
/// asked about for a day). A failed lookup leaves the number as it is.
pub(crate) async fn businesses_among(client: &mut Client, events: &[Event]) -> Businesses {
    let mut found = Businesses::new();
    let mut asked = std::collections::HashSet::new();
    for e in events {
        if let Event::Message(m) = e
            && !m.outgoing
            && asked.insert(m.from.clone())
            && let Ok(Some(b)) = client.business(&m.from).await
        {
            found.insert(m.from.clone(), b);
        }
    }
    found
}

/// Stays connected; when the node goes away, reconnects to it or to
/// another node of the cluster, with backoff and jitter.
async fn listen(dir: &std::path::Path, json: bool) -> Result<()> {
    const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);
    loop {
        let mut client = Client::connect_patiently(open(dir)?, FOREVER).await?;
        loop {
            match client.next_events().await {
                Ok(events) => {
                    let businesses = businesses_among(&mut client, &events).await;
                    events
                        .iter()
                        .for_each(|e| print_event_from(e, json, &businesses));
                    let with_files: Vec<_> = events
                        .iter()
                        .filter_map(|e| match e {
                            Event::Message(m) if m.attachment.is_some() => Some(m.clone()),
                            _ => None,
                        })
                        .collect();
                    crate::media_cmd::save_received(&mut client, dir, &with_files, json).await;
                }
                Err(e) if e.is_retryable() => {
                    eprintln!("disconnected ({e}); reconnecting");
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

async fn read(dir: &std::path::Path, all: bool, ids: &[String], json: bool) -> Result<()> {
    if !all && ids.is_empty() {
        bail!("say which messages: --all, or one or more message ids");
    }
    let parsed = ids
        .iter()
        .map(|s| parse_id(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut client = connect(dir).await?;
    let n = client
        .mark_read(if all { None } else { Some(&parsed) })
        .await?;
    // Messages in requests stay unread for their senders until accepted.
    let requests = dak_client::requests::message_requests(client.profile())?;
    let held = client
        .profile()
        .unread()?
        .iter()
        .filter(|m| requests.contains_key(&m.conversation.key()))
        .count();
    if json {
        println!("{}", json!({"marked_read": n, "in_requests": held}));
    } else {
        println!("Marked {n} message(s) read.");
        if held > 0 {
            println!(
                "{held} message(s) in message requests were not: their senders learn nothing until you accept (dak requests)."
            );
        }
    }
    client.close().await;
    Ok(())
}

fn status(dir: &std::path::Path, id: &str, json: bool) -> Result<()> {
    let profile = open(dir)?;
    let id = parse_id(id)?;
    let tick = tick_of(&profile, &id)?;
    if json {
        println!(
            "{}",
            json!({"id": format_id(&id), "tick": tick.state, "devices": tick.devices})
        );
        return Ok(());
    }
    println!(
        "{} {}",
        format_id(&id),
        crate::show::tick_symbol(tick.state)
    );
    let mut members: std::collections::BTreeMap<&str, Vec<&dak_client::RecipientState>> =
        Default::default();
    for d in &tick.devices {
        members.entry(d.phone.as_str()).or_default().push(d);
    }
    for (phone, devices) in members {
        let read = devices.iter().any(|d| d.read_ms > 0);
        let delivered = devices.iter().filter(|d| d.delivered_ms > 0).count();
        let state = if read {
            "read ✓✓ (blue)".to_string()
        } else if delivered == devices.len() {
            "delivered ✓✓".to_string()
        } else {
            format!("delivered to {delivered} of {} devices ✓", devices.len())
        };
        println!("  {phone}: {state}");
        for d in devices {
            let s = if d.read_ms > 0 {
                "read"
            } else if d.delivered_ms > 0 {
                "delivered"
            } else {
                "sent (the server holds it)"
            };
            println!("    device {}: {s}", d.device_id);
        }
    }
    Ok(())
}

fn history(dir: &std::path::Path, conversation: &str, limit: usize, json: bool) -> Result<()> {
    let profile = open(dir)?;
    let conversation = profile.resolve(conversation)?.key();
    let messages = profile.conversation(&conversation, limit)?;
    // Senders known (from the cache) to be businesses, each looked up once.
    let mut businesses = Businesses::new();
    if !json {
        let senders: std::collections::BTreeSet<&str> = messages
            .iter()
            .filter(|m| !m.outgoing)
            .map(|m| m.from.as_str())
            .collect();
        for from in senders {
            if let Ok(Some(Some(b))) = dak_client::business::cached_business(&profile, from) {
                businesses.insert(from.to_string(), b);
            }
        }
    }
    for m in messages {
        let reactions = profile.reactions(&m.id)?;
        if json {
            let mut v = message_json(&m);
            if let Some(path) = crate::media_cmd::saved_path(&profile, &m.id) {
                v["saved_at"] = json!(path);
            }
            if m.outgoing {
                v["tick"] = json!(tick_of(&profile, &m.id)?.state);
            }
            v["reactions"] = json!(
                reactions
                    .iter()
                    .map(|(phone, emoji)| json!({"from": phone, "emoji": emoji}))
                    .collect::<Vec<_>>()
            );
            println!("{v}");
        } else {
            let id = m.id.clone();
            let saved = crate::media_cmd::saved_path(&profile, &id);
            print_event_from(&Event::Message(m), false, &businesses);
            if let Some(path) = saved {
                println!("    saved at {path}");
            }
            if !reactions.is_empty() {
                let shown: Vec<String> = reactions
                    .iter()
                    .map(|(phone, emoji)| format!("{emoji} {phone}"))
                    .collect();
                println!(
                    "    {}  ({})",
                    crate::show::terminal_safe(&shown.join("  ")),
                    format_id(&id)
                );
            }
        }
    }
    Ok(())
}

async fn link(dir: &std::path::Path, server: &str, name: &str, json: bool) -> Result<()> {
    let profile = open(dir)?;
    let reg = Client::link(&profile, server, name, |code, expires| {
        if json {
            println!("{}", json!({"link_code": code, "expires_in_secs": expires}));
        } else {
            println!("Linking code: {code}");
            if let Ok(qr) = qrcode::QrCode::new(format!("dak-link:{code}")) {
                println!(
                    "{}",
                    qr.render::<qrcode::render::unicode::Dense1x2>()
                        .quiet_zone(true)
                        .build()
                );
            }
            println!(
                "On your phone run: dak devices approve {code}   (expires in {} minutes)",
                expires / 60
            );
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    })
    .await?;
    if json {
        println!(
            "{}",
            json!({"phone": reg.phone, "device_id": reg.device_id})
        );
    } else {
        println!("Linked as device {} of {}.", reg.device_id, reg.phone);
    }
    Ok(())
}

async fn devices(dir: &std::path::Path, action: DevicesAction, json: bool) -> Result<()> {
    let mut client = connect(dir).await?;
    match action {
        DevicesAction::List => {
            let me = client.device_id();
            for d in client.devices().await? {
                if json {
                    println!(
                        "{}",
                        json!({"device_id": d.device_id, "name": d.name, "primary": d.primary, "created_ms": d.created_ms, "last_seen_ms": d.last_seen_ms, "this_device": d.device_id == me})
                    );
                } else {
                    let role = if d.primary { "primary" } else { "linked" };
                    let this = if d.device_id == me {
                        "  (this device)"
                    } else {
                        ""
                    };
                    println!("{:>6}  {role:<8} {}{this}", d.device_id, d.name);
                }
            }
        }
        DevicesAction::Approve {
            code,
            history_chats,
            history_messages,
            no_history,
        } => {
            let d = client.approve_link(&code).await?;
            if !json {
                println!("Linked device {} ({}).", d.device_id, d.name);
            }
            let history = if no_history {
                None
            } else {
                if !json {
                    println!("Sending it your recent chats (end to end encrypted)…");
                }
                let limits = dak_client::HistoryLimits {
                    chats: history_chats,
                    messages_per_chat: history_messages,
                };
                // Linked either way: a history that could not be sent is
                // reported, and the device gets new messages regardless.
                Some(client.share_history(d.device_id, limits).await)
            };
            let (sent, failed) = match history {
                Some(Ok(h)) => (Some(h), None),
                Some(Err(e)) => (None, Some(e.to_string())),
                None => (None, None),
            };
            if json {
                println!(
                    "{}",
                    json!({"device_id": d.device_id, "name": d.name, "history": sent, "history_error": failed})
                );
            } else if let Some(h) = sent {
                let n = |count: usize, one: &str, many: &str| {
                    format!("{count} {}", if count == 1 { one } else { many })
                };
                println!(
                    "Sent {} from {} in {}.",
                    n(h.messages, "message", "messages"),
                    n(h.chats, "chat", "chats"),
                    n(h.parts, "part", "parts")
                );
                if h.left_out > 0 {
                    println!(
                        "{} messages were too large to send and were left out.",
                        h.left_out
                    );
                }
            }
            if let Some(e) = failed {
                eprintln!("The history was not sent: {e}");
            }
        }
        DevicesAction::Remove { device_id } => {
            client.remove_device(device_id).await?;
            if json {
                println!("{}", json!({"removed": device_id}));
            } else {
                println!("Removed device {device_id}.");
            }
        }
    }
    client.close().await;
    Ok(())
}

async fn react(
    dir: &std::path::Path,
    phone: &str,
    id: &str,
    emoji: &str,
    json: bool,
) -> Result<()> {
    let id = parse_id(id)?;
    let mut client = connect(dir).await?;
    let sent = client.react(phone, &id, emoji).await?;
    if json {
        println!(
            "{}",
            json!({"id": format_id(&sent.id), "tick": TickState::Sent})
        );
    } else {
        println!("{} ✓", format_id(&sent.id));
    }
    client.close().await;
    Ok(())
}

async fn safety(dir: &std::path::Path, phone: &str, json: bool) -> Result<()> {
    let phone = &dak_proto::normalize_phone(phone)?;
    let mut client = connect(dir).await?;
    let safety = client.safety(phone).await?;
    let number = &safety.number;
    let me = client.phone().to_string();
    let classic_because: Vec<_> = safety
        .classic_because
        .iter()
        .map(|(phone, device)| json!({"phone": phone, "device_id": device}))
        .collect();
    if json {
        println!(
            "{}",
            json!({
                "you": me,
                "contact": phone,
                "safety_number": number,
                "post_quantum": safety.post_quantum,
                "ciphersuite": safety.suite,
                "classic_because": classic_because,
                "server_chose_classic": safety.server_chose_classic,
                "key_transparency": safety.key_transparency,
            })
        );
    } else {
        println!("Safety number for you ({me}) and {phone}:\n");
        for row in number.split(' ').collect::<Vec<_>>().chunks(4) {
            println!("    {}", row.join(" "));
        }
        println!(
            "\nIt matches on both phones if nobody is in between. It changes when either of you adds or removes a device."
        );
        println!("\n{}", crate::show::encryption_line(&safety));
        println!("{}", crate::show::key_transparency_line(&safety));
    }
    client.close().await;
    Ok(())
}

/// One line saying what was done to whom.
async fn business(dir: &std::path::Path, phone: &str, json: bool) -> Result<()> {
    let mut client = connect(dir).await?;
    let found = client.fetch_business(phone).await?;
    client.close().await;
    let Some(b) = found else {
        if json {
            println!("{}", json!({"phone": phone, "business": false}));
        } else {
            println!("{phone} is not a business account.");
        }
        return Ok(());
    };
    if json {
        println!(
            "{}",
            json!({"business": true, "label": b.label(), "profile": b, "note": dak_client::business::E2E_NOTE})
        );
        return Ok(());
    }
    println!("{}", crate::show::terminal_safe(&b.label()));
    if b.verified {
        println!(
            "  Verified by this server's operator as {:?}.",
            b.display_name
        );
    } else {
        println!(
            "  Not verified: it calls itself {:?}, which no one has checked.",
            b.display_name
        );
    }
    for (what, v) in [
        ("category", &b.category),
        ("about", &b.description),
        ("address", &b.address),
        ("website", &b.website),
    ] {
        if !v.is_empty() {
            println!("  {what}: {}", crate::show::terminal_safe(v));
        }
    }
    println!("  {}", dak_client::business::E2E_NOTE);
    Ok(())
}

fn done(json: bool, what: &str, to: &str) {
    if json {
        println!("{}", json!({ what: to }));
    } else {
        println!("{what} {to}");
    }
}

fn requests(dir: &std::path::Path, json: bool) -> Result<()> {
    let profile = open(dir)?;
    let requests = dak_client::requests::message_requests(&profile)?;
    for (conversation, from) in &requests {
        if json {
            println!("{}", json!({"conversation": conversation, "from": from}));
        } else {
            println!("{conversation}: from {from} (dak accept, dak block or dak report)");
        }
    }
    if requests.is_empty() && !json {
        println!("no message requests");
    }
    Ok(())
}

fn whoami(dir: &std::path::Path, json: bool) -> Result<()> {
    let reg = open(dir)?.registration()?;
    if json {
        println!(
            "{}",
            json!({"phone": reg.phone, "device_id": reg.device_id, "server": reg.server})
        );
    } else {
        println!("{} device {} on {}", reg.phone, reg.device_id, reg.server);
    }
    Ok(())
}
