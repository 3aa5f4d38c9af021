//! Cluster mode: two `dak server` processes sharing a real PostgreSQL (a
//! database made for this test) and a real NATS. alice talks to node A,
//! bob to node B. `scripts/test.sh` starts both services if they are down;
//! DAK_TEST_POSTGRES_URL (an admin URL) and DAK_TEST_NATS_URL point elsewhere.

mod common;

use common::*;
use dak_client::{Event, TickState};
use dak_store::testing::FreshDb;

fn nats_url() -> String {
    std::env::var("DAK_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// The key directory's VRF key every node of `cluster` shares, as an
/// operator copies the first node's `kt-vrf.key` to the others (a node
/// with another key refuses to start: OPERATIONS.md).
fn shared_kt_key(cluster: &str) -> String {
    let path = std::env::temp_dir().join(format!("{cluster}-kt-vrf.key"));
    if !path.exists() {
        std::fs::write(&path, rand::random::<[u8; 32]>()).unwrap();
    }
    path.to_string_lossy().into_owned()
}

fn node(db: &FreshDb, cluster: &str) -> TestServer {
    let nats = nats_url();
    let kt_key = shared_kt_key(cluster);
    TestServer::build_with(
        &[
            ("DAK_STORE", db.url.as_str()),
            ("DAK_BUS", nats.as_str()),
            ("DAK_CLUSTER", cluster),
            ("DAK_KT_KEY", kt_key.as_str()),
            // Every test client registers from 127.0.0.1.
            ("DAK_CODES_PER_IP_PER_HOUR", "100000"),
            ("DAK_VERIFIES_PER_IP_PER_HOUR", "100000"),
            ("DAK_CODES_PER_RANGE_PER_HOUR", "100000"),
        ],
        true,
    )
}

#[tokio::test]
async fn a_message_crosses_nodes_through_postgres_and_nats() {
    let db = FreshDb::new("dak_cluster").await;
    let cluster = format!("dak-test-{}", rand::random::<u32>());
    let (node_a, node_b) = (node(&db, &cluster), node(&db, &cluster));
    let (alice, bob) = (alice(), bob());
    alice.register(&node_a).await;
    bob.register(&node_b).await;

    // bob is online on node B; alice writes through node A.
    let mut b = bob.connect().await;
    let from_memory = async || {
        let authority = node_b
            .metrics_url()
            .trim_start_matches("http://")
            .trim_end_matches("/metrics")
            .to_owned();
        let metrics = http_get(&format!("ws://{authority}"), "/metrics").await;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("dak_envelopes_from_memory_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no from-memory counter in {metrics}"))
    };
    let before = from_memory().await;
    let mut a = alice.connect().await;
    let sent = a.send_text(&bob.phone, "across the cluster").await.unwrap();
    assert_eq!(sent.recipient_devices, 1);
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            for e in b.next_events().await.unwrap() {
                if let Event::Message(m) = e {
                    return m.text;
                }
            }
        }
    })
    .await
    .expect("node B pushed the message: NATS woke bob's session");
    assert_eq!(got, "across the cluster");
    // bob's delivery receipt travels back the same way.
    a.wait_for_tick(&sent.id, TickState::Delivered, |_| {})
        .await
        .unwrap();
    // Node A committed what bob got since; node B pushed some of it from
    // node A's hints, without reading PostgreSQL (the cluster fast path).
    assert!(from_memory().await > before, "no envelope from memory");
}

#[tokio::test]
async fn an_offline_device_reads_on_any_node_what_another_node_acked() {
    let db = FreshDb::new("dak_cluster").await;
    let cluster = format!("dak-test-{}", rand::random::<u32>());
    let (mut node_a, node_b) = (node(&db, &cluster), node(&db, &cluster));
    let (alice, bob) = (alice(), bob());
    alice.register(&node_a).await;
    bob.register(&node_b).await;
    alice
        .connect()
        .await
        .send_text(&bob.phone, "kept in postgres")
        .await
        .unwrap();
    node_a.kill9();
    assert_eq!(bob.sync_texts().await, vec!["kept in postgres"]);
    // Readiness reflects the shared services.
    let ready = http_get(&node_b.url, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
}

/// Profiles that know all three nodes, registered through `first`.
async fn register_on_cluster(person: &Person, nodes: &[&TestServer], first: usize) {
    let list: Vec<String> = (0..nodes.len())
        .map(|i| nodes[(first + i) % nodes.len()].url.clone())
        .collect();
    let profile = person.profile();
    dak_client::Client::request_code(&profile, &list.join(","), &person.phone)
        .await
        .expect("request code");
    let code = nodes[first].code_for(&person.phone);
    dak_client::Client::verify(&profile, &code, "", "phone")
        .await
        .expect("verify");
}

/// The counting test, small: three nodes, pairs of devices writing to each
/// other while one node is killed -9 and restarted. Every message that got
/// its single tick must be shown exactly once to its recipient, in order.
#[tokio::test]
async fn killing_a_node_loses_nothing_acked_and_shows_nothing_twice() {
    const PAIRS: usize = 6;
    const PER_SENDER: usize = 40;
    let db = FreshDb::new("dak_cluster").await;
    let cluster = format!("dak-test-{}", rand::random::<u32>());
    let mut nodes = [
        node(&db, &cluster),
        node(&db, &cluster),
        node(&db, &cluster),
    ];
    let people: Vec<Person> = (0..PAIRS * 2)
        .map(|i| Person::new(&format!("+9198100{:05}", i)))
        .collect();
    {
        let refs: Vec<&TestServer> = nodes.iter().collect();
        for (i, p) in people.iter().enumerate() {
            register_on_cluster(p, &refs, i % 3).await;
        }
    }
    // Senders are the even people; each writes to the next one. Each says
    // which node it reached first, and how often it had to move.
    let (where_tx, mut where_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (go_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let moves = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut senders = Vec::new();
    for pair in 0..PAIRS {
        let (from, to) = (
            people[2 * pair].dir.clone(),
            people[2 * pair + 1].phone.clone(),
        );
        let (where_tx, mut go, moves) = (where_tx.clone(), go_tx.subscribe(), moves.clone());
        senders.push(tokio::spawn(async move {
            let patience = std::time::Duration::from_secs(60);
            let mut client = dak_client::Client::connect_patiently(
                dak_client::open_profile(&from).unwrap(),
                patience,
            )
            .await
            .unwrap();
            where_tx.send(client.server().to_string()).unwrap();
            go.recv().await.unwrap();
            for i in 0..PER_SENDER {
                match client.send_text(&to, &format!("m{i:03}")).await {
                    Ok(_) => {}
                    Err(e) if e.is_retryable() => {
                        moves.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        // Our node died. The message is in the outbox; reconnecting
                        // to any node flushes it, so it is not sent again by hand.
                        client = dak_client::Client::connect_patiently(
                            dak_client::open_profile(&from).unwrap(),
                            patience,
                        )
                        .await
                        .unwrap();
                    }
                    Err(e) => panic!("refused: {e}"),
                }
                tokio::time::sleep(std::time::Duration::from_millis(15)).await;
            }
            client.close().await;
        }));
    }
    // Kill the node that most senders use, in the middle of their sending.
    let mut on_node = std::collections::HashMap::new();
    for _ in 0..PAIRS {
        *on_node.entry(where_rx.recv().await.unwrap()).or_insert(0) += 1;
    }
    let busiest = on_node
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(url, _)| url.clone())
        .unwrap();
    let victim = nodes.iter().position(|n| n.url == busiest).unwrap();
    go_tx.send(()).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    nodes[victim].kill9();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    nodes[victim].restart();
    for s in senders {
        s.await.unwrap();
    }
    let moved = moves.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        moved >= 1,
        "the killed node's senders moved to another node"
    );

    let (acked, delivered, lost, duplicates) = count(&people, vec![Vec::new(); PAIRS]).await;
    println!(
        "acked {acked}, delivered {delivered}, lost {lost}, duplicates shown {duplicates} ({moved} failovers)"
    );
    assert_eq!(
        acked,
        PAIRS * PER_SENDER,
        "every message was eventually acked"
    );
    assert_eq!((lost, duplicates), (0, 0));
    assert_eq!(delivered, acked);
}

/// Counts, pair by pair (people[2k] wrote to people[2k+1]), what was acked
/// to the sender against what the recipient was shown: `live` as it
/// arrived, then a final sync. Checks that senders' outboxes are empty,
/// that the history holds each shown message once, and in order.
/// Returns (acked, delivered, lost, duplicates shown).
async fn count(people: &[Person], live: Vec<Vec<String>>) -> (usize, usize, usize, usize) {
    let (mut acked, mut delivered, mut lost, mut duplicates) = (0, 0, 0, 0);
    for (pair, shown) in live.into_iter().enumerate() {
        let (sender, receiver) = (&people[2 * pair], &people[2 * pair + 1]);
        let sent: Vec<String> = sender
            .profile()
            .conversation(&receiver.phone, 1000)
            .unwrap()
            .into_iter()
            .filter(|m| m.outgoing && m.acked)
            .map(|m| m.text)
            .collect();
        assert!(
            sender.profile().outbox().unwrap().is_empty(),
            "every message left the outbox"
        );
        let (unique, repeats, stored) = shown_and_stored(receiver, shown, &sender.phone).await;
        duplicates += repeats;
        assert_eq!(
            unique,
            stored.len(),
            "every stored message was shown once as it arrived"
        );
        let mut ordered = stored.clone();
        ordered.sort();
        assert_eq!(stored, ordered, "order per conversation");
        acked += sent.len();
        delivered += stored.len();
        lost += sent.iter().filter(|t| !stored.contains(t)).count();
    }
    (acked, delivered, lost, duplicates)
}

/// After one more sync by `who`: how many distinct texts it was shown as
/// they arrived, how many it was shown more than once, and the incoming
/// texts its profile holds in `chat` (the history the user sees).
async fn shown_and_stored(
    who: &Person,
    mut shown: Vec<String>,
    chat: &str,
) -> (usize, usize, Vec<String>) {
    let mut client =
        dak_client::Client::connect_patiently(who.profile(), std::time::Duration::from_secs(60))
            .await
            .unwrap();
    client
        .sync(|e| {
            if let Event::Message(m) = e {
                shown.push(m.text.clone());
            }
        })
        .await
        .unwrap();
    let mut unique = shown.clone();
    unique.sort();
    unique.dedup();
    let stored = who
        .profile()
        .conversation(chat, 1000)
        .unwrap()
        .into_iter()
        .filter(|m| !m.outgoing)
        .map(|m| m.text)
        .collect();
    (unique.len(), shown.len() - unique.len(), stored)
}

/// Runs a shell command of the machine's (restarting a shared service).
fn sh(cmd: &str) {
    let status = std::process::Command::new("bash")
        .args(["-c", cmd])
        .status()
        .expect("bash");
    assert!(status.success(), "`{cmd}` failed: {status}");
}

fn restart_nats() {
    assert!(
        std::env::var("DAK_TEST_NATS_URL").is_err(),
        "this test restarts the local NATS; unset DAK_TEST_NATS_URL"
    );
    sh(
        "pkill -x nats-server; for i in $(seq 50); do pgrep -x nats-server >/dev/null || break; sleep 0.1; done",
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    sh(
        "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
        -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log",
    );
}

fn restart_postgres() {
    assert!(
        std::env::var("DAK_TEST_POSTGRES_URL").is_err(),
        "this test restarts the local PostgreSQL; unset DAK_TEST_POSTGRES_URL"
    );
    sh(
        "for v in /etc/postgresql/*; do pg_ctlcluster --skip-systemctl-redirect $(basename $v) main restart -m fast; done",
    );
}

/// The counting test of issue 6: three nodes, senders and listening
/// recipients; one node is killed -9 and restarted, then NATS, then
/// PostgreSQL. It restarts shared services, so it is ignored in the normal
/// run and `scripts/test.sh` runs it on its own afterwards.
#[tokio::test]
#[ignore = "restarts the machine's NATS and PostgreSQL; scripts/test.sh runs it alone"]
async fn counting_through_node_nats_and_postgres_restarts() {
    // 200 clients by default; DAK_COUNTING_PAIRS / DAK_COUNTING_MESSAGES make
    // it bigger or longer (the soak variant), e.g. 500 and 2000.
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (pairs, per_sender) = (
        env("DAK_COUNTING_PAIRS", 100),
        env("DAK_COUNTING_MESSAGES", 30),
    );
    let db = FreshDb::new("dak_counting").await;
    let cluster = format!("dak-count-{}", rand::random::<u32>());
    let mut nodes = [
        node(&db, &cluster),
        node(&db, &cluster),
        node(&db, &cluster),
    ];
    let people: Vec<Person> = (0..pairs * 2)
        .map(|i| Person::new(&format!("+9198200{i:05}")))
        .collect();
    {
        let refs: Vec<&TestServer> = nodes.iter().collect();
        for (i, p) in people.iter().enumerate() {
            register_on_cluster(p, &refs, i % 3).await;
        }
    }
    let patience = std::time::Duration::from_secs(90);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Recipients stay online and record every message as it is shown.
    let mut listeners = Vec::new();
    for pair in 0..pairs {
        listeners.push(listen(
            people[2 * pair + 1].dir.clone(),
            stop.clone(),
            patience,
        ));
    }
    // Groups of 2 to 50 members (the seeds' outage was groups going
    // silent): the creator sends, every other member listens.
    let groups = make_groups(&nodes, &[2, 5, 12, 50]).await;
    let mut group_listeners = Vec::new();
    for (_, _, members) in &groups {
        for m in members {
            group_listeners.push(listen(m.dir.clone(), stop.clone(), patience));
        }
    }
    let mut senders = Vec::new();
    for pair in 0..pairs {
        let texts = (0..per_sender).map(|i| format!("m{i:03}")).collect();
        senders.push(send_all(
            people[2 * pair].dir.clone(),
            people[2 * pair + 1].phone.clone(),
            texts,
            patience,
        ));
    }
    for (g, (creator, key, _)) in groups.iter().enumerate() {
        let texts = (0..per_sender).map(|i| format!("g{g}-{i:03}")).collect();
        senders.push(send_all(creator.dir.clone(), key.clone(), texts, patience));
    }
    let pause = std::time::Duration::from_millis(600);
    tokio::time::sleep(pause).await;
    nodes[0].kill9();
    tokio::time::sleep(pause).await;
    nodes[0].restart();
    tokio::time::sleep(pause).await;
    restart_nats();
    tokio::time::sleep(pause).await;
    restart_postgres();
    for s in senders {
        s.await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut live: Vec<Vec<String>> = Vec::new();
    for l in listeners {
        live.push(l.await.unwrap());
    }
    let mut group_live: Vec<Vec<String>> = Vec::new();
    for l in group_listeners {
        group_live.push(l.await.unwrap());
    }

    let (acked, delivered, lost, duplicates) = count(&people, live).await;
    println!("acked {acked}, delivered {delivered}, lost {lost}, duplicates shown {duplicates}");
    assert_eq!(acked, pairs * per_sender);
    assert_eq!((lost, duplicates), (0, 0));
    assert_eq!(delivered, acked);
    let (acked, delivered, lost, duplicates) = count_groups(&groups, group_live).await;
    println!(
        "groups: acked {acked}, delivered to members {delivered}, lost {lost}, duplicates shown {duplicates}"
    );
    assert_eq!(acked, groups.len() * per_sender);
    assert_eq!((lost, duplicates), (0, 0));
}

/// A device that stays online through everything and records every text as
/// it is shown, reconnecting (to any node) whenever its connection breaks.
fn listen(
    dir: std::path::PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    patience: std::time::Duration,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut shown: Vec<String> = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok(mut client) = dak_client::Client::connect_patiently(
                dak_client::open_profile(&dir).unwrap(),
                patience,
            )
            .await
            else {
                continue;
            };
            loop {
                // Only the wait is timed out: recv_push is cancel-safe, handle_push is not.
                let next =
                    tokio::time::timeout(std::time::Duration::from_millis(300), client.recv_push())
                        .await;
                let push = match next {
                    Ok(Ok(push)) => push,
                    Ok(Err(_)) => break, // node, NATS or PostgreSQL trouble: reconnect
                    Err(_) if stop.load(std::sync::atomic::Ordering::Relaxed) => break,
                    Err(_) => continue,
                };
                match client.handle_push(push).await {
                    Ok(events) => shown.extend(events.into_iter().filter_map(|e| match e {
                        Event::Message(m) => Some(m.text),
                        _ => None,
                    })),
                    Err(_) => break,
                }
            }
        }
        shown
    })
}

/// Sends `texts` to the chat `to` (a number or a group key), 50 ms apart,
/// reconnecting through failures; ends with an empty outbox.
fn send_all(
    dir: std::path::PathBuf,
    to: String,
    texts: Vec<String>,
    patience: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let open = || dak_client::open_profile(&dir).unwrap();
        let mut client = dak_client::Client::connect_patiently(open(), patience)
            .await
            .unwrap();
        for text in texts {
            if let Err(e) = client.send_text(&to, &text).await {
                assert!(e.is_retryable(), "refused: {e}");
                // In the outbox; the next connection flushes it.
                client = dak_client::Client::connect_patiently(open(), patience)
                    .await
                    .unwrap();
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // Whatever the last failure left in the outbox goes out now.
        while !open().outbox().unwrap().is_empty() {
            client = dak_client::Client::connect_patiently(open(), patience)
                .await
                .unwrap();
        }
        client.close().await;
    })
}

/// One group per size: (its creator, its chat key, the other members),
/// each registered on the nodes in turn, the group created before the
/// counting starts.
async fn make_groups(nodes: &[TestServer], sizes: &[usize]) -> Vec<(Person, String, Vec<Person>)> {
    let refs: Vec<&TestServer> = nodes.iter().collect();
    let mut groups = Vec::new();
    for (g, size) in sizes.iter().enumerate() {
        let people: Vec<Person> = (0..*size)
            .map(|m| Person::new(&format!("+9198210{g}{m:04}")))
            .collect();
        for (i, p) in people.iter().enumerate() {
            register_on_cluster(p, &refs, i % refs.len()).await;
        }
        let mut people = people.into_iter();
        let creator = people.next().unwrap();
        let members: Vec<Person> = people.collect();
        let phones: Vec<String> = members.iter().map(|m| m.phone.clone()).collect();
        let mut client = dak_client::Client::connect_patiently(
            creator.profile(),
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap();
        let info = client
            .create_group(&format!("group {g}"), &phones, false)
            .await
            .unwrap();
        client.close().await;
        groups.push((creator, info.key, members));
    }
    groups
}

/// For each group: every text its creator got a single tick for is stored
/// once by every other member, shown once as it arrived, in order.
/// `live` holds what each member was shown, members in `groups` order.
async fn count_groups(
    groups: &[(Person, String, Vec<Person>)],
    live: Vec<Vec<String>>,
) -> (usize, usize, usize, usize) {
    let (mut acked, mut delivered, mut lost, mut duplicates) = (0, 0, 0, 0);
    let mut live = live.into_iter();
    for (creator, key, members) in groups {
        let sent: Vec<String> = creator
            .profile()
            .conversation(key, 1000)
            .unwrap()
            .into_iter()
            .filter(|m| m.outgoing && m.acked)
            .map(|m| m.text)
            .collect();
        assert!(creator.profile().outbox().unwrap().is_empty());
        acked += sent.len();
        for member in members {
            let shown = live.next().expect("one record per member");
            let (unique, repeats, stored) = shown_and_stored(member, shown, key).await;
            duplicates += repeats;
            assert_eq!(
                unique,
                stored.len(),
                "{}: every stored group message was shown once as it arrived",
                member.phone
            );
            let mut ordered = stored.clone();
            ordered.sort();
            assert_eq!(stored, ordered, "order in the group");
            delivered += stored.len();
            lost += sent.iter().filter(|t| !stored.contains(t)).count();
        }
    }
    (acked, delivered, lost, duplicates)
}

/// A node whose media goes to the shared S3-compatible bucket (Garage,
/// which `scripts/garage.sh` starts).
fn media_node(db: &FreshDb, cluster: &str) -> TestServer {
    let nats = nats_url();
    let s3 = dak_store::testing::test_s3_env();
    let kt_key = shared_kt_key(cluster);
    let mut env: Vec<(&str, &str)> = vec![
        ("DAK_STORE", db.url.as_str()),
        ("DAK_BUS", nats.as_str()),
        ("DAK_CLUSTER", cluster),
        ("DAK_KT_KEY", kt_key.as_str()),
        ("DAK_CODES_PER_IP_PER_HOUR", "100000"),
        ("DAK_VERIFIES_PER_IP_PER_HOUR", "100000"),
        ("DAK_CODES_PER_RANGE_PER_HOUR", "100000"),
    ];
    env.extend(s3.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    TestServer::build_with(&env, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_uploaded_on_one_node_is_served_by_the_other_from_s3() {
    let db = FreshDb::new("dak_cluster").await;
    let cluster = format!("dak-test-{}", rand::random::<u32>());
    let (node_a, node_b) = (media_node(&db, &cluster), media_node(&db, &cluster));
    let (alice, bob) = (alice(), bob());
    alice.register(&node_a).await;
    bob.register(&node_b).await;
    let dir = tempfile::tempdir().unwrap();
    let marker = "S3MARKER5521";
    let file = dir.path().join(format!("{marker}-certificate.pdf"));
    let mut bytes: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
    bytes[4096..4096 + marker.len()].copy_from_slice(marker.as_bytes());
    std::fs::write(&file, &bytes).unwrap();
    ok(
        &alice.dir,
        &["send", &bob.phone, "--file", file.to_str().unwrap()],
    );
    // While the bucket holds it: nothing of its bytes or name in the object
    // store's files (the local Garage's), either node's data or their logs.
    let garage = std::env::var("DAK_GARAGE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/dak-garage")
        });
    let scanned: usize = [garage, node_a.data.clone(), node_b.data.clone()]
        .iter()
        .map(|root| assert_no_marker_under(root, marker))
        .sum();
    assert!(
        scanned > bytes.len(),
        "the ciphertext was among what was scanned"
    );
    for node in [&node_a, &node_b] {
        assert!(!node.log_text().contains(marker), "a log names it");
    }
    let got = ok(&bob.dir, &["--json", "sync"]);
    let lines: Vec<serde_json::Value> = got
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let saved = lines
        .iter()
        .find(|v| v["type"] == "media_saved")
        .unwrap_or_else(|| panic!("bob saved nothing: {got}"));
    assert_eq!(
        std::fs::read(saved["path"].as_str().unwrap()).unwrap(),
        bytes
    );
    // The bytes were in the bucket, not on either node's disk, and are
    // gone from it now that bob fetched them.
    for node in [&node_a, &node_b] {
        assert!(
            !node.data.join("media").join("blobs").exists()
                || files_under(&node.data.join("media")).is_empty()
        );
    }
    let blob = lines.iter().find(|v| v["type"] == "message").unwrap()["attachment"]["blob_id"]
        .as_str()
        .unwrap()
        .to_string();
    let s3 = dak_store::S3BlobStore::new(&dak_store::testing::test_s3()).unwrap();
    use dak_store::BlobStore;
    assert_eq!(
        s3.objects(&hex::decode(blob.replace('-', "")).unwrap())
            .await
            .unwrap(),
        Vec::<String>::new(),
        "the bucket holds nothing of it"
    );
}
