//! Bots for businesses and public services, through the real binary: the
//! real server, a real `dak bot serve` (its own device), a webhook
//! receiver written here that checks every signature, and people on the
//! CLI. The train-ticket flow end to end (lists, buttons, a ticket); a
//! choice that reaches the webhook once though the webhook failed twice;
//! the 24-hour window, templates and STOP; a bot killed with events
//! waiting loses none; bad requests get clear errors.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::*;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::{Value, json};
use sha2::Sha256;

const SECRET: &str = "a-webhook-secret-for-the-tests-0123";
const TOKEN: &str = "an-api-token-for-the-tests-456789";
/// A receiver refuses a request signed longer ago than this.
const REPLAY_WINDOW_SECS: i64 = 300;

/// The service's webhook: checks each request's signature and timestamp,
/// refuses a replayed event id, and can be told to fail.
#[derive(Default)]
struct Receiver {
    /// Accepted events, in order.
    events: Vec<Value>,
    /// Requests per event id, failed ones included.
    attempts: HashMap<String, usize>,
    accepted_ids: HashSet<String>,
    /// Answer 500 to this many more events of type `fail_type`.
    fail_left: usize,
    fail_type: String,
    /// Answer 503 to everything.
    down: bool,
    bad_signatures: usize,
    /// The last accepted request, to play it again.
    last: Option<(HeaderMap, Bytes)>,
}

type Shared = Arc<Mutex<Receiver>>;

async fn hook(State(r): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let timestamp: i64 = header("dak-timestamp").parse().unwrap_or(0);
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(&body);
    let signed = header("dak-signature")
        .strip_prefix("v1=")
        .and_then(|h| hex::decode(h).ok())
        .is_some_and(|sig| mac.verify_slice(&sig).is_ok());
    let now = chrono::Utc::now().timestamp();
    let mut r = r.lock();
    if !signed || (now - timestamp).abs() > REPLAY_WINDOW_SECS {
        r.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let event: Value = serde_json::from_slice(&body).unwrap();
    let id = header("dak-event-id");
    assert_eq!(event["id"], id, "the body names the event it is");
    *r.attempts.entry(id.clone()).or_default() += 1;
    if r.down {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if r.fail_left > 0 && event["type"] == r.fail_type.as_str() {
        r.fail_left -= 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    if !r.accepted_ids.insert(id) {
        // Handled before (a retry after a lost answer, or a replay): say
        // yes, and do nothing again.
        return StatusCode::OK;
    }
    r.events.push(event);
    r.last = Some((headers, body));
    StatusCode::OK
}

/// Starts the receiver; its URL.
async fn start_receiver(r: Shared) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(r);
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A running `dak bot serve`.
struct Bot {
    child: Child,
    api: String,
    http: reqwest::Client,
}

impl Bot {
    fn start(profile: &Path, webhook: &str, files: &Path) -> Bot {
        std::fs::write(
            files.join("templates.toml"),
            "[certificate_ready]\ntext = \"Your {{1}} certificate (application {{2}}) is ready.\"\n",
        )
        .unwrap();
        Bot::start_with(
            profile,
            webhook,
            files,
            "127.0.0.1:0",
            &files.join("templates.toml"),
        )
    }

    /// `dak bot serve` with its API on `listen` and these templates; the
    /// secret and token are written to `files`.
    fn start_with(
        profile: &Path,
        webhook: &str,
        files: &Path,
        listen: &str,
        templates: &Path,
    ) -> Bot {
        std::fs::write(files.join("secret"), SECRET).unwrap();
        std::fs::write(files.join("token"), TOKEN).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_dak"))
            .arg("--profile")
            .arg(profile)
            .args([
                "--json",
                "bot",
                "serve",
                "--listen",
                listen,
                "--webhook",
                webhook,
            ])
            .arg("--secret-file")
            .arg(files.join("secret"))
            .arg("--token-file")
            .arg(files.join("token"))
            .arg("--templates")
            .arg(templates)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dak bot serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        Bot {
            child,
            api: format!("http://{}", v["listening"].as_str().unwrap()),
            http: reqwest::Client::new(),
        }
    }

    /// POST /v1/messages: (status, answer).
    async fn send(&self, message: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/v1/messages", self.api))
            .bearer_auth(TOKEN)
            .json(&message)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// A send that must succeed: the message's id.
    async fn sent(&self, message: Value) -> String {
        let (status, answer) = self.send(message).await;
        assert_eq!(status, 201, "{answer}");
        answer["id"].as_str().unwrap().to_string()
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.api))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits (up to 30 s) until the receiver holds an event matching `f`.
async fn event_where(r: &Shared, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..300 {
        if let Some(e) = r.lock().events.iter().find(|e| f(e)) {
            return e.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no {what} reached the webhook; it has {:#?}",
        r.lock().events
    );
}

/// The bot's number registered on `server`, a webhook receiver, and a
/// directory for the bot's secret, token and templates:
/// (the bot's person, the receiver, its URL, the directory and its path).
async fn bot_world(server: &TestServer) -> (Person, Shared, String, tempfile::TempDir, PathBuf) {
    let bot_person = Person::new(BOT);
    bot_person.register(server).await;
    let receiver: Shared = Arc::default();
    let url = start_receiver(receiver.clone()).await;
    let files = tempfile::tempdir().unwrap();
    let path = files.path().to_path_buf();
    (bot_person, receiver, url, files, path)
}

/// The message `id` as the person's `dak sync --json` shows it.
fn synced_message(profile: &Path, id: &str) -> Value {
    for _ in 0..50 {
        let out = ok(profile, &["--json", "sync"]);
        if let Some(m) = json_lines(&out).into_iter().find(|v| v["id"] == id) {
            return m;
        }
        let history = ok(profile, &["--json", "history", "+919800000100"]);
        if let Some(m) = json_lines(&history).into_iter().find(|v| v["id"] == id) {
            return m;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("message {id} never arrived");
}

const BOT: &str = "+919800000100";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_train_ticket_is_bought_from_a_bot_with_lists_and_buttons() {
    let server = TestServer::start();
    let rider = alice();
    rider.register(&server).await;
    let (bot_person, receiver, url, _files, files) = bot_world(&server).await;
    let bot = Bot::start(&bot_person.dir, &url, &files);

    // The rider writes; the webhook gets it, signed.
    ok(&rider.dir, &["send", BOT, "ticket"]);
    let first = event_where(&receiver, "the rider's message", |e| {
        e["type"] == "message" && e["message"]["text"] == "ticket"
    })
    .await;
    assert_eq!(first["from"], rider.phone);
    assert_eq!(first["chat"], rider.phone);

    // The bot answers with a list of stations.
    let list = bot
        .sent(json!({
            "to": rider.phone,
            "text": "From which station?",
            "interactive": {
                "header": "Dak Rail",
                "list": {"button": "Stations", "sections": [
                    {"title": "Western line", "rows": [
                        {"id": "ccg", "title": "Churchgate", "description": "Zone 1"},
                        {"id": "dadar", "title": "Dadar", "description": "Zone 2"}
                    ]},
                    {"title": "Central line", "rows": [
                        {"id": "csmt", "title": "CSMT"}
                    ]}
                ]}
            }
        }))
        .await;
    let shown = synced_message(&rider.dir, &list);
    assert_eq!(
        shown["interactive"]["list"]["sections"][0]["rows"][1]["title"],
        "Dadar"
    );
    let history = ok(&rider.dir, &["history", BOT]);
    assert!(
        history.contains("Stations: Western line: [1] Churchgate (Zone 1) [2] Dadar (Zone 2) Central line: [3] CSMT"),
        "{history}"
    );

    // The rider picks Dadar: the webhook is told the bot's own id and title.
    ok(&rider.dir, &["choose", &list, "2"]);
    let picked = event_where(&receiver, "the station chosen", |e| e["type"] == "choice").await;
    assert_eq!(
        picked["message"]["choice"],
        json!({"message_id": list, "id": "dadar", "title": "Dadar"})
    );
    assert_eq!(picked["message"]["text"], "Dadar");

    // Buttons to confirm; the webhook fails twice on the answer and still
    // gets it exactly once.
    {
        let mut r = receiver.lock();
        r.fail_type = "choice".into();
        r.fail_left = 2;
    }
    let confirm = bot
        .sent(json!({
            "to": rider.phone,
            "text": "Churchgate → Dadar, second class: ₹10. Buy?",
            "interactive": {"buttons": [{"id": "buy", "title": "Buy"}, {"id": "cancel", "title": "Cancel"}]}
        }))
        .await;
    synced_message(&rider.dir, &confirm);
    // A choice that is not there is refused, saying which there are.
    let (fine, _, err) = dak(&rider.dir, &["choose", &confirm, "3"]);
    assert!(!fine && err.contains("from 1 to 2"), "{err}");
    ok(&rider.dir, &["choose", &confirm, "buy"]);
    let bought = event_where(&receiver, "the purchase", |e| {
        e["type"] == "choice" && e["message"]["choice"]["id"] == "buy"
    })
    .await;
    let id = bought["id"].as_str().unwrap().to_string();
    assert_eq!(
        receiver.lock().attempts[&id],
        3,
        "two failures, then delivered"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    {
        let r = receiver.lock();
        assert_eq!(
            r.events.iter().filter(|e| e["id"] == id.as_str()).count(),
            1
        );
        assert_eq!(r.bad_signatures, 0);
    }

    // The ticket, and its ticks as the API and the webhook tell them.
    let ticket = bot
        .sent(json!({"to": rider.phone, "text": "Ticket DR-4471: Churchgate → Dadar, valid 1 hour.", "reply_to": confirm}))
        .await;
    let got = synced_message(&rider.dir, &ticket);
    assert!(got["text"].as_str().unwrap().contains("DR-4471"));
    event_where(&receiver, "the ticket's delivery", |e| {
        e["type"] == "status" && e["message_id"] == ticket.as_str() && e["status"] == "delivered"
    })
    .await;
    ok(&rider.dir, &["read", "--all"]);
    event_where(&receiver, "the ticket read", |e| {
        e["type"] == "status" && e["message_id"] == ticket.as_str() && e["status"] == "read"
    })
    .await;
    let (code, status) = bot.get(&format!("/v1/messages/{ticket}")).await;
    assert_eq!(code, 200);
    assert_eq!(status["status"], "read");
    assert_eq!(status["devices"][0]["phone"], rider.phone);

    // A captured request played again does nothing: its event id was
    // handled (a replay), or its body changed (the signature fails).
    let (headers, body) = receiver.lock().last.clone().unwrap();
    let handled = receiver.lock().events.len();
    let replay = |body: Vec<u8>| {
        let mut req = reqwest::Client::new().post(&url).body(body);
        for name in ["dak-timestamp", "dak-signature", "dak-event-id"] {
            req = req.header(name, headers.get(name).unwrap().to_str().unwrap());
        }
        req.send()
    };
    assert_eq!(replay(body.to_vec()).await.unwrap().status(), 200);
    let mut changed = body.to_vec();
    changed.push(b' ');
    assert_eq!(replay(changed).await.unwrap().status(), 401);
    assert_eq!(receiver.lock().events.len(), handled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_go_outside_the_24_hour_window_and_stop_stops_them() {
    let server = TestServer::start();
    let citizen = bob();
    citizen.register(&server).await;
    let (bot_person, receiver, url, _files, files) = bot_world(&server).await;
    let bot = Bot::start(&bot_person.dir, &url, &files);

    // Never written to the bot: no free text, but a template.
    let (code, err) = bot
        .send(json!({"to": citizen.phone, "text": "Hello!"}))
        .await;
    assert_eq!(
        (code, err["error"]["code"].as_str()),
        (403, Some("outside_window")),
        "{err}"
    );
    let template = json!({"to": citizen.phone, "template": {"name": "certificate_ready", "params": ["birth", "WB-2026-0042"]}});
    let ready = bot.sent(template.clone()).await;
    let got = synced_message(&citizen.dir, &ready);
    assert_eq!(
        got["text"],
        "Your birth certificate (application WB-2026-0042) is ready."
    );

    // STOP: the webhook hears of it, and templates stop.
    ok(&citizen.dir, &["send", BOT, "stop"]);
    event_where(&receiver, "the opt-out", |e| {
        e["type"] == "opt_out" && e["from"] == citizen.phone.as_str()
    })
    .await;
    let (code, err) = bot.send(template.clone()).await;
    assert_eq!(
        (code, err["error"]["code"].as_str()),
        (403, Some("opted_out")),
        "{err}"
    );
    // Having written, they may be answered in free text.
    bot.sent(
        json!({"to": citizen.phone, "text": "You will get no more updates. Send START to resume."}),
    )
    .await;
    ok(&citizen.dir, &["send", BOT, "START"]);
    event_where(&receiver, "the opt-in", |e| e["type"] == "opt_in").await;
    bot.sent(template).await;

    // A reaction whose "emoji" holds a line break (anything the sender's
    // client lets through) reaches the webhook and holds up nothing.
    ok(&citizen.dir, &["react", BOT, &ready, "ok\nX"]);
    ok(&citizen.dir, &["send", BOT, "after the reaction"]);
    event_where(&receiver, "the message after the reaction", |e| {
        e["message"]["text"] == "after the reaction"
    })
    .await;
    assert!(
        receiver
            .lock()
            .events
            .iter()
            .any(|e| e["type"] == "reaction" && e["emoji"] == "ok\nX")
    );

    // Malformed requests are refused with what is wrong.
    let cases = [
        (
            json!({"to": citizen.phone, "text": "pick", "interactive": {"buttons": [
            {"id": "1", "title": "a"}, {"id": "2", "title": "b"}, {"id": "3", "title": "c"}, {"id": "4", "title": "d"}]}}),
            "more than 3 buttons",
        ),
        (
            json!({"to": citizen.phone, "text": "pick", "interactive": {"buttons": [{"id": "x", "title": "a title longer than twenty"}]}}),
            "button.title",
        ),
        (
            json!({"to": citizen.phone, "template": {"name": "certificate_ready", "params": ["one"]}}),
            "takes 2",
        ),
        (
            json!({"to": citizen.phone, "template": {"name": "nope"}}),
            "no template",
        ),
        (json!({"to": "12", "text": "x"}), "to:"),
        (
            json!({"to": citizen.phone, "text": "x", "colour": "red"}),
            "unknown field",
        ),
        (json!({"to": citizen.phone}), "give text or template"),
    ];
    for (request, says) in cases {
        let (code, err) = bot.send(request.clone()).await;
        assert_eq!(code, 400, "{request} → {err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(says),
            "{request} → {err}"
        );
    }
    let unauthorized = reqwest::Client::new()
        .post(format!("{}/v1/messages", bot.api))
        .bearer_auth("wrong")
        .json(&json!({"to": citizen.phone, "text": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert_eq!(receiver.lock().bad_signatures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_killed_with_events_waiting_loses_none_and_repeats_none() {
    let server = TestServer::start();
    let user = carol();
    user.register(&server).await;
    let (bot_person, receiver, url, _files, files) = bot_world(&server).await;
    let mut bot = Bot::start(&bot_person.dir, &url, &files);

    ok(&user.dir, &["send", BOT, "first"]);
    event_where(&receiver, "the first message", |e| {
        e["message"]["text"] == "first"
    })
    .await;

    // The webhook goes down; three more wait in the bot's queue.
    receiver.lock().down = true;
    for text in ["second", "third", "fourth"] {
        ok(&user.dir, &["send", BOT, text]);
    }
    for _ in 0..300 {
        let (_, health) = bot.get("/v1/health").await;
        if health["queue"]["waiting"].as_u64() == Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bot.kill9();

    // Back up, with the webhook working: each arrives, once.
    receiver.lock().down = false;
    let bot = Bot::start(&bot_person.dir, &url, &files);
    event_where(&receiver, "the fourth message", |e| {
        e["message"]["text"] == "fourth"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let texts: Vec<String> = receiver
        .lock()
        .events
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["message"]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts, ["first", "second", "third", "fourth"]);
    drop(bot);

    // Even with its queue lost, the bot finds what it had from its
    // profile, under the same event ids, so a receiver that remembers ids
    // (as ours does) shows nothing twice.
    for f in ["bot.sqlite", "bot.sqlite-wal", "bot.sqlite-shm"] {
        let _ = std::fs::remove_file(bot_person.dir.join(f));
    }
    ok(&user.dir, &["send", BOT, "fifth"]);
    let _bot = Bot::start(&bot_person.dir, &url, &files);
    event_where(&receiver, "the fifth message", |e| {
        e["message"]["text"] == "fifth"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = receiver.lock();
    let texts: Vec<&str> = r
        .events
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["message"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["first", "second", "third", "fourth", "fifth"]);
    let first_id = r.events[0]["id"].as_str().unwrap();
    assert!(
        r.attempts[first_id] >= 2,
        "the replay offered it again, under its id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verified_badge_shows_only_after_the_operator_verifies() {
    let server = TestServer::start();
    let user = alice();
    user.register(&server).await;
    let bot_person = Person::new(BOT);
    bot_person.register(&server).await;
    let impostor = Person::new("+919800000666");
    impostor.register(&server).await;
    let data = server.data.to_str().unwrap().to_string();
    let lookup = |phone: &str| json_lines(&ok(&user.dir, &["--json", "business", phone])).remove(0);

    // A person is no business; neither is a number not on Dak.
    assert_eq!(lookup(&impostor.phone)["business"], false);
    assert_eq!(lookup("+919800000999")["business"], false);

    ok(
        &bot_person.dir,
        &[
            "bot",
            "profile",
            "--name",
            "Dak Rail",
            "--category",
            "Railways",
            "--website",
            "https://rail.example",
        ],
    );
    ok(&impostor.dir, &["bot", "profile", "--name", "Dak Rail"]);
    let shown = lookup(BOT);
    assert_eq!(shown["business"], true);
    assert_eq!(shown["profile"]["verified"], false);
    assert_eq!(shown["label"], format!("{BOT} · business account"));
    assert!(
        shown["note"]
            .as_str()
            .unwrap()
            .contains("read by the business's systems")
    );

    // Its message shows its number, not the name it gives itself.
    ok(
        &bot_person.dir,
        &["send", &user.phone, "Your ticket is ready"],
    );
    let out = ok(&user.dir, &["sync"]);
    assert!(
        out.contains(&format!("{BOT} · business account: Your ticket is ready")),
        "{out}"
    );
    assert!(!out.contains("Dak Rail"), "{out}");

    // The operator verifies the name it checked; a wrong name is refused.
    let (fine, _, err) = dak(
        &user.dir,
        &[
            "admin",
            "--data",
            &data,
            "verify-business",
            BOT,
            "--name",
            "Indian Railways",
        ],
    );
    assert!(!fine && err.contains("calls itself \"Dak Rail\""), "{err}");
    ok(
        &user.dir,
        &[
            "admin",
            "--data",
            &data,
            "verify-business",
            BOT,
            "--name",
            "Dak Rail",
        ],
    );
    assert_eq!(lookup(BOT)["label"], "✔ Dak Rail");
    ok(&bot_person.dir, &["send", &user.phone, "Platform 3"]);
    let out = ok(&user.dir, &["sync"]);
    assert!(out.contains("✔ Dak Rail: Platform 3"), "{out}");
    let history = ok(&user.dir, &["history", BOT]);
    assert!(history.contains("✔ Dak Rail: Platform 3"), "{history}");

    // The impostor with the same name is still only a number.
    assert_eq!(
        lookup(&impostor.phone)["label"],
        format!("{} · business account", impostor.phone)
    );

    // A new name loses the tick until the operator checks it again.
    ok(
        &bot_person.dir,
        &["bot", "profile", "--name", "Indian Railways"],
    );
    assert_eq!(lookup(BOT)["profile"]["verified"], false);
    ok(
        &user.dir,
        &[
            "admin",
            "--data",
            &data,
            "verify-business",
            BOT,
            "--name",
            "Indian Railways",
        ],
    );
    assert_eq!(lookup(BOT)["label"], "✔ Indian Railways");
    ok(
        &user.dir,
        &["admin", "--data", &data, "unverify-business", BOT],
    );
    assert_eq!(lookup(BOT)["profile"]["verified"], false);
}

/// One of the examples in examples/ (Python, standard library only) as
/// the service behind a real `dak bot serve`: (the bot, the example).
fn start_example(
    bot_profile: &Path,
    files: &Path,
    example: &str,
    args: &[&str],
    templates: &Path,
) -> (Bot, ChildGuard) {
    // The example needs the API's address before the bot runs: take a free port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(files.join("secret"), SECRET).unwrap();
    std::fs::write(files.join("token"), TOKEN).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(example)
        .join("bot.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args(["--port", "0"])
        .args(args)
        .env("DAK_BOT_API", format!("http://127.0.0.1:{port}"))
        .env("DAK_BOT_TOKEN_FILE", files.join("token"))
        .env("DAK_WEBHOOK_SECRET_FILE", files.join("secret"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 runs the examples (scripts/test.sh installs it)");
    let mut url = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut url)
        .unwrap();
    assert!(url.starts_with("http://"), "the example printed {url:?}");
    let listen = format!("127.0.0.1:{port}");
    let bot = Bot::start_with(bot_profile, url.trim(), files, &listen, templates);
    (bot, ChildGuard(child))
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The next message from the bot (synced, not in `seen`) that `f` accepts.
fn next_from_bot(
    person: &Path,
    seen: &mut HashSet<String>,
    what: &str,
    f: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..150 {
        ok(person, &["--json", "sync"]);
        let history = ok(person, &["--json", "history", BOT]);
        for m in json_lines(&history) {
            let id = m["id"].as_str().unwrap().to_string();
            if m["outgoing"] == false && !seen.contains(&id) && f(&m) {
                seen.insert(id);
                return m;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "the bot never sent {what}: {}",
        ok(person, &["history", BOT])
    );
}

fn id_of(m: &Value) -> String {
    m["id"].as_str().unwrap().to_string()
}

fn text_of(m: &Value) -> &str {
    m["text"].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_train_ticket_example_sells_a_ticket_through_lists_and_buttons() {
    let server = TestServer::start();
    let rider = alice();
    rider.register(&server).await;
    let (bot_person, _receiver, _url, _files, files) = bot_world(&server).await;
    std::fs::write(files.join("none.toml"), "").unwrap();
    let none = files.join("none.toml");
    let (_bot, _example) = start_example(&bot_person.dir, &files, "train-ticket-bot", &[], &none);
    let mut seen = HashSet::new();
    let r = &rider.dir;

    ok(r, &["send", BOT, "ticket"]);
    let lines = next_from_bot(r, &mut seen, "the lines", |m| {
        m["interactive"]["list"].is_object()
    });
    assert_eq!(
        lines["interactive"]["list"]["sections"][0]["rows"][0]["title"],
        "Western line"
    );
    ok(r, &["choose", &id_of(&lines), "1"]);
    let from = next_from_bot(r, &mut seen, "the stations", |m| {
        m["text"] == "From which station?"
    });
    ok(r, &["choose", &id_of(&from), "from:Churchgate"]);
    let to = next_from_bot(r, &mut seen, "the destinations", |m| {
        m["text"] == "From Churchgate. To which station?"
    });
    ok(r, &["choose", &id_of(&to), "to:Dadar"]);
    let buy = next_from_bot(r, &mut seen, "the fare", |m| {
        m["interactive"]["buttons"].is_array()
    });
    assert_eq!(buy["text"], "Churchgate → Dadar, second class: ₹5. Buy?");
    ok(r, &["choose", &id_of(&buy), "buy"]);
    let ticket = next_from_bot(r, &mut seen, "the ticket", |m| {
        text_of(m).starts_with("Ticket DR-")
    });
    assert!(
        text_of(&ticket).contains("Churchgate → Dadar, second class, ₹5"),
        "{ticket}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_example_takes_an_application_and_announces_it_with_a_template() {
    let server = TestServer::start();
    let citizen = bob();
    citizen.register(&server).await;
    let (bot_person, _receiver, _url, _files, files) = bot_world(&server).await;
    let templates =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/certificate-bot/templates.toml");
    let args = ["--ready-after", "1"];
    let (_bot, _example) = start_example(
        &bot_person.dir,
        &files,
        "certificate-bot",
        &args,
        &templates,
    );
    let mut seen = HashSet::new();
    let c = &citizen.dir;

    ok(c, &["send", BOT, "certificate"]);
    let kinds = next_from_bot(c, &mut seen, "the kinds", |m| {
        m["interactive"]["buttons"].is_array()
    });
    ok(c, &["choose", &id_of(&kinds), "birth"]);
    next_from_bot(c, &mut seen, "the name question", |m| {
        m["text"] == "Birth certificate. Your full name?"
    });
    ok(c, &["send", BOT, "Ananya Sen"]);
    next_from_bot(c, &mut seen, "the date question", |m| {
        text_of(m).starts_with("Your date of birth?")
    });
    ok(c, &["send", BOT, "31-02-1994"]);
    next_from_bot(c, &mut seen, "a refusal of a date that is none", |m| {
        text_of(m).starts_with("That is not a date")
    });
    ok(c, &["send", BOT, "07-03-1994"]);
    let districts = next_from_bot(c, &mut seen, "the districts", |m| {
        m["interactive"]["list"].is_object()
    });
    ok(c, &["choose", &id_of(&districts), "district:Howrah"]);
    let confirm = next_from_bot(c, &mut seen, "the summary", |m| {
        m["interactive"]["buttons"].is_array()
    });
    assert_eq!(
        confirm["text"],
        "Birth certificate for Ananya Sen, born 07-03-1994, Howrah district. Submit?"
    );
    ok(c, &["choose", &id_of(&confirm), "submit"]);
    let submitted = next_from_bot(c, &mut seen, "the application number", |m| {
        text_of(m).starts_with("Submitted.")
    });
    let number = text_of(&submitted)
        .split("number is ")
        .nth(1)
        .and_then(|s| s.split('.').next())
        .unwrap()
        .to_string();
    assert!(number.starts_with("WB-"), "{number}");
    let ready = next_from_bot(c, &mut seen, "the ready template", |m| {
        text_of(m).contains("is ready")
    });
    assert_eq!(
        ready["text"],
        format!(
            "Your birth certificate (application {number}) is ready. Collect it at the Howrah district office, or write \"download\"."
        )
    );
}

/// schemathesis (installed by scripts/schemathesis.sh, which test.sh runs).
fn schemathesis() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(root.join("scripts/schemathesis.sh"))
        .output()
        .expect("run scripts/schemathesis.sh");
    assert!(
        out.status.success(),
        "scripts/schemathesis.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    root.join(String::from_utf8_lossy(&out.stdout).trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_its_openapi_document_under_schemathesis() {
    let server = TestServer::start();
    let (bot_person, _receiver, url, _files, files) = bot_world(&server).await;
    let bot = Bot::start(&bot_person.dir, &url, &files);

    let doc: Value = reqwest::get(format!("{}/v1/openapi.json", bot.api))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/v1/messages",
        "/v1/messages/{id}",
        "/v1/messages/{id}/read",
        "/v1/health",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not documented");
    }
    // The same document as `dak bot openapi` prints.
    let printed: Value = serde_json::from_str(&ok(&bot_person.dir, &["bot", "openapi"])).unwrap();
    assert_eq!(printed, doc);

    // Property-based tests from the document, against the live API: no
    // 5xx, every status, content type and body as documented, anything
    // the schema forbids refused, and no operation that ignores the token.
    // (Not `positive_data_acceptance`: a request can fit the schema and
    // still break a rule it cannot say, such as a number that is none.)
    // Run in the test's own directory: schemathesis writes a cache
    // (`.schemathesis/`) where it runs, which must not land in the tree.
    let run = Command::new(schemathesis())
        .current_dir(&files)
        .args(["run", &format!("{}/v1/openapi.json", bot.api)])
        .args(["--url", &bot.api])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--max-examples", "60", "--workers", "1", "--seed", "1"])
        .args(["--no-color", "--warnings", "off"])
        .output()
        .expect("run schemathesis");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "schemathesis found problems:\n{said}");
    // It ran each operation, with cases generated from the document.
    let documented = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum::<usize>();
    assert!(
        said.contains(&format!("Tested: {documented}")),
        "schemathesis did not test every operation:\n{said}"
    );
    assert!(said.contains("No issues found"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_business_cannot_flood_a_chat_and_a_refused_message_never_goes_later() {
    let server = TestServer::with_env(&[("DAK_BUSINESS_MESSAGES_PER_CHAT_PER_MINUTE", "4")]);
    let citizen = bob();
    citizen.register(&server).await;
    let (bot_person, receiver, url, _files, files) = bot_world(&server).await;
    ok(&bot_person.dir, &["bot", "profile", "--name", "Dak Rail"]);
    let bot = Bot::start(&bot_person.dir, &url, &files);

    let template = |n: usize| json!({"to": citizen.phone, "template": {"name": "certificate_ready", "params": ["birth", format!("A-{n}")]}});
    for n in 1..=4 {
        bot.sent(template(n)).await;
    }
    let (code, err) = bot.send(template(5)).await;
    assert_eq!(
        (code, err["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{err}"
    );
    // A person is not limited so: the citizen writes six times at once.
    for n in 1..=6 {
        ok(&citizen.dir, &["send", BOT, &format!("question {n}")]);
    }
    event_where(&receiver, "the sixth question", |e| {
        e["message"]["text"] == "question 6"
    })
    .await;
    // The refused one is not waiting to go out behind the service's back,
    // not even when the bot connects again (which sends its outbox).
    drop(bot);
    let bot = Bot::start(&bot_person.dir, &url, &files);
    let (code, _) = bot.get("/v1/health").await;
    assert_eq!(code, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    ok(&citizen.dir, &["sync"]);
    let history = ok(&citizen.dir, &["history", BOT]);
    for n in 1..=4 {
        assert!(
            history.contains(&format!("application A-{n})")),
            "{history}"
        );
    }
    assert!(!history.contains("A-5"), "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_from_the_service_reaches_a_person_whole() {
    let server = TestServer::start();
    let rider = alice();
    rider.register(&server).await;
    let (bot_person, receiver, url, _files, files) = bot_world(&server).await;
    let bot = Bot::start(&bot_person.dir, &url, &files);
    ok(&rider.dir, &["send", BOT, "my ticket please"]);
    event_where(&receiver, "the request", |e| e["type"] == "message").await;

    let ticket: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let stored: Value = bot
        .http
        .post(format!("{}/v1/media", bot.api))
        .bearer_auth(TOKEN)
        .header("content-type", "application/pdf")
        .header("x-file-name", "ticket DR-4471.pdf")
        .body(ticket.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let media_id = stored["media_id"].as_str().unwrap().to_string();
    assert_eq!(stored["size"], 200_000);
    let id = bot
        .sent(json!({"to": rider.phone, "text": "Your ticket", "media_id": media_id}))
        .await;
    let out = ok(&rider.dir, &["--json", "sync"]);
    let lines = json_lines(&out);
    let message = lines
        .iter()
        .find(|v| v["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(message["attachment"]["file_name"], "ticket DR-4471.pdf");
    assert_eq!(message["text"], "Your ticket");
    let saved = lines
        .iter()
        .find(|v| v["type"] == "media_saved")
        .unwrap_or_else(|| panic!("nothing saved: {out}"));
    assert_eq!(
        std::fs::read(saved["path"].as_str().unwrap()).unwrap(),
        ticket
    );

    // The other way: a photo of a document, fetched by the service.
    let dir = tempfile::tempdir().unwrap();
    let photo = dir.path().join("aadhaar.jpg");
    let bytes: Vec<u8> = (0..150_000u32)
        .map(|i| (i.wrapping_mul(40503) >> 7) as u8)
        .collect();
    std::fs::write(&photo, &bytes).unwrap();
    ok(
        &rider.dir,
        &[
            "send",
            BOT,
            "--file",
            photo.to_str().unwrap(),
            "--caption",
            "my ID",
        ],
    );
    let event = event_where(&receiver, "the photo", |e| e["message"]["text"] == "my ID").await;
    assert_eq!(event["message"]["attachment"]["file_name"], "aadhaar.jpg");
    let path = event["message"]["attachment"]["url"].as_str().unwrap();
    for _ in 0..2 {
        // Fetched once from the server, then from the bot's own copy.
        let got = bot
            .http
            .get(format!("{}{path}", bot.api))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), 200);
        assert_eq!(got.headers()["content-type"], "image/jpeg");
        assert_eq!(got.bytes().await.unwrap().to_vec(), bytes);
    }

    // Unknown ids and files with templates or buttons are refused.
    let (code, err) = bot
        .send(json!({"to": rider.phone, "media_id": "00000000000000000000000000000000"}))
        .await;
    assert_eq!(code, 404, "{err}");
    let (code, err) = bot
        .send(json!({"to": rider.phone, "media_id": media_id, "template": {"name": "certificate_ready", "params": ["a", "b"]}}))
        .await;
    assert_eq!(code, 400, "{err}");
}
