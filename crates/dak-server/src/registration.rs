//! Phone verification (SIM binding), registration-lock PINs and device
//! authentication. Every refusal leaves the store as it was, except for
//! the attempt counters that make guessing expensive.

use std::net::IpAddr;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use dak_proto::v1::{self, ErrorCode};
use dak_proto::{AuthPurpose, auth_payload, normalize_phone};
use dak_store::{Device, Registration, RevokeReason, Verification};
use ed25519_dalek::{Signature, VerifyingKey};
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::sms::mask;
use crate::state::{AppState, now_ms};

const HOUR_MS: i64 = 3_600_000;

pub fn parse_phone(raw: &str) -> ApiResult<String> {
    normalize_phone(raw).map_err(|e| ApiError::new(ErrorCode::InvalidPhone, e.to_string()))
}

pub async fn request_code(
    state: &AppState,
    ip: IpAddr,
    raw_phone: &str,
) -> ApiResult<v1::CodeSent> {
    let phone = parse_phone(raw_phone)?;
    state.code_limiter.check(ip).map_err(|secs| {
        ApiError::new(
            ErrorCode::RateLimited,
            "too many code requests from your network; try again later",
        )
        .retry_after(secs)
    })?;
    let now = now_ms();
    let (sent, window_start) = match state.store.verification(&phone).await? {
        Some(v) if now - v.window_start_ms < HOUR_MS => (v.sent_in_window, v.window_start_ms),
        _ => (0, now),
    };
    if sent >= state.config.codes_per_phone_per_hour {
        let wait = (window_start + HOUR_MS - now) / 1000;
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "{sent} codes were already sent to {} in the last hour; try again later",
                mask(&phone)
            ),
        )
        .retry_after(wait.max(1) as u64));
    }
    let code = format!("{:06}", rand::rngs::OsRng.gen_range(0..1_000_000u32));
    let ttl_ms = state.config.code_ttl.as_millis() as i64;
    state
        .store
        .put_verification(Verification {
            phone: phone.clone(),
            code_hash: hash_code(&phone, &code),
            expires_ms: now + ttl_ms,
            attempts: 0,
            sent_in_window: sent + 1,
            window_start_ms: window_start,
        })
        .await?;
    state.sms.send_code(&phone, &code).await.map_err(|e| {
        tracing::warn!(error = %e, to = %mask(&phone), "SMS sending failed");
        ApiError::new(
            ErrorCode::Unavailable,
            format!("{e}; ask for a new code in a moment"),
        )
    })?;
    Metrics::inc(&state.metrics.codes_sent);
    Ok(v1::CodeSent {
        expires_in_secs: state.config.code_ttl.as_secs() as u32,
    })
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
    state.verify_limiter.check(ip).map_err(|secs| {
        ApiError::new(
            ErrorCode::RateLimited,
            "too many verification attempts from your network; try again later",
        )
        .retry_after(secs)
    })?;
    let now = now_ms();
    let Some(v) = state.store.verification(&phone).await? else {
        return Err(ApiError::new(
            ErrorCode::CodeWrong,
            format!(
                "no code is pending for {}; ask for one with `dak register`",
                mask(&phone)
            ),
        ));
    };
    if v.expires_ms <= now {
        return Err(ApiError::new(
            ErrorCode::CodeExpired,
            "the code has expired; ask for a new one with `dak register`",
        ));
    }
    if v.attempts >= state.config.code_attempts {
        return Err(ApiError::new(
            ErrorCode::TooManyAttempts,
            "too many wrong codes; ask for a new one with `dak register`",
        ));
    }
    if !same(&hash_code(&phone, req.code.trim()), &v.code_hash) {
        let n = state.store.bump_verification_attempts(&phone).await?;
        let left = state.config.code_attempts.saturating_sub(n);
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
    verify_signature(
        &req.identity_key,
        &auth_payload(AuthPurpose::Register, nonce, phone.as_bytes()),
        &req.signature,
    )?;
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
    state.store.delete_verification(&phone).await?;
    for old in &reg.revoked {
        state.bus.publish(&dak_bus::revoke_topic(*old));
    }
    Metrics::inc(&state.metrics.registrations);
    tracing::info!(phone = %mask(&phone), device = reg.device.id, replaced = reg.revoked.len(), "registered primary device");
    Ok(reg)
}

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
    if account.pin_locked_until_ms > now {
        let secs = ((account.pin_locked_until_ms - now) / 1000).max(1) as u64;
        return Err(ApiError::new(
            ErrorCode::TooManyAttempts,
            format!(
                "too many wrong PINs; this number is locked for {} more minutes",
                secs.div_ceil(60)
            ),
        )
        .retry_after(secs));
    }
    if pin.is_empty() {
        return Err(ApiError::new(
            ErrorCode::PinRequired,
            "this number has two-step verification: give its 6-digit PIN with --pin",
        ));
    }
    if pin_matches(hash, pin.to_owned()).await {
        return Ok(());
    }
    let failures = account.pin_failures + 1;
    let max = state.config.pin_attempts;
    let locked_until = if failures >= max {
        now + state.config.pin_lockout.as_millis() as i64
    } else {
        0
    };
    state
        .store
        .record_pin_failure(account.id, locked_until)
        .await?;
    Err(if failures >= max {
        ApiError::new(
            ErrorCode::TooManyAttempts,
            "wrong PIN, and no attempts left; the number is locked for a while",
        )
        .retry_after(state.config.pin_lockout.as_secs())
    } else {
        ApiError::new(
            ErrorCode::PinWrong,
            format!("wrong PIN; {} attempts left", max - failures),
        )
    })
}

/// Argon2 is deliberately slow, so it runs off the async runtime.
async fn pin_matches(hash: String, pin: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(pin.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

pub async fn set_pin(state: &AppState, device: &Device, pin: &str) -> ApiResult<()> {
    if !device.primary {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "only the primary device can set the registration-lock PIN",
        ));
    }
    let hash = if pin.is_empty() {
        None
    } else {
        if pin.len() != 6 || !pin.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "the PIN must be exactly 6 digits",
            ));
        }
        let pin = pin.to_owned();
        let hash = tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
            Argon2::default()
                .hash_password(pin.as_bytes(), &salt)
                .map(|h| h.to_string())
        })
        .await
        .map_err(|_| ApiError::new(ErrorCode::Internal, "PIN hashing failed"))?
        .map_err(|_| ApiError::new(ErrorCode::Internal, "PIN hashing failed"))?;
        Some(hash)
    };
    state.store.set_pin(device.account_id, hash).await?;
    Ok(())
}

/// Checks a device's challenge signature and that it may still connect.
pub async fn authenticate(
    state: &AppState,
    nonce: &[u8],
    req: &v1::Authenticate,
) -> ApiResult<Device> {
    let device = state.store.device(req.device_id).await?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownDevice,
            "this device is not registered on this server; register or link it again",
        )
    })?;
    if let Some(reason) = device.revoked {
        return Err(revoked_error(reason));
    }
    verify_signature(
        &device.identity_key,
        &auth_payload(
            AuthPurpose::Authenticate,
            nonce,
            &req.device_id.to_be_bytes(),
        ),
        &req.signature,
    )?;
    if link_expired(state, &device, now_ms()) {
        state
            .store
            .revoke_device(device.id, RevokeReason::LinkExpired)
            .await?;
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
