//! The `dak` commands as a person or a script runs them.

mod common;

use std::process::Command;

use common::*;

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
        vec!["edit", "--help"],
        vec!["delete", "--help"],
        vec!["timer", "--help"],
        vec!["forward", "--help"],
        vec!["group", "--help"],
        vec!["group", "create", "--help"],
        vec!["group", "list", "--help"],
        vec!["group", "info", "--help"],
        vec!["group", "add", "--help"],
        vec!["group", "remove", "--help"],
        vec!["group", "leave", "--help"],
        vec!["group", "promote", "--help"],
        vec!["group", "demote", "--help"],
        vec!["group", "set", "--help"],
        vec!["group", "invite-link", "--help"],
        vec!["group", "join", "--help"],
        vec!["group", "approve", "--help"],
        vec!["broadcast", "--help"],
        vec!["broadcast", "create", "--help"],
        vec!["broadcast", "send", "--help"],
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
    let lines = json_lines(&out);
    // The first message from a number bob does not know comes with its request.
    assert!(
        lines
            .iter()
            .any(|l| l["type"] == "message_request" && l["from"] == alice.phone.as_str()),
        "{out}"
    );
    let msgs: Vec<_> = lines
        .into_iter()
        .filter(|l| l["type"] == "message")
        .collect();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["id"], id.as_str());
    assert_eq!(msgs[0]["from"], alice.phone.as_str());
    assert_eq!(msgs[0]["text"], "namaste bob");
    assert!(msgs[0]["sent_at"].is_string());

    ok(&alice.dir, &["sync"]);
    let status = &json_lines(&ok(&alice.dir, &["--json", "status", &id]))[0];
    assert_eq!(status["tick"], "delivered");
    assert_eq!(status["devices"].as_array().unwrap().len(), 1);

    // alice is a stranger to bob: her chat is a message request until he accepts.
    let requests = json_lines(&ok(&bob.dir, &["--json", "requests"]));
    assert_eq!(requests[0]["from"], alice.phone.as_str());
    ok(&bob.dir, &["accept", &alice.phone]);
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

    // alice links a laptop from the CLI; approving sends it the chat so far.
    let laptop = tempfile::tempdir().unwrap();
    let mut link = Command::new(env!("CARGO_BIN_EXE_dak"))
        .arg("--profile")
        .arg(laptop.path())
        .args(["--json", "link", "--server", &server.url])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(link.stdout.take().unwrap()));
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let code = first["link_code"].as_str().unwrap().to_string();
    let approved = &json_lines(&ok(&alice.dir, &["--json", "devices", "approve", &code]))[0];
    assert_eq!(approved["history"]["chats"], 1, "{approved}");
    assert_eq!(approved["history"]["messages"], 1, "{approved}");
    assert!(link.wait().unwrap().success());
    let synced = json_lines(&ok(laptop.path(), &["--json", "sync"]));
    assert!(
        synced
            .iter()
            .any(|l| l["type"] == "history" && l["messages"] == 1),
        "{synced:?}"
    );
    let history = json_lines(&ok(laptop.path(), &["--json", "history", &bob.phone]));
    assert_eq!(history[0]["text"], "namaste bob", "{history:?}");
    assert_eq!(history[0]["tick"], "read", "{history:?}");
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

#[tokio::test]
async fn a_group_and_the_message_features_through_the_cli() {
    let server = TestServer::start_insecure();
    let (alice, bob, carol) = registered_trio(&server).await;
    let created = &json_lines(&ok(
        &alice.dir,
        &[
            "--json",
            "group",
            "create",
            "Family",
            &bob.phone,
            &carol.phone,
        ],
    ))[0];
    let key = created["key"].as_str().unwrap().to_string();
    assert_eq!(created["members"].as_array().unwrap().len(), 3);
    for p in [&bob, &carol] {
        let out = ok(&p.dir, &["--json", "sync"]);
        assert!(out.contains("\"joined\""), "{out}");
    }

    // Sent by title; read by both; the status shows each member.
    let sent = &json_lines(&ok(
        &alice.dir,
        &["--json", "send", "Family", "hello family"],
    ))[0];
    let id = sent["id"].as_str().unwrap().to_string();
    for p in [&bob, &carol] {
        let got = json_lines(&ok(&p.dir, &["--json", "sync"]));
        let msg = got.iter().find(|v| v["type"] == "message").unwrap();
        assert_eq!(msg["conversation"], key.as_str());
        ok(&p.dir, &["accept", &key]);
        ok(&p.dir, &["read", "--all"]);
    }
    ok(&alice.dir, &["sync"]);
    let status = &json_lines(&ok(&alice.dir, &["--json", "status", &id]))[0];
    assert_eq!(status["tick"], "read");
    let human = ok(&alice.dir, &["status", &id]);
    assert!(
        human.contains(&bob.phone) && human.contains(&carol.phone),
        "{human}"
    );

    // A reply, an edit, a reaction; history shows them.
    ok(&bob.dir, &["send", "--reply-to", &id, &key, "yes!"]);
    ok(&alice.dir, &["edit", &id, "hello, family"]);
    ok(&carol.dir, &["react", "Family", &id, "❤"]);
    ok(&alice.dir, &["sync"]);
    let history = json_lines(&ok(&alice.dir, &["--json", "history", "Family"]));
    assert_eq!(history[0]["text"], "hello, family");
    assert_eq!(history[0]["edited"], true);
    assert_eq!(history[0]["reactions"][0]["emoji"], "❤");
    assert_eq!(history[1]["reply_to"]["id"], id.as_str());

    // Admins, settings, the invite link.
    ok(&alice.dir, &["group", "promote", "Family", &bob.phone]);
    ok(
        &alice.dir,
        &["group", "set", "Family", "--description", "the cousins"],
    );
    let link = ok(&alice.dir, &["group", "invite-link", &key, "--approval"]);
    assert!(link.trim().starts_with("dak-invite:"), "{link}");
    let info = &json_lines(&ok(&alice.dir, &["--json", "group", "info", "Family"]))[0];
    assert_eq!(info["description"], "the cousins");
    assert_eq!(info["invite_needs_approval"], true);
    let admins: Vec<&str> = info["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["admin"] == true)
        .map(|m| m["phone"].as_str().unwrap())
        .collect();
    assert_eq!(admins, vec![alice.phone.as_str(), bob.phone.as_str()]);
    ok(&alice.dir, &["group", "invite-link", "Family", "--revoke"]);

    // carol is removed; bob leaves; the group list follows.
    ok(&alice.dir, &["group", "remove", "Family", &carol.phone]);
    let out = ok(&carol.dir, &["--json", "sync"]);
    assert!(out.contains("\"removed_me\""), "{out}");
    ok(&bob.dir, &["sync"]);
    ok(&bob.dir, &["group", "leave", "Family"]);
    assert!(ok(&bob.dir, &["--json", "group", "list"]).trim().is_empty());
    ok(&alice.dir, &["sync"]);
    let info = &json_lines(&ok(&alice.dir, &["--json", "group", "info", "Family"]))[0];
    assert_eq!(info["members"].as_array().unwrap().len(), 1);

    // Deleting, a timer, forwarding and a broadcast list, in 1:1 chats.
    ok(&alice.dir, &["delete", &id]);
    ok(&alice.dir, &["timer", &bob.phone, "1h"]);
    let fwd = json_lines(&ok(&bob.dir, &["--json", "forward", &id, &carol.phone]));
    assert_eq!(fwd.len(), 1);
    let (success, _, stderr) = dak(
        &bob.dir,
        &[
            "forward",
            &id,
            "+919800000011",
            "+919800000012",
            "+919800000013",
            "+919800000014",
            "+919800000015",
            "+919800000016",
        ],
    );
    assert!(!success && stderr.contains("at most 5"), "{stderr}");
    ok(
        &alice.dir,
        &["broadcast", "create", "friends", &bob.phone, &carol.phone],
    );
    assert!(ok(&alice.dir, &["broadcast", "list"]).contains("friends"));
    let sent = json_lines(&ok(
        &alice.dir,
        &["--json", "broadcast", "send", "friends", "party!"],
    ));
    assert_eq!(sent.len(), 2);
    let texts = carol.sync_texts().await;
    assert!(texts.contains(&"party!".to_string()), "{texts:?}");
    assert!(
        texts.contains(&"hello, family".to_string()),
        "the forward: {texts:?}"
    );
}
