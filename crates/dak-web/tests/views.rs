//! The page's views, natively: what the chat list and a chat show for a
//! profile's rows (order, unread counts, ticks), and that a message's text
//! reaches the page exactly as it was written, markup and all (the page
//! puts it in a text node).

use dak_core::testing::{TestDevice, text_message};
use dak_core::{ConversationId, MessageView, TickState, queue_text};
use dak_web::views::{chat_list, messages};

fn incoming(id: u8, from: &str, text: &str, at_ms: i64) -> MessageView {
    text_message(
        vec![id; 16],
        ConversationId::Direct(from.into()),
        from,
        false,
        text,
        at_ms,
    )
}

#[test]
fn the_chat_list_is_newest_first_with_unread_counts_and_ticks() {
    let me = TestDevice::new("+919800000001", 1);
    let p = &me.profile;
    let now = p.now_ms();
    p.add_conversation(&[1; 16], "+919800000002", now).unwrap();
    p.add_conversation(&[2; 16], "+919800000003", now).unwrap();
    p.add_conversation(&[3; 16], "+919800000004", now).unwrap();
    let markup = r#"<img src=x onerror="alert(1)"> & <b>hi</b>"#;
    p.insert_message(&incoming(1, "+919800000002", "first", now - 3000))
        .unwrap();
    p.insert_message(&incoming(2, "+919800000002", markup, now - 2000))
        .unwrap();
    p.insert_message(&incoming(3, "+919800000003", "older", now - 10_000))
        .unwrap();
    p.mark_read(&[3; 16], now).unwrap();
    // Typed offline: ours, waiting (🕓), the newest of all.
    queue_text(p, "+919800000003", "queued").unwrap();

    let rows = chat_list(p).unwrap();
    let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["+919800000003", "+919800000002", "+919800000004"]);
    assert_eq!(rows[0].last_text, "queued");
    assert_eq!(rows[0].last_tick, Some(TickState::Pending));
    assert!(rows[0].last_outgoing);
    assert_eq!(rows[0].unread, 0);
    assert_eq!(
        rows[1].last_text, markup,
        "text reaches the page as written"
    );
    assert_eq!(rows[1].unread, 2);
    assert_eq!(rows[1].last_tick, None);
    assert_eq!(rows[2].last_at_ms, 0, "a chat with no message yet");
    assert!(!rows.iter().any(|r| r.is_group));

    let chat = messages(p, "+91 98000 00002", 10).unwrap();
    let texts: Vec<&str> = chat.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        texts,
        ["first", markup],
        "oldest first, found by any spelling of the number"
    );
    assert_eq!(chat[0].id, "01010101-0101-0101-0101-010101010101");
    assert!(
        chat.iter()
            .all(|m| !m.outgoing && m.tick.is_none() && !m.read)
    );
    let last = messages(p, "+919800000002", 1).unwrap();
    assert_eq!(last.len(), 1, "the limit keeps the newest");
    assert_eq!(last[0].text, markup);
}

#[test]
fn the_page_offers_edit_and_delete_only_for_our_messages_within_their_windows() {
    let me = TestDevice::new("+919800000001", 1);
    let p = &me.profile;
    let now = p.now_ms();
    let bob = "+919800000002";
    p.add_conversation(&[1; 16], bob, now).unwrap();
    // The note to self holds the account's history between its devices: it
    // is listed only once the user writes there.
    p.add_conversation(&[9; 16], &me.phone, now).unwrap();
    let ours = |id: u8, minutes_ago: i64| {
        text_message(
            vec![id; 16],
            ConversationId::Direct(bob.into()),
            &me.phone,
            true,
            "ours",
            now - minutes_ago * 60_000,
        )
    };
    p.insert_message(&ours(1, 60 * 49)).unwrap();
    p.insert_message(&ours(2, 20)).unwrap();
    p.insert_message(&ours(3, 1)).unwrap();
    p.insert_message(&incoming(4, bob, "theirs", now)).unwrap();
    let shown: Vec<(bool, bool)> = messages(p, bob, 10)
        .unwrap()
        .iter()
        .map(|m| (m.can_edit, m.can_delete))
        .collect();
    assert_eq!(
        shown,
        [(false, false), (false, true), (true, true), (false, false)]
    );
    let keys: Vec<String> = chat_list(p).unwrap().into_iter().map(|r| r.key).collect();
    assert_eq!(keys, [bob]);
    queue_text(p, &me.phone, "a note").unwrap();
    assert_eq!(chat_list(p).unwrap().len(), 2);
}
