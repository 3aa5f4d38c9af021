//! Counters served at `/metrics` in Prometheus text format. Plain atomics:
//! the handful of series we keep does not justify a metrics registry crate.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Metrics {
    pub connections_open: AtomicI64,
    pub connections_total: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_rejected: AtomicU64,
    pub messages_accepted: AtomicU64,
    pub envelopes_delivered: AtomicU64,
    pub envelopes_acked: AtomicU64,
    pub auth_failures: AtomicU64,
    pub codes_sent: AtomicU64,
    pub registrations: AtomicU64,
    pub commits_accepted: AtomicU64,
    pub commits_stale: AtomicU64,
    pub commits_group_full: AtomicU64,
    /// Envelopes the expiry sweep dropped unacked after the retention period.
    pub expired_retention: AtomicU64,
    /// Disappearing messages the expiry sweep dropped at their own expiry.
    pub expired_disappearing: AtomicU64,
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
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP dak_{name} {help}\n# TYPE dak_{name} counter\ndak_{name} {v}"
            );
        };
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
            "# HELP dak_connections_open Open WebSocket connections.\n# TYPE dak_connections_open gauge\ndak_connections_open {}",
            self.connections_open.load(Relaxed)
        );
        out
    }
}
