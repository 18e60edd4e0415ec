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
