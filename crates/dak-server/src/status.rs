//! `GET /status`: what this node knows of its own health and of the
//! operator's incidents, as JSON (the default) or as a small page (for a
//! browser that asks for `text/html`).
//!
//! Invariants:
//! - It answers while the store is down: each component's check has a
//!   deadline (`CHECK_TIMEOUT`), and incidents come from the notice log,
//!   which is a file of its own (`notices.rs`), never from the store.
//! - It shows only what the public notice log shows: a targeted notice
//!   appears as a count, never with its text or its account.
//! - The page is built from escaped text; a notice cannot inject markup.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dak_proto::notices::{kind_name, state_name};
use dak_proto::v1::{self, NoticeState, OperatorNoticeKind};
use serde::Serialize;

use crate::state::AppState;

/// How long one component's check may take before it counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize)]
pub struct Status {
    /// Every component is up and no incident is ongoing.
    pub ok: bool,
    pub checked_at_ms: i64,
    pub version: &'static str,
    pub components: Vec<Component>,
    /// Ongoing incidents first, then resolved ones, newest first.
    pub incidents: Vec<Incident>,
    /// Targeted-attack notices sent, by count only.
    pub targeted_notices: usize,
    pub notice_log: LogInfo,
}

#[derive(Serialize)]
pub struct Component {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Serialize)]
pub struct Incident {
    pub thread: u64,
    pub kind: &'static str,
    pub state: &'static str,
    pub title: String,
    pub started_ms: i64,
    pub aware_ms: i64,
    pub updates: Vec<Update>,
}

#[derive(Serialize)]
pub struct Update {
    pub index: u64,
    pub published_ms: i64,
    pub state: &'static str,
    pub title: String,
    pub what_happened: String,
    pub affected: String,
    pub not_affected: String,
    pub advice: String,
}

#[derive(Serialize)]
pub struct LogInfo {
    pub length: u64,
    pub head: String,
    /// The operator's notice key, as clients pin it.
    pub key: String,
}

/// Runs `check` in a task of its own with the deadline; `Err` text on
/// failure or timeout. Its own task: a check that blocks its thread (a
/// file system on a hung mount) cannot hold up the others or the answer.
async fn within<F>(check: F) -> Result<String, String>
where
    F: std::future::Future<Output = Result<String, String>> + Send + 'static,
{
    match tokio::time::timeout(CHECK_TIMEOUT, tokio::spawn(check)).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(format!("the check failed: {e}")),
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    }
}

fn component(name: &'static str, result: Result<String, String>) -> Component {
    match result {
        Ok(detail) => Component {
            name,
            ok: true,
            detail,
        },
        Err(detail) => Component {
            name,
            ok: false,
            detail,
        },
    }
}

/// Checks every component and reads the incidents.
pub async fn collect(state: &AppState) -> Status {
    let store_kind = if state.probes.postgres.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let s = state.clone();
    let store = within(async move {
        let state = s;
        if let Some(pg) = &state.probes.postgres {
            pg.ping()
                .await
                .map_err(|e| format!("{store_kind} unreachable: {e}"))?;
        }
        state
            .store
            .mailbox_len(0)
            .await
            .map(|_| format!("{store_kind} answers"))
            .map_err(|e| format!("{store_kind} does not answer: {e}"))
    });
    let bus = async {
        match &state.probes.nats {
            Some(nats) if nats.connected() => Ok(format!(
                "NATS connected (cluster {:?})",
                state.config.cluster
            )),
            Some(_) => Err("NATS unreachable: other nodes are not told of new mail".to_string()),
            None => Ok("in this process (one node)".to_string()),
        }
    };
    let s = state.clone();
    let media = within(async move {
        let state = s;
        state
            .blobs
            .objects(b"status")
            .await
            .map(|_| state.blobs.describe())
            .map_err(|e| format!("{}: {e}", state.blobs.describe()))
    });
    let (store, bus, media) = tokio::join!(store, bus, media);
    let sms = {
        let ok = state
            .metrics
            .sms_last_ok_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let failed = state
            .metrics
            .sms_last_failure_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if failed > ok {
            Err(format!(
                "the last code could not be sent (at {}); registration waits",
                format_ms(failed)
            ))
        } else if ok > 0 {
            Ok(format!("last code sent at {}", format_ms(ok)))
        } else {
            Ok("no code sent since this node started".to_string())
        }
    };
    let draining = *state.shutdown.borrow();
    let node = if draining {
        Err("draining: devices are moving to other nodes".to_string())
    } else {
        Ok(format!(
            "serving {} connections",
            state
                .metrics
                .connections_open
                .load(std::sync::atomic::Ordering::Relaxed)
        ))
    };
    let components = vec![
        component("node", node),
        component("store", store),
        component("bus", bus),
        component("sms", sms),
        component("object_store", media),
    ];
    let log = state.notices.log();
    let (incidents, targeted_notices) = incidents(&log.notices);
    Status {
        ok: components.iter().all(|c| c.ok) && incidents.iter().all(|i| i.state == "resolved"),
        checked_at_ms: crate::state::now_ms(),
        version: env!("CARGO_PKG_VERSION"),
        components,
        incidents,
        targeted_notices,
        notice_log: LogInfo {
            length: log.chain.length,
            head: hex::encode(log.chain.head),
            key: hex::encode(state.notices.key().to_bytes()),
        },
    }
}

/// Groups the log's public notices by incident (thread).
fn incidents(notices: &[v1::OperatorNotice]) -> (Vec<Incident>, usize) {
    let mut threads: BTreeMap<u64, Incident> = BTreeMap::new();
    let mut targeted = 0;
    for n in notices {
        if n.kind == OperatorNoticeKind::TargetedAttack as i32 {
            targeted += 1;
            continue;
        }
        let update = Update {
            index: n.index,
            published_ms: n.published_ms,
            state: state_name(n.state),
            title: n.title.clone(),
            what_happened: n.what_happened.clone(),
            affected: n.affected.clone(),
            not_affected: n.not_affected.clone(),
            advice: n.advice.clone(),
        };
        let incident = threads.entry(n.thread).or_insert_with(|| Incident {
            thread: n.thread,
            kind: kind_name(n.kind),
            state: "ongoing",
            title: n.title.clone(),
            started_ms: n.started_ms,
            aware_ms: n.aware_ms,
            updates: Vec::new(),
        });
        incident.state = state_name(n.state);
        incident.title = n.title.clone();
        if n.started_ms != 0 {
            incident.started_ms = n.started_ms;
        }
        if n.aware_ms != 0 {
            incident.aware_ms = n.aware_ms;
        }
        incident.updates.insert(0, update);
    }
    let mut out: Vec<Incident> = threads.into_values().collect();
    out.sort_by_key(|i| {
        (
            i.state == state_name(NoticeState::Resolved as i32),
            std::cmp::Reverse(i.thread),
        )
    });
    (out, targeted)
}

/// `GET /status`.
pub async fn status(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let status = collect(&state).await;
    let code = if status.components.iter().all(|c| c.ok) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    let mut response = if wants_html {
        (
            code,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            page(&status),
        )
            .into_response()
    } else {
        (
            code,
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(status),
        )
            .into_response()
    };
    response.headers_mut().insert(
        header::VARY,
        header::ACCEPT.as_str().parse().expect("static"),
    );
    response
}

/// `2026-12-06 12:30 UTC`.
pub fn format_ms(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) if ms > 0 => t.format("%Y-%m-%d %H:%M UTC").to_string(),
        _ => "unknown".into(),
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(s: &Status) -> String {
    let mut h = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>Dak status</title><style>body{font-family:sans-serif;max-width:46em;margin:1em auto;padding:0 1em}\
         .ok{color:#176b2c}.down{color:#a11}li{margin:.3em 0}section{border:1px solid #bbb;padding:.5em 1em;margin:1em 0}\
         </style></head><body><main>",
    );
    h.push_str(&format!(
        "<h1>{}</h1><p>Checked {} by this node (version {}).</p><h2>Components</h2><ul>",
        if s.ok {
            "All systems working"
        } else {
            "Something is wrong"
        },
        escape(&format_ms(s.checked_at_ms)),
        escape(s.version)
    ));
    for c in &s.components {
        h.push_str(&format!(
            "<li><strong>{}</strong>: <span class=\"{}\">{}</span> ({})</li>",
            escape(c.name),
            if c.ok { "ok" } else { "down" },
            if c.ok { "working" } else { "down" },
            escape(&c.detail)
        ));
    }
    h.push_str("</ul><h2>Incidents</h2>");
    if s.incidents.is_empty() {
        h.push_str("<p>None reported.</p>");
    }
    for i in &s.incidents {
        h.push_str(&format!(
            "<section aria-label=\"{kind} {thread}\"><h3>{title}</h3><p>{kind}, {state}. Started {started}; the operator knew from {aware}.</p>",
            kind = escape(i.kind),
            thread = i.thread,
            title = escape(&i.title),
            state = escape(i.state),
            started = escape(&format_ms(i.started_ms)),
            aware = escape(&format_ms(i.aware_ms)),
        ));
        for u in &i.updates {
            h.push_str(&format!(
                "<h4>{} ({})</h4>",
                escape(&format_ms(u.published_ms)),
                escape(u.state)
            ));
            for (label, text) in [
                ("What happened", &u.what_happened),
                ("Affected", &u.affected),
                ("Not affected", &u.not_affected),
                ("What to do", &u.advice),
            ] {
                if !text.is_empty() {
                    h.push_str(&format!(
                        "<p><strong>{label}:</strong> {}</p>",
                        escape(text).replace('\n', "<br>")
                    ));
                }
            }
        }
        h.push_str("</section>");
    }
    if s.targeted_notices > 0 {
        h.push_str(&format!(
            "<p>{} targeted-attack notice(s) went to the accounts concerned only.</p>",
            s.targeted_notices
        ));
    }
    h.push_str(&format!(
        "<h2>Notice log</h2><p>{} entries; head <code>{}</code>; signed with the key <code>{}</code>. \
         Your app checks each notice against this log.</p></main></body></html>",
        s.notice_log.length,
        escape(&s.notice_log.head),
        escape(&s.notice_log.key)
    ));
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_in_utc() {
        assert_eq!(format_ms(0), "unknown");
        assert_eq!(format_ms(1_796_558_400_000), "2026-12-06 12:00 UTC");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29 00:00 UTC");
    }

    #[test]
    fn incidents_group_by_thread_and_hide_targeted_text() {
        let n = |index, thread, state: NoticeState, kind: OperatorNoticeKind, title: &str| {
            v1::OperatorNotice {
                index,
                thread,
                state: state as i32,
                kind: kind as i32,
                title: title.into(),
                ..Default::default()
            }
        };
        let (list, targeted) = incidents(&[
            n(
                0,
                0,
                NoticeState::Ongoing,
                OperatorNoticeKind::Incident,
                "down",
            ),
            n(
                1,
                1,
                NoticeState::Ongoing,
                OperatorNoticeKind::TargetedAttack,
                "",
            ),
            n(
                2,
                0,
                NoticeState::Resolved,
                OperatorNoticeKind::Incident,
                "back",
            ),
            n(
                3,
                3,
                NoticeState::Ongoing,
                OperatorNoticeKind::Maintenance,
                "upgrade",
            ),
        ]);
        assert_eq!(targeted, 1);
        assert_eq!(list.len(), 2);
        assert_eq!(
            (list[0].title.as_str(), list[0].state),
            ("upgrade", "ongoing")
        );
        assert_eq!(
            (list[1].title.as_str(), list[1].state),
            ("back", "resolved")
        );
        assert_eq!(list[1].updates[0].index, 2, "newest update first");
    }

    #[test]
    fn the_page_escapes_notice_text() {
        assert_eq!(
            escape("<script>\"x\"&'"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;"
        );
    }
}
