//! How messages and events look: one line each for people, one JSON object
//! each for scripts. Shared by the commands and the chat screen.

use dak_client::{
    ConversationId, Event, GroupChange, MessageView, RuleBreach, SettingChange, TickState,
    Undecodable, format_id,
};
use serde_json::json;

pub fn message_json(m: &MessageView) -> serde_json::Value {
    json!({
        "type": "message",
        "id": format_id(&m.id),
        "from": m.from,
        "conversation": m.conversation,
        "outgoing": m.outgoing,
        "sent_at": chrono::DateTime::from_timestamp_millis(m.sent_at_ms).map(|t| t.to_rfc3339()),
        "text": m.text,
        "reply_to": m.reply_to.as_ref().map(|q| json!({"id": format_id(&q.id), "from": q.from, "snippet": q.snippet})),
        "forwarded": m.forwarded,
        "forward_label": m.forward_label(),
        "edited": m.edited_ms > 0,
        "deleted": m.deleted,
        "expires_at": (m.expires_at_ms > 0).then(|| chrono::DateTime::from_timestamp_millis(m.expires_at_ms).map(|t| t.to_rfc3339())).flatten(),
        "attachment": m.attachment.as_ref().map(|a| json!({
            "blob_id": format_id(&a.blob_id),
            "media_type": a.media_type,
            "file_name": a.file_name,
            "size": a.size,
            "width": a.width,
            "height": a.height,
            "duration_ms": a.duration_ms,
            "voice_note": a.voice_note,
            "thumbnail_bytes": a.thumbnail.len(),
        })),
        "interactive": m.interactive,
        "choice": m.choice,
    })
}

/// A conversation as people read it: a number, or a group's key cut to
/// its first 8 hex digits (commands accept that prefix, or the title).
pub fn short(conversation: &ConversationId) -> String {
    let key = conversation.key();
    match key.strip_prefix("group:") {
        Some(hex) if hex.len() > 8 => key[.."group:".len() + 8].to_string(),
        _ => key,
    }
}

/// The text as shown: labels for forwards, replies, edits and deletions.
pub fn message_text(m: &MessageView) -> String {
    if m.deleted {
        return "🚫 This message was deleted".into();
    }
    let mut out = String::new();
    if let Some(label) = m.forward_label() {
        out.push_str(&format!("[{label}] "));
    }
    if let Some(q) = &m.reply_to {
        out.push_str(&format!("↪ {}: \"{}\" — ", q.from, q.snippet));
    }
    if let Some(a) = &m.attachment {
        out.push_str(&a.label());
        if !m.text.is_empty() {
            out.push_str(" — ");
        }
    }
    if m.choice.is_some() {
        out.push_str("☑ ");
    }
    if let Some(i) = &m.interactive
        && !i.header.is_empty()
    {
        out.push_str(&format!("{} — ", i.header));
    }
    out.push_str(&m.text);
    if let Some(i) = &m.interactive {
        out.push_str(&choices_text(i));
    }
    if m.edited_ms > 0 {
        out.push_str(" (edited)");
    }
    if m.expires_at_ms > 0 {
        out.push_str(" ⏱");
    }
    out
}

/// A business's buttons or list on one line, numbered as `dak choose`
/// takes them.
fn choices_text(i: &dak_proto::v1::Interactive) -> String {
    let mut out = String::new();
    if let Some(l) = &i.list {
        out.push_str(&format!(" — {}:", l.button));
        let mut n = 0;
        for s in &l.sections {
            if !s.title.is_empty() {
                out.push_str(&format!(" {}:", s.title));
            }
            for r in &s.rows {
                n += 1;
                out.push_str(&format!(" [{n}] {}", r.title));
                if !r.description.is_empty() {
                    out.push_str(&format!(" ({})", r.description));
                }
            }
        }
    } else {
        out.push_str(" —");
        for (n, b) in i.buttons.iter().enumerate() {
            out.push_str(&format!(" [{}] {}", n + 1, b.title));
        }
    }
    if !i.footer.is_empty() {
        out.push_str(&format!(" · {}", i.footer));
    }
    out
}

/// A tick as the CLI shows it.
pub fn tick_symbol(state: TickState) -> &'static str {
    match state {
        TickState::Pending => "🕓",
        TickState::Sent => "✓",
        TickState::Delivered => "✓✓",
        TickState::Read => "✓✓ (read)",
    }
}

/// A disappearing-message timer in words.
pub fn timer_text(secs: u32) -> String {
    if secs == 0 {
        "disappearing messages: off".into()
    } else {
        format!(
            "disappearing messages: {}",
            humantime::format_duration(std::time::Duration::from_secs(secs as u64))
        )
    }
}

/// One settings change in words.
pub fn setting_text(change: &SettingChange) -> String {
    match change {
        SettingChange::Title { title } => format!("title: {title}"),
        SettingChange::Description { description } => format!("description: {description}"),
        SettingChange::Avatar { bytes } => format!("avatar: {bytes} bytes"),
        SettingChange::AdminAdded { phone } => format!("{phone} is now an admin"),
        SettingChange::AdminRemoved { phone } => format!("{phone} is no longer an admin"),
        SettingChange::AdminsOnly { on: true } => {
            "only admins may add members and change settings".into()
        }
        SettingChange::AdminsOnly { on: false } => {
            "all members may add members and change settings".into()
        }
        SettingChange::Timer { secs } => timer_text(*secs),
        SettingChange::InviteLink { revoked: true } => "the invite link was revoked".into(),
        SettingChange::InviteLink { revoked: false } => "a new invite link was made".into(),
    }
}

/// A broken group rule in words.
pub fn breach_text(breach: &RuleBreach) -> String {
    match breach {
        RuleBreach::AdminSettings { by } => {
            format!("{by} is not an admin but changed the admins, the rules or the invite link")
        }
        RuleBreach::LockedSettings { by } => format!(
            "{by} is not an admin but changed the settings of a group where only admins may"
        ),
        RuleBreach::LockedMembers { by } => {
            format!("{by} is not an admin but added members to a group where only admins may")
        }
        RuleBreach::Removed { by, phone } => format!("{by} is not an admin but removed {phone}"),
    }
}

/// Why a message could not be shown, in words.
pub fn undecodable_text(reason: &Undecodable) -> String {
    match reason {
        Undecodable::LostState => "this device has lost the encryption state of the conversation; the sender's next message starts a new one".into(),
        Undecodable::Crypto { detail } => detail.clone(),
        Undecodable::SenderMismatch => {
            "the encrypted sender differs from the server's envelope".into()
        }
        Undecodable::BadContent { detail } => format!("its content is not valid: {detail}"),
    }
}

/// A group change in words.
pub fn change_text(by: &str, change: &GroupChange) -> String {
    let by = if by.is_empty() { "someone" } else { by };
    match change {
        GroupChange::Joined => "you were added to the group".into(),
        GroupChange::Added { phones } => format!("{by} added {}", phones.join(", ")),
        GroupChange::Removed { phones } => format!("{by} removed {}", phones.join(", ")),
        GroupChange::RemovedMe => {
            format!("{by} removed you: you no longer receive this group's messages")
        }
        GroupChange::Left { phone } => format!("{phone} left"),
        GroupChange::Settings { changes } => format!(
            "{by}: {}",
            changes
                .iter()
                .map(setting_text)
                .collect::<Vec<_>>()
                .join("; ")
        ),
        GroupChange::RuleBroken { breach } => {
            format!("⚠ against the group's rules: {}", breach_text(breach))
        }
        GroupChange::JoinRequest { phone } => {
            format!("{phone} asks to join by the invite link (dak group approve GROUP {phone})")
        }
    }
}

/// The line for an event other than a message or a tick, if it has one.
pub fn notice_text(event: &Event) -> Option<String> {
    Some(match event {
        Event::Undecodable { id, from, reason } => format!(
            "⚠ message {} from {from} could not be decrypted ({})",
            format_id(id),
            undecodable_text(reason)
        ),
        Event::SecurityNotice {
            conversation,
            phone,
        } => format!(
            "🔐 {phone}'s devices changed in your chat with {conversation}: the safety number changed (dak safety {conversation})"
        ),
        Event::Group {
            conversation,
            by,
            change,
        } => {
            let mark = if conversation.is_group() {
                "👥"
            } else {
                "⚙"
            };
            format!(
                "{mark} {}: {}",
                short(conversation),
                change_text(by, change)
            )
        }
        Event::Reaction {
            conversation,
            id,
            from,
            emoji,
        } if emoji.is_empty() => format!(
            "{}: {from} took back their reaction to {}",
            short(conversation),
            format_id(id)
        ),
        Event::Reaction {
            conversation,
            id,
            from,
            emoji,
        } => format!(
            "{}: {from} reacted {emoji} to {}",
            short(conversation),
            format_id(id)
        ),
        Event::Edited {
            conversation,
            id,
            text,
        } => format!(
            "{}: {} was edited: {text}",
            short(conversation),
            format_id(id)
        ),
        Event::Deleted { conversation, id } => {
            format!("{}: {} was deleted", short(conversation), format_id(id))
        }
        Event::MessageRequest { conversation, from } => format!(
            "✉ message request from {from} in {}: dak accept {conversation}, dak block {from} or dak report {from}",
            short(conversation)
        ),
        Event::History {
            from_device,
            part,
            parts,
            chats,
            messages,
        } => format!(
            "🕘 history from your device {from_device} (part {part} of {parts}): {messages} messages in {chats} chats"
        ),
        Event::OperatorNotice(n) => notice_frame(n),
        Event::NoticeRefused { reason } => {
            format!("▌ ✖ A notice from the server was refused and is not shown: {reason}")
        }
        Event::KeyTransparency { warning, .. } => format!("▌ ⚠ KEY TRANSPARENCY: {warning}"),
        Event::Message(_) | Event::Tick { .. } | Event::QueueEmpty => return None,
    })
}

/// What others wrote (a message, a quote, a name), made safe for a
/// terminal: a line break is indented, so no line of it starts where a
/// notice's frame does (`notice_frame`), and every other control, line or
/// paragraph separator and bidirectional override (which could move the
/// cursor, start a line or reorder what is shown) becomes `�`.
pub fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\n    "),
            '\t' => out.push(' '),
            c if c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}') =>
            {
                out.push('\u{FFFD}')
            }
            c => out.push(c),
        }
    }
    out
}

/// A notice from the operator, framed: every line starts with `▌`, which
/// no line of anything else printed can (`terminal_safe`), so a message
/// cannot pass for a notice.
/// How a 1:1 conversation is encrypted, in one sentence for `dak safety`:
/// post-quantum, or classic and which devices kept it so.
pub fn encryption_line(safety: &dak_client::Safety) -> String {
    if safety.post_quantum {
        return format!(
            "Encryption: {} ({}): made so that what is recorded today stays secret even from a future quantum computer.",
            safety.description, safety.suite
        );
    }
    let because: Vec<String> = safety
        .classic_because
        .iter()
        .map(|(phone, device)| format!("device {device} of {phone}"))
        .collect();
    let why = if because.is_empty() {
        "every device in it offers post-quantum encryption, but the server handed out classic keys \
         (a server from before post-quantum keys does; one that keeps them weakened this chat)"
            .to_string()
    } else {
        format!(
            "{} did not offer it when joining this chat",
            because.join(", ")
        )
    };
    format!(
        "Encryption: {} ({}), not post-quantum: {why}.",
        safety.description, safety.suite
    )
}

/// What the key directory showed for the contact's number (`dak safety`).
pub fn key_transparency_line(safety: &dak_client::Safety) -> String {
    match &safety.key_transparency {
        dak_client::kt::KtStatus::Verified { epoch } => format!(
            "Keys: verified by key transparency (the server's public key directory, epoch {epoch}, \
             lists exactly the devices in this chat's keys)."
        ),
        dak_client::kt::KtStatus::NotOffered => {
            "Keys: not verified by key transparency (this server keeps no key directory); compare \
             the safety number in person."
                .to_string()
        }
        dak_client::kt::KtStatus::Failed { reason } => format!(
            "Keys: ✖ KEY TRANSPARENCY FAILED. Nothing was sent to the keys in question. {reason}"
        ),
    }
}

pub fn notice_frame(n: &dak_client::NoticeView) -> String {
    let head = if n.targeted {
        "⚠ SECURITY NOTICE FOR YOUR ACCOUNT ONLY, from the server's operator (signed)".to_string()
    } else {
        format!(
            "NOTICE FROM THE SERVER'S OPERATOR (signed, in the public log) · {} #{} · {}",
            n.kind.to_uppercase(),
            n.thread,
            n.state
        )
    };
    let mut lines = vec![format!("▌━━ {head}"), format!("▌ {}", n.title)];
    let mut when = format!("▌ published {}", dak_server::status_time(n.published_ms));
    if n.started_ms > 0 {
        when.push_str(&format!(
            " · started {}",
            dak_server::status_time(n.started_ms)
        ));
    }
    if n.aware_ms > 0 {
        when.push_str(&format!(
            " · operator aware {}",
            dak_server::status_time(n.aware_ms)
        ));
    }
    lines.push(when);
    for (label, text) in [
        ("What happened", &n.what_happened),
        ("Affected", &n.affected),
        ("Not affected", &n.not_affected),
        ("What to do", &n.advice),
    ] {
        if !text.is_empty() {
            lines.push(format!("▌ {label}: {}", text.replace('\n', "\n▌   ")));
        }
    }
    lines.push("▌━━".into());
    lines.join("\n")
}

fn event_json(event: &Event) -> Option<serde_json::Value> {
    Some(match event {
        Event::Message(m) => message_json(m),
        Event::Tick { id, state } => json!({"type": "tick", "id": format_id(id), "tick": state}),
        Event::Undecodable { id, from, reason } => {
            json!({"type": "undecodable", "id": format_id(id), "from": from, "reason": undecodable_text(reason), "why": reason})
        }
        Event::SecurityNotice {
            conversation,
            phone,
        } => json!({"type": "security_notice", "conversation": conversation, "phone": phone}),
        Event::Group {
            conversation,
            by,
            change,
        } => json!({"type": "group", "conversation": conversation, "by": by, "detail": change}),
        Event::Reaction {
            conversation,
            id,
            from,
            emoji,
        } => {
            json!({"type": "reaction", "conversation": conversation, "id": format_id(id), "from": from, "emoji": emoji})
        }
        Event::Edited {
            conversation,
            id,
            text,
        } => {
            json!({"type": "edited", "conversation": conversation, "id": format_id(id), "text": text})
        }
        Event::Deleted { conversation, id } => {
            json!({"type": "deleted", "conversation": conversation, "id": format_id(id)})
        }
        Event::MessageRequest { conversation, from } => {
            json!({"type": "message_request", "conversation": conversation, "from": from})
        }
        Event::History {
            from_device,
            part,
            parts,
            chats,
            messages,
        } => {
            json!({"type": "history", "from_device": from_device, "part": part, "parts": parts, "chats": chats, "messages": messages})
        }
        Event::OperatorNotice(n) => {
            let mut v = json!(n);
            v["type"] = json!("operator_notice");
            v
        }
        Event::NoticeRefused { reason } => json!({"type": "notice_refused", "reason": reason}),
        Event::KeyTransparency { phone, warning } => {
            json!({"type": "key_transparency", "phone": phone, "warning": warning})
        }
        Event::QueueEmpty => return None,
    })
}

pub fn print_event(event: &Event, json: bool) {
    print_event_from(event, json, &Businesses::new())
}

/// Senders known to be businesses, by number (`dak_client::business`).
pub type Businesses = std::collections::HashMap<String, dak_client::BusinessView>;

/// The sender as shown: a business by its checked name or as a business
/// account, anyone else by number.
fn sender(m: &MessageView, businesses: &Businesses) -> String {
    terminal_safe(
        &businesses
            .get(&m.from)
            .map_or_else(|| m.from.clone(), |b| b.label()),
    )
}

/// `print_event`, naming business senders as `dak_client::business` says.
pub fn print_event_from(event: &Event, json: bool, businesses: &Businesses) {
    if json {
        if let Some(mut v) = event_json(event) {
            if let Event::Message(m) = event
                && let Some(b) = businesses.get(&m.from)
            {
                v["business"] = json!({
                    "verified": b.verified,
                    "name": b.verified.then_some(&b.display_name),
                    "label": b.label(),
                });
            }
            println!("{v}");
        }
        return;
    }
    match event {
        Event::Message(m) => {
            let at = chrono::DateTime::from_timestamp_millis(m.sent_at_ms)
                .map(|t| {
                    t.with_timezone(&chrono::Local)
                        .format("%Y-%m-%d %H:%M")
                        .to_string()
                })
                .unwrap_or_default();
            let text = terminal_safe(&message_text(m));
            let id = format_id(&m.id);
            if m.outgoing {
                println!("[{at}] you → {}: {text}  ({id})", short(&m.conversation));
            } else if m.conversation != m.from {
                println!(
                    "[{at}] {} in {}: {text}  ({id})",
                    sender(m, businesses),
                    short(&m.conversation)
                );
            } else {
                println!("[{at}] {}: {text}  ({id})", sender(m, businesses));
            }
        }
        Event::Tick { id, state } => println!("{} {}", format_id(id), tick_symbol(*state)),
        Event::OperatorNotice(n) => println!("{}", notice_frame(n)),
        other => {
            if let Some(line) = notice_text(other) {
                println!("{}", terminal_safe(&line));
            }
        }
    }
}

#[cfg(test)]
mod terminal_tests {
    use super::terminal_safe;

    #[test]
    fn nothing_a_message_holds_can_start_a_line_or_move_the_cursor() {
        let fake = "hi\n▌━━ NOTICE\r▌ x\u{1b}[2K\u{2028}▌ y\u{202E}z\u{0b}\u{0c}\u{85}";
        let safe = terminal_safe(fake);
        for line in safe.lines().skip(1) {
            assert!(line.starts_with("    "), "{line:?}");
        }
        assert!(!safe.chars().any(|c| c.is_control() && c != '\n'));
        assert!(!safe.contains('\u{2028}') && !safe.contains('\u{202E}'));
    }
}
