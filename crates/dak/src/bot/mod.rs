//! `dak bot serve`: a business's or public service's bot, as a device of
//! its own (docs/BOTS.md).
//!
//! The bot is an ordinary Dak device: its profile holds its keys, it
//! connects to the Dak server like any phone, and messages to it are end
//! to end encrypted to it. The service's own backend talks to it over
//! HTTP on the service's network: incoming messages, choices and ticks go
//! to the service's webhook (`webhook.rs`, from the durable queue in
//! `queue.rs`), and the service sends through `POST /v1/messages`
//! (`api.rs`). So the end of the encryption is the service's machine, not
//! the Dak server (WhatsApp's Cloud API decrypts on Meta's servers).
//!
//! One task owns the `Client` (`device_task`): it waits on either a push
//! from the server or a command from the API, as `dak chat` does, and
//! handles each to completion. Every event reaches the queue after the
//! profile has it; if the bot dies between the two, `reconcile` finds it
//! again at the next start from the profile (unread messages, ticks not
//! yet reported), and the queue's deterministic event ids keep it from
//! being delivered twice.
//!
//! Backpressure: when `queue_max` events wait for the webhook, the bot
//! stops reading from the server. Messages then wait in its mailbox on
//! the server (which keeps them for its retention, 30 days by default):
//! nothing is dropped, and the webhook is not flooded when it comes back.

mod api;
mod media;
pub mod queue;
mod templates;
pub mod webhook;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use dak_client::{Client, ClientError, Event, MessageView, Profile, TickState, format_id};
use serde_json::json;
use tokio::sync::{Notify, mpsc, oneshot};

use queue::{BotDb, NewEvent};

#[derive(Subcommand, Debug)]
pub enum BotAction {
    /// Print the API's OpenAPI 3.1 document (what `serve` offers at
    /// /v1/openapi.json), to generate a client from.
    Openapi,
    /// Make this profile's account a business and set what every client
    /// shows on its chats. Clients show the name only once the server's
    /// operator verifies it (`dak admin verify-business`); until then they
    /// show the number and "business account".
    Profile {
        /// The name to show, e.g. "Dak Rail" (a new name needs verifying again).
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long, default_value = "")]
        address: String,
        /// An https:// address.
        #[arg(long, default_value = "")]
        website: String,
        /// e.g. Railways, Government, Bank.
        #[arg(long, default_value = "")]
        category: String,
        /// A PNG, JPEG or WebP image of at most 48 KiB.
        #[arg(long)]
        logo: Option<PathBuf>,
    },
    /// Run the bot: stay connected as this profile's device, hand what
    /// arrives to the webhook, and serve the HTTP API the service sends
    /// with. The profile is registered as any account is (`dak register`,
    /// `dak verify`).
    Serve {
        /// Where the service's backend reaches the API (keep it on a
        /// private network or loopback; it needs the token too).
        #[arg(long, default_value = "127.0.0.1:8088")]
        listen: SocketAddr,
        /// The service's webhook: events are POSTed here as JSON.
        #[arg(long)]
        webhook: reqwest::Url,
        /// The webhook's HMAC secret; made (32 random bytes, hex) if the
        /// file does not exist [default: PROFILE/webhook.secret].
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// The API's bearer token; made if the file does not exist
        /// [default: PROFILE/api.token].
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Message templates (TOML), for users outside the 24-hour window.
        #[arg(long)]
        templates: Option<PathBuf>,
        /// How long one webhook call may take.
        #[arg(long, default_value = "10s")]
        webhook_timeout: humantime::Duration,
        /// How long an event is retried before it is given up.
        #[arg(long, default_value = "24h")]
        retry_for: humantime::Duration,
        /// Events waiting for the webhook before the bot stops taking
        /// messages from the server (they wait there instead).
        #[arg(long, default_value_t = 100_000)]
        queue_max: u64,
    },
}

pub async fn run(dir: &Path, action: BotAction, json: bool) -> Result<()> {
    match action {
        BotAction::Openapi => {
            println!(
                "{}",
                serde_json::to_string_pretty(&api::openapi_document())?
            );
            Ok(())
        }
        BotAction::Profile {
            name,
            description,
            address,
            website,
            category,
            logo,
        } => {
            let logo = match logo {
                Some(p) => {
                    std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?
                }
                None => Vec::new(),
            };
            let profile = dak_proto::v1::BusinessProfile {
                display_name: name,
                description,
                address,
                website,
                category,
                logo,
            };
            let mut client = crate::cli::connect(dir).await?;
            client.set_business_profile(profile).await?;
            let phone = client.phone().to_string();
            let me = client.fetch_business(&phone).await?;
            client.close().await;
            let verified = me.as_ref().is_some_and(|b| b.verified);
            if json {
                println!("{}", json!({"business": true, "verified": verified}));
            } else if verified {
                println!("Business profile set; it is verified.");
            } else {
                println!(
                    "Business profile set. Clients show this number as a business account; ask the server's operator to verify the name (dak admin verify-business)."
                );
            }
            Ok(())
        }
        BotAction::Serve {
            listen,
            webhook,
            secret_file,
            token_file,
            templates,
            webhook_timeout,
            retry_for,
            queue_max,
        } => {
            if !matches!(webhook.scheme(), "http" | "https") {
                bail!("the webhook must be an http:// or https:// URL");
            }
            let profile = crate::cli::open(dir)?;
            let me = profile.registration()?.phone;
            drop(profile);
            let secret = read_or_make_secret(&secret_file.unwrap_or(dir.join("webhook.secret")))?;
            let token = read_or_make_secret(&token_file.unwrap_or(dir.join("api.token")))?;
            let templates = match templates {
                Some(p) => templates::Templates::load(&p)?,
                None => templates::Templates::default(),
            };
            if !json {
                let names: Vec<&str> = templates.names().collect();
                if !names.is_empty() {
                    println!("templates: {}", names.join(", "));
                }
            }
            let db = Arc::new(BotDb::open(dir)?);
            db.prune(webhook::now_ms())?;
            std::fs::create_dir_all(media::dir(dir))?;
            media::prune(dir);
            let wake = Arc::new(Notify::new());
            let drained = Arc::new(Notify::new());
            let (tx, rx) = mpsc::channel(1024);
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            let addr = listener.local_addr()?;
            if json {
                println!("{}", json!({"listening": addr.to_string(), "phone": me}));
            } else {
                println!("Bot {me}: API on http://{addr}/v1/ , events to {webhook}");
            }
            tokio::spawn(webhook::deliver(
                db.clone(),
                webhook::Webhook {
                    url: webhook,
                    secret,
                    timeout: webhook_timeout.into(),
                    retry_for: retry_for.into(),
                },
                wake.clone(),
                drained.clone(),
            ));
            let state = api::ApiState {
                commands: tx,
                db: db.clone(),
                token,
                templates: Arc::new(templates),
                me,
                dir: dir.to_path_buf(),
            };
            let server = tokio::spawn(api::serve(listener, state));
            let device = device_task(dir.to_path_buf(), db, wake, drained, rx, queue_max);
            tokio::select! {
                r = device => r,
                r = server => r.context("the API stopped")?,
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        }
    }
}

/// The secret in `path`, or a new one written there (owner-only).
fn read_or_make_secret(path: &Path) -> Result<Vec<u8>> {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let s = s.trim();
            if s.len() < 16 {
                bail!(
                    "{}: a secret must be at least 16 characters",
                    path.display()
                );
            }
            Ok(s.as_bytes().to_vec())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = hex::encode(rand::random::<[u8; 32]>());
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            use std::io::Write;
            options
                .open(path)
                .and_then(|mut f| f.write_all(format!("{secret}\n").as_bytes()))
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("made a new secret in {}", path.display());
            Ok(secret.into_bytes())
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// A command from the API with its deadline: the device starts it only
/// before then, and says when it does (`started`), so the API can answer
/// 503 at the deadline knowing that a command not started never will be.
pub(crate) struct Job {
    pub deadline: Instant,
    pub started: oneshot::Sender<()>,
    pub cmd: Command,
}

/// What the API asks of the device.
pub(crate) enum Command {
    Send {
        to: String,
        text: String,
        opts: dak_client::TextOptions,
        reply: oneshot::Sender<Result<SendResult, ClientError>>,
    },
    Status {
        id: Vec<u8>,
        reply: oneshot::Sender<Result<(MessageView, dak_client::Tick), ClientError>>,
    },
    Read {
        id: Vec<u8>,
        reply: oneshot::Sender<Result<usize, ClientError>>,
    },
    /// A received message with a file, with where and how to fetch it.
    Received {
        id: Vec<u8>,
        reply: oneshot::Sender<Result<(MessageView, String, dak_client::CertTrust), ClientError>>,
    },
    /// Tells the server this device has a file (the blob may go).
    Fetched { blob_id: Vec<u8> },
    /// An upload slot for a sealed file, with where and how to upload it.
    Slot {
        length: u64,
        sha256: [u8; 32],
        capability: Vec<u8>,
        reply: oneshot::Sender<Result<Slot, ClientError>>,
    },
}

/// A send the server answered (✓), or one whose answer was lost with the
/// connection: it stays in the outbox and goes with the same id when the
/// bot connects again (receivers drop a repeat by id).
pub(crate) enum SendResult {
    Sent(dak_client::SendOutcome),
    Pending(Vec<u8>),
}

pub(crate) struct Slot {
    pub slot: dak_proto::v1::BlobSlot,
    pub server: String,
    pub trust: dak_client::CertTrust,
}

async fn device_task(
    dir: PathBuf,
    db: Arc<BotDb>,
    wake: Arc<Notify>,
    drained: Arc<Notify>,
    mut commands: mpsc::Receiver<Job>,
    queue_max: u64,
) -> Result<()> {
    const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);
    // Once, at start: within a run every event reaches the queue (a failed
    // write ends the run), so only a run that died can have left a gap.
    reconcile(&crate::cli::open(&dir)?, &db)?;
    wake.notify_one();
    loop {
        let profile = crate::cli::open(&dir)?;
        let mut client = Client::connect_patiently(profile, FOREVER).await?;
        tracing::info!("the bot is connected");
        loop {
            // Backpressure: the webhook is behind, so leave messages on the server.
            while db.waiting() >= queue_max {
                tokio::select! {
                    _ = drained.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    cmd = commands.recv() => match cmd {
                        Some(cmd) => on_command(&mut client, cmd).await,
                        None => return Ok(()),
                    },
                }
            }
            let events = tokio::select! {
                push = client.recv_push() => match push {
                    Ok(body) => client.handle_push(body).await,
                    Err(e) => Err(e),
                },
                cmd = commands.recv() => match cmd {
                    Some(cmd) => {
                        on_command(&mut client, cmd).await;
                        Ok(client.take_pending_events())
                    }
                    None => return Ok(()),
                },
            };
            match events {
                Ok(events) => {
                    if queue_events(client.profile(), &db, &events)? > 0 {
                        wake.notify_one();
                    }
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "disconnected; reconnecting");
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

async fn on_command(client: &mut Client, job: Job) {
    if Instant::now() > job.deadline || job.started.send(()).is_err() {
        return; // the API has answered 503 for it
    }
    match job.cmd {
        Command::Send {
            to,
            text,
            opts,
            reply,
        } => {
            let _ = reply.send(send_now(client, &to, &text, &opts).await);
        }
        Command::Status { id, reply } => {
            let result = (|| {
                let m = client
                    .profile()
                    .message(&id)?
                    .ok_or_else(|| ClientError::Usage(format!("no message {}", format_id(&id))))?;
                Ok((m, dak_client::tick_of(client.profile(), &id)?))
            })();
            let _ = reply.send(result);
        }
        Command::Read { id, reply } => {
            let _ = reply.send(client.mark_read(Some(&[id])).await);
        }
        Command::Received { id, reply } => {
            let found = (|| {
                let m = client
                    .profile()
                    .message(&id)?
                    .filter(|m| !m.outgoing && !m.deleted && m.attachment.is_some())
                    .ok_or_else(|| {
                        ClientError::Usage(format!("no file came with message {}", format_id(&id)))
                    })?;
                Ok((m, client.server().to_string(), client.server_trust()?))
            })();
            let _ = reply.send(found);
        }
        Command::Fetched { blob_id } => {
            if let Err(e) = client.blob_fetched(&blob_id).await {
                tracing::warn!(error = %e, "could not tell the server a file was fetched; it expires there");
            }
        }
        Command::Slot {
            length,
            sha256,
            capability,
            reply,
        } => {
            let slot = async {
                Ok(Slot {
                    slot: client.create_blob(length, &sha256, &capability).await?,
                    server: client.server().to_string(),
                    trust: client.server_trust()?,
                })
            };
            let _ = reply.send(slot.await);
        }
    }
}

/// Sends a text now, or not at all, or (the connection lost with the
/// answer) surely later. A person's client keeps a message the server
/// turned away for now (rate limited, unavailable) in its outbox and sends
/// it later; the API instead answers that it was not sent, so the service
/// decides, and the message must not go out behind its back. Only when
/// the connection died mid-send may the server hold it already: then it
/// stays queued, to go with the same id (`SendResult::Pending`).
async fn send_now(
    client: &mut Client,
    to: &str,
    text: &str,
    opts: &dak_client::TextOptions,
) -> Result<SendResult, ClientError> {
    let entry = dak_client::queue_text_with(client.profile(), to, text, opts)?;
    let id = entry.0.clone();
    let error = match client.send_queued(entry).await {
        Ok(sent) => return Ok(SendResult::Sent(sent)),
        Err(e) if e.is_connection_lost() => return Ok(SendResult::Pending(id)),
        Err(e) => e,
    };
    client.profile().transaction(|p| {
        p.remove_outgoing(&id)?;
        p.delete_message(&id)
    })?;
    Err(error)
}

/// After a start: what the profile holds that the queue may not,
/// because the bot stopped between the two. Unread incoming messages of
/// the dedup window and ticks not yet reported are queued again; the
/// queue skips those it already has.
fn reconcile(p: &Profile, db: &BotDb) -> Result<()> {
    let since = webhook::now_ms() - queue::KEEP_DELIVERED_MS;
    let events: Vec<Event> = p
        .unread()?
        .into_iter()
        .filter(|m| m.at_ms() > since)
        .map(Event::Message)
        .collect();
    let mut n = queue_events(p, db, &events)?;
    for (id, reported) in db.sent_open(TickState::Read as u8)? {
        let Ok(tick) = dak_client::tick_of(p, &id) else {
            continue;
        };
        if tick.state as u8 > reported {
            let tick = Event::Tick {
                id,
                state: tick.state,
            };
            n += queue_events(p, db, &[tick])?;
        }
    }
    if n > 0 {
        tracing::info!(events = n, "queued events the last run had not");
    }
    Ok(())
}

/// Turns the device's events into webhook events and queues them.
fn queue_events(p: &Profile, db: &BotDb, events: &[Event]) -> Result<usize> {
    let now = webhook::now_ms();
    let mut out = Vec::new();
    let mut ticks = Vec::new();
    let mut wrote = Vec::new();
    for e in events {
        match e {
            Event::Message(m) if !m.outgoing => {
                wrote.push((m.from.clone(), m.at_ms()));
                out.push(message_event(p, m));
                if let Some(opt) = opt_word(&m.text).filter(|_| !m.conversation.is_group()) {
                    // Only a new event flips the flag: a replayed STOP must
                    // not undo a later START.
                    let event = NewEvent {
                        id: format!("{opt}:{}:{}", m.from, format_id(&m.id)),
                        body: json!({"type": opt, "at_ms": m.at_ms(), "from": m.from}),
                    };
                    db.push_opt(with_id(event), &m.from, opt == "opt_out", now)?;
                }
            }
            Event::Tick { id, state } if *state >= TickState::Delivered => {
                if let Some(event) = status_event(p, db, id, *state)? {
                    out.push(event);
                    ticks.push((id, *state as u8));
                }
            }
            Event::Reaction {
                conversation,
                id,
                from,
                emoji,
            } => out.push(NewEvent {
                // The emoji is the sender's: in hex, so the id is always a
                // header value; the time keeps a reaction given again apart.
                id: format!(
                    "reaction:{}:{from}:{}:{now}",
                    format_id(id),
                    hex::encode(emoji)
                ),
                body: json!({"type": "reaction", "at_ms": now, "chat": conversation.key(), "from": from, "message_id": format_id(id), "emoji": emoji}),
            }),
            Event::Deleted { conversation, id } => out.push(NewEvent {
                id: format!("deleted:{}", format_id(id)),
                body: json!({"type": "deleted", "at_ms": now, "chat": conversation.key(), "message_id": format_id(id)}),
            }),
            _ => {}
        }
    }
    let out: Vec<NewEvent> = out.into_iter().map(with_id).collect();
    let n = db.push_with(&out, &wrote, now)?;
    // Raised only once their events are queued: a crash in between
    // queues them again at the next start, under the same ids.
    for (id, tick) in ticks {
        db.raise_reported(id, tick)?;
    }
    Ok(n)
}

/// Puts the event's id into its body, first, so the body alone says it.
fn with_id(mut e: NewEvent) -> NewEvent {
    if let serde_json::Value::Object(map) = &mut e.body {
        let mut ordered = serde_json::Map::new();
        ordered.insert("id".into(), json!(e.id));
        ordered.extend(std::mem::take(map));
        *map = ordered;
    }
    e
}

/// "STOP" and "START" (any case, alone in the message), as SMS and
/// WhatsApp's businesses honour them.
fn opt_word(text: &str) -> Option<&'static str> {
    match text.trim().to_ascii_uppercase().as_str() {
        "STOP" | "UNSUBSCRIBE" => Some("opt_out"),
        "START" | "SUBSCRIBE" => Some("opt_in"),
        _ => None,
    }
}

/// A message for the webhook; an answer to one of the bot's buttons or
/// lists becomes a `choice`, with the title the bot gave it (never the
/// title the sender claims), once checked against the message it names.
fn message_event(p: &Profile, m: &MessageView) -> NewEvent {
    let mut message = json!({
        "id": format_id(&m.id),
        "text": m.text,
        "sent_at_ms": m.sent_at_ms,
        "reply_to": m.reply_to.as_ref().map(|q| format_id(&q.id)),
        "forwarded": m.forwarded,
        "attachment": m.attachment.as_ref().map(|a| json!({
            "media_type": a.media_type,
            "file_name": a.file_name,
            "size": a.size,
            "voice_note": a.voice_note,
            "duration_ms": a.duration_ms,
            "url": format!("/v1/messages/{}/media", format_id(&m.id)),
        })),
    });
    let choice = m.choice.as_ref().and_then(|c| {
        let asked = p.message(&c.message_id).ok().flatten()?;
        let ok = asked.outgoing && asked.conversation == m.conversation;
        let title = asked.interactive.as_ref()?.find(&c.id)?;
        ok.then(|| json!({"message_id": format_id(&c.message_id), "id": c.id, "title": title}))
    });
    let kind = if let Some(c) = choice {
        message["choice"] = c;
        "choice"
    } else {
        "message"
    };
    NewEvent {
        id: format!("message:{}", format_id(&m.id)),
        body: json!({
            "type": kind,
            "at_ms": m.at_ms(),
            "chat": m.conversation.key(),
            "from": m.from,
            "from_device": m.from_device,
            "message": message,
        }),
    }
}

/// A tick of a message the bot sent, once per tick and message.
fn status_event(p: &Profile, db: &BotDb, id: &[u8], state: TickState) -> Result<Option<NewEvent>> {
    let Some(m) = p.message(id)? else {
        return Ok(None);
    };
    let chat = m.conversation.key();
    // Messages sent before the bot served (or by another device) are
    // recorded when first seen; one read for those already known.
    match db.reported(id)? {
        Some(reported) if reported >= state as u8 => return Ok(None),
        Some(_) => {}
        None => db.record_sent(id, &chat, webhook::now_ms())?,
    }
    let devices = p.recipients(id)?;
    let name = serde_json::to_value(state)?;
    Ok(Some(NewEvent {
        id: format!("status:{}:{}", format_id(id), name.as_str().unwrap_or("")),
        body: json!({
            "type": "status",
            "at_ms": webhook::now_ms(),
            "chat": chat,
            "message_id": format_id(id),
            "status": name,
            "devices": devices.iter().map(api::device_tick).collect::<Vec<_>>(),
        }),
    }))
}
