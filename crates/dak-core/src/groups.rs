//! Named groups: a title, a description, an avatar, admins, an invite link
//! and a disappearing-message timer, all in `v1::GroupState`, which travels
//! only as MLS ciphertext (the server sees the member devices it fans out
//! to, nothing more).
//!
//! Who may do what is the members' business, so the clients enforce it:
//! a device refuses to make a change its user may not make, and a device
//! receiving a state from a member who may not set it keeps the old one.
//! A commit the server accepted is merged by everyone whatever its author
//! (refusing it would fork the group); one that breaks the rules is shown
//! as such. The server enforces only that committers are members and the
//! group's size (`GROUP_FULL`).

use std::collections::{BTreeMap, BTreeSet};

use dak_proto::invite::{INVITE_SECRET_BYTES, InviteLink};
use dak_proto::mls::CIPHERSUITE;
use dak_proto::v1::{self, ErrorCode, content::Kind};
use serde::Serialize;

use crate::ClientError;
use crate::ConversationId;
use crate::client::Client;
use crate::events::{Event, GroupChange, RuleBreach, SettingChange};
use crate::mls::MemberDevice;
use crate::outbox::SendOutcome;
use crate::work::FollowUp;
use crate::{Profile, group_key};

/// Member accounts a group may have (each with its linked devices).
pub const MAX_GROUP_MEMBERS: usize = 1024;
/// Devices added per commit. A Welcome carries the whole ratchet tree plus
/// a secret per new device, and must fit in `MAX_MLS_BYTES`.
pub(crate) const ADD_BATCH: usize = 128;
/// The limits every receiver checks (`dak_proto::content`).
pub use dak_proto::content::{MAX_AVATAR_BYTES, MAX_DESCRIPTION_CHARS, MAX_TITLE_CHARS};
/// How often a membership change retries when another commit wins.
const CHANGE_RETRIES: usize = 6;

/// One member account of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupMember {
    pub phone: String,
    pub admin: bool,
    pub devices: usize,
}

/// A group as `dak group info` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct GroupInfo {
    pub key: String,
    pub title: String,
    pub description: String,
    pub avatar_bytes: usize,
    pub admins_only: bool,
    pub expire_secs: u32,
    pub members: Vec<GroupMember>,
    pub you_are_admin: bool,
    /// Shown to admins while a link is active.
    pub invite_link: Option<String>,
    pub invite_needs_approval: bool,
    pub join_requests: Vec<String>,
    pub epoch: u64,
}

/// Settings to change; `None` leaves one as it is.
#[derive(Debug, Clone, Default)]
pub struct GroupEdit {
    pub title: Option<String>,
    pub description: Option<String>,
    pub avatar: Option<Vec<u8>>,
    pub admins_only: Option<bool>,
    pub expire_secs: Option<u32>,
}

/// The accounts among a group's member devices.
pub fn accounts(members: &[MemberDevice]) -> BTreeSet<String> {
    members.iter().map(|m| m.phone.clone()).collect()
}

/// The admins who are still members; when none is, the member with the
/// lowest number is, so a group never ends up without one (every device
/// computes the same from the same members).
pub fn effective_admins(state: &v1::GroupState, members: &BTreeSet<String>) -> BTreeSet<String> {
    let admins: BTreeSet<String> = state
        .admins
        .iter()
        .filter(|a| members.contains(*a))
        .cloned()
        .collect();
    if admins.is_empty() {
        members.iter().next().cloned().into_iter().collect()
    } else {
        admins
    }
}

/// May `by` replace the group's settings `old` with `new`? Admins may
/// change anything; other members only the title, description, avatar and
/// timer, and only when the group is not `admins_only`. A device that has
/// no state yet (it just joined) takes the first it is sent.
pub fn may_change(
    old: Option<&v1::GroupState>,
    new: &v1::GroupState,
    by: &str,
    members: &BTreeSet<String>,
) -> Result<(), RuleBreach> {
    let Some(old) = old else { return Ok(()) };
    if effective_admins(old, members).contains(by) {
        return Ok(());
    }
    let admin_fields_same = old.admins == new.admins
        && old.admins_only == new.admins_only
        && old.invite_secret == new.invite_secret
        && old.invite_owner == new.invite_owner
        && old.invite_needs_approval == new.invite_needs_approval;
    if !admin_fields_same {
        return Err(RuleBreach::AdminSettings { by: by.to_string() });
    }
    if old.admins_only && old != new {
        return Err(RuleBreach::LockedSettings { by: by.to_string() });
    }
    Ok(())
}

/// Did the committer `by` have the right to add `joined` and remove `left`?
/// Anyone may remove members who asked to leave.
pub fn may_change_members(
    state: Option<&v1::GroupState>,
    by: &str,
    members_before: &BTreeSet<String>,
    joined: &BTreeSet<String>,
    left: &BTreeSet<String>,
    leavers: &[String],
) -> Result<(), RuleBreach> {
    let Some(state) = state else { return Ok(()) };
    let admin = effective_admins(state, members_before).contains(by);
    if admin {
        return Ok(());
    }
    let joined_others = joined.iter().any(|p| p != by);
    if state.admins_only && joined_others {
        return Err(RuleBreach::LockedMembers { by: by.to_string() });
    }
    if let Some(p) = left.iter().find(|p| *p != by && !leavers.contains(p)) {
        return Err(RuleBreach::Removed {
            by: by.to_string(),
            phone: p.to_string(),
        });
    }
    Ok(())
}

/// What changed between two states of a group's settings, as data.
pub fn setting_changes(old: Option<&v1::GroupState>, new: &v1::GroupState) -> Vec<SettingChange> {
    let empty = v1::GroupState::default();
    let old = old.unwrap_or(&empty);
    let mut out = Vec::new();
    if old.title != new.title {
        out.push(SettingChange::Title {
            title: new.title.clone(),
        });
    }
    if old.description != new.description {
        out.push(SettingChange::Description {
            description: new.description.clone(),
        });
    }
    if old.avatar != new.avatar {
        out.push(SettingChange::Avatar {
            bytes: new.avatar.len(),
        });
    }
    let before: BTreeSet<&String> = old.admins.iter().collect();
    let after: BTreeSet<&String> = new.admins.iter().collect();
    for a in after.difference(&before) {
        out.push(SettingChange::AdminAdded {
            phone: a.to_string(),
        });
    }
    for a in before.difference(&after) {
        out.push(SettingChange::AdminRemoved {
            phone: a.to_string(),
        });
    }
    if old.admins_only != new.admins_only {
        out.push(SettingChange::AdminsOnly {
            on: new.admins_only,
        });
    }
    if old.expire_secs != new.expire_secs {
        out.push(SettingChange::Timer {
            secs: new.expire_secs,
        });
    }
    if old.invite_secret != new.invite_secret {
        out.push(SettingChange::InviteLink {
            revoked: new.invite_secret.is_empty(),
        });
    }
    out
}

/// The link for a group's invite secret (see `dak_proto::invite`).
pub fn invite_link(owner: &str, group: &[u8], secret: &[u8]) -> String {
    InviteLink {
        owner: owner.to_string(),
        group_id: group.to_vec(),
        secret: secret.to_vec(),
    }
    .to_string()
}

/// Compares secrets without leaking where they differ through timing.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a device does with a join request that reached it in a 1:1 chat:
/// `Some(follow-up)` when it should add the sender now, an event when the
/// request waits for an admin's approval, nothing when the link is not
/// (or no longer) this device's to answer.
pub(crate) fn on_join_request(
    p: &Profile,
    me: &str,
    from: &str,
    req: &v1::JoinRequest,
    now: i64,
) -> Result<(Option<FollowUp>, Option<Event>), ClientError> {
    let key = group_key(&req.group_id);
    let Some(group) = p.group_for(&key)? else {
        return Ok((None, None));
    };
    let Some(state) = p.group_state(&group)? else {
        return Ok((None, None));
    };
    let valid = !state.invite_secret.is_empty()
        && state.invite_owner == me
        && same_secret(&state.invite_secret, &req.invite_secret);
    if !valid {
        tracing::info!(group = %key, %from, "a join request with a revoked or wrong invite link was ignored");
        return Ok((None, None));
    }
    let members = accounts(&p.mls(|m| m.members(&group))?);
    if members.contains(from) {
        return Ok((None, None));
    }
    if state.invite_needs_approval {
        p.add_join_request(&group, from, now)?;
        let event = Event::Group {
            conversation: key.into(),
            by: from.to_string(),
            change: GroupChange::JoinRequest {
                phone: from.to_string(),
            },
        };
        return Ok((None, Some(event)));
    }
    Ok((
        Some(FollowUp::AddJoiner {
            group,
            phone: from.to_string(),
        }),
        None,
    ))
}

/// A change that lost the epoch race `CHANGE_RETRIES` times: retryable.
fn kept_changing() -> ClientError {
    ClientError::Timeout("the group kept changing; try again".into())
}

fn usage(msg: impl Into<String>) -> ClientError {
    ClientError::Usage(msg.into())
}

fn parse_phones(raw: &[String]) -> Result<Vec<String>, ClientError> {
    let mut out = Vec::new();
    for r in raw {
        let p = dak_proto::normalize_phone(r)
            .map_err(|e| usage(format!("{r:?} is not a phone number: {e}")))?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

impl Client {
    /// Creates a group with this account as its admin and adds `phones`
    /// (with all their devices, and this account's other devices).
    pub async fn create_group(
        &mut self,
        title: &str,
        phones: &[String],
        admins_only: bool,
    ) -> Result<GroupInfo, ClientError> {
        check_title(title)?;
        let me = self.phone().to_string();
        let phones: Vec<String> = parse_phones(phones)?
            .into_iter()
            .filter(|p| *p != me)
            .collect();
        // Numbers this account brings into a group are ones it knows.
        for phone in &phones {
            crate::requests::mark_known(&self.profile, phone)?;
        }
        if phones.len() + 1 > MAX_GROUP_MEMBERS {
            return Err(usage(format!(
                "a group has at most {MAX_GROUP_MEMBERS} members; {} were given with you",
                phones.len() + 1
            )));
        }
        let mut adds = self
            .fetch_key_packages(&me, &[self.device_id()], &[CIPHERSUITE])
            .await?
            .packages;
        for phone in &phones {
            adds.extend(self.keys_for_new_member(phone).await?);
        }
        let state = v1::GroupState {
            title: title.trim().to_string(),
            admins: vec![me.clone()],
            admins_only,
            ..Default::default()
        };
        let group = self.profile().transaction(|p| {
            let group = p.mls(|m| m.create_named_group())?;
            p.add_conversation(&group, &group_key(&group), p.now_ms())?;
            p.set_group_state(&group, &state, p.now_ms())?;
            Ok(group)
        })?;
        let created = if adds.is_empty() {
            // Epoch 0 creates the group on the server, with only us in it.
            self.commit(&group, Vec::new(), Vec::new()).await
        } else {
            self.add_in_batches(&group, adds).await
        };
        if let Err(e) = created {
            // Refused before the server took anything (too big, a number
            // not on Dak): the group never existed.
            if self.profile().mls(|m| m.epoch(&group))? == 0 {
                self.profile().retire_conversation(&group)?;
            }
            return Err(e);
        }
        self.publish_state(&group, state).await?;
        self.group_info(&group_key(&group))
    }

    /// Adds members (all their devices) to a group.
    pub async fn add_members(
        &mut self,
        conversation: &str,
        phones: &[String],
    ) -> Result<(), ClientError> {
        let group = self.named(conversation)?;
        let phones = parse_phones(phones)?;
        for phone in &phones {
            crate::requests::mark_known(&self.profile, phone)?;
        }
        for _ in 0..CHANGE_RETRIES {
            let (state, members, admins) = self.rights(&group)?;
            if state.admins_only && !admins.contains(self.phone()) {
                return Err(usage(format!(
                    "only admins may add members to {:?}",
                    state.title
                )));
            }
            let new: Vec<&String> = phones.iter().filter(|p| !members.contains(*p)).collect();
            if new.is_empty() {
                return Ok(());
            }
            if members.len() + new.len() > MAX_GROUP_MEMBERS {
                return Err(usage(format!(
                    "{:?} has {} members; adding {} would pass the limit of {MAX_GROUP_MEMBERS}",
                    state.title,
                    members.len(),
                    new.len()
                )));
            }
            let mut adds = Vec::new();
            for phone in new {
                adds.extend(self.keys_for_new_member(phone).await?);
            }
            match self.add_in_batches(&group, adds).await {
                Ok(()) => {
                    for p in &phones {
                        self.profile().remove_join_request(&group, p)?;
                    }
                    // The new members learn the title and admins from this.
                    return self.publish_state(&group, state).await;
                }
                Err(e) if e.code() == Some(ErrorCode::StaleEpoch) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(kept_changing())
    }

    /// Removes a member (all their devices). Admins only.
    pub async fn remove_member(
        &mut self,
        conversation: &str,
        phone: &str,
    ) -> Result<(), ClientError> {
        let group = self.named(conversation)?;
        let phone = parse_phones(&[phone.to_string()])?.remove(0);
        if phone == self.phone() {
            return Err(usage("to remove yourself, use `dak group leave`"));
        }
        for _ in 0..CHANGE_RETRIES {
            let (mut state, members, admins) = self.rights(&group)?;
            if !admins.contains(self.phone()) {
                return Err(usage(format!(
                    "only admins may remove members from {:?}",
                    state.title
                )));
            }
            if !members.contains(&phone) {
                return Err(usage(format!(
                    "{phone} is not a member of {:?}",
                    state.title
                )));
            }
            let leaves = self.leaves_of(&group, &phone)?;
            match self.commit(&group, Vec::new(), leaves).await {
                Ok(()) => {
                    state.admins.retain(|a| *a != phone);
                    return self.publish_state(&group, state).await;
                }
                Err(e) if e.code() == Some(ErrorCode::StaleEpoch) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(kept_changing())
    }

    /// Leaves a group: the members' devices remove ours with their next
    /// commit, and this device stops reading the group now.
    pub async fn leave_group(&mut self, conversation: &str) -> Result<(), ClientError> {
        let group = self.named(conversation)?;
        let content = v1::Content {
            kind: Some(Kind::Leave(v1::Leave {})),
        };
        self.send_content(&ConversationId::Group(group.clone()), content)
            .await?;
        self.profile().retire_conversation(&group)
    }

    /// Makes a member an admin, or not. Admins only.
    pub async fn set_admin(
        &mut self,
        conversation: &str,
        phone: &str,
        admin: bool,
    ) -> Result<(), ClientError> {
        let group = self.named(conversation)?;
        let phone = parse_phones(&[phone.to_string()])?.remove(0);
        let (mut state, members, admins) = self.rights(&group)?;
        if !admins.contains(self.phone()) {
            return Err(usage(format!(
                "only admins may promote or demote in {:?}",
                state.title
            )));
        }
        if !members.contains(&phone) {
            return Err(usage(format!(
                "{phone} is not a member of {:?}",
                state.title
            )));
        }
        // Start from who is admin now (the fallback admin included).
        state.admins = admins.into_iter().collect();
        state.admins.retain(|a| *a != phone);
        if admin {
            state.admins.push(phone);
        } else if state.admins.is_empty() {
            return Err(usage(
                "a group needs at least one admin: promote someone first",
            ));
        }
        self.publish_state(&group, state).await
    }

    /// Changes the title, description, avatar, rules or timer.
    pub async fn update_group(
        &mut self,
        conversation: &str,
        edit: GroupEdit,
    ) -> Result<(), ClientError> {
        let group = self.named(conversation)?;
        let (old, members, _) = self.rights(&group)?;
        let mut state = old.clone();
        if let Some(t) = edit.title {
            check_title(&t)?;
            state.title = t.trim().to_string();
        }
        if let Some(d) = edit.description {
            if d.chars().count() > MAX_DESCRIPTION_CHARS {
                return Err(usage(format!(
                    "a description has at most {MAX_DESCRIPTION_CHARS} characters"
                )));
            }
            state.description = d;
        }
        if let Some(a) = edit.avatar {
            if a.len() > MAX_AVATAR_BYTES {
                return Err(usage(format!(
                    "the avatar is {} bytes; the limit is {MAX_AVATAR_BYTES}",
                    a.len()
                )));
            }
            state.avatar = a;
        }
        if let Some(a) = edit.admins_only {
            state.admins_only = a;
        }
        if let Some(t) = edit.expire_secs {
            state.expire_secs = t;
        }
        may_change(Some(&old), &state, self.phone(), &members).map_err(|_| {
            usage(format!(
                "only admins may change {}",
                if old.admins_only {
                    format!("the settings of {:?}", old.title)
                } else {
                    "who is admin and who may change settings".to_string()
                }
            ))
        })?;
        self.publish_state(&group, state).await
    }

    /// Makes a new invite link (the old one stops working). Admins only.
    pub async fn create_invite_link(
        &mut self,
        conversation: &str,
        needs_approval: bool,
    ) -> Result<String, ClientError> {
        let group = self.named(conversation)?;
        let (mut state, _, admins) = self.rights(&group)?;
        if !admins.contains(self.phone()) {
            return Err(usage("only admins may make invite links"));
        }
        let mut secret = vec![0u8; INVITE_SECRET_BYTES];
        self.profile().env().fill_random(&mut secret);
        state.invite_secret = secret.clone();
        state.invite_owner = self.phone().to_string();
        state.invite_needs_approval = needs_approval;
        self.publish_state(&group, state).await?;
        Ok(invite_link(self.phone(), &group, &secret))
    }

    /// Revokes the group's invite link. Admins only.
    pub async fn revoke_invite_link(&mut self, conversation: &str) -> Result<(), ClientError> {
        let group = self.named(conversation)?;
        let (mut state, _, admins) = self.rights(&group)?;
        if !admins.contains(self.phone()) {
            return Err(usage("only admins may revoke invite links"));
        }
        state.invite_secret.clear();
        state.invite_owner.clear();
        state.invite_needs_approval = false;
        self.publish_state(&group, state).await
    }

    /// Asks to join a group by its invite link: the request goes, end to
    /// end encrypted, to the member who made the link, whose devices add
    /// us (or show the request to approve).
    pub async fn join_by_link(&mut self, link: &str) -> Result<SendOutcome, ClientError> {
        let InviteLink {
            owner,
            group_id,
            secret: invite_secret,
        } = InviteLink::parse(link).map_err(|e| usage(e.to_string()))?;
        if owner == self.phone() {
            return Err(usage("this is your own invite link"));
        }
        let content = v1::Content {
            kind: Some(Kind::JoinRequest(v1::JoinRequest {
                group_id,
                invite_secret,
            })),
        };
        self.send_content(&ConversationId::Direct(owner), content)
            .await
    }

    /// Adds someone who asked to join (approval on). Admins only.
    pub async fn approve_join(
        &mut self,
        conversation: &str,
        phone: &str,
    ) -> Result<(), ClientError> {
        let group = self.named(conversation)?;
        let phone = parse_phones(&[phone.to_string()])?.remove(0);
        if !self.profile().join_requests(&group)?.contains(&phone) {
            return Err(usage(format!("{phone} has not asked to join")));
        }
        self.add_members(&group_key(&group), &[phone]).await
    }

    /// A group as this device knows it.
    pub fn group_info(&self, conversation: &str) -> Result<GroupInfo, ClientError> {
        group_info(self.profile(), conversation)
    }

    /// The groups this device is in.
    pub fn groups(&self) -> Result<Vec<GroupInfo>, ClientError> {
        list_groups(self.profile())
    }

    /// Work that deliveries called for (see `FollowUp`).
    pub(crate) async fn follow_up(&mut self, work: FollowUp) -> Result<(), ClientError> {
        match work {
            FollowUp::AddJoiner { group, phone } => {
                self.add_members(&group_key(&group), &[phone]).await
            }
            FollowUp::RemoveLeavers { group } => self.remove_leavers(&group).await,
            FollowUp::CheckKeys { group, phones } => self.check_group_keys(&group, &phones).await,
        }
    }

    /// Commits the removal of members who asked to leave (anyone may).
    pub(crate) async fn remove_leavers(&mut self, group: &[u8]) -> Result<(), ClientError> {
        for _ in 0..CHANGE_RETRIES {
            let leavers = self.profile().leavers(group)?;
            if leavers.is_empty() || !self.profile().mls(|m| m.has_group(group))? {
                return Ok(());
            }
            let mut leaves = Vec::new();
            for phone in &leavers {
                let theirs = self.leaves_of(group, phone)?;
                if theirs.is_empty() {
                    self.profile().clear_leaver(group, phone)?;
                }
                leaves.extend(theirs);
            }
            if leaves.is_empty() {
                return Ok(());
            }
            match self.commit(group, Vec::new(), leaves).await {
                Ok(()) => {
                    for phone in &leavers {
                        self.profile().clear_leaver(group, phone)?;
                    }
                    return Ok(());
                }
                Err(e) if e.code() == Some(ErrorCode::StaleEpoch) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(kept_changing())
    }

    /// The group id of a named group this device is in.
    fn named(&self, conversation: &str) -> Result<Vec<u8>, ClientError> {
        let key = match self.profile().resolve(conversation)? {
            ConversationId::Direct(phone) => {
                return Err(usage(format!(
                    "{phone} is a 1:1 chat; group commands take a group (see `dak group list`)"
                )));
            }
            group => group.key(),
        };
        match self.profile().group_for(&key)? {
            Some(g) => Ok(g),
            None => Err(usage(format!("you are no longer a member of {key}"))),
        }
    }

    fn rights(
        &self,
        group: &[u8],
    ) -> Result<(v1::GroupState, BTreeSet<String>, BTreeSet<String>), ClientError> {
        rights(self.profile(), group)
    }

    fn leaves_of(&self, group: &[u8], phone: &str) -> Result<Vec<MemberDevice>, ClientError> {
        Ok(self
            .profile()
            .mls(|m| m.members(group))?
            .into_iter()
            .filter(|m| m.phone == phone)
            .collect())
    }

    /// KeyPackages for every device of someone joining a group.
    async fn keys_for_new_member(
        &mut self,
        phone: &str,
    ) -> Result<Vec<(u64, openmls::prelude::KeyPackage)>, ClientError> {
        // Named groups are classic (`Mls::create_named_group`).
        let fetched = self.fetch_key_packages(phone, &[], &[CIPHERSUITE]).await?;
        if fetched.packages.is_empty() {
            return Err(usage(format!(
                "{phone} has no device ready for encrypted chat yet; ask them to open Dak once"
            )));
        }
        Ok(fetched.packages)
    }

    /// Adds devices in commits small enough for their Welcomes (halving
    /// the batch while one does not fit a frame), skipping any that are
    /// already members (another admin may have added them).
    async fn add_in_batches(
        &mut self,
        group: &[u8],
        adds: Vec<(u64, openmls::prelude::KeyPackage)>,
    ) -> Result<(), ClientError> {
        let mut pending = adds;
        let mut batch = ADD_BATCH;
        while !pending.is_empty() {
            let present: BTreeSet<u64> = self
                .profile()
                .mls(|m| m.members(group))?
                .iter()
                .map(|m| m.device_id)
                .collect();
            pending.retain(|(d, _)| !present.contains(d));
            let take = pending.len().min(batch);
            if take == 0 {
                break;
            }
            let chunk: Vec<_> = pending[..take].to_vec();
            match self.commit(group, chunk, Vec::new()).await {
                Ok(()) => {
                    pending.drain(..take);
                }
                Err(ClientError::TooLarge(why)) if batch > 1 => {
                    tracing::debug!(%why, batch, "halving the batch of devices to add");
                    batch /= 2;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Stores the new settings and sends them to the members.
    async fn publish_state(
        &mut self,
        group: &[u8],
        state: v1::GroupState,
    ) -> Result<(), ClientError> {
        let content = v1::Content {
            kind: Some(Kind::GroupState(state.clone())),
        };
        // Checked before it is kept: a state too big to send would be
        // refused on every later change too.
        crate::outbox::check_plaintext_size(&prost::Message::encode_to_vec(&content))?;
        self.profile()
            .set_group_state(group, &state, self.profile().now_ms())?;
        self.send_content(&ConversationId::Group(group.to_vec()), content)
            .await?;
        Ok(())
    }
}

/// The group's state, member accounts and admins.
fn rights(
    profile: &Profile,
    group: &[u8],
) -> Result<(v1::GroupState, BTreeSet<String>, BTreeSet<String>), ClientError> {
    let state = profile.group_state(group)?.unwrap_or_default();
    let members = accounts(&profile.mls(|m| m.members(group))?);
    let admins = effective_admins(&state, &members);
    Ok((state, members, admins))
}

/// A group as this device knows it (no connection needed).
pub fn group_info(profile: &Profile, conversation: &str) -> Result<GroupInfo, ClientError> {
    let me = profile.registration()?.phone;
    let (key, group) = match profile.resolve(conversation)? {
        ConversationId::Group(group) => (crate::group_key(&group), group),
        ConversationId::Direct(phone) => {
            return Err(usage(format!("{phone} is a 1:1 chat, not a group")));
        }
    };
    let group = profile
        .group_for(&key)?
        .filter(|g| *g == group)
        .ok_or_else(|| usage(format!("you are no longer a member of {key}")))?;
    let (state, _, admins) = rights(profile, &group)?;
    let devices = profile.mls(|m| m.members(&group))?;
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for d in &devices {
        *count.entry(d.phone.clone()).or_default() += 1;
    }
    let you_are_admin = admins.contains(&me);
    let link = (you_are_admin && !state.invite_secret.is_empty())
        .then(|| invite_link(&state.invite_owner, &group, &state.invite_secret));
    Ok(GroupInfo {
        key,
        title: state.title.clone(),
        description: state.description.clone(),
        avatar_bytes: state.avatar.len(),
        admins_only: state.admins_only,
        expire_secs: state.expire_secs,
        members: count
            .into_iter()
            .map(|(phone, devices)| GroupMember {
                admin: admins.contains(&phone),
                phone,
                devices,
            })
            .collect(),
        you_are_admin,
        invite_link: link,
        invite_needs_approval: state.invite_needs_approval,
        join_requests: profile.join_requests(&group)?,
        epoch: profile.mls(|m| m.epoch(&group))?,
    })
}

/// The groups this device is in, by title.
pub fn list_groups(profile: &Profile) -> Result<Vec<GroupInfo>, ClientError> {
    let mut all = profile
        .named_groups()?
        .into_iter()
        .map(|(_, key)| group_info(profile, &key))
        .collect::<Result<Vec<_>, _>>()?;
    all.sort_by(|a, b| a.title.cmp(&b.title).then(a.key.cmp(&b.key)));
    Ok(all)
}

fn check_title(title: &str) -> Result<(), ClientError> {
    let t = title.trim();
    if t.is_empty() || t.chars().count() > MAX_TITLE_CHARS {
        return Err(usage(format!(
            "a group title has 1 to {MAX_TITLE_CHARS} characters"
        )));
    }
    if dak_proto::normalize_phone(t).is_ok() || t.starts_with("group:") {
        return Err(usage(
            "a group title cannot look like a phone number or a group id",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(p: &[&str]) -> BTreeSet<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    fn state(admins: &[&str], admins_only: bool) -> v1::GroupState {
        v1::GroupState {
            title: "Family".into(),
            admins: admins.iter().map(|s| s.to_string()).collect(),
            admins_only,
            ..Default::default()
        }
    }

    #[test]
    fn a_group_without_admins_gets_its_lowest_number() {
        let members = set(&["+913", "+912"]);
        assert_eq!(
            effective_admins(&state(&["+911"], false), &members),
            set(&["+912"])
        );
        assert_eq!(
            effective_admins(&state(&["+913"], false), &members),
            set(&["+913"])
        );
    }

    #[test]
    fn members_may_rename_only_open_groups() {
        let members = set(&["+911", "+912"]);
        let mut renamed = state(&["+911"], false);
        renamed.title = "Cousins".into();
        assert!(may_change(Some(&state(&["+911"], false)), &renamed, "+912", &members).is_ok());
        renamed.admins_only = true;
        let err = may_change(Some(&state(&["+911"], true)), &renamed, "+912", &members);
        assert!(matches!(err, Err(RuleBreach::LockedSettings { .. })));
        assert!(may_change(Some(&state(&["+911"], true)), &renamed, "+911", &members).is_ok());
    }

    #[test]
    fn only_admins_change_admins() {
        let members = set(&["+911", "+912"]);
        let promoted = state(&["+911", "+912"], false);
        assert!(may_change(Some(&state(&["+911"], false)), &promoted, "+912", &members).is_err());
        assert!(may_change(None, &promoted, "+912", &members).is_ok());
    }

    #[test]
    fn removals_by_members_need_a_leave() {
        let before = set(&["+911", "+912", "+913"]);
        let s = state(&["+911"], false);
        let left = set(&["+913"]);
        assert!(may_change_members(Some(&s), "+912", &before, &set(&[]), &left, &[]).is_err());
        assert!(
            may_change_members(
                Some(&s),
                "+912",
                &before,
                &set(&[]),
                &left,
                &["+913".into()]
            )
            .is_ok()
        );
        assert!(may_change_members(Some(&s), "+911", &before, &set(&[]), &left, &[]).is_ok());
        let closed = state(&["+911"], true);
        assert!(
            may_change_members(
                Some(&closed),
                "+912",
                &before,
                &set(&["+914"]),
                &set(&[]),
                &[]
            )
            .is_err()
        );
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd") && !same_secret(b"abc", b"ab"));
    }

    use crate::testing::TestDevice as Device;

    /// A 1,024-member group built as `Client::create_group` does, 128
    /// devices per add-only commit: every commit and Welcome fits a frame.
    /// (With an update path, the fresh tree's commits grow by ~82 bytes per
    /// member and stop fitting near a thousand.)
    #[test]
    fn a_group_of_1024_is_built_in_commits_that_fit_a_frame() {
        let creator = Device::new("+919800000000", 1);
        let group = creator.mls().create_named_group().unwrap();
        let others: Vec<Device> = (2..=1024u64)
            .map(|i| Device::new(&format!("+91980{i:07}"), i))
            .collect();
        let mut largest = 0;
        for batch in others.chunks(ADD_BATCH) {
            let adds = batch
                .iter()
                .map(|d| d.key_package_for(&creator.mls()).unwrap())
                .collect();
            let out = creator.mls().commit(&group, adds, vec![]).unwrap();
            creator.mls().merge_pending(&group).unwrap();
            let size = out.commit.len() + out.welcome.as_ref().map_or(0, Vec::len);
            largest = largest.max(size);
            assert!(
                size + crate::group_sync::COMMIT_FRAME_OVERHEAD <= dak_proto::MAX_FRAME_BYTES,
                "a commit and Welcome of {size} bytes do not fit a frame"
            );
        }
        assert_eq!(creator.mls().members(&group).unwrap().len(), 1024);
        assert!(
            largest > 100_000,
            "the last Welcome carries the whole tree: {largest}"
        );
    }
}
