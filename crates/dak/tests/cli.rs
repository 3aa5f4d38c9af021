//! The `dak` commands as a person or a script runs them.

mod common;

use std::process::Command;

use common::*;

fn dak(profile: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dak"))
        .arg("--profile")
        .arg(profile)
        .args(args)
        .output()
        .expect("run dak");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(profile: &std::path::Path, args: &[&str]) -> String {
    let (success, stdout, stderr) = dak(profile, args);
    assert!(success, "dak {args:?} failed: {stderr}");
    stdout
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[test]
fn print_config_and_insecure_rules() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dak"))
        .args(["server", "--print-config", "--data"])
        .arg(dir.path())
        .env("DAK_LINKED_DEVICE_MAX_AGE", "6h")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("linked_device_max_age = \"6h\""), "{text}");
    assert!(text.contains("retention = \"30days\""), "{text}");

    let out = Command::new(env!("CARGO_BIN_EXE_dak"))
        .args(["server", "--insecure", "--listen", "0.0.0.0:0", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only allowed on a loopback address"));
}

#[test]
fn every_command_has_help() {
    for cmd in [
        vec!["--help"],
        vec!["server", "--help"],
        vec!["register", "--help"],
        vec!["send", "--help"],
        vec!["devices", "approve", "--help"],
        vec!["safety", "--help"],
        vec!["react", "--help"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_dak"))
            .args(&cmd)
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{cmd:?}"
        );
    }
}

#[tokio::test]
async fn two_phones_chat_through_the_cli() {
    let server = TestServer::start_insecure();
    assert!(server.url.starts_with("ws://"), "{}", server.url);
    let (alice, bob) = (alice(), bob());
    for p in [&alice, &bob] {
        ok(&p.dir, &["register", "--server", &server.url, &p.phone]);
        let code = server.code_for(&p.phone);
        let out = ok(&p.dir, &["--json", "verify", &code]);
        assert_eq!(json_lines(&out)[0]["phone"], p.phone);
    }
    let (success, _, stderr) = dak(&alice.dir, &["send", "+919899999999", "hi"]);
    assert!(!success);
    assert!(stderr.contains("not on Dak"), "{stderr}");

    let out = ok(&alice.dir, &["--json", "send", &bob.phone, "namaste bob"]);
    let sent = &json_lines(&out)[0];
    assert_eq!(sent["tick"], "sent");
    let id = sent["id"].as_str().unwrap().to_string();

    let out = ok(&bob.dir, &["--json", "sync"]);
    let msgs = json_lines(&out);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["id"], id.as_str());
    assert_eq!(msgs[0]["from"], alice.phone.as_str());
    assert_eq!(msgs[0]["text"], "namaste bob");
    assert!(msgs[0]["sent_at"].is_string());

    ok(&alice.dir, &["sync"]);
    let status = &json_lines(&ok(&alice.dir, &["--json", "status", &id]))[0];
    assert_eq!(status["tick"], "delivered");
    assert_eq!(status["devices"].as_array().unwrap().len(), 1);

    let out = ok(&bob.dir, &["--json", "read", "--all"]);
    assert_eq!(json_lines(&out)[0]["marked_read"], 1);
    ok(&alice.dir, &["sync"]);
    let human = ok(&alice.dir, &["status", &id]);
    assert!(human.contains("read"), "{human}");

    let who = ok(&bob.dir, &["whoami"]);
    assert!(who.contains(&bob.phone));
    let devices = ok(&bob.dir, &["devices", "list"]);
    assert!(devices.contains("(this device)"), "{devices}");

    // bob reacts; both compare safety numbers.
    ok(&bob.dir, &["react", &alice.phone, &id, "🙏"]);
    let theirs = &json_lines(&ok(&alice.dir, &["--json", "safety", &bob.phone]))[0];
    let mine = &json_lines(&ok(&bob.dir, &["--json", "safety", &alice.phone]))[0];
    assert_eq!(theirs["safety_number"], mine["safety_number"]);
    let human = ok(&bob.dir, &["safety", &alice.phone]);
    let first_group = mine["safety_number"]
        .as_str()
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert!(human.contains(first_group), "{human}");
}

#[tokio::test]
async fn a_message_written_while_the_server_is_down_is_queued_and_sent_later() {
    let mut server = TestServer::start_insecure();
    let (alice, bob) = registered_pair(&server).await;
    server.kill9();
    let (success, stdout, stderr) = dak(&alice.dir, &["send", &bob.phone, "written offline"]);
    assert!(!success, "not acked, so not a success");
    assert!(stdout.contains('🕓'), "{stdout} / {stderr}");
    assert!(stderr.contains("queued"), "{stderr}");
    server.restart();
    ok(&alice.dir, &["sync"]); // connecting flushes the outbox
    assert_eq!(bob.sync_texts().await, vec!["written offline"]);
}
