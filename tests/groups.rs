//! Groups and read receipts: membership changes land in every affected member's stream.

mod common;

use common::{Client, TestApp};
use serde_json::{json, Value};

async fn create(c: &mut Client, name: &str, members: &[&str]) -> Value {
    let reply = c
        .ok(json!({"type": "group_create", "name": name, "members": members}))
        .await;
    reply["conversation"].clone()
}

async fn send(c: &mut Client, conversation: &str, body: &str, id: &str) -> Value {
    c.ok(json!({"type": "send", "conversation": conversation, "body": body, "client_msg_id": id}))
        .await["message"]
        .clone()
}

#[tokio::test]
async fn a_group_reaches_every_member_and_its_messages_reach_every_stream() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let mut carol = app.connect("carol").await;
    let g = create(&mut alice, "Friends", &["bob", "carol", "bob"]).await;
    assert_eq!(g["kind"], "group");
    assert_eq!(g["name"], "Friends");
    assert_eq!(g["members"], json!(["alice", "bob", "carol"]));
    let id = g["id"].as_str().unwrap().to_string();
    for c in [&mut alice, &mut bob, &mut carol] {
        let e = c.event().await;
        assert_eq!(e["type"], "conversation");
        assert_eq!(e["conversation"], g);
    }
    let m = send(&mut bob, &id, "hello all", "b1").await;
    for c in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(c.event().await["message"], m);
    }
    // Replayed from the table, the events read the same.
    let mut carol2 = app.connect("carol").await;
    carol2.ok(json!({"type": "resume", "after": 0})).await;
    let replay = carol2.buffered();
    assert_eq!(replay[0]["conversation"], g);
    assert_eq!(replay[1]["message"], m);
}

#[tokio::test]
async fn an_added_member_is_told_and_can_send_at_once() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let g = create(&mut alice, "team", &["bob"]).await;
    let id = g["id"].as_str().unwrap().to_string();
    send(&mut alice, &id, "before dave", "a1").await;

    let mut dave = app.connect("dave").await;
    let added = alice
        .ok(json!({"type": "group_add", "conversation": id, "users": ["dave"]}))
        .await;
    assert_eq!(
        added["conversation"]["members"],
        json!(["alice", "bob", "dave"])
    );
    let e = dave.event().await;
    assert_eq!(e["type"], "conversation");
    assert_eq!(
        e["conversation"]["members"],
        json!(["alice", "bob", "dave"])
    );
    // Existing members see the new membership too.
    let e = alice.event_of("conversation").await;
    assert_eq!(e["seq"], 1);
    let e = alice.event_of("conversation").await;
    assert_eq!(
        e["conversation"]["members"],
        json!(["alice", "bob", "dave"])
    );

    let m = send(&mut dave, &id, "hi, I'm new", "d1").await;
    assert_eq!(m["cseq"], 2);
    // A new member may read the history from before they joined.
    let h = dave
        .ok(json!({"type": "history", "conversation": id}))
        .await;
    assert_eq!(h["total"], 2);
}

#[tokio::test]
async fn removed_and_leaving_members_get_removed_and_lose_access() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let mut carol = app.connect("carol").await;
    let g = create(&mut alice, "g", &["bob", "carol"]).await;
    let id = g["id"].as_str().unwrap().to_string();

    let r = alice
        .ok(json!({"type": "group_remove", "conversation": id, "users": ["bob", "nobody"]}))
        .await;
    assert_eq!(r["conversation"]["members"], json!(["alice", "carol"]));
    let e = bob.event_of("removed").await;
    assert_eq!(e["conversation"], id.as_str());
    assert!(e["seq"].as_i64().is_some());
    let e = carol.event_of("conversation").await; // the creation
    assert_eq!(e["conversation"]["members"].as_array().unwrap().len(), 3);
    let e = carol.event_of("conversation").await; // the removal
    assert_eq!(e["conversation"]["members"], json!(["alice", "carol"]));

    bob.err(
        json!({"type": "send", "conversation": id, "body": "x", "client_msg_id": "b1"}),
        "forbidden",
    )
    .await;
    bob.err(json!({"type": "history", "conversation": id}), "forbidden")
        .await;
    bob.err(
        json!({"type": "group_add", "conversation": id, "users": ["bob"]}),
        "forbidden",
    )
    .await;

    let left = carol
        .ok(json!({"type": "group_leave", "conversation": id}))
        .await;
    assert_eq!(left, json!({"type": "ok", "ref": left["ref"]}));
    assert_eq!(carol.event_of("removed").await["conversation"], id.as_str());
    let e = alice.event_of("conversation").await;
    let e = if e["conversation"]["members"].as_array().unwrap().len() == 3 {
        alice.event_of("conversation").await
    } else {
        e
    };
    assert_eq!(e["conversation"]["members"], json!(["alice", "carol"]));
    let e = alice.event_of("conversation").await;
    assert_eq!(e["conversation"]["members"], json!(["alice"]));

    // The stored membership agrees, and so does `conversations`.
    let list = carol.ok(json!({"type": "conversations"})).await;
    assert_eq!(list["conversations"], json!([]));
}

#[tokio::test]
async fn direct_conversations_have_fixed_members() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let m = alice.send_dm("bob", "hi", "1").await;
    let id = m["conversation"].as_str().unwrap();
    let e = alice
        .err(
            json!({"type": "group_add", "conversation": id, "users": ["carol"]}),
            "bad_request",
        )
        .await;
    assert!(e["message"].as_str().unwrap().contains("direct"), "{e}");
    alice
        .err(
            json!({"type": "group_leave", "conversation": id}),
            "bad_request",
        )
        .await;
    alice
        .err(
            json!({"type": "group_leave", "conversation": "g-nope"}),
            "not_found",
        )
        .await;
}

#[tokio::test]
async fn groups_are_bounded_by_max_group_members() {
    let app = TestApp::spawn_with(|c| c.max_group_members = 3).await;
    let mut alice = app.connect("alice").await;
    // The creator counts: alice + 3 is one too many.
    let e = alice
        .err(
            json!({"type": "group_create", "name": "big", "members": ["b", "c", "d"]}),
            "too_large",
        )
        .await;
    assert!(e["message"].as_str().unwrap().contains("members"), "{e}");
    let g = create(&mut alice, "ok", &["b", "c"]).await;
    let id = g["id"].as_str().unwrap();
    let e = alice
        .err(
            json!({"type": "group_add", "conversation": id, "users": ["d"]}),
            "too_large",
        )
        .await;
    assert!(e["message"].as_str().unwrap().contains("limit is 3"), "{e}");
    // Adding someone already in the group changes nothing and is fine.
    alice
        .ok(json!({"type": "group_add", "conversation": id, "users": ["b"]}))
        .await;
}

#[tokio::test]
async fn group_requests_reject_bad_names_and_ids() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    for (req, mentions) in [
        (
            json!({"type": "group_create", "name": "", "members": []}),
            "name",
        ),
        (
            json!({"type": "group_create", "name": "   ", "members": []}),
            "blank",
        ),
        (
            json!({"type": "group_create", "name": "x".repeat(101), "members": []}),
            "name",
        ),
        (
            json!({"type": "group_create", "name": "g", "members": ["ok", "not ok"]}),
            "members[1]",
        ),
        (
            json!({"type": "group_create", "name": "g", "members": [5]}),
            "members[0]",
        ),
        (json!({"type": "group_create", "name": "g"}), "members"),
        (
            json!({"type": "group_add", "conversation": "g1", "users": []}),
            "users",
        ),
        (
            json!({"type": "group_remove", "conversation": "g1"}),
            "users",
        ),
        (
            json!({"type": "read", "conversation": "g1", "cseq": 0}),
            "cseq",
        ),
    ] {
        let e = alice.err(req.clone(), "bad_request").await;
        assert!(
            e["message"].as_str().unwrap().contains(mentions),
            "{req} should mention {mentions}: {e}"
        );
    }
    // 100 characters is the limit, not 99.
    create(&mut alice, &"n".repeat(100), &[]).await;
}

#[tokio::test]
async fn read_markers_move_forward_only_and_tell_the_other_members() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let g = create(&mut alice, "g", &["bob"]).await;
    let id = g["id"].as_str().unwrap().to_string();
    for i in 1..=3 {
        send(&mut alice, &id, &format!("m{i}"), &i.to_string()).await;
    }
    let unread = |list: &Value| list["conversations"][0]["unread"].clone();
    let list = bob.ok(json!({"type": "conversations"})).await;
    assert_eq!(unread(&list), 3);

    bob.ok(json!({"type": "read", "conversation": id, "cseq": 2}))
        .await;
    let e = alice.event_of("read").await;
    assert_eq!(e["conversation"], id.as_str());
    assert_eq!(e["user"], "bob");
    assert_eq!(e["cseq"], 2);
    assert!(e["seq"].as_i64().is_some());
    let list = bob.ok(json!({"type": "conversations"})).await;
    assert_eq!(unread(&list), 1);

    // Backwards is accepted and changes nothing.
    bob.ok(json!({"type": "read", "conversation": id, "cseq": 1}))
        .await;
    let list = bob.ok(json!({"type": "conversations"})).await;
    assert_eq!(unread(&list), 1);
    // Beyond the last message is refused.
    let e = bob
        .err(
            json!({"type": "read", "conversation": id, "cseq": 4}),
            "bad_request",
        )
        .await;
    assert!(
        e["message"].as_str().unwrap().contains("does not exist"),
        "{e}"
    );
    // The reader's own stream gets no read event; the other member's stream got one.
    let db = app.db.client().await;
    let reads = |user: &'static str| {
        let db = &db;
        async move {
            db.query_one(
                "SELECT count(*) FROM event_queue WHERE user_id = $1 AND kind = 'read'",
                &[&user],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
        }
    };
    assert_eq!(reads("alice").await, 1);
    assert_eq!(reads("bob").await, 0);
    let marker: i64 = db
        .query_one(
            "SELECT read_cseq FROM members WHERE user_id = 'bob' AND conversation_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(marker, 2);
    // A read event replays from the table like any other.
    let mut alice2 = app.connect("alice").await;
    alice2.ok(json!({"type": "resume", "after": 0})).await;
    let replayed: Vec<Value> = alice2
        .buffered()
        .into_iter()
        .filter(|e| e["type"] == "read")
        .collect();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0]["cseq"], 2);
    assert_eq!(replayed[0]["user"], "bob");
}

#[tokio::test]
async fn concurrent_group_changes_and_sends_keep_every_stream_gap_free() {
    let app = TestApp::spawn().await;
    let mut owner = app.connect("owner").await;
    let g = create(&mut owner, "busy", &["m0", "m1", "m2"]).await;
    let id = g["id"].as_str().unwrap().to_string();
    let mut tasks = Vec::new();
    for i in 0..3 {
        let mut c = app.connect(&format!("m{i}")).await;
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..15 {
                c.ok(json!({"type": "send", "conversation": id, "body": "x", "client_msg_id": format!("{j}")}))
                    .await;
            }
        }));
    }
    for k in 0..5 {
        owner
            .ok(json!({"type": "group_add", "conversation": id, "users": [format!("x{k}")]}))
            .await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let db = app.db.client().await;
    let rows = db
        .query(
            "SELECT u.id, u.head, count(e.seq), coalesce(max(e.seq), 0)
             FROM users u LEFT JOIN event_queue e ON e.user_id = u.id GROUP BY u.id, u.head",
            &[],
        )
        .await
        .unwrap();
    assert!(rows.len() >= 9);
    for r in rows {
        let (user, head, n, max): (String, i64, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        assert_eq!(head, n, "{user}: head equals the number of events");
        assert_eq!(head, max, "{user}: no gap below the head");
    }
    let cseqs: Vec<i64> = db
        .query(
            "SELECT cseq FROM messages WHERE conversation_id = $1 ORDER BY cseq",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(cseqs, (1..=45).collect::<Vec<i64>>());
}

#[tokio::test]
async fn a_large_group_s_changes_carry_the_change_and_a_capped_member_list() {
    let app = TestApp::spawn_with(|c| c.conversation_members_listed = 3).await;
    let mut alice = app.connect("alice").await;
    let g = create(&mut alice, "big", &["u1", "u2", "u3", "u4", "u5"]).await;
    let id = g["id"].as_str().unwrap().to_string();
    assert_eq!(g["members"], json!(["alice", "u1", "u2"]), "{g}");
    assert_eq!(g["member_count"], 6);
    let mut u5 = app.connect("u5").await;
    let added = alice
        .ok(json!({"type": "group_add", "conversation": id, "users": ["v1", "v2"]}))
        .await;
    assert_eq!(added["conversation"]["member_count"], 8);
    assert_eq!(
        added["conversation"]["members"],
        json!(["alice", "u1", "u2"])
    );
    assert_eq!(added["conversation"]["added"], json!(["v1", "v2"]));
    // Every member's event carries the same: the change, a capped list, the count.
    let event = u5.event_of("conversation").await;
    assert_eq!(
        event["conversation"]["added"],
        json!(["v1", "v2"]),
        "{event}"
    );
    assert_eq!(
        event["conversation"]["members"].as_array().unwrap().len(),
        3
    );
    assert_eq!(event["conversation"]["member_count"], 8);
    alice
        .ok(json!({"type": "group_remove", "conversation": id, "users": ["u1"]}))
        .await;
    let event = u5.event_of("conversation").await;
    assert_eq!(event["conversation"]["removed"], json!(["u1"]), "{event}");
    assert_eq!(event["conversation"]["member_count"], 7);
    // The whole list is one request away; and everyone still receives every message.
    let all = u5.ok(json!({"type": "members", "conversation": id})).await;
    assert_eq!(
        all["members"],
        json!(["alice", "u2", "u3", "u4", "u5", "v1", "v2"])
    );
    send(&mut alice, &id, "to all seven", "m1").await;
    assert_eq!(
        u5.event_of("message").await["message"]["body"],
        "to all seven"
    );
}

#[tokio::test]
async fn read_markers_of_a_large_group_go_to_the_reader_only_and_receipts_answer_instead() {
    let app = TestApp::spawn_with(|c| c.read_receipts_fanout_max = 2).await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let mut bob_phone = app.connect("bob").await;
    // Small: the other members are told, as in v1.
    let small = create(&mut alice, "small", &["bob", "carol"]).await;
    let small = small["id"].as_str().unwrap().to_string();
    let m = send(&mut alice, &small, "hi", "s1").await;
    bob.ok(json!({"type": "read", "conversation": small, "cseq": m["cseq"]}))
        .await;
    let read = alice.event_of("read").await;
    assert_eq!(
        (read["user"].as_str(), read["cseq"].as_i64()),
        (Some("bob"), Some(1))
    );
    // Large (three others besides the reader): only the reader's own sessions.
    let large = create(&mut alice, "large", &["bob", "carol", "dave"]).await;
    let large = large["id"].as_str().unwrap().to_string();
    let m = send(&mut alice, &large, "hi all", "l1").await;
    bob.ok(json!({"type": "read", "conversation": large, "cseq": m["cseq"]}))
        .await;
    let own = bob_phone.event_of("read").await;
    let own = if own["conversation"] == json!(small) {
        bob_phone.event_of("read").await
    } else {
        own
    };
    assert_eq!(own["conversation"], json!(large), "{own}");
    let head = alice.head();
    let mut alice_again = app.connect("alice").await;
    alice_again
        .ok(json!({"type": "resume", "after": head}))
        .await;
    let reads_of_large = alice_again
        .buffered()
        .iter()
        .filter(|e| e["type"] == "read" && e["conversation"] == json!(large))
        .count();
    assert_eq!(
        reads_of_large, 0,
        "no read event fanned out in the large group"
    );
    // Receipts: every member's position, paged by user id.
    let first = alice
        .ok(json!({"type": "receipts", "conversation": large, "limit": 2}))
        .await;
    assert_eq!(
        first["receipts"],
        json!([{"user": "alice", "cseq": 1}, {"user": "bob", "cseq": 1}])
    );
    assert_eq!(first["has_more"], true);
    let rest = alice
        .ok(json!({"type": "receipts", "conversation": large, "after": "bob"}))
        .await;
    assert_eq!(
        rest["receipts"],
        json!([{"user": "carol", "cseq": 0}, {"user": "dave", "cseq": 0}])
    );
    assert_eq!(rest["has_more"], false);
    let mut eve = app.connect("eve").await;
    eve.err(
        json!({"type": "receipts", "conversation": large}),
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn group_commands_cost_rate_in_proportion_to_the_members_they_reach() {
    let app = TestApp::spawn_with(|c| {
        c.group_members_per_token = 5;
        c.rate_limit_burst = 10;
        c.rate_limit_per_sec = 1;
    })
    .await;
    let mut alice = app.connect("alice").await;
    let members: Vec<String> = (0..29).map(|i| format!("m{i}")).collect();
    // 30 members reached: 6 tokens of the 10 the bucket holds.
    alice
        .ok(json!({"type": "group_create", "name": "first", "members": members}))
        .await;
    let refused = alice
        .err(
            json!({"type": "group_create", "name": "second", "members": members}),
            "rate_limited",
        )
        .await;
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("costs 6 requests"), "{message}");
    assert!(
        refused["retry_after_ms"].as_u64().unwrap() > 1000,
        "{refused}"
    );
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM conversations WHERE kind = 'group'")
            .await,
        1,
        "the refused one stored nothing"
    );
}

#[tokio::test]
async fn one_user_creates_only_so_many_users_for_others_an_hour() {
    let app = TestApp::spawn_with(|c| c.new_users_per_hour = 3).await;
    let mut alice = app.connect("alice").await;
    let _bob = app.connect("bob").await;
    let users = || async { app.db.count("SELECT count(*) FROM users").await };
    let before = users().await;
    // Four people pgchat does not know: past the three an hour; nothing is made.
    let refused = alice
        .err(
            json!({"type": "group_create", "name": "g", "members": ["n1", "n2", "n3", "n4"]}),
            "rate_limited",
        )
        .await;
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("new_users_per_hour"),
        "{refused}"
    );
    assert!(refused["retry_after_ms"].as_u64().unwrap() <= 3_600_000);
    assert_eq!(users().await, before);
    // Three are fine, and people who have connected never count.
    alice
        .ok(json!({"type": "group_create", "name": "g", "members": ["n1", "n2", "n3", "bob"]}))
        .await;
    assert_eq!(users().await, before + 3);
    // The hour's three are used: a direct message to a fourth stranger is refused, and
    // creates neither the user nor the conversation; one to bob goes.
    alice
        .err(
            json!({"type": "send", "to": "n9", "body": "hi", "client_msg_id": "k1"}),
            "rate_limited",
        )
        .await;
    assert_eq!(users().await, before + 3);
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM conversations WHERE kind = 'direct'")
            .await,
        0
    );
    alice.send_dm("bob", "hi bob", "k2").await;
    // Someone else's hour is their own.
    let mut carol = app.connect("carol").await;
    carol.send_dm("n9", "hi", "k3").await;
}
