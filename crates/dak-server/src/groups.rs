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
use dak_store::{Device, GroupCommit, GroupOutcome, NewEnvelope};

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
        GroupOutcome::NoGroup => ApiError::new(ErrorCode::NotAMember, "no such group"),
        GroupOutcome::NotMember => ApiError::new(
            ErrorCode::NotAMember,
            "this device is not a member of the group",
        ),
        GroupOutcome::DevicesChanged => ApiError::new(
            ErrorCode::GroupDevicesChanged,
            "a member's devices changed; add or remove them in the group, then retry",
        ),
        GroupOutcome::BadChange(why) => ApiError::new(ErrorCode::BadRequest, why),
        GroupOutcome::GroupFull { max, accounts } => ApiError::new(
            ErrorCode::GroupFull,
            format!(
                "a group can have at most {max} members and this would make it {accounts}; \
                 remove someone first"
            ),
        ),
    }
}

fn wake(state: &AppState, recipients: &[u64]) {
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
/// stored before the ack (the single tick).
pub async fn send(state: &AppState, from: &Device, req: v1::SendMessage) -> ApiResult<v1::SendAck> {
    let info = inspect(&req.body, MlsKind::Application)?;
    let env = envelope(
        state,
        from,
        req.message_id.clone(),
        req.body,
        req.expires_in_secs,
    );
    let now = env.server_time_ms;
    match state
        .store
        .send_group(&info.group_id, info.epoch, env)
        .await?
    {
        GroupOutcome::Accepted { recipients } => {
            wake(state, &recipients.iter().map(|d| d.id).collect::<Vec<_>>());
            Metrics::inc(&state.metrics.messages_accepted);
            Ok(ack(req.message_id, now, from, &recipients))
        }
        other => Err(refusal(other)),
    }
}

/// A commit (and its Welcome): accepted only for the group's current epoch.
pub async fn commit(
    state: &AppState,
    from: &Device,
    req: v1::SendCommit,
) -> ApiResult<v1::SendAck> {
    let info = inspect(&req.commit, MlsKind::Commit)?;
    if req.welcome.is_empty() != req.added_devices.is_empty() {
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
        group_id: info.group_id,
        epoch: info.epoch,
        added: req.added_devices.clone(),
        removed: req.removed_devices,
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

pub async fn epoch(state: &AppState, req: v1::GetGroupEpoch) -> ApiResult<v1::GroupEpoch> {
    let epoch = state.store.group_epoch(&req.group_id).await?;
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
    let check = |kp: &[u8], want_last_resort: bool| -> ApiResult<()> {
        let last_resort = mls::check_key_package(kp, &me.phone, me.id, &me.identity_key)
            .map_err(|e| ApiError::new(ErrorCode::KeyPackageInvalid, e.to_string()))?;
        if last_resort != want_last_resort {
            return Err(ApiError::new(
                ErrorCode::KeyPackageInvalid,
                "one-time KeyPackages must not be marked last-resort, and the last-resort one must be",
            ));
        }
        Ok(())
    };
    for kp in &req.key_packages {
        check(kp, false)?;
    }
    let last_resort = if req.last_resort.is_empty() {
        None
    } else {
        check(&req.last_resort, true)?;
        Some(req.last_resort)
    };
    let stock = if req.key_packages.is_empty() && last_resort.is_none() {
        state.store.key_stock(me.id).await?
    } else {
        state
            .store
            .put_key_packages(me.id, req.key_packages, last_resort)
            .await?
    };
    Ok(v1::KeyPackageCount {
        one_time: stock.one_time,
        has_last_resort: stock.has_last_resort,
    })
}

/// One KeyPackage per device of the number that the caller does not know yet.
pub async fn fetch_key_packages(
    state: &AppState,
    req: v1::FetchKeyPackages,
) -> ApiResult<v1::KeyPackages> {
    let phone = parse_phone(&req.phone)?;
    let Some(account) = state.store.account_by_phone(&phone).await? else {
        return Err(ApiError::new(
            ErrorCode::UnknownAccount,
            format!("{phone} is not on Dak; check the number or invite them"),
        ));
    };
    let claimed = state
        .store
        .claim_key_packages(account.id, &req.known_devices)
        .await?;
    Ok(v1::KeyPackages {
        phone,
        devices: claimed
            .into_iter()
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
