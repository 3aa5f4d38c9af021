//! Keeping a conversation's MLS group in step with the server: finding or
//! starting the group to send in, settling a commit a lost connection left
//! pending, catching up to the epoch that won, and reconciling the group's
//! devices with the directory (`commit`), then trying the send again.

use crate::ClientError;
use crate::ConversationId;
use crate::client::Client;
use crate::connection::unexpected;
use crate::events::Event;
use crate::format_id;
use crate::ids::phone;
use crate::mls::MemberDevice;
use crate::outbox::expires_in;
use crate::work::Work;
use dak_proto::v1::{self, ErrorCode, client_frame::Request, server_frame::Body};
use std::collections::BTreeSet;

/// How often a send retries after the group moved on or its devices changed.
pub(crate) const GROUP_RETRIES: usize = 6;

/// Room in a frame for a SendCommit's other fields (ids, device lists).
pub(crate) const COMMIT_FRAME_OVERHEAD: usize = 4 * 1024;

/// How long to wait for the commit that won an epoch to arrive.
pub(crate) const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// The state of this device's group with a contact, for tests and `dak safety`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoState {
    pub group_id: Vec<u8>,
    pub epoch: u64,
    pub authenticator: Vec<u8>,
    pub members: Vec<(String, u64)>,
}

/// What `dak safety` and the web client's safety panel show for a 1:1
/// conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Safety {
    /// 60 digits in groups of 5 (`mls::safety_number`).
    pub number: String,
    /// Whether the conversation's MLS suite is the post-quantum hybrid.
    pub post_quantum: bool,
    /// The suite's name, e.g. MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519.
    pub suite: String,
    /// In words (`dak_proto::mls::suite_description`).
    pub description: &'static str,
    /// For a classic conversation, the member devices (phone, device id)
    /// whose leaves did not list the post-quantum suite when they joined
    /// it (devices that do not offer it, or that joined before they did);
    /// empty when it is post-quantum.
    pub classic_because: Vec<(String, u64)>,
    /// Classic although every member device offers the post-quantum suite:
    /// the server answered the chat's creator in the classic suite. A
    /// server from before post-quantum suites does; a server that keeps
    /// them has weakened the chat (the server picks the suite, §9.2).
    pub server_chose_classic: bool,
    /// What the key directory showed for the contact's number (`kt.rs`):
    /// verified, not offered by this server, or refused with the reason.
    pub key_transparency: crate::kt::KtStatus,
}

impl Client {
    // ---- MLS: groups, commits and the key directory ----

    /// Encrypts for the conversation with `to` and sends, bringing the
    /// group up to date first when the server says it moved on.
    pub(crate) async fn send_encrypted(
        &mut self,
        id: &[u8],
        to: &ConversationId,
        plaintext: &[u8],
    ) -> Result<v1::SendAck, ClientError> {
        let mut last = None;
        for _ in 0..GROUP_RETRIES {
            let group = self.group_with(to).await?;
            if let Some(a) = crate::attachments::attachment_of(plaintext) {
                // Idempotent: a retry after the group changed shares with
                // the devices added meanwhile too.
                if let Err(e) = self.share_attachment(&group, &a).await {
                    if !self.recover(&group, &e).await? {
                        return Err(e);
                    }
                    last = Some(e.to_string());
                    continue;
                }
            }
            let body = self
                .profile
                .transaction(|p| p.mls(|m| m.encrypt(&group, plaintext)))?;
            let request = Request::SendMessage(v1::SendMessage {
                message_id: id.to_vec(),
                body,
                expires_in_secs: expires_in(plaintext),
            });
            match self.conn.call(request).await {
                Ok(Body::SendAck(ack)) => return Ok(ack),
                Ok(other) => return Err(unexpected(other)),
                Err(e) => {
                    if !self.recover(&group, &e).await? {
                        return Err(e);
                    }
                    last = Some(e.to_string());
                }
            }
        }
        // Retryable: the message stays in the outbox for the next attempt.
        Err(ClientError::Timeout(format!(
            "the conversation kept changing ({}); the message stays queued",
            last.unwrap_or_default()
        )))
    }

    /// Acts on a group refusal so that a retry can succeed. False for any
    /// other error: there is nothing to fix, the caller gives up.
    pub(crate) async fn recover(
        &mut self,
        group: &[u8],
        e: &ClientError,
    ) -> Result<bool, ClientError> {
        match e.code() {
            Some(ErrorCode::StaleEpoch) => {
                let epoch = match e {
                    ClientError::Server(s) => s.epoch,
                    _ => 0,
                };
                self.catch_up(group, epoch).await?;
            }
            Some(ErrorCode::GroupDevicesChanged) => self.reconcile(group).await?,
            Some(ErrorCode::NotAMember) => self.profile.retire_conversation(group)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The group for the conversation with `peer` (a number, or a named
    /// group's key), a 1:1 one started if there is none.
    pub(crate) async fn group_with(
        &mut self,
        conversation: &ConversationId,
    ) -> Result<Vec<u8>, ClientError> {
        let peer = match conversation {
            ConversationId::Group(_) => {
                return self.named_group_without_leavers(&conversation.key()).await;
            }
            ConversationId::Direct(peer) => peer.as_str(),
        };
        if let Some(group) = self.profile.group_for(peer)? {
            if self.profile.mls(|m| m.has_group(&group))? && self.settle(&group).await? {
                return Ok(group);
            }
            tracing::warn!(group = %format_id(&group), "conversation state unusable; starting a new one");
            self.profile.retire_conversation(&group)?;
        }
        self.start_group(peer).await
    }

    /// A named group, ready to send in: pending commits settled, and
    /// members who asked to leave removed by a commit first (so a message
    /// never reaches someone who left; this is why a send to a group may
    /// commit).
    pub(crate) async fn named_group_without_leavers(
        &mut self,
        key: &str,
    ) -> Result<Vec<u8>, ClientError> {
        let gone = || ClientError::Usage(format!("you are not a member of the group {key}"));
        let group = self.profile.group_for(key)?.ok_or_else(gone)?;
        if !self.profile.mls(|m| m.has_group(&group))? || !self.settle(&group).await? {
            self.profile.retire_conversation(&group)?;
            return Err(gone());
        }
        self.remove_leavers(&group).await?;
        Ok(group)
    }

    /// Creates a group with every device of `peer` and this account's other
    /// devices: the Welcome goes with the first commit, so the first message
    /// needs nothing back from the recipient.
    ///
    /// Its suite is the most wanted one every device offers: post-quantum
    /// when all do, else classic (`safety` says which, and names the
    /// devices that kept it classic). The contact's devices are asked
    /// first in every suite this device offers, ours in what that left; if
    /// ours cannot take the contact's suite, the contact's are asked again
    /// in ours (the packages fetched first go unused).
    pub(crate) async fn start_group(&mut self, peer: &str) -> Result<Vec<u8>, ClientError> {
        let me = self.reg.phone.clone();
        let offered = self.profile.offered_suites()?;
        let mut theirs = None;
        if peer != me {
            let fetched = self.fetch_key_packages(peer, &[], &offered).await?;
            if fetched.packages.is_empty() {
                return Err(ClientError::Usage(format!(
                    "{peer} has no device ready for encrypted chat yet; ask them to open Dak once"
                )));
            }
            theirs = Some(fetched);
        }
        let wanted: Vec<_> = match &theirs {
            Some(t) => offered
                .iter()
                .skip_while(|s| **s != t.suite)
                .copied()
                .collect(),
            None => offered.clone(),
        };
        let mine = self
            .fetch_key_packages(&me, &[self.reg.device_id], &wanted)
            .await?;
        let suite = mine.suite;
        if theirs.as_ref().is_some_and(|t| t.suite != suite) {
            theirs = Some(self.fetch_key_packages(peer, &[], &[suite]).await?);
        }
        let mut adds = theirs.map(|t| t.packages).unwrap_or_default();
        adds.extend(mine.packages);
        let group = self.profile.transaction(|p| {
            let group = p.mls(|m| m.create_group(suite))?;
            p.add_conversation(&group, peer, p.now_ms())?;
            Ok(group)
        })?;
        self.commit(&group, adds, Vec::new()).await?;
        Ok(group)
    }

    /// Resolves a commit left pending by a lost connection: if the server
    /// took it, it is in our mailbox and merges as our own; if not, it is
    /// dropped. False when the group does not exist on the server.
    pub(crate) async fn settle(&mut self, group: &[u8]) -> Result<bool, ClientError> {
        if !self.profile.mls(|m| m.has_pending(group))? {
            return Ok(true);
        }
        let server = match self
            .conn
            .call(Request::GetGroupEpoch(v1::GetGroupEpoch {
                group_id: group.to_vec(),
            }))
            .await?
        {
            Body::GroupEpoch(g) => g,
            other => return Err(unexpected(other)),
        };
        let local = self.profile.mls(|m| m.epoch(group))?;
        if server.exists && server.epoch > local {
            self.catch_up(group, server.epoch).await?;
        }
        if self.profile.mls(|m| m.has_pending(group))? {
            self.profile
                .transaction(|p| p.mls(|m| m.clear_pending(group)))?;
        }
        Ok(server.exists)
    }

    /// Handles pushes until the group reaches `epoch` (the commit that won
    /// is in our mailbox, behind whatever came before it).
    pub(crate) async fn catch_up(&mut self, group: &[u8], epoch: u64) -> Result<(), ClientError> {
        let deadline = self.profile.now_ms() + CATCH_UP_WAIT.as_millis() as i64;
        loop {
            let (active, local) = self.profile.mls(|m| {
                let active = m.has_group(group)?;
                Ok((active, if active { m.epoch(group)? } else { 0 }))
            })?;
            if !active || local >= epoch {
                return Ok(());
            }
            let left = deadline - self.profile.now_ms();
            let pushed = if left > 0 {
                let wait = std::time::Duration::from_millis(left as u64);
                crate::env::timeout(self.profile.env(), wait, self.conn.next_push()).await
            } else {
                None
            };
            let body = pushed.ok_or_else(|| {
                ClientError::Timeout(format!(
                    "the commit for epoch {epoch} of a conversation did not arrive"
                ))
            })??;
            let events = self.handle_push_inner(body).await?;
            // "The mailbox is empty" is stale by the time these are given
            // out; the server says it again when it is.
            self.pending_events.extend(
                events
                    .into_iter()
                    .filter(|e| !matches!(e, Event::QueueEmpty)),
            );
        }
    }

    /// Brings the group's devices in line with the directory: adds the
    /// member accounts' new devices and removes their unlinked ones.
    pub(crate) async fn reconcile(&mut self, group: &[u8]) -> Result<(), ClientError> {
        let suite = self.profile.mls(|m| m.suite(group))?;
        for _ in 0..GROUP_RETRIES {
            let members = self.profile.mls(|m| m.members(group))?;
            let phones: BTreeSet<String> = members.iter().map(|m| m.phone.clone()).collect();
            let mut adds = Vec::new();
            let mut removes = Vec::new();
            let mut changed = Vec::new();
            for phone in phones {
                let known: Vec<u64> = members
                    .iter()
                    .filter(|m| m.phone == phone)
                    .map(|m| m.device_id)
                    .collect();
                let fetched = self.fetch_key_packages(&phone, &known, &[suite]).await?;
                let lacking = fetched
                    .active
                    .iter()
                    .filter(|d| {
                        !known.contains(d) && !fetched.packages.iter().any(|(id, _)| id == *d)
                    })
                    .count();
                if lacking > 0 && !crate::mls::is_named_group(group) {
                    // A device that cannot take this chat's suite (one
                    // from before post-quantum suites, linked since): a new
                    // group, in a suite every device takes, becomes the
                    // chat's newest, where every send goes from now on
                    // (`group_with`). This one stays active, so what was
                    // sent in it still arrives; only the newest group is
                    // ever replaced, so this happens once per change.
                    let peer = self.profile.peer_of(group)?.unwrap_or_default();
                    if !peer.is_empty() && self.profile.group_for(&peer)?.as_deref() == Some(group)
                    {
                        tracing::info!(
                            phone = %phone,
                            devices = lacking,
                            suite = ?suite,
                            "a device cannot join this chat's suite; the chat moves to a new group"
                        );
                        self.start_group(&peer).await?;
                    }
                    return Ok(());
                }
                if lacking > 0 {
                    tracing::warn!(
                        phone = %phone,
                        devices = lacking,
                        "devices without a KeyPackage in this group's suite are left out"
                    );
                }
                let before = adds.len() + removes.len();
                adds.extend(fetched.packages);
                removes.extend(
                    members
                        .iter()
                        .filter(|m| {
                            m.phone == phone
                                && !fetched.active.contains(&m.device_id)
                                && m.device_id != self.reg.device_id
                        })
                        .cloned(),
                );
                if adds.len() + removes.len() > before && phone != self.reg.phone {
                    changed.push(phone);
                }
            }
            if adds.is_empty() && removes.is_empty() {
                return Ok(());
            }
            let added = !adds.is_empty();
            match self.commit(group, adds, removes).await {
                Ok(()) => {
                    if added && crate::mls::is_named_group(group) {
                        // The new devices learn the title and admins from this.
                        self.work.push(Work::ReshareState {
                            group: group.to_vec(),
                        });
                    }
                    // The contact's devices changed: so did the safety number.
                    let conversation = self.profile.peer_of(group)?.unwrap_or_default();
                    self.pending_events.extend(changed.into_iter().map(|phone| {
                        Event::SecurityNotice {
                            conversation: conversation.clone().into(),
                            phone,
                        }
                    }));
                    return Ok(());
                }
                Err(e) if e.code() == Some(ErrorCode::StaleEpoch) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Protocol(
            "the conversation kept changing; try again".into(),
        ))
    }

    /// Sends a commit; merges it on the ack. On STALE_EPOCH it is dropped
    /// and the winner processed (the caller redoes its change); on a lost
    /// connection it stays pending for `settle`.
    pub(crate) async fn commit(
        &mut self,
        group: &[u8],
        adds: Vec<(u64, openmls::prelude::KeyPackage)>,
        removes: Vec<MemberDevice>,
    ) -> Result<(), ClientError> {
        let added_devices: Vec<u64> = adds.iter().map(|(d, _)| *d).collect();
        let removed_devices: Vec<u64> = removes.iter().map(|m| m.device_id).collect();
        let out = self.profile.transaction(|p| {
            p.mls(|m| {
                m.commit(
                    group,
                    adds.into_iter().map(|(_, kp)| kp).collect(),
                    removes.iter().map(|r| r.leaf).collect(),
                )
            })
        })?;
        let welcome = out.welcome.unwrap_or_default();
        let size = out.commit.len() + welcome.len();
        if size + COMMIT_FRAME_OVERHEAD > dak_proto::MAX_FRAME_BYTES
            || welcome.len() > dak_proto::mls::MAX_MLS_BYTES
        {
            self.profile
                .transaction(|p| p.mls(|m| m.clear_pending(group)))?;
            return Err(ClientError::TooLarge(format!(
                "a commit with its Welcome is {size} bytes for {} new devices; one frame holds {}",
                added_devices.len(),
                dak_proto::MAX_FRAME_BYTES
            )));
        }
        let request = Request::SendCommit(v1::SendCommit {
            message_id: self.profile.new_message_id(),
            commit: out.commit,
            welcome,
            added_devices,
            removed_devices,
        });
        match self.conn.call(request).await {
            Ok(Body::SendAck(_)) => {
                // Accepted. It is merged where it stands in this device's
                // mailbox: what others sent at the old epoch before it was
                // accepted is ahead of its echo there, and decrypts at that
                // epoch first. So no device needs an old epoch's keys
                // (`MAX_PAST_EPOCHS` is 0), and none keeps them.
                // If the echo does not come now (a long backlog, a dropped
                // connection), the commit stays pending: merging it here
                // would leave what is ahead of the echo undecryptable.
                // `settle` before the next send, or the echo itself when
                // its turn comes, merges it.
                let next = self.profile.mls(|m| m.epoch(group))? + 1;
                if let Err(e) = self.catch_up(group, next).await {
                    tracing::debug!(error = %e, "the echo of our commit has not come yet; it stays pending");
                }
                Ok(())
            }
            Ok(other) => Err(unexpected(other)),
            Err(e) if !matches!(e, ClientError::Server(_)) => Err(e),
            Err(e) => {
                self.profile
                    .transaction(|p| p.mls(|m| m.clear_pending(group)))?;
                if let ClientError::Server(s) = &e
                    && s.kind() == ErrorCode::StaleEpoch
                {
                    self.catch_up(group, s.epoch).await?;
                }
                Err(e)
            }
        }
    }

    /// Makes a commit that only refreshes this device's keys in the
    /// conversation with `peer` (post-compromise security), retrying if
    /// another device's commit wins the epoch.
    pub async fn self_update(&mut self, peer: &str) -> Result<(), ClientError> {
        let peer = ConversationId::Direct(phone(peer)?);
        for _ in 0..GROUP_RETRIES {
            let group = self.group_with(&peer).await?;
            match self.commit(&group, Vec::new(), Vec::new()).await {
                Ok(()) => return Ok(()),
                Err(e) if e.code() == Some(ErrorCode::StaleEpoch) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Protocol(
            "the conversation kept changing; try again".into(),
        ))
    }

    /// This device's view of the conversation with `peer`, if it has one.
    pub fn crypto_state(&self, peer: &str) -> Result<Option<CryptoState>, ClientError> {
        let peer = phone(peer)?;
        let Some(group) = self.profile.group_for(&peer)? else {
            return Ok(None);
        };
        self.profile.mls(|m| {
            Ok(Some(CryptoState {
                epoch: m.epoch(&group)?,
                authenticator: m.authenticator(&group)?,
                members: m
                    .members(&group)?
                    .into_iter()
                    .map(|d| (d.phone, d.device_id))
                    .collect(),
                group_id: group.clone(),
            }))
        })
    }

    /// The conversation's safety number (see `mls::safety_number`): compare
    /// it with the contact's, in person or by a call.
    pub async fn safety_number(&mut self, peer: &str) -> Result<String, ClientError> {
        Ok(self.safety(peer).await?.number)
    }

    /// The conversation's safety number and how it is encrypted.
    pub async fn safety(&mut self, peer: &str) -> Result<Safety, ClientError> {
        let peer = ConversationId::Direct(phone(peer)?);
        let mut group = self.group_with(&peer).await?;
        // A key-directory refusal is what safety must show, not an error.
        match self.reconcile(&group).await {
            Err(ClientError::KeyTransparency(_)) | Ok(_) => {}
            Err(e) => return Err(e),
        }
        if self.profile.group_for(peer.key().as_str())? != Some(group.clone()) {
            // It moved to a group in another suite (`reconcile`).
            group = self.group_with(&peer).await?;
        }
        let key_transparency = crate::kt::status(&self.profile, peer.key().as_str())?;
        self.profile.mls(|m| {
            let suite = m.suite(&group)?;
            let post_quantum = suite == dak_proto::mls::PQ_CIPHERSUITE;
            let classic_because = if post_quantum {
                Vec::new()
            } else {
                m.members_without_pq(&group)?
                    .into_iter()
                    .map(|d| (d.phone, d.device_id))
                    .collect()
            };
            Ok(Safety {
                number: crate::mls::safety_number(&m.members(&group)?),
                post_quantum,
                server_chose_classic: !post_quantum && classic_because.is_empty(),
                suite: format!("{suite:?}"),
                description: dak_proto::mls::suite_description(suite),
                classic_because,
                key_transparency,
            })
        })
    }
}
