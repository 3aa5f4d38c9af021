//! Business accounts (docs/BOTS.md): a device sets its account's public
//! profile (`SetBusinessProfile`), anyone connected looks one up by number
//! (`GetBusinessProfile`), and the operator marks one verified from the
//! command line (`dak admin verify-business`, on the store directly).
//!
//! Invariants:
//! - A lookup answers the same `business = false` for a person's number
//!   and for a number not on Dak: it tells nothing about who is on Dak.
//! - The verified name is the display name the operator checked; a device
//!   that changes its display name loses the badge in the same write
//!   (`Store::set_business`), so a verified "Dak Rail" cannot rename
//!   itself "Indian Railways" and keep the tick.
//! - Setting a profile costs a store write, so it takes a token of a
//!   per-account bucket (10 an hour); a lookup is a read, and costs a
//!   request token like any request.
//! - A verified business's device serves many people, so its request
//!   bucket is `business_requests_per_device_per_sec` (2,000) rather than
//!   a person's 50 (only once verified: anyone may call itself a business,
//!   and that must not buy a higher limit); and each chat any business
//!   sends into has a bucket of its own
//!   (`business_messages_per_chat_per_minute`, 30), so that a bot cannot
//!   flood a person. Both are counted in this node's memory: a bot's
//!   device holds at most `max_connections_per_device` connections.

use std::time::Duration;

use dak_proto::v1::{self, ErrorCode};
use dak_store::Device;
use prost::Message;

use crate::error::{ApiError, ApiResult};
use crate::registration::parse_phone;
use crate::state::{AppState, now_ms};

const PROFILE_SETS_PER_HOUR: u32 = 10;

pub async fn set(state: &AppState, me: &Device, r: v1::SetBusinessProfile) -> ApiResult<()> {
    // The codec checked it (`dak_proto::business`).
    let Some(profile) = r.profile else {
        return Err(ApiError::new(ErrorCode::BadRequest, "give the profile"));
    };
    state
        .take_cluster_token(
            &format!("business:{}", me.account_id),
            Duration::from_secs(3600),
            PROFILE_SETS_PER_HOUR,
            PROFILE_SETS_PER_HOUR,
            "business_profile",
            "the business profile was changed too often; try again later",
        )
        .await?;
    state
        .store
        .set_business(
            me.account_id,
            &profile.encode_to_vec(),
            &profile.display_name,
            now_ms(),
        )
        .await?;
    tracing::info!(account = me.account_id, "business profile set");
    Ok(())
}

pub async fn get(state: &AppState, raw_phone: &str) -> ApiResult<v1::BusinessInfo> {
    let phone = parse_phone(raw_phone)?;
    let Some(account) = state.store.account_by_phone(&phone).await? else {
        return Ok(v1::BusinessInfo::default());
    };
    let Some(b) = state.store.business(account.id).await? else {
        return Ok(v1::BusinessInfo::default());
    };
    let profile = v1::BusinessProfile::decode(&b.profile[..]).map_err(|e| {
        tracing::error!(error = %e, "a stored business profile does not decode");
        ApiError::new(
            ErrorCode::Unavailable,
            "this business's profile cannot be read",
        )
    })?;
    Ok(v1::BusinessInfo {
        business: true,
        profile: Some(profile),
        verified_name: if b.verified {
            b.display_name
        } else {
            String::new()
        },
    })
}

/// One of a business account's messages into the chat `group_id` (its
/// per-chat bucket, `business_messages_per_chat_per_minute`), or
/// RATE_LIMITED with when to try again.
pub fn take_send_token(state: &AppState, me: &Device, group_id: &[u8]) -> ApiResult<()> {
    state
        .business_sends
        .check((me.account_id, group_id.to_vec()))
        .map_err(|secs| {
            state.limited(
                "business_sends",
                "this business sends too many messages into one chat; slow down",
                secs,
            )
        })
}
