//! Dak's storage: the `Store` trait every backend implements, and the
//! embedded SQLite backend (the default) and the PostgreSQL backend for
//! cluster mode. Both must pass the same `conformance` suite.
//!
//! Invariant: a write method returns `Ok` only after its effect is durably
//! committed. The server's single tick rests on `send_group` and `commit_group`
//! keeping that promise.
//!
//! Invariant: a block holds on the server, not only in the blocker's
//! client: `send_group` never stores an application message for a device
//! whose account blocked the sender's account, and `commit_group` refuses a
//! commit that adds such a device. Removals are never refused for a block,
//! so every group stays repairable.
//!
//! Invariant: every counter that guards something expensive or guessable
//! (`take_token`, `take_code_attempt`, `take_pin_attempt`, the KeyPackage
//! stock cap, the mailbox quota) is counted in one atomic step (one SQL
//! statement, or one transaction holding the row's lock) *before* the
//! caller does the check it guards, so N racing callers can never all pass
//! a limit of fewer than N. A refusal writes nothing.
//!
//! Invariant: an envelope body that goes to more than one device is stored
//! once (`shares_body`), in `shared_bodies`, and each device's mailbox row
//! refers to it; a device reads exactly the bytes the sender handed over,
//! and each device's usage still counts the whole body. A removal commit
//! at 1,024 members is one commit's bytes, not 1,023 copies. Shared bodies
//! no row refers to any more go at the next `expire`.

pub mod blob_store;
pub mod conformance;
mod postgres;
mod sql;
mod sqlite;
pub mod testing;

pub use blob_store::{BlobStore, BlobStoreError, FsBlobStore, S3BlobStore, S3Config};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use async_trait::async_trait;

pub type DeviceId = u64;
pub type AccountId = u64;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("not found: {0}")]
    NotFound(&'static str),
    #[error("account already has the maximum of {max} linked devices; remove one first")]
    TooManyDevices { max: u32 },
    #[error("storage is out of space; nothing was written")]
    Full,
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage error: {0}")]
    Backend(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    pub phone: String,
    /// PHC string of the registration-lock PIN (argon2), if one is set.
    pub pin_hash: Option<String>,
    pub pin_failures: u32,
    pub pin_locked_until_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: DeviceId,
    pub account_id: AccountId,
    pub phone: String,
    pub identity_key: Vec<u8>,
    pub name: String,
    pub primary: bool,
    pub created_ms: i64,
    pub last_seen_ms: i64,
    /// Set once the device is gone; its row stays so that it can be told why.
    pub revoked: Option<RevokeReason>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    /// Unlinked by the primary device or by itself.
    Removed = 1,
    /// The number was registered on another phone.
    NumberMoved = 2,
    /// A linked device outlived the operator's maximum session age.
    LinkExpired = 3,
}

impl RevokeReason {
    pub fn from_i64(v: i64) -> Option<Self> {
        match v {
            1 => Some(RevokeReason::Removed),
            2 => Some(RevokeReason::NumberMoved),
            3 => Some(RevokeReason::LinkExpired),
            _ => None,
        }
    }
}

/// A pending one-time registration code for a phone number, bound to the
/// registration session that asked for it: wrong guesses made in another
/// session (an attacker's) count against that session's code only, so
/// they cannot use up the owner's attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub phone: String,
    /// Hash of the session token (32 bytes), never the token itself.
    pub session: Vec<u8>,
    /// Hash of the code (never the code itself).
    pub code_hash: String,
    pub expires_ms: i64,
    pub attempts: u32,
}

/// What `Store::take_code_attempt` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeAttempt {
    /// The attempt is counted; the caller may now compare the code with
    /// `code_hash`. `attempts` includes this one.
    Counted { code_hash: String, attempts: u32 },
    /// No code for this number and session.
    Missing,
    /// The code has expired.
    Expired,
    /// The session has used all its attempts on this code.
    Exhausted,
}

impl CodeAttempt {
    /// What a refused attempt met, from the row as read afterwards (its
    /// `expires_ms` and `attempts`, None when there is none). Shared by the
    /// backends so they tell the cases apart alike. A row that would have
    /// been counted (it changed in between) is reported as `Exhausted`.
    pub(crate) fn refused(row: Option<(i64, u32)>, now_ms: i64) -> CodeAttempt {
        match row {
            None => CodeAttempt::Missing,
            Some((expires_ms, _)) if expires_ms <= now_ms => CodeAttempt::Expired,
            Some(_) => CodeAttempt::Exhausted,
        }
    }
}

/// What `Store::take_pin_attempt` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinAttempt {
    /// The attempt is counted (`attempt` is its number since the count last
    /// restarted); the caller may now check the PIN.
    Counted { attempt: u32 },
    /// The account is locked until `until_ms`; nothing was counted.
    Locked { until_ms: i64 },
}

/// How much one device's mailbox may hold before application messages to
/// it are refused (`Store::send_group`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxQuota {
    pub max_envelopes: u64,
    pub max_bytes: u64,
}

impl MailboxQuota {
    /// No limit (for callers that do not enforce one, such as tests).
    pub const UNLIMITED: MailboxQuota = MailboxQuota {
        max_envelopes: u64::MAX,
        max_bytes: u64::MAX,
    };

    /// Whether a mailbox holding `envelopes` envelopes of `bytes` bytes in
    /// all has room for one more body of `body_len` bytes.
    pub fn has_room(&self, envelopes: u64, bytes: u64, body_len: u64) -> bool {
        envelopes < self.max_envelopes && bytes.saturating_add(body_len) <= self.max_bytes
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRequest {
    pub code: String,
    pub identity_key: Vec<u8>,
    pub device_name: String,
    pub expires_ms: i64,
}

/// An envelope as the sender handed it over, before it has a mailbox seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEnvelope {
    pub message_id: Vec<u8>,
    pub sender_phone: String,
    pub sender_device: DeviceId,
    pub server_time_ms: i64,
    pub expires_ms: i64,
    pub body: Vec<u8>,
}

/// Whether an envelope for `devices` mailboxes has its body stored once
/// and referred to from each row, rather than copied into each: from two
/// devices up. One more row for a body that goes to one device; against
/// that, a group message or commit to N devices is stored once, not N
/// times (a removal at 1,024 members: 84.6 KB, not 86.5 MB).
pub fn shares_body(devices: usize) -> bool {
    devices >= 2
}

/// An envelope as a transaction committed it, with the seq it took in each
/// device's mailbox: what a store with a `CommitListener` hands over after
/// the commit, so the server can deliver it without reading it back.
#[derive(Debug, Clone)]
pub struct CommittedEnvelope {
    pub envelope: std::sync::Arc<NewEnvelope>,
    /// (device, seq), one per mailbox the envelope went into.
    pub placed: Vec<(DeviceId, u64)>,
}

/// A write already queued in the store's order, still to be answered:
/// awaiting it waits for its commit.
pub type Pending<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send + Sync>>;

/// In what order a store tells its `CommitListener` of envelopes, which
/// decides what a receiver may conclude from a hint's seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintOrder {
    /// In commit order, which is seq order: one writer commits (SQLite).
    /// Each device's hints rise; its seqs are not contiguous (one sequence
    /// numbers every mailbox), so a receiver cannot see a missing one, and
    /// needs none to be missing: every commit is passed, in order.
    CommitOrder,
    /// Writers commit concurrently (PostgreSQL, several nodes), so calls
    /// for one device may come in any order, and a hint from another node
    /// may never come. What holds instead: each device's seqs are
    /// contiguous (the next is the last + 1, from its `mailbox_heads` row)
    /// and a seq commits only after every lower seq of the device has. A
    /// receiver that has pushed through seq `s` may push a hint for `s + 1`
    /// at once; a hint above that means one is missing or late, and it
    /// reads the store, which has them all.
    ContiguousSeqs,
}

/// Told of every envelope a store commits (`Store::set_commit_listener`).
///
/// Contract: called only after the transaction is durable, and every
/// envelope this store commits after the listener was set is passed
/// exactly once, in the order `HintOrder` says (on PostgreSQL, except a
/// commit whose answer is lost on the way back: the writer saw an error,
/// and the device reads it at a gap, a wake or its next connection). It runs on the store's
/// writer (or the committing task) and must not block: hand the envelopes
/// on and return.
pub trait CommitListener: Send + Sync + 'static {
    fn committed(&self, envelopes: &[CommittedEnvelope]);
}

/// An envelope in one device's mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxEntry {
    pub seq: u64,
    pub message_id: Vec<u8>,
    pub sender_phone: String,
    pub sender_device: DeviceId,
    pub server_time_ms: i64,
    pub body: Vec<u8>,
}

/// What registering a primary device replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub account_id: AccountId,
    pub device: Device,
    /// Devices of the number's previous owner (or previous phone), now gone.
    pub revoked: Vec<DeviceId>,
}

/// An MLS ciphersuite's RFC 9420 code point. The key directory keeps each
/// device's KeyPackages per suite; it never reads a package (the server
/// checks each against `dak_proto::mls::check_key_package` first).
pub type Suite = u16;

/// 0x0001, MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519: every device
/// offers it, and every package stored before suites were kept is in it.
pub const CLASSIC_SUITE: Suite = 1;

/// The suite a claim answers in: the first of `wanted` that every device in
/// `offers` (the suites each device to be added has a last-resort package
/// in) can take, or else the last one wanted, in which the devices without
/// a package get none. `wanted` empty means the classic suite.
pub fn claim_suite(wanted: &[Suite], offers: &[Vec<Suite>]) -> Suite {
    wanted
        .iter()
        .copied()
        .find(|s| offers.iter().all(|o| o.contains(s)))
        .or(wanted.last().copied())
        .unwrap_or(CLASSIC_SUITE)
}

/// How many KeyPackages a device has left in the directory, in one suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyStock {
    pub one_time: u32,
    pub has_last_resort: bool,
}

/// One active device of an account, with a KeyPackage taken for it unless
/// the caller already knew the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedDevice {
    pub device: Device,
    pub key_package: Option<Vec<u8>>,
}

/// What a claim took: the suite it chose (`claim_suite`) and every active
/// device of the account that can be in groups, each with a package in that
/// suite unless the caller knew it or it has none in that suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub suite: Suite,
    pub devices: Vec<ClaimedDevice>,
}

/// An MLS commit for the group's epoch `epoch`, with the member list change
/// it makes. The server reads the commit (`dak_proto::mls::read_commit`):
/// its Add proposals name the added devices, its Remove proposals name
/// leaf indices, which the store maps to devices by the leaf index it keeps
/// for each member (see `group_rules::apply_commit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCommit {
    pub group_id: Vec<u8>,
    pub epoch: u64,
    /// The added devices in the order of the commit's Add proposals: the
    /// order in which they take the free leaves.
    pub added: Vec<DeviceId>,
    /// The removed devices, as the committer declares them.
    pub removed: Vec<DeviceId>,
    /// The leaf indices the commit's Remove proposals blank, as read from
    /// the commit. In a group whose members' leaves are all known, the
    /// devices at these leaves must be exactly `removed`.
    pub removed_leaves: Vec<u32>,
    /// The number each added device's credential names, in `added`'s
    /// order (empty: not checked). Each must be the device's own number,
    /// so a member cannot add a device under another account's name.
    pub added_phones: Vec<String>,
    /// Member accounts the group may have after a commit that brings in a
    /// new account (the server's `max_group_members`). Commits that add no
    /// new account pass even in a group that is over it (see
    /// `group_rules::apply_commit`).
    pub max_accounts: u32,
    /// Sent to every device that was a member before the commit, the
    /// committer and removed devices included: a device that lost the ack
    /// learns from its mailbox that its commit won, and a removed device
    /// learns it was removed. Added devices join by the Welcome instead.
    pub commit: NewEnvelope,
    /// Sent to the added devices.
    pub welcome: Option<NewEnvelope>,
}

/// What became of a group message or commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupOutcome {
    /// Durably in the mailboxes of `recipients` (the active members other than the sender).
    Accepted {
        recipients: Vec<Device>,
    },
    /// The group is at another epoch.
    Stale {
        epoch: u64,
    },
    NoGroup,
    NotMember,
    /// Some member account gained a device that is not in the group, or a
    /// member device was revoked: the sender must add or remove them first.
    DevicesChanged,
    /// A device named in the commit cannot be added or removed.
    BadChange(String),
    /// The commit brings in a new account and would leave the group with
    /// `accounts` member accounts, more than its limit of `max`.
    GroupFull {
        max: u32,
        accounts: u32,
    },
    /// `device`'s mailbox is over its quota (`MailboxQuota`); nothing was
    /// written for any recipient.
    MailboxFull {
        device: DeviceId,
    },
}

/// What an expiry pass dropped (`Store::expire`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Expired {
    /// Envelopes dropped unacked at their expiry, in all.
    pub envelopes: u64,
    /// Of those, disappearing messages: envelopes that were given a
    /// lifetime shorter than the retention period passed to `expire`. The
    /// rest are envelopes that waited out the whole retention period.
    pub disappearing: u64,
}

/// The group rules both backends apply to what they read under their lock.
pub mod group_rules {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// May `sender` send an application message at `epoch` to a group at
    /// `current` whose members are `members`, when `ready` are the active,
    /// addable devices of the member accounts?
    pub fn check_send(
        current: u64,
        epoch: u64,
        sender: DeviceId,
        members: &[Device],
        ready: &[DeviceId],
    ) -> Option<GroupOutcome> {
        if !members.iter().any(|d| d.id == sender) {
            return Some(GroupOutcome::NotMember);
        }
        if epoch != current {
            return Some(GroupOutcome::Stale { epoch: current });
        }
        let active: BTreeSet<DeviceId> = members
            .iter()
            .filter(|d| d.revoked.is_none())
            .map(|d| d.id)
            .collect();
        if active.len() != members.len() || ready.iter().any(|d| !active.contains(d)) {
            return Some(GroupOutcome::DevicesChanged);
        }
        None
    }

    /// The sender's account, when the sender is among `members`.
    pub fn sender_account(members: &[Device], sender: DeviceId) -> Option<AccountId> {
        members
            .iter()
            .find(|d| d.id == sender)
            .map(|d| d.account_id)
    }

    /// The recipients of an application message once the devices of the
    /// accounts in `blockers` (those that blocked the sender's account) are
    /// left out: they are not given the envelope, and the sender's ack does
    /// not name them.
    pub fn without_blockers(recipients: Vec<Device>, blockers: &[AccountId]) -> Vec<Device> {
        if blockers.is_empty() {
            return recipients;
        }
        recipients
            .into_iter()
            .filter(|d| !blockers.contains(&d.account_id))
            .collect()
    }

    /// Decides an application message from `sender` at `epoch` to a group
    /// at `current` whose members are `members`, given the member accounts'
    /// ready devices (`ready`, as (device, account)) and the accounts that
    /// blocked the sender's account (`blockers`): its recipients, or the
    /// refusal. What both stores run for every group send, from what they
    /// read or cached under the group's lock.
    pub fn decide_send(
        current: u64,
        epoch: u64,
        sender: DeviceId,
        members: &[Device],
        ready: impl IntoIterator<Item = (DeviceId, AccountId)>,
        blockers: &[AccountId],
    ) -> std::result::Result<Vec<Device>, GroupOutcome> {
        // A blocker's new device is not one the sender must add first: that
        // would stall the sender's group and tell it about the block.
        let ready: Vec<DeviceId> = ready
            .into_iter()
            .filter(|(_, account)| !blockers.contains(account))
            .map(|(id, _)| id)
            .collect();
        if let Some(refusal) = check_send(current, epoch, sender, members, &ready) {
            return Err(refusal);
        }
        Ok(without_blockers(
            members.iter().filter(|d| d.id != sender).cloned().collect(),
            blockers,
        ))
    }

    /// Refuses a commit that would add a device (`added`, as read) whose
    /// account is among `blockers` (those that blocked the committer's
    /// account). Only adds are checked: removals and other commits are never
    /// refused for a block, so a group can always be repaired.
    pub fn check_adds_not_blocked(
        added: &[Device],
        blockers: &[AccountId],
    ) -> Option<GroupOutcome> {
        added
            .iter()
            .any(|d| blockers.contains(&d.account_id))
            .then(|| GroupOutcome::BadChange(ADD_BLOCKED.into()))
    }

    /// The refusal of a commit adding a device whose account blocked the
    /// committer's (`check_adds_not_blocked`).
    pub const ADD_BLOCKED: &str = "this member cannot be added";

    /// Refuses a commit whose `added` or `removed` names a device twice, or
    /// whose `removed_leaves` names a leaf twice. Backends call it before
    /// reading anything, so that a long list a client made up costs no
    /// queries; `apply_commit` calls it too.
    pub fn check_lists(c: &GroupCommit) -> Option<GroupOutcome> {
        for (list, name) in [(&c.added, "added"), (&c.removed, "removed")] {
            let mut ids = list.clone();
            ids.sort_unstable();
            if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
                return Some(GroupOutcome::BadChange(format!(
                    "device {} is {name} twice",
                    w[0]
                )));
            }
        }
        let mut leaves = c.removed_leaves.clone();
        leaves.sort_unstable();
        if let Some(w) = leaves.windows(2).find(|w| w[0] == w[1]) {
            return Some(GroupOutcome::BadChange(format!(
                "leaf {} is removed twice",
                w[0]
            )));
        }
        None
    }

    /// A member device and its MLS leaf index; None when the store does not
    /// know it (a group made before leaf indices were kept).
    pub type Member = (Device, Option<u32>);

    /// A member of the group after a commit: its device and leaf index.
    pub type NextMember = (DeviceId, Option<u32>);

    /// Checks a commit against the group as read; returns the new member
    /// list, with each member's leaf index, when it may be applied.
    /// `members` are the member devices (revoked ones included) with their
    /// leaf indices, `added` those of `c.added` that exist, `added_ready`
    /// the ready devices of their accounts, and `sender` the committing
    /// device: a backend must pass it when the group does not exist yet (it
    /// becomes the first member, at leaf 0), and may pass None otherwise.
    ///
    /// Leaves: when every member's leaf index is known, the devices at
    /// `c.removed_leaves` must be exactly `c.removed`, every one of those
    /// leaves occupied; else `BadChange`. The new members are then placed
    /// as RFC 9420 §12.3 places them (see `place`). In a group where some
    /// leaf is unknown, see `apply_commit`'s body.
    ///
    /// The size limit: a commit that brings in an account that was not a
    /// member before is refused with `GroupFull` when the group would then
    /// have more than `c.max_accounts` member accounts. A commit that brings
    /// in no new account (removing devices, re-keying, adding a member's new
    /// device) is never refused for size, so a group that is over the limit
    /// (the limit was lowered) can still shrink and stays usable.
    pub fn apply_commit(
        current: Option<u64>,
        c: &GroupCommit,
        members: &[Member],
        added: &[Device],
        added_ready: &[DeviceId],
        sender: Option<&Device>,
    ) -> std::result::Result<Vec<NextMember>, GroupOutcome> {
        if let Some(refusal) = check_lists(c) {
            return Err(refusal);
        }
        let sender_id = c.commit.sender_device;
        let before_leaves: Vec<NextMember> = match current {
            // The creator is the group's first member: leaf 0.
            None if c.epoch == 0 => vec![(sender_id, Some(0))],
            None => return Err(GroupOutcome::NoGroup),
            // Membership before the epoch: a non-member learns nothing of
            // the group, not even its epoch. (Group ids are random, so only
            // a forged epoch-0 commit can race to create an existing group;
            // its creator's own retry finds itself a member.)
            Some(_) if !members.iter().any(|(d, _)| d.id == sender_id) => {
                return Err(GroupOutcome::NotMember);
            }
            Some(e) if e != c.epoch => return Err(GroupOutcome::Stale { epoch: e }),
            Some(_) => members.iter().map(|(d, leaf)| (d.id, *leaf)).collect(),
        };
        let before: Vec<DeviceId> = before_leaves.iter().map(|(d, _)| *d).collect();
        if !before.contains(&sender_id) {
            return Err(GroupOutcome::NotMember);
        }
        if c.removed.contains(&sender_id) {
            return Err(GroupOutcome::BadChange(
                "a device cannot remove itself by commit".into(),
            ));
        }
        if c.welcome.is_some() == c.added.is_empty() {
            return Err(GroupOutcome::BadChange(
                "a commit that adds devices carries a Welcome, and only then".into(),
            ));
        }
        let mut next: BTreeSet<DeviceId> = before.iter().copied().collect();
        for r in &c.removed {
            if !next.remove(r) {
                return Err(GroupOutcome::BadChange(format!(
                    "device {r} is not a member"
                )));
            }
        }
        if !c.added_phones.is_empty() {
            if c.added_phones.len() != c.added.len() {
                return Err(GroupOutcome::BadChange(
                    "the added devices and their numbers do not pair up".into(),
                ));
            }
            for (a, phone) in c.added.iter().zip(&c.added_phones) {
                if !added.iter().any(|d| d.id == *a && d.phone == *phone) {
                    return Err(GroupOutcome::BadChange(format!(
                        "the commit adds device {a} under a number that is not its own"
                    )));
                }
            }
        }
        for a in &c.added {
            let known = added.iter().any(|d| d.id == *a && d.revoked.is_none());
            if !known || !added_ready.contains(a) {
                return Err(GroupOutcome::BadChange(format!(
                    "device {a} is not an active device with KeyPackages"
                )));
            }
            if !next.insert(*a) {
                return Err(GroupOutcome::BadChange(format!(
                    "device {a} is already a member"
                )));
            }
        }
        check_size(c, &before, &next, members, added, sender)?;
        // Every member's leaf, or None when some are unknown.
        let leaves: Option<BTreeMap<u32, DeviceId>> = before_leaves
            .iter()
            .map(|(d, leaf)| leaf.map(|l| (l, *d)))
            .collect();
        let Some(leaves) = leaves else {
            // A group from before the store kept leaf indices (a legacy
            // group): it has no map from leaves to devices, so the declared
            // `removed` stands, as it always did, and the added devices'
            // leaves stay unknown too. Quietly: every commit of such a group
            // would log it.
            return Ok(next.into_iter().map(|d| (d, None)).collect());
        };
        let placed = place(&leaves, c)?;
        Ok(next
            .into_iter()
            .map(|d| (d, placed.get(&d).copied()))
            .collect())
    }

    /// The leaf of every member after the commit, from every member's leaf
    /// before it (`leaves`, leaf to device), as RFC 9420 §12.3 has the
    /// members apply it: the Remove proposals blank their leaves first
    /// (the devices there must be exactly `c.removed`), then each added
    /// device, in the order of `c.added` (the commit's Add proposals),
    /// takes the leftmost blank leaf, or a new one at the right end of the
    /// tree. As the tree is truncated to its rightmost non-blank leaf, that
    /// is always the smallest index no remaining member holds.
    fn place(
        leaves: &BTreeMap<u32, DeviceId>,
        c: &GroupCommit,
    ) -> std::result::Result<BTreeMap<DeviceId, u32>, GroupOutcome> {
        let mismatch = || {
            GroupOutcome::BadChange("the commit's removals do not match the devices named".into())
        };
        let mut occupied = leaves.clone();
        let mut gone = BTreeSet::new();
        for leaf in &c.removed_leaves {
            gone.insert(occupied.remove(leaf).ok_or_else(mismatch)?);
        }
        if gone != c.removed.iter().copied().collect::<BTreeSet<_>>() {
            return Err(mismatch());
        }
        let mut free: u32 = 0;
        for d in &c.added {
            while occupied.contains_key(&free) {
                free = free
                    .checked_add(1)
                    .ok_or_else(|| GroupOutcome::BadChange("the group has no free leaf".into()))?;
            }
            occupied.insert(free, *d);
        }
        Ok(occupied.into_iter().map(|(leaf, d)| (d, leaf)).collect())
    }

    /// Whose a member device is, for counting accounts.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum Owner {
        Account(AccountId),
        /// A device the caller did not pass (it should not happen): counted
        /// as an account of its own, so the limit is never undercounted.
        Unknown(DeviceId),
    }

    /// The size rule of `apply_commit`, on the member device ids before and
    /// after the commit.
    fn check_size(
        c: &GroupCommit,
        before: &[DeviceId],
        next: &BTreeSet<DeviceId>,
        members: &[Member],
        added: &[Device],
        sender: Option<&Device>,
    ) -> std::result::Result<(), GroupOutcome> {
        if c.added.is_empty() {
            return Ok(()); // no device comes in, so no account does
        }
        let account_of: BTreeMap<DeviceId, AccountId> = members
            .iter()
            .map(|(d, _)| d)
            .chain(added)
            .chain(sender)
            .map(|d| (d.id, d.account_id))
            .collect();
        let owner = |id: &DeviceId| match account_of.get(id) {
            Some(a) => Owner::Account(*a),
            None => Owner::Unknown(*id),
        };
        let old: BTreeSet<Owner> = before.iter().map(owner).collect();
        let new: BTreeSet<Owner> = next.iter().map(owner).collect();
        let count = u32::try_from(new.len()).unwrap_or(u32::MAX);
        if count > c.max_accounts && !new.is_subset(&old) {
            return Err(GroupOutcome::GroupFull {
                max: c.max_accounts,
                accounts: count,
            });
        }
        Ok(())
    }
}

/// A business account's public profile (docs/BOTS.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Business {
    /// An encoded `v1::BusinessProfile`, as its device set it.
    pub profile: Vec<u8>,
    pub display_name: String,
    /// The operator checked that the business owns `display_name`.
    pub verified: bool,
    pub updated_ms: i64,
}

/// A media blob's record: who uploaded it, how far the upload is, and the
/// hashes of the secrets that let one upload to it and fetch it. The bytes
/// live in a `BlobStore`, as segments named by their offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub id: Vec<u8>,
    pub owner_device: DeviceId,
    pub owner_account: AccountId,
    /// The ciphertext's length, declared when the slot was made.
    pub length: u64,
    /// Bytes stored so far (the sum of the segments).
    pub received: u64,
    /// Every byte arrived and the hash matched: only now is it served.
    pub complete: bool,
    pub sha256: Vec<u8>,
    pub upload_token_sha256: Vec<u8>,
    pub capability_sha256: Vec<u8>,
    pub created_ms: i64,
    pub expires_ms: i64,
}

/// What `create_blob` counts a new blob against: the bytes of every blob a
/// device, and an account, holds that is not yet deleted.
#[derive(Debug, Clone, Copy)]
pub struct BlobQuota {
    pub device_bytes: u64,
    pub account_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobCreated {
    Created,
    DeviceQuota { used: u64 },
    AccountQuota { used: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobShared {
    /// This many devices wait for it now (new and earlier shares).
    Shared { waiting: u64 },
    /// No such complete blob.
    NotFound,
    /// The sharer is not a member of the group.
    NotMember,
}

/// One stored piece of a blob: bytes `offset..offset + len`, written by
/// the write `write` (a random number naming its object, so that two
/// requests writing at one offset never share an object: the one the
/// store records is the one served, and the other deletes its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobSegment {
    pub offset: u64,
    pub len: u64,
    pub write: u64,
}

/// One record of the key-transparency directory (akd's storage: the tree's
/// nodes and its head), opaque to the store: `kind` and `id` are akd's
/// storage type and binary key, `body` its encoding (dak-server's `kt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KtRecord {
    pub kind: u8,
    pub id: Vec<u8>,
    pub body: Vec<u8>,
}

/// One version of one label's value in the key-transparency directory
/// (akd's `ValueState`), kept by (label, epoch) so that a label's whole
/// history reads in one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KtValueState {
    pub label: Vec<u8>,
    pub epoch: u64,
    pub version: u64,
    pub body: Vec<u8>,
}

/// The most labels or records one key-transparency read may name; longer
/// lists are the caller's bug and are refused before any query.
pub const KT_MAX_READ: usize = 4096;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Installs the listener told of every committed envelope, under
    /// `CommitListener`'s contract, and says in what order it is told.
    /// None when this store tells no listener (then it never calls it). At
    /// most one listener; a second call is refused (None).
    fn set_commit_listener(
        &self,
        _listener: std::sync::Arc<dyn CommitListener>,
    ) -> Option<HintOrder> {
        None
    }

    /// A random secret made once in the database behind this store, the
    /// same on every node that shares it: the key the nodes authenticate
    /// their commit hints with, so only a node that can read the store can
    /// make a hint the others push (a forged one could make a device ack,
    /// and so delete, an envelope it was never shown). None for a store no
    /// other node shares (the embedded one).
    fn hint_secret(&self) -> Option<&str> {
        None
    }

    // Rate limits.
    /// Takes a token from the bucket `key` (GCRA, cluster-wide): allows
    /// `burst` requests at once, then one per `interval_ms`. Returns None
    /// when allowed, or `Some(retry_after_ms)` (at least 1) when refused; a
    /// refusal writes nothing. `burst` 0 always refuses; an `interval_ms`
    /// below 1 counts as 1. One atomic statement, so racing callers never
    /// take more than the bucket holds.
    async fn take_token(
        &self,
        key: &str,
        now_ms: i64,
        interval_ms: i64,
        burst: u32,
    ) -> Result<Option<i64>>;
    /// When the bucket `key` is next full (its theoretical arrival time),
    /// or None when it is full already. Reads only: for "was this key used
    /// lately" questions asked before deciding what to take.
    async fn token_state(&self, key: &str) -> Result<Option<i64>>;

    // Phone verification.
    /// Stores a code for the number and session, replacing that session's
    /// previous one (its attempts start again from `v.attempts`).
    async fn put_verification(&self, v: Verification) -> Result<()>;
    /// Counts one attempt at the session's code, in one atomic step, before
    /// the caller compares the code: counted only while the code has not
    /// expired and fewer than `max_attempts` were counted, so racing guesses
    /// never get more than `max_attempts` between them. A refusal writes
    /// nothing and says why.
    async fn take_code_attempt(
        &self,
        phone: &str,
        session: &[u8],
        now_ms: i64,
        max_attempts: u32,
    ) -> Result<CodeAttempt>;
    /// Deletes the codes of every session of the number (after it registered).
    async fn delete_verifications(&self, phone: &str) -> Result<()>;

    // Accounts and devices.
    async fn account_by_phone(&self, phone: &str) -> Result<Option<Account>>;
    /// Creates the account if new, revokes every device it had (and empties
    /// their mailboxes), registers `identity_key` as its primary device, and
    /// clears the PIN failure count and lock.
    async fn register_primary(
        &self,
        phone: &str,
        identity_key: &[u8],
        name: &str,
        now_ms: i64,
    ) -> Result<Registration>;
    /// Sets or removes the registration-lock PIN, and clears the PIN failure
    /// count and lock.
    async fn set_pin(&self, account: AccountId, pin_hash: Option<String>) -> Result<()>;
    /// Counts one attempt at the account's registration-lock PIN, in one
    /// atomic step, before the caller checks the PIN (Argon2). While the
    /// account is locked (`pin_locked_until_ms > now_ms`) nothing is counted
    /// and `Locked` is returned. Otherwise the count goes up by one (or
    /// restarts at 1 if an earlier lock has run out), and the attempt that
    /// brings it to `max_attempts` locks the account until `now_ms +
    /// lockout_ms`: that attempt is still checked, none after it until the
    /// lock ends. Only `register_primary` and `set_pin` clear a lock. A
    /// `max_attempts` of 0 counts as 1. `NotFound` when there is no account.
    async fn take_pin_attempt(
        &self,
        account: AccountId,
        now_ms: i64,
        max_attempts: u32,
        lockout_ms: i64,
    ) -> Result<PinAttempt>;
    /// Any device, revoked ones included (see `Device::revoked`).
    async fn device(&self, id: DeviceId) -> Result<Option<Device>>;
    /// The active device holding this identity key.
    async fn device_by_key(&self, identity_key: &[u8]) -> Result<Option<Device>>;
    /// Active devices only.
    async fn devices_of(&self, account: AccountId) -> Result<Vec<Device>>;
    /// Adds a linked (non-primary) device unless the account has `max_linked` already.
    async fn add_linked_device(
        &self,
        account: AccountId,
        identity_key: &[u8],
        name: &str,
        now_ms: i64,
        max_linked: u32,
    ) -> Result<Device>;
    /// Marks a device revoked and empties its mailbox.
    async fn revoke_device(&self, id: DeviceId, reason: RevokeReason) -> Result<()>;
    /// Records when the device was last seen.
    async fn touch_device(&self, id: DeviceId, now_ms: i64) -> Result<()>;

    // Linking.
    /// Stores a request to link a new device, under its one-time code.
    async fn put_link_request(&self, req: LinkRequest) -> Result<()>;
    /// Removes and returns the request if it exists and has not expired.
    async fn take_link_request(&self, code: &str, now_ms: i64) -> Result<Option<LinkRequest>>;

    // MLS key directory. A device keeps a stock per suite; it is ready (can
    // be in groups) once it has a last-resort package in the classic one,
    // which every device offers and uploads last.
    /// Adds one-time KeyPackages of `suite`, in upload order, until the
    /// device holds `max_one_time` of them in that suite (the rest are
    /// dropped; concurrent uploads together never pass the cap), replaces
    /// the suite's last-resort one (when given), and returns the suite's
    /// stock.
    async fn put_key_packages(
        &self,
        device: DeviceId,
        suite: Suite,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        max_one_time: u32,
    ) -> Result<KeyStock>;
    /// How many KeyPackages of `suite` the device has left.
    async fn key_stock(&self, device: DeviceId, suite: Suite) -> Result<KeyStock>;
    /// Every active device of the account that has uploaded keys; for each
    /// not in `known`, a KeyPackage in the suite `claim_suite` picks from
    /// `suites` (none for a device without one in it). With `one_time`, the
    /// oldest one-time one is taken (deleted in the same transaction, so
    /// two callers never get the same one) and the last-resort one is
    /// shared when none is left. Without it, every device gets its
    /// last-resort one and nothing is consumed: for a requester over its
    /// budget, who must not drain the target's one-time packages.
    async fn claim_key_packages(
        &self,
        account: AccountId,
        known: &[DeviceId],
        one_time: bool,
        suites: &[Suite],
    ) -> Result<Claimed>;

    // MLS groups (the Delivery Service).
    /// The group's current epoch; None when there is no such group.
    async fn group_epoch(&self, group_id: &[u8]) -> Result<Option<u64>>;
    /// The group's epoch if `device` is a member; None when it is not or
    /// there is no such group (one answer, so a non-member learns nothing).
    async fn member_epoch(&self, group_id: &[u8], device: DeviceId) -> Result<Option<u64>>;
    /// Applies a commit if the group is at `c.epoch` (first wins), moves it
    /// to the next epoch and stores the commit and Welcome, in one
    /// transaction. Not subject to the mailbox quota. A commit whose lists
    /// name a device or leaf twice is refused before anything is read; the
    /// added devices are read with one query, however many are named. Each
    /// member's leaf index is kept (`group_rules::apply_commit`). A commit
    /// that `apply_commit` allows but that adds a device whose account
    /// blocked the committer's account is refused with
    /// `BadChange(group_rules::ADD_BLOCKED)` and changes nothing (one query
    /// for the blockers, only when the commit adds devices). It lands after
    /// the sends to its group submitted before it (`submit_send_group`);
    /// on PostgreSQL, once queued, dropping the future does not cancel it.
    async fn commit_group(&self, c: GroupCommit) -> Result<GroupOutcome>;
    /// Stores an application message for every other active member of the
    /// group, if `group_rules::check_send` allows it and every recipient's
    /// mailbox has room under `quota` (else `MailboxFull`, and nothing is
    /// written for anyone), in one transaction. Devices of accounts that
    /// blocked the sender's account are left out (one query for the
    /// blockers): they get nothing, are not in `Accepted::recipients`, and
    /// their mailboxes are not held to the quota for this message.
    async fn send_group(
        &self,
        group_id: &[u8],
        epoch: u64,
        envelope: NewEnvelope,
        quota: MailboxQuota,
    ) -> Result<GroupOutcome>;

    /// `send_group`, split in two: returns once the write has its place in
    /// the store's order (before any write to the same group submitted
    /// after this returns, `commit_group` included; SQLite orders every
    /// write), with what resolves at its commit. A connection pipelines its
    /// sends with it and keeps their order per group. The default runs the
    /// whole write first (stores whose concurrent writes have no order to
    /// queue in). The write is not cancelled by dropping what resolves: it
    /// commits unanswered.
    async fn submit_send_group(
        &self,
        group_id: &[u8],
        epoch: u64,
        envelope: NewEnvelope,
        quota: MailboxQuota,
    ) -> Result<Pending<GroupOutcome>> {
        let outcome = self.send_group(group_id, epoch, envelope, quota).await;
        Ok(Box::pin(std::future::ready(outcome)))
    }

    // Blocks and reports.
    /// Blocks (`on`) or unblocks `blocked` for `account`: while blocked, no
    /// application message from any device of `blocked` reaches a device of
    /// `account`, and `blocked` cannot add `account`'s devices to a group.
    /// Idempotent: blocking twice keeps the first block's time, unblocking
    /// what is not blocked does nothing.
    async fn set_block(&self, account: AccountId, blocked: AccountId, on: bool) -> Result<()>;
    /// Records that `reporter` reported `reported` (one row per pair: a
    /// repeat only updates its time to `now_ms`) and blocks `reported` for
    /// `reporter`, in one transaction.
    async fn report(&self, reporter: AccountId, reported: AccountId, now_ms: i64) -> Result<()>;
    /// How many distinct accounts have reported `account` (for the
    /// operator, and tests).
    async fn reports_against(&self, account: AccountId) -> Result<u64>;

    // Business accounts (docs/BOTS.md).
    /// Marks the account a business with `profile` (an encoded
    /// `v1::BusinessProfile` whose name is `display_name`). A name other
    /// than the one the operator verified clears the verification, in the
    /// same write.
    async fn set_business(
        &self,
        account: AccountId,
        profile: &[u8],
        display_name: &str,
        now_ms: i64,
    ) -> Result<()>;
    /// The account's business profile; None for a person's account.
    async fn business(&self, account: AccountId) -> Result<Option<Business>>;
    /// Records that the operator checked the business owns the display
    /// name `name` (`Some`): only if that is still its name, in the same
    /// statement, so a rename racing the operator keeps no tick. `None`
    /// takes the verification back. False when nothing changed (no
    /// business, or another name).
    async fn verify_business(&self, account: AccountId, name: Option<&str>) -> Result<bool>;

    // Mailboxes.
    /// Appends the envelope to every listed device's mailbox in one durable
    /// commit. Returns once committed. Not subject to the mailbox quota.
    async fn enqueue(&self, envelope: NewEnvelope, devices: &[DeviceId]) -> Result<()>;
    /// Entries with seq > `after`, oldest first.
    async fn fetch_mailbox(
        &self,
        device: DeviceId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<MailboxEntry>>;
    /// Takes the given entries out of this device's mailbox only: no
    /// fetch, count or usage sees them once this returns (the embedded
    /// store may delete the rows later, `sqlite/acks.rs`). Returns how many
    /// went; a seq already acked or not the device's counts none.
    async fn ack(&self, device: DeviceId, seqs: &[u64]) -> Result<usize>;
    /// How many envelopes the device's mailbox holds (counted).
    async fn mailbox_len(&self, device: DeviceId) -> Result<u64>;
    /// The device's mailbox usage as the quota sees it: envelopes and body
    /// bytes, from counters kept exact on every insert and delete (one
    /// lookup, not a count over the mailbox).
    async fn mailbox_usage(&self, device: DeviceId) -> Result<(u64, u64)>;

    /// Bytes of envelope bodies the store holds, each shared body counted
    /// once (`shares_body`). A scan of every mailbox: for tests and an
    /// operator's check, not for a hot path.
    async fn stored_body_bytes(&self) -> Result<u64>;

    /// Drops envelopes past their `expires_ms`, link requests and
    /// verification codes past their expiry, and rate-limit buckets that
    /// have refilled (a full bucket needs no row), telling no one (a device
    /// that had not acked an envelope simply never gets it). Returns what
    /// was dropped of the envelopes; an envelope whose lifetime
    /// (`expires_ms - server_time_ms`) was shorter than `retention_ms`
    /// counts as a disappearing message.
    async fn expire(&self, now_ms: i64, retention_ms: i64) -> Result<Expired>;

    // Media blobs (docs/PROTOCOL.md §15). The store keeps their records;
    // their bytes are in a `BlobStore`.
    /// Records a new upload slot, if its owner's device and account stay
    /// within `quota` with it (every blob of theirs not yet deleted counts,
    /// unfinished ones included). One atomic step, so racing uploads never
    /// pass a quota together; a refusal writes nothing.
    async fn create_blob(&self, blob: Blob, quota: BlobQuota) -> Result<BlobCreated>;
    async fn blob(&self, id: &[u8]) -> Result<Option<Blob>>;
    /// Records a stored segment, if its offset is where the upload stands
    /// (`received`) and the blob is not complete; returns the new
    /// `received`, or None when the offset is not the upload's (a racing
    /// or repeated PATCH) or the blob is gone: the caller then deletes the
    /// segment's object.
    async fn add_blob_segment(&self, id: &[u8], segment: BlobSegment) -> Result<Option<u64>>;
    /// The blob's segments in order of offset.
    async fn blob_segments(&self, id: &[u8]) -> Result<Vec<BlobSegment>>;
    /// Marks a fully received blob complete (served from now on) and keeps
    /// it until `expires_ms`. False when it is not fully received or gone.
    async fn complete_blob(&self, id: &[u8], expires_ms: i64) -> Result<bool>;
    /// Records that every member device of the group but `sharer` may
    /// fetch the complete blob, and that it waits for each of them. Only a
    /// member of the group shares with it. One statement.
    async fn share_blob(&self, id: &[u8], group_id: &[u8], sharer: DeviceId) -> Result<BlobShared>;
    /// The device fetched the blob. True when the blob was shared and no
    /// device waits for it any more: the caller deletes it.
    async fn blob_fetched(&self, id: &[u8], device: DeviceId) -> Result<bool>;
    /// Forgets the blob and returns its segments, which the caller then
    /// deletes from the `BlobStore` (rows first: a crash between leaves
    /// bytes no one is offered, never an offer of missing bytes).
    async fn delete_blob(&self, id: &[u8]) -> Result<Vec<BlobSegment>>;
    /// Ids of blobs past their `expires_ms`, at most `limit`.
    async fn expired_blobs(&self, now_ms: i64, limit: u32) -> Result<Vec<Vec<u8>>>;

    // Key transparency (PROTOCOL.md §18): akd's directory, stored here so
    // that every node of a cluster serves the same one.
    /// Writes `records` and `states` (upserts) in one transaction. With
    /// `advance` = (from, to), the directory's epoch moves from `from` to
    /// `to` in the same transaction, only if it is at `from` now: else
    /// nothing is written and the answer is false (another node published
    /// first). A directory that was never advanced is at epoch 0.
    async fn kt_write(
        &self,
        records: Vec<KtRecord>,
        states: Vec<KtValueState>,
        advance: Option<(u64, u64)>,
    ) -> Result<bool>;
    /// The records of `kind` with these ids (those that exist, any order).
    async fn kt_records(&self, kind: u8, ids: &[Vec<u8>]) -> Result<Vec<KtRecord>>;
    /// Every value state of these labels, oldest epoch first per label.
    async fn kt_states(&self, labels: &[Vec<u8>]) -> Result<Vec<KtValueState>>;
    /// The directory's published epoch (0: never published).
    async fn kt_epoch(&self) -> Result<u64>;
    /// Stores `record` unless one of its kind and id is there already, in
    /// one statement, and returns the body kept (the first writer's).
    async fn kt_put_first(&self, record: KtRecord) -> Result<Vec<u8>>;
}

/// Refuses a key-transparency read of more than `KT_MAX_READ` ids.
pub(crate) fn kt_check_read(n: usize) -> Result<()> {
    if n > KT_MAX_READ {
        return Err(StoreError::Backend(format!(
            "a key-transparency read of {n} rows; at most {KT_MAX_READ} at once"
        )));
    }
    Ok(())
}

/// The wall clock in milliseconds, for rows whose caller passes no time
/// (a block's `created_ms`, kept for the operator only).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The GCRA numbers of `Store::take_token`, shared by the backends.
pub(crate) mod gcra {
    /// `interval_ms` as used (at least 1), and how far past `now` the
    /// theoretical arrival time may run: `burst * interval`.
    pub fn limits(interval_ms: i64, burst: u32) -> (i64, i64) {
        let interval = interval_ms.max(1);
        (interval, interval.saturating_mul(i64::from(burst)))
    }

    /// How long a refused caller waits, from the bucket's stored arrival
    /// time (None when it has none): until taking a token would pass.
    pub fn retry_after(tat_ms: Option<i64>, now_ms: i64, interval: i64, tolerance: i64) -> i64 {
        let tat = tat_ms.unwrap_or(now_ms).max(now_ms);
        tat.saturating_add(interval)
            .saturating_sub(tolerance)
            .saturating_sub(now_ms)
            .max(1)
    }
}
