//! What a post-quantum MLS group costs against today's, at 32, 256 and
//! 1,024 members (issue 17): `cargo bench -p dak-proto --bench pq_groups`
//! (`-- --members 32,256 --runs 3` for fewer; `--json` for a line each).
//!
//! Both suites sign with Ed25519 (every device's identity key) and use
//! AES-128-GCM and SHA-256; they differ in the KEM only:
//! - classic: MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 (today's);
//! - hybrid:  MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519 (ML-KEM-768
//!   with X25519, openmls_rust_crypto's `draft-ietf-mls-pq-ciphersuites`).
//!
//! Method: the group is configured as devices configure theirs (ratchet
//! tree in the Welcome, commits in the clear). For each suite and size,
//! one creator adds `members - 1` devices in one commit; one of them joins
//! from the Welcome; the creator then commits an update of its own leaf
//! (the commit a removal or a key rotation sends) and the joiner processes
//! it. Times are the median of `--runs` runs (release build, one thread),
//! bytes are exact. KeyPackage generation is timed per package.

use std::time::{Duration, Instant};

use openmls::prelude::tls_codec::Serialize;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

const CLASSIC: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
const HYBRID: Ciphersuite = Ciphersuite::MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519;

struct Member {
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
}

fn member(suite: Ciphersuite, i: usize) -> Member {
    let signer = SignatureKeyPair::new(suite.signature_algorithm()).expect("signer");
    let credential = CredentialWithKey {
        credential: BasicCredential::new(format!("+9198{i:08}/1").into_bytes()).into(),
        signature_key: signer.public().into(),
    };
    Member { signer, credential }
}

/// A leaf says which suites it supports; the default list holds only the
/// classic ones.
fn capabilities(suite: Ciphersuite) -> Capabilities {
    Capabilities::builder().ciphersuites(vec![suite]).build()
}

fn create_config(suite: Ciphersuite) -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(suite)
        .capabilities(capabilities(suite))
        .use_ratchet_tree_extension(true)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .build()
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .build()
}

fn bytes(m: &MlsMessageOut) -> usize {
    m.tls_serialize_detached().expect("encode").len()
}

#[derive(Default, Clone)]
struct Run {
    key_package_bytes: usize,
    key_package_time: Duration,
    add_commit_bytes: usize,
    welcome_bytes: usize,
    add_time: Duration,
    join_time: Duration,
    update_commit_bytes: usize,
    update_time: Duration,
    process_update_time: Duration,
}

fn run(suite: Ciphersuite, members: usize) -> Run {
    let creator_provider = OpenMlsRustCrypto::default();
    // Every joining device's private keys live in one provider: only one
    // of them joins, and it finds its KeyPackage there by reference.
    let members_provider = OpenMlsRustCrypto::default();
    let creator = member(suite, 0);
    let others: Vec<Member> = (1..members).map(|i| member(suite, i)).collect();
    let started = Instant::now();
    let key_packages: Vec<KeyPackage> = others
        .iter()
        .map(|m| {
            KeyPackage::builder()
                .leaf_node_capabilities(capabilities(suite))
                .build(suite, &members_provider, &m.signer, m.credential.clone())
                .expect("key package")
                .key_package()
                .clone()
        })
        .collect();
    let key_package_time = started.elapsed() / key_packages.len().max(1) as u32;
    let key_package_bytes = bytes(&MlsMessageOut::from(key_packages[0].clone()));

    let mut group = MlsGroup::new(
        &creator_provider,
        &creator.signer,
        &create_config(suite),
        creator.credential.clone(),
    )
    .expect("group");
    let started = Instant::now();
    let (commit, welcome, _) = group
        .add_members(&creator_provider, &creator.signer, &key_packages)
        .expect("add");
    group
        .merge_pending_commit(&creator_provider)
        .expect("merge");
    let add_time = started.elapsed();
    let add_commit_bytes = bytes(&commit);
    let welcome_bytes = bytes(&welcome);

    let started = Instant::now();
    let welcome = match welcome.body() {
        MlsMessageBodyOut::Welcome(w) => w.clone(),
        _ => unreachable!("add_members returns a Welcome"),
    };
    let mut joined =
        StagedWelcome::new_from_welcome(&members_provider, &join_config(), welcome, None)
            .expect("welcome")
            .into_group(&members_provider)
            .expect("join");
    let join_time = started.elapsed();

    let started = Instant::now();
    let bundle = group
        .self_update(
            &creator_provider,
            &creator.signer,
            LeafNodeParameters::default(),
        )
        .expect("update");
    group
        .merge_pending_commit(&creator_provider)
        .expect("merge update");
    let update_time = started.elapsed();
    let update = bundle.into_commit();
    let update_commit_bytes = bytes(&update);

    let started = Instant::now();
    let message = MlsMessageIn::from(update)
        .try_into_protocol_message()
        .expect("protocol message");
    let processed = joined
        .process_message(&members_provider, message)
        .expect("process");
    if let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() {
        joined
            .merge_staged_commit(&members_provider, *staged)
            .expect("merge staged");
    }
    let process_update_time = started.elapsed();
    assert_eq!(joined.epoch(), group.epoch());
    Run {
        key_package_bytes,
        key_package_time,
        add_commit_bytes,
        welcome_bytes,
        add_time,
        join_time,
        update_commit_bytes,
        update_time,
        process_update_time,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let sizes: Vec<usize> = value("--members")
        .unwrap_or_else(|| "32,256,1024".into())
        .split(',')
        .map(|s| s.trim().parse().expect("--members: sizes like 32,256"))
        .collect();
    let runs: usize = value("--runs").map_or(3, |s| s.parse().expect("--runs N"));
    let json = args.iter().any(|a| a == "--json");
    if !json {
        println!(
            "{:<8} {:>7} {:>8} {:>8} {:>11} {:>10} {:>9} {:>9} {:>10} {:>9} {:>10}",
            "suite",
            "members",
            "KP B",
            "KP ms",
            "add commit B",
            "welcome B",
            "add ms",
            "join ms",
            "update B",
            "update ms",
            "process ms"
        );
    }
    for &members in &sizes {
        for (name, suite) in [("classic", CLASSIC), ("hybrid", HYBRID)] {
            let all: Vec<Run> = (0..runs).map(|_| run(suite, members)).collect();
            let pick = |f: fn(&Run) -> Duration| median(all.iter().map(f).collect());
            let r = &all[0];
            let kp_ms = ms(pick(|r| r.key_package_time));
            let add_ms = ms(pick(|r| r.add_time));
            let join_ms = ms(pick(|r| r.join_time));
            let update_ms = ms(pick(|r| r.update_time));
            let process_ms = ms(pick(|r| r.process_update_time));
            if json {
                println!(
                    "{{\"suite\":\"{name}\",\"members\":{members},\"runs\":{runs},\"key_package_bytes\":{},\"key_package_ms\":{kp_ms},\"add_commit_bytes\":{},\"welcome_bytes\":{},\"add_ms\":{add_ms},\"join_ms\":{join_ms},\"update_commit_bytes\":{},\"update_ms\":{update_ms},\"process_update_ms\":{process_ms}}}",
                    r.key_package_bytes, r.add_commit_bytes, r.welcome_bytes, r.update_commit_bytes
                );
            } else {
                println!(
                    "{name:<8} {members:>7} {:>8} {kp_ms:>8} {:>11} {:>10} {add_ms:>9} {join_ms:>9} {:>10} {update_ms:>9} {process_ms:>10}",
                    r.key_package_bytes, r.add_commit_bytes, r.welcome_bytes, r.update_commit_bytes
                );
            }
        }
    }
}
