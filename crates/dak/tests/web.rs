//! Dak Web in real headless Chromium, against the real server: the page
//! that `dak server --web DIR` serves, the client core compiled to
//! WebAssembly, and a person on the CLI (`dak_client`) at the other end.
//!
//! Needs Chromium and chromedriver (scripts/wasm-tools.sh installs them)
//! and the web client built for tests (`scripts/web-build.sh --dev`, into
//! target/web-dev; DAK_TEST_WEB_DIR points elsewhere). scripts/test.sh
//! does both before the tests run; without them these tests fail and say
//! what to run.
//!
//! A screenshot of the chat view is kept at target/web-screenshots/ for
//! people to look at.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Person, TestServer, bob, contains, files_under, sync_events};
use dak_client::TickState;
use fantoccini::{Client as WebDriver, ClientBuilder, Locator};
use serde_json::{Value, json};

/// cargo's target directory, where scripts/web-build.sh puts the bundle.
fn target_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// The web client built by `scripts/web-build.sh --dev`.
fn web_dir() -> PathBuf {
    let dir = std::env::var_os("DAK_TEST_WEB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("web-dev"));
    assert!(
        dir.join("index.html").exists() && dir.join("dak_web_bg.wasm").exists(),
        "no web client in {}: run scripts/web-build.sh --dev (scripts/test.sh does)",
        dir.display()
    );
    dir
}

/// A server that serves the web client, plain HTTP on loopback.
fn web_server() -> TestServer {
    let web = web_dir();
    TestServer::build_with(&[("DAK_WEB", web.to_str().unwrap())], true)
}

fn page_url(server: &TestServer) -> String {
    server.url.replace("ws://", "http://") + "/"
}

/// chromedriver on a free port, and one headless Chromium session on it.
struct Browser {
    driver: WebDriver,
    chromedriver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// A browser whose user prefers `lang` (e.g. "en-US", "hi").
    async fn open(lang: &str) -> Browser {
        let chromedriver_bin = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("no chromedriver: run scripts/wasm-tools.sh (apt-get install chromium chromium-driver)");
        let chromium = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("no chromium: run scripts/wasm-tools.sh");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let chromedriver = Command::new(chromedriver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--no-first-run",
                    "--window-size=1000,800",
                    // A microphone that needs no one to allow it (voice notes).
                    "--use-fake-ui-for-media-stream",
                    "--use-fake-device-for-media-stream",
                    format!("--lang={lang}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
                "prefs": {"intl.accept_languages": lang},
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut last = String::new();
        for _ in 0..300 {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(driver) => {
                    return Browser {
                        driver,
                        chromedriver,
                        _profile: profile,
                    };
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not start a browser: {last}");
    }

    async fn js(&self, script: &str) -> Value {
        self.driver
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script {script:?}: {e}"))
    }

    /// Polls `script` (a function body returning a value) until it is
    /// truthy; returns that value.
    async fn wait_for(&self, script: &str, what: &str) -> Value {
        for _ in 0..600 {
            let v = self.js(script).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let state = self
            .js("return document.body.dataset.state + ' / ' + document.getElementById('error').textContent + ' / ' + document.getElementById('status').textContent")
            .await;
        panic!("the page never showed {what} (state / error / status: {state})");
    }

    /// Types `text` into the field `css`, replacing what it held. WebDriver's
    /// clear leaves the field unfocused, and the page may redraw an
    /// unfocused field (the group's name, from a "changed" event) before
    /// the typing starts: then it is typed again. Once typed into, the
    /// field has the focus and the page leaves it alone.
    async fn fill(&self, css: &str, text: &str) {
        for _ in 0..10 {
            let el = self.driver.find(Locator::Css(css)).await.unwrap();
            el.clear().await.unwrap();
            el.send_keys(text).await.unwrap();
            if el.prop("value").await.unwrap().as_deref() == Some(text) {
                return;
            }
        }
        panic!("{css} kept being redrawn while {text:?} was typed into it");
    }

    /// Waits until `css` matches an element, then clicks it.
    async fn click_when_shown(&self, css: &str, what: &str) {
        self.wait_for(
            &format!("return document.querySelector({}) !== null", json!(css)),
            what,
        )
        .await;
        self.click(css).await;
    }

    /// Waits until the open chat shows an incoming message whose text is
    /// exactly `text`.
    async fn wait_incoming(&self, text: &str, what: &str) {
        self.wait_for(
            &format!(
                "return [...document.querySelectorAll('#messages li.incoming .text')].some(e => e.textContent === {})",
                json!(text)
            ),
            what,
        )
        .await;
    }

    /// Clicks the element `css` matches. The page redraws lists as events
    /// arrive, so an element found may be replaced before the click lands:
    /// then it is found again.
    async fn click(&self, css: &str) {
        for _ in 0..20 {
            let el = self.driver.find(Locator::Css(css)).await.unwrap();
            match el.click().await {
                Ok(_) => return,
                Err(fantoccini::error::CmdError::Standard(e))
                    if e.error == fantoccini::error::ErrorStatus::StaleElementReference =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("click {css}: {e}"),
            }
        }
        panic!("{css} kept being replaced before it could be clicked");
    }

    /// Loads the page and waits until its core runs.
    async fn load(&self, server: &TestServer) {
        self.driver.goto(&page_url(server)).await.unwrap();
        self.wait_for(
            "return document.body.dataset.ready === 'true'",
            "the client core started",
        )
        .await;
    }

    /// Loads `url` (the page, perhaps with an invite link in its fragment)
    /// and waits until its core runs.
    async fn load_url(&self, url: &str) {
        self.driver.goto(url).await.unwrap();
        self.wait_for(
            "return document.body.dataset.ready === 'true'",
            "the client core started",
        )
        .await;
    }

    /// Starts a chat with `phone` from the list's "New chat" form.
    async fn start_chat(&self, phone: &str) {
        self.fill("#new-chat", phone).await;
        self.click("#new-chat-form button[type=submit]").await;
    }

    /// Registers the page's number as a new primary device.
    async fn register(&self, server: &TestServer, phone: &str) {
        self.fill("#phone", phone).await;
        self.click("#register-form button[type=submit]").await;
        self.wait_for(
            "return !document.getElementById('verify-form').hidden",
            "the code form",
        )
        .await;
        self.fill("#code", &server.code_for(phone)).await;
        self.click("#verify-form button[type=submit]").await;
        self.wait_for("return document.body.dataset.state === 'online'", "online")
            .await;
    }

    /// The tick on the outgoing message whose text is `text`, if shown.
    async fn tick_of(&self, text: &str) -> Value {
        self.js(&format!(
            "for (const li of document.querySelectorAll('#messages li.outgoing')) {{
                 if (li.querySelector('.text').textContent === {text}) {{
                     const t = li.querySelector('.tick'); return t ? t.dataset.tick : '';
                 }}
             }}
             return null;",
            text = json!(text)
        ))
        .await
    }

    async fn wait_tick(&self, text: &str, tick: &str) {
        let script = format!(
            "for (const li of document.querySelectorAll('#messages li.outgoing')) {{
                 if (li.querySelector('.text').textContent === {text}) {{
                     const t = li.querySelector('.tick'); return t && t.dataset.tick === {tick};
                 }}
             }}
             return false;",
            text = json!(text),
            tick = json!(tick)
        );
        self.wait_for(&script, &format!("{tick} on {text:?}")).await;
    }

    async fn send(&self, text: &str) {
        self.fill("#message", text).await;
        self.click("#send").await;
        self.wait_for(
            "return document.getElementById('message').value === ''",
            "the message box emptied (the core took the text)",
        )
        .await;
    }

    /// Opens the actions of the message whose text is `text` and presses
    /// the one named `name` (its accessible name, or its words).
    async fn message_action(&self, text: &str, name: &str) {
        let script = format!(
            "const li = [...document.querySelectorAll('#messages li.message')].find(li => li.querySelector('.text').textContent === {text});
             if (!li) return false;
             const find = () => [...li.querySelectorAll('.toolbar button')].find(b => (b.getAttribute('aria-label') || b.textContent) === {name});
             if (!li.querySelector('.toolbar')) li.querySelector('button.options').click();
             const b = find();
             if (!b || b.disabled) return false;
             b.click();
             return true;",
            text = json!(text),
            name = json!(name)
        );
        self.wait_for(&script, &format!("{name:?} on {text:?}"))
            .await;
    }

    /// Picks a file in the page's file picker (as a person would with 📎).
    async fn attach(&self, name: &str, media_type: &str, bytes: &[u8]) {
        self.js(&format!(
            "const bytes = Uint8Array.from(atob({}), c => c.charCodeAt(0));
             const dt = new DataTransfer();
             dt.items.add(new File([bytes], {}, {{ type: {} }}));
             const input = document.getElementById('file-input');
             input.files = dt.files;
             input.dispatchEvent(new Event('change'));
             return true;",
            json!(base64(bytes)),
            json!(name),
            json!(media_type)
        ))
        .await;
    }

    /// Every control on screen without an accessible name (its words, an
    /// aria-label, aria-labelledby, or a label), as its HTML: none, always.
    async fn unnamed_controls(&self) -> Value {
        self.js(
            "return [...document.querySelectorAll('button, input, select, textarea, summary')]
               .filter(el => el.getClientRects().length > 0)
               .filter(el => !(el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')
                   || (el.labels && [...el.labels].some(l => l.textContent.trim()))
                   || (['BUTTON', 'SUMMARY'].includes(el.tagName) && el.textContent.trim())))
               .map(el => el.outerHTML.slice(0, 120))",
        )
        .await
    }

    async fn screenshot(&self, name: &str) {
        let png = self.driver.screenshot().await.unwrap();
        let dir = target_dir().join("web-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }

    async fn close(mut self) {
        let _ = self.driver.clone().close().await;
        let _ = self.chromedriver.kill();
        let _ = self.chromedriver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.chromedriver.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_and_the_cli_chat_with_honest_ticks_and_lose_nothing_to_kill9() {
    let mut server = web_server();
    let page_phone = "+919800000301";
    let bob = bob();
    bob.register(&server).await;

    let browser = Browser::open("en-US").await;
    browser.load(&server).await;
    browser.register(&server, page_phone).await;

    // A new chat with bob, from the page.
    browser.start_chat(&bob.phone).await;
    browser
        .wait_for(
            "return !document.getElementById('chat').hidden",
            "the chat view",
        )
        .await;
    let first = "hello from the browser PLAINTEXT-MARKER-web-7f3a";
    browser.send(first).await;
    browser.wait_tick(first, "sent").await;

    // ✓✓ once bob's device has it.
    assert_eq!(bob.sync_texts().await, vec![first.to_string()]);
    browser.wait_tick(first, "delivered").await;

    // Bob answers (which accepts the page's message request) and reads:
    // blue on the page. The page, showing the chat, reads his answer and
    // says so: blue on bob's side.
    let mut b = bob.connect().await;
    let reply = b.send_text(page_phone, "hi from the CLI").await.unwrap();
    b.mark_read(None).await.unwrap();
    browser.wait_tick(first, "read").await;
    browser
        .wait_incoming("hi from the CLI", "bob's reply")
        .await;
    tokio::time::timeout(
        Duration::from_secs(60),
        b.wait_for_tick(&reply.id, TickState::Read, |_| {}),
    )
    .await
    .expect("the page's read receipt within 60 s")
    .unwrap();

    // Markup in a message is text: shown as typed, never run.
    let payload = r#"<img src=x onerror="window.__dak_pwned=1"><script>window.__dak_pwned=2</script><b>bold</b>"#;
    b.send_text(page_phone, payload).await.unwrap();
    b.close().await;
    browser
        .wait_incoming(payload, "the markup payload as text")
        .await;
    let ran = browser
        .js("return [window.__dak_pwned === undefined, document.querySelectorAll('#messages img, #messages script, #messages b').length]")
        .await;
    assert_eq!(ran, json!([true, 0]), "a message's markup was rendered");

    // The server dies (kill -9) mid-conversation: the page says it is
    // offline, keeps what is typed (🕓), and sends it once the server is back.
    server.kill9();
    browser
        .wait_for(
            "return document.body.dataset.state === 'offline'",
            "offline",
        )
        .await;
    let offline = "typed while the server was down";
    browser.send(offline).await;
    browser.wait_tick(offline, "pending").await;
    // It says since when, and what waits.
    let line = browser
        .wait_for(
            "const s = document.getElementById('status').textContent;
             return s.includes('1 message(s) waiting') ? s : ''",
            "the offline line",
        )
        .await;
    assert!(
        line.as_str().unwrap().starts_with("Offline since "),
        "{line}"
    );
    server.restart();
    browser.wait_tick(offline, "sent").await;
    assert_eq!(browser.tick_of(first).await, json!("read"));
    browser.screenshot("chat.png").await;

    // Bob has each message exactly once.
    let texts = bob.sync_texts().await;
    assert_eq!(texts, vec![offline.to_string()], "after the restart");

    // A reload keeps the history and the keys (the profile's journal in
    // the browser's private file system): the chat is there with its
    // ticks, and a new message from bob decrypts. This reload compacts the
    // journal first (a snapshot in the other file, `?compact_over=0`), so
    // what follows runs on the compacted profile.
    browser
        .driver
        .goto(&(page_url(&server) + "?compact_over=0"))
        .await
        .unwrap();
    browser
        .wait_for(
            "return document.body.dataset.ready === 'true'",
            "the core after the reload",
        )
        .await;
    browser
        .wait_for(
            "return document.body.dataset.state === 'online'",
            "online after the reload",
        )
        .await;
    let row = format!("button[data-chat='{}']", bob.phone);
    browser
        .click_when_shown(&row, "bob's chat in the list after the reload")
        .await;
    browser.wait_tick(first, "read").await;
    browser.wait_tick(offline, "delivered").await;
    let mut b = bob.connect().await;
    b.send_text(page_phone, "after the reload").await.unwrap();
    b.close().await;
    browser
        .wait_incoming("after the reload", "a message after the reload")
        .await;
    let shown = browser
        .js("return document.querySelectorAll('#messages li.message').length")
        .await;
    assert_eq!(shown, json!(5), "each message once, after the reload too");
    // And once more, from the compacted journal (generation 1) and what
    // was appended to it since.
    browser.load(&server).await;
    assert_eq!(
        browser
            .js("return document.body.dataset.journalGeneration")
            .await,
        json!("1"),
        "the second reload opened the compacted journal"
    );
    browser
        .click_when_shown(&row, "bob's chat after the second reload")
        .await;
    browser
        .wait_incoming(
            "after the reload",
            "the message received after the compaction",
        )
        .await;

    // The safety number the page shows is the one bob's CLI shows.
    browser.click("#safety-toggle").await;
    let digits = browser
        .wait_for(
            "const d = document.getElementById('safety-digits').textContent; return /^[0-9 ]{60,}$/.test(d) ? d : ''",
            "the safety number",
        )
        .await;
    let mut b = bob.connect().await;
    let bobs = b.safety(page_phone).await.unwrap();
    b.close().await;
    assert_eq!(digits, json!(bobs.number));
    // Two new devices: post-quantum, and the page says so.
    assert!(bobs.post_quantum);
    let suite = browser
        .js("return document.getElementById('safety-suite').textContent")
        .await;
    let suite = suite.as_str().unwrap();
    assert!(
        suite.starts_with("Post-quantum encryption") && suite.contains(&bobs.suite),
        "{suite}"
    );
    // The page's device checked bob's keys against the key directory.
    let kt = browser
        .js("return document.getElementById('safety-kt').textContent")
        .await;
    let kt = kt.as_str().unwrap();
    assert!(kt.starts_with("Keys verified by key transparency"), "{kt}");

    // A second tab of the same browser cannot open the profile, and says so.
    let tab = browser.driver.new_window(true).await.unwrap();
    browser.driver.switch_to_window(tab.handle).await.unwrap();
    browser.driver.goto(&page_url(&server)).await.unwrap();
    let error = browser
        .wait_for(
            "return document.getElementById('error').hidden ? '' : document.getElementById('error').textContent",
            "the second tab's message",
        )
        .await;
    assert!(error.as_str().unwrap().contains("another tab"), "{error}");

    // The marker reached no file in the server's data directory, nor its log.
    for (path, bytes) in files_under(&server.data) {
        assert!(
            !contains(&bytes, "PLAINTEXT-MARKER-web-7f3a"),
            "{} holds the plaintext",
            path.display()
        );
    }
    assert!(!server.log_text().contains("PLAINTEXT-MARKER-web-7f3a"));
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_speaks_hindi_and_bengali_and_is_served_with_a_strict_policy() {
    let server = web_server();

    // The headers: a strict Content-Security-Policy, no sniffing, no framing.
    let authority = server.url.trim_start_matches("ws://").to_string();
    let mut tcp = std::net::TcpStream::connect(&authority).unwrap();
    write!(
        tcp,
        "GET / HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).unwrap();
    let head = response.split("\r\n\r\n").next().unwrap().to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(
            "content-security-policy: default-src 'none'; script-src 'self' 'wasm-unsafe-eval'"
        ),
        "{head}"
    );
    assert!(!head.contains("unsafe-inline"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(head.contains("frame-ancestors 'none'"), "{head}");
    // The WebAssembly goes gzipped to a browser that accepts it.
    let mut tcp = std::net::TcpStream::connect(&authority).unwrap();
    write!(
        tcp,
        "GET /web/dak_web_bg.wasm HTTP/1.1\r\nHost: {authority}\r\nAccept-Encoding: gzip, br\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    tcp.read_to_end(&mut response).unwrap();
    let end = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&response[..end]).to_lowercase();
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(head.contains("content-type: application/wasm"), "{head}");
    let served = response.len() - end - 4;
    let on_disk = std::fs::metadata(web_dir().join("dak_web_bg.wasm"))
        .unwrap()
        .len() as usize;
    assert!(
        served < on_disk / 2,
        "{served} bytes served for {on_disk} on disk"
    );

    let browser = Browser::open("hi").await;
    browser.load(&server).await;
    // Before registering, only the welcome is on screen (what is hidden is
    // not displayed, whatever the style sheet says).
    let shown = browser
        .js("return ['welcome', 'verify-form', 'chats', 'chat', 'add-member-form'].map(id => getComputedStyle(document.getElementById(id)).display !== 'none')")
        .await;
    assert_eq!(shown, json!([true, false, false, false, false]));
    let words = browser
        .js("return [document.documentElement.lang, document.querySelector('[data-t=send_code]').textContent, document.querySelector('#send').textContent, document.querySelector('#message').getAttribute('aria-label'), document.querySelector('label[for=phone]').textContent]")
        .await;
    assert_eq!(
        words,
        json!(["hi", "कोड भेजें", "भेजें", "संदेश", "फ़ोन नंबर"]),
        "a Hindi browser gets Hindi"
    );
    // Switched to Bengali from the page, and remembered across a reload.
    browser
        .js("const s = document.getElementById('language'); s.value = 'bn'; s.dispatchEvent(new Event('change')); return true")
        .await;
    browser.load(&server).await;
    let words = browser
        .js("return [document.documentElement.lang, document.querySelector('#send').textContent, document.querySelector('#message').getAttribute('aria-label'), document.querySelector('#back').getAttribute('aria-label')]")
        .await;
    assert_eq!(words, json!(["bn", "পাঠান", "বার্তা", "চ্যাটের তালিকায় ফিরুন"]));

    // A wrong code gets a clear, translated error, and the number stays typed.
    let phone = "+919800000302";
    browser.fill("#phone", phone).await;
    browser.click("#register-form button[type=submit]").await;
    browser
        .wait_for(
            "return !document.getElementById('verify-form').hidden",
            "the code form",
        )
        .await;
    let right = server.code_for(phone);
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    browser.fill("#code", wrong).await;
    browser.click("#verify-form button[type=submit]").await;
    let error = browser
        .wait_for("return document.getElementById('error').hidden ? '' : document.getElementById('error').textContent", "an error")
        .await;
    assert_eq!(error, json!("কোডটি ভুল। SMS দেখে আবার চেষ্টা করুন।"));
    assert_eq!(
        browser
            .js("return document.getElementById('phone').value")
            .await,
        json!(phone)
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_linked_to_a_cli_account_receives_its_messages() {
    let server = web_server();
    let alice = common::alice();
    let bob = bob();
    alice.register(&server).await;
    bob.register(&server).await;
    // alice and bob chatted before the browser existed.
    let mut a = alice.connect().await;
    a.send_text(&bob.phone, "said before the browser")
        .await
        .unwrap();
    a.close().await;
    let mut b = bob.connect().await;
    b.sync(|_| {}).await.unwrap();
    b.send_text(&alice.phone, "bob replied before the browser")
        .await
        .unwrap();
    b.close().await;
    alice.sync_texts().await;

    // The page asks to be linked and shows a code; alice approves it on
    // her phone (the CLI), as with `dak devices approve CODE`, which then
    // sends the page her recent chats.
    let browser = Browser::open("en-US").await;
    browser.load(&server).await;
    browser.click("#link").await;
    let code = browser
        .wait_for(
            "return document.getElementById('link-code').dataset.code || ''",
            "a link code",
        )
        .await;
    // The code comes with its QR code, drawn from dark modules.
    let qr = browser
        .js("const s = document.querySelector('#link-qr svg'); return s && !document.getElementById('link-qr').hidden ? s.querySelector('path').getAttribute('d').length : 0")
        .await;
    assert!(qr.as_u64().unwrap() > 100, "no QR code: {qr}");
    let mut a = alice.connect().await;
    let linked = a.approve_link(code.as_str().unwrap()).await.unwrap();
    let shared = a
        .share_history(linked.device_id, dak_client::HistoryLimits::default())
        .await
        .unwrap();
    assert_eq!((shared.chats, shared.messages), (1, 2));
    a.close().await;
    browser
        .wait_for(
            "return document.body.dataset.state === 'online'",
            "online as alice's device",
        )
        .await;
    let status = browser
        .js("return document.getElementById('status').textContent")
        .await;
    assert_eq!(status, json!("Online"));
    assert!(linked.device_id > 0);

    // The page lists alice's devices: her phone (primary) and itself.
    browser.click("#devices summary").await;
    let devices = browser
        .wait_for(
            "const l = [...document.querySelectorAll('#device-list li')]; return l.length === 2 ? l.map(li => li.textContent.replace('Remove', '').trim()) : null",
            "the device list",
        )
        .await;
    assert_eq!(
        devices,
        json!(["phone primary", "Dak Web (Chrome) this browser"])
    );

    // The page opens on the chat with bob, as it was on the phone.
    let row = format!("button[data-chat='{}']", bob.phone);
    browser
        .click_when_shown(&row, "bob's chat from the history")
        .await;
    browser
        .wait_incoming(
            "bob replied before the browser",
            "the history's incoming message",
        )
        .await;
    let outgoing = browser
        .js("return [...document.querySelectorAll('#messages li.outgoing .text')].map(e => e.textContent)")
        .await;
    assert_eq!(outgoing, json!(["said before the browser"]));

    // Bob writes to alice: every one of her devices gets it, the page too.
    let mut b = bob.connect().await;
    b.send_text(&alice.phone, "to all of alice's devices")
        .await
        .unwrap();
    b.close().await;
    browser
        .wait_incoming(
            "to all of alice's devices",
            "bob's message on the linked page",
        )
        .await;
    assert_eq!(
        alice.sync_texts().await,
        vec!["to all of alice's devices".to_string()],
        "and on her phone"
    );

    // Alice removes the browser from her devices: the page says it is no
    // longer registered and offers to register or link again.
    let mut a = alice.connect().await;
    a.remove_device(linked.device_id).await.unwrap();
    a.close().await;
    browser
        .wait_for(
            "return document.body.dataset.state === 'signed_out'",
            "signed out",
        )
        .await;
    let shown = browser
        .js("return [document.getElementById('welcome').hidden, document.getElementById('status').textContent]")
        .await;
    assert_eq!(
        shown,
        json!([
            false,
            "This browser is no longer registered: register or link it again"
        ])
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_a_browser_two_cli_users_and_a_second_browser_that_joins_by_invite_link() {
    let server = web_server();
    let bob = bob();
    let carol = common::carol();
    bob.register(&server).await;
    carol.register(&server).await;
    let browser = Browser::open("en-US").await;
    browser.load(&server).await;
    browser.register(&server, "+919800000311").await;

    // The page makes a group with bob and carol, and writes in it.
    browser.click(".new-group summary").await;
    browser.fill("#group-title", "Family").await;
    browser
        .fill("#group-members", &format!("{}, {}", bob.phone, carol.phone))
        .await;
    browser.click("#new-group-form button[type=submit]").await;
    browser
        .wait_for(
            "return !document.getElementById('chat').hidden && document.getElementById('chat-title').textContent === 'Family'",
            "the new group's chat",
        )
        .await;
    browser.send("dinner at 8?").await;
    browser.wait_tick("dinner at 8?", "sent").await;
    assert_eq!(bob.sync_texts().await, vec!["dinner at 8?".to_string()]);
    assert_eq!(carol.sync_texts().await, vec!["dinner at 8?".to_string()]);
    browser.wait_tick("dinner at 8?", "delivered").await;

    // Bob answers in the group; the page shows who wrote it.
    let key = browser
        .js("return document.querySelector('#chat-list button[aria-current=true]').dataset.chat")
        .await;
    let key = key.as_str().unwrap().to_string();
    assert!(key.starts_with("group:"), "{key}");
    let mut b = bob.connect().await;
    b.send_text(&key, "yes, I'll bring rice").await.unwrap();
    b.close().await;
    let from = browser
        .wait_for(
            "for (const li of document.querySelectorAll('#messages li.incoming')) { if (li.querySelector('.text').textContent === \"yes, I'll bring rice\") return li.querySelector('.from').textContent; } return '';",
            "bob's answer with his number",
        )
        .await;
    assert_eq!(from, json!(bob.phone));

    // The page removes carol from the group's panel: what follows does
    // not reach her.
    browser.click("#group-toggle").await;
    let remove = format!(
        "#group-members-list li[data-phone='{}'] button.remove",
        carol.phone
    );
    browser
        .click_when_shown(&remove, "carol's remove button")
        .await;
    browser
        .wait_for(
            &format!(
                "return document.querySelector('#group-members-list li[data-phone=\"{}\"]') === null",
                carol.phone
            ),
            "carol gone from the members",
        )
        .await;
    browser.send("after carol left").await;
    browser.wait_tick("after carol left", "sent").await;
    assert_eq!(bob.sync_texts().await, vec!["after carol left".to_string()]);
    assert_eq!(
        carol.sync_texts().await,
        vec!["yes, I'll bring rice".to_string()],
        "a removed member reads what came before her removal, nothing after"
    );

    // The group's panel: a new name, bob made an admin, an invite link.
    browser.fill("#rename-title", "Family dinner").await;
    browser.click("#rename-form button[type=submit]").await;
    browser
        .wait_for(
            "return document.getElementById('chat-title').textContent === 'Family dinner'",
            "the new name",
        )
        .await;
    let promote = format!(
        "#group-members-list li[data-phone='{}'] button.promote",
        bob.phone
    );
    browser
        .click_when_shown(&promote, "bob's make-admin button")
        .await;
    browser
        .wait_for(
            &format!(
                "const b = document.querySelector({}); return b && b.textContent === 'Dismiss as admin'",
                json!(promote)
            ),
            "bob shown as an admin",
        )
        .await;
    assert_eq!(
        browser.unnamed_controls().await,
        json!([]),
        "with the group's panel open"
    );
    browser.click("#invite-create").await;
    let url = browser
        .wait_for(
            "return document.getElementById('invite-link').value",
            "the invite link",
        )
        .await;
    let url = url.as_str().unwrap().to_string();
    assert!(url.contains("/#join=dak-invite"), "{url}");
    common::sync_events(&bob).await;
    let b = bob.connect().await;
    let info = b.group_info(&key).unwrap();
    b.close().await;
    assert_eq!(info.title, "Family dinner");
    assert!(info.you_are_admin);

    // A second browser opens the invite link, registers and asks to join;
    // the first page (the link's owner) lets it in.
    let second_phone = "+919800000312";
    let second = Browser::open("en-US").await;
    second.load_url(&url).await;
    second.register(&server, second_phone).await;
    let prefilled = second
        .js("return [document.getElementById('join').open, document.getElementById('join-link').value.startsWith('dak-invite:'), location.hash]")
        .await;
    assert_eq!(prefilled, json!([true, true, ""]));
    second.click("#join-form button[type=submit]").await;
    let row = format!("button[data-chat='{key}']");
    second
        .click_when_shown(&row, "the group on the second page")
        .await;
    second.send("hello from the second browser").await;
    browser
        .wait_incoming("hello from the second browser", "the second page's message")
        .await;
    assert_eq!(
        bob.sync_texts().await,
        vec!["hello from the second browser".to_string()]
    );

    // It leaves; an admin's page removes it from the group.
    second.click("#group-toggle").await;
    second
        .click_when_shown("#leave-group", "the leave button")
        .await;
    browser
        .wait_for(
            &format!(
                "return document.querySelector('#group-members-list li[data-phone=\"{second_phone}\"]') === null && document.querySelectorAll('#group-members-list li').length === 2"
            ),
            "the second page gone from the members",
        )
        .await;
    // What the group says next reaches bob, not the page that left.
    browser.send("after the second page left").await;
    assert_eq!(
        bob.sync_texts().await,
        vec!["after the second page left".to_string()]
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = second
        .js("return [...document.querySelectorAll('#messages li.message .text')].map(e => e.textContent)")
        .await;
    assert!(
        !seen.to_string().contains("after the second page left"),
        "{seen}"
    );
    second.close().await;

    // On a phone-sized screen the page shows the list or the chat, with a
    // way back.
    browser.driver.set_window_size(375, 740).await.unwrap();
    let shown = browser
        .js("return ['chats', 'chat', 'back'].map(id => getComputedStyle(document.getElementById(id)).display !== 'none')")
        .await;
    assert_eq!(shown, json!([false, true, true]), "a chat open on a phone");
    browser.click("#back").await;
    let shown = browser
        .js("return ['chats', 'chat'].map(id => getComputedStyle(document.getElementById(id)).display !== 'none')")
        .await;
    assert_eq!(shown, json!([true, false]), "back to the list");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_replies_reacts_edits_deletes_forwards_sets_a_timer_and_approves_a_laptop() {
    let server = web_server();
    let page = "+919800000321";
    let bob = bob();
    let carol = common::carol();
    bob.register(&server).await;
    carol.register(&server).await;
    let browser = Browser::open("en-US").await;
    browser.load(&server).await;
    browser.register(&server, page).await;

    // The page has a chat with carol, and bob asks something.
    browser.start_chat(&carol.phone).await;
    browser.send("hi carol").await;
    browser.wait_tick("hi carol", "sent").await;
    let mut b = bob.connect().await;
    let question = b.send_text(page, "are you coming?").await.unwrap();
    b.close().await;
    browser
        .click_when_shown(&format!("button[data-chat='{}']", bob.phone), "bob's chat")
        .await;
    browser
        .wait_incoming("are you coming?", "bob's question")
        .await;

    // A reply quotes the question; a reaction lands on it.
    browser.message_action("are you coming?", "Reply").await;
    let composing = browser
        .js("return document.getElementById('composing-what').textContent")
        .await;
    assert_eq!(composing, json!("Replying to: are you coming?"));
    browser.send("yes, at 8").await;
    browser
        .message_action("are you coming?", "React with 👍")
        .await;
    browser.send("oops, wrong chat").await;
    browser.wait_tick("oops, wrong chat", "sent").await;

    // The page edits its answer and deletes the slip (two presses).
    browser.message_action("yes, at 8", "Edit").await;
    assert_eq!(
        browser
            .js("return document.getElementById('message').value")
            .await,
        json!("yes, at 8")
    );
    browser.send("yes, at 9").await;
    browser
        .message_action("oops, wrong chat", "Delete for everyone")
        .await;
    browser
        .message_action("oops, wrong chat", "Delete for everyone? Press again")
        .await;
    browser
        .wait_for(
            &format!("return [...document.querySelectorAll('#messages li .text.deleted')].length === 1 && document.querySelector(\"button[data-chat='{}'] .chat-last\").textContent.endsWith('This message was deleted')", bob.phone),
            "the slip shown as deleted, in the chat and the list",
        )
        .await;

    // A disappearing-message timer for the chat, from the header.
    browser
        .js("const s = document.getElementById('timer'); s.value = '86400'; s.dispatchEvent(new Event('change')); return true")
        .await;

    let events = common::sync_events(&bob).await;
    let texts: Vec<(String, Option<String>)> = events
        .iter()
        .filter_map(|e| match e {
            dak_client::Event::Message(m) => Some((
                m.text.clone(),
                m.reply_to.as_ref().map(|q| q.snippet.clone()),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        texts,
        vec![
            ("yes, at 8".to_string(), Some("are you coming?".to_string())),
            ("oops, wrong chat".to_string(), None),
        ]
    );
    let profile = bob.profile();
    assert_eq!(
        profile.reactions(&question.id).unwrap(),
        vec![(page.to_string(), "👍".to_string())]
    );
    let answer: Vec<(String, bool, bool)> = profile
        .conversation(page, 10)
        .unwrap()
        .into_iter()
        .filter(|m| !m.outgoing)
        .map(|m| (m.text, m.edited_ms > 0, m.deleted))
        .collect();
    assert_eq!(answer.len(), 2, "{answer:?}");
    assert_eq!(answer[0], ("yes, at 9".to_string(), true, false));
    assert!(answer[1].2, "the slip is deleted on bob's side: {answer:?}");
    browser
        .wait_for(
            "return document.getElementById('timer').value === '86400'",
            "the timer shown as set",
        )
        .await;
    common::sync_events(&bob).await;
    assert_eq!(bob.profile().chat_timer(page).unwrap(), 86400);

    // Forwarding bob's question to carol: labelled as forwarded there.
    browser.message_action("are you coming?", "Forward").await;
    browser
        .click_when_shown(
            &format!("#forward-list input[value='{}']", carol.phone),
            "carol in the forward list",
        )
        .await;
    browser.click("#forward-send").await;
    browser
        .wait_for(
            "return !document.getElementById('forward-dialog').open",
            "the forward dialog closed",
        )
        .await;
    let forwarded: Vec<(String, u32)> = common::sync_events(&carol)
        .await
        .into_iter()
        .filter_map(|e| match e {
            dak_client::Event::Message(m) => Some((m.text, m.forwarded)),
            _ => None,
        })
        .collect();
    assert_eq!(
        forwarded,
        vec![
            ("hi carol".to_string(), 0),
            ("are you coming?".to_string(), 1)
        ]
    );
    browser.message_action("are you coming?", "Reply").await;
    assert_eq!(
        browser.unnamed_controls().await,
        json!([]),
        "with a message's actions open"
    );
    // The audit does see a control with no name.
    browser
        .js("const b = document.createElement('button'); b.id = 'nameless'; document.body.append(b); return true")
        .await;
    let found = browser.unnamed_controls().await;
    assert!(found.to_string().contains("nameless"), "{found}");
    browser
        .js("document.getElementById('nameless').remove(); return true")
        .await;
    browser.screenshot("message-actions.png").await;

    // The page approves a laptop for its account, which gets its chats.
    browser
        .js("document.getElementById('composing-cancel').click(); return true")
        .await;
    let laptop = common::Person::new(page);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (profile, url) = (laptop.profile(), server.url.clone());
    let linking = tokio::spawn(async move {
        let mut tx = Some(tx);
        dak_client::Client::link(&profile, &url, "laptop", |code, _| {
            if let Some(tx) = tx.take() {
                let _ = tx.send(code.to_string());
            }
        })
        .await
    });
    let code = rx.await.unwrap();
    browser.click("#devices summary").await;
    browser.fill("#approve-code", &code).await;
    browser.click("#approve-form button[type=submit]").await;
    let said = browser
        .wait_for(
            "const p = document.getElementById('approve-result'); return p.hidden ? '' : p.textContent",
            "the approval's result",
        )
        .await;
    assert!(
        said.as_str().unwrap().starts_with("Linked. It was sent "),
        "{said}"
    );
    linking.await.unwrap().unwrap();
    let events = common::sync_events(&laptop).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, dak_client::Event::History { chats: 2, .. })),
        "{events:?}"
    );
    let texts: Vec<String> = laptop
        .profile()
        .conversation(&carol.phone, 10)
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, vec!["hi carol", "are you coming?"]);
    browser.close().await;
}

/// A journal of what `chats` conversations hold (the first with
/// `busiest` messages, the others with `per_chat`), to append to a
/// registered page's own journal: conversations and messages only (the
/// page keeps its registration and keys).
fn big_history(chats: usize, busiest: usize, per_chat: usize) -> Vec<u8> {
    use dak_core::journal::{JournalSink, JournaledStore};
    use dak_core::{Bracket, ConversationId, MessageView, ProfileStore};
    #[derive(Clone, Default)]
    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl JournalSink for Sink {
        fn append(&self, frame: &[u8]) -> Result<(), dak_core::ClientError> {
            self.0.lock().unwrap().extend_from_slice(frame);
            Ok(())
        }
    }
    let sink = Sink::default();
    let store = JournaledStore::new(dak_core::memory::MemoryStore::new(), Box::new(sink.clone()));
    let t0 = 1_760_000_000_000i64;
    let mut n = 0u64;
    for c in 0..chats {
        let peer = format!("+9198{:08}", 20_000 + c);
        let mut group = [7u8; 16];
        group[..8].copy_from_slice(&(c as u64).to_le_bytes());
        store.begin(Bracket::Transaction).unwrap();
        store.add_conversation(&group, &peer, t0).unwrap();
        let count = if c == 0 { busiest } else { per_chat };
        for m in 0..count {
            n += 1;
            let mut id = [9u8; 16];
            id[..8].copy_from_slice(&n.to_le_bytes());
            let at = t0 + n as i64 * 1000;
            let outgoing = m % 3 == 2;
            store
                .insert_message(&MessageView {
                    id: id.to_vec(),
                    conversation: ConversationId::Direct(peer.clone()),
                    from: if outgoing {
                        String::new()
                    } else {
                        peer.clone()
                    },
                    from_device: 1,
                    outgoing,
                    text: format!("message {n} of a conversation, about sixty bytes long."),
                    sent_at_ms: at,
                    server_time_ms: at,
                    acked: true,
                    read_ms: at,
                    ..Default::default()
                })
                .unwrap();
            if m % 100 == 99 {
                store.commit(Bracket::Transaction).unwrap();
                store.begin(Bracket::Transaction).unwrap();
            }
        }
        store.commit(Bracket::Transaction).unwrap();
    }
    drop(store);
    std::mem::take(&mut *sink.0.lock().unwrap())
}

/// A 1×1 PNG: what a photo is to a test.
const PNG_1X1: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0a, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
    0x42, 0x60, 0x82,
];

/// Files both ways between the page and the CLI: a photo from the CLI
/// opened on the page as a picture; a document attached on the page (with
/// a caption) saved byte for byte by the CLI; a voice note recorded with
/// the browser's microphone arriving with its length; every new control
/// named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_voice_notes_go_both_ways_between_the_page_and_the_cli() {
    let server = web_server();
    let page_phone = "+919800000311";
    let bob = bob();
    bob.register(&server).await;
    let browser = Browser::open("en-US").await;
    browser.load(&server).await;
    browser.register(&server, page_phone).await;
    browser.start_chat(&bob.phone).await;
    browser.send("hello, send me the photo").await;
    browser.wait_tick("hello, send me the photo", "sent").await;

    // bob sends a photo from the CLI; the page opens it as a picture.
    let dir = tempfile::tempdir().unwrap();
    let photo = dir.path().join("train-ticket.png");
    std::fs::write(&photo, PNG_1X1).unwrap();
    let dak = |args: &[&str]| common::ok(&bob.dir, args);
    dak(&["sync"]);
    dak(&[
        "send",
        page_phone,
        "--file",
        photo.to_str().unwrap(),
        "--caption",
        "your ticket",
    ]);
    browser.wait_incoming("your ticket", "bob's photo").await;
    browser
        .wait_for(
            "return !!document.querySelector('#messages li.incoming .attachment button.download')",
            "a download button on the photo",
        )
        .await;
    browser
        .click("#messages li.incoming .attachment button.download")
        .await;
    browser
        .wait_for(
            "const img = document.querySelector('#messages li.incoming .attachment img.preview');
             return !!img && img.complete && img.naturalWidth === 1 && img.alt === 'train-ticket.png'",
            "the photo shown",
        )
        .await;
    assert_eq!(
        browser
            .js("return document.querySelector('#messages .attachment a.save').download")
            .await,
        json!("train-ticket.png")
    );

    // The page sends a document with a caption (as a picked file).
    let doc: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    browser.fill("#message", "the form, filled in").await;
    browser.attach("form.pdf", "application/pdf", &doc).await;
    browser.wait_tick("the form, filled in", "sent").await;
    // The sender's own copy is shown from the picked file, not downloaded.
    assert_eq!(
        browser
            .js("const li = [...document.querySelectorAll('#messages li.outgoing')].find(li => li.querySelector('.attachment'));
                 return [!!li.querySelector('a.save'), !!li.querySelector('button.download')]")
            .await,
        json!([true, false])
    );
    let got = dak(&["--json", "sync"]);
    let lines: Vec<Value> = got
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let saved = lines
        .iter()
        .find(|v| v["type"] == "media_saved")
        .unwrap_or_else(|| panic!("bob saved no file: {got}"));
    let path = saved["path"].as_str().unwrap();
    assert!(path.ends_with("form.pdf"), "{path}");
    assert_eq!(std::fs::read(path).unwrap(), doc, "byte for byte");
    let message = lines
        .iter()
        .find(|v| v["text"] == "the form, filled in")
        .unwrap();
    assert_eq!(message["attachment"]["media_type"], "application/pdf");

    // A picture from the page comes with its size and a thumbnail the
    // browser drew.
    browser.attach("selfie.png", "image/png", PNG_1X1).await;
    let mut picture = None;
    for _ in 0..100 {
        let got = dak(&["--json", "sync"]);
        picture = got
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["attachment"]["file_name"] == "selfie.png");
        if picture.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let picture = picture.expect("the picture reached bob");
    assert_eq!(picture["attachment"]["width"], 1, "{picture}");
    assert_eq!(picture["attachment"]["height"], 1, "{picture}");
    assert!(
        picture["attachment"]["thumbnail_bytes"].as_u64().unwrap() > 0,
        "{picture}"
    );

    // A voice note from the browser's (fake) microphone.
    browser.click("#record").await;
    browser
        .wait_for(
            "return document.getElementById('record').getAttribute('aria-pressed') === 'true'",
            "recording",
        )
        .await;
    assert_eq!(
        browser.unnamed_controls().await,
        json!([]),
        "every control is named"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    browser.click("#record").await;
    browser
        .wait_for(
            "const files = [...document.querySelectorAll('#messages li.outgoing')].filter(li => li.querySelector('.attachment'));
             const tick = files.length === 3 && files[2].querySelector('.tick');
             return !!tick && ['sent', 'delivered', 'read'].includes(tick.dataset.tick)",
            "the voice note sent",
        )
        .await;
    let got = dak(&["--json", "sync"]);
    let voice = got
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["attachment"]["voice_note"] == true)
        .unwrap_or_else(|| panic!("no voice note: {got}"));
    assert!(
        voice["attachment"]["duration_ms"].as_u64().unwrap() >= 1000,
        "{voice}"
    );
    assert!(
        voice["attachment"]["media_type"]
            .as_str()
            .unwrap()
            .starts_with("audio/"),
        "{voice}"
    );
    assert_eq!(
        browser.unnamed_controls().await,
        json!([]),
        "every control is named"
    );
    browser.screenshot("files.png").await;
    browser.close().await;
}

/// What a bot (a client here, as `dak bot serve` is) receives: the
/// choices in the messages it got.
async fn choices_received(bot: &Person) -> Vec<String> {
    sync_events(bot)
        .await
        .into_iter()
        .filter_map(|e| match e {
            dak_client::Event::Message(m) => m.choice.map(|c| c.id),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bots_buttons_and_list_are_tapped_in_the_page_which_names_it_only_once_verified() {
    let server = web_server();
    let page_phone = "+919800000321";
    let bot = Person::new("+919800000100");
    bot.register(&server).await;
    common::ok(
        &bot.dir,
        &[
            "bot",
            "profile",
            "--name",
            "Dak Rail",
            "--category",
            "Railways",
        ],
    );
    let browser = Browser::open("en-US").await;
    browser.load(&server).await;
    browser.register(&server, page_phone).await;
    browser.start_chat(&bot.phone).await;
    browser.send("ticket").await;
    browser.wait_tick("ticket", "sent").await;
    // Not verified yet: a business account, by number.
    browser
        .wait_for(
            "const l = document.getElementById('business-line');
             return !l.hidden && l.textContent.startsWith('Business account (not verified)')
                && l.textContent.includes(\"read by the business's systems\")",
            "the unverified business line",
        )
        .await;

    // Buttons: a tap sends the choice.
    let mut b = bot.connect().await;
    b.sync(|_| {}).await.unwrap();
    let buttons = dak_proto::v1::Interactive {
        buttons: vec![
            dak_proto::v1::Button {
                id: "buy".into(),
                title: "Buy".into(),
            },
            dak_proto::v1::Button {
                id: "cancel".into(),
                title: "Cancel".into(),
            },
        ],
        footer: "Fare ₹10".into(),
        ..Default::default()
    };
    let opts = dak_client::TextOptions {
        interactive: Some(Box::new(buttons)),
        ..Default::default()
    };
    b.send_text_with(page_phone, "Churchgate → Dadar?", &opts)
        .await
        .unwrap();
    b.close().await;
    browser
        .wait_incoming("Churchgate → Dadar?", "the bot's buttons")
        .await;
    assert_eq!(browser.unnamed_controls().await, json!([]));
    browser
        .click_when_shown(
            "#messages li.incoming button.choice[aria-label='Choose Buy']",
            "the Buy button",
        )
        .await;
    browser.wait_tick("☑ Buy", "sent").await;
    assert_eq!(choices_received(&bot).await, ["buy"]);

    // A list opens from its button; a row is chosen.
    let list = dak_proto::v1::Interactive {
        list: Some(dak_proto::v1::ChoiceList {
            button: "Stations".into(),
            sections: vec![dak_proto::v1::ListSection {
                title: "Western line".into(),
                rows: vec![
                    dak_proto::v1::ListRow {
                        id: "ccg".into(),
                        title: "Churchgate".into(),
                        description: "Zone 1".into(),
                    },
                    dak_proto::v1::ListRow {
                        id: "dadar".into(),
                        title: "Dadar".into(),
                        description: String::new(),
                    },
                ],
            }],
        }),
        ..Default::default()
    };
    let opts = dak_client::TextOptions {
        interactive: Some(Box::new(list)),
        ..Default::default()
    };
    let mut b = bot.connect().await;
    b.send_text_with(page_phone, "To which station?", &opts)
        .await
        .unwrap();
    b.close().await;
    browser
        .wait_incoming("To which station?", "the bot's list")
        .await;
    browser
        .click_when_shown("#messages li.incoming details summary", "the list's button")
        .await;
    assert_eq!(browser.unnamed_controls().await, json!([]));
    browser
        .click_when_shown(
            "#messages li.incoming button.choice[aria-label='Choose Dadar']",
            "the Dadar row",
        )
        .await;
    browser.wait_tick("☑ Dadar", "sent").await;
    assert_eq!(choices_received(&bot).await, ["dadar"]);

    // Verified by the operator: the page names it, once it asks again.
    let data = server.data.to_str().unwrap().to_string();
    common::ok(
        &bot.dir,
        &[
            "admin",
            "--data",
            &data,
            "verify-business",
            &bot.phone,
            "--name",
            "Dak Rail",
        ],
    );
    browser.load(&server).await;
    browser
        .click_when_shown(
            &format!("#chat-list button[data-chat='{}']", bot.phone),
            "the bot's chat",
        )
        .await;
    browser
        .wait_for(
            "const l = document.getElementById('business-line');
             return !l.hidden && l.textContent.startsWith('✔ Dak Rail, verified business')",
            "the verified business line",
        )
        .await;

    // Reported (and so blocked) from the chat's header: its messages stop.
    assert_eq!(browser.unnamed_controls().await, json!([]));
    browser.click("#report").await;
    browser
        .wait_for(
            "return document.getElementById('block').textContent === 'Unblock'",
            "the chat shown as blocked",
        )
        .await;
    let mut b = bot.connect().await;
    let offer = b.send_text(page_phone, "one more offer").await.unwrap();
    b.close().await;
    // The server held it for none of the page's devices (so the wait
    // below cannot pass merely because it has not arrived yet).
    assert_eq!(
        offer.recipient_devices, 0,
        "the block did not reach the server"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let shown = browser
        .js("return [...document.querySelectorAll('#messages li .text')].some(e => e.textContent === 'one more offer')")
        .await;
    assert_eq!(shown, json!(false), "a reported bot's message was shown");
    browser.close().await;
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Dak Web with a big profile in headless Chromium, as BENCHMARKS.md
/// records it: `cargo test -p dak --test web -- --ignored --nocapture
/// a_big_profile`. The page registers, then (with no tab open) its journal
/// gets 1,000 conversations and 100,000 messages appended (one chat of
/// 10,000); then: time from navigation to the drawn chat list on the first
/// open (replay and compaction) and on a reload (replay of the snapshot);
/// time to open the 10,000-message chat (its newest 200) and to scroll back
/// through all of it (pages of twice the size); the core's WebAssembly
/// memory and the page's JavaScript heap. Timings come from the page's own
/// `performance.now()`; a measurement, not a test: it asserts only that
/// everything was shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it by name (BENCHMARKS.md)"]
async fn a_big_profile_in_chromium() {
    let server = web_server();
    let browser = Browser::open("en-US").await;
    browser.load(&server).await;
    browser.register(&server, "+919800000331").await;
    let history = big_history(1_000, 10_000, 90);
    println!("appending {} bytes of journal", history.len());

    // No tab holds the profile while its journal grows.
    browser
        .driver
        .goto(&format!("{}web/bundle.json", page_url(&server)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sizes = browser
        .driver
        .execute_async(
            "const done = arguments[arguments.length - 1];
             (async () => {
               const root = await navigator.storage.getDirectory();
               const out = [];
               for (const name of ['dak-profile.a.journal', 'dak-profile.b.journal']) {
                 const f = await root.getFileHandle(name, { create: true });
                 out.push((await f.getFile()).size);
               }
               done(out);
             })().catch((e) => done(String(e)));",
            vec![],
        )
        .await
        .unwrap();
    let sizes: Vec<u64> =
        serde_json::from_value(sizes.clone()).unwrap_or_else(|_| panic!("{sizes}"));
    let (name, mut at) = if sizes[0] >= sizes[1] {
        ("dak-profile.a.journal", sizes[0])
    } else {
        ("dak-profile.b.journal", sizes[1])
    };
    for chunk in history.chunks(3 << 20) {
        let wrote = browser
            .driver
            .execute_async(
                "const [name, at, b64, done] = arguments;
                 (async () => {
                   const bin = atob(b64);
                   const bytes = new Uint8Array(bin.length);
                   for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
                   const root = await navigator.storage.getDirectory();
                   const f = await root.getFileHandle(name);
                   const w = await f.createWritable({ keepExistingData: true });
                   await w.write({ type: 'write', position: at, data: bytes });
                   await w.close();
                   done(true);
                 })().catch((e) => done(String(e)));",
                vec![json!(name), json!(at), json!(base64(chunk))],
            )
            .await
            .unwrap();
        assert_eq!(wrote, json!(true), "{wrote}");
        at += chunk.len() as u64;
    }

    const SHOWN: &str = "return document.body.dataset.chatsShownMs ? [Number(document.body.dataset.chatsShownMs), document.querySelectorAll('#chat-list li').length, document.body.dataset.journalGeneration, Number(document.body.dataset.coreMemoryBytes || 0)] : null";
    browser.driver.goto(&page_url(&server)).await.unwrap();
    let first = browser.wait_for(SHOWN, "the chat list").await;
    browser.driver.refresh().await.unwrap();
    let second = browser.wait_for(SHOWN, "the chat list again").await;
    browser
        .click_when_shown("#chat-list li:last-child button", "the busiest chat")
        .await;
    let open = browser
        .wait_for(
            "return document.body.dataset.openChatMs ? [Number(document.body.dataset.openChatMs), Number(document.getElementById('messages').dataset.drawn)] : null",
            "the busiest chat's newest page",
        )
        .await;
    // Back to its first message: a jump to the top draws the rows there,
    // reaching the top loads twice as many, until all are loaded.
    let mut pages = Vec::new();
    let mut jumps = Vec::new();
    loop {
        let state = browser
            .js("const l = document.getElementById('messages'); return [Number(l.dataset.loaded), l.dataset.complete]")
            .await;
        if state == json!([10_000, "true"]) {
            break;
        }
        let jump = browser
            .js("document.body.dataset.loadEarlierMs = ''; const l = document.getElementById('messages'); const t = performance.now(); l.scrollTop = 0; l.dispatchEvent(new Event('scroll')); const ms = performance.now() - t; l.dispatchEvent(new Event('scroll')); return ms")
            .await;
        jumps.push(jump);
        let page = browser
            .wait_for(
                "return document.body.dataset.loadEarlierMs ? [Number(document.body.dataset.loadEarlierMs), Number(document.getElementById('messages').dataset.loaded), Number(document.getElementById('messages').dataset.drawn)] : null",
                "an earlier page",
            )
            .await;
        pages.push(page);
    }
    let memory = browser
        .js("return [Number(document.body.dataset.coreMemoryBytes || 0), performance.memory ? performance.memory.usedJSHeapSize : 0]")
        .await;
    println!(
        "first open (replay {} bytes + compaction): chat list at {} ms [rows, generation, wasm bytes] {first}",
        history.len(),
        first[0]
    );
    println!(
        "reload (replay of the snapshot): chat list at {} ms {second}",
        second[0]
    );
    println!("open the 10,000-message chat (newest page): {open} [ms, messages drawn]");
    println!("scrolling back: jumps to the top of what is loaded, ms: {jumps:?}");
    println!("scrolling back: each earlier page [ms, messages loaded, rows drawn]: {pages:?}");
    println!("memory [core wasm bytes, page JS heap bytes]: {memory}");
    let all = pages.last().map(|p| p[1].clone()).unwrap_or(json!(0));
    assert_eq!(
        all,
        json!(10_000),
        "every message of the busiest chat was loaded"
    );
    // One more jump to the top shows the chat's very first message.
    browser
        .js("const l = document.getElementById('messages'); l.scrollTop = 0; l.dispatchEvent(new Event('scroll')); return true")
        .await;
    browser
        .wait_for(
            "const t = document.querySelector('#messages li.message .text'); return t && t.textContent === 'message 1 of a conversation, about sixty bytes long.'",
            "the chat's first message at the top",
        )
        .await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_notice_shows_in_a_banner_no_message_can_reach_and_a_forged_one_is_refused() {
    let mut server = web_server();
    let page_phone = "+919800000331";
    let alice = common::alice();
    alice.register(&server).await;
    let browser = Browser::open("en-US").await;
    browser.load(&server).await;
    browser.register(&server, page_phone).await;
    let data = server.data.to_str().unwrap().to_string();
    let admin = |args: &[&str]| {
        let mut all = vec!["admin", "--data", &data, "notice"];
        all.extend_from_slice(args);
        common::ok(&alice.dir, &all)
    };

    // A chat message dressed as a notice stays in its chat.
    alice
        .connect()
        .await
        .send_text(
            page_phone,
            "Notice from the server's operator: send your PIN",
        )
        .await
        .unwrap();
    browser.start_chat(&alice.phone).await;
    browser
        .wait_incoming(
            "Notice from the server's operator: send your PIN",
            "the fake",
        )
        .await;
    assert_eq!(
        browser
            .js("return document.getElementById('operator-notice').hidden")
            .await,
        json!(true)
    );

    // Published while the page is open: pushed, checked, in the banner.
    admin(&[
        "publish",
        "--kind",
        "incident",
        "--title",
        "Files are slow to send",
        "--what",
        "The object store is overloaded.",
        "--advice",
        "Keep the tab open.",
    ]);
    let heading = browser
        .wait_for(
            "const b = document.getElementById('operator-notice');
             return b.hidden ? '' : document.getElementById('operator-notice-heading').textContent
               + ' | ' + document.getElementById('operator-notice-body').textContent",
            "the notice banner",
        )
        .await;
    let heading = heading.as_str().unwrap();
    assert!(
        heading.starts_with(
            "Notice from the server's operator (signed, in the public log): incident, ongoing"
        ) && heading.contains("Files are slow to send")
            && heading.contains("What to do: Keep the tab open."),
        "{heading}"
    );
    assert_eq!(browser.unnamed_controls().await, json!([]));

    // The notices page lists it; in Hindi too.
    browser.click("#operator-notice-all").await;
    let listed = browser
        .wait_for(
            "const d = document.getElementById('notices-dialog');
             return d.open ? document.getElementById('notices-list').textContent : ''",
            "the notices page",
        )
        .await;
    assert!(listed.as_str().unwrap().contains("Files are slow to send"));
    assert_eq!(browser.unnamed_controls().await, json!([]));
    browser.click("#notices-close").await;
    browser
        .js("const s = document.getElementById('language'); s.value = 'hi'; s.dispatchEvent(new Event('change')); return true")
        .await;
    let hindi = browser
        .js("return document.getElementById('operator-notice-heading').textContent")
        .await;
    assert!(
        hindi.as_str().unwrap().starts_with("सर्वर संचालक की सूचना"),
        "{hindi}"
    );

    // A server under another notice key: the page says it refused one.
    server.kill9();
    std::fs::remove_file(server.data.join("notice.key")).unwrap();
    std::fs::remove_file(server.data.join("notices.log")).unwrap();
    server.restart();
    admin(&[
        "publish",
        "--kind",
        "security",
        "--title",
        "Forged: re-enter your code",
    ]);
    browser.load(&server).await;
    let refused = browser
        .wait_for(
            "const b = document.getElementById('operator-notice');
             return b.hidden ? '' : b.textContent",
            "the refusal",
        )
        .await;
    let refused = refused.as_str().unwrap();
    assert!(
        refused.contains("सर्वर की एक सूचना अस्वीकार की गई") && !refused.contains("Forged"),
        "{refused}"
    );
    browser.close().await;
}
