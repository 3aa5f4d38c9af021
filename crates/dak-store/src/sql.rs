//! SQL both backends share word for word: the device columns their
//! `row_device` reads, in its order, and the shared bodies' sweep. Kept
//! here so that the two can never read different columns.

macro_rules! device_fields {
    () => {
        "d.id, d.account_id, a.phone, d.identity_key, d.name, d.is_primary, d.created_ms, d.last_seen_ms, d.revoked"
    };
}

/// `DEVICE_COLS`' columns alone, for a query that joins `devices d` and
/// `accounts a` its own way.
pub(crate) const DEVICE_FIELDS: &str = device_fields!();

/// A device with its account's number.
pub(crate) const DEVICE_COLS: &str = concat!(
    device_fields!(),
    " FROM devices d JOIN accounts a ON a.id = d.account_id"
);

/// A group's member devices with their leaf index (column 9).
pub(crate) const MEMBER_COLS: &str = concat!(
    device_fields!(),
    ", m.leaf_index FROM group_members m JOIN devices d ON d.id = m.device_id JOIN accounts a ON a.id = d.account_id"
);

/// Deletes the shared bodies (`shares_body`) that no mailbox row refers to
/// any more, on the `mailbox_by_shared_body` index; run by `expire`. Safe
/// beside writers: a body is referred to only by rows inserted in the
/// transaction that inserted it, so a body this statement can see has
/// all its rows visible too, and no row ever comes to refer to it later.
pub(crate) const SWEEP_SHARED_BODIES: &str = "DELETE FROM shared_bodies WHERE NOT EXISTS \
     (SELECT 1 FROM mailbox WHERE mailbox.shared_body = shared_bodies.id)";

/// `Store::stored_body_bytes`: inline bodies plus each shared body once.
pub(crate) const STORED_BODY_BYTES: &str = "SELECT \
     (SELECT COALESCE(SUM(length(body)), 0) FROM mailbox) \
     + (SELECT COALESCE(SUM(length(body)), 0) FROM shared_bodies)";

/// A mailbox row's body: inline, or its shared body, looked up only for
/// the rows that have one (no join for the common inline row).
pub(crate) const MAILBOX_BODY: &str = "CASE WHEN shared_body IS NULL THEN body \
     ELSE (SELECT s.body FROM shared_bodies s WHERE s.id = mailbox.shared_body) END";

/// A blob's columns, in the order both backends' `row_blob` read them.
pub(crate) const BLOB_COLS: &str = "id, owner_device, owner_account, length, received, complete, \
     sha256, upload_token_sha256, capability_sha256, created_ms, expires_ms FROM blobs";
