//! `dak bench` runs end to end on a small scale: the scenario works and
//! counts what it should. Speeds are never asserted; docs/BENCHMARKS.md
//! records them from release builds.

use std::process::Command;

fn figure(report: &serde_json::Value, name: &str) -> f64 {
    report["figures"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["name"] == name))
        .and_then(|f| f["value"].as_f64())
        .unwrap_or_else(|| panic!("no figure {name:?} in {report}"))
}

/// A group of 8: created in commits of 2 devices (so later commits reach
/// earlier members), 3 messages to 7 recipients, decrypted; a removal sent,
/// one update, and the Sender Keys comparison computed from the same sizes.
#[test]
fn bench_group_small() {
    let out = Command::new(env!("CARGO_BIN_EXE_dak"))
        .args([
            "--json",
            "bench",
            "group",
            "--members",
            "8",
            "--messages",
            "3",
            "--interval",
            "0s",
            "--updates",
            "1",
            "--decrypt",
            "3",
            "--batch",
            "2",
            "--workers",
            "2",
        ])
        .output()
        .expect("run dak bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dak bench group failed: {stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(report["scenario"], "group");

    assert_eq!(figure(&report, "members (accounts, one device each)"), 8.0);
    assert_eq!(
        figure(&report, "create: commits"),
        4.0,
        "7 devices in batches of 2"
    );
    // Members 1-2 process commits 2-4, members 3-4 commits 3-4, 5-6 commit 4.
    assert_eq!(
        figure(&report, "create: commit processing per member, count"),
        12.0
    );
    assert_eq!(
        figure(&report, "create: Welcome processing per member, count"),
        7.0
    );
    assert!(figure(&report, "batch 1: Welcome bytes") > 0.0);

    assert_eq!(figure(&report, "fan-out: deliveries"), 21.0);
    assert_eq!(figure(&report, "fan-out: decrypted"), 21.0);
    assert_eq!(figure(&report, "fan-out: send->Deliver samples"), 21.0);

    let removal = figure(&report, "removal commit bytes, member of the last batch");
    assert!(removal > 0.0);
    assert_eq!(figure(&report, "removal: devices the SendAck names"), 6.0);
    assert_eq!(
        figure(&report, "removal: processing per member, count"),
        7.0
    );
    assert_eq!(figure(&report, "members after the removal"), 7.0);
    assert_eq!(
        figure(
            &report,
            "MLS removal by member of the last batch: commit x (N-1) devices delivered"
        ),
        removal * 7.0
    );
    assert!(
        figure(
            &report,
            "removal commit bytes after 1 update(s), member of the last batch"
        ) > 0.0
    );

    assert_eq!(
        figure(&report, "Sender Keys: SenderKeyDistributionMessage bytes"),
        96.0
    );
    let pairwise = figure(&report, "Sender Keys: as an MLS 1:1 application message");
    assert!(pairwise > 96.0, "MLS adds its framing: {pairwise}");
    assert_eq!(
        figure(
            &report,
            "Sender Keys: every remaining member re-keys, (N-1)(N-2) messages"
        ),
        pairwise * 7.0 * 6.0
    );
}
