//! Key transparency (PROTOCOL.md §18), the parts both ends share: what the
//! key directory maps a number to, and the checks a device makes of the
//! server's proofs. The directory is akd's (SEEMless/Parakeet, the design
//! behind WhatsApp's key transparency) in its WhatsApp v1 configuration;
//! the server keeps it (dak-server's `kt`), devices verify with akd_core.
//!
//! Invariants:
//! - A number's label is its E.164 string; its value is the set of its
//!   account's active devices, each (device id, Ed25519 identity key),
//!   sorted by id and encoded by `encode_devices` alone, so the server and
//!   every device compute the same bytes.
//! - Every decoder here has a size limit and a typed error (`KtError`), and
//!   is fuzzed (`fuzz/fuzz_targets/kt_proofs.rs`): a proof comes from a
//!   server the device does not trust.
//! - A proof verifies only against the root it names and the VRF key the
//!   device pinned; whether that root is the one everyone else sees is the
//!   auditors' and the device's own monitoring's question (§18.3–18.4).

use akd_core::WhatsAppV1Configuration as Config;
use akd_core::proto::specs::types as pb;
use protobuf::Message;

use crate::IDENTITY_KEY_BYTES;

/// Most devices in one number's value: a primary and its linked devices,
/// with room (the server's own limit is lower).
pub const MAX_DEVICES: usize = 64;
/// Largest lookup or history proof a device decodes, within a frame. A
/// lookup proof is about 1 KB and grows with the tree's depth (log of the
/// entries); a history proof is an update proof (two membership proofs)
/// per value it holds, and a non-membership proof per power of two up to
/// the epoch (docs/BENCHMARKS.md, "Key transparency").
pub const MAX_PROOF_BYTES: usize = 192 * 1024;
/// Most updates a history proof may hold: the server sends the most
/// recent ones only (`HISTORY_UPDATES`).
pub const HISTORY_UPDATES: usize = 16;
/// Largest append-only proof step an auditor decodes (one epoch's
/// insertions; the server caps an epoch's batch so it fits a frame).
pub const MAX_AUDIT_PROOF_BYTES: usize = crate::MAX_FRAME_BYTES;
/// The VRF public key and every root hash are 32 bytes.
pub const KEY_BYTES: usize = 32;

const VALUE_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KtError {
    #[error("the key directory's {what} is {len} bytes, more than the limit of {max}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("the key directory's {0} cannot be read: {1}")]
    Malformed(&'static str, String),
    #[error("the key directory's proof does not check: {0}")]
    Invalid(String),
}

/// One device in a number's value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceKey {
    pub device_id: u64,
    pub identity_key: Vec<u8>,
}

/// A number's label in the directory.
pub fn label(phone: &str) -> Vec<u8> {
    phone.as_bytes().to_vec()
}

/// A number's value: its devices sorted by id (a version byte, then for
/// each 8 bytes of id, big-endian, and the 32-byte key).
pub fn encode_devices(devices: &[DeviceKey]) -> Vec<u8> {
    let mut sorted: Vec<&DeviceKey> = devices.iter().collect();
    sorted.sort();
    let mut out = Vec::with_capacity(1 + sorted.len() * (8 + IDENTITY_KEY_BYTES));
    out.push(VALUE_VERSION);
    for d in sorted {
        out.extend_from_slice(&d.device_id.to_be_bytes());
        out.extend_from_slice(&d.identity_key);
    }
    out
}

/// Reads a value `encode_devices` made; refuses anything else (another
/// version, a torn entry, unsorted or repeated ids, too many devices).
pub fn decode_devices(bytes: &[u8]) -> Result<Vec<DeviceKey>, KtError> {
    const ENTRY: usize = 8 + IDENTITY_KEY_BYTES;
    let max = 1 + MAX_DEVICES * ENTRY;
    if bytes.len() > max {
        return Err(KtError::TooLarge {
            what: "device set",
            len: bytes.len(),
            max,
        });
    }
    let malformed = |why: &str| KtError::Malformed("device set", why.to_string());
    let (&version, rest) = bytes.split_first().ok_or_else(|| malformed("empty"))?;
    if version != VALUE_VERSION {
        return Err(malformed("unknown version"));
    }
    if rest.len() % ENTRY != 0 {
        return Err(malformed("torn entry"));
    }
    let mut devices: Vec<DeviceKey> = Vec::with_capacity(rest.len() / ENTRY);
    for entry in rest.chunks_exact(ENTRY) {
        let (id, key) = entry.split_at(8);
        let device_id = u64::from_be_bytes(id.try_into().expect("8 bytes"));
        if devices.last().is_some_and(|d| d.device_id >= device_id) {
            return Err(malformed("ids out of order"));
        }
        devices.push(DeviceKey {
            device_id,
            identity_key: key.to_vec(),
        });
    }
    Ok(devices)
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), KtError> {
    if len > max {
        return Err(KtError::TooLarge { what, len, max });
    }
    Ok(())
}

fn root(root_hash: &[u8]) -> Result<[u8; 32], KtError> {
    root_hash
        .try_into()
        .map_err(|_| KtError::Malformed("root hash", format!("{} bytes", root_hash.len())))
}

fn parse<M: Message>(what: &'static str, bytes: &[u8], max: usize) -> Result<M, KtError> {
    check_len(what, bytes.len(), max)?;
    M::parse_from_bytes(bytes).map_err(|e| KtError::Malformed(what, e.to_string()))
}

/// Encodes a lookup proof for the wire (akd's protobuf encoding).
pub fn encode_lookup_proof(proof: &akd_core::LookupProof) -> Vec<u8> {
    pb::LookupProof::from(proof)
        .write_to_bytes()
        .unwrap_or_default()
}

/// Decodes a lookup proof: the size limit first, then akd's protobuf.
pub fn decode_lookup_proof(bytes: &[u8]) -> Result<akd_core::LookupProof, KtError> {
    let p: pb::LookupProof = parse("lookup proof", bytes, MAX_PROOF_BYTES)?;
    akd_core::LookupProof::try_from(&p)
        .map_err(|e| KtError::Malformed("lookup proof", e.to_string()))
}

/// Encodes a history proof for the wire.
pub fn encode_history_proof(proof: &akd_core::HistoryProof) -> Vec<u8> {
    pb::HistoryProof::from(proof)
        .write_to_bytes()
        .unwrap_or_default()
}

/// Decodes a history proof, refusing more than `HISTORY_UPDATES` updates.
pub fn decode_history_proof(bytes: &[u8]) -> Result<akd_core::HistoryProof, KtError> {
    let p: pb::HistoryProof = parse("history proof", bytes, MAX_PROOF_BYTES)?;
    check_len(
        "history proof's updates",
        p.update_proofs.len(),
        HISTORY_UPDATES,
    )?;
    akd_core::HistoryProof::try_from(&p)
        .map_err(|e| KtError::Malformed("history proof", e.to_string()))
}

/// Encodes one append-only step for the wire.
pub fn encode_audit_proof(proof: &akd_core::SingleAppendOnlyProof) -> Vec<u8> {
    pb::SingleAppendOnlyProof::from(proof)
        .write_to_bytes()
        .unwrap_or_default()
}

/// Decodes one append-only step.
pub fn decode_audit_proof(bytes: &[u8]) -> Result<akd_core::SingleAppendOnlyProof, KtError> {
    let p: pb::SingleAppendOnlyProof = parse("append-only proof", bytes, MAX_AUDIT_PROOF_BYTES)?;
    akd_core::SingleAppendOnlyProof::try_from(&p)
        .map_err(|e| KtError::Malformed("append-only proof", e.to_string()))
}

/// What a verified lookup says: `phone` had `devices` at `epoch` (the
/// value's `version`, counting from 1, was published at `published`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub epoch: u64,
    pub version: u64,
    pub published: u64,
    pub devices: Vec<DeviceKey>,
}

/// Checks the server's lookup proof for `phone` against the root it names
/// at `epoch` and the pinned VRF key, and reads the proven device set.
pub fn verify_lookup(
    vrf_key: &[u8],
    epoch: u64,
    root_hash: &[u8],
    phone: &str,
    proof: &[u8],
) -> Result<Lookup, KtError> {
    check_len("VRF key", vrf_key.len(), KEY_BYTES)?;
    let root = root(root_hash)?;
    let proof = decode_lookup_proof(proof)?;
    let r = akd_core::verify::lookup_verify::<Config>(
        vrf_key,
        root,
        epoch,
        akd_core::AkdLabel(label(phone)),
        proof,
    )
    .map_err(|e| KtError::Invalid(e.to_string()))?;
    // akd does not check this itself: a value cannot have been published
    // after the epoch it is proven at.
    if r.epoch > epoch {
        return Err(KtError::Invalid(format!(
            "a value published at epoch {} proven at epoch {epoch}",
            r.epoch
        )));
    }
    Ok(Lookup {
        epoch,
        version: r.version,
        published: r.epoch,
        devices: decode_devices(&r.value.0)?,
    })
}

/// Checks the server's history proof for `phone` (its most recent
/// `HISTORY_UPDATES` values) and reads every value it proves, newest first.
pub fn verify_history(
    vrf_key: &[u8],
    epoch: u64,
    root_hash: &[u8],
    phone: &str,
    proof: &[u8],
) -> Result<Vec<Lookup>, KtError> {
    check_len("VRF key", vrf_key.len(), KEY_BYTES)?;
    let root = root(root_hash)?;
    let proof = decode_history_proof(proof)?;
    let results = akd_core::verify::key_history_verify::<Config>(
        vrf_key,
        root,
        epoch,
        akd_core::AkdLabel(label(phone)),
        proof,
        akd_core::verify::history::HistoryVerificationParams::Default {
            history_params: akd_core::verify::history::HistoryParams::MostRecent(HISTORY_UPDATES),
        },
    )
    .map_err(|e| KtError::Invalid(e.to_string()))?;
    if let Some(r) = results.iter().find(|r| r.epoch > epoch) {
        return Err(KtError::Invalid(format!(
            "a value published at epoch {} proven at epoch {epoch}",
            r.epoch
        )));
    }
    results
        .into_iter()
        .map(|r| {
            Ok(Lookup {
                epoch,
                version: r.version,
                published: r.epoch,
                devices: decode_devices(&r.value.0)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: u64, k: u8) -> DeviceKey {
        DeviceKey {
            device_id: id,
            identity_key: vec![k; 32],
        }
    }

    #[test]
    fn a_device_set_reads_back_sorted_and_nothing_else_reads() {
        let set = vec![device(9, 1), device(2, 2)];
        let bytes = encode_devices(&set);
        assert_eq!(
            decode_devices(&bytes).unwrap(),
            vec![device(2, 2), device(9, 1)]
        );
        assert_eq!(decode_devices(&encode_devices(&[])).unwrap(), vec![]);
        assert!(matches!(decode_devices(&[]), Err(KtError::Malformed(..))));
        assert!(matches!(decode_devices(&[2]), Err(KtError::Malformed(..))));
        assert!(matches!(
            decode_devices(&bytes[..bytes.len() - 1]),
            Err(KtError::Malformed(..))
        ));
        // Repeated or unsorted ids are not a value the server makes.
        let mut twice = vec![VALUE_VERSION];
        for _ in 0..2 {
            twice.extend_from_slice(&5u64.to_be_bytes());
            twice.extend_from_slice(&[7; 32]);
        }
        assert!(matches!(
            decode_devices(&twice),
            Err(KtError::Malformed(..))
        ));
        let many: Vec<DeviceKey> = (0..=MAX_DEVICES as u64).map(|i| device(i, 1)).collect();
        assert!(matches!(
            decode_devices(&encode_devices(&many)),
            Err(KtError::TooLarge { .. })
        ));
    }

    #[test]
    fn proofs_that_are_not_proofs_are_refused_with_their_reason() {
        assert!(matches!(
            decode_lookup_proof(&[0xff; 10]),
            Err(KtError::Malformed(..))
        ));
        assert!(matches!(
            decode_lookup_proof(&vec![0; MAX_PROOF_BYTES + 1]),
            Err(KtError::TooLarge { .. })
        ));
        // An empty message decodes as protobuf but is no lookup proof.
        assert!(verify_lookup(&[1; 32], 1, &[0; 32], "+919800000001", &[]).is_err());
        assert!(matches!(
            verify_lookup(&[1; 32], 1, &[0; 31], "+919800000001", &[]),
            Err(KtError::Malformed("root hash", _))
        ));
        assert!(matches!(
            verify_history(&[1; 33], 1, &[0; 32], "+919800000001", &[]),
            Err(KtError::TooLarge { .. })
        ));
    }
}
