//! Work that something the client handled calls for, done after it and
//! never inside it (a delivery is stored and acked first; a send finishes
//! first).

/// Work a delivery calls for that needs the network; done after the batch
/// is stored and acked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FollowUp {
    /// Add someone who asked with the invite link this device made.
    AddJoiner { group: Vec<u8>, phone: String },
    /// Remove the devices of members who left.
    RemoveLeavers { group: Vec<u8> },
}
