//! What a device does with each decrypted delivery, inside the batch's
//! transaction: store the message or apply the change, and say what the
//! user sees. Rules a sender's client enforces are checked again here
//! (only the author edits or deletes, within the window; only admins change
//! what the group reserves to them), since a modified client can send
//! anything that encrypts.

use std::collections::{BTreeMap, BTreeSet};

use dak_proto::v1::{self, content::Kind};

use crate::ClientError;
use crate::events::Event;
use crate::events::{GroupChange, SettingChange};
use crate::groups;
use crate::mls::{MemberDevice, is_named_group};
use crate::work::FollowUp;
use crate::{MessageView, Profile, Quote, group_key};

/// How long after sending the author may edit a message (WhatsApp's 15 minutes).
pub const EDIT_WINDOW_MS: i64 = 15 * 60 * 1000;
/// How long after sending the author may delete it for everyone.
pub const DELETE_WINDOW_MS: i64 = 48 * 3600 * 1000;
/// Allowance for an edit or delete that waited in the author's outbox.
const WINDOW_SLACK_MS: i64 = 5 * 60 * 1000;

/// What a batch of deliveries produced.
#[derive(Default)]
pub(crate) struct Delivered {
    pub events: Vec<Event>,
    /// Delivery receipts to send, by sender.
    pub to_confirm: BTreeMap<String, Vec<Vec<u8>>>,
    /// Our messages whose ticks moved.
    pub ticked: Vec<Vec<u8>>,
    pub undecodable: u64,
    /// A Welcome used one of our KeyPackages.
    pub joined: bool,
    pub follow_ups: Vec<FollowUp>,
}

/// An envelope's sender and times, as the server and MLS vouch for them.
pub(crate) struct Sender<'a> {
    pub id: &'a [u8],
    pub phone: &'a str,
    pub device: u64,
    pub server_time_ms: i64,
    pub now: i64,
}

/// The conversation a group belongs to: the group key for a named group,
/// the contact's number for a 1:1 chat.
fn conversation_of(p: &Profile, group: &[u8], fallback: &str) -> Result<String, ClientError> {
    if is_named_group(group) {
        return Ok(group_key(group));
    }
    Ok(p.peer_of(group)?.unwrap_or_else(|| fallback.to_string()))
}

/// This device joined `group` by a Welcome that `from` sent.
pub(crate) fn on_joined(
    p: &Profile,
    me: &str,
    group: &[u8],
    from: &str,
    now: i64,
    out: &mut Delivered,
) -> Result<(), ClientError> {
    out.joined = true;
    let key = if is_named_group(group) {
        let key = group_key(group);
        p.add_conversation(group, &key, now)?;
        out.events.push(Event::Group {
            conversation: key.clone().into(),
            by: from.to_string(),
            change: GroupChange::Joined,
        });
        key
    } else {
        let members = p.mls(|m| m.members(group))?;
        let peer = peer_in(&members, me);
        p.add_conversation(group, &peer, now)?;
        peer
    };
    out.events
        .extend(crate::requests::on_joined_by(p, me, &key, from)?);
    Ok(())
}

/// The other account in a conversation's members (this account for notes to self).
pub(crate) fn peer_in(members: &[MemberDevice], me: &str) -> String {
    members
        .iter()
        .map(|m| m.phone.as_str())
        .find(|p| *p != me)
        .unwrap_or(me)
        .to_string()
}

/// Another member's commit, merged.
pub(crate) struct CommitSeen {
    pub committer: String,
    pub changed: BTreeSet<String>,
    pub joined: BTreeSet<String>,
    pub left: BTreeSet<String>,
    pub removed_me: bool,
}

pub(crate) fn on_commit(
    p: &Profile,
    me: &str,
    group: &[u8],
    c: CommitSeen,
    out: &mut Delivered,
) -> Result<(), ClientError> {
    let conversation = conversation_of(p, group, "")?;
    if c.removed_me {
        p.retire_conversation(group)?;
    } else {
        // The devices another member's commit brought in are that member's
        // word (and the server's): check them against the key directory.
        // Members' new devices always (a device slipped into a contact's
        // account is the attack); new members too, unless a crowd joined
        // at once (each lookup costs the server and this account's budget).
        let crowd = c.joined.len() > crate::kt::MAX_CHECKED_PER_COMMIT;
        let phones: Vec<String> = c
            .changed
            .iter()
            .filter(|x| *x != me && !c.left.contains(*x) && !(crowd && c.joined.contains(*x)))
            .take(crate::kt::MAX_CHECKED_PER_COMMIT)
            .cloned()
            .collect();
        if !phones.is_empty() {
            out.follow_ups.push(FollowUp::CheckKeys {
                group: group.to_vec(),
                phones,
            });
        }
    }
    if !is_named_group(group) {
        for phone in c.changed.into_iter().filter(|x| x != me) {
            out.events.push(Event::SecurityNotice {
                conversation: conversation.clone().into(),
                phone,
            });
        }
        return Ok(());
    }
    let group_event = |change| Event::Group {
        conversation: conversation.clone().into(),
        by: c.committer.clone(),
        change,
    };
    if c.removed_me {
        out.events.push(group_event(GroupChange::RemovedMe));
        return Ok(());
    }
    let members_after = groups::accounts(&p.mls(|m| m.members(group))?);
    let mut members_before: BTreeSet<String> =
        members_after.difference(&c.joined).cloned().collect();
    members_before.extend(c.left.iter().cloned());
    let leavers = p.leavers(group)?;
    let state = p.group_state(group)?;
    if let Err(breach) = groups::may_change_members(
        state.as_ref(),
        &c.committer,
        &members_before,
        &c.joined,
        &c.left,
        &leavers,
    ) {
        tracing::warn!(group = %conversation, ?breach, "a commit broke the group's rules");
        out.events
            .push(group_event(GroupChange::RuleBroken { breach }));
    }
    for phone in &c.left {
        p.clear_leaver(group, phone)?;
    }
    let added: Vec<String> = c.joined.iter().filter(|x| *x != me).cloned().collect();
    if !added.is_empty() {
        out.events
            .push(group_event(GroupChange::Added { phones: added }));
    }
    if !c.left.is_empty() {
        out.events.push(group_event(GroupChange::Removed {
            phones: c.left.iter().cloned().collect(),
        }));
    }
    for phone in c
        .changed
        .iter()
        .filter(|x| *x != me && !c.joined.contains(*x) && !c.left.contains(*x))
    {
        out.events.push(Event::SecurityNotice {
            conversation: conversation.clone().into(),
            phone: phone.clone(),
        });
    }
    Ok(())
}

/// Applies one decrypted content from `from` in `group`, on this device
/// (`my_device` of the account `me`).
pub(crate) fn on_content(
    p: &Profile,
    me: &str,
    my_device: u64,
    group: &[u8],
    from: &Sender<'_>,
    content: v1::Content,
    out: &mut Delivered,
) -> Result<(), ClientError> {
    let outgoing = from.phone == me;
    let conversation = conversation_of(p, group, from.phone)?;
    let named = is_named_group(group);
    match content.kind {
        Some(Kind::Text(t)) => {
            let view = MessageView {
                id: from.id.to_vec(),
                conversation: conversation.into(),
                from: from.phone.to_string(),
                from_device: from.device,
                outgoing,
                text: t.body,
                sent_at_ms: t.sent_at_ms,
                server_time_ms: from.server_time_ms,
                acked: outgoing,
                read_ms: 0,
                reply_to: t.reply_to.map(|q| Quote {
                    id: q.message_id,
                    from: q.sender_phone,
                    snippet: q.snippet,
                }),
                forwarded: t.forwarded,
                attachment: t
                    .attachment
                    .map(|a| Box::new(crate::Attachment::from_proto(a))),
                interactive: t.interactive,
                choice: t.choice,
                expires_at_ms: if t.expire_secs > 0 {
                    from.now + t.expire_secs as i64 * 1000
                } else {
                    0
                },
                ..Default::default()
            };
            p.insert_message(&view)?;
            if !outgoing {
                out.to_confirm
                    .entry(from.phone.to_string())
                    .or_default()
                    .push(from.id.to_vec());
            }
            out.events.push(Event::Message(view));
        }
        Some(Kind::Receipt(r)) => {
            if let Some(e) = crate::notices::compare_told(
                p,
                from.phone,
                r.notice_log_length,
                &r.notice_log_head,
            )? {
                out.events.push(e);
            }
            let read = r.r#type == v1::ReceiptType::Read as i32;
            for id in r.message_ids {
                if outgoing {
                    // Another of my devices read it: it is read here too.
                    if read {
                        p.mark_read(&id, from.server_time_ms)?;
                    }
                } else if p.record_receipt(
                    &id,
                    from.phone,
                    from.device,
                    read,
                    from.server_time_ms,
                )? {
                    out.ticked.push(id);
                }
            }
        }
        Some(Kind::Reaction(r)) => {
            // Only on a message of this chat.
            if p.message(&r.message_id)?
                .is_none_or(|m| m.conversation != conversation)
            {
                return Ok(());
            }
            p.set_reaction(&r.message_id, from.phone, &r.emoji, from.server_time_ms)?;
            out.events.push(Event::Reaction {
                conversation: conversation.into(),
                id: r.message_id,
                from: from.phone.to_string(),
                emoji: r.emoji,
            });
        }
        Some(Kind::Edit(e)) => {
            if authored_within(
                p,
                &conversation,
                &e.message_id,
                from,
                EDIT_WINDOW_MS,
                "edit",
            )? {
                p.edit_message(&e.message_id, &e.body, from.server_time_ms)?;
                out.events.push(Event::Edited {
                    conversation: conversation.into(),
                    id: e.message_id,
                    text: e.body,
                });
            }
        }
        Some(Kind::Delete(d)) => {
            if p.message(&d.message_id)?.is_none()
                && crate::history::in_window(p, from.server_time_ms)?
            {
                // A just-linked device: the message may still come with
                // the history; it comes deleted then.
                crate::history::remember_deletion(p, &d.message_id, from.phone)?;
            }
            if authored_within(
                p,
                &conversation,
                &d.message_id,
                from,
                DELETE_WINDOW_MS,
                "delete",
            )? {
                p.tombstone_message(&d.message_id)?;
                out.events.push(Event::Deleted {
                    conversation: conversation.into(),
                    id: d.message_id,
                });
            }
        }
        Some(Kind::SetTimer(t)) if !named => {
            p.set_chat_timer(&conversation, t.expire_secs)?;
            out.events.push(Event::Group {
                conversation: conversation.into(),
                by: from.phone.to_string(),
                change: GroupChange::Settings {
                    changes: vec![SettingChange::Timer {
                        secs: t.expire_secs,
                    }],
                },
            });
        }
        Some(Kind::GroupState(state)) if named => {
            on_group_state(p, group, &conversation, from.phone, state, out)?
        }
        Some(Kind::Leave(_)) if named => {
            if outgoing {
                // This account left from another of its devices.
                p.retire_conversation(group)?;
            } else {
                p.add_leaver(group, from.phone)?;
                let members = groups::accounts(&p.mls(|m| m.members(group))?);
                let state = p.group_state(group)?.unwrap_or_default();
                if groups::effective_admins(&state, &members).contains(me) {
                    out.follow_ups.push(FollowUp::RemoveLeavers {
                        group: group.to_vec(),
                    });
                }
            }
            out.events.push(Event::Group {
                conversation: conversation.into(),
                by: from.phone.to_string(),
                change: GroupChange::Left {
                    phone: from.phone.to_string(),
                },
            });
        }
        Some(Kind::History(h)) => {
            // Only another device of this account, in the note to self, may
            // hand this device history, and only the device it names takes it.
            let note_to_self = !named && p.peer_of(group)?.as_deref() == Some(me);
            if outgoing
                && note_to_self
                && from.device != my_device
                && h.for_device == my_device
                && crate::history::in_window(p, from.server_time_ms)?
            {
                out.events
                    .push(crate::history::import(p, me, from.device, h)?);
            }
        }
        Some(Kind::JoinRequest(req)) if !named && !outgoing => {
            let (work, event) = groups::on_join_request(p, me, from.phone, &req, from.now)?;
            out.follow_ups.extend(work);
            out.events.extend(event);
        }
        Some(other) => {
            tracing::info!(kind = ?std::mem::discriminant(&other), %conversation, "content that does not belong in this kind of chat was ignored");
        }
        None => out.undecodable += 1,
    }
    Ok(())
}

fn on_group_state(
    p: &Profile,
    group: &[u8],
    conversation: &str,
    by: &str,
    state: v1::GroupState,
    out: &mut Delivered,
) -> Result<(), ClientError> {
    let old = p.group_state(group)?;
    let members = groups::accounts(&p.mls(|m| m.members(group))?);
    let change = match groups::may_change(old.as_ref(), &state, by, &members) {
        Ok(()) => {
            let changes = groups::setting_changes(old.as_ref(), &state);
            p.set_group_state(group, &state, 0)?;
            if changes.is_empty() {
                return Ok(());
            }
            GroupChange::Settings { changes }
        }
        Err(breach) => {
            tracing::warn!(group = %conversation, ?breach, "a group state change was refused");
            GroupChange::RuleBroken { breach }
        }
    };
    out.events.push(Event::Group {
        conversation: conversation.to_string().into(),
        by: by.to_string(),
        change,
    });
    Ok(())
}

/// Is `id` a message by `from` in this chat, sent at most `window` before this change?
fn authored_within(
    p: &Profile,
    conversation: &str,
    id: &[u8],
    from: &Sender<'_>,
    window: i64,
    what: &str,
) -> Result<bool, ClientError> {
    let Some(m) = p.message(id)? else {
        return Ok(false);
    };
    let sent = m.at_ms();
    let ok = m.from == from.phone
        && m.conversation == conversation
        && !m.deleted
        && from.server_time_ms - sent <= window + WINDOW_SLACK_MS;
    if !ok {
        tracing::warn!(from = %from.phone, "a {what} of a message that is not the sender's, or too late, was ignored");
    }
    Ok(ok)
}
