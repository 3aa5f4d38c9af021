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
//!   compares what its own devices and known contacts were told with what
//!   it was told (`compare_told`): a different head at the same length is
//!   said once per contact, as the contact's word. A contact ahead is
//!   remembered (one claim per contact, at most 64 contacts) and compared
//!   when this device reaches that length. Gossip never fails a delivery.
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
/// within the server's limit on unauthenticated requests and its deadline
/// for authenticating (two pages are at most 128 KiB, even on a slow
/// link); a longer log is read over several connections.
const MAX_PAGES: usize = 2;

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
    // A targeted notice has no updates: it is shown for 30 days.
    const TARGETED_SHOWN_MS: i64 = 30 * 24 * 3600 * 1000;
    let now = profile.now_ms();
    Ok(latest
        .into_values()
        .filter(|n| n.state == state_name(v1::NoticeState::Ongoing as i32))
        .filter(|n| !n.targeted || now - n.published_ms < TARGETED_SHOWN_MS)
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

/// The contacts whose claims wait for this device to catch up, at most
/// `MAX_TOLD` (the oldest is dropped): one claim per contact.
const TOLD_INDEX: &str = "notice_told_index";
const MAX_TOLD: usize = 64;

fn told_key(who: &str) -> String {
    format!("notice_told/{who}")
}

fn told_index(profile: &Profile) -> Result<Vec<String>, ClientError> {
    Ok(profile
        .get_str(TOLD_INDEX)?
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default())
}

/// Compares what a contact's device says it was told (`length`, `head`,
/// from a receipt) with this device's log; `Some` when they differ. Only
/// this account's own devices and contacts it knows are heard (a
/// stranger's receipt is not), and never with an error: gossip must not
/// hold up the delivery it rides on.
pub(crate) fn compare_told(
    profile: &Profile,
    who: &str,
    length: u64,
    head: &[u8],
) -> Result<Option<Event>, ClientError> {
    match try_compare_told(profile, who, length, head) {
        Ok(e) => Ok(e),
        Err(e) => {
            tracing::warn!(error = %e, "a contact's notice head could not be compared");
            Ok(None)
        }
    }
}

fn try_compare_told(
    profile: &Profile,
    who: &str,
    length: u64,
    head: &[u8],
) -> Result<Option<Event>, ClientError> {
    if length == 0 || head.len() != 32 {
        return Ok(None);
    }
    let me = profile.registration().ok().map(|r| r.phone);
    if me.as_deref() != Some(who) && !crate::requests::is_known(profile, who)? {
        return Ok(None);
    }
    let mine = chain(profile)?;
    if length > mine.length {
        // Ahead of this device: compared when this device gets there. One
        // claim per contact (its latest), a bounded number of contacts.
        let mut index = told_index(profile)?;
        index.retain(|w| w != who);
        index.push(who.to_string());
        if index.len() > MAX_TOLD {
            let dropped = index.remove(0);
            profile.delete(&told_key(&dropped))?;
        }
        profile.set(TOLD_INDEX, index.join("\n").as_bytes())?;
        profile.set(&told_key(who), &[&length.to_be_bytes()[..], head].concat())?;
        return Ok(None);
    }
    match head_at(profile, length)? {
        Some(h) if h.as_slice() != head => two_stories(profile, who, length),
        _ => Ok(None),
    }
}

/// After this device's log reached `length`: what contacts said of it.
fn check_told(profile: &Profile, length: u64) -> Result<Vec<Event>, ClientError> {
    let mut events = Vec::new();
    let mut index = told_index(profile)?;
    let before = index.len();
    let mut kept = Vec::new();
    for who in index.drain(..) {
        let Some(told) = profile.get(&told_key(&who))? else {
            continue;
        };
        if told.len() != 40 {
            profile.delete(&told_key(&who))?;
            continue;
        }
        let (len, head) = told.split_at(8);
        let len = u64::from_be_bytes(len.try_into().expect("8 bytes"));
        if len > length {
            kept.push(who);
            continue;
        }
        profile.delete(&told_key(&who))?;
        if let Some(h) = head_at(profile, len)?
            && h.as_slice() != head
        {
            events.extend(two_stories(profile, &who, len)?);
        }
    }
    if kept.len() != before {
        profile.set(TOLD_INDEX, kept.join("\n").as_bytes())?;
    }
    Ok(events)
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
                match check_told(profile, chain.length) {
                    Ok(told) => events.extend(told),
                    Err(e) => tracing::warn!(error = %e, "contacts' notice heads not compared"),
                }
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
    if t.index >= chain(profile)?.length {
        // This device is behind the log: it comes again at a later connect.
        tracing::debug!(index = t.index, "targeted notice past this device's log");
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
    sync_pages(profile, conn, MAX_PAGES, false, &mut |_, _| {}).await
}

/// `try_sync` reading at most `max_pages` pages, telling `progress` the
/// entries checked so far and the server's length after each. With
/// `refusals_only`, the accepted notices are stored but not returned (an
/// auditor reading a long log keeps no more than the profile does).
/// Reading stops at the length the challenge announced: every page must
/// start where it was asked to, so a server cannot keep a reader going.
async fn sync_pages(
    profile: &Profile,
    conn: &mut Connection,
    max_pages: usize,
    refusals_only: bool,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<Vec<Event>, ClientError> {
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
                 registration (an auditor: at its first run); its notices are not shown",
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
    for _ in 0..max_pages {
        let page = match conn
            .call(Request::GetNotices(v1::GetNotices { from }))
            .await?
        {
            Body::NoticeLog(l) => l,
            other => return Err(unexpected(other)),
        };
        if let Some(first) = page.entries.first() {
            let index = v1::OperatorNotice::decode(first.notice.as_slice())
                .map(|n| n.index)
                .unwrap_or(u64::MAX);
            if index != from {
                return Err(ClientError::Protocol(format!(
                    "asked for notices from {from}, the server answered from {index}"
                )));
            }
        }
        let got = page.entries.len() as u64;
        let applied = apply_entries(profile, &page.entries)?;
        let stop = applied
            .iter()
            .any(|e| matches!(e, Event::NoticeRefused { .. }));
        events.extend(
            applied
                .into_iter()
                .filter(|e| !refusals_only || matches!(e, Event::NoticeRefused { .. })),
        );
        from += got;
        progress(from, page.length);
        if stop || got == 0 || from >= page.length || from >= server_len {
            break;
        }
    }
    Ok(events)
}

/// What an outside audit of a server's notice log found (`audit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeAudit {
    /// The log as this auditor had checked it before: (length, head).
    pub before: (u64, [u8; 32]),
    /// The log as it has checked it now.
    pub after: (u64, [u8; 32]),
    /// The length the server announced.
    pub server_length: u64,
    /// Why the server's log was refused: signed by another key than the one
    /// pinned at the first audit, or not an extension of the log checked
    /// before (a rewritten history). Empty when it checked.
    pub refused: Vec<String>,
}

/// Audits a server's notice log as an outside party would, with `profile`
/// as the auditor's memory (a profile that never registers, one per
/// server: its pins are that server's): reads the whole log before
/// authentication, checks every entry's signature and place, pins the
/// notice key and the TLS certificate at the first audit, and refuses a
/// log that does not extend the one it checked before (rewritten, or
/// shorter), or that is not what the server announced. Run
/// it from time to time, from somewhere else than the server: a log
/// rewritten between two audits is caught, whatever devices were told.
/// `progress` gets the entries checked and the server's length.
pub async fn audit(
    profile: &Profile,
    servers: &str,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<NoticeAudit, ClientError> {
    let mut conn = crate::connect::open_auditor(profile, servers).await?;
    let (key, server_length, server_head) = conn.notice_log();
    if dak_proto::notices::notice_key(&key).is_err() {
        return Err(ClientError::Usage(
            "this server publishes no notice log (a server from before notices)".into(),
        ));
    }
    let before = log_state(profile)?;
    let events = sync_pages(profile, &mut conn, usize::MAX, true, progress).await?;
    conn.close().await;
    let after = log_state(profile)?;
    let mut refused: Vec<String> = events
        .into_iter()
        .filter_map(|e| match e {
            Event::NoticeRefused { reason } => Some(reason),
            _ => None,
        })
        .collect();
    if refused.is_empty() {
        // What the server announced must be what it served.
        if server_length < before.0 {
            refused.push(format!(
                "the server's log has {server_length} entries, fewer than the {} this auditor \
                 checked before: entries were removed (or this node is behind the others; audit \
                 again in a few seconds)",
                before.0
            ));
        } else if after.0 < server_length {
            refused.push(format!(
                "the server announced {server_length} entries and served {}",
                after.0
            ));
        } else if after.0 == server_length && server_head != after.1 {
            refused.push(
                "the head the server announced is not the head of the entries it served".into(),
            );
        }
    }
    Ok(NoticeAudit {
        before,
        after,
        server_length,
        refused,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDevice;
    use dak_proto::notices::sign_notice;
    use ed25519_dalek::SigningKey;

    fn entry(key: &SigningKey, chain: &mut NoticeChain, title: &str) -> v1::SignedNotice {
        let n = v1::OperatorNotice {
            index: chain.length,
            prev_hash: chain.head.to_vec(),
            kind: v1::OperatorNoticeKind::Incident as i32,
            thread: chain.length,
            state: v1::NoticeState::Ongoing as i32,
            published_ms: 1,
            title: title.into(),
            ..Default::default()
        };
        let signed = sign_notice(key, &n).unwrap();
        chain.append(&key.verifying_key(), &signed).unwrap();
        signed
    }

    fn refusals(events: &[Event]) -> usize {
        events
            .iter()
            .filter(|e| matches!(e, Event::NoticeRefused { .. }))
            .count()
    }

    #[test]
    fn entries_are_shown_in_order_a_gap_waits_and_a_second_story_is_refused() {
        let d = TestDevice::new("+919800000001", 1);
        let key = SigningKey::from_bytes(&[5; 32]);
        pin_key(&d.profile, KEY, key.verifying_key().as_bytes()).unwrap();
        let mut c = NoticeChain::default();
        let (a, b) = (entry(&key, &mut c, "a"), entry(&key, &mut c, "b"));
        let third = entry(&key, &mut c, "c");
        // Past a gap: nothing shown, nothing refused, nothing stored.
        assert!(apply_entries(&d.profile, &[third]).unwrap().is_empty());
        let shown = apply_entries(&d.profile, &[a.clone(), b]).unwrap();
        assert_eq!(shown.len(), 2);
        assert_eq!(log_state(&d.profile).unwrap().0, 2);
        // The same entries again: nothing new.
        assert!(apply_entries(&d.profile, &[a]).unwrap().is_empty());
        // Another story at index 0.
        let mut other = NoticeChain::default();
        let lie = entry(&key, &mut other, "another");
        assert_eq!(refusals(&apply_entries(&d.profile, &[lie]).unwrap()), 1);
        assert_eq!(notices(&d.profile).unwrap().len(), 2);
    }

    #[test]
    fn gossip_hears_known_contacts_only_keeps_one_claim_each_and_says_it_once() {
        let d = TestDevice::new("+919800000001", 1);
        let key = SigningKey::from_bytes(&[5; 32]);
        pin_key(&d.profile, KEY, key.verifying_key().as_bytes()).unwrap();
        let mut c = NoticeChain::default();
        let first = entry(&key, &mut c, "a");
        apply_entries(&d.profile, &[first]).unwrap();
        let friend = "+919800000002";
        let stranger = "+919800000099";
        crate::requests::mark_known(&d.profile, friend).unwrap();
        let other = [9u8; 32];
        // A stranger is not heard.
        assert!(
            compare_told(&d.profile, stranger, 1, &other)
                .unwrap()
                .is_none()
        );
        // A contact with another head at a length this device has: said once.
        assert!(
            compare_told(&d.profile, friend, 1, &other)
                .unwrap()
                .is_some()
        );
        assert!(
            compare_told(&d.profile, friend, 1, &other)
                .unwrap()
                .is_none()
        );
        // Claims ahead of this device: one per contact, whatever it sends.
        let other_friend = "+919800000003";
        crate::requests::mark_known(&d.profile, other_friend).unwrap();
        for len in 2..200 {
            compare_told(&d.profile, other_friend, len, &other).unwrap();
        }
        assert_eq!(told_index(&d.profile).unwrap(), vec![other_friend]);
        // Its latest claim (length 199) waits; at length 2 nothing is said.
        let second = entry(&key, &mut c, "b");
        let events = apply_entries(&d.profile, &[second]).unwrap();
        assert_eq!(refusals(&events), 0);
        // Bad input is ignored, never an error.
        assert!(
            compare_told(&d.profile, friend, 0, &other)
                .unwrap()
                .is_none()
        );
        assert!(
            compare_told(&d.profile, friend, 1, &[1, 2])
                .unwrap()
                .is_none()
        );
        assert!(
            compare_told(&d.profile, friend, u64::MAX, &other)
                .unwrap()
                .is_none()
        );
    }
}
