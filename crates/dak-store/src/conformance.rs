//! Behaviour every `Store` backend must show. Each backend's tests call
//! `run_all` on a fresh, empty store, so SQLite and PostgreSQL are held to
//! one definition of correct.

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

pub async fn run_all<S: Store>(s: &S) {
    registration_replaces_old_devices(s).await;
    linked_devices_are_capped(s).await;
    mailbox_is_ordered_and_private(s).await;
    verification_attempts_count(s).await;
    link_requests_are_taken_once(s).await;
    expiry_drops_old_envelopes(s).await;
    key_packages_are_claimed_once(s).await;
    groups_take_the_first_commit_per_epoch(s).await;
    group_sends_check_members_and_devices(s).await;
    groups_are_capped_by_member_accounts(s).await;
    disappearing_messages_go_at_their_expiry(s).await;
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
    assert_eq!(s.key_stock(d).await.unwrap(), KeyStock::default());
    // A device without a last-resort package cannot be added yet.
    assert!(
        s.claim_key_packages(reg.account_id, &[])
            .await
            .unwrap()
            .is_empty()
    );
    let stock = s
        .put_key_packages(
            d,
            vec![b"kp1".to_vec(), b"kp2".to_vec()],
            Some(b"last".to_vec()),
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
        let claimed = s.claim_key_packages(reg.account_id, &[]).await.unwrap();
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
    let known = s.claim_key_packages(reg.account_id, &[d]).await.unwrap();
    assert_eq!(known[0].key_package, None, "a known device gets no package");
    // A replaced last resort; a revoked device has none left.
    s.put_key_packages(d, vec![], Some(b"last2".to_vec()))
        .await
        .unwrap();
    let claimed = s.claim_key_packages(reg.account_id, &[]).await.unwrap();
    assert_eq!(claimed[0].key_package.as_deref(), Some(&b"last2"[..]));
    s.revoke_device(d, RevokeReason::Removed).await.unwrap();
    assert_eq!(s.key_stock(d).await.unwrap(), KeyStock::default());
}

async fn ready_device<S: Store>(s: &S, phone: &str, key: u8) -> Device {
    let reg = s.register_primary(phone, &[key; 32], "p", 1).await.unwrap();
    s.put_key_packages(reg.device.id, vec![], Some(vec![key]))
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
    let sent = s.send_group(g, 1, from(&a, 1, b"hello")).await.unwrap();
    assert_eq!(
        sent,
        GroupOutcome::Accepted {
            recipients: vec![b.clone()]
        }
    );
    assert_eq!(s.mailbox_len(b.id).await.unwrap(), before + 1);
    assert_eq!(s.mailbox_len(a.id).await.unwrap(), 1, "not to the sender");
    assert_eq!(
        s.send_group(g, 0, from(&a, 2, b"old")).await.unwrap(),
        GroupOutcome::Stale { epoch: 1 }
    );
    assert_eq!(
        s.send_group(b"nope", 0, from(&a, 3, b"x")).await.unwrap(),
        GroupOutcome::NoGroup
    );
    // b links a laptop with keys: sends are refused until it is added.
    let laptop = s
        .add_linked_device(b.account_id, &[23; 32], "laptop", 2, 4)
        .await
        .unwrap();
    assert!(
        matches!(
            s.send_group(g, 1, from(&a, 4, b"x")).await.unwrap(),
            GroupOutcome::Accepted { .. }
        ),
        "a device without keys yet does not block the group"
    );
    s.put_key_packages(laptop.id, vec![], Some(vec![23]))
        .await
        .unwrap();
    assert_eq!(
        s.send_group(g, 1, from(&a, 5, b"x")).await.unwrap(),
        GroupOutcome::DevicesChanged
    );
    s.commit_group(commit(&a, g, 1, &[&laptop])).await.unwrap();
    let sent = s.send_group(g, 2, from(&a, 6, b"x")).await.unwrap();
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
        s.send_group(g, 2, from(&a, 7, b"x")).await.unwrap(),
        GroupOutcome::DevicesChanged
    );
    let mut removal = commit(&b, g, 2, &[]);
    removal.removed = vec![laptop.id];
    assert!(matches!(
        s.commit_group(removal).await.unwrap(),
        GroupOutcome::Accepted { .. }
    ));
    assert!(matches!(
        s.send_group(g, 3, from(&a, 8, b"x")).await.unwrap(),
        GroupOutcome::Accepted { .. }
    ));
}

/// The member ids a message at `epoch` from `by` reaches: the group's other
/// members, as the store has them.
async fn reached<S: Store>(s: &S, g: &[u8], epoch: u64, by: &Device, id: u8) -> Vec<DeviceId> {
    match s
        .send_group(g, epoch, from(by, id, b"probe"))
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
    s.put_key_packages(laptop.id, vec![], Some(vec![34]))
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
        let out = s.send_group(g, 1, e).await.unwrap();
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
    let d2_seqs: Vec<u64> = s
        .fetch_mailbox(d2, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
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

async fn verification_attempts_count<S: Store>(s: &S) {
    let v = Verification {
        phone: "+911000000004".into(),
        code_hash: "h".into(),
        expires_ms: 100,
        attempts: 0,
        sent_in_window: 1,
        window_start_ms: 0,
    };
    s.put_verification(v.clone()).await.unwrap();
    assert_eq!(s.bump_verification_attempts(&v.phone).await.unwrap(), 1);
    assert_eq!(s.bump_verification_attempts(&v.phone).await.unwrap(), 2);
    assert_eq!(s.verification(&v.phone).await.unwrap().unwrap().attempts, 2);
    s.delete_verification(&v.phone).await.unwrap();
    assert!(s.verification(&v.phone).await.unwrap().is_none());
    assert!(s.bump_verification_attempts(&v.phone).await.is_err());
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
