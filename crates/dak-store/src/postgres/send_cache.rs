//! The send workers' membership cache on PostgreSQL (`SendCache`): what a
//! group's application messages are checked against (the member devices,
//! the member accounts' ready devices, the blocks between member accounts),
//! kept by the worker that batches the group's sends, so that a send reads
//! none of it from PostgreSQL while the group is unchanged.
//!
//! Invariants:
//! - **Stamped, and used only at its stamp.** An entry is read under the
//!   group's row lock together with the row's `(epoch, checks_version)`,
//!   and a batch uses it only when the row it has just locked still holds
//!   that pair. A commit moves the epoch; every other write that changes
//!   what the entry holds bumps `checks_version` of each group concerned,
//!   in the same transaction, with the group's row locked
//!   (`bump_send_checks`: a member account's active device revoked, one
//!   made ready by its first last-resort KeyPackage in the classic suite, a
//!   block made or lifted between two of its member accounts). So an entry is never used after a change committed,
//!   on whatever node the change was made: the database, not the bus, says
//!   when it is stale, and a lost or late message cannot make it wrong.
//! - **Read as a lone send reads.** A miss reads the entry in one statement
//!   after the group's lock (so its snapshot comes after it, and no change
//!   to the group can commit between the stamp and the read). A send is then
//!   decided by `group_rules`, as on SQLite.
//! - **Blocks among members only.** A send's blockers matter only as member
//!   accounts (its recipients, and the ready devices it must have added), so
//!   the entry keeps the blocks whose both accounts are members, and one
//!   entry serves every sender of the group.
//! - **Only the worker's groups.** A group's sends always go to one worker
//!   of the node, which owns its cache: no lock, no sharing.
//! - **Bounded.** At most `GROUPS_MAX` groups and `ENTRIES_MAX` entries
//!   (member devices, ready devices, blocks) per worker; at a bound the
//!   cache drops groups, any, one at a time, until the new one fits, and a
//!   group larger than the whole bound is kept aside, alone, until another
//!   such group or a new stamp replaces it. `last_seen_ms` of a cached device may be
//!   old: nothing a send answers depends on it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};

use super::{backend, row_device};
use crate::sql::DEVICE_FIELDS;
use crate::{AccountId, CLASSIC_SUITE, Device, DeviceId, GroupOutcome, Result, group_rules};

/// Groups kept per worker (four workers per node at most). `ENTRIES_MAX`
/// is the bound on memory; this one bounds the map itself.
const GROUPS_MAX: usize = 16_384;
/// Entries (member devices, ready devices, blocks) kept per worker: at
/// most about 16 MiB (a member `Device` is the largest).
const ENTRIES_MAX: usize = 1 << 16;

/// A group as its sends are checked, stamped with the group row's
/// `(epoch, checks_version)` it was read at.
pub(super) struct GroupChecks {
    stamp: (u64, u64),
    /// Member devices, revoked ones included, by id.
    members: Vec<Device>,
    /// The member accounts' ready devices (id, account), by id.
    ready: Vec<(DeviceId, AccountId)>,
    /// (blocker, blocked) between member accounts, neither itself.
    blocks: Vec<(AccountId, AccountId)>,
}

impl GroupChecks {
    /// Decides a send from `sender` at `epoch` to the group as of its
    /// stamp: its recipients, or the refusal (`group_rules::decide_send`).
    pub(super) fn check(
        &self,
        epoch: u64,
        sender: DeviceId,
    ) -> std::result::Result<Vec<Device>, GroupOutcome> {
        let blockers: Vec<AccountId> = match group_rules::sender_account(&self.members, sender) {
            Some(account) => self
                .blocks
                .iter()
                .filter(|(_, blocked)| *blocked == account)
                .map(|(blocker, _)| *blocker)
                .collect(),
            None => Vec::new(),
        };
        group_rules::decide_send(
            self.stamp.0,
            epoch,
            sender,
            &self.members,
            self.ready.iter().copied(),
            &blockers,
        )
    }

    fn size(&self) -> usize {
        self.members.len() + self.ready.len() + self.blocks.len()
    }
}

/// One worker's cache (see the module comment).
pub(super) struct SendCache {
    groups: HashMap<Vec<u8>, GroupChecks>,
    /// The last group read that was too large to keep, with its id.
    oversized: Option<(Vec<u8>, GroupChecks)>,
    /// Entries held in `groups` (`GroupChecks::size`).
    entries: usize,
    /// Entries read from PostgreSQL (misses), by every worker of the node
    /// (`PgStore::send_check_reads`).
    reads: Arc<AtomicU64>,
}

impl SendCache {
    pub(super) fn new(reads: Arc<AtomicU64>) -> Self {
        SendCache {
            groups: HashMap::new(),
            oversized: None,
            entries: 0,
            reads,
        }
    }

    /// The group's checks at `stamp`, the `(epoch, checks_version)` the
    /// caller's transaction has just read with the group's row locked:
    /// the cached entry if it has that stamp, else read now and kept.
    pub(super) async fn checks(
        &mut self,
        tx: &mut Transaction<'static, Postgres>,
        group_id: &[u8],
        stamp: (u64, u64),
    ) -> Result<&GroupChecks> {
        if self.groups.get(group_id).is_some_and(|g| g.stamp == stamp) {
            return Ok(&self.groups[group_id]);
        }
        if self
            .oversized
            .as_ref()
            .is_some_and(|(id, g)| id == group_id && g.stamp == stamp)
        {
            return Ok(&self.oversized.as_ref().expect("just checked").1);
        }
        let read = read_checks(tx, group_id, stamp).await?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.forget(group_id);
        if read.size() > ENTRIES_MAX {
            return Ok(&self.oversized.insert((group_id.to_vec(), read)).1);
        }
        self.keep(group_id, read);
        Ok(&self.groups[group_id])
    }

    /// Drops the group's entry (after a commit: its stamp is old now).
    pub(super) fn forget(&mut self, group_id: &[u8]) {
        if let Some(old) = self.groups.remove(group_id) {
            self.entries -= old.size();
        }
    }

    /// Keeps `group` (not kept yet, and within `ENTRIES_MAX`), first
    /// dropping other groups, any, while it would not fit.
    fn keep(&mut self, id: &[u8], group: GroupChecks) {
        while self.groups.len() >= GROUPS_MAX || self.entries + group.size() > ENTRIES_MAX {
            let Some(other) = self.groups.keys().next().cloned() else {
                break;
            };
            self.forget(&other);
        }
        self.entries += group.size();
        self.groups.insert(id.to_vec(), group);
    }
}

/// Reads what the group's sends are checked against, in one statement (one
/// round trip) under the group's lock, which the caller took in an earlier
/// statement so that this one's snapshot is taken after it: the member
/// devices (revoked ones included), the member accounts' ready devices
/// (active, with a last-resort KeyPackage in the classic suite, as
/// `ready_devices`), and, on the first member's row only, the blocks
/// between member accounts.
async fn read_checks(
    tx: &mut Transaction<'static, Postgres>,
    group_id: &[u8],
    stamp: (u64, u64),
) -> Result<GroupChecks> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "WITH member_accounts AS MATERIALIZED (
             SELECT DISTINCT d2.account_id FROM group_members m2
             JOIN devices d2 ON d2.id = m2.device_id WHERE m2.group_id = $1),
         member_blocks AS MATERIALIZED (
             SELECT b.account_id, b.blocked_id FROM blocks b
             WHERE b.account_id IN (SELECT account_id FROM member_accounts)
               AND b.blocked_id IN (SELECT account_id FROM member_accounts)
               AND b.account_id <> b.blocked_id)
         SELECT {DEVICE_FIELDS}, p.part,
                CASE WHEN p.first THEN
                    ARRAY(SELECT account_id FROM member_blocks ORDER BY account_id, blocked_id) END,
                CASE WHEN p.first THEN
                    ARRAY(SELECT blocked_id FROM member_blocks ORDER BY account_id, blocked_id) END
         FROM (SELECT 0 AS part, m.device_id AS id,
                      m.device_id = (SELECT MIN(m3.device_id) FROM group_members m3
                                     WHERE m3.group_id = $1) AS first
               FROM group_members m WHERE m.group_id = $1
               UNION ALL
               SELECT 1, r.id, FALSE FROM devices r
               WHERE r.revoked = 0
                 AND r.account_id IN (SELECT account_id FROM member_accounts)
                 AND EXISTS (SELECT 1 FROM key_packages k
                             WHERE k.device_id = r.id AND k.suite = $2 AND k.last_resort)) p
         JOIN devices d ON d.id = p.id JOIN accounts a ON a.id = d.account_id
         ORDER BY p.part, d.id"
    )))
    .bind(group_id)
    .bind(i32::from(CLASSIC_SUITE))
    .fetch_all(&mut **tx)
    .await
    .map_err(backend)?;
    let (mut members, mut ready, mut blocks) = (Vec::new(), Vec::new(), Vec::new());
    for r in &rows {
        let device = row_device(r);
        if r.get::<i32, _>(9) == 0 {
            members.push(device);
        } else {
            ready.push((device.id, device.account_id));
        }
        let by: Option<Vec<i64>> = r.get(10);
        let of: Option<Vec<i64>> = r.get(11);
        if let (Some(by), Some(of)) = (by, of) {
            blocks = by
                .into_iter()
                .zip(of)
                .map(|(by, of)| (by as u64, of as u64))
                .collect();
        }
    }
    Ok(GroupChecks {
        stamp,
        members,
        ready,
        blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A group of `n` ready devices and nothing else, at `stamp`.
    fn group(stamp: u64, n: u64) -> GroupChecks {
        GroupChecks {
            stamp: (stamp, 0),
            members: Vec::new(),
            ready: (0..n).map(|i| (i, i)).collect(),
            blocks: Vec::new(),
        }
    }

    fn counted(cache: &SendCache) -> usize {
        cache.groups.values().map(GroupChecks::size).sum()
    }

    #[test]
    fn keeping_past_the_bound_drops_other_groups_and_counts_exactly() {
        let mut cache = SendCache::new(Arc::default());
        let quarter = (ENTRIES_MAX / 4) as u64;
        for g in 0..10u8 {
            cache.keep(&[g], group(1, quarter));
            assert!(cache.entries <= ENTRIES_MAX);
            assert_eq!(cache.entries, counted(&cache));
        }
        assert_eq!(cache.groups.len(), 4, "four quarters fit");
        assert!(cache.groups.contains_key(&[9u8][..]), "the newest is kept");
        // A group kept again replaces itself; forgetting gives its room back.
        cache.forget(&[9]);
        cache.keep(&[9], group(2, 1));
        assert_eq!(cache.entries, counted(&cache));
        assert_eq!(cache.groups[&[9u8][..]].stamp, (2, 0));
        for g in 100..=255u8 {
            cache.keep(&[g], group(1, 0));
        }
        assert!(cache.groups.len() <= GROUPS_MAX);
        assert_eq!(cache.entries, counted(&cache));
    }
}
