//! Server configuration: defaults, overridden by a TOML file, overridden by
//! `DAK_*` environment variables, overridden by flags (the binary applies
//! flags last). `dak server --print-config` prints the result.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the store, the TLS certificate and the SMS outbox live.
    pub data: PathBuf,
    pub listen: SocketAddr,
    /// `postgres://...` runs on a shared PostgreSQL (cluster mode); absent,
    /// the embedded SQLite store in `data` is used.
    pub store: Option<String>,
    /// `nats://...` tells other nodes about new mail (cluster mode); absent,
    /// notifications stay in this process.
    pub bus: Option<String>,
    /// Names this cluster's NATS subjects, so clusters can share a NATS.
    pub cluster: String,
    /// Cluster mode: send each committed envelope to the other nodes over
    /// NATS (they push it without reading PostgreSQL) instead of a mail
    /// wake per device. Set false while a rolling upgrade still has nodes
    /// older than the hints (they do not understand them); hints from
    /// other nodes are taken either way.
    pub cluster_hints: bool,
    /// Serve plain `ws://`. Refused unless `listen` is a loopback address.
    pub insecure: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The operator's notice signing key (Ed25519, 32 raw bytes, made at
    /// first start) [default: DATA/notice.key]. Every node of a cluster
    /// must have the same one, as with the TLS certificate.
    pub notice_key: Option<PathBuf>,
    /// The key directory's VRF key (32 raw bytes, made at first start)
    /// [default: DATA/kt-vrf.key]. Every node of a cluster must have the
    /// same one: devices pin its public half at registration.
    pub kt_key: Option<PathBuf>,
    /// The signed, append-only notice log that `dak admin notice` writes
    /// and the server serves [default: DATA/notices.log]. A cluster's nodes
    /// read one shared file (or identical copies).
    pub notices: Option<PathBuf>,
    /// How long after becoming aware of a security incident the operator
    /// must tell users (`dak admin notice list` reminds); 72 h is the GDPR's.
    #[serde(with = "humantime_serde")]
    pub notice_deadline: Duration,
    /// The web client's files (what `scripts/web-build.sh` writes to
    /// `target/web`), served at `/`; absent: no web client.
    pub web: Option<PathBuf>,
    /// Undelivered envelopes are dropped after this long.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How long a one-time registration code stays valid.
    #[serde(with = "humantime_serde")]
    pub code_ttl: Duration,
    /// Wrong codes allowed per sent code before a new one must be asked for.
    pub code_attempts: u32,
    /// Codes that may be sent to one number: a burst of
    /// `codes_per_phone_burst`, then one every hour / `codes_per_phone_per_hour`.
    /// The refill interval is the longest an attacker who spends the
    /// number's budget can keep its owner waiting (5 minutes by default).
    pub codes_per_phone_per_hour: u32,
    pub codes_per_phone_burst: u32,
    /// Code requests and verify attempts allowed from one network (an IP
    /// prefix of `ipv4_prefix_len` / `ipv6_prefix_len` bits) per hour, as a
    /// burst of that many then a steady refill.
    pub codes_per_ip_per_hour: u32,
    pub verifies_per_ip_per_hour: u32,
    pub ipv4_prefix_len: u8,
    pub ipv6_prefix_len: u8,
    /// Codes per hour to one number range: the number without its last
    /// `number_range_digits` digits (SMS pumping walks a premium range).
    pub codes_per_range_per_hour: u32,
    pub number_range_digits: u32,
    /// Codes per hour to one country calling code, and to everyone.
    pub codes_per_country_per_hour: u32,
    pub codes_per_hour: u32,
    /// Wrong registration-lock PINs before the number is locked.
    pub pin_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub pin_lockout: Duration,
    /// Linked (non-primary) devices an account may have.
    pub max_linked_devices: u32,
    /// Member accounts a group may have (each with all its devices). A
    /// commit that would bring in an account beyond it is refused with
    /// GROUP_FULL.
    pub max_group_members: u32,
    /// Linked devices must re-link after this long; off when absent.
    #[serde(with = "humantime_serde")]
    pub linked_device_max_age: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub link_code_ttl: Duration,
    /// Link requests (`dak link`) from one network per hour.
    pub links_per_ip_per_hour: u32,
    /// Connections open at once; 0 derives it from the descriptor limit.
    pub max_connections: u32,
    /// Connections from one network not yet authenticated, at once.
    pub max_unauthenticated_per_ip: u32,
    /// TLS handshake, HTTP upgrade and authentication must all be done
    /// within this time of the TCP accept.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// The server pings an idle authenticated connection this often, and
    /// closes one from which no complete frame (a pong counts) arrived for
    /// `idle_timeout`: a dead peer, or a frame that stopped half-way.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A connection whose outgoing queue stays full this long is closed.
    #[serde(with = "humantime_serde")]
    pub write_stall_timeout: Duration,
    /// Connections one device may hold at once; a new one replaces the oldest.
    pub max_connections_per_device: u32,
    /// Authenticated requests per device: a burst, then this many per second.
    pub requests_per_device_per_sec: u32,
    pub request_burst: u32,
    /// Registration-lock PIN changes per device per hour (each is an Argon2 hash).
    pub pin_changes_per_hour: u32,
    /// Argon2 hashes running at once (0: one per core), and waiting.
    pub argon2_parallel: u32,
    pub argon2_queue: u32,
    /// One-time KeyPackages the directory keeps per device.
    pub max_key_packages: u32,
    /// One-time KeyPackages one account may take of another per hour;
    /// beyond it, the target's last-resort KeyPackage is handed out.
    pub key_packages_per_target_per_hour: u32,
    /// Different numbers one account may look up per day (contact discovery).
    pub lookups_per_day: u32,
    /// What one device's mailbox may hold of application messages before
    /// new ones to it are refused (commits and Welcomes still pass).
    pub mailbox_max_envelopes: u64,
    pub mailbox_max_bytes: u64,
    /// Where `/metrics` is served; absent: loopback, the port after `listen`'s.
    pub metrics_listen: Option<SocketAddr>,
    pub sms: SmsConfig,
    /// Where media blobs' bytes are kept: absent, files in `DATA/media`
    /// (one node); for a cluster, an S3-compatible bucket every node uses
    /// (`[media_s3]`, or the `DAK_MEDIA_S3_*` variables).
    pub media_s3: Option<dak_store::S3Config>,
    /// The largest file a device may upload, before encryption (the
    /// ciphertext is padded, at most ~5% more).
    pub max_file_bytes: u64,
    /// Bytes of media one device, and one account, may hold on the server
    /// at once (uploads not yet fetched by every recipient, nor expired).
    pub media_quota_device_bytes: u64,
    pub media_quota_account_bytes: u64,
    /// Upload slots one device may take per hour (cluster-wide).
    pub uploads_per_device_per_hour: u32,
    /// An upload not finished within this long is dropped.
    #[serde(with = "humantime_serde")]
    pub upload_ttl: Duration,
    /// Media uploads and downloads this node serves at once; beyond it a
    /// transfer is told 503 with Retry-After.
    pub max_transfers: u32,
    /// Media requests (HTTP) from one network per second, as a burst of ten
    /// times that and a steady refill. A wrong token costs one like any.
    pub media_requests_per_ip_per_sec: u32,
    /// A business account's device (a bot, docs/BOTS.md) serves many
    /// people: its requests per second (and burst) replace
    /// `requests_per_device_per_sec` for it.
    pub business_requests_per_device_per_sec: u32,
    /// Messages a business account may send into one chat per minute, as a
    /// burst of that many and a steady refill: a bot answers a person, it
    /// does not flood them. Counted on each node.
    pub business_messages_per_chat_per_minute: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SmsConfig {
    /// Appends each code as a JSON line to `DATA/sms-outbox.jsonl` (development).
    Outbox,
    /// POSTs `{"to": ..., "text": ...}` as JSON to a gateway.
    Http {
        url: String,
        /// Sent as `Authorization: Bearer ...` when set.
        token: Option<String>,
    },
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data: PathBuf::from("./dak-data"),
            listen: "127.0.0.1:7443".parse().expect("static address"),
            store: None,
            bus: None,
            cluster: "dak".into(),
            cluster_hints: true,
            insecure: false,
            tls_cert: None,
            tls_key: None,
            notice_key: None,
            kt_key: None,
            notices: None,
            notice_deadline: Duration::from_secs(72 * 3600),
            web: None,
            retention: Duration::from_secs(30 * 24 * 3600),
            code_ttl: Duration::from_secs(600),
            code_attempts: 5,
            codes_per_phone_per_hour: 12,
            codes_per_phone_burst: 3,
            codes_per_ip_per_hour: 30,
            verifies_per_ip_per_hour: 60,
            ipv4_prefix_len: 24,
            ipv6_prefix_len: 56,
            codes_per_range_per_hour: 30,
            number_range_digits: 3,
            codes_per_country_per_hour: 2_000,
            codes_per_hour: 10_000,
            pin_attempts: 5,
            pin_lockout: Duration::from_secs(3600),
            max_linked_devices: 4,
            max_group_members: 1024,
            linked_device_max_age: None,
            link_code_ttl: Duration::from_secs(600),
            links_per_ip_per_hour: 30,
            max_connections: 0,
            max_unauthenticated_per_ip: 256,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            write_stall_timeout: Duration::from_secs(30),
            max_connections_per_device: 3,
            requests_per_device_per_sec: 50,
            request_burst: 500,
            pin_changes_per_hour: 5,
            argon2_parallel: 0,
            argon2_queue: 64,
            max_key_packages: 200,
            key_packages_per_target_per_hour: 10,
            // Two full groups' worth: creating a group of 1,024 looks up 1,023.
            lookups_per_day: 2_048,
            mailbox_max_envelopes: 50_000,
            mailbox_max_bytes: 512 * 1024 * 1024,
            metrics_listen: None,
            sms: SmsConfig::Outbox,
            media_s3: None,
            max_file_bytes: dak_proto::blob::MAX_FILE_BYTES,
            media_quota_device_bytes: 2 << 30,
            media_quota_account_bytes: 4 << 30,
            uploads_per_device_per_hour: 200,
            upload_ttl: Duration::from_secs(24 * 3600),
            max_transfers: 256,
            media_requests_per_ip_per_sec: 20,
            business_requests_per_device_per_sec: 2000,
            business_messages_per_chat_per_minute: 30,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, then the TOML file if given, then `DAK_*` variables.
    pub fn load(file: Option<&std::path::Path>) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?
            }
            None => Config::default(),
        };
        config.apply_env(|k| std::env::var(k).ok())?;
        Ok(config)
    }

    /// Each top-level scalar field `name` can be set by `DAK_NAME`, in the
    /// same spelling as in the TOML file (durations as "10m", "6h").
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let mut table = toml::Table::try_from(&*self)
            .map_err(|e| ConfigError::Invalid(format!("cannot serialise config: {e}")))?;
        let mut changed = false;
        for key in ENV_KEYS {
            let name = format!("DAK_{}", key.to_uppercase());
            let Some(raw) = get(&name) else { continue };
            let value = guess_value(&raw);
            table.insert(key.to_string(), value);
            changed = true;
        }
        if let Some(url) = get("DAK_SMS_HTTP_URL") {
            let mut sms = toml::Table::new();
            sms.insert("kind".into(), "http".into());
            sms.insert("url".into(), url.into());
            if let Some(token) = get("DAK_SMS_HTTP_TOKEN") {
                sms.insert("token".into(), token.into());
            }
            table.insert("sms".into(), sms.into());
            changed = true;
        }
        if let Some(bucket) = get("DAK_MEDIA_S3_BUCKET") {
            let mut s3 = toml::Table::new();
            s3.insert("bucket".into(), bucket.into());
            for key in ["endpoint", "region", "access_key_id", "secret_access_key"] {
                let name = format!("DAK_MEDIA_S3_{}", key.to_uppercase());
                if let Some(v) = get(&name) {
                    s3.insert(key.into(), v.into());
                }
            }
            s3.entry("region").or_insert_with(|| "garage".into());
            table.insert("media_s3".into(), s3.into());
            changed = true;
        }
        if changed {
            *self = table
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Env {
                    name: "DAK_*".into(),
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// Where the notice key lives.
    pub fn notice_key_path(&self) -> PathBuf {
        self.notice_key
            .clone()
            .unwrap_or_else(|| self.data.join("notice.key"))
    }

    /// Where the key directory's VRF key lives.
    pub fn kt_key_path(&self) -> PathBuf {
        self.kt_key
            .clone()
            .unwrap_or_else(|| self.data.join("kt-vrf.key"))
    }

    /// Where the notice log lives; targeted notices are in a file beside it.
    pub fn notices_path(&self) -> PathBuf {
        self.notices
            .clone()
            .unwrap_or_else(|| self.data.join("notices.log"))
    }

    /// Rules that no single field can check alone.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.insecure && !self.listen.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "--insecure serves plain ws:// and is only allowed on a loopback address, not {}; \
                 drop --insecure to serve TLS",
                self.listen
            )));
        }
        if let Some(store) = &self.store
            && !store.starts_with("postgres://")
            && !store.starts_with("postgresql://")
        {
            return Err(ConfigError::Invalid(format!(
                "--store {store:?}: give a postgres:// URL, or leave it out for the embedded store"
            )));
        }
        if let Some(bus) = &self.bus
            && !bus.starts_with("nats://")
        {
            return Err(ConfigError::Invalid(format!(
                "--bus {bus:?}: give a nats:// URL, or leave it out for one node"
            )));
        }
        if self.max_group_members < 2 {
            return Err(ConfigError::Invalid(format!(
                "max_group_members = {}: a conversation needs two accounts; give 2 or more",
                self.max_group_members
            )));
        }
        if self.ipv4_prefix_len > 32 || self.ipv6_prefix_len > 128 {
            return Err(ConfigError::Invalid(format!(
                "ipv4_prefix_len = {} and ipv6_prefix_len = {}: give at most 32 and 128 bits",
                self.ipv4_prefix_len, self.ipv6_prefix_len
            )));
        }
        for (name, d) in [
            ("handshake_timeout", self.handshake_timeout),
            ("ping_interval", self.ping_interval),
            ("idle_timeout", self.idle_timeout),
            ("write_stall_timeout", self.write_stall_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Invalid(format!(
                    "{name} = 0: give a duration such as 10s"
                )));
            }
        }
        if self.max_connections_per_device == 0 || self.codes_per_phone_burst == 0 {
            return Err(ConfigError::Invalid(
                "max_connections_per_device and codes_per_phone_burst must be at least 1".into(),
            ));
        }
        if self.max_file_bytes == 0 || self.max_file_bytes > dak_proto::blob::MAX_FILE_BYTES {
            return Err(ConfigError::Invalid(format!(
                "max_file_bytes = {}: give 1 to {} (what devices send at most)",
                self.max_file_bytes,
                dak_proto::blob::MAX_FILE_BYTES
            )));
        }
        if self.business_requests_per_device_per_sec == 0
            || self.business_messages_per_chat_per_minute == 0
        {
            return Err(ConfigError::Invalid(
                "business_requests_per_device_per_sec and business_messages_per_chat_per_minute must be at least 1".into(),
            ));
        }
        if self.max_transfers == 0 || self.media_requests_per_ip_per_sec == 0 {
            return Err(ConfigError::Invalid(
                "max_transfers and media_requests_per_ip_per_sec must be at least 1".into(),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "give both --tls-cert and --tls-key, or neither (a self-signed certificate is then made)".into(),
            ));
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

/// Every scalar field, by its TOML name. Listed by hand because optional
/// fields are absent from a serialised config; the test below keeps this
/// list and the struct in step.
const ENV_KEYS: &[&str] = &[
    "max_file_bytes",
    "media_quota_device_bytes",
    "media_quota_account_bytes",
    "uploads_per_device_per_hour",
    "upload_ttl",
    "max_transfers",
    "media_requests_per_ip_per_sec",
    "business_requests_per_device_per_sec",
    "business_messages_per_chat_per_minute",
    "data",
    "listen",
    "store",
    "bus",
    "cluster",
    "cluster_hints",
    "insecure",
    "tls_cert",
    "tls_key",
    "notice_key",
    "kt_key",
    "notices",
    "notice_deadline",
    "web",
    "retention",
    "code_ttl",
    "code_attempts",
    "codes_per_phone_per_hour",
    "codes_per_phone_burst",
    "codes_per_ip_per_hour",
    "verifies_per_ip_per_hour",
    "ipv4_prefix_len",
    "ipv6_prefix_len",
    "codes_per_range_per_hour",
    "number_range_digits",
    "codes_per_country_per_hour",
    "codes_per_hour",
    "pin_attempts",
    "pin_lockout",
    "max_linked_devices",
    "max_group_members",
    "linked_device_max_age",
    "link_code_ttl",
    "links_per_ip_per_hour",
    "max_connections",
    "max_unauthenticated_per_ip",
    "handshake_timeout",
    "ping_interval",
    "idle_timeout",
    "write_stall_timeout",
    "max_connections_per_device",
    "requests_per_device_per_sec",
    "request_burst",
    "pin_changes_per_hour",
    "argon2_parallel",
    "argon2_queue",
    "max_key_packages",
    "key_packages_per_target_per_hour",
    "lookups_per_day",
    "mailbox_max_envelopes",
    "mailbox_max_bytes",
    "metrics_listen",
];

/// Environment values are strings; numbers and booleans are read as such so
/// that `DAK_INSECURE=true` and `DAK_MAX_LINKED_DEVICES=2` work.
fn guess_value(raw: &str) -> toml::Value {
    if let Ok(b) = raw.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    toml::Value::String(raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_file_values() {
        let mut c: Config =
            toml::from_str("retention = \"7days\"\nmax_linked_devices = 3").unwrap();
        assert_eq!(c.retention, Duration::from_secs(7 * 86400));
        c.apply_env(|k| match k {
            "DAK_MAX_LINKED_DEVICES" => Some("2".into()),
            "DAK_LINKED_DEVICE_MAX_AGE" => Some("6h".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.max_linked_devices, 2);
        assert_eq!(c.linked_device_max_age, Some(Duration::from_secs(6 * 3600)));
    }

    #[test]
    fn max_group_members_from_file_env_and_print() {
        assert_eq!(Config::default().max_group_members, 1024);
        let mut c: Config = toml::from_str("max_group_members = 300").unwrap();
        assert_eq!(c.max_group_members, 300);
        assert!(c.to_toml().contains("max_group_members = 300"));
        c.apply_env(|k| (k == "DAK_MAX_GROUP_MEMBERS").then(|| "50".into()))
            .unwrap();
        assert_eq!(c.max_group_members, 50);
        c.validate().unwrap();
        c.max_group_members = 1;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("max_group_members"), "{err}");
    }

    #[test]
    fn every_field_can_be_set_from_the_environment() {
        let full = Config {
            tls_cert: Some("c".into()),
            store: Some("postgres://x".into()),
            bus: Some("nats://x".into()),
            tls_key: Some("k".into()),
            web: Some("w".into()),
            notice_key: Some("nk".into()),
            kt_key: Some("kk".into()),
            notices: Some("n".into()),
            linked_device_max_age: Some(Duration::from_secs(1)),
            metrics_listen: Some("127.0.0.1:1".parse().unwrap()),
            ..Config::default()
        };
        let table = toml::Table::try_from(&full).unwrap();
        let mut scalar: Vec<&str> = table
            .iter()
            .filter(|(_, v)| !v.is_table())
            .map(|(k, _)| k.as_str())
            .collect();
        scalar.sort();
        let mut listed = ENV_KEYS.to_vec();
        listed.sort();
        assert_eq!(scalar, listed);
    }

    #[test]
    fn printed_config_reads_back() {
        let c = Config::default();
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back.retention, c.retention);
    }

    #[test]
    fn insecure_needs_loopback() {
        let c = Config {
            insecure: true,
            listen: "0.0.0.0:1".parse().unwrap(),
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("retenton = \"1d\"").is_err());
    }
}
