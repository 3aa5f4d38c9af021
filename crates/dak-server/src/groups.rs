//! The MLS Delivery Service and key directory. The server reads only what
//! RFC 9420 leaves in the clear (a message's kind, group and epoch) and
//! checks KeyPackages' signatures and credentials; it never holds a key that
//! could open a message.
//!
//! Ordering: a group accepts a commit only for its current epoch (the first
//! wins) and an application message only at the current epoch, each in one
//! store transaction with the fan-out, so every device's mailbox sees a
//! group's commits and messages in the order the group accepted them.

use std::time::Duration;

use dak_proto::mls::{self, MlsCheckError, MlsInfo, MlsKind};
use dak_proto::v1::{self, ErrorCode};
use dak_store::{Device, GroupCommit, GroupOutcome, MailboxQuota, NewEnvelope};

use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::registration::parse_phone;
use crate::state::{AppState, now_ms};

fn address(d: &Device) -> v1::DeviceAddress {
    v1::DeviceAddress {
        phone: d.phone.clone(),
        device_id: d.id,
    }
}

fn invalid(e: MlsCheckError) -> ApiError {
    ApiError::new(ErrorCode::MlsMessageInvalid, e.to_string())
}

fn inspect(bytes: &[u8], want: MlsKind) -> ApiResult<MlsInfo> {
    let info = mls::inspect(bytes).map_err(invalid)?;
    if info.kind != want {
        return Err(ApiError::new(
            ErrorCode::MlsMessageInvalid,
            format!("expected an MLS {want:?} message, got {:?}", info.kind),
        ));
    }
    Ok(info)
}

/// When the server drops its copy of an envelope accepted at `now_ms`: after
/// the retention period, or, for a disappearing message (`expires_in_secs`
/// non-zero), after that many seconds if that is sooner.
fn expires_at(now_ms: i64, retention: Duration, expires_in_secs: u32) -> i64 {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let keep_ms = match expires_in_secs {
        0 => retention_ms,
        secs => retention_ms.min(i64::from(secs) * 1000),
    };
    now_ms.saturating_add(keep_ms)
}

/// An envelope from `from`, accepted now. `expires_in_secs` is 0 for commits
/// and Welcomes, which are always kept for the retention period.
fn envelope(
    state: &AppState,
    from: &Device,
    message_id: Vec<u8>,
    body: Vec<u8>,
    expires_in_secs: u32,
) -> NewEnvelope {
    let now = now_ms();
    NewEnvelope {
        message_id,
        sender_phone: from.phone.clone(),
        sender_device: from.id,
        server_time_ms: now,
        expires_ms: expires_at(now, state.config.retention, expires_in_secs),
        body,
    }
}

/// Turns a refusal into the error the client acts on.
fn refusal(outcome: GroupOutcome) -> ApiError {
    match outcome {
        GroupOutcome::Accepted { .. } => ApiError::new(ErrorCode::Internal, "accepted"),
        GroupOutcome::Stale { epoch } => {
            let mut e = ApiError::new(
                ErrorCode::StaleEpoch,
                format!("the group is at epoch {epoch}; process your mailbox, then retry"),
            );
            e.0.epoch = epoch;
            e
        }
        // One answer for both, so a non-member learns nothing of a group.
        GroupOutcome::NoGroup | GroupOutcome::NotMember => ApiError::new(
            ErrorCode::NotAMember,
            "this device is not a member of that group (or there is no such group)",
        ),
        GroupOutcome::DevicesChanged => ApiError::new(
            ErrorCode::GroupDevicesChanged,
            "a member's devices changed; add or remove them in the group, then retry",
        ),
        GroupOutcome::BadChange(why) => ApiError::new(ErrorCode::BadRequest, why),
        GroupOutcome::MailboxFull { .. } => ApiError::new(
            ErrorCode::RateLimited,
            "a recipient's device has too many undelivered messages waiting; \
             try again once it has been online",
        )
        .retry_after(60),
        GroupOutcome::GroupFull { max, accounts } => ApiError::new(
            ErrorCode::GroupFull,
            format!(
                "a group can have at most {max} members and this would make it {accounts}; \
                 remove someone first"
            ),
        ),
    }
}

/// Tells the recipients' connections there is new mail, unless the fast
/// path has already handed it to them (and, in a cluster, to the other
/// nodes: `cluster_hints.rs`).
fn wake(state: &AppState, recipients: &[u64]) {
    if state.fast_path() {
        return;
    }
    for d in recipients {
        state.bus.publish(&dak_bus::mail_topic(*d));
    }
}

fn ack(
    message_id: Vec<u8>,
    server_time_ms: i64,
    from: &Device,
    recipients: &[Device],
) -> v1::SendAck {
    let (own, others): (Vec<&Device>, Vec<&Device>) = recipients
        .iter()
        .partition(|d| d.account_id == from.account_id);
    v1::SendAck {
        message_id,
        server_time_ms,
        recipients: others.into_iter().map(address).collect(),
        own_devices: own.into_iter().map(address).collect(),
    }
}

/// An application message: one ciphertext for every other member device,
/// stored before the ack (the single tick). Returns once the store has
/// queued the write (so a later send from the same connection lands after
/// it), with the future that answers at its commit: a session pipelines its
/// sends with it.
pub async fn submit_send(
    state: &AppState,
    from: &Device,
    req: v1::SendMessage,
    business: bool,
) -> ApiResult<impl std::future::Future<Output = ApiResult<v1::SendAck>> + Send + Sync + 'static> {
    let info = inspect(&req.body, MlsKind::Application)?;
    if business {
        crate::business::take_send_token(state, from, &info.group_id)?;
    }
    let env = envelope(
        state,
        from,
        req.message_id.clone(),
        req.body,
        req.expires_in_secs,
    );
    let now = env.server_time_ms;
    let quota = MailboxQuota {
        max_envelopes: state.config.mailbox_max_envelopes,
        max_bytes: state.config.mailbox_max_bytes,
    };
    let pending = state
        .store
        .submit_send_group(&info.group_id, info.epoch, env, quota)
        .await?;
    let (state, from, message_id) = (state.clone(), from.clone(), req.message_id);
    Ok(async move {
        match pending.await? {
            GroupOutcome::Accepted { recipients } => {
                wake(&state, &recipients.iter().map(|d| d.id).collect::<Vec<_>>());
                Metrics::inc(&state.metrics.messages_accepted);
                Ok(ack(message_id, now, &from, &recipients))
            }
            other => Err(refusal(other)),
        }
    })
}

/// A commit (and its Welcome): accepted only for the group's current epoch.
pub async fn commit(
    state: &AppState,
    from: &Device,
    req: v1::SendCommit,
) -> ApiResult<v1::SendAck> {
    // The member changes are read from the commit itself (a PublicMessage),
    // not taken on the committer's word.
    let read = mls::read_commit(&req.commit).map_err(invalid)?;
    // No legitimate commit names more devices than a full group can have.
    let most =
        state.config.max_group_members as usize * (state.config.max_linked_devices as usize + 1);
    if req.added_devices.len() > most || req.removed_devices.len() > most {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("a commit adds or removes at most {most} devices on this server"),
        ));
    }
    let mut declared = req.added_devices.clone();
    let mut in_commit: Vec<u64> = read.adds.iter().map(|(_, id)| *id).collect();
    declared.sort_unstable();
    in_commit.sort_unstable();
    if declared != in_commit {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "the devices named as added are not the ones the commit adds",
        ));
    }
    if req.welcome.is_empty() != read.adds.is_empty() {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "a commit that adds devices carries a Welcome, and only then",
        ));
    }
    let welcome = if req.welcome.is_empty() {
        None
    } else {
        inspect(&req.welcome, MlsKind::Welcome)?;
        Some(envelope(
            state,
            from,
            req.message_id.clone(),
            req.welcome,
            0,
        ))
    };
    let commit_env = envelope(state, from, req.message_id.clone(), req.commit, 0);
    let now = commit_env.server_time_ms;
    let removed = req.removed_devices.clone();
    let c = GroupCommit {
        group_id: read.group_id,
        epoch: read.epoch,
        added: read.adds.iter().map(|(_, id)| *id).collect(),
        removed: req.removed_devices,
        removed_leaves: read.removed_leaves,
        // Checked in the store against the added devices it reads in one
        // query: each credential must name its device's own number.
        added_phones: read.adds.iter().map(|(phone, _)| phone.clone()).collect(),
        max_accounts: state.config.max_group_members,
        commit: commit_env,
        welcome,
    };
    match state.store.commit_group(c).await? {
        GroupOutcome::Accepted { recipients } => {
            let mut woken: Vec<u64> = recipients.iter().map(|d| d.id).collect();
            woken.push(from.id); // its own commit, for a device that lost the ack
            woken.extend(removed); // so a removed device learns it at once
            wake(state, &woken);
            Metrics::inc(&state.metrics.commits_accepted);
            Ok(ack(req.message_id, now, from, &recipients))
        }
        other => {
            match other {
                GroupOutcome::Stale { .. } => Metrics::inc(&state.metrics.commits_stale),
                GroupOutcome::GroupFull { .. } => Metrics::inc(&state.metrics.commits_group_full),
                _ => {}
            }
            Err(refusal(other))
        }
    }
}

/// A group's epoch, for its members only: anyone else gets the answer for
/// a group that does not exist.
pub async fn epoch(
    state: &AppState,
    me: &Device,
    req: v1::GetGroupEpoch,
) -> ApiResult<v1::GroupEpoch> {
    let epoch = state.store.member_epoch(&req.group_id, me.id).await?;
    Ok(v1::GroupEpoch {
        group_id: req.group_id,
        epoch: epoch.unwrap_or(0),
        exists: epoch.is_some(),
    })
}

/// Checks and stores a device's KeyPackages. Every package must be signed by
/// the device's identity key and name it; one bad package refuses the upload.
pub async fn upload_key_packages(
    state: &AppState,
    me: &Device,
    req: v1::UploadKeyPackages,
) -> ApiResult<v1::KeyPackageCount> {
    let max = state.config.max_key_packages;
    let mut req = req;
    let Some(suite) = mls::suite_from_code(req.ciphersuite) else {
        return Err(ApiError::new(
            ErrorCode::KeyPackageInvalid,
            format!(
                "ciphersuite {:#06x} is not one Dak keeps KeyPackages in (0x0001, 0x004f)",
                req.ciphersuite
            ),
        ));
    };
    let code = u16::from(suite);
    if !req.key_packages.is_empty() {
        // Checking a signature costs; none is checked for packages the
        // directory would not keep.
        let stock = state.store.key_stock(me.id, code).await?;
        let room = max.saturating_sub(stock.one_time) as usize;
        req.key_packages.truncate(room);
    }
    let me_ = me.clone();
    let (key_packages, last_resort) = (req.key_packages, req.last_resort);
    // Signature checks take CPU: off the async runtime.
    let (key_packages, last_resort) = tokio::task::spawn_blocking(move || {
        let check = |kp: &[u8], want_last_resort: bool| -> ApiResult<()> {
            let checked = mls::check_key_package(kp, &me_.phone, me_.id, &me_.identity_key)
                .map_err(|e| ApiError::new(ErrorCode::KeyPackageInvalid, e.to_string()))?;
            if checked.suite != suite {
                return Err(ApiError::new(
                    ErrorCode::KeyPackageInvalid,
                    "every KeyPackage of an upload must be in the upload's ciphersuite",
                ));
            }
            if checked.last_resort != want_last_resort {
                return Err(ApiError::new(
                    ErrorCode::KeyPackageInvalid,
                    "one-time KeyPackages must not be marked last-resort, and the last-resort one must be",
                ));
            }
            Ok(())
        };
        for kp in &key_packages {
            check(kp, false)?;
        }
        let last_resort = if last_resort.is_empty() {
            None
        } else {
            check(&last_resort, true)?;
            Some(last_resort)
        };
        Ok::<_, ApiError>((key_packages, last_resort))
    })
    .await
    .map_err(|_| ApiError::new(ErrorCode::Internal, "KeyPackage check failed"))??;
    let stock = if key_packages.is_empty() && last_resort.is_none() {
        state.store.key_stock(me.id, code).await?
    } else {
        state
            .store
            .put_key_packages(me.id, code, key_packages, last_resort, max)
            .await?
    };
    Ok(v1::KeyPackageCount {
        one_time: stock.one_time,
        has_last_resort: stock.has_last_resort,
        ciphersuite: u32::from(code),
    })
}

/// Contact discovery is bounded: each different number this account looks
/// up in a day takes from its daily budget; looking up one it looked up
/// today again is free. KeyPackage fetches and key lookups share it.
async fn spend_lookup(state: &AppState, me: &Device, phone: &str, now: i64) -> ApiResult<()> {
    const DAY_MS: i64 = 86_400_000;
    let seen = format!("seen:{}:{phone}", me.account_id);
    let seen_today = state
        .store
        .token_state(&seen)
        .await?
        .is_some_and(|full_at| full_at > now);
    if !seen_today {
        let per_day = state.config.lookups_per_day;
        state
            .take_cluster_token(
                &format!("lookup:{}", me.account_id),
                Duration::from_millis(DAY_MS as u64),
                per_day,
                per_day,
                "lookups",
                "this account looked up too many different numbers today; try again later",
            )
            .await?;
        state.store.take_token(&seen, now, DAY_MS, 1).await?;
    }
    Ok(())
}

/// The key directory's proof for one number (`LookupKeys`), for a device
/// checking devices added to a group.
pub async fn lookup_keys(
    state: &AppState,
    me: &Device,
    req: v1::LookupKeys,
) -> ApiResult<v1::KeyDirectoryProof> {
    let phone = parse_phone(&req.phone)?;
    spend_lookup(state, me, &phone, now_ms()).await?;
    if state.store.account_by_phone(&phone).await?.is_none() {
        return Err(ApiError::new(
            ErrorCode::UnknownAccount,
            format!("{phone} is not on Dak; check the number or invite them"),
        ));
    }
    Ok(state.kt.lookup(&phone).await?.0)
}

/// One KeyPackage per device of the number that the caller does not know yet.
pub async fn fetch_key_packages(
    state: &AppState,
    me: &Device,
    req: v1::FetchKeyPackages,
) -> ApiResult<v1::KeyPackages> {
    let phone = parse_phone(&req.phone)?;
    let now = now_ms();
    spend_lookup(state, me, &phone, now).await?;
    // One-time KeyPackages per (requester, target): beyond the budget the
    // target's last-resort one is handed out instead, so the requester
    // still gets a working key and cannot drain the target's stock.
    let pair = format!("kp:{}:{phone}", me.account_id);
    let per_target = 3_600_000 / i64::from(state.config.key_packages_per_target_per_hour.max(1));
    let fresh_one_time = state
        .store
        .take_token(
            &pair,
            now,
            per_target,
            state.config.key_packages_per_target_per_hour,
        )
        .await?
        .is_none();
    if !fresh_one_time {
        state.metrics.limited.inc("key_packages_per_target");
    }
    let Some(account) = state.store.account_by_phone(&phone).await? else {
        return Err(ApiError::new(
            ErrorCode::UnknownAccount,
            format!("{phone} is not on Dak; check the number or invite them"),
        ));
    };
    // The suites this server keeps, in the caller's order; unknown ones are
    // left out (a newer device may know more), and none left is classic.
    let suites: Vec<u16> = req
        .ciphersuites
        .iter()
        .take(mls::SUITES.len() * 2)
        .filter_map(|c| mls::suite_from_code(*c))
        .map(u16::from)
        .collect();
    // The proof first: a failed lookup consumes no one-time package. A
    // device that changed between the two (linked or revoked in between)
    // is left out of the answer, which names only devices the proof shows:
    // the caller refuses any other, and fetches again when the server
    // refuses its send for the missing one.
    let (proof, proven) = state.kt.lookup(&phone).await?;
    // A device the proof does not show is claimed as known (no package
    // taken): it is left out below anyway.
    let mut known = req.known_devices.clone();
    for d in state.store.devices_of(account.id).await? {
        let shown = proven
            .iter()
            .any(|p| p.device_id == d.id && p.identity_key == d.identity_key);
        if d.revoked.is_none() && !shown && !known.contains(&d.id) {
            known.push(d.id);
        }
    }
    let claimed = state
        .store
        .claim_key_packages(account.id, &known, fresh_one_time, &suites)
        .await?;
    Ok(v1::KeyPackages {
        phone,
        key_directory: Some(proof),
        ciphersuite: u32::from(claimed.suite),
        devices: claimed
            .devices
            .into_iter()
            .filter(|c| {
                proven
                    .iter()
                    .any(|p| p.device_id == c.device.id && p.identity_key == c.device.identity_key)
            })
            .map(|c| v1::DeviceKeyPackage {
                device_id: c.device.id,
                identity_key: c.device.identity_key,
                key_package: c.key_package.unwrap_or_default(),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_disappearing_message_expires_at_its_own_time_but_never_after_retention() {
        let now = 1_700_000_000_000;
        assert_eq!(expires_at(now, 30 * DAY, 0), now + 30 * 86_400_000);
        assert_eq!(expires_at(now, 30 * DAY, 60), now + 60_000);
        assert_eq!(expires_at(now, DAY, 7 * 86_400), now + 86_400_000);
        assert_eq!(expires_at(now, DAY, u32::MAX), now + 86_400_000);
        assert_eq!(expires_at(now, Duration::MAX, 0), i64::MAX);
    }

    #[test]
    fn group_full_says_the_limit_and_what_to_do() {
        let e = refusal(GroupOutcome::GroupFull {
            max: 1024,
            accounts: 1025,
        });
        assert_eq!(e.0.kind(), ErrorCode::GroupFull);
        assert!(!e.0.retryable);
        assert!(
            e.0.message.contains("at most 1024 members"),
            "{}",
            e.0.message
        );
        assert!(e.0.message.contains("remove someone"), "{}", e.0.message);
    }
}
