//! The block list and reports: a device's account stops a number's
//! messages and adds (`BlockAccount`), or reports it (`ReportAccount`,
//! which also blocks). The store keeps the block where it matters: group
//! sends leave the blocker's devices out, and commits that would add them
//! are refused (see `dak_store::Store::send_group` and `commit_group`).
//!
//! Invariant: the answer never tells whether a number is on Dak. A number
//! that is not gets the same Ok as one that is, and nothing is written for
//! it. Only blocking or reporting one's own number is refused, which
//! reveals nothing.
//!
//! Invariant: the server never sees what was reported, only who reported
//! whom; the log names both by masked number, and `dak_reports_total`
//! counts the reports recorded.

use dak_proto::v1::ErrorCode;
use dak_store::{Account, Device};

use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::registration::parse_phone;
use crate::sms::mask;
use crate::state::{AppState, now_ms};

/// The account behind `raw_phone`, or None when the number is not on Dak;
/// refuses the caller's own number.
async fn target(state: &AppState, me: &Device, raw_phone: &str) -> ApiResult<Option<Account>> {
    let phone = parse_phone(raw_phone)?;
    if phone == me.phone {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "you cannot block or report your own number",
        ));
    }
    Ok(state.store.account_by_phone(&phone).await?)
}

/// Blocks (`on`) or unblocks `phone` for `me`'s account. Ok, writing
/// nothing, when the number is not on Dak.
pub async fn block(state: &AppState, me: &Device, phone: &str, on: bool) -> ApiResult<()> {
    let Some(account) = target(state, me, phone).await? else {
        return Ok(());
    };
    state.store.set_block(me.account_id, account.id, on).await?;
    tracing::debug!(blocked = on, "block list changed");
    Ok(())
}

/// Reports `phone` (and blocks it) for `me`'s account. Ok, writing
/// nothing, when the number is not on Dak.
pub async fn report(state: &AppState, me: &Device, phone: &str) -> ApiResult<()> {
    let Some(account) = target(state, me, phone).await? else {
        return Ok(());
    };
    state
        .store
        .report(me.account_id, account.id, now_ms())
        .await?;
    Metrics::inc(&state.metrics.reports);
    // For the operator: how many accounts report this one. A failure to
    // count does not undo the report.
    let reports = state.store.reports_against(account.id).await.ok();
    tracing::info!(
        reporter = %mask(&me.phone),
        reported = %mask(&account.phone),
        reports_against = ?reports,
        "account reported"
    );
    Ok(())
}
