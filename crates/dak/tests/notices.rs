//! The operator's notices end to end: `dak admin notice` on the server's
//! data directory, the real server picking the log up, devices checking
//! each notice against the key they pinned at registration and the log
//! they have seen, the CLI's frame, and `/status`, with the store up and
//! with it cut off (a real PostgreSQL database refusing connections).

mod common;

use std::time::Duration;

use common::*;
use dak_client::{Client, Event};
use dak_store::testing::FreshDb;

/// `dak admin --data DATA notice ARGS...`: (success, stdout, stderr).
fn admin(server: &TestServer, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dak"))
        .arg("admin")
        .arg("--data")
        .arg(&server.data)
        .arg("notice")
        .args(args)
        .output()
        .expect("run dak admin");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn publish(server: &TestServer, args: &[&str]) -> String {
    let (ok, out, err) = admin(server, args);
    assert!(ok, "dak admin notice {args:?} failed: {err}");
    out
}

/// Waits for the next notice event on a live client.
async fn next_notice(client: &mut Client) -> Event {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Some(e) = client.take_notice_events().into_iter().next() {
                return e;
            }
            for e in client.next_events().await.expect("events") {
                if matches!(e, Event::OperatorNotice(_) | Event::NoticeRefused { .. }) {
                    return e;
                }
            }
        }
    })
    .await
    .expect("a notice event within 15 s")
}

fn title_of(e: &Event) -> &str {
    match e {
        Event::OperatorNotice(n) => &n.title,
        other => panic!("expected a notice, got {other:?}"),
    }
}

fn body(response: &str) -> &str {
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("")
}

async fn status_json(server: &TestServer) -> (String, serde_json::Value) {
    let response = http_get(&server.url, "/status").await;
    let head = response.lines().next().unwrap_or_default().to_string();
    let v = serde_json::from_str(body(&response))
        .unwrap_or_else(|e| panic!("/status is not JSON ({e}): {response}"));
    (head, v)
}

/// Waits until the server serves a log of `length` entries (it reads the
/// file again each second).
async fn wait_for_log(server: &TestServer, length: u64) {
    for _ in 0..100 {
        let (_, status) = status_json(server).await;
        if status["notice_log"]["length"] == length {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server never served {length} notices");
}

#[tokio::test]
async fn a_notice_reaches_connected_devices_the_cli_and_the_status_page() {
    let server = TestServer::start_insecure();
    let (alice, bob) = registered_pair(&server).await;
    let mut live = alice.connect().await;

    let out = publish(
        &server,
        &[
            "publish",
            "--kind",
            "incident",
            "--title",
            "Messages are delayed",
            "--what",
            "A disk filled up.\nWe are moving the store.",
            "--affected",
            "sending, in India",
            "--not-affected",
            "message contents: they are end-to-end encrypted",
            "--advice",
            "nothing: messages go out when it is back",
            "--started",
            "25m",
            "--aware",
            "10m",
        ],
    );
    assert!(out.contains("published notice 0"), "{out}");

    // Pushed to the connected device within seconds, checked.
    let got = next_notice(&mut live).await;
    assert_eq!(title_of(&got), "Messages are delayed");
    let Event::OperatorNotice(n) = &got else {
        unreachable!()
    };
    assert_eq!((n.kind, n.state, n.thread), ("incident", "ongoing", 0));
    assert!(n.aware_ms > n.started_ms && n.started_ms > 0);

    // /status: the incident and the components, as JSON and as a page.
    let (head, status) = status_json(&server).await;
    assert!(head.contains("200"), "{head}");
    assert_eq!(status["incidents"][0]["title"], "Messages are delayed");
    assert_eq!(status["incidents"][0]["state"], "ongoing");
    assert_eq!(status["ok"], false, "an ongoing incident is not ok");
    let store = status["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "store")
        .unwrap();
    assert_eq!(store["ok"], true);
    let page = http_get_with(&server.url, "/status", "Accept: text/html\r\n").await;
    assert!(page.contains("text/html") && page.contains("Messages are delayed"));
    assert!(page.contains("We are moving the store."));

    // The CLI: framed on stderr at connect, and in `dak notices`. A chat
    // message cannot start a line with the frame's mark.
    live.send_text(
        &bob.phone,
        "hello\n▌━━ NOTICE FROM THE SERVER'S OPERATOR: send your PIN",
    )
    .await
    .expect("send");
    let (ok_sync, stdout, stderr) = dak(&bob.dir, &["sync"]);
    assert!(ok_sync, "{stderr}");
    assert!(
        stderr.contains("▌━━ NOTICE FROM THE SERVER'S OPERATOR")
            && stderr.contains("Messages are delayed"),
        "the notice is framed at connect: {stderr}"
    );
    assert!(stdout.contains("send your PIN"), "{stdout}");
    assert!(
        !stdout.lines().any(|l| l.starts_with('▌')),
        "no line of a message starts like a notice: {stdout}"
    );
    let listed = ok(&bob.dir, &["--json", "notices"]);
    let v: serde_json::Value = serde_json::from_str(listed.trim()).unwrap();
    assert_eq!(v["notices"].as_array().unwrap().len(), 1);
    assert_eq!(v["notices"][0]["title"], "Messages are delayed");
    // The log bob's device checked is the one the server shows.
    let (_, status) = status_json(&server).await;
    assert_eq!(v["log"]["length"], 1);
    assert_eq!(v["log"]["head"], status["notice_log"]["head"]);

    // An update resolves it; the device sees it, /status moves it to history.
    publish(
        &server,
        &[
            "update",
            "0",
            "--what",
            "The store is back; nothing was lost.",
            "--resolved",
        ],
    );
    let update = next_notice(&mut live).await;
    let Event::OperatorNotice(u) = &update else {
        panic!("{update:?}")
    };
    assert_eq!((u.thread, u.state, u.index), (0, "resolved", 1));
    let (_, status) = status_json(&server).await;
    assert_eq!(status["incidents"][0]["state"], "resolved");
    assert_eq!(status["ok"], true);
    assert_eq!(status["notice_log"]["length"], 2);

    // A resolved incident takes no more updates; a bad kind is refused.
    let (ok_again, _, err) = admin(&server, &["update", "0", "--what", "x"]);
    assert!(!ok_again && err.contains("resolved"), "{err}");
    let (ok_kind, _, _) = admin(&server, &["publish", "--kind", "rumour", "--title", "x"]);
    assert!(!ok_kind);
    live.close().await;
}

#[tokio::test]
async fn a_targeted_notice_reaches_only_its_account() {
    let server = TestServer::start_insecure();
    let (alice, bob) = registered_pair(&server).await;
    let mut alice_live = alice.connect().await;
    let mut bob_live = bob.connect().await;
    let out = publish(
        &server,
        &[
            "target",
            &alice.phone,
            "--title",
            "Your phone may have been attacked",
            "--what",
            "An attacker tried to reach your phone through a call.",
            "--advice",
            "Update the app and your phone's system.",
        ],
    );
    assert!(out.contains("only"), "{out}");
    let got = next_notice(&mut alice_live).await;
    let Event::OperatorNotice(n) = &got else {
        panic!("{got:?}")
    };
    assert!(n.targeted);
    assert_eq!(n.kind, "targeted-attack");
    assert_eq!(n.title, "Your phone may have been attacked");

    // bob's device checks the log entry but has nothing to show.
    let quiet = tokio::time::timeout(Duration::from_secs(3), next_notice(&mut bob_live)).await;
    assert!(quiet.is_err(), "bob was shown {quiet:?}");
    assert!(bob_live.notices().unwrap().is_empty());
    bob_live.close().await;

    // Shown once, also after reconnecting (the server sends it again).
    alice_live.close().await;
    let listed = ok(&alice.dir, &["--json", "notices"]);
    let v: serde_json::Value = serde_json::from_str(listed.trim()).unwrap();
    assert_eq!(v["notices"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(v["notices"][0]["targeted"], true);

    // The public side names no one.
    let (_, status) = status_json(&server).await;
    assert_eq!(status["targeted_notices"], 1);
    assert!(!status.to_string().contains(&alice.phone));
    let log = std::fs::read(server.data.join("notices.log")).unwrap();
    assert!(!contains(&log, &alice.phone));
    assert!(!contains(&log, "attacked"));
}

#[tokio::test]
async fn a_forged_notice_and_one_missing_from_the_log_are_refused() {
    let mut server = TestServer::start_insecure();
    let (alice, _bob) = registered_pair(&server).await;
    publish(
        &server,
        &[
            "publish",
            "--kind",
            "maintenance",
            "--title",
            "Upgrade at 02:00",
        ],
    );
    let mut live = alice.connect().await;
    assert_eq!(title_of(&next_notice(&mut live).await), "Upgrade at 02:00");

    // The operator tells this device a second story: the log is rewritten
    // under the running server (same key, same length and more), so the
    // next entry pushed does not follow the one the device has.
    let log = server.data.join("notices.log");
    std::fs::remove_file(&log).unwrap();
    publish(
        &server,
        &[
            "publish",
            "--kind",
            "maintenance",
            "--title",
            "Nothing planned",
        ],
    );
    publish(
        &server,
        &["publish", "--kind", "incident", "--title", "Rewritten"],
    );
    match next_notice(&mut live).await {
        Event::NoticeRefused { reason } => {
            assert!(reason.contains("different history"), "{reason}")
        }
        other => panic!("a notice off the device's log was shown: {other:?}"),
    }
    live.close().await;
    // At the next connect too; nothing of the second story is kept.
    let (_, _, stderr) = dak(&alice.dir, &["sync"]);
    assert!(stderr.contains("refused"), "{stderr}");
    let titles: Vec<String> = dak_client::notices::notices(&alice.profile())
        .unwrap()
        .into_iter()
        .map(|n| n.title)
        .collect();
    assert_eq!(titles, vec!["Upgrade at 02:00"]);

    // A server with another notice key (reinstalled, or an impostor with
    // the TLS key): its notices are not shown.
    server.kill9();
    std::fs::remove_file(server.data.join("notice.key")).unwrap();
    std::fs::remove_file(&log).unwrap();
    server.restart();
    publish(
        &server,
        &["publish", "--kind", "security", "--title", "Forged warning"],
    );
    let mut client = alice.connect().await;
    match next_notice(&mut client).await {
        Event::NoticeRefused { reason } => assert!(reason.contains("key"), "{reason}"),
        other => panic!("a notice under another key was shown: {other:?}"),
    }
    assert_eq!(client.notices().unwrap().len(), 1);
    client.close().await;
}

#[tokio::test]
async fn a_notice_published_while_the_store_is_down_reaches_devices_and_status() {
    let db = FreshDb::new("dak_notices").await;
    let nats =
        std::env::var("DAK_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let cluster = format!("dak-test-{}", rand::random::<u32>());
    let server = TestServer::build_with(
        &[
            ("DAK_STORE", db.url.as_str()),
            ("DAK_BUS", nats.as_str()),
            ("DAK_CLUSTER", cluster.as_str()),
        ],
        true,
    );
    let (alice, bob) = registered_pair(&server).await;
    let mut live = alice.connect().await;

    db.set_reachable(false).await;
    // /status says so, within its checks' deadline, and still answers.
    let mut down = false;
    for _ in 0..20 {
        let (head, status) = status_json(&server).await;
        let store = status["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "store")
            .cloned()
            .unwrap();
        if store["ok"] == false {
            assert!(head.contains("503"), "{head}");
            down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(down, "/status never saw the store down");

    publish(
        &server,
        &[
            "publish",
            "--kind",
            "incident",
            "--title",
            "The message store is down",
            "--advice",
            "Keep the app open; messages go out when it is back.",
        ],
    );
    assert_eq!(
        title_of(&next_notice(&mut live).await),
        "The message store is down"
    );
    let (_, status) = status_json(&server).await;
    assert_eq!(status["incidents"][0]["title"], "The message store is down");

    // A device that cannot get in is told what it knows.
    let (sent, _, stderr) = dak(&bob.dir, &["send", &alice.phone, "are you there?"]);
    assert!(!sent);
    assert!(
        stderr.contains("has not been working for this device since")
            && stderr.contains("1 message(s) waiting to send"),
        "{stderr}"
    );
    // bob's device could not log in, but it read the notice before
    // authenticating, and says it.
    assert!(
        stderr.contains("▌━━ NOTICE FROM THE SERVER'S OPERATOR")
            && stderr.contains("The message store is down"),
        "{stderr}"
    );

    db.set_reachable(true).await;
    let mut up = false;
    for _ in 0..40 {
        let (head, _) = status_json(&server).await;
        if head.contains("200") {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(up, "/status never saw the store back");
    live.close().await;
}

#[tokio::test]
async fn devices_that_talk_find_out_that_the_operator_told_them_different_stories() {
    let server = TestServer::start_insecure();
    let (alice, bob) = registered_pair(&server).await;
    publish(
        &server,
        &[
            "publish",
            "--kind",
            "security",
            "--title",
            "We were breached",
        ],
    );
    let mut a = alice.connect().await;
    assert_eq!(title_of(&next_notice(&mut a).await), "We were breached");
    a.close().await;

    // The operator rewrites its log before bob's device reads it: bob is
    // shown a consistent log with another story, and alone could not know.
    std::fs::remove_file(server.data.join("notices.log")).unwrap();
    publish(
        &server,
        &["publish", "--kind", "maintenance", "--title", "All is well"],
    );
    // The server re-reads its log within a second.
    for _ in 0..40 {
        let (_, status) = status_json(&server).await;
        if status["incidents"][0]["title"] == "All is well" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut b = bob.connect().await;
    assert_eq!(title_of(&next_notice(&mut b).await), "All is well");
    b.send_text(&alice.phone, "did you hear?").await.unwrap();
    b.close().await;

    // alice's delivery receipt carries what her device was told (inside
    // MLS); bob's device compares it with its own.
    let events = sync_events(&alice).await;
    assert_eq!(texts(&events), vec!["did you hear?"]);
    let events = sync_events(&bob).await;
    let said: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            Event::NoticeRefused { reason } => Some(reason),
            _ => None,
        })
        .collect();
    assert!(
        said.iter()
            .any(|r| r.contains(&alice.phone) && r.contains("two different stories")),
        "{said:?}"
    );
    // Said once, not at every receipt.
    ok(&bob.dir, &["send", &alice.phone, "again"]);
    assert_eq!(texts(&sync_events(&alice).await), vec!["again"]);
    let again = sync_events(&bob).await;
    assert!(
        again.iter().any(|e| matches!(
            e,
            Event::Tick {
                state: dak_client::TickState::Delivered,
                ..
            }
        )),
        "alice's receipt came: {again:?}"
    );
    assert!(
        !again.iter().any(|e| matches!(e, Event::NoticeRefused { reason } if reason.contains("two different stories"))),
        "{again:?}"
    );
}

/// `dak audit notices`: an outside auditor with a profile of its own (never
/// registered) reads the whole log, sees it grow between audits, and
/// catches the operator rewriting it, which no single device can prove.
#[tokio::test]
async fn an_outside_auditor_checks_the_log_grows_and_catches_a_rewrite() {
    let server = TestServer::start_insecure();
    let auditor = tempfile::tempdir().unwrap();
    let audit = |server: &TestServer| {
        dak(
            auditor.path(),
            &["--json", "audit", "notices", "--server", &server.url],
        )
    };
    for title in ["Upgrade at 02:00", "Upgrade done"] {
        publish(
            &server,
            &["publish", "--kind", "maintenance", "--title", title],
        );
    }
    publish(
        &server,
        &["publish", "--kind", "incident", "--title", "SMS delays"],
    );
    wait_for_log(&server, 3).await;
    let (ok, out, err) = audit(&server);
    assert!(ok, "{err}");
    let first = json_lines(&out).pop().unwrap();
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(first["checked"]["length"], 3);
    assert_eq!(first["before"]["length"], 0);

    publish(
        &server,
        &[
            "update",
            "2",
            "--resolved",
            "--what",
            "Delivered late, none lost",
        ],
    );
    wait_for_log(&server, 4).await;
    let (ok, out, err) = audit(&server);
    assert!(ok, "{err}");
    let second = json_lines(&out).pop().unwrap();
    assert_eq!(second["before"]["length"], 3);
    assert_eq!(second["checked"]["length"], 4);

    // The operator removes what it said: the log cut back to its first two
    // entries (each a 4-byte length, then the entry). The audit fails.
    let log = server.data.join("notices.log");
    let bytes = std::fs::read(&log).unwrap();
    let mut cut = 0;
    for _ in 0..2 {
        let len = u32::from_be_bytes(bytes[cut..cut + 4].try_into().unwrap()) as usize;
        cut += 4 + len;
    }
    std::fs::write(&log, &bytes[..cut]).unwrap();
    wait_for_log(&server, 2).await;
    let (ok, out, err) = audit(&server);
    assert!(!ok, "a shortened log passed the audit: {out}");
    let short = json_lines(&out).pop().unwrap();
    assert!(
        short["refused"][0]
            .as_str()
            .unwrap()
            .contains("fewer than the 4"),
        "{short} {err}"
    );

    // The operator rewrites its log: the same key, as long and longer, but
    // another story. The auditor refuses it and keeps what it had checked.
    std::fs::remove_file(&log).unwrap();
    for title in [
        "Nothing happened",
        "Nothing at all",
        "Really nothing",
        "Still nothing",
        "More",
    ] {
        publish(
            &server,
            &["publish", "--kind", "maintenance", "--title", title],
        );
    }
    wait_for_log(&server, 5).await;
    let (ok, out, err) = audit(&server);
    assert!(!ok, "a rewritten log passed the audit: {out}");
    assert!(err.contains("does not check"), "{err}");
    let third = json_lines(&out).pop().unwrap();
    assert_eq!(third["ok"], false);
    assert!(
        third["refused"][0]
            .as_str()
            .unwrap()
            .contains("different history"),
        "{third}"
    );
    assert_eq!(
        third["checked"], second["checked"],
        "nothing of the rewrite is kept"
    );
}
