//! Counters served at `/metrics` in Prometheus text format. Plain atomics:
//! the handful of series we keep does not justify a metrics registry crate.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Distinct label values one family keeps; later ones count as "other", so
/// an attacker choosing labels (destination numbers) cannot grow memory.
const MAX_LABELS: usize = 512;

/// A counter family with one label.
#[derive(Default)]
pub struct Labelled(Mutex<BTreeMap<String, u64>>);

impl Labelled {
    pub fn inc(&self, label: &str) {
        let Ok(mut m) = self.0.lock() else { return };
        if let Some(v) = m.get_mut(label) {
            *v += 1;
        } else if m.len() < MAX_LABELS {
            m.insert(label.to_owned(), 1);
        } else {
            *m.entry("other".into()).or_insert(0) += 1;
        }
    }

    pub fn get(&self, label: &str) -> u64 {
        self.0
            .lock()
            .map(|m| m.get(label).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    fn render(&self, out: &mut String, name: &str, label: &str, help: &str) {
        let _ = writeln!(out, "# HELP dak_{name} {help}\n# TYPE dak_{name} counter");
        if let Ok(m) = self.0.lock() {
            for (k, v) in m.iter() {
                let _ = writeln!(out, "dak_{name}{{{label}=\"{k}\"}} {v}");
            }
        }
    }
}

#[derive(Default)]
pub struct Metrics {
    pub connections_open: AtomicI64,
    pub connections_total: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_rejected: AtomicU64,
    /// Hints from other cluster nodes refused: a wrong HMAC, or out of
    /// bounds (shared with the bus's receiving task, `cluster_hints.rs`).
    pub cluster_hints_refused: std::sync::Arc<AtomicU64>,
    pub messages_accepted: AtomicU64,
    pub envelopes_delivered: AtomicU64,
    /// Of those, pushed from a commit hint, without reading the store.
    pub envelopes_from_memory: AtomicU64,
    pub envelopes_acked: AtomicU64,
    pub auth_failures: AtomicU64,
    pub codes_sent: AtomicU64,
    /// When a code last went out, and when sending one last failed (ms
    /// since the epoch; 0: never), for `/status`.
    pub sms_last_ok_ms: AtomicI64,
    pub sms_last_failure_ms: AtomicI64,
    pub registrations: AtomicU64,
    pub commits_accepted: AtomicU64,
    pub commits_stale: AtomicU64,
    pub commits_group_full: AtomicU64,
    /// Reports of accounts on Dak recorded (each also blocks).
    pub reports: AtomicU64,
    /// Envelopes the expiry sweep dropped unacked after the retention period.
    pub expired_retention: AtomicU64,
    /// Disappearing messages the expiry sweep dropped at their own expiry.
    pub expired_disappearing: AtomicU64,
    /// Connections closed at accept: the node's cap, or the network's cap
    /// on unauthenticated ones.
    pub connections_refused_full: AtomicU64,
    pub connections_refused_network: AtomicU64,
    /// Requests refused by a limit, by the limit's name.
    pub limited: Labelled,
    /// Codes sent, by the destination's country calling code.
    pub codes_by_country: Labelled,
    /// Connections the server closed, by why.
    pub closed: Labelled,
    /// Log lines about rejected input left out by the log rate limit.
    pub logs_suppressed: AtomicU64,
    /// Media (`media.rs`).
    pub uploads_started: AtomicU64,
    pub uploads_completed: AtomicU64,
    pub uploads_cut: AtomicU64,
    pub uploads_hash_wrong: AtomicU64,
    pub uploads_over_quota: AtomicU64,
    pub downloads: AtomicU64,
    pub media_bytes_in: AtomicU64,
    pub media_bytes_out: AtomicU64,
    pub blobs_fetched_by_all: AtomicU64,
    pub blobs_expired: AtomicU64,
    pub blob_secrets_wrong: AtomicU64,
    pub media_store_full: AtomicU64,
}

impl Metrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: u64| counter_into(&mut out, name, help, v);
        counter(
            "connections_total",
            "WebSocket connections accepted.",
            self.connections_total.load(Relaxed),
        );
        counter(
            "frames_in_total",
            "Frames received from clients.",
            self.frames_in.load(Relaxed),
        );
        counter(
            "frames_rejected_total",
            "Frames refused as malformed, oversized or invalid.",
            self.frames_rejected.load(Relaxed),
        );
        counter(
            "cluster_hints_refused_total",
            "Hints from other cluster nodes refused: a wrong HMAC (forged, damaged, or another cluster's on the same NATS) or out of bounds.",
            self.cluster_hints_refused.load(Relaxed),
        );
        counter(
            "messages_accepted_total",
            "Messages durably stored and acknowledged to the sender.",
            self.messages_accepted.load(Relaxed),
        );
        counter(
            "envelopes_delivered_total",
            "Envelopes pushed to devices.",
            self.envelopes_delivered.load(Relaxed),
        );
        counter(
            "envelopes_from_memory_total",
            "Envelopes pushed from a commit hint (this node's or, in a cluster, another's) without reading the store.",
            self.envelopes_from_memory.load(Relaxed),
        );
        counter(
            "envelopes_acked_total",
            "Envelopes acknowledged by devices and deleted.",
            self.envelopes_acked.load(Relaxed),
        );
        counter(
            "auth_failures_total",
            "Failed device authentications.",
            self.auth_failures.load(Relaxed),
        );
        counter(
            "codes_sent_total",
            "Verification codes sent.",
            self.codes_sent.load(Relaxed),
        );
        counter(
            "registrations_total",
            "Primary devices registered.",
            self.registrations.load(Relaxed),
        );
        counter(
            "mls_commits_accepted_total",
            "MLS commits accepted (each moves a group to its next epoch).",
            self.commits_accepted.load(Relaxed),
        );
        counter(
            "mls_commits_stale_total",
            "MLS commits refused because another commit won the epoch.",
            self.commits_stale.load(Relaxed),
        );
        counter(
            "mls_commits_group_full_total",
            "MLS commits refused because the group would have more member accounts than max_group_members.",
            self.commits_group_full.load(Relaxed),
        );
        counter(
            "reports_total",
            "Accounts reported for spam or abuse by another account (each report also blocks).",
            self.reports.load(Relaxed),
        );
        for (name, help, v) in [
            (
                "media_uploads_started_total",
                "Upload slots handed out (CreateBlob).",
                &self.uploads_started,
            ),
            (
                "media_uploads_completed_total",
                "Uploads whose every byte arrived and whose hash matched.",
                &self.uploads_completed,
            ),
            (
                "media_uploads_cut_total",
                "Upload requests whose body was cut off (kept, to be resumed).",
                &self.uploads_cut,
            ),
            (
                "media_uploads_hash_wrong_total",
                "Uploads deleted because their bytes did not match their hash.",
                &self.uploads_hash_wrong,
            ),
            (
                "media_uploads_over_quota_total",
                "Upload slots refused by a device's or account's quota.",
                &self.uploads_over_quota,
            ),
            (
                "media_downloads_total",
                "Downloads started (whole or ranged).",
                &self.downloads,
            ),
            (
                "media_bytes_in_total",
                "Ciphertext bytes stored from uploads.",
                &self.media_bytes_in,
            ),
            (
                "media_bytes_out_total",
                "Ciphertext bytes sent to downloads.",
                &self.media_bytes_out,
            ),
            (
                "media_blobs_fetched_by_all_total",
                "Blobs deleted because every recipient device fetched them.",
                &self.blobs_fetched_by_all,
            ),
            (
                "media_blobs_expired_total",
                "Blobs deleted at the end of retention (or unfinished past upload_ttl).",
                &self.blobs_expired,
            ),
            (
                "media_secrets_wrong_total",
                "Media requests with a token or capability that is not the blob's.",
                &self.blob_secrets_wrong,
            ),
            (
                "media_store_full_total",
                "Segments refused because the media store was full.",
                &self.media_store_full,
            ),
        ] {
            counter_into(&mut out, name, help, v.load(Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP dak_envelopes_expired_total Envelopes dropped unacked at their expiry: \
             after the retention period (reason=\"retention\": a device stayed away that long), \
             or a disappearing message's own expiry (reason=\"disappearing\").\n\
             # TYPE dak_envelopes_expired_total counter\n\
             dak_envelopes_expired_total{{reason=\"retention\"}} {}\n\
             dak_envelopes_expired_total{{reason=\"disappearing\"}} {}",
            self.expired_retention.load(Relaxed),
            self.expired_disappearing.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP dak_connections_refused_total Connections closed at accept: the node's \
             max_connections (reason=\"full\") or a network's max_unauthenticated_per_ip \
             (reason=\"network\").\n\
             # TYPE dak_connections_refused_total counter\n\
             dak_connections_refused_total{{reason=\"full\"}} {}\n\
             dak_connections_refused_total{{reason=\"network\"}} {}",
            self.connections_refused_full.load(Relaxed),
            self.connections_refused_network.load(Relaxed),
        );
        self.limited.render(
            &mut out,
            "rate_limited_total",
            "limit",
            "Requests refused with RATE_LIMITED (or a closed connection), by the limit that refused them.",
        );
        self.codes_by_country.render(
            &mut out,
            "sms_codes_by_country_total",
            "country",
            "Verification codes sent, by the destination's country calling code: a jump in one country is the mark of SMS pumping.",
        );
        self.closed.render(
            &mut out,
            "connections_closed_total",
            "reason",
            "Connections the server closed, by why.",
        );
        counter_into(
            &mut out,
            "logs_suppressed_total",
            "Log lines about rejected input left out by the log rate limit.",
            self.logs_suppressed.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP dak_connections_open Open WebSocket connections.\n# TYPE dak_connections_open gauge\ndak_connections_open {}",
            self.connections_open.load(Relaxed)
        );
        out
    }
}

fn counter_into(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP dak_{name} {help}\n# TYPE dak_{name} counter\ndak_{name} {v}"
    );
}
