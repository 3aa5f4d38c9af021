//! Phone verification (SIM binding), registration-lock PINs and device
//! authentication. Every refusal leaves the store as it was, except for
//! the attempt counters that make guessing expensive.

use std::net::IpAddr;

use dak_proto::v1::{self, ErrorCode};
use dak_proto::{AuthPurpose, auth_payload, normalize_phone};
use dak_store::{CodeAttempt, Device, PinAttempt, Registration, RevokeReason, Verification};
use ed25519_dalek::{Signature, VerifyingKey};
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::sms::mask;
use crate::sms_budget;
use crate::state::{AppState, now_ms};

pub fn parse_phone(raw: &str) -> ApiResult<String> {
    normalize_phone(raw).map_err(|e| ApiError::new(ErrorCode::InvalidPhone, e.to_string()))
}

/// Sends a code to `raw_phone`, bound to a new registration session whose
/// token only the requester learns (`CodeSent.session`): wrong guesses made
/// on any other session cannot use up this code's attempts, so an attacker
/// cannot lock the owner out by guessing, and each code can be guessed only
/// by the one who asked for it (see docs/SECURITY.md for the odds).
pub async fn request_code(
    state: &AppState,
    ip: IpAddr,
    raw_phone: &str,
) -> ApiResult<v1::CodeSent> {
    let phone = parse_phone(raw_phone)?;
    sms_budget::spend(state, ip, &phone).await?;
    let now = now_ms();
    let code = format!("{:06}", rand::rngs::OsRng.gen_range(0..1_000_000u32));
    let mut session = [0u8; dak_proto::SESSION_BYTES];
    rand::rngs::OsRng.fill(&mut session[..]);
    let ttl_ms = state.config.code_ttl.as_millis() as i64;
    state
        .store
        .put_verification(Verification {
            phone: phone.clone(),
            session: session_hash(&session),
            code_hash: hash_code(&phone, &code),
            expires_ms: now + ttl_ms,
            attempts: 0,
        })
        .await?;
    let sent = state.sms.send_code(&phone, &code).await;
    let at = if sent.is_ok() {
        &state.metrics.sms_last_ok_ms
    } else {
        &state.metrics.sms_last_failure_ms
    };
    at.store(crate::state::now_ms(), std::sync::atomic::Ordering::Relaxed);
    sent.map_err(|e| {
        tracing::warn!(error = %e, to = %mask(&phone), "SMS sending failed");
        ApiError::new(
            ErrorCode::Unavailable,
            format!("{e}; ask for a new code in a moment"),
        )
    })?;
    // Counted once the code is out, like codes_sent: a failed send is no code.
    Metrics::inc(&state.metrics.codes_sent);
    state
        .metrics
        .codes_by_country
        .inc(sms_budget::country_code(&phone));
    Ok(v1::CodeSent {
        expires_in_secs: state.config.code_ttl.as_secs() as u32,
        session: session.to_vec(),
    })
}

/// What the store keeps of a session token: its hash, so a read of the
/// store gives no one a session to guess on.
fn session_hash(session: &[u8]) -> Vec<u8> {
    Sha256::digest([b"dak-session\0".as_slice(), session].concat()).to_vec()
}

fn hash_code(phone: &str, code: &str) -> String {
    hex::encode(Sha256::digest(format!("dak-code\0{phone}\0{code}")))
}

/// Compares without an early exit, so timing does not reveal a prefix.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

pub fn verify_signature(key: &[u8], payload: &[u8], signature: &[u8]) -> ApiResult<()> {
    let bad = || {
        ApiError::new(
            ErrorCode::AuthFailed,
            "the signature does not match the identity key",
        )
    };
    let key: [u8; 32] = key.try_into().map_err(|_| bad())?;
    let key = VerifyingKey::from_bytes(&key).map_err(|_| bad())?;
    let sig = Signature::from_slice(signature).map_err(|_| bad())?;
    key.verify_strict(payload, &sig).map_err(|_| bad())
}

pub async fn verify(
    state: &AppState,
    ip: IpAddr,
    nonce: &[u8],
    req: v1::VerifyCode,
) -> ApiResult<Registration> {
    let phone = parse_phone(&req.phone)?;
    let network = state.prefix(ip);
    const TOO_MANY: &str = "too many verification attempts from your network; try again later";
    // This node's copy first, then the cluster's, in the store.
    state
        .verify_requests
        .check(network)
        .map_err(|secs| state.limited("verify_network", TOO_MANY, secs))?;
    let per_hour = state.config.verifies_per_ip_per_hour;
    state
        .take_cluster_token(
            &format!("verify:net:{network}"),
            std::time::Duration::from_secs(3600),
            per_hour,
            per_hour,
            "verify_network",
            TOO_MANY,
        )
        .await?;
    // The signature first: it is cheap, and proves the request is a device's.
    verify_signature(
        &req.identity_key,
        &auth_payload(AuthPurpose::Register, nonce, phone.as_bytes()),
        &req.signature,
    )?;
    let now = now_ms();
    // The attempt is counted before the code is compared, in one atomic
    // step: however many requests race, at most `code_attempts` are compared.
    let attempt = state
        .store
        .take_code_attempt(
            &phone,
            &session_hash(&req.session),
            now,
            state.config.code_attempts,
        )
        .await?;
    let (code_hash, attempts) = match attempt {
        CodeAttempt::Counted {
            code_hash,
            attempts,
        } => (code_hash, attempts),
        CodeAttempt::Missing => {
            return Err(ApiError::new(
                ErrorCode::CodeWrong,
                format!(
                    "no code is pending for {} on this registration; ask for one with `dak register`",
                    mask(&phone)
                ),
            ));
        }
        CodeAttempt::Expired => {
            return Err(ApiError::new(
                ErrorCode::CodeExpired,
                "the code has expired; ask for a new one with `dak register`",
            ));
        }
        CodeAttempt::Exhausted => {
            return Err(ApiError::new(
                ErrorCode::TooManyAttempts,
                "too many wrong codes; ask for a new one with `dak register`",
            ));
        }
    };
    if !same(&hash_code(&phone, req.code.trim()), &code_hash) {
        let left = state.config.code_attempts.saturating_sub(attempts);
        return Err(if left == 0 {
            ApiError::new(
                ErrorCode::TooManyAttempts,
                "wrong code, and no attempts left; ask for a new one with `dak register`",
            )
        } else {
            ApiError::new(
                ErrorCode::CodeWrong,
                format!("wrong code; {left} attempts left"),
            )
        });
    }
    // A wrong PIN has used up this attempt at the code as well.
    check_registration_lock(state, &phone, &req.pin, now).await?;
    let name = if req.device_name.is_empty() {
        "primary".to_string()
    } else {
        req.device_name.clone()
    };
    let reg = state
        .store
        .register_primary(&phone, &req.identity_key, &name, now)
        .await?;
    state.store.delete_verifications(&phone).await?;
    state.kt.device_changed(&phone).await;
    for old in &reg.revoked {
        state.bus.publish(&dak_bus::revoke_topic(*old));
    }
    Metrics::inc(&state.metrics.registrations);
    tracing::info!(phone = %mask(&phone), device = reg.device.id, replaced = reg.revoked.len(), "registered primary device");
    Ok(reg)
}

/// The registration lock: a number with a PIN takes it as well as the code.
/// Each attempt is counted before Argon2 runs, in one atomic step that also
/// sets the lock at the last allowed one, so at most `pin_attempts` PINs are
/// ever compared per lock period and nothing but a registration or a new
/// PIN clears the count.
async fn check_registration_lock(
    state: &AppState,
    phone: &str,
    pin: &str,
    now: i64,
) -> ApiResult<()> {
    let Some(account) = state.store.account_by_phone(phone).await? else {
        return Ok(());
    };
    let Some(hash) = account.pin_hash.clone() else {
        return Ok(());
    };
    let locked = |until_ms: i64| {
        let secs = ((until_ms - now) / 1000).max(1) as u64;
        ApiError::new(
            ErrorCode::TooManyAttempts,
            format!(
                "too many wrong PINs; this number is locked for {} more minutes",
                secs.div_ceil(60)
            ),
        )
        .retry_after(secs)
    };
    if account.pin_locked_until_ms > now {
        return Err(locked(account.pin_locked_until_ms));
    }
    if pin.is_empty() {
        return Err(ApiError::new(
            ErrorCode::PinRequired,
            "this number has two-step verification: give its 6-digit PIN with --pin",
        ));
    }
    let max = state.config.pin_attempts;
    let lockout_ms = state.config.pin_lockout.as_millis() as i64;
    // A place to hash first: a busy server refuses before counting, so it
    // never costs the owner an attempt.
    let slot = state.pin_hasher.slot().await?;
    let attempt = match state
        .store
        .take_pin_attempt(account.id, now, max, lockout_ms)
        .await?
    {
        PinAttempt::Counted { attempt } => attempt,
        PinAttempt::Locked { until_ms } => return Err(locked(until_ms)),
    };
    if crate::pin_hasher::PinHasher::matches_in(slot, hash, pin.to_owned()).await? {
        return Ok(());
    }
    Err(if attempt >= max {
        ApiError::new(
            ErrorCode::TooManyAttempts,
            "wrong PIN, and no attempts left; the number is locked for a while",
        )
        .retry_after(state.config.pin_lockout.as_secs())
    } else {
        ApiError::new(
            ErrorCode::PinWrong,
            format!("wrong PIN; {} attempts left", max - attempt),
        )
    })
}

pub async fn set_pin(state: &AppState, device: &Device, pin: &str) -> ApiResult<()> {
    if !device.primary {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "only the primary device can set the registration-lock PIN",
        ));
    }
    state.pin_changes.check(device.id).map_err(|secs| {
        state.limited(
            "pin_changes",
            "the PIN was changed too often; try again later",
            secs,
        )
    })?;
    let hash = if pin.is_empty() {
        None
    } else {
        if pin.len() != 6 || !pin.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "the PIN must be exactly 6 digits",
            ));
        }
        Some(state.pin_hasher.hash(pin.to_owned()).await?)
    };
    state.store.set_pin(device.account_id, hash).await?;
    Ok(())
}

/// Checks a device's challenge signature and that it may still connect.
///
/// A device id the server does not know and a signature that does not
/// match get the same answer, so the answer is no oracle for which device
/// ids exist; only a device that proves its key learns it was revoked.
pub async fn authenticate(
    state: &AppState,
    nonce: &[u8],
    req: &v1::Authenticate,
) -> ApiResult<Device> {
    let failed = || {
        ApiError::new(
            ErrorCode::AuthFailed,
            "authentication failed: this server has no device with that id and key \
             (a wrong server, or a device never registered here); register or link it again",
        )
    };
    let device = state.store.device(req.device_id).await?;
    let payload = auth_payload(
        AuthPurpose::Authenticate,
        nonce,
        &req.device_id.to_be_bytes(),
    );
    let Some(device) = device else {
        // The same work as for a known device, against a key nobody holds.
        let _ = verify_signature(&state.decoy_key, &payload, &req.signature);
        return Err(failed());
    };
    verify_signature(&device.identity_key, &payload, &req.signature).map_err(|_| failed())?;
    if let Some(reason) = device.revoked {
        return Err(revoked_error(reason));
    }
    if link_expired(state, &device, now_ms()) {
        state
            .store
            .revoke_device(device.id, RevokeReason::LinkExpired)
            .await?;
        state.kt.device_changed(&device.phone).await;
        return Err(revoked_error(RevokeReason::LinkExpired));
    }
    state.store.touch_device(device.id, now_ms()).await?;
    Ok(device)
}

pub fn revoked_error(reason: RevokeReason) -> ApiError {
    let (code, msg) = revoked_message(reason);
    ApiError::new(code, msg)
}

pub fn revoked_message(reason: RevokeReason) -> (ErrorCode, &'static str) {
    match reason {
        RevokeReason::Removed => (
            ErrorCode::DeviceRevoked,
            "this device was removed from the account; link it again to use it",
        ),
        RevokeReason::NumberMoved => (
            ErrorCode::DeviceRevoked,
            "your number was registered on another phone; this device is signed out. Register again to take it back",
        ),
        RevokeReason::LinkExpired => (
            ErrorCode::LinkExpired,
            "this linked device's session reached the server's maximum age; link it again from your phone",
        ),
    }
}

/// When a linked device must re-link, if the operator set a maximum age.
pub fn link_deadline_ms(state: &AppState, device: &Device) -> Option<i64> {
    let max = state.config.linked_device_max_age?;
    (!device.primary).then(|| device.created_ms + max.as_millis() as i64)
}

pub fn link_expired(state: &AppState, device: &Device, now: i64) -> bool {
    link_deadline_ms(state, device).is_some_and(|deadline| deadline <= now)
}
