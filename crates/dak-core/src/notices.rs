//! The operator's notices on a device (PROTOCOL.md §17): the notice key
//! pinned at registration, the log as this device checked it, and what
//! the user is shown.
//!
//! Invariants:
//! - A notice is shown only once it is the next entry of the log this
//!   device has checked, signed by the pinned key (`NoticeChain::append`).
//!   Anything else (another key, a gap, a second story for an index the
//!   device has, a log shorter than the one it saw) is refused with an
//!   `Event::NoticeRefused` and changes nothing stored.
//! - The profile keeps the log's length and head (`notice_len`,
//!   `notice_head`) and every entry it accepted (`notice/<index>`), so a
//!   later log must extend this one: the operator cannot rewrite what this
//!   device was told.
//! - A targeted notice is shown only to the account it names and only if
//!   the log entry at its index commits to it (`targeted/<index>`).
//! - Gossip: every receipt a device sends carries its log's length and
//!   head (inside MLS, so the server cannot change it), and a device
//!   compares what its contacts were told with what it was told
//!   (`compare_told`): a different head at the same length is the operator
//!   telling two stories, said once per contact. A contact ahead is
//!   remembered (`notice_told/<length>`) and compared when this device
//!   reaches that length.
//! - The key is pinned when the profile first meets the server (at
//!   registration or linking, over the pinned TLS connection); a profile
//!   made before notices existed pins it at its next connect.

use dak_proto::notices::{NoticeChain, NoticeError, kind_name, open_targeted, state_name};
use dak_proto::v1::{self, client_frame::Request, server_frame::Body};
use prost::Message;
use serde::Serialize;

use crate::client::Client;
use crate::connection::{Connection, unexpected};
use crate::events::Event;
use crate::{ClientError, Profile};

const KEY: &str = "notice_key";
const LEN: &str = "notice_len";
const HEAD: &str = "notice_head";
/// Most pages one sync reads. It runs before authentication (so a device
/// that cannot log in during an outage still gets the operator's word),
/// within the server's limit on unauthenticated requests; a longer log is
/// read over several connections.
const MAX_PAGES: usize = 8;

fn entry_key(index: u64) -> String {
    format!("notice/{index}")
}

fn targeted_key(index: u64) -> String {
    format!("targeted/{index}")
}

/// One notice as shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NoticeView {
    pub index: u64,
    /// The incident's first notice (its number in `dak admin notice update`).
    pub thread: u64,
    pub kind: &'static str,
    pub state: &'static str,
    pub title: String,
    pub what_happened: String,
    pub affected: String,
    pub not_affected: String,
    pub advice: String,
    pub started_ms: i64,
    pub aware_ms: i64,
    pub published_ms: i64,
    /// Sent to this account alone (a targeted-attack notice).
    pub targeted: bool,
}

impl NoticeView {
    fn public(n: &v1::OperatorNotice) -> NoticeView {
        NoticeView {
            index: n.index,
            thread: n.thread,
            kind: kind_name(n.kind),
            state: state_name(n.state),
            title: n.title.clone(),
            what_happened: n.what_happened.clone(),
            affected: n.affected.clone(),
            not_affected: n.not_affected.clone(),
            advice: n.advice.clone(),
            started_ms: n.started_ms,
            aware_ms: n.aware_ms,
            published_ms: n.published_ms,
            targeted: false,
        }
    }

    fn targeted(n: &v1::OperatorNotice, body: v1::TargetedNoticeBody) -> NoticeView {
        NoticeView {
            title: body.title,
            what_happened: body.what_happened,
            advice: body.advice,
            targeted: true,
            ..NoticeView::public(n)
        }
    }
}

/// Pins the key a registering or linking profile met (`key` from the
/// connection's challenge), under `name`; nothing when it is not a key (a
/// server from before notices).
pub(crate) fn pin_key(profile: &Profile, name: &str, key: &[u8]) -> Result<(), ClientError> {
    if dak_proto::notices::notice_key(key).is_ok() {
        profile.set(name, key)?;
    }
    Ok(())
}

/// Moves a registration's pending key to the pinned place.
pub(crate) fn confirm_pending_key(profile: &Profile) -> Result<(), ClientError> {
    if let Some(k) = profile.get("pending_notice_key")? {
        pin_key(profile, KEY, &k)?;
        profile.delete("pending_notice_key")?;
    }
    Ok(())
}

/// The pinned key's bytes, if one is pinned (an empty value is none).
fn pinned(profile: &Profile) -> Result<Option<Vec<u8>>, ClientError> {
    Ok(profile.get(KEY)?.filter(|k| !k.is_empty()))
}

fn chain(profile: &Profile) -> Result<NoticeChain, ClientError> {
    let length = profile
        .get_str(LEN)?
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    match profile.get(HEAD)? {
        Some(head) => NoticeChain::at(length, &head).map_err(|e| profile.err(e.to_string())),
        None => Ok(NoticeChain::default()),
    }
}

fn stored_notice(profile: &Profile, index: u64) -> Result<Option<v1::OperatorNotice>, ClientError> {
    let Some(bytes) = profile.get(&entry_key(index))? else {
        return Ok(None);
    };
    let signed =
        v1::SignedNotice::decode(bytes.as_slice()).map_err(|e| profile.err(e.to_string()))?;
    v1::OperatorNotice::decode(signed.notice.as_slice())
        .map(Some)
        .map_err(|e| profile.err(e.to_string()))
}

/// Every notice this device accepted, oldest first: the public ones and
/// its account's targeted ones (another account's targeted entries are
/// only commitments and are not shown).
pub fn notices(profile: &Profile) -> Result<Vec<NoticeView>, ClientError> {
    let chain = chain(profile)?;
    let mut out = Vec::new();
    for index in 0..chain.length {
        let Some(n) = stored_notice(profile, index)? else {
            continue;
        };
        if n.kind == v1::OperatorNoticeKind::TargetedAttack as i32 {
            if let Some(sealed) = profile.get(&targeted_key(index))? {
                let body = v1::TargetedNoticeBody::decode(sealed.as_slice())
                    .map_err(|e| profile.err(e.to_string()))?;
                out.push(NoticeView::targeted(&n, body));
            }
        } else {
            out.push(NoticeView::public(&n));
        }
    }
    Ok(out)
}

/// The latest notice of each incident still ongoing (and the targeted
/// ones), oldest first: what to show while the server cannot be reached.
pub fn ongoing(profile: &Profile) -> Result<Vec<NoticeView>, ClientError> {
    let mut latest: std::collections::BTreeMap<u64, NoticeView> = Default::default();
    for n in notices(profile)? {
        latest.insert(n.thread, n);
    }
    Ok(latest
        .into_values()
        .filter(|n| n.state == state_name(v1::NoticeState::Ongoing as i32))
        .collect())
}

/// The head this device's log had at `length` (1..=its length).
fn head_at(profile: &Profile, length: u64) -> Result<Option<[u8; 32]>, ClientError> {
    let Some(bytes) = profile.get(&entry_key(length - 1))? else {
        return Ok(None);
    };
    let signed =
        v1::SignedNotice::decode(bytes.as_slice()).map_err(|e| profile.err(e.to_string()))?;
    Ok(Some(dak_proto::notices::head_after(&signed.notice)))
}

fn two_stories(profile: &Profile, who: &str, length: u64) -> Result<Option<Event>, ClientError> {
    // Said once per contact.
    let key = format!("notice_split/{who}");
    if profile.get(&key)?.is_some() {
        return Ok(None);
    }
    profile.set(&key, length.to_string().as_bytes())?;
    // The contact's word, not a proof (a receipt carries a head, not the
    // signed entry): said as such.
    Ok(Some(refused(format!(
        "{who}'s device reports another history of the operator's notices than this device's \
         (entry {}): the operator may have told you two different stories (or that device is \
         not honest); compare `dak notices` with {who}",
        length - 1
    ))))
}

/// Compares what a contact's device says it was told (`length`, `head`,
/// from a receipt) with this device's log; `Some` when they differ.
pub(crate) fn compare_told(
    profile: &Profile,
    who: &str,
    length: u64,
    head: &[u8],
) -> Result<Option<Event>, ClientError> {
    if length == 0 || head.len() != 32 {
        return Ok(None);
    }
    let mine = chain(profile)?;
    if length > mine.length {
        // Ahead of this device: compared when this device gets there.
        profile.set(
            &format!("notice_told/{length}"),
            &[head, who.as_bytes()].concat(),
        )?;
        return Ok(None);
    }
    match head_at(profile, length)? {
        Some(h) if h.as_slice() != head => two_stories(profile, who, length),
        _ => Ok(None),
    }
}

/// After this device's log reached `length`: what a contact said of it.
fn check_told(profile: &Profile, length: u64) -> Result<Option<Event>, ClientError> {
    let key = format!("notice_told/{length}");
    let Some(told) = profile.get(&key)? else {
        return Ok(None);
    };
    profile.delete(&key)?;
    if told.len() < 32 {
        return Ok(None);
    }
    let (head, who) = told.split_at(32);
    match head_at(profile, length)? {
        Some(h) if h.as_slice() != head => {
            two_stories(profile, &String::from_utf8_lossy(who), length)
        }
        _ => Ok(None),
    }
}

/// The log as this device checked it: (length, head).
pub fn log_state(profile: &Profile) -> Result<(u64, [u8; 32]), ClientError> {
    let c = chain(profile)?;
    Ok((c.length, c.head))
}

fn refused(reason: impl Into<String>) -> Event {
    let reason = reason.into();
    tracing::warn!(%reason, "operator notice refused");
    Event::NoticeRefused { reason }
}

/// Checks and stores entries from the server (a page it answered or a
/// push); returns what to show. Stops at the first entry refused.
pub(crate) fn apply_entries(
    profile: &Profile,
    entries: &[v1::SignedNotice],
) -> Result<Vec<Event>, ClientError> {
    let Some(key) = pinned(profile)? else {
        return Ok(Vec::new()); // pinned at the next connect
    };
    let key = match dak_proto::notices::notice_key(&key) {
        Ok(k) => k,
        Err(e) => return Ok(vec![refused(e.to_string())]),
    };
    let mut chain = chain(profile)?;
    let mut events = Vec::new();
    for entry in entries {
        let index = v1::OperatorNotice::decode(entry.notice.as_slice())
            .map(|n| n.index)
            .unwrap_or(u64::MAX);
        if index < chain.length {
            // One this device has: it must be the very same entry.
            let same = profile
                .get(&entry_key(index))?
                .is_some_and(|b| b == entry.encode_to_vec());
            if !same {
                events.push(refused(NoticeError::Forked { index }.to_string()));
                break;
            }
            continue;
        }
        match chain.append(&key, entry) {
            Ok(n) => {
                profile.transaction(|p| {
                    p.set(&entry_key(n.index), &entry.encode_to_vec())?;
                    p.set(LEN, chain.length.to_string().as_bytes())?;
                    p.set(HEAD, &chain.head)
                })?;
                if n.kind != v1::OperatorNoticeKind::TargetedAttack as i32 {
                    events.push(Event::OperatorNotice(NoticeView::public(&n)));
                }
                events.extend(check_told(profile, chain.length)?);
            }
            Err(NoticeError::OutOfOrder { expected, got }) => {
                // Past a gap: this device is behind (a long log is read
                // over several connections). Not shown until the entries
                // before it are read and it chains onto them.
                tracing::debug!(expected, got, "notice past a gap; read at the next connect");
                break;
            }
            Err(e) => {
                events.push(refused(e.to_string()));
                break;
            }
        }
    }
    Ok(events)
}

/// A targeted notice: shown once, if the log commits to it and it names
/// this account.
pub(crate) fn apply_targeted(
    profile: &Profile,
    my_phone: &str,
    t: &v1::TargetedNotice,
) -> Result<Vec<Event>, ClientError> {
    if profile.get(&targeted_key(t.index))?.is_some() {
        return Ok(Vec::new());
    }
    let Some(entry) = stored_notice(profile, t.index)? else {
        return Ok(vec![refused(format!(
            "a targeted notice names log entry {}, which this device has not checked",
            t.index
        ))]);
    };
    match open_targeted(&entry, &t.sealed, my_phone) {
        Ok(body) => {
            profile.set(&targeted_key(t.index), &t.sealed)?;
            Ok(vec![Event::OperatorNotice(NoticeView::targeted(
                &entry, body,
            ))])
        }
        Err(e) => Ok(vec![refused(e.to_string())]),
    }
}

/// Brings the device's copy of the log up to the server's (as the
/// challenge announced it), before authentication: pins the key if this
/// profile has none yet, reads the missing pages, and refuses a log that
/// does not extend the one this device has. A failure to read is logged,
/// never a reason not to connect.
pub(crate) async fn sync(profile: &Profile, conn: &mut Connection) -> Vec<Event> {
    match try_sync(profile, conn).await {
        Ok(events) => events,
        Err(e) => {
            tracing::warn!(error = %e, "the operator's notices could not be read this time");
            Vec::new()
        }
    }
}

async fn try_sync(profile: &Profile, conn: &mut Connection) -> Result<Vec<Event>, ClientError> {
    let (server_key, server_len, server_head) = conn.notice_log();
    if dak_proto::notices::notice_key(&server_key).is_err() {
        return Ok(Vec::new()); // a server from before notices
    }
    let mut events = Vec::new();
    match pinned(profile)? {
        None => pin_key(profile, KEY, &server_key)?,
        Some(k) if k != server_key => {
            events.push(refused(
                "the server signs notices with a key other than the one this device pinned at \
                 registration; its notices are not shown",
            ));
            return Ok(events);
        }
        Some(_) => {}
    }
    let mine = chain(profile)?;
    if server_len == mine.length && server_head == mine.head {
        return Ok(events);
    }
    // From the last entry both should have: it must be the very same (a
    // node behind the others is fine; a different entry is not).
    let mut from = server_len.min(mine.length).saturating_sub(1);
    for _ in 0..MAX_PAGES {
        let page = match conn
            .call(Request::GetNotices(v1::GetNotices { from }))
            .await?
        {
            Body::NoticeLog(l) => l,
            other => return Err(unexpected(other)),
        };
        let got = page.entries.len() as u64;
        let applied = apply_entries(profile, &page.entries)?;
        let stop = applied
            .iter()
            .any(|e| matches!(e, Event::NoticeRefused { .. }));
        events.extend(applied);
        from += got;
        if stop || got == 0 || from >= page.length {
            break;
        }
    }
    Ok(events)
}

impl Client {
    /// The notices this device accepted (`dak notices`).
    pub fn notices(&self) -> Result<Vec<NoticeView>, ClientError> {
        notices(&self.profile)
    }

    /// Takes the notice events the connect found (new notices, refusals)
    /// out of those waiting, for a front end that shows them at connect,
    /// apart from the conversation.
    pub fn take_notice_events(&mut self) -> Vec<Event> {
        let (notices, rest) = std::mem::take(&mut self.pending_events)
            .into_iter()
            .partition(|e| matches!(e, Event::OperatorNotice(_) | Event::NoticeRefused { .. }));
        self.pending_events = rest;
        notices
    }
}
