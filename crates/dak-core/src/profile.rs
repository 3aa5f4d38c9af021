//! `Profile`: a device's local store as the rest of the client sees it.
//!
//! It wraps any `ProfileStore` backend and adds what must be the same for
//! every backend: brackets as closures (`transaction`, `savepoint`), the
//! identity key and registration, reading a group's state, resolving what a
//! user typed into a conversation, who may confirm a receipt, and the MLS
//! engine (`mls`), whose state goes through the same store so it commits or
//! rolls back with the messages it yields.
//!
//! Invariants:
//! - Every bracket opened here is closed here, on success and on error, so
//!   a backend's bracket stack always matches the closures' nesting.
//! - Time and randomness come from `Environment` (the OS natively, the
//!   browser on wasm32, fixed values in tests): the core reads neither
//!   directly.
//! - `Deref` exposes the backend's primitives; methods defined here (with
//!   the same name, e.g. `group_state`) are the ones callers get.

use std::ops::Deref;
use std::sync::Arc;

use dak_proto::v1;
use ed25519_dalek::SigningKey;
use prost::Message;

use crate::env::Environment;
use crate::store::{Bracket, MessageView, ProfileStore, group_key, parse_group_key};
use crate::{ClientError, ConversationId};

/// The registration this profile holds.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The server's address, or several nodes' addresses separated by commas.
    pub server: String,
    pub phone: String,
    pub device_id: u64,
}

impl Registration {
    /// The nodes this device may use, in the order given.
    pub fn servers(&self) -> Vec<String> {
        split_servers(&self.server)
    }
}

/// `wss://a:7443,wss://b:7443` as a list.
pub fn split_servers(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

pub struct Profile {
    store: Box<dyn ProfileStore>,
    env: Arc<dyn Environment>,
    /// The registration and identity key MLS signs with, read once: `mls`
    /// runs several times per message. Cleared when either changes.
    mls_keys: parking_lot::Mutex<Option<(Registration, SigningKey)>>,
    /// Decoded MLS groups kept between messages (see `mls::GroupCache`).
    pub(crate) groups: crate::mls::GroupCache,
}

impl Deref for Profile {
    type Target = dyn ProfileStore;

    fn deref(&self) -> &Self::Target {
        self.store.as_ref()
    }
}

impl Profile {
    /// A profile over `store`, with time and randomness from `env`.
    pub fn new(store: Box<dyn ProfileStore>, env: Box<dyn Environment>) -> Profile {
        Profile {
            store,
            env: Arc::from(env),
            mls_keys: parking_lot::Mutex::new(None),
            groups: crate::mls::GroupCache::default(),
        }
    }

    /// The backend, for code that needs the trait object itself.
    pub fn store(&self) -> &dyn ProfileStore {
        self.store.as_ref()
    }

    pub fn env(&self) -> &dyn Environment {
        self.env.as_ref()
    }

    /// The environment, for what outlives a borrow of the profile (a
    /// connection's timeouts).
    pub fn env_arc(&self) -> Arc<dyn Environment> {
        self.env.clone()
    }

    /// Milliseconds since the Unix epoch, from the environment's clock.
    pub fn now_ms(&self) -> i64 {
        self.env.now_ms()
    }

    /// A fresh message id: a UUIDv7 (time-ordered) from the environment's
    /// clock and randomness.
    pub fn new_message_id(&self) -> Vec<u8> {
        let mut random = [0u8; 10];
        self.env.fill_random(&mut random);
        let ms = u64::try_from(self.now_ms()).unwrap_or(0);
        uuid::Builder::from_unix_timestamp_millis(ms, &random)
            .into_uuid()
            .as_bytes()
            .to_vec()
    }

    pub(crate) fn err(&self, message: impl Into<String>) -> ClientError {
        ClientError::Store {
            path: self.store.label(),
            message: message.into(),
        }
    }

    // ---- brackets ----

    /// Runs `f` in one transaction, so a batch of deliveries is stored
    /// (and then acked) all or nothing.
    pub fn transaction<T>(
        &self,
        f: impl FnOnce(&Profile) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.bracket(Bracket::Transaction, f)
    }

    /// Runs `f` in a savepoint: on error its writes (MLS state included) are
    /// undone and the enclosing transaction goes on.
    pub fn savepoint<T>(
        &self,
        f: impl FnOnce(&Profile) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.bracket(Bracket::Savepoint, f)
    }

    fn bracket<T>(
        &self,
        bracket: Bracket,
        f: impl FnOnce(&Profile) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.store.begin(bracket)?;
        match f(self) {
            Ok(v) => match self.store.commit(bracket) {
                Ok(()) => Ok(v),
                Err(e) => {
                    // A commit that failed wrote nothing: what was decoded
                    // from the writes inside must be forgotten too.
                    let _ = self.store.rollback(bracket);
                    self.groups.clear();
                    Err(e)
                }
            },
            Err(e) => {
                let _ = self.store.rollback(bracket);
                // Decoded MLS groups may hold state the rollback undid.
                self.groups.clear();
                Err(e)
            }
        }
    }

    // ---- settings ----

    pub fn get_str(&self, key: &str) -> Result<Option<String>, ClientError> {
        Ok(self
            .store
            .get(key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// The MLS ciphersuites this device offers, the most wanted first: the
    /// post-quantum hybrid and the classic one, or only the classic one in a
    /// profile set `mls_suites = classic` (`offer_classic_suite_only`),
    /// which is how a device from before post-quantum suites behaves.
    pub fn offered_suites(&self) -> Result<Vec<dak_proto::mls::Ciphersuite>, ClientError> {
        Ok(
            if self.get_str("mls_suites")?.as_deref() == Some("classic") {
                vec![dak_proto::mls::CIPHERSUITE]
            } else {
                dak_proto::mls::SUITES.to_vec()
            },
        )
    }

    /// Makes this device offer the classic suite only, as devices from
    /// before post-quantum suites do: for checking that conversations with
    /// them fall back (and say so). Set before registering or linking; a
    /// device's suites never change after (its KeyPackages list them).
    pub fn offer_classic_suite_only(&self) -> Result<(), ClientError> {
        self.store.set("mls_suites", b"classic")
    }

    /// The identity key, made on first use and kept.
    pub fn identity(&self) -> Result<SigningKey, ClientError> {
        if let Some(bytes) = self.store.get("identity_secret")? {
            let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                self.err("identity key is damaged; register or link this profile again in a new directory")
            })?;
            return Ok(SigningKey::from_bytes(&secret));
        }
        let mut secret = [0u8; 32];
        self.env.fill_random(&mut secret);
        let key = SigningKey::from_bytes(&secret);
        self.store.set("identity_secret", key.as_bytes())?;
        Ok(key)
    }

    /// Replaces the identity key (a new registration or link).
    pub fn new_identity(&self) -> Result<SigningKey, ClientError> {
        *self.mls_keys.lock() = None;
        self.store.delete("identity_secret")?;
        self.identity()
    }

    pub fn registration(&self) -> Result<Registration, ClientError> {
        let (Some(server), Some(phone), Some(id)) = (
            self.get_str("server")?,
            self.get_str("phone")?,
            self.get_str("device_id")?,
        ) else {
            return Err(ClientError::NotRegistered);
        };
        let device_id = id.parse().map_err(|_| ClientError::NotRegistered)?;
        Ok(Registration {
            server,
            phone,
            device_id,
        })
    }

    pub fn save_registration(
        &self,
        server: &str,
        phone: &str,
        device_id: u64,
    ) -> Result<(), ClientError> {
        *self.mls_keys.lock() = None;
        // Key transparency's memory is of one number on one server.
        if self.get_str("server")?.is_some_and(|s| s != server)
            || self.get_str("phone")?.is_some_and(|p| p != phone)
        {
            crate::kt::forget(self)?;
        }
        self.store.set("server", server.as_bytes())?;
        self.store.set("phone", phone.as_bytes())?;
        self.store
            .set("device_id", device_id.to_string().as_bytes())
    }

    pub(crate) fn mls_keys(&self) -> Result<(Registration, SigningKey), ClientError> {
        let mut cached = self.mls_keys.lock();
        if let Some(keys) = cached.as_ref() {
            return Ok(keys.clone());
        }
        let keys = (self.registration()?, self.identity()?);
        *cached = Some(keys.clone());
        Ok(keys)
    }

    /// Runs `f` with this device's MLS engine over the profile's store.
    /// Inside `transaction`, its writes commit or roll back with the rest.
    pub fn mls<T>(
        &self,
        f: impl FnOnce(&crate::mls::Mls<'_>) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let (reg, identity) = self.mls_keys()?;
        let mls = crate::mls::Mls::new(self, &identity, &reg.phone, reg.device_id);
        f(&mls)
    }

    // ---- messages ----

    /// The last `limit` messages of a conversation still shown now, oldest
    /// first.
    pub fn conversation(
        &self,
        conversation: &str,
        limit: usize,
    ) -> Result<Vec<MessageView>, ClientError> {
        self.store.conversation(conversation, limit, self.now_ms())
    }

    /// Records a receipt from one device; a read receipt implies delivery.
    /// Only an addressee may confirm: a receipt for a message this device
    /// never sent, or from anyone else, changes nothing (false).
    pub fn record_receipt(
        &self,
        message_id: &[u8],
        phone: &str,
        device_id: u64,
        read: bool,
        at_ms: i64,
    ) -> Result<bool, ClientError> {
        let Some(m) = self.store.message(message_id)?.filter(|m| m.outgoing) else {
            return Ok(false);
        };
        // In a group, the members the server fanned it out to (from its ack).
        let addressee = m.conversation == phone
            || self
                .store
                .recipients(message_id)?
                .iter()
                .any(|r| r.phone == phone);
        if !addressee {
            return Ok(false);
        }
        self.store.add_recipient(message_id, phone, device_id)?;
        self.store
            .update_receipt(message_id, device_id, read, at_ms)?;
        Ok(true)
    }

    // ---- named groups ----

    /// A named group's settings as last accepted (see `groups::may_change`).
    pub fn group_state(&self, group: &[u8]) -> Result<Option<v1::GroupState>, ClientError> {
        self.store
            .group_state_bytes(group)?
            .map(|b| {
                v1::GroupState::decode(b.as_slice())
                    .map_err(|e| self.err(format!("a stored group state is unreadable: {e}")))
            })
            .transpose()
    }

    /// Named groups this device is in: (group id, key), by key.
    pub fn named_groups(&self) -> Result<Vec<(Vec<u8>, String)>, ClientError> {
        Ok(self
            .store
            .active_groups()?
            .into_iter()
            .filter(|(g, _)| crate::mls::is_named_group(g))
            .collect())
    }

    /// The conversation `arg` names: a number (1:1), a group key, a
    /// group's title, or the start of its hex id (at least 4 digits).
    pub fn resolve(&self, arg: &str) -> Result<ConversationId, ClientError> {
        let arg = arg.trim();
        if let Ok(phone) = dak_proto::normalize_phone(arg) {
            return Ok(ConversationId::Direct(phone));
        }
        // A full key needs no search: every send to a group comes this way.
        if let Some(group) = parse_group_key(arg)
            && self.store.conversation_active(&group)? == Some(true)
        {
            return Ok(ConversationId::Group(group));
        }
        let hex_arg = arg.strip_prefix("group:").unwrap_or(arg).to_lowercase();
        let mut found = Vec::new();
        for (group, _) in self.named_groups()? {
            let title = self
                .group_state(&group)?
                .map(|s| s.title)
                .unwrap_or_default();
            let by_id = hex_arg.len() >= 4 && hex::encode(&group).starts_with(&hex_arg);
            if by_id || title.eq_ignore_ascii_case(arg) {
                found.push((group, title));
            }
        }
        match found.len() {
            1 => Ok(ConversationId::Group(found.remove(0).0)),
            0 => Err(ClientError::Usage(format!(
                "{arg:?} is neither a phone number (like +919800000001) nor a group you are in (see `dak group list`)"
            ))),
            _ => Err(ClientError::Usage(format!(
                "{arg:?} matches several groups ({}); use the group id from `dak group list`",
                found
                    .iter()
                    .map(|(g, t)| format!("{t} {}", group_key(g)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}
