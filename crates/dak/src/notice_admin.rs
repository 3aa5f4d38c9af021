//! `dak admin notice`: the operator tells users what happened, signed.
//!
//! It writes the server's notice log (`dak_server::notices`), a file of its
//! own beside the store, so it works while the store is down; a running
//! server picks a new entry up within a second and pushes it to every
//! connected device, which checks it against the key it pinned at
//! registration and against the log it has seen.
//!
//! `aware` records, privately in `DATA/incidents.json`, when the operator
//! learned of a security incident, before anything is published; `list`
//! then reminds of the notice duty (`notice_deadline`, 72 hours by
//! default, the GDPR's) until a notice names that incident.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use dak_proto::notices::{kind_name, state_name};
use dak_proto::v1::{self, NoticeState, OperatorNoticeKind};
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::bot::webhook::now_ms;

#[derive(Subcommand, Debug)]
pub enum NoticeAction {
    /// Publish a new signed notice (the first of an incident).
    Publish {
        #[arg(long, value_enum)]
        kind: PublicKind,
        /// One line: what users see first.
        #[arg(long)]
        title: String,
        #[command(flatten)]
        text: NoticeText,
        /// When it started: an RFC 3339 time, or how long ago ("40m").
        #[arg(long)]
        started: Option<String>,
        /// When you became aware of it (same forms) [default: now, or the
        /// time `aware` recorded for --incident].
        #[arg(long)]
        aware: Option<String>,
        /// The id `dak admin notice aware` gave this incident.
        #[arg(long)]
        incident: Option<u64>,
    },
    /// Add an update to an incident (the number `publish` printed).
    Update {
        thread: u64,
        /// A new title [default: the incident's last one].
        #[arg(long)]
        title: Option<String>,
        #[command(flatten)]
        text: NoticeText,
        /// The incident is over.
        #[arg(long)]
        resolved: bool,
    },
    /// Tell one account's devices, and no one else, that they were
    /// targeted; the public log holds only a commitment to it.
    Target {
        phone: String,
        #[arg(long)]
        title: String,
        #[arg(long, default_value = "")]
        what: String,
        #[arg(long, default_value = "")]
        advice: String,
    },
    /// Record, privately, when you learned of a security incident: the
    /// clock of the duty to tell users starts now (or --at).
    Aware {
        #[arg(long)]
        title: String,
        /// An RFC 3339 time, or how long ago ("3h") [default: now].
        #[arg(long)]
        at: Option<String>,
    },
    /// The log, and the incidents still waiting for a notice.
    List,
    /// The notice key's public half, as clients pin it.
    Key,
}

/// What a notice or an update says, beyond its title.
#[derive(Args, Debug)]
pub struct NoticeText {
    /// What happened, as far as you know now.
    #[arg(long, default_value = "")]
    what: String,
    /// What is affected (features, regions, data).
    #[arg(long, default_value = "")]
    affected: String,
    /// What is not affected (say it: "message contents are not").
    #[arg(long, default_value = "")]
    not_affected: String,
    /// What users should do.
    #[arg(long, default_value = "")]
    advice: String,
}

impl NoticeText {
    /// `notice` with these texts.
    fn on(self, notice: v1::OperatorNotice) -> v1::OperatorNotice {
        v1::OperatorNotice {
            what_happened: self.what,
            affected: self.affected,
            not_affected: self.not_affected,
            advice: self.advice,
            ..notice
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum PublicKind {
    Incident,
    Maintenance,
    Security,
}

impl PublicKind {
    fn wire(self) -> OperatorNoticeKind {
        match self {
            PublicKind::Incident => OperatorNoticeKind::Incident,
            PublicKind::Maintenance => OperatorNoticeKind::Maintenance,
            PublicKind::Security => OperatorNoticeKind::Security,
        }
    }
}

/// An incident the operator knows of and has not told users about yet.
#[derive(Serialize, Deserialize, Clone)]
struct Known {
    id: u64,
    title: String,
    aware_ms: i64,
    /// The log index of the notice that told users; None: not yet.
    notice: Option<u64>,
}

/// An RFC 3339 time, or a duration meaning that long ago.
fn when(raw: &str) -> Result<i64> {
    if let Ok(t) = humantime::parse_rfc3339_weak(raw) {
        let ms = t
            .duration_since(std::time::UNIX_EPOCH)
            .context("a time before 1970")?
            .as_millis() as i64;
        if ms > now_ms() + 60_000 {
            bail!("{raw} is in the future");
        }
        return Ok(ms);
    }
    let ago = humantime::parse_duration(raw).with_context(|| {
        format!("{raw:?} is neither a time (2026-12-06T12:30:00Z) nor a duration ago (40m)")
    })?;
    Ok(now_ms() - ago.as_millis() as i64)
}

fn incidents_path(data: &Path) -> PathBuf {
    data.join("incidents.json")
}

fn read_known(data: &Path) -> Result<Vec<Known>> {
    let path = incidents_path(data);
    match std::fs::read(&path) {
        Ok(b) => {
            serde_json::from_slice(&b).with_context(|| format!("{} is damaged", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_known(data: &Path, known: &[Known]) -> Result<()> {
    let path = incidents_path(data);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(known)?)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

fn summary(n: &v1::OperatorNotice) -> serde_json::Value {
    json!({
        "index": n.index, "thread": n.thread, "kind": kind_name(n.kind),
        "state": state_name(n.state), "title": n.title, "published_ms": n.published_ms,
        "started_ms": n.started_ms, "aware_ms": n.aware_ms,
    })
}

pub fn run(config: &dak_server::Config, action: NoticeAction, json: bool) -> Result<()> {
    let data = &config.data;
    let log_path = config.notices_path();
    let key_path = config.notice_key_path();
    let say = |value: serde_json::Value, text: String| {
        if json {
            println!("{value}");
        } else {
            println!("{text}");
        }
    };
    let now = now_ms();
    match action {
        NoticeAction::Key => {
            let key = dak_server::notices::read_key(&key_path)?;
            let public = hex::encode(key.verifying_key().to_bytes());
            say(
                json!({"notice_key": public}),
                format!("notice key: {public}"),
            );
        }
        NoticeAction::Aware { title, at } => {
            let aware_ms = match at {
                Some(raw) => when(&raw)?,
                None => now,
            };
            let mut known = read_known(data)?;
            let id = known.iter().map(|k| k.id + 1).max().unwrap_or(1);
            known.push(Known {
                id,
                title: title.clone(),
                aware_ms,
                notice: None,
            });
            write_known(data, &known)?;
            let due = aware_ms + config.notice_deadline.as_millis() as i64;
            say(
                json!({"incident": id, "aware_ms": aware_ms, "notice_due_ms": due}),
                format!(
                    "incident {id} recorded ({title}); users must be told by {}: \
                     `dak admin notice publish --kind security --incident {id} ...`",
                    dak_server::status_time(due)
                ),
            );
        }
        NoticeAction::Publish {
            kind,
            title,
            text,
            started,
            aware,
            incident,
        } => {
            let mut known = read_known(data)?;
            let recorded =
                match incident {
                    Some(id) => Some(known.iter().position(|k| k.id == id).with_context(|| {
                        format!("no incident {id}: see `dak admin notice list`")
                    })?),
                    None => None,
                };
            let aware_ms = match (&aware, recorded) {
                (Some(raw), _) => when(raw)?,
                (None, Some(i)) => known[i].aware_ms,
                (None, None) => now,
            };
            let started_ms = started.as_deref().map(when).transpose()?.unwrap_or(0);
            let key = dak_server::notices::read_key(&key_path)?;
            let notice = dak_server::notices::append(&log_path, &key, |log| {
                Ok((
                    text.on(v1::OperatorNotice {
                        kind: kind.wire() as i32,
                        thread: log.chain.length,
                        state: NoticeState::Ongoing as i32,
                        published_ms: now,
                        started_ms,
                        aware_ms,
                        title: title.clone(),
                        ..Default::default()
                    }),
                    None,
                ))
            })?;
            if let Some(i) = recorded {
                known[i].notice = Some(notice.index);
                write_known(data, &known)?;
            }
            say(
                summary(&notice),
                format!(
                    "published notice {} ({}: {title}); devices get it within seconds. \
                     Updates: `dak admin notice update {} --what ... [--resolved]`",
                    notice.index,
                    kind_name(notice.kind),
                    notice.thread
                ),
            );
        }
        NoticeAction::Update {
            thread,
            title,
            text,
            resolved,
        } => {
            let key = dak_server::notices::read_key(&key_path)?;
            let notice = dak_server::notices::append(&log_path, &key, |log| {
                let Some(first) = log.notices.get(thread as usize) else {
                    bail!(
                        "no notice {thread} in the log (it has {})",
                        log.chain.length
                    );
                };
                if first.thread != thread || first.kind == OperatorNoticeKind::TargetedAttack as i32
                {
                    bail!(
                        "notice {thread} does not start an incident: give the number `publish` printed"
                    );
                }
                let last = log
                    .notices
                    .iter()
                    .rev()
                    .find(|n| n.thread == thread)
                    .expect("the first is there");
                if last.state == NoticeState::Resolved as i32 {
                    bail!("incident {thread} is resolved; publish a new notice instead");
                }
                Ok((
                    text.on(v1::OperatorNotice {
                        kind: first.kind,
                        thread,
                        state: if resolved {
                            NoticeState::Resolved
                        } else {
                            NoticeState::Ongoing
                        } as i32,
                        published_ms: now,
                        started_ms: first.started_ms,
                        aware_ms: first.aware_ms,
                        title: title.unwrap_or_else(|| last.title.clone()),
                        ..Default::default()
                    }),
                    None,
                ))
            })?;
            say(
                summary(&notice),
                format!(
                    "published update {} to incident {thread} ({})",
                    notice.index,
                    state_name(notice.state)
                ),
            );
        }
        NoticeAction::Target {
            phone,
            title,
            what,
            advice,
        } => {
            let phone = dak_proto::normalize_phone(&phone).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut nonce = vec![0u8; dak_proto::notices::TARGET_NONCE_BYTES];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
            let sealed = v1::TargetedNoticeBody {
                nonce,
                phone: phone.clone(),
                title,
                what_happened: what,
                advice,
            };
            // The same rules a device applies, before anything is written.
            dak_proto::notices::check_targeted_body(&sealed)
                .map_err(|e| anyhow::anyhow!("not sent: {e}"))?;
            let sealed = sealed.encode_to_vec();
            let key = dak_server::notices::read_key(&key_path)?;
            let notice = dak_server::notices::append(&log_path, &key, |log| {
                Ok((
                    v1::OperatorNotice {
                        kind: OperatorNoticeKind::TargetedAttack as i32,
                        thread: log.chain.length,
                        state: NoticeState::Ongoing as i32,
                        published_ms: now,
                        ..Default::default()
                    },
                    Some(sealed),
                ))
            })?;
            say(
                json!({"index": notice.index, "phone": phone}),
                format!(
                    "targeted notice {} goes to {phone}'s devices only; the public log shows that one was sent, not to whom",
                    notice.index
                ),
            );
        }
        NoticeAction::List => {
            let key = dak_server::notices::read_key(&key_path)?;
            let log = dak_server::notices::read_log(&log_path, &key.verifying_key())?;
            let deadline = config.notice_deadline;
            let known = read_known(data)?;
            let waiting: Vec<&Known> = known.iter().filter(|k| k.notice.is_none()).collect();
            if json {
                let reminders: Vec<_> = waiting
                    .iter()
                    .map(|k| {
                        json!({"incident": k.id, "title": k.title, "aware_ms": k.aware_ms,
                                   "notice_due_ms": k.aware_ms + deadline.as_millis() as i64})
                    })
                    .collect();
                println!(
                    "{}",
                    json!({
                        "length": log.chain.length, "head": hex::encode(log.chain.head),
                        "problem": log.problem,
                        "notices": log.notices.iter().map(summary).collect::<Vec<_>>(),
                        "waiting_for_notice": reminders,
                    })
                );
                return Ok(());
            }
            for k in &waiting {
                println!("{}", reminder(k, deadline, now));
            }
            if log.notices.is_empty() {
                println!("the notice log is empty");
            }
            for n in &log.notices {
                let when = dak_server::status_time(n.published_ms);
                if n.kind == OperatorNoticeKind::TargetedAttack as i32 {
                    println!("{:>4}  {when}  targeted-attack (to one account)", n.index);
                } else {
                    println!(
                        "{:>4}  {when}  {} #{} {}: {}",
                        n.index,
                        kind_name(n.kind),
                        n.thread,
                        state_name(n.state),
                        n.title
                    );
                }
            }
            if let Some(p) = &log.problem {
                println!("warning: {p}");
            }
        }
    }
    Ok(())
}

/// "incident 3 (title): known since …; tell users by … (41 h left)".
fn reminder(k: &Known, deadline: Duration, now: i64) -> String {
    let due = k.aware_ms + deadline.as_millis() as i64;
    let hours = (due - now) / 3_600_000;
    let left = if due >= now {
        format!("{hours} h left")
    } else {
        format!("OVERDUE by {} h", -hours)
    };
    format!(
        "REMINDER: incident {} ({}) known since {}; users must be told by {} ({left}): \
         `dak admin notice publish --kind security --incident {} ...`",
        k.id,
        k.title,
        dak_server::status_time(k.aware_ms),
        dak_server::status_time(due),
        k.id
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_durations_ago() {
        let now = now_ms();
        assert!((when("40m").unwrap() - (now - 2_400_000)).abs() < 5_000);
        assert_eq!(when("2026-01-01T00:00:00Z").unwrap(), 1_767_225_600_000);
        assert!(when("3000-01-01T00:00:00Z").is_err());
        assert!(when("yesterday-ish").is_err());
    }

    #[test]
    fn the_reminder_counts_down_and_then_says_overdue() {
        let k = Known {
            id: 1,
            title: "leak".into(),
            aware_ms: 0,
            notice: None,
        };
        let day = Duration::from_secs(72 * 3600);
        assert!(reminder(&k, day, 31 * 3_600_000).contains("41 h left"));
        assert!(reminder(&k, day, 80 * 3_600_000).contains("OVERDUE by 8 h"));
    }
}
