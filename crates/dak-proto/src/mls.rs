//! The MLS rules both ends share: the ciphersuite, what a device's
//! credential says, and what the server (the MLS Delivery Service) may learn
//! from a message: its kind, group and epoch, which RFC 9420 leaves in the
//! clear. Decoding is openmls's; this module only decides what to accept.
//! Pure, like the rest of the crate, so the fuzz targets can reach it.

use openmls::prelude::tls_codec::{Deserialize, Serialize, VLBytes};
use openmls::prelude::{
    BasicCredential, ContentType, GroupEpoch, GroupId, KeyPackage, KeyPackageIn, MlsMessageBodyIn,
    MlsMessageIn, ProposalIn, ProposalOrRefIn, ProtocolMessage, ProtocolVersion, Sender,
};
use openmls_rust_crypto::RustCrypto;

pub use openmls::prelude::Ciphersuite;

/// The classic suite, 0x0001: X25519, AES-128-GCM, SHA-256 and Ed25519.
/// Ed25519 is already each device's identity key, so the device signs MLS
/// with the key the server bound to its account at registration or linking.
/// Every device offers it; groups of more than two accounts use it.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// The post-quantum hybrid suite, 0x004F (draft-ietf-mls-pq-ciphersuites,
/// a provisional code point): ML-KEM-768 combined with X25519 ("X-Wing"),
/// so the group's secrets stay safe unless both break, with AES-128-GCM,
/// SHA-256 and the same Ed25519 signatures (an attacker must forge them
/// now, not record and break them later). New 1:1 conversations use it
/// when every device offers it. Its packages are ~9× larger, which is why
/// groups stay classic (docs/BENCHMARKS.md, "Post-quantum groups").
pub const PQ_CIPHERSUITE: Ciphersuite =
    Ciphersuite::MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519;

/// The suites the server keeps KeyPackages in, the most wanted first.
pub const SUITES: [Ciphersuite; 2] = [PQ_CIPHERSUITE, CIPHERSUITE];

/// A suite's RFC 9420 code point, as the protocol carries it.
pub fn suite_code(suite: Ciphersuite) -> u32 {
    u32::from(u16::from(suite))
}

/// The suite a protocol field names: 0 (a device or server from before
/// post-quantum suites) is the classic suite; None for one Dak does not use.
pub fn suite_from_code(code: u32) -> Option<Ciphersuite> {
    if code == 0 {
        return Some(CIPHERSUITE);
    }
    SUITES.into_iter().find(|s| suite_code(*s) == code)
}

/// How a person is told which suite protects a conversation.
pub fn suite_description(suite: Ciphersuite) -> &'static str {
    if suite == PQ_CIPHERSUITE {
        "post-quantum: ML-KEM-768 + X25519 (X-Wing), AES-128-GCM, Ed25519"
    } else if suite == CIPHERSUITE {
        "classic: X25519, AES-128-GCM, Ed25519"
    } else {
        "a ciphersuite Dak does not use"
    }
}

/// Largest MLS message the server takes (a commit with its Welcome).
pub const MAX_MLS_BYTES: usize = crate::MAX_FRAME_BYTES - 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MlsCheckError {
    #[error("not an MLS message: {0}")]
    Undecodable(String),
    #[error("{0}")]
    Refused(&'static str),
    #[error("KeyPackage signature or contents invalid: {0}")]
    BadKeyPackage(String),
}

/// The identity in a device's basic credential: "<phone>/<device id>".
pub fn credential_identity(phone: &str, device_id: u64) -> Vec<u8> {
    format!("{phone}/{device_id}").into_bytes()
}

/// Reads a credential identity back; None when it is not one of ours.
pub fn parse_identity(identity: &[u8]) -> Option<(String, u64)> {
    let s = std::str::from_utf8(identity).ok()?;
    let (phone, device) = s.rsplit_once('/')?;
    if !phone.starts_with('+') {
        return None;
    }
    Some((phone.to_owned(), device.parse().ok()?))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlsKind {
    /// An encrypted application message (PrivateMessage).
    Application,
    /// A commit sent as a PublicMessage by a member.
    Commit,
    Welcome,
}

/// What the Delivery Service reads off a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlsInfo {
    pub kind: MlsKind,
    /// Empty for a Welcome (its group is encrypted).
    pub group_id: Vec<u8>,
    pub epoch: u64,
}

fn parse(bytes: &[u8]) -> Result<MlsMessageIn, MlsCheckError> {
    if bytes.len() > MAX_MLS_BYTES {
        return Err(MlsCheckError::Refused("MLS message too large"));
    }
    MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| MlsCheckError::Undecodable(e.to_string()))
}

/// Classifies a message. Only the three kinds the server forwards pass:
/// application messages must be encrypted, commits must come from a member
/// in the clear (so their epoch can be checked), proposals are not used.
pub fn inspect(bytes: &[u8]) -> Result<MlsInfo, MlsCheckError> {
    match parse(bytes)?.extract() {
        MlsMessageBodyIn::PrivateMessage(m) => {
            let m = ProtocolMessage::from(m);
            if m.content_type() != ContentType::Application {
                return Err(MlsCheckError::Refused(
                    "handshake messages must be sent as PublicMessage",
                ));
            }
            info(MlsKind::Application, &m)
        }
        MlsMessageBodyIn::PublicMessage(m) => {
            if m.content_type() != ContentType::Commit {
                return Err(MlsCheckError::Refused(
                    "only commits may be sent in the clear",
                ));
            }
            if !matches!(m.sender(), Sender::Member(_)) {
                return Err(MlsCheckError::Refused("commits must come from a member"));
            }
            info(MlsKind::Commit, &ProtocolMessage::from(m))
        }
        MlsMessageBodyIn::Welcome(_) => Ok(MlsInfo {
            kind: MlsKind::Welcome,
            group_id: Vec::new(),
            epoch: 0,
        }),
        _ => Err(MlsCheckError::Refused(
            "expected an application message, a commit or a Welcome",
        )),
    }
}

fn info(kind: MlsKind, m: &ProtocolMessage) -> Result<MlsInfo, MlsCheckError> {
    let group_id = m.group_id().as_slice().to_vec();
    if group_id.is_empty() || group_id.len() > crate::MAX_GROUP_ID_BYTES {
        return Err(MlsCheckError::Refused("group id must be 1 to 64 bytes"));
    }
    Ok(MlsInfo {
        kind,
        group_id,
        epoch: m.epoch().as_u64(),
    })
}

/// The member list change a commit makes, as the commit itself says it
/// (not as its sender declares it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitChanges {
    pub group_id: Vec<u8>,
    /// The epoch the commit was made in (it moves the group to `epoch + 1`).
    pub epoch: u64,
    /// The committer's leaf index.
    pub sender_leaf: u32,
    /// The devices the commit adds, as (phone, device id), in the order of
    /// its Add proposals: the order in which they take the free leaves
    /// (RFC 9420 §12.3).
    pub adds: Vec<(String, u64)>,
    /// The leaf indices the commit's Remove proposals blank, in their order.
    pub removed_leaves: Vec<u32>,
}

/// Reads the member changes out of a commit, for the Delivery Service to
/// keep its fan-out list from the commit rather than from what its sender
/// declares. Only what our clients send passes: a PublicMessage commit from
/// a member whose proposals are all inline Add and Remove proposals, every
/// added device named by one of our basic credentials. A self-update is a
/// commit with no proposals (its path does the update): openmls never puts
/// an Update proposal inline (RFC 9420 §12.4, the committer's own update
/// is its path; other members' would come by reference, and our clients
/// never send proposals on their own), so an inline Update is refused too.
///
/// Nothing here is verified cryptographically (the server holds no group
/// state): the receiving members check the commit's signature, membership
/// tag and KeyPackages, and reject a commit that lies. What this gives the
/// server is the change every member who accepts the commit will apply.
///
/// Decoding: openmls decodes the whole message first (`parse`). openmls 0.9
/// keeps a PublicMessage's content (`FramedContentBodyIn`, `CommitIn`) and
/// an Add proposal's KeyPackage crate-private, so the commit's proposal
/// list is read from the bytes with openmls's own public TLS types: the
/// FramedContent fields before it are walked (`GroupId`, `GroupEpoch`,
/// `Sender`, authenticated data, `ContentType`), then the list is decoded
/// as `Vec<ProposalOrRefIn>`, and an Add proposal (whose encoding is its
/// KeyPackage alone) is re-encoded and decoded as a `KeyPackageIn`. The
/// walk is checked against what openmls read, and every step is bounded by
/// the input and returns an error rather than panicking.
pub fn read_commit(bytes: &[u8]) -> Result<CommitChanges, MlsCheckError> {
    let m = match parse(bytes)?.extract() {
        MlsMessageBodyIn::PublicMessage(m) => m,
        _ => return Err(MlsCheckError::Refused("a commit must be a PublicMessage")),
    };
    if m.content_type() != ContentType::Commit {
        return Err(MlsCheckError::Refused("not a commit"));
    }
    let sender_leaf = match m.sender() {
        Sender::Member(leaf) => leaf.u32(),
        _ => return Err(MlsCheckError::Refused("commits must come from a member")),
    };
    let info = info(MlsKind::Commit, &ProtocolMessage::from(m))?;
    let proposals = commit_proposals(bytes, &info, sender_leaf)?;
    let mut adds = Vec::new();
    let mut removed_leaves = Vec::new();
    for p in proposals {
        let p = match p {
            ProposalOrRefIn::Proposal(p) => p,
            ProposalOrRefIn::Reference(_) => {
                return Err(MlsCheckError::Refused(
                    "a commit must carry its proposals inline, not by reference",
                ));
            }
        };
        match *p {
            ProposalIn::Add(add) => adds.push(added_device(&add)?),
            ProposalIn::Remove(r) => removed_leaves.push(r.removed().u32()),
            _ => {
                return Err(MlsCheckError::Refused(
                    "a commit may only add and remove members (a self-update is a commit with no proposals)",
                ));
            }
        }
    }
    Ok(CommitChanges {
        group_id: info.group_id,
        epoch: info.epoch,
        sender_leaf,
        adds,
        removed_leaves,
    })
}

fn undecodable(e: impl std::fmt::Display) -> MlsCheckError {
    MlsCheckError::Undecodable(e.to_string())
}

/// The proposal list of a PublicMessage commit that openmls has already
/// decoded whole (see `read_commit`):
///
/// ```text
/// MLSMessage   { u16 version; u16 wire_format; PublicMessage }
/// PublicMessage { FramedContent content; ... }
/// FramedContent { opaque group_id<V>; u64 epoch; Sender sender;
///                 opaque authenticated_data<V>; ContentType content_type;
///                 Commit commit; }
/// Commit       { ProposalOrRef proposals<V>; optional<UpdatePath> path; }
/// ```
fn commit_proposals(
    bytes: &[u8],
    info: &MlsInfo,
    sender_leaf: u32,
) -> Result<Vec<ProposalOrRefIn>, MlsCheckError> {
    let mut r = bytes.get(4..).ok_or_else(|| undecodable("truncated"))?;
    let group_id = GroupId::tls_deserialize(&mut r).map_err(undecodable)?;
    let epoch = GroupEpoch::tls_deserialize(&mut r).map_err(undecodable)?;
    let sender = Sender::tls_deserialize(&mut r).map_err(undecodable)?;
    VLBytes::tls_deserialize(&mut r).map_err(undecodable)?; // authenticated_data
    let content_type = ContentType::tls_deserialize(&mut r).map_err(undecodable)?;
    let same = group_id.as_slice() == info.group_id.as_slice()
        && epoch.as_u64() == info.epoch
        && matches!(sender, Sender::Member(leaf) if leaf.u32() == sender_leaf)
        && content_type == ContentType::Commit;
    if !same {
        // Cannot happen while openmls's framing is RFC 9420's.
        return Err(MlsCheckError::Undecodable(
            "the commit's framing does not read as openmls read it".into(),
        ));
    }
    Vec::<ProposalOrRefIn>::tls_deserialize(&mut r).map_err(undecodable)
}

/// The (phone, device id) an Add proposal's KeyPackage credential names.
fn added_device(add: &openmls::prelude::AddProposalIn) -> Result<(String, u64), MlsCheckError> {
    let encoded = add.tls_serialize_detached().map_err(undecodable)?;
    let kp = KeyPackageIn::tls_deserialize_exact(encoded.as_slice()).map_err(undecodable)?;
    BasicCredential::try_from(kp.unverified_credential().credential)
        .ok()
        .and_then(|c| parse_identity(c.identity()))
        .ok_or(MlsCheckError::Refused(
            "an added device's credential is not one of ours",
        ))
}

/// What `check_key_package` found in a good KeyPackage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedKeyPackage {
    pub last_resort: bool,
    /// One of `SUITES`.
    pub suite: Ciphersuite,
}

/// Checks an uploaded KeyPackage: its signatures (openmls), one of our
/// ciphersuites, a credential naming this device, and the device's own
/// identity key as its signature key.
pub fn check_key_package(
    bytes: &[u8],
    phone: &str,
    device_id: u64,
    identity_key: &[u8],
) -> Result<CheckedKeyPackage, MlsCheckError> {
    let kp = match parse(bytes)?.extract() {
        MlsMessageBodyIn::KeyPackage(kp) => kp,
        _ => return Err(MlsCheckError::Refused("expected a KeyPackage")),
    };
    let kp = validate(kp)?;
    if !SUITES.contains(&kp.ciphersuite()) {
        return Err(MlsCheckError::Refused(
            "KeyPackage uses a ciphersuite Dak does not take (0x0001 or 0x004F)",
        ));
    }
    let leaf = kp.leaf_node();
    if leaf.credential().serialized_content() != credential_identity(phone, device_id) {
        return Err(MlsCheckError::Refused(
            "KeyPackage credential does not name this device",
        ));
    }
    if leaf.signature_key().as_slice() != identity_key {
        return Err(MlsCheckError::Refused(
            "KeyPackage is not signed with this device's identity key",
        ));
    }
    Ok(CheckedKeyPackage {
        last_resort: kp.last_resort(),
        suite: kp.ciphersuite(),
    })
}

fn validate(kp: KeyPackageIn) -> Result<KeyPackage, MlsCheckError> {
    kp.validate(&RustCrypto::default(), ProtocolVersion::Mls10)
        .map_err(|e| MlsCheckError::BadKeyPackage(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_and_reject_strangers() {
        let id = credential_identity("+919800000001", 42);
        assert_eq!(parse_identity(&id), Some(("+919800000001".into(), 42)));
        assert_eq!(parse_identity(b"alice"), None);
        assert_eq!(parse_identity(b"+91/x"), None);
        assert_eq!(parse_identity(&[0xff, 0xfe]), None);
    }

    #[test]
    fn garbage_is_not_an_mls_message() {
        assert!(matches!(
            inspect(&[1, 2, 3]),
            Err(MlsCheckError::Undecodable(_))
        ));
        assert!(inspect(&[]).is_err());
        assert!(check_key_package(&[0; 40], "+1", 1, &[0; 32]).is_err());
        assert!(matches!(
            read_commit(&[1, 2, 3]),
            Err(MlsCheckError::Undecodable(_))
        ));
        assert!(read_commit(&[]).is_err());
        assert!(read_commit(&vec![0; MAX_MLS_BYTES + 1]).is_err());
    }

    /// Real commits, made by openmls as our clients make them.
    mod commits {
        use super::super::*;
        use openmls::prelude::{
            CredentialWithKey, Extensions, LeafNodeIndex, LeafNodeParameters,
            MIXED_PLAINTEXT_WIRE_FORMAT_POLICY, MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig,
            MlsMessageOut, StagedWelcome,
        };
        use openmls_basic_credential::SignatureKeyPair;
        use openmls_rust_crypto::OpenMlsRustCrypto;

        struct Client {
            provider: OpenMlsRustCrypto,
            signer: SignatureKeyPair,
            credential: CredentialWithKey,
        }

        fn client(identity: &[u8]) -> Client {
            let provider = OpenMlsRustCrypto::default();
            let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).unwrap();
            let credential = CredentialWithKey {
                credential: BasicCredential::new(identity.to_vec()).into(),
                signature_key: signer.public().to_vec().into(),
            };
            Client {
                provider,
                signer,
                credential,
            }
        }

        fn device(phone: &str, id: u64) -> Client {
            client(&credential_identity(phone, id))
        }

        impl Client {
            fn key_package(&self) -> KeyPackage {
                self.key_package_in(CIPHERSUITE)
            }

            fn key_package_in(&self, suite: Ciphersuite) -> KeyPackage {
                KeyPackage::builder()
                    .build(suite, &self.provider, &self.signer, self.credential.clone())
                    .unwrap()
                    .key_package()
                    .clone()
            }

            fn create_group(&self) -> MlsGroup {
                let config = MlsGroupCreateConfig::builder()
                    .ciphersuite(CIPHERSUITE)
                    .use_ratchet_tree_extension(true)
                    .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
                    .build();
                MlsGroup::new(
                    &self.provider,
                    &self.signer,
                    &config,
                    self.credential.clone(),
                )
                .unwrap()
            }

            fn join(&self, welcome: &[u8]) -> MlsGroup {
                let welcome = match MlsMessageIn::tls_deserialize_exact(welcome)
                    .unwrap()
                    .extract()
                {
                    MlsMessageBodyIn::Welcome(w) => w,
                    _ => panic!("not a Welcome"),
                };
                let config = MlsGroupJoinConfig::builder()
                    .use_ratchet_tree_extension(true)
                    .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
                    .build();
                StagedWelcome::new_from_welcome(&self.provider, &config, welcome, None)
                    .unwrap()
                    .into_group(&self.provider)
                    .unwrap()
            }

            /// A commit as dak-core makes one (`Mls::commit_in`), merged
            /// at once; returns the commit and its Welcome.
            fn commit(
                &self,
                g: &mut MlsGroup,
                adds: Vec<KeyPackage>,
                removes: Vec<u32>,
            ) -> (Vec<u8>, Option<Vec<u8>>) {
                let add_only = !adds.is_empty() && removes.is_empty();
                let bundle = g
                    .commit_builder()
                    .propose_adds(adds)
                    .propose_removals(removes.into_iter().map(LeafNodeIndex::new))
                    .force_self_update(!add_only)
                    .load_psks(self.provider.storage())
                    .unwrap()
                    .build(
                        self.provider.rand(),
                        self.provider.crypto(),
                        &self.signer,
                        |_| true,
                    )
                    .unwrap()
                    .stage_commit(&self.provider)
                    .unwrap();
                let commit = bytes(bundle.commit());
                let welcome = bundle.to_welcome_msg().map(|w| bytes(&w));
                g.merge_pending_commit(&self.provider).unwrap();
                (commit, welcome)
            }
        }

        use openmls::prelude::OpenMlsProvider;

        fn bytes(m: &MlsMessageOut) -> Vec<u8> {
            m.tls_serialize_detached().unwrap()
        }

        /// The group's members by leaf index, as (phone, device id).
        fn leaves(g: &MlsGroup) -> Vec<(u32, (String, u64))> {
            g.members()
                .map(|m| {
                    let c = BasicCredential::try_from(m.credential).unwrap();
                    (m.index.u32(), parse_identity(c.identity()).unwrap())
                })
                .collect()
        }

        fn id(phone: &str, device: u64) -> (String, u64) {
            (phone.to_owned(), device)
        }

        const A: &str = "+919800000001";
        const B: &str = "+919800000002";
        const C: &str = "+919800000003";

        fn encoded(kp: KeyPackage) -> Vec<u8> {
            MlsMessageOut::from(kp).tls_serialize_detached().unwrap()
        }

        /// Both suites pass, each said as itself; a third does not, and
        /// neither does a package naming another device or key.
        #[test]
        fn key_packages_in_either_suite_pass_and_say_which() {
            let a1 = device(A, 1);
            let key = a1.signer.public().to_vec();
            for suite in SUITES {
                let checked = check_key_package(&encoded(a1.key_package_in(suite)), A, 1, &key);
                assert_eq!(
                    checked,
                    Ok(CheckedKeyPackage {
                        last_resort: false,
                        suite
                    })
                );
                assert_eq!(suite_from_code(suite_code(suite)), Some(suite));
            }
            assert_eq!(suite_from_code(0), Some(CIPHERSUITE));
            assert_eq!(suite_from_code(0x0003), None);
            let other = Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519;
            assert!(matches!(
                check_key_package(&encoded(a1.key_package_in(other)), A, 1, &key),
                Err(MlsCheckError::Refused(_))
            ));
            let pq = encoded(a1.key_package_in(PQ_CIPHERSUITE));
            assert!(check_key_package(&pq, A, 2, &key).is_err());
            assert!(check_key_package(&pq, A, 1, &[7; 32]).is_err());
        }

        #[test]
        fn reads_adds_removes_and_self_updates() {
            let a1 = device(A, 1);
            let b7 = device(B, 7);
            let c9 = device(C, 9);
            let mut g = a1.create_group();
            let group_id = g.group_id().as_slice().to_vec();

            // The creating commit adds two devices: they take leaves 1 and 2.
            let (commit, welcome) =
                a1.commit(&mut g, vec![b7.key_package(), c9.key_package()], vec![]);
            let read = read_commit(&commit).unwrap();
            assert_eq!(
                read,
                CommitChanges {
                    group_id: group_id.clone(),
                    epoch: 0,
                    sender_leaf: 0,
                    adds: vec![id(B, 7), id(C, 9)],
                    removed_leaves: vec![],
                }
            );
            assert_eq!(
                leaves(&g),
                vec![(0, id(A, 1)), (1, id(B, 7)), (2, id(C, 9))]
            );

            // A member's self-update: no proposals, its own leaf.
            let mut gb = b7.join(&welcome.unwrap());
            let update = gb
                .self_update(&b7.provider, &b7.signer, LeafNodeParameters::default())
                .unwrap();
            let read = read_commit(&bytes(update.commit())).unwrap();
            assert_eq!((read.epoch, read.sender_leaf), (1, 1));
            assert!(read.adds.is_empty() && read.removed_leaves.is_empty());

            // A removal (it carries a path).
            let (commit, welcome) = a1.commit(&mut g, vec![], vec![1]);
            assert!(welcome.is_none());
            let read = read_commit(&commit).unwrap();
            assert_eq!((read.epoch, read.sender_leaf), (1, 0));
            assert!(read.adds.is_empty());
            assert_eq!(read.removed_leaves, vec![1]);
            assert_eq!(leaves(&g), vec![(0, id(A, 1)), (2, id(C, 9))]);

            // Removes first, then each add takes the lowest free leaf:
            // removing leaf 2 and adding two puts them at 1 and 2.
            let (c10, b8) = (device(C, 10), device(B, 8));
            let (commit, _) = a1.commit(&mut g, vec![c10.key_package(), b8.key_package()], vec![2]);
            let read = read_commit(&commit).unwrap();
            assert_eq!(read.epoch, 2);
            assert_eq!(read.adds, vec![id(C, 10), id(B, 8)]);
            assert_eq!(read.removed_leaves, vec![2]);
            assert_eq!(
                leaves(&g),
                vec![(0, id(A, 1)), (1, id(C, 10)), (2, id(B, 8))]
            );

            // Adds past the last member extend the tree; a removal of an
            // inner leaf leaves a hole the next add fills.
            let (d1, d2) = (device("+919800000004", 1), device("+919800000005", 2));
            let (commit, _) = a1.commit(&mut g, vec![d1.key_package()], vec![1]);
            assert_eq!(read_commit(&commit).unwrap().removed_leaves, vec![1]);
            let (commit, _) = a1.commit(&mut g, vec![d2.key_package()], vec![]);
            assert_eq!(
                read_commit(&commit).unwrap().adds,
                vec![id("+919800000005", 2)]
            );
            assert_eq!(
                leaves(&g),
                vec![
                    (0, id(A, 1)),
                    (1, id("+919800000004", 1)),
                    (2, id(B, 8)),
                    (3, id("+919800000005", 2))
                ]
            );

            // A self-update by the committer (dak-core's force_self_update).
            let (commit, _) = a1.commit(&mut g, vec![], vec![]);
            let read = read_commit(&commit).unwrap();
            assert_eq!(
                read,
                CommitChanges {
                    group_id,
                    epoch: 5,
                    sender_leaf: 0,
                    adds: vec![],
                    removed_leaves: vec![],
                }
            );
        }

        #[test]
        fn truncated_or_altered_commits_are_errors() {
            let a1 = device(A, 1);
            let b7 = device(B, 7);
            let mut g = a1.create_group();
            let (commit, _) = a1.commit(&mut g, vec![b7.key_package()], vec![]);
            assert!(read_commit(&commit).is_ok());
            for n in 0..commit.len() {
                assert!(read_commit(&commit[..n]).is_err(), "prefix of {n} bytes");
            }
            let mut longer = commit.clone();
            longer.push(0);
            assert!(read_commit(&longer).is_err());
            // Flipping any byte never panics (the error, if any, is ours).
            for i in 0..commit.len() {
                let mut c = commit.clone();
                c[i] ^= 0xa5;
                let _ = read_commit(&c);
            }
        }

        #[test]
        fn refuses_what_our_clients_do_not_send() {
            let a1 = device(A, 1);
            let mut g = a1.create_group();

            // A device whose credential is not one of ours.
            let stranger = client(b"bob");
            let (commit, welcome) = a1.commit(&mut g, vec![stranger.key_package()], vec![]);
            assert!(matches!(
                read_commit(&commit),
                Err(MlsCheckError::Refused(m)) if m.contains("credential")
            ));
            // A Welcome is not a commit.
            assert!(matches!(
                read_commit(&welcome.unwrap()),
                Err(MlsCheckError::Refused(_))
            ));

            // A proposal by reference.
            let (proposal, _) = g
                .propose_remove_member(&a1.provider, &a1.signer, LeafNodeIndex::new(1))
                .unwrap();
            assert!(read_commit(&bytes(&proposal)).is_err()); // a proposal, not a commit
            let (commit, _, _) = g
                .commit_to_pending_proposals(&a1.provider, &a1.signer)
                .unwrap();
            assert!(matches!(
                read_commit(&bytes(&commit)),
                Err(MlsCheckError::Refused(m)) if m.contains("reference")
            ));
            g.clear_pending_commit(a1.provider.storage()).unwrap();
            g.clear_pending_proposals(a1.provider.storage()).unwrap();

            // Another proposal type (group context extensions, inline).
            let (commit, _, _) = g
                .update_group_context_extensions(&a1.provider, Extensions::empty(), &a1.signer)
                .unwrap();
            assert!(matches!(
                read_commit(&bytes(&commit)),
                Err(MlsCheckError::Refused(m)) if m.contains("only add and remove")
            ));
            g.clear_pending_commit(a1.provider.storage()).unwrap();

            // An application message is not a commit.
            let app = g
                .create_message(&a1.provider, &a1.signer, b"hello")
                .unwrap();
            assert!(matches!(
                read_commit(&bytes(&app)),
                Err(MlsCheckError::Refused(_))
            ));
        }
    }
}
