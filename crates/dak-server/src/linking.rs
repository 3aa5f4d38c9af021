//! Linking a new device to an account: the new device asks for a code and
//! waits on its connection; the primary device approves the code; the
//! server adds the device and wakes the waiting connection.

use dak_proto::v1::{self, ErrorCode};
use dak_proto::{AuthPurpose, auth_payload};
use dak_store::{Device, LinkRequest};
use rand::Rng;

use crate::error::{ApiError, ApiResult};
use crate::registration::verify_signature;
use crate::state::{AppState, now_ms};

/// Unambiguous characters: no 0/O, 1/I/L, U.
const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTVWXYZ23456789";
const CODE_LEN: usize = 8;

pub fn normalize_code(raw: &str) -> String {
    raw.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Stores a link request and returns its code. The caller subscribes to the
/// code's topic before answering; nobody can approve earlier, because
/// approval needs the code, which only that answer reveals.
pub async fn start(
    state: &AppState,
    ip: std::net::IpAddr,
    nonce: &[u8],
    req: &v1::LinkStart,
) -> ApiResult<String> {
    // Each start is a store write before anyone is authenticated.
    state.link_starts.check(state.prefix(ip)).map_err(|secs| {
        state.limited(
            "link_starts",
            "too many link requests from your network; try again later",
            secs,
        )
    })?;
    verify_signature(
        &req.identity_key,
        &auth_payload(AuthPurpose::Link, nonce, &req.identity_key),
        &req.signature,
    )?;
    if state
        .store
        .device_by_key(&req.identity_key)
        .await?
        .is_some()
    {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "this identity key already belongs to a device",
        ));
    }
    let mut rng = rand::rngs::OsRng;
    let code: String = (0..CODE_LEN)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    state
        .store
        .put_link_request(LinkRequest {
            code: code.clone(),
            identity_key: req.identity_key.clone(),
            device_name: if req.device_name.is_empty() {
                "linked device".into()
            } else {
                req.device_name.clone()
            },
            expires_ms: now_ms() + state.config.link_code_ttl.as_millis() as i64,
        })
        .await?;
    Ok(code)
}

pub async fn approve(state: &AppState, approver: &Device, raw_code: &str) -> ApiResult<Device> {
    if !approver.primary {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "only the primary device (the phone that registered the number) can link devices",
        ));
    }
    let code = normalize_code(raw_code);
    let now = now_ms();
    let req = state.store.take_link_request(&code, now).await?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::LinkCodeInvalid,
            format!("no device is waiting with code {code}; it may have expired. Run `dak link` on the new device again"),
        )
    })?;
    let device = state
        .store
        .add_linked_device(
            approver.account_id,
            &req.identity_key,
            &req.device_name,
            now,
            state.config.max_linked_devices,
        )
        .await?;
    state.kt.device_changed(&approver.phone).await;
    state.bus.publish(&dak_bus::link_topic(&code));
    tracing::info!(
        account = approver.account_id,
        device = device.id,
        "linked a device"
    );
    Ok(device)
}

pub fn device_info(d: &Device) -> v1::DeviceInfo {
    v1::DeviceInfo {
        device_id: d.id,
        name: d.name.clone(),
        primary: d.primary,
        created_ms: d.created_ms,
        last_seen_ms: d.last_seen_ms,
        identity_key: d.identity_key.clone(),
    }
}
