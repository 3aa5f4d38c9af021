//! Behaviour every `Store` backend must show. Each backend's tests call
//! `run_all` on a fresh, empty store, so SQLite and PostgreSQL are held to
//! one definition of correct.
//!
//! The cases run one after another on the one store. Cases that call
//! `expire` drop what is due by then in every earlier case, so they run
//! last and pass times past everything before them. Limits are raced by
//! spawning many callers on clones of the store: exactly the limit may pass.

use crate::*;

fn envelope(id: u8, body: &[u8]) -> NewEnvelope {
    NewEnvelope {
        message_id: vec![id; 16],
        sender_phone: "+919800000001".into(),
        sender_device: 1,
        server_time_ms: 1_000 + id as i64,
        expires_ms: 10_000,
        body: body.to_vec(),
    }
}

pub async fn run_all<S: Store + Clone>(s: &S) {
    registration_replaces_old_devices(s).await;
    linked_devices_are_capped(s).await;
    mailbox_is_ordered_and_private(s).await;
    link_requests_are_taken_once(s).await;
    expiry_drops_old_envelopes(s).await;
    key_packages_are_claimed_once(s).await;
    groups_take_the_first_commit_per_epoch(s).await;
    group_sends_check_members_and_devices(s).await;
    groups_are_capped_by_member_accounts(s).await;
    disappearing_messages_go_at_their_expiry(s).await;
    commits_naming_many_or_repeated_devices_are_refused(s).await;
    added_devices_take_the_lowest_free_leaf(s).await;
    removals_must_match_the_removed_leaves(s).await;
    key_packages_are_capped_and_spared(s).await;
    key_packages_are_kept_per_suite(s).await;
    racing_uploads_never_pass_the_key_package_cap(s).await;
    pin_attempts_are_counted_before_the_check(s).await;
    racing_pin_attempts_get_exactly_the_maximum(s).await;
    rate_limits_take_a_burst_then_refill(s).await;
    racing_takers_get_exactly_the_burst(s).await;
    code_attempts_are_counted_per_session(s).await;
    racing_code_attempts_get_exactly_the_maximum(s).await;
    mailbox_quota_refuses_before_writing(s).await;
    mailbox_usage_stays_exact(s).await;
    bodies_for_many_devices_are_stored_once(s).await;
    blocked_senders_reach_everyone_but_the_blocker(s).await;
    blocked_committers_cannot_add_the_blocker(s).await;
    reports_block_and_count_distinct_reporters(s).await;
    blobs_fill_in_order_and_wait_for_their_fetchers(s).await;
    racing_uploads_never_pass_the_media_quota(s).await;
    a_new_business_name_needs_verifying_again(s).await;
    key_directory_advances_once_per_epoch(s).await;
}

/// Runs `n` calls of `f` at once, each on its own clone of the store, and
/// returns their results.
async fn race<S, T, F, Fut>(s: &S, n: usize, f: F) -> Vec<T>
where
    S: Store + Clone,
    T: Send + 'static,
    F: Fn(S) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(f(s.clone()))).collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

/// The seqs waiting in `d`'s mailbox, oldest first: what a device acks
/// to empty it.
pub async fn waiting_seqs<S: Store>(s: &S, d: DeviceId) -> Vec<u64> {
    s.fetch_mailbox(d, 0, 100_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect()
}

fn from(device: &Device, id: u8, body: &[u8]) -> NewEnvelope {
    NewEnvelope {
        sender_phone: device.phone.clone(),
        sender_device: device.id,
        ..envelope(id, body)
    }
}

async fn key_packages_are_claimed_once<S: Store>(s: &S) {
    let reg = s
        .register_primary("+911000000010", &[10; 32], "p", 1)
        .await
        .unwrap();
    let d = reg.device.id;
    assert_eq!(
        s.key_stock(d, CLASSIC_SUITE).await.unwrap(),
        KeyStock::default()
    );
    // A device without a last-resort package cannot be added yet.
    assert!(
        s.claim_key_packages(reg.account_id, &[], true, &[CLASSIC_SUITE])
            .await
            .unwrap()
            .devices
            .is_empty()
    );
    let stock = s
        .put_key_packages(
            d,
            CLASSIC_SUITE,
            vec![b"kp1".to_vec(), b"kp2".to_vec()],
            Some(b"last".to_vec()),
            100,
        )
        .await
        .unwrap();
    assert_eq!(
        stock,
        KeyStock {
            one_time: 2,
            has_last_resort: true
        }
    );
    let mut got = Vec::new();
    for _ in 0..4 {
        let claimed = s
            .claim_key_packages(reg.account_id, &[], true, &[CLASSIC_SUITE])
            .await
            .unwrap()
            .devices;
        assert_eq!(claimed.len(), 1);
        got.push(claimed[0].key_package.clone().unwrap());
    }
    assert_eq!(
        got,
        vec![
            b"kp1".to_vec(),
            b"kp2".to_vec(),
            b"last".to_vec(),
            b"last".to_vec()
        ]
    );
    let known = s
        .claim_key_packages(reg.account_id, &[d], true, &[CLASSIC_SUITE])
        .await
        .unwrap()
        .devices;
    assert_eq!(known[0].key_package, None, "a known device gets no package");
    // A replaced last resort; a revoked device has none left.
    s.put_key_packages(d, CLASSIC_SUITE, vec![], Some(b"last2".to_vec()), 100)
        .await
        .unwrap();
    let claimed = s
        .claim_key_packages(reg.account_id, &[], true, &[CLASSIC_SUITE])
        .await
        .unwrap()
        .devices;
    assert_eq!(claimed[0].key_package.as_deref(), Some(&b"last2"[..]));
    s.revoke_device(d, RevokeReason::Removed).await.unwrap();
    assert_eq!(
        s.key_stock(d, CLASSIC_SUITE).await.unwrap(),
        KeyStock::default()
    );
}

async fn ready_device<S: Store>(s: &S, phone: &str, key: u8) -> Device {
    let reg = s.register_primary(phone, &[key; 32], "p", 1).await.unwrap();
    s.put_key_packages(reg.device.id, CLASSIC_SUITE, vec![], Some(vec![key]), 100)
        .await
        .unwrap();
    reg.device
}

fn commit(by: &Device, group: &[u8], epoch: u64, added: &[&Device]) -> GroupCommit {
    GroupCommit {
        group_id: group.to_vec(),
        epoch,
        added: added.iter().map(|d| d.id).collect(),
        removed: vec![],
        removed_leaves: vec![],
        added_phones: vec![],
        max_accounts: 1024,
        commit: from(by, 20 + epoch as u8, b"commit"),
        welcome: (!added.is_empty()).then(|| from(by, 40 + epoch as u8, b"welcome")),
    }
}

async fn groups_take_the_first_commit_per_epoch<S: Store>(s: &S) {
    let a = ready_device(s, "+911000000011", 11).await;
    let b = ready_device(s, "+911000000012", 12).await;
    let g = b"group-one";
    assert_eq!(s.group_epoch(g).await.unwrap(), None);
    assert_eq!(
        s.commit_group(commit(&a, g, 1, &[&b])).await.unwrap(),
        GroupOutcome::NoGroup
    );
    let created = s.commit_group(commit(&a, g, 0, &[&b])).await.unwrap();
    assert_eq!(
        created,
        GroupOutcome::Accepted {
            recipients: vec![b.clone()]
        }
    );
    assert_eq!(s.group_epoch(g).await.unwrap(), Some(1));
    // b holds the Welcome; a, the only member before, its own commit.
    let bodies = |d: DeviceId| async move {
        s.fetch_mailbox(d, 0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.body)
            .collect::<Vec<_>>()
    };
    assert_eq!(bodies(b.id).await, vec![b"welcome".to_vec()]);
    assert_eq!(bodies(a.id).await, vec![b"commit".to_vec()]);
    // Both commit at epoch 1: the first wins, the second is told the epoch.
    let first = s.commit_group(commit(&b, g, 1, &[])).await.unwrap();
    assert!(matches!(first, GroupOutcome::Accepted { .. }));
    let second = s.commit_group(commit(&a, g, 1, &[])).await.unwrap();
    assert_eq!(second, GroupOutcome::Stale { epoch: 2 });
    // Someone outside the group cannot commit; nor add a device without keys.
    let c = ready_device(s, "+911000000013", 13).await;
    assert_eq!(
        s.commit_group(commit(&c, g, 2, &[])).await.unwrap(),
        GroupOutcome::NotMember
    );
    let bare = s
        .register_primary("+911000000014", &[14; 32], "p", 1)
        .await
        .unwrap();
    let refused = s
        .commit_group(commit(&a, g, 2, &[&bare.device]))
        .await
        .unwrap();
    assert!(matches!(refused, GroupOutcome::BadChange(_)), "{refused:?}");
    assert_eq!(
        s.group_epoch(g).await.unwrap(),
        Some(2),
        "refusals change nothing"
    );
}

async fn group_sends_check_members_and_devices<S: Store>(s: &S) {
    let a = ready_device(s, "+911000000021", 21).await;
    let b = ready_device(s, "+911000000022", 22).await;
    let g = b"group-two";
    s.commit_group(commit(&a, g, 0, &[&b])).await.unwrap();
    let before = s.mailbox_len(b.id).await.unwrap();
    let sent = s
        .send_group(g, 1, from(&a, 1, b"hello"), MailboxQuota::UNLIMITED)
        .await
        .unwrap();
    assert_eq!(
        sent,
        GroupOutcome::Accepted {
            recipients: vec![b.clone()]
        }
    );
    assert_eq!(s.mailbox_len(b.id).await.unwrap(), before + 1);
    assert_eq!(s.mailbox_len(a.id).await.unwrap(), 1, "not to the sender");
    assert_eq!(
        s.send_group(g, 0, from(&a, 2, b"old"), MailboxQuota::UNLIMITED)
            .await
            .unwrap(),
        GroupOutcome::Stale { epoch: 1 }
    );
    assert_eq!(
        s.send_group(b"nope", 0, from(&a, 3, b"x"), MailboxQuota::UNLIMITED)
            .await
            .unwrap(),
        GroupOutcome::NoGroup
    );
    // b links a laptop with keys: sends are refused until it is added.
    let laptop = s
        .add_linked_device(b.account_id, &[23; 32], "laptop", 2, 4)
        .await
        .unwrap();
    assert!(
        matches!(
            s.send_group(g, 1, from(&a, 4, b"x"), MailboxQuota::UNLIMITED)
                .await
                .unwrap(),
            GroupOutcome::Accepted { .. }
        ),
        "a device without keys yet does not block the group"
    );
    s.put_key_packages(laptop.id, CLASSIC_SUITE, vec![], Some(vec![23]), 100)
        .await
        .unwrap();
    assert_eq!(
        s.send_group(g, 1, from(&a, 5, b"x"), MailboxQuota::UNLIMITED)
            .await
            .unwrap(),
        GroupOutcome::DevicesChanged
    );
    s.commit_group(commit(&a, g, 1, &[&laptop])).await.unwrap();
    let sent = s
        .send_group(g, 2, from(&a, 6, b"x"), MailboxQuota::UNLIMITED)
        .await
        .unwrap();
    let GroupOutcome::Accepted { recipients } = sent else {
        panic!("{sent:?}")
    };
    assert_eq!(
        recipients.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![b.id, laptop.id]
    );
    // The laptop is unlinked: refused until a commit removes it.
    s.revoke_device(laptop.id, RevokeReason::Removed)
        .await
        .unwrap();
    assert_eq!(
        s.send_group(g, 2, from(&a, 7, b"x"), MailboxQuota::UNLIMITED)
            .await
            .unwrap(),
        GroupOutcome::DevicesChanged
    );
    let mut removal = commit(&b, g, 2, &[]);
    removal.removed = vec![laptop.id];
    removal.removed_leaves = vec![2]; // a 0 and b 1 (creation), laptop 2
    assert!(matches!(
        s.commit_group(removal).await.unwrap(),
        GroupOutcome::Accepted { .. }
    ));
    assert!(matches!(
        s.send_group(g, 3, from(&a, 8, b"x"), MailboxQuota::UNLIMITED)
            .await
            .unwrap(),
        GroupOutcome::Accepted { .. }
    ));
}

/// The member ids a message at `epoch` from `by` reaches: the group's other
/// members, as the store has them.
async fn reached<S: Store>(s: &S, g: &[u8], epoch: u64, by: &Device, id: u8) -> Vec<DeviceId> {
    match s
        .send_group(g, epoch, from(by, id, b"probe"), MailboxQuota::UNLIMITED)
        .await
        .unwrap()
    {
        GroupOutcome::Accepted { recipients } => recipients.iter().map(|d| d.id).collect(),
        other => panic!("a send at epoch {epoch} was refused: {other:?}"),
    }
}

async fn groups_are_capped_by_member_accounts<S: Store>(s: &S) {
    let alice = ready_device(s, "+911000000031", 31).await;
    let bob = ready_device(s, "+911000000032", 32).await;
    let carol = ready_device(s, "+911000000033", 33).await;
    let laptop = s
        .add_linked_device(alice.account_id, &[34; 32], "laptop", 2, 4)
        .await
        .unwrap();
    s.put_key_packages(laptop.id, CLASSIC_SUITE, vec![], Some(vec![34]), 100)
        .await
        .unwrap();
    let g = b"group-capped";
    let capped = |mut c: GroupCommit, max: u32| {
        c.max_accounts = max;
        c
    };
    let accepted = |o: &GroupOutcome| matches!(o, GroupOutcome::Accepted { .. });
    // A new group over the limit is not created.
    let too_big = s
        .commit_group(capped(commit(&alice, g, 0, &[&bob, &carol]), 2))
        .await
        .unwrap();
    assert_eq!(
        too_big,
        GroupOutcome::GroupFull {
            max: 2,
            accounts: 3
        }
    );
    assert_eq!(s.group_epoch(g).await.unwrap(), None);
    // Exactly at the limit: alice creates the group with bob and her own
    // laptop, three devices of two accounts (hers counted once).
    let created = s
        .commit_group(capped(commit(&alice, g, 0, &[&bob, &laptop]), 2))
        .await
        .unwrap();
    assert!(accepted(&created), "{created:?}");
    // One account more is refused, and changes nothing: no epoch, no
    // members, no commit in a mailbox, no Welcome for carol.
    let everyone = [alice.id, bob.id, laptop.id, carol.id];
    let mut lens = Vec::new();
    for d in everyone {
        lens.push(s.mailbox_len(d).await.unwrap());
    }
    let full = s
        .commit_group(capped(commit(&alice, g, 1, &[&carol]), 2))
        .await
        .unwrap();
    assert_eq!(
        full,
        GroupOutcome::GroupFull {
            max: 2,
            accounts: 3
        }
    );
    assert_eq!(s.group_epoch(g).await.unwrap(), Some(1));
    for (d, len) in everyone.iter().zip(&lens) {
        assert_eq!(s.mailbox_len(*d).await.unwrap(), *len, "device {d}");
    }
    let mut members = reached(s, g, 1, &alice, 50).await;
    members.sort_unstable();
    assert_eq!(members, vec![bob.id, laptop.id]);
    // The limit is lowered to 1, so the group is over it. Commits that bring
    // in no new account still pass: a re-key, a removal, and adding a
    // member's device (sends would be refused until it is in).
    let rekey = s
        .commit_group(capped(commit(&bob, g, 1, &[]), 1))
        .await
        .unwrap();
    assert!(accepted(&rekey), "{rekey:?}");
    let mut removal = capped(commit(&bob, g, 2, &[]), 1);
    removal.removed = vec![laptop.id];
    removal.removed_leaves = vec![2]; // alice 0, bob 1, laptop 2
    let removal = s.commit_group(removal).await.unwrap();
    assert!(accepted(&removal), "{removal:?}");
    let back = s
        .commit_group(capped(commit(&bob, g, 3, &[&laptop]), 1))
        .await
        .unwrap();
    assert!(accepted(&back), "{back:?}");
    // A new account is refused while the result is over the limit, even in
    // exchange for one that leaves; at exactly the limit the swap passes.
    let swap = |max| {
        let mut c = capped(commit(&alice, g, 4, &[&carol]), max);
        c.removed = vec![bob.id];
        c.removed_leaves = vec![1]; // the laptop came back to leaf 2
        c
    };
    assert_eq!(
        s.commit_group(swap(1)).await.unwrap(),
        GroupOutcome::GroupFull {
            max: 1,
            accounts: 2
        }
    );
    assert_eq!(s.group_epoch(g).await.unwrap(), Some(4));
    let swapped = s.commit_group(swap(2)).await.unwrap();
    assert!(accepted(&swapped), "{swapped:?}");
    let mut members = reached(s, g, 5, &alice, 51).await;
    members.sort_unstable();
    let mut want = vec![laptop.id, carol.id];
    want.sort_unstable();
    assert_eq!(members, want);
}

async fn disappearing_messages_go_at_their_expiry<S: Store>(s: &S) {
    const RETENTION: i64 = 30 * 24 * 3_600_000;
    // Far after every other case's envelopes, which the first pass clears,
    // so that the counts below are this case's alone.
    const NOW: i64 = 2_000_000_000_000;
    let alice = ready_device(s, "+911000000041", 41).await;
    let bob = ready_device(s, "+911000000042", 42).await;
    let g = b"group-disappearing";
    s.commit_group(commit(&alice, g, 0, &[&bob])).await.unwrap();
    s.expire(NOW, RETENTION).await.unwrap();
    let sent = |id: u8, body: &[u8], at: i64, expires: i64| NewEnvelope {
        server_time_ms: at,
        expires_ms: expires,
        ..from(&alice, id, body)
    };
    for e in [
        // A disappearing message, to go five seconds after it was sent.
        sent(1, b"disappearing", NOW, NOW + 5_000),
        // A message without expiry: kept for the retention period.
        sent(2, b"kept", NOW, NOW + RETENTION),
        // An old message that has waited out the retention period.
        sent(3, b"waited", NOW + 5_000 - RETENTION, NOW + 5_000),
    ] {
        let out = s
            .send_group(g, 1, e, MailboxQuota::UNLIMITED)
            .await
            .unwrap();
        assert!(matches!(out, GroupOutcome::Accepted { .. }), "{out:?}");
    }
    let bodies = |d: DeviceId| async move {
        s.fetch_mailbox(d, 0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.body)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        s.expire(NOW + 4_999, RETENTION).await.unwrap(),
        Expired::default()
    );
    assert_eq!(
        bodies(bob.id).await,
        vec![
            b"disappearing".to_vec(),
            b"kept".to_vec(),
            b"waited".to_vec()
        ]
    );
    assert_eq!(
        s.expire(NOW + 5_000, RETENTION).await.unwrap(),
        Expired {
            envelopes: 2,
            disappearing: 1
        }
    );
    assert_eq!(bodies(bob.id).await, vec![b"kept".to_vec()]);
}

async fn registration_replaces_old_devices<S: Store>(s: &S) {
    let first = s
        .register_primary("+911000000001", &[1; 32], "old", 1)
        .await
        .unwrap();
    assert!(first.revoked.is_empty());
    s.enqueue(envelope(1, b"x"), &[first.device.id])
        .await
        .unwrap();
    let second = s
        .register_primary("+911000000001", &[2; 32], "new", 2)
        .await
        .unwrap();
    assert_eq!(second.account_id, first.account_id);
    assert_eq!(second.revoked, vec![first.device.id]);
    let old = s.device(first.device.id).await.unwrap().unwrap();
    assert_eq!(old.revoked, Some(RevokeReason::NumberMoved));
    assert!(s.device_by_key(&[1; 32]).await.unwrap().is_none());
    assert_eq!(
        s.device_by_key(&[2; 32]).await.unwrap().unwrap().id,
        second.device.id
    );
    assert_eq!(s.mailbox_len(first.device.id).await.unwrap(), 0);
    let devices = s.devices_of(second.account_id).await.unwrap();
    assert_eq!(devices.len(), 1);
    assert!(devices[0].primary);
    assert_eq!(devices[0].identity_key, vec![2; 32]);
}

async fn linked_devices_are_capped<S: Store>(s: &S) {
    let reg = s
        .register_primary("+911000000002", &[3; 32], "p", 1)
        .await
        .unwrap();
    let a = s
        .add_linked_device(reg.account_id, &[4; 32], "a", 2, 2)
        .await
        .unwrap();
    assert!(!a.primary);
    s.add_linked_device(reg.account_id, &[5; 32], "b", 2, 2)
        .await
        .unwrap();
    let err = s
        .add_linked_device(reg.account_id, &[6; 32], "c", 2, 2)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TooManyDevices { max: 2 }));
    s.revoke_device(a.id, RevokeReason::Removed).await.unwrap();
    assert_eq!(
        s.device(a.id).await.unwrap().unwrap().revoked,
        Some(RevokeReason::Removed)
    );
    s.add_linked_device(reg.account_id, &[6; 32], "c", 3, 2)
        .await
        .unwrap();
    assert_eq!(s.devices_of(reg.account_id).await.unwrap().len(), 3);
}

async fn mailbox_is_ordered_and_private<S: Store>(s: &S) {
    let bob = s
        .register_primary("+911000000003", &[7; 32], "b", 1)
        .await
        .unwrap();
    let bob2 = s
        .add_linked_device(bob.account_id, &[8; 32], "b2", 1, 4)
        .await
        .unwrap();
    let (d1, d2) = (bob.device.id, bob2.id);
    for i in 0..5u8 {
        s.enqueue(envelope(i, &[i; 3]), &[d1, d2]).await.unwrap();
    }
    let got = s.fetch_mailbox(d1, 0, 100).await.unwrap();
    assert_eq!(
        got.iter().map(|e| e.message_id[0]).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert_eq!(got[2].body, vec![2; 3]);
    let page = s.fetch_mailbox(d1, got[1].seq, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.message_id[0]).collect::<Vec<_>>(),
        vec![2, 3]
    );
    // An ack only ever touches the acking device's own mailbox (seq numbers
    // may be per device, so d2's ack of the same numbers is about its own).
    let d1_seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
    let d2_seqs = waiting_seqs(s, d2).await;
    s.ack(d2, &d1_seqs).await.unwrap();
    assert_eq!(s.mailbox_len(d1).await.unwrap(), 5);
    let d2_left = s.mailbox_len(d2).await.unwrap();
    assert_eq!(s.ack(d1, &d1_seqs[..3]).await.unwrap(), 3);
    assert_eq!(
        s.ack(d1, &d1_seqs[..3]).await.unwrap(),
        0,
        "acks are idempotent"
    );
    assert_eq!(s.mailbox_len(d1).await.unwrap(), 2);
    assert_eq!(
        s.mailbox_len(d2).await.unwrap(),
        d2_left,
        "d1's acks leave d2 alone"
    );
    s.ack(d2, &d2_seqs).await.unwrap();
    assert_eq!(s.mailbox_len(d2).await.unwrap(), 0);
}

async fn link_requests_are_taken_once<S: Store>(s: &S) {
    let req = LinkRequest {
        code: "CODE1".into(),
        identity_key: vec![9; 32],
        device_name: "laptop".into(),
        expires_ms: 50,
    };
    s.put_link_request(req.clone()).await.unwrap();
    assert!(
        s.take_link_request("CODE1", 60).await.unwrap().is_none(),
        "expired"
    );
    s.put_link_request(LinkRequest {
        code: "CODE2".into(),
        ..req.clone()
    })
    .await
    .unwrap();
    assert_eq!(
        s.take_link_request("CODE2", 10)
            .await
            .unwrap()
            .unwrap()
            .device_name,
        "laptop"
    );
    assert!(
        s.take_link_request("CODE2", 10).await.unwrap().is_none(),
        "taken once"
    );
}

async fn expiry_drops_old_envelopes<S: Store>(s: &S) {
    let reg = s
        .register_primary("+911000000005", &[10; 32], "p", 1)
        .await
        .unwrap();
    let d = reg.device.id;
    s.enqueue(
        NewEnvelope {
            expires_ms: 500,
            ..envelope(1, b"old")
        },
        &[d],
    )
    .await
    .unwrap();
    s.enqueue(
        NewEnvelope {
            expires_ms: 5_000,
            ..envelope(2, b"new")
        },
        &[d],
    )
    .await
    .unwrap();
    assert!(s.expire(1_000, 10_000).await.unwrap().envelopes >= 1);
    let left = s.fetch_mailbox(d, 0, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].body, b"new");
}

/// Later than anything the earlier cases wrote, so that their `expire`
/// passes cannot reach what these cases write, and these cases' passes
/// only drop what earlier cases are done with.
const LATE: i64 = 3_000_000_000_000;

fn removing(mut c: GroupCommit, devices: &[&Device], leaves: &[u32]) -> GroupCommit {
    c.removed = devices.iter().map(|d| d.id).collect();
    c.removed_leaves = leaves.to_vec();
    c
}

fn is_accepted(o: &GroupOutcome) -> bool {
    matches!(o, GroupOutcome::Accepted { .. })
}

/// Leaves are placed as the members' MLS groups place them (RFC 9420
/// §12.3): the creator at 0, then removals blank their leaves and each
/// added device, in commit order, takes the lowest free one. A removal is
/// accepted only when it names the leaf its device is at, so each
/// accepted removal below shows where the store put the device.
async fn added_devices_take_the_lowest_free_leaf<S: Store>(s: &S) {
    let alice = ready_device(s, "+911000000121", 121).await;
    let bob = ready_device(s, "+911000000122", 122).await;
    let carol = ready_device(s, "+911000000123", 123).await;
    let dave = ready_device(s, "+911000000124", 124).await;
    let erin = ready_device(s, "+911000000125", 125).await;
    let g = b"group-leaves";
    // alice 0 (the creator), bob 1, carol 2.
    let o = s
        .commit_group(commit(&alice, g, 0, &[&bob, &carol]))
        .await
        .unwrap();
    assert!(is_accepted(&o), "{o:?}");
    // bob leaves leaf 1 free.
    let o = s
        .commit_group(removing(commit(&alice, g, 1, &[]), &[&bob], &[1]))
        .await
        .unwrap();
    assert!(is_accepted(&o), "{o:?}");
    // dave takes the free leaf 1, bob (back) a new one, 3.
    let o = s
        .commit_group(commit(&alice, g, 2, &[&dave, &bob]))
        .await
        .unwrap();
    assert!(is_accepted(&o), "{o:?}");
    // In one commit, removing carol (2) frees her leaf for erin.
    let o = s
        .commit_group(removing(commit(&bob, g, 3, &[&erin]), &[&carol], &[2]))
        .await
        .unwrap();
    assert!(is_accepted(&o), "{o:?}");
    // Where each one is: erin 2, then dave 1 and bob 3 together.
    let o = s
        .commit_group(removing(commit(&alice, g, 4, &[]), &[&erin], &[2]))
        .await
        .unwrap();
    assert!(is_accepted(&o), "{o:?}");
    let o = s
        .commit_group(removing(commit(&alice, g, 5, &[]), &[&dave], &[1]))
        .await
        .unwrap();
    assert!(is_accepted(&o), "{o:?}");
    let o = s
        .commit_group(removing(commit(&alice, g, 6, &[]), &[&bob], &[3]))
        .await
        .unwrap();
    assert!(is_accepted(&o), "{o:?}");
    assert_eq!(reached(s, g, 7, &alice, 120).await, Vec::<DeviceId>::new());
    // The tree shrank back to alice alone: the next two take 1 and 2.
    let o = s
        .commit_group(commit(&alice, g, 7, &[&carol, &dave]))
        .await
        .unwrap();
    assert!(is_accepted(&o), "{o:?}");
    let o = s
        .commit_group(removing(commit(&alice, g, 8, &[]), &[&dave], &[2]))
        .await
        .unwrap();
    assert!(is_accepted(&o), "{o:?}");
    assert_eq!(reached(s, g, 9, &alice, 121).await, vec![carol.id]);
}

/// A commit whose Remove proposals do not blank the leaves of exactly the
/// devices it names is refused, and changes nothing: a member cannot cut a
/// device out of the fan-out without removing it from the MLS group, nor
/// remove one from the group while the server keeps delivering to it.
async fn removals_must_match_the_removed_leaves<S: Store>(s: &S) {
    let alice = ready_device(s, "+911000000131", 131).await;
    let bob = ready_device(s, "+911000000132", 132).await;
    let carol = ready_device(s, "+911000000133", 133).await;
    let dave = ready_device(s, "+911000000134", 134).await;
    let g = b"group-removals";
    // alice 0, bob 1, carol 2.
    let o = s
        .commit_group(commit(&alice, g, 0, &[&bob, &carol]))
        .await
        .unwrap();
    assert!(is_accepted(&o), "{o:?}");
    let devices = [alice.id, bob.id, carol.id, dave.id];
    let mut lens = Vec::new();
    for d in devices {
        lens.push(s.mailbox_len(d).await.unwrap());
    }
    let mismatch =
        GroupOutcome::BadChange("the commit's removals do not match the devices named".into());
    let cases: [(&[&Device], &[u32], &[&Device]); 9] = [
        // Named, but the commit removes nothing (or someone else).
        (&[&bob], &[], &[]),
        (&[&bob], &[2], &[]),
        // Removed by the commit, but not named.
        (&[], &[1], &[]),
        (&[&bob], &[1, 2], &[]),
        (&[&bob], &[1, 2], &[&dave]),
        // A leaf nobody is at, or the committer's own.
        (&[&bob], &[1, 3], &[]),
        (&[&bob], &[7], &[]),
        (&[&bob], &[u32::MAX], &[]),
        (&[&bob], &[0, 1], &[]),
    ];
    for (named, leaves, added) in cases {
        let c = removing(commit(&alice, g, 1, added), named, leaves);
        assert_eq!(s.commit_group(c).await.unwrap(), mismatch, "{leaves:?}");
    }
    assert_eq!(s.group_epoch(g).await.unwrap(), Some(1), "nothing changed");
    for (d, len) in devices.iter().zip(&lens) {
        assert_eq!(s.mailbox_len(*d).await.unwrap(), *len, "device {d}");
    }
    let mut members = reached(s, g, 1, &alice, 130).await;
    members.sort_unstable();
    assert_eq!(members, vec![bob.id, carol.id]);
    // Named and removed alike: accepted.
    let o = s
        .commit_group(removing(
            commit(&alice, g, 1, &[]),
            &[&carol, &bob],
            &[1, 2],
        ))
        .await
        .unwrap();
    assert!(is_accepted(&o), "{o:?}");
    assert_eq!(reached(s, g, 2, &alice, 131).await, Vec::<DeviceId>::new());
}

/// The devices of `legacy_group_setup`'s group.
pub struct LegacyGroup {
    pub group_id: Vec<u8>,
    pub alice: Device,
    pub bob: Device,
    pub carol: Device,
    pub dave: Device,
}

/// A group for a backend's migration test: alice made it with bob and
/// carol, and it is at epoch 1. The backend then forgets every member's
/// leaf index (as a store from before leaf indices has none) and calls
/// `legacy_group_check`.
pub async fn legacy_group_setup<S: Store>(s: &S) -> LegacyGroup {
    let alice = ready_device(s, "+911000000141", 141).await;
    let bob = ready_device(s, "+911000000142", 142).await;
    let carol = ready_device(s, "+911000000143", 143).await;
    let dave = ready_device(s, "+911000000144", 144).await;
    let group_id = b"group-legacy".to_vec();
    let o = s
        .commit_group(commit(&alice, &group_id, 0, &[&bob, &carol]))
        .await
        .unwrap();
    assert!(is_accepted(&o), "{o:?}");
    LegacyGroup {
        group_id,
        alice,
        bob,
        carol,
        dave,
    }
}

/// A group whose leaves the store does not know still takes the declared
/// removals, whatever leaves the commit names, and goes on adding.
pub async fn legacy_group_check<S: Store>(s: &S, l: &LegacyGroup) {
    let g = &l.group_id[..];
    // The leaves named do not matter: there is nothing to check them against.
    let o = s
        .commit_group(removing(commit(&l.alice, g, 1, &[]), &[&l.bob], &[2]))
        .await
        .unwrap();
    assert!(is_accepted(&o), "{o:?}");
    assert_eq!(reached(s, g, 2, &l.alice, 140).await, vec![l.carol.id]);
    let o = s
        .commit_group(commit(&l.alice, g, 2, &[&l.dave]))
        .await
        .unwrap();
    assert!(is_accepted(&o), "{o:?}");
    let o = s
        .commit_group(removing(commit(&l.alice, g, 3, &[]), &[&l.carol], &[]))
        .await
        .unwrap();
    assert!(is_accepted(&o), "{o:?}");
    assert_eq!(reached(s, g, 4, &l.alice, 141).await, vec![l.dave.id]);
    // The declared list is still checked against the members.
    let o = s
        .commit_group(removing(commit(&l.alice, g, 4, &[]), &[&l.bob], &[1]))
        .await
        .unwrap();
    assert_eq!(
        o,
        GroupOutcome::BadChange(format!("device {} is not a member", l.bob.id))
    );
}

/// A commit naming a long made-up list of devices is refused without
/// anything changing; so is one naming a device twice.
async fn commits_naming_many_or_repeated_devices_are_refused<S: Store>(s: &S) {
    let alice = ready_device(s, "+911000000051", 51).await;
    let bob = ready_device(s, "+911000000052", 52).await;
    let g = b"group-long-lists";
    s.commit_group(commit(&alice, g, 0, &[&bob])).await.unwrap();
    let lens = (
        s.mailbox_len(alice.id).await.unwrap(),
        s.mailbox_len(bob.id).await.unwrap(),
    );
    let mut many = commit(&alice, g, 1, &[]);
    many.added = (0..100_000u64).map(|i| 1_000_000_000 + i).collect();
    many.welcome = Some(from(&alice, 60, b"welcome"));
    let refused = s.commit_group(many).await.unwrap();
    assert!(matches!(refused, GroupOutcome::BadChange(_)), "{refused:?}");
    let carol = ready_device(s, "+911000000053", 53).await;
    let twice_added = commit(&alice, g, 1, &[&carol, &carol]);
    let refused = s.commit_group(twice_added).await.unwrap();
    assert!(matches!(refused, GroupOutcome::BadChange(_)), "{refused:?}");
    let mut twice_removed = commit(&alice, g, 1, &[]);
    twice_removed.removed = vec![bob.id, bob.id];
    let refused = s.commit_group(twice_removed).await.unwrap();
    assert!(matches!(refused, GroupOutcome::BadChange(_)), "{refused:?}");
    let mut leaf_twice = commit(&alice, g, 1, &[]);
    leaf_twice.removed = vec![bob.id];
    leaf_twice.removed_leaves = vec![1, 1];
    let refused = s.commit_group(leaf_twice).await.unwrap();
    assert!(matches!(refused, GroupOutcome::BadChange(_)), "{refused:?}");
    assert_eq!(s.group_epoch(g).await.unwrap(), Some(1), "nothing changed");
    assert_eq!(
        (
            s.mailbox_len(alice.id).await.unwrap(),
            s.mailbox_len(bob.id).await.unwrap(),
        ),
        lens
    );
    assert_eq!(s.mailbox_len(carol.id).await.unwrap(), 0);
    assert_eq!(reached(s, g, 1, &alice, 61).await, vec![bob.id]);
}

async fn key_packages_are_capped_and_spared<S: Store>(s: &S) {
    let reg = s
        .register_primary("+911000000054", &[54; 32], "p", 1)
        .await
        .unwrap();
    let d = reg.device.id;
    let kps = |names: &[&str]| names.iter().map(|n| n.as_bytes().to_vec()).collect();
    // Only up to the cap is kept, first uploaded first.
    let stock = s
        .put_key_packages(
            d,
            CLASSIC_SUITE,
            kps(&["a", "b", "c", "d", "e"]),
            Some(b"last".to_vec()),
            3,
        )
        .await
        .unwrap();
    assert_eq!(
        stock,
        KeyStock {
            one_time: 3,
            has_last_resort: true
        }
    );
    let stock = s
        .put_key_packages(d, CLASSIC_SUITE, kps(&["x"]), None, 3)
        .await
        .unwrap();
    assert_eq!(stock.one_time, 3, "a full stock takes no more");
    // A claim that may not consume gets the last-resort package and leaves
    // the stock alone.
    for _ in 0..3 {
        let spared = s
            .claim_key_packages(reg.account_id, &[], false, &[CLASSIC_SUITE])
            .await
            .unwrap()
            .devices;
        assert_eq!(spared.len(), 1);
        assert_eq!(spared[0].key_package.as_deref(), Some(&b"last"[..]));
    }
    let known = s
        .claim_key_packages(reg.account_id, &[d], false, &[CLASSIC_SUITE])
        .await
        .unwrap()
        .devices;
    assert_eq!(known[0].key_package, None, "a known device gets no package");
    assert_eq!(s.key_stock(d, CLASSIC_SUITE).await.unwrap().one_time, 3);
    // Claiming makes room again.
    let claimed = s
        .claim_key_packages(reg.account_id, &[], true, &[CLASSIC_SUITE])
        .await
        .unwrap()
        .devices;
    assert_eq!(claimed[0].key_package.as_deref(), Some(&b"a"[..]));
    let stock = s
        .put_key_packages(d, CLASSIC_SUITE, kps(&["f", "g"]), None, 3)
        .await
        .unwrap();
    assert_eq!(stock.one_time, 3);
    let mut got = Vec::new();
    for _ in 0..4 {
        let claimed = s
            .claim_key_packages(reg.account_id, &[], true, &[CLASSIC_SUITE])
            .await
            .unwrap()
            .devices;
        got.push(claimed[0].key_package.clone().unwrap());
    }
    assert_eq!(got, kps(&["b", "c", "f", "last"]));
}

/// Two devices of one account: the phone offers both suites, the laptop
/// (a device from before post-quantum suites) only the classic one.
async fn key_packages_are_kept_per_suite<S: Store>(s: &S) {
    const PQ: Suite = 0x004F;
    let reg = s
        .register_primary("+911000000056", &[56; 32], "p", 1)
        .await
        .unwrap();
    let phone = reg.device.id;
    let kps = |names: &[&str]| names.iter().map(|n| n.as_bytes().to_vec()).collect();
    s.put_key_packages(
        phone,
        CLASSIC_SUITE,
        kps(&["c1"]),
        Some(b"c-last".to_vec()),
        2,
    )
    .await
    .unwrap();
    let stock = s
        .put_key_packages(
            phone,
            PQ,
            kps(&["q1", "q2", "q3"]),
            Some(b"q-last".to_vec()),
            2,
        )
        .await
        .unwrap();
    assert_eq!(
        stock,
        KeyStock {
            one_time: 2,
            has_last_resort: true
        },
        "the cap is per suite"
    );
    assert_eq!(s.key_stock(phone, CLASSIC_SUITE).await.unwrap().one_time, 1);
    // Both suites wanted, the phone alone: the first wanted.
    let claimed = s
        .claim_key_packages(reg.account_id, &[], true, &[PQ, CLASSIC_SUITE])
        .await
        .unwrap();
    assert_eq!(claimed.suite, PQ);
    assert_eq!(claimed.devices[0].key_package.as_deref(), Some(&b"q1"[..]));
    assert_eq!(s.key_stock(phone, CLASSIC_SUITE).await.unwrap().one_time, 1);
    // A replaced last resort replaces only its suite's.
    s.put_key_packages(phone, PQ, vec![], Some(b"q-last2".to_vec()), 2)
        .await
        .unwrap();
    for (suite, last) in [(PQ, &b"q-last2"[..]), (CLASSIC_SUITE, &b"c-last"[..])] {
        let spared = s
            .claim_key_packages(reg.account_id, &[], false, &[suite])
            .await
            .unwrap();
        assert_eq!(spared.devices[0].key_package.as_deref(), Some(last));
    }

    let laptop = s
        .add_linked_device(reg.account_id, &[57; 32], "laptop", 10, 4)
        .await
        .unwrap();
    s.put_key_packages(
        laptop.id,
        CLASSIC_SUITE,
        vec![],
        Some(b"l-last".to_vec()),
        2,
    )
    .await
    .unwrap();
    // One device cannot take the first wanted: the claim falls back to the
    // last wanted, for every device, and takes nothing in the other.
    let claimed = s
        .claim_key_packages(reg.account_id, &[], true, &[PQ, CLASSIC_SUITE])
        .await
        .unwrap();
    assert_eq!(claimed.suite, CLASSIC_SUITE);
    let got: Vec<_> = claimed
        .devices
        .iter()
        .map(|c| (c.device.id, c.key_package.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (phone, Some(b"c1".to_vec())),
            (laptop.id, Some(b"l-last".to_vec()))
        ]
    );
    assert_eq!(s.key_stock(phone, PQ).await.unwrap().one_time, 1);
    // Knowing the laptop, the phone alone decides.
    let claimed = s
        .claim_key_packages(reg.account_id, &[laptop.id], true, &[PQ, CLASSIC_SUITE])
        .await
        .unwrap();
    assert_eq!(claimed.suite, PQ);
    assert_eq!(claimed.devices[1].key_package, None);
    // A device with post-quantum packages only (its classic upload has not
    // come yet) is not ready: it is neither handed out nor counted.
    let tablet = s
        .add_linked_device(reg.account_id, &[58; 32], "tablet", 11, 4)
        .await
        .unwrap();
    s.put_key_packages(tablet.id, PQ, vec![], Some(b"t-last".to_vec()), 2)
        .await
        .unwrap();
    let claimed = s
        .claim_key_packages(reg.account_id, &[], false, &[PQ, CLASSIC_SUITE])
        .await
        .unwrap();
    assert!(claimed.devices.iter().all(|c| c.device.id != tablet.id));
    // Asked for the post-quantum suite only, the laptop comes without one.
    let claimed = s
        .claim_key_packages(reg.account_id, &[phone], false, &[PQ])
        .await
        .unwrap();
    assert_eq!(claimed.suite, PQ);
    assert_eq!(claimed.devices.len(), 2);
    assert!(claimed.devices.iter().all(|c| c.key_package.is_none()));
}

async fn racing_uploads_never_pass_the_key_package_cap<S: Store + Clone>(s: &S) {
    let reg = s
        .register_primary("+911000000055", &[55; 32], "p", 1)
        .await
        .unwrap();
    let d = reg.device.id;
    let uploads = race(s, 20, move |s| async move {
        s.put_key_packages(d, CLASSIC_SUITE, vec![vec![1], vec![2]], None, 5)
            .await
    })
    .await;
    for u in uploads {
        assert!(u.unwrap().one_time <= 5);
    }
    assert_eq!(s.key_stock(d, CLASSIC_SUITE).await.unwrap().one_time, 5);
}

async fn pin_attempts_are_counted_before_the_check<S: Store>(s: &S) {
    const LOCKOUT: i64 = 60_000;
    let reg = s
        .register_primary("+911000000056", &[56; 32], "p", 1)
        .await
        .unwrap();
    let a = reg.account_id;
    let pin = |now| s.take_pin_attempt(a, now, 3, LOCKOUT);
    assert_eq!(
        pin(1_000).await.unwrap(),
        PinAttempt::Counted { attempt: 1 }
    );
    assert_eq!(
        pin(1_000).await.unwrap(),
        PinAttempt::Counted { attempt: 2 }
    );
    // The third attempt is still checked, and locks the account.
    assert_eq!(
        pin(2_000).await.unwrap(),
        PinAttempt::Counted { attempt: 3 }
    );
    let locked = PinAttempt::Locked {
        until_ms: 2_000 + LOCKOUT,
    };
    assert_eq!(pin(2_001).await.unwrap(), locked);
    assert_eq!(pin(2_000 + LOCKOUT - 1).await.unwrap(), locked);
    let account = s.account_by_phone("+911000000056").await.unwrap().unwrap();
    assert_eq!(
        (account.pin_failures, account.pin_locked_until_ms),
        (3, 2_000 + LOCKOUT),
        "a refused attempt writes nothing"
    );
    // Once the lock has run out the count starts again.
    let later = 2_000 + LOCKOUT;
    assert_eq!(
        pin(later).await.unwrap(),
        PinAttempt::Counted { attempt: 1 }
    );
    assert_eq!(
        pin(later).await.unwrap(),
        PinAttempt::Counted { attempt: 2 }
    );
    assert_eq!(
        pin(later).await.unwrap(),
        PinAttempt::Counted { attempt: 3 }
    );
    assert_eq!(
        pin(later).await.unwrap(),
        PinAttempt::Locked {
            until_ms: later + LOCKOUT
        }
    );
    // Registering (the right PIN) clears the count and the lock; so does
    // setting a PIN.
    s.register_primary("+911000000056", &[57; 32], "p", later)
        .await
        .unwrap();
    let account = s.account_by_phone("+911000000056").await.unwrap().unwrap();
    assert_eq!((account.pin_failures, account.pin_locked_until_ms), (0, 0));
    assert_eq!(
        pin(later).await.unwrap(),
        PinAttempt::Counted { attempt: 1 }
    );
    assert_eq!(
        pin(later).await.unwrap(),
        PinAttempt::Counted { attempt: 2 }
    );
    assert_eq!(
        pin(later).await.unwrap(),
        PinAttempt::Counted { attempt: 3 }
    );
    s.set_pin(a, Some("phc".into())).await.unwrap();
    assert_eq!(
        pin(later).await.unwrap(),
        PinAttempt::Counted { attempt: 1 }
    );
    assert!(matches!(
        s.take_pin_attempt(u64::MAX >> 2, 1, 3, LOCKOUT).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn racing_pin_attempts_get_exactly_the_maximum<S: Store + Clone>(s: &S) {
    let reg = s
        .register_primary("+911000000058", &[58; 32], "p", 1)
        .await
        .unwrap();
    let a = reg.account_id;
    let results = race(s, 40, move |s| async move {
        s.take_pin_attempt(a, 1_000, 5, 60_000).await.unwrap()
    })
    .await;
    let mut counted: Vec<u32> = results
        .iter()
        .filter_map(|r| match r {
            PinAttempt::Counted { attempt } => Some(*attempt),
            PinAttempt::Locked { .. } => None,
        })
        .collect();
    counted.sort_unstable();
    assert_eq!(counted, vec![1, 2, 3, 4, 5]);
    let locked = PinAttempt::Locked { until_ms: 61_000 };
    assert_eq!(results.iter().filter(|r| **r == locked).count(), 35);
}

async fn rate_limits_take_a_burst_then_refill<S: Store>(s: &S) {
    const INTERVAL: i64 = 1_000;
    let take = |key: &'static str, now| s.take_token(key, now, INTERVAL, 3);
    // A burst of three at once, then one a second.
    for _ in 0..3 {
        assert_eq!(take("ip:a", 10_000).await.unwrap(), None);
    }
    assert_eq!(take("ip:a", 10_000).await.unwrap(), Some(1_000));
    assert_eq!(
        take("ip:a", 10_000).await.unwrap(),
        Some(1_000),
        "a refusal takes nothing"
    );
    assert_eq!(take("ip:a", 10_999).await.unwrap(), Some(1));
    assert_eq!(take("ip:a", 11_000).await.unwrap(), None);
    assert_eq!(take("ip:a", 11_000).await.unwrap(), Some(1_000));
    // Keys are independent.
    assert_eq!(take("ip:b", 11_000).await.unwrap(), None);
    // A bucket still refilling outlives an expiry pass; a full one may go.
    s.expire(12_000, 1).await.unwrap();
    assert_eq!(take("ip:a", 12_000).await.unwrap(), None);
    assert_eq!(take("ip:a", 12_000).await.unwrap(), Some(1_000));
    // Long after, the whole burst is back, and no more.
    for _ in 0..3 {
        assert_eq!(take("ip:a", 100_000).await.unwrap(), None);
    }
    assert!(take("ip:a", 100_000).await.unwrap().is_some());
    // A burst of 0 allows nothing.
    let none = s.take_token("ip:c", 100_000, INTERVAL, 0).await.unwrap();
    assert!(none.is_some_and(|wait| wait >= 1), "{none:?}");
}

async fn racing_takers_get_exactly_the_burst<S: Store + Clone>(s: &S) {
    let results = race(s, 40, |s| async move {
        s.take_token("race", 10_000, 60_000, 5).await.unwrap()
    })
    .await;
    assert_eq!(results.iter().filter(|r| r.is_none()).count(), 5);
    for r in results.iter().flatten() {
        assert!((1..=60_000).contains(r), "retry after {r}");
    }
}

fn code(phone: &str, session: u8, code_hash: &str, expires_ms: i64) -> Verification {
    Verification {
        phone: phone.into(),
        session: vec![session; 32],
        code_hash: code_hash.into(),
        expires_ms,
        attempts: 0,
    }
}

async fn code_attempts_are_counted_per_session<S: Store>(s: &S) {
    const P: &str = "+911000000059";
    let counted = |h: &str, attempts| CodeAttempt::Counted {
        code_hash: h.into(),
        attempts,
    };
    s.put_verification(code(P, 1, "mine", LATE + 5_000))
        .await
        .unwrap();
    s.put_verification(code(P, 2, "theirs", LATE + 5_000))
        .await
        .unwrap();
    let attempt =
        |session: u8, now| async move { s.take_code_attempt(P, &[session; 32], now, 3).await };
    // The attacker's session uses up its own attempts only.
    for n in 1..=3 {
        assert_eq!(attempt(2, LATE).await.unwrap(), counted("theirs", n));
    }
    assert_eq!(attempt(2, LATE).await.unwrap(), CodeAttempt::Exhausted);
    assert_eq!(attempt(1, LATE).await.unwrap(), counted("mine", 1));
    // A new code for a session starts its count again.
    s.put_verification(code(P, 2, "again", LATE + 5_000))
        .await
        .unwrap();
    assert_eq!(attempt(2, LATE).await.unwrap(), counted("again", 1));
    assert_eq!(attempt(1, LATE).await.unwrap(), counted("mine", 2));
    assert_eq!(
        attempt(1, LATE + 5_000).await.unwrap(),
        CodeAttempt::Expired
    );
    assert_eq!(attempt(3, LATE).await.unwrap(), CodeAttempt::Missing);
    assert_eq!(
        s.take_code_attempt("+911000000060", &[1; 32], LATE, 3)
            .await
            .unwrap(),
        CodeAttempt::Missing
    );
    // Expiry drops expired codes only.
    s.put_verification(code(P, 4, "short", LATE + 1_000))
        .await
        .unwrap();
    s.expire(LATE + 1_000, 1).await.unwrap();
    assert_eq!(attempt(4, LATE).await.unwrap(), CodeAttempt::Missing);
    assert_eq!(attempt(1, LATE).await.unwrap(), counted("mine", 3));
    // Registering deletes every session's code.
    s.delete_verifications(P).await.unwrap();
    assert_eq!(attempt(1, LATE).await.unwrap(), CodeAttempt::Missing);
    assert_eq!(attempt(2, LATE).await.unwrap(), CodeAttempt::Missing);
}

async fn racing_code_attempts_get_exactly_the_maximum<S: Store + Clone>(s: &S) {
    const P: &str = "+911000000061";
    s.put_verification(code(P, 1, "h", LATE + 5_000))
        .await
        .unwrap();
    let results = race(s, 40, |s| async move {
        s.take_code_attempt(P, &[1; 32], LATE, 5).await.unwrap()
    })
    .await;
    let mut counted: Vec<u32> = results
        .iter()
        .filter_map(|r| match r {
            CodeAttempt::Counted { attempts, .. } => Some(*attempts),
            _ => None,
        })
        .collect();
    counted.sort_unstable();
    assert_eq!(counted, vec![1, 2, 3, 4, 5]);
    let exhausted = results
        .iter()
        .filter(|r| **r == CodeAttempt::Exhausted)
        .count();
    assert_eq!(exhausted, 35);
}

/// The device's usage as counted from its mailbox, to hold the counters to.
async fn counted_usage<S: Store>(s: &S, d: DeviceId) -> (u64, u64) {
    let all = s.fetch_mailbox(d, 0, 100_000).await.unwrap();
    let bytes = all.iter().map(|e| e.body.len() as u64).sum();
    (all.len() as u64, bytes)
}

async fn mailbox_quota_refuses_before_writing<S: Store>(s: &S) {
    let alice = ready_device(s, "+911000000062", 62).await;
    let bob = ready_device(s, "+911000000063", 63).await;
    let carol = ready_device(s, "+911000000064", 64).await;
    let g = b"group-quota";
    s.commit_group(commit(&alice, g, 0, &[&bob, &carol]))
        .await
        .unwrap();
    // Each holds its Welcome ("welcome", 7 bytes).
    assert_eq!(s.mailbox_usage(bob.id).await.unwrap(), (1, 7));
    assert_eq!(s.mailbox_usage(carol.id).await.unwrap(), (1, 7));
    let quota = MailboxQuota {
        max_envelopes: 3,
        max_bytes: 20,
    };
    let send = |id: u8, body: &'static [u8]| s.send_group(g, 1, from(&alice, id, body), quota);
    assert!(matches!(
        send(1, b"12345").await.unwrap(),
        GroupOutcome::Accepted { .. }
    ));
    // Bob acks everything; carol does not, and would pass 20 bytes.
    let bobs = waiting_seqs(s, bob.id).await;
    s.ack(bob.id, &bobs).await.unwrap();
    assert_eq!(s.mailbox_usage(bob.id).await.unwrap(), (0, 0));
    let before = (
        counted_usage(s, alice.id).await,
        counted_usage(s, bob.id).await,
        counted_usage(s, carol.id).await,
    );
    assert_eq!(
        send(2, b"123456789").await.unwrap(),
        GroupOutcome::MailboxFull { device: carol.id }
    );
    assert_eq!(
        (
            counted_usage(s, alice.id).await,
            counted_usage(s, bob.id).await,
            counted_usage(s, carol.id).await,
        ),
        before,
        "nothing written for anyone"
    );
    // Exactly up to the byte limit passes.
    assert!(matches!(
        send(3, b"12345678").await.unwrap(),
        GroupOutcome::Accepted { .. }
    ));
    assert_eq!(s.mailbox_usage(carol.id).await.unwrap(), (3, 20));
    // The envelope limit: carol holds 3.
    assert_eq!(
        send(4, b"").await.unwrap(),
        GroupOutcome::MailboxFull { device: carol.id }
    );
    // Commits and direct envelopes are not subject to it.
    let rekey = s.commit_group(commit(&bob, g, 1, &[])).await.unwrap();
    assert!(matches!(rekey, GroupOutcome::Accepted { .. }), "{rekey:?}");
    s.enqueue(from(&alice, 5, b"direct"), &[carol.id])
        .await
        .unwrap();
    assert_eq!(s.mailbox_usage(carol.id).await.unwrap(), (5, 32));
    // Acking frees room.
    let carols = waiting_seqs(s, carol.id).await;
    s.ack(carol.id, &carols).await.unwrap();
    assert_eq!(s.mailbox_usage(carol.id).await.unwrap(), (0, 0));
    let sent = s
        .send_group(g, 2, from(&alice, 6, b"room"), quota)
        .await
        .unwrap();
    assert!(matches!(sent, GroupOutcome::Accepted { .. }), "{sent:?}");
}

async fn mailbox_usage_stays_exact<S: Store>(s: &S) {
    let reg = s
        .register_primary("+911000000065", &[65; 32], "p", 1)
        .await
        .unwrap();
    let linked = s
        .add_linked_device(reg.account_id, &[66; 32], "l", 1, 4)
        .await
        .unwrap();
    let (d, l) = (reg.device.id, linked.id);
    // Earlier cases' envelopes go first, so that the counts below are this case's.
    s.expire(LATE - 1, 1).await.unwrap();
    let exact = |d: DeviceId| async move {
        assert_eq!(
            s.mailbox_usage(d).await.unwrap(),
            counted_usage(s, d).await,
            "device {d}"
        );
    };
    assert_eq!(s.mailbox_usage(d).await.unwrap(), (0, 0));
    for i in 0..10u8 {
        let e = NewEnvelope {
            expires_ms: LATE + 1_000 * i64::from(i % 2),
            ..envelope(i, &vec![i; usize::from(i) * 10])
        };
        s.enqueue(e, &[d, l]).await.unwrap();
    }
    exact(d).await;
    exact(l).await;
    assert_eq!(s.mailbox_usage(d).await.unwrap(), (10, 450));
    let seqs: Vec<u64> = s
        .fetch_mailbox(d, 0, 3)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(s.ack(d, &seqs).await.unwrap(), 3);
    assert_eq!(s.ack(d, &seqs).await.unwrap(), 0);
    exact(d).await;
    // The odd ones expire later than the even ones.
    let expired = s.expire(LATE, 1).await.unwrap();
    assert_eq!(expired.envelopes, 3 + 5);
    exact(d).await;
    exact(l).await;
    assert_eq!(s.mailbox_usage(l).await.unwrap(), (5, 250));
    s.revoke_device(l, RevokeReason::Removed).await.unwrap();
    assert_eq!(s.mailbox_usage(l).await.unwrap(), (0, 0));
    s.expire(LATE + 1_000, 1).await.unwrap();
    assert_eq!(s.mailbox_usage(d).await.unwrap(), (0, 0));
}

/// A commit to every member and a group message are stored once, not once
/// per device; each device reads the whole body, its usage counts it, and
/// the body goes once every device has acked it (at the next `expire`).
async fn bodies_for_many_devices_are_stored_once<S: Store>(s: &S) {
    let creator = ready_device(s, "+911000000070", 70).await;
    let mut members = Vec::new();
    for i in 0..40u8 {
        members.push(ready_device(s, &format!("+9120000001{i:02}"), 200 + i).await);
    }
    let g = b"group-stored-once";
    let added: Vec<&Device> = members.iter().collect();
    // Sweeps what earlier cases left (nothing is due at time 1).
    s.expire(1, 1).await.unwrap();
    let before = s.stored_body_bytes().await.unwrap();
    s.commit_group(commit(&creator, g, 0, &added))
        .await
        .unwrap();
    // The creator's own "commit" (one device, inline) and one "welcome" for 40.
    assert_eq!(s.stored_body_bytes().await.unwrap() - before, 6 + 7);
    let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let mut rekey = commit(&members[0], g, 1, &[]);
    rekey.commit = from(&members[0], 90, &big);
    let outcome = s.commit_group(rekey).await.unwrap();
    assert!(
        matches!(outcome, GroupOutcome::Accepted { .. }),
        "{outcome:?}"
    );
    let sent = s
        .send_group(
            g,
            2,
            from(&creator, 91, &big[..500]),
            MailboxQuota::UNLIMITED,
        )
        .await
        .unwrap();
    assert!(matches!(sent, GroupOutcome::Accepted { .. }), "{sent:?}");
    let stored = s.stored_body_bytes().await.unwrap() - before;
    assert_eq!(stored, 13 + 10_000 + 500, "each body once, for 41 devices");
    for d in std::iter::once(&creator).chain(&members) {
        let mailbox = s.fetch_mailbox(d.id, 0, 100).await.unwrap();
        let rekey = mailbox.iter().find(|e| e.message_id == vec![90; 16]);
        assert_eq!(rekey.map(|e| &e.body), Some(&big), "device {}", d.id);
        let message = mailbox.iter().find(|e| e.message_id == vec![91; 16]);
        let expected = (d.id != creator.id).then(|| big[..500].to_vec());
        assert_eq!(message.map(|e| e.body.clone()), expected, "device {}", d.id);
        assert_eq!(
            s.mailbox_usage(d.id).await.unwrap(),
            counted_usage(s, d.id).await
        );
    }
    // Acked by all but one: the bodies stay for that one.
    let ack_all = |d: DeviceId| async move {
        s.ack(d, &waiting_seqs(s, d).await).await.unwrap();
        assert_eq!(s.mailbox_usage(d).await.unwrap(), (0, 0));
    };
    for d in std::iter::once(&creator).chain(&members[1..]) {
        ack_all(d.id).await;
    }
    s.expire(1, 1).await.unwrap();
    assert_eq!(
        s.stored_body_bytes().await.unwrap() - before,
        7 + 10_000 + 500,
        "its Welcome, the commit and the message"
    );
    let last = s.fetch_mailbox(members[0].id, 0, 100).await.unwrap();
    assert!(last.iter().any(|e| e.body == big[..500]));
    ack_all(members[0].id).await;
    s.expire(1, 1).await.unwrap();
    assert_eq!(s.stored_body_bytes().await.unwrap(), before);
}

fn sorted(mut ids: Vec<DeviceId>) -> Vec<DeviceId> {
    ids.sort_unstable();
    ids
}

/// A block is kept by the store: none of the blocked account's messages
/// reaches the blocker's devices (nor names them as recipients), every
/// other member still gets them, and the blocker's full mailboxes do not
/// hold the message back. It is one way, and unblocking restores delivery.
async fn blocked_senders_reach_everyone_but_the_blocker<S: Store>(s: &S) {
    let alice = ready_device(s, "+911000000151", 151).await;
    let bob = ready_device(s, "+911000000152", 152).await;
    let carol = ready_device(s, "+911000000153", 153).await;
    let laptop = s
        .add_linked_device(bob.account_id, &[154; 32], "laptop", 2, 4)
        .await
        .unwrap();
    s.put_key_packages(laptop.id, CLASSIC_SUITE, vec![], Some(vec![154]), 100)
        .await
        .unwrap();
    let g = b"group-blocked";
    let created = s
        .commit_group(commit(&alice, g, 0, &[&bob, &laptop, &carol]))
        .await
        .unwrap();
    assert!(is_accepted(&created), "{created:?}");
    let everyone = sorted(vec![bob.id, laptop.id, carol.id]);
    assert_eq!(sorted(reached(s, g, 1, &alice, 60).await), everyone);

    // bob blocks alice (twice: it is idempotent).
    s.set_block(bob.account_id, alice.account_id, true)
        .await
        .unwrap();
    s.set_block(bob.account_id, alice.account_id, true)
        .await
        .unwrap();
    let lens = async || {
        let mut lens = Vec::new();
        for d in [bob.id, laptop.id, carol.id] {
            lens.push(s.mailbox_len(d).await.unwrap());
        }
        lens
    };
    let before = lens().await;
    assert_eq!(reached(s, g, 1, &alice, 61).await, vec![carol.id]);
    assert_eq!(
        lens().await,
        vec![before[0], before[1], before[2] + 1],
        "nothing stored for bob's devices"
    );
    // One way: bob's messages still reach alice (and his own laptop).
    assert_eq!(
        sorted(reached(s, g, 1, &bob, 62).await),
        sorted(vec![alice.id, laptop.id, carol.id])
    );

    // bob's mailboxes fill up: alice's message is not held back by them,
    // carol's (bob has not blocked her) is.
    let filler: Vec<NewEnvelope> = (0..6).map(|i| from(&carol, 63 + i, b"fill")).collect();
    for e in filler {
        s.enqueue(e, &[bob.id, laptop.id]).await.unwrap();
    }
    let carol_len = s.mailbox_len(carol.id).await.unwrap();
    let quota = MailboxQuota {
        max_envelopes: carol_len + 1,
        max_bytes: u64::MAX,
    };
    assert!(s.mailbox_len(bob.id).await.unwrap() > carol_len + 1);
    let sent = s
        .send_group(g, 1, from(&alice, 70, b"over"), quota)
        .await
        .unwrap();
    assert_eq!(
        sent,
        GroupOutcome::Accepted {
            recipients: vec![carol.clone()]
        }
    );
    let refused = s
        .send_group(g, 1, from(&carol, 71, b"over"), quota)
        .await
        .unwrap();
    assert_eq!(refused, GroupOutcome::MailboxFull { device: bob.id });

    // Commits still reach everyone, and a blocked member may still commit
    // when it adds no one.
    let rekey = s.commit_group(commit(&alice, g, 1, &[])).await.unwrap();
    let GroupOutcome::Accepted { recipients } = rekey else {
        panic!("{rekey:?}")
    };
    assert_eq!(sorted(recipients.iter().map(|d| d.id).collect()), everyone);

    // Unblocked (twice: idempotent), alice reaches bob again.
    s.set_block(bob.account_id, alice.account_id, false)
        .await
        .unwrap();
    s.set_block(bob.account_id, alice.account_id, false)
        .await
        .unwrap();
    assert_eq!(sorted(reached(s, g, 2, &alice, 72).await), everyone);
}

/// An account that was blocked cannot add the blocker's devices, neither
/// creating a group nor later, and the refusal changes nothing; anyone
/// else can add them, and the blocked account can still remove them.
async fn blocked_committers_cannot_add_the_blocker<S: Store>(s: &S) {
    let alice = ready_device(s, "+911000000155", 155).await;
    let bob = ready_device(s, "+911000000156", 156).await;
    let carol = ready_device(s, "+911000000157", 157).await;
    s.set_block(bob.account_id, alice.account_id, true)
        .await
        .unwrap();
    let g = b"group-blocked-adds";
    let cannot = GroupOutcome::BadChange(group_rules::ADD_BLOCKED.into());
    let bob_len = s.mailbox_len(bob.id).await.unwrap();
    assert_eq!(
        s.commit_group(commit(&alice, g, 0, &[&bob])).await.unwrap(),
        cannot
    );
    assert_eq!(
        s.commit_group(commit(&alice, g, 0, &[&bob, &carol]))
            .await
            .unwrap(),
        cannot
    );
    assert_eq!(s.group_epoch(g).await.unwrap(), None, "no group was made");
    let created = s
        .commit_group(commit(&alice, g, 0, &[&carol]))
        .await
        .unwrap();
    assert!(is_accepted(&created), "{created:?}");
    let carol_len = s.mailbox_len(carol.id).await.unwrap();
    assert_eq!(
        s.commit_group(commit(&alice, g, 1, &[&bob])).await.unwrap(),
        cannot
    );
    assert_eq!(s.group_epoch(g).await.unwrap(), Some(1));
    assert_eq!(s.mailbox_len(carol.id).await.unwrap(), carol_len);
    assert_eq!(s.mailbox_len(bob.id).await.unwrap(), bob_len, "no Welcome");
    // carol may add bob; alice may then remove him (never refused).
    let added = s.commit_group(commit(&carol, g, 1, &[&bob])).await.unwrap();
    assert!(is_accepted(&added), "{added:?}");
    // alice 0, carol 1, bob 2
    let removal = removing(commit(&alice, g, 2, &[]), &[&bob], &[2]);
    let removed = s.commit_group(removal).await.unwrap();
    assert!(is_accepted(&removed), "{removed:?}");
    assert_eq!(reached(s, g, 3, &alice, 73).await, vec![carol.id]);
}

/// A business profile is one row per account; the operator's verification
/// holds while the display name stays, and a new name clears it.
async fn a_new_business_name_needs_verifying_again<S: Store>(s: &S) {
    let bot = ready_device(s, "+911000000171", 171).await;
    let person = ready_device(s, "+911000000172", 172).await;
    assert_eq!(s.business(bot.account_id).await.unwrap(), None);
    assert!(
        !s.verify_business(person.account_id, Some("Dak Rail"))
            .await
            .unwrap()
    );
    s.set_business(bot.account_id, b"v1", "Dak Rail", 1)
        .await
        .unwrap();
    // The operator checked another name than the business shows: nothing.
    assert!(
        !s.verify_business(bot.account_id, Some("Indian Railways"))
            .await
            .unwrap()
    );
    assert!(!s.business(bot.account_id).await.unwrap().unwrap().verified);
    assert!(
        s.verify_business(bot.account_id, Some("Dak Rail"))
            .await
            .unwrap()
    );
    // A new description, the same name: still verified.
    s.set_business(bot.account_id, b"v2", "Dak Rail", 2)
        .await
        .unwrap();
    let b = s.business(bot.account_id).await.unwrap().unwrap();
    assert_eq!(
        (b.profile.as_slice(), b.verified, b.updated_ms),
        (&b"v2"[..], true, 2)
    );
    // Another name: the operator must check it again.
    s.set_business(bot.account_id, b"v3", "Dak Railways", 3)
        .await
        .unwrap();
    let b = s.business(bot.account_id).await.unwrap().unwrap();
    assert_eq!(
        (b.display_name.as_str(), b.verified),
        ("Dak Railways", false)
    );
    s.set_business(bot.account_id, b"v4", "Dak Rail", 4)
        .await
        .unwrap();
    assert!(!s.business(bot.account_id).await.unwrap().unwrap().verified);
    assert!(
        s.verify_business(bot.account_id, Some("Dak Rail"))
            .await
            .unwrap()
    );
    assert!(s.verify_business(bot.account_id, None).await.unwrap());
    assert!(!s.business(bot.account_id).await.unwrap().unwrap().verified);
    assert_eq!(s.business(person.account_id).await.unwrap(), None);
}

/// A report is one row per (reporter, reported) pair, counted once however
/// often it is repeated, and it blocks; unblocking keeps the report.
async fn reports_block_and_count_distinct_reporters<S: Store>(s: &S) {
    let spammer = ready_device(s, "+911000000161", 161).await;
    let first = ready_device(s, "+911000000162", 162).await;
    let second = ready_device(s, "+911000000163", 163).await;
    assert_eq!(s.reports_against(spammer.account_id).await.unwrap(), 0);
    s.report(first.account_id, spammer.account_id, 1_000)
        .await
        .unwrap();
    s.report(first.account_id, spammer.account_id, 2_000)
        .await
        .unwrap();
    assert_eq!(s.reports_against(spammer.account_id).await.unwrap(), 1);
    s.report(second.account_id, spammer.account_id, 3_000)
        .await
        .unwrap();
    assert_eq!(s.reports_against(spammer.account_id).await.unwrap(), 2);
    assert_eq!(s.reports_against(first.account_id).await.unwrap(), 0);
    // The report blocked the spammer for its reporter.
    let g = b"group-reported";
    assert_eq!(
        s.commit_group(commit(&spammer, g, 0, &[&first]))
            .await
            .unwrap(),
        GroupOutcome::BadChange(group_rules::ADD_BLOCKED.into())
    );
    let created = s
        .commit_group(commit(&first, g, 0, &[&spammer]))
        .await
        .unwrap();
    assert!(is_accepted(&created), "{created:?}");
    assert_eq!(reached(s, g, 1, &spammer, 80).await, Vec::<DeviceId>::new());
    assert_eq!(reached(s, g, 1, &first, 81).await, vec![spammer.id]);
    s.set_block(first.account_id, spammer.account_id, false)
        .await
        .unwrap();
    assert_eq!(reached(s, g, 1, &spammer, 82).await, vec![first.id]);
    assert_eq!(s.reports_against(spammer.account_id).await.unwrap(), 2);
}

fn new_blob(id: u8, owner: &Device, length: u64) -> Blob {
    Blob {
        id: vec![id; 16],
        owner_device: owner.id,
        owner_account: owner.account_id,
        length,
        received: 0,
        complete: false,
        sha256: vec![1; 32],
        upload_token_sha256: vec![2; 32],
        capability_sha256: vec![3; 32],
        created_ms: 1_000,
        expires_ms: 5_000,
    }
}

fn seg(offset: u64, len: u64) -> BlobSegment {
    BlobSegment {
        offset,
        len,
        write: offset * 7 + 1,
    }
}

const ROOMY: BlobQuota = BlobQuota {
    device_bytes: 1 << 40,
    account_bytes: 1 << 40,
};

async fn blobs_fill_in_order_and_wait_for_their_fetchers<S: Store>(s: &S) {
    let alice = ready_device(s, "+911000000171", 171).await;
    let bob = ready_device(s, "+911000000172", 172).await;
    let carol = ready_device(s, "+911000000173", 173).await;
    let g = b"group-media";
    assert!(is_accepted(
        &s.commit_group(commit(&alice, g, 0, &[&bob, &carol]))
            .await
            .unwrap()
    ));
    let id = vec![171u8; 16];
    assert_eq!(
        s.create_blob(new_blob(171, &alice, 100), ROOMY)
            .await
            .unwrap(),
        BlobCreated::Created
    );
    // Segments only at the upload's offset, never past its length.
    assert_eq!(s.add_blob_segment(&id, seg(10, 5)).await.unwrap(), None);
    assert_eq!(s.add_blob_segment(&id, seg(0, 60)).await.unwrap(), Some(60));
    assert_eq!(
        s.add_blob_segment(&id, seg(0, 60)).await.unwrap(),
        None,
        "a repeat"
    );
    assert_eq!(
        s.add_blob_segment(&id, seg(60, 41)).await.unwrap(),
        None,
        "too long"
    );
    // Not complete: nothing to share, nothing to complete yet.
    assert_eq!(
        s.share_blob(&id, g, alice.id).await.unwrap(),
        BlobShared::NotFound
    );
    assert!(!s.complete_blob(&id, 9_000).await.unwrap());
    assert_eq!(
        s.add_blob_segment(&id, seg(60, 40)).await.unwrap(),
        Some(100)
    );
    assert_eq!(
        s.blob_segments(&id).await.unwrap(),
        vec![seg(0, 60), seg(60, 40)]
    );
    assert!(s.complete_blob(&id, 9_000).await.unwrap());
    assert!(!s.complete_blob(&id, 9_000).await.unwrap(), "once");
    let blob = s.blob(&id).await.unwrap().unwrap();
    assert!(blob.complete);
    assert_eq!((blob.received, blob.expires_ms), (100, 9_000));
    assert_eq!(
        s.add_blob_segment(&id, seg(100, 0)).await.unwrap(),
        None,
        "complete"
    );

    // Shared by a member with the group's other devices; an outsider cannot.
    let outsider = ready_device(s, "+911000000174", 174).await;
    assert_eq!(
        s.share_blob(&id, g, outsider.id).await.unwrap(),
        BlobShared::NotMember
    );
    assert_eq!(
        s.share_blob(&id, g, alice.id).await.unwrap(),
        BlobShared::Shared { waiting: 2 }
    );
    assert_eq!(
        s.share_blob(&id, g, bob.id).await.unwrap(),
        BlobShared::Shared { waiting: 3 },
        "a forward by bob adds alice, once"
    );
    assert!(!s.blob_fetched(&id, outsider.id).await.unwrap());
    assert!(!s.blob_fetched(&id, bob.id).await.unwrap());
    assert!(!s.blob_fetched(&id, bob.id).await.unwrap(), "twice is once");
    assert!(!s.blob_fetched(&id, alice.id).await.unwrap());
    assert!(
        s.blob_fetched(&id, carol.id).await.unwrap(),
        "the last fetcher"
    );

    // Expiry lists it; deleting returns its segments and forgets it.
    assert_eq!(
        s.expired_blobs(8_999, 10).await.unwrap(),
        Vec::<Vec<u8>>::new()
    );
    assert_eq!(s.expired_blobs(9_000, 10).await.unwrap(), vec![id.clone()]);
    assert_eq!(s.delete_blob(&id).await.unwrap().len(), 2);
    assert_eq!(s.blob(&id).await.unwrap(), None);
    assert_eq!(s.blob_segments(&id).await.unwrap(), vec![]);
    assert_eq!(s.delete_blob(&id).await.unwrap(), vec![]);
}

async fn racing_uploads_never_pass_the_media_quota<S: Store + Clone>(s: &S) {
    let alice = ready_device(s, "+911000000181", 181).await;
    let quota = BlobQuota {
        device_bytes: 1_000,
        account_bytes: 2_000,
    };
    // Ten uploads of 300 bytes at once: three fit the device's 1,000.
    let ids: Vec<u8> = (0..10).map(|i| 200 + i).collect();
    let results = race(s, 10, {
        let alice = alice.clone();
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        move |s| {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let blob = new_blob(ids[i], &alice, 300);
            async move { s.create_blob(blob, quota).await.unwrap() }
        }
    })
    .await;
    let created = results
        .iter()
        .filter(|r| **r == BlobCreated::Created)
        .count();
    assert_eq!(created, 3, "{results:?}");
    assert!(results.contains(&BlobCreated::DeviceQuota { used: 900 }));
    // Another device of the account has its own 1,000, within the 2,000.
    let laptop = s
        .add_linked_device(alice.account_id, &[182; 32], "laptop", 2, 4)
        .await
        .unwrap();
    assert_eq!(
        s.create_blob(new_blob(230, &laptop, 1_000), quota)
            .await
            .unwrap(),
        BlobCreated::Created
    );
    let tablet = s
        .add_linked_device(alice.account_id, &[183; 32], "tablet", 2, 4)
        .await
        .unwrap();
    assert_eq!(
        s.create_blob(new_blob(231, &tablet, 200), quota)
            .await
            .unwrap(),
        BlobCreated::AccountQuota { used: 1_900 }
    );
}

/// The key-transparency directory's storage: records and value states are
/// upserted and read back; an epoch advances only from where it is, so of
/// two nodes publishing from the same epoch exactly one writes anything.
async fn key_directory_advances_once_per_epoch<S: Store + Clone>(s: &S) {
    assert_eq!(s.kt_epoch().await.unwrap(), 0);
    let record = |id: u8, body: &[u8]| KtRecord {
        kind: 2,
        id: vec![id; 3],
        body: body.to_vec(),
    };
    let state = |label: &[u8], epoch: u64| KtValueState {
        label: label.to_vec(),
        epoch,
        version: epoch,
        body: vec![epoch as u8; 5],
    };
    // The directory's first records come without an epoch (akd's setup).
    assert!(
        s.kt_write(vec![record(1, b"root")], vec![], None)
            .await
            .unwrap()
    );
    assert!(
        s.kt_write(
            vec![record(1, b"root-1"), record(2, b"leaf")],
            vec![state(b"+919800000001", 1)],
            Some((0, 1)),
        )
        .await
        .unwrap()
    );
    assert_eq!(s.kt_epoch().await.unwrap(), 1);
    // Racing advances from epoch 1: exactly one wins, the others write nothing.
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(0));
    let won = race(s, 6, |s| {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            let won = s
                .kt_write(
                    vec![KtRecord {
                        kind: 2,
                        id: vec![3; 3],
                        body: vec![i],
                    }],
                    vec![KtValueState {
                        label: b"+919800000002".to_vec(),
                        epoch: 2,
                        version: 2,
                        body: vec![2; 5],
                    }],
                    Some((1, 2)),
                )
                .await
                .unwrap();
            (won, i)
        }
    })
    .await;
    let winners: Vec<u8> = won.iter().filter(|w| w.0).map(|w| w.1).collect();
    assert_eq!(winners.len(), 1, "{won:?}");
    let winner = winners[0];
    assert_eq!(s.kt_epoch().await.unwrap(), 2);
    let mut read = s
        .kt_records(2, &[vec![1; 3], vec![2; 3], vec![3; 3], vec![9; 3]])
        .await
        .unwrap();
    read.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        read,
        vec![
            record(1, b"root-1"),
            record(2, b"leaf"),
            record(3, &[winner])
        ]
    );
    assert!(s.kt_records(1, &[vec![1; 3]]).await.unwrap().is_empty());
    // A stale advance (from an epoch already passed) writes nothing.
    assert!(
        !s.kt_write(
            vec![record(4, b"x")],
            vec![state(b"+919800000003", 1)],
            Some((0, 1))
        )
        .await
        .unwrap()
    );
    assert!(s.kt_records(2, &[vec![4; 3]]).await.unwrap().is_empty());
    // A label's states come back oldest first; other labels' do not.
    s.kt_write(vec![], vec![state(b"+919800000001", 3)], Some((2, 3)))
        .await
        .unwrap();
    let states = s
        .kt_states(&[b"+919800000001".to_vec(), b"+919800000003".to_vec()])
        .await
        .unwrap();
    assert_eq!(
        states,
        vec![state(b"+919800000001", 1), state(b"+919800000001", 3)]
    );
    assert!(s.kt_states(&vec![vec![0]; KT_MAX_READ + 1]).await.is_err());
    // The first of racing writers keeps its body; every one reads it back.
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(1));
    let kept = race(s, 6, |s| {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            s.kt_put_first(KtRecord {
                kind: 103,
                id: b"vrf".to_vec(),
                body: vec![i; 32],
            })
            .await
            .unwrap()
        }
    })
    .await;
    assert!(kept.iter().all(|k| *k == kept[0]), "{kept:?}");
    let again = s
        .kt_put_first(KtRecord {
            kind: 103,
            id: b"vrf".to_vec(),
            body: vec![99; 32],
        })
        .await
        .unwrap();
    assert_eq!(again, kept[0]);
}
