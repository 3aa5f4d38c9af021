//! `dak audit keys`: the outside auditor of a server's key directory
//! (PROTOCOL.md §18.4). The protocol and the auditor's memory are
//! `dak_core::kt::audit`; this gives it akd's check that each epoch only
//! added to the one before (`verify_consecutive_append_only`).

use dak_core::kt::{AppendOnlyCheck, KeyAudit};
use dak_core::{ClientError, Profile};

/// Checks one step: the proof decodes (size limit first) and akd's
/// auditor rebuilds both roots from it.
fn check() -> Box<AppendOnlyCheck> {
    Box::new(|proof, from_root, to_root, to_epoch| {
        Box::pin(async move {
            let proof = dak_proto::kt::decode_audit_proof(&proof).map_err(|e| e.to_string())?;
            akd::auditor::verify_consecutive_append_only::<akd::WhatsAppV1Configuration>(
                &proof, from_root, to_root, to_epoch,
            )
            .await
            .map_err(|e| e.to_string())
        })
    })
}

/// Audits the key directory of `servers` with `profile` as the auditor's
/// memory (`dak_core::kt::audit`).
pub async fn audit(
    profile: &Profile,
    servers: &str,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<KeyAudit, ClientError> {
    dak_core::kt::audit(profile, servers, check().as_ref(), progress).await
}
