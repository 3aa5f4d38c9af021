//! SQL both backends share word for word: the device columns their
//! `row_device` reads, in its order. Kept here so that the two can never
//! read different columns.

macro_rules! device_fields {
    () => {
        "d.id, d.account_id, a.phone, d.identity_key, d.name, d.is_primary, d.created_ms, d.last_seen_ms, d.revoked"
    };
}

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
