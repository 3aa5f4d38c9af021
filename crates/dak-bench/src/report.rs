//! Results: named figures with units, latency percentiles from HDR
//! histograms, printed as a table or as one JSON object.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    /// The exact parameters, so a figure can be reproduced.
    pub params: serde_json::Value,
    pub method: String,
    pub figures: Vec<Figure>,
    pub server_rss_bytes_start: Option<u64>,
    pub server_rss_bytes_end: Option<u64>,
    pub server_cpu_seconds: Option<f64>,
    pub date: String,
    pub machine: String,
}

impl Report {
    pub fn new(scenario: &str, params: serde_json::Value, method: &str) -> Self {
        Report {
            scenario: scenario.into(),
            params,
            method: method.into(),
            figures: Vec::new(),
            server_rss_bytes_start: None,
            server_rss_bytes_end: None,
            server_cpu_seconds: None,
            date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            machine: machine(),
        }
    }

    pub fn add(&mut self, name: impl Into<String>, value: f64, unit: &'static str) {
        self.figures.push(Figure {
            name: name.into(),
            value,
            unit,
        });
    }

    /// p50, p99 and p99.9 (and max) of a histogram recorded in microseconds.
    pub fn add_latency(&mut self, name: &str, h: &Histogram<u64>) {
        if h.is_empty() {
            self.add(format!("{name} samples"), 0.0, "");
            return;
        }
        for (label, q) in [("p50", 0.50), ("p99", 0.99), ("p99.9", 0.999)] {
            self.add(
                format!("{name} {label}"),
                h.value_at_quantile(q) as f64 / 1000.0,
                "ms",
            );
        }
        self.add(format!("{name} max"), h.max() as f64 / 1000.0, "ms");
        self.add(format!("{name} samples"), h.len() as f64, "");
    }

    pub fn figure(&self, name: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value)
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "scenario {}  ({})\nmethod: {}\n",
            self.scenario, self.date, self.method
        );
        out += &format!("params: {}\nmachine: {}\n\n", self.params, self.machine);
        let width = self
            .figures
            .iter()
            .map(|f| f.name.len())
            .max()
            .unwrap_or(10)
            .max(10);
        for f in &self.figures {
            let value = if f.value.fract() == 0.0 && f.value.abs() < 1e15 {
                format!("{}", f.value as i64)
            } else {
                format!("{:.3}", f.value)
            };
            out += &format!("  {:<width$}  {:>14} {}\n", f.name, value, f.unit);
        }
        if let (Some(a), Some(b)) = (self.server_rss_bytes_start, self.server_rss_bytes_end) {
            out += &format!(
                "  {:<width$}  {:>14} MiB -> {:.1} MiB\n",
                "server RSS",
                format!("{:.1}", a as f64 / 1048576.0),
                b as f64 / 1048576.0
            );
        }
        if let Some(cpu) = self.server_cpu_seconds {
            out += &format!("  {:<width$}  {:>14.2} s\n", "server CPU", cpu);
        }
        out
    }
}

pub fn histogram() -> Histogram<u64> {
    // 1 µs .. 100 s at 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).expect("3 sigfigs is valid"))
}

pub fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, 100_000_000)
}

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kib| format!("{:.0} GiB", kib as f64 / 1048576.0))
        .unwrap_or_default();
    format!("{cores} cores, {model}, {mem}")
}
