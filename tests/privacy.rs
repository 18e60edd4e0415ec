//! Authorization and privacy: what a member who left may still learn, who may change a
//! group, what refused commands leave behind, and whose presence a session may watch.

mod common;

use std::time::Duration;

use common::{Client, TestApp};
use serde_json::{json, Value};

async fn create(c: &mut Client, name: &str, members: &[&str]) -> String {
    let reply = c
        .ok(json!({"type": "group_create", "name": name, "members": members}))
        .await;
    reply["conversation"]["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_member_removed_from_a_group_never_learns_who_joined_after() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let g = create(&mut alice, "team", &["bob", "carol"]).await;
    alice
        .ok(json!({"type": "group_remove", "conversation": g, "users": ["bob"]}))
        .await;
    // After bob left: dave joins, a message is sent, carol reads it.
    alice
        .ok(json!({"type": "group_add", "conversation": g, "users": ["dave"]}))
        .await;
    alice
        .ok(json!({"type": "send", "conversation": g, "body": "secret", "client_msg_id": "s"}))
        .await;

    // bob resumes from the start: he sees the group as it was while he was in it.
    let mut bob = app.connect("bob").await;
    let ok = bob.ok(json!({"type": "resume", "after": 0})).await;
    let replay = bob.buffered();
    assert_eq!(ok["head"], 2, "{replay:?}");
    assert_eq!(replay.len(), 2, "{replay:?}");
    assert_eq!(replay[0]["type"], "conversation");
    assert_eq!(
        replay[0]["conversation"]["members"],
        json!(["alice", "bob", "carol"])
    );
    assert_eq!(replay[1]["type"], "removed");
    assert!(
        !replay.iter().any(|e| e.to_string().contains("dave")),
        "bob learned of dave: {replay:?}"
    );

    // Nothing else about the group is open to him.
    let list = bob.ok(json!({"type": "conversations"})).await;
    assert_eq!(list["conversations"], json!([]));
    for request in [
        json!({"type": "history", "conversation": g}),
        json!({"type": "read", "conversation": g, "cseq": 1}),
        json!({"type": "typing", "conversation": g, "state": "start"}),
        json!({"type": "group_add", "conversation": g, "users": ["bob"]}),
    ] {
        let e = bob.err(request.clone(), "forbidden").await;
        assert!(!e.to_string().contains("dave"), "{request}: {e}");
    }

    // Those still in the group replay each change as it was announced.
    let mut carol = app.connect("carol").await;
    carol.ok(json!({"type": "resume", "after": 0})).await;
    let members: Vec<Value> = carol
        .buffered()
        .into_iter()
        .filter(|e| e["type"] == "conversation")
        .map(|e| e["conversation"]["members"].clone())
        .collect();
    assert_eq!(
        members,
        vec![
            json!(["alice", "bob", "carol"]),
            json!(["alice", "carol"]),
            json!(["alice", "carol", "dave"]),
        ]
    );
}

#[tokio::test]
async fn refused_commands_create_no_users() {
    let app = TestApp::spawn_with(|c| c.max_group_members = 5).await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let g = create(&mut alice, "small", &["carol"]).await;
    let users = "SELECT count(*) FROM users";
    let before = app.db.count(users).await;

    // bob is not a member: his group_add of new ids is refused, and leaves nothing.
    let many: Vec<String> = (0..5).map(|i| format!("new{i}")).collect();
    bob.err(
        json!({"type": "group_add", "conversation": g, "users": many}),
        "forbidden",
    )
    .await;
    // Over the member limit: refused, nothing left either.
    alice
        .err(
            json!({"type": "group_add", "conversation": g, "users": many}),
            "too_large",
        )
        .await;
    // A send whose client_msg_id is already used returns its message, whatever its new
    // target: it creates no user and no conversation.
    let first = alice.send_dm("carol", "hi", "k1").await;
    let again = alice.send_dm("stranger", "hi", "k1").await;
    assert_eq!(again["id"], first["id"]);
    let conversations = app.db.count("SELECT count(*) FROM conversations").await;
    assert_eq!(conversations, 2, "the group and alice–carol only");
    // A retried group_create returns its group: the new ids it names are not created.
    let made = alice
        .ok(json!({"type": "group_create", "name": "x", "members": [], "client_op_id": "op"}))
        .await;
    alice
        .ok(json!({"type": "group_create", "name": "x", "members": ["ghost"], "client_op_id": "op"}))
        .await;
    assert_eq!(made["conversation"]["members"], json!(["alice"]));

    assert_eq!(app.db.count(users).await, before, "no users rows were left");
    let stray = app
        .db
        .count("SELECT count(*) FROM users WHERE id LIKE 'new%' OR id IN ('stranger', 'ghost')")
        .await;
    assert_eq!(stray, 0);
}

#[tokio::test]
async fn only_admins_remove_others_and_anyone_may_leave() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let g = create(&mut alice, "club", &["bob", "carol", "dave"]).await;
    let state = alice
        .ok(json!({"type": "group_add", "conversation": g, "users": ["bob"]}))
        .await;
    assert_eq!(state["conversation"]["admins"], json!(["alice"]));

    // bob is a member, not an admin: he may not remove carol, nor name admins.
    let e = bob
        .err(
            json!({"type": "group_remove", "conversation": g, "users": ["carol"]}),
            "forbidden",
        )
        .await;
    assert!(e["message"].as_str().unwrap().contains("admin"), "{e}");
    bob.err(
        json!({"type": "group_add", "conversation": g, "users": ["bob"], "admin": true}),
        "forbidden",
    )
    .await;

    // The creator names him admin; then he may remove others, but not the creator.
    let named = alice
        .ok(json!({"type": "group_add", "conversation": g, "users": ["bob"], "admin": true}))
        .await;
    assert_eq!(named["conversation"]["admins"], json!(["alice", "bob"]));
    let e = bob.event_of("conversation").await; // the creation
    assert_eq!(e["conversation"]["admins"], json!(["alice"]));
    let e = bob.event_of("conversation").await; // bob named admin
    assert_eq!(e["conversation"]["admins"], json!(["alice", "bob"]));
    let removed = bob
        .ok(json!({"type": "group_remove", "conversation": g, "users": ["carol"]}))
        .await;
    assert_eq!(
        removed["conversation"]["members"],
        json!(["alice", "bob", "dave"])
    );
    bob.err(
        json!({"type": "group_remove", "conversation": g, "users": ["alice"]}),
        "forbidden",
    )
    .await;
    // Only the creator names admins.
    bob.err(
        json!({"type": "group_add", "conversation": g, "users": ["dave"], "admin": true}),
        "forbidden",
    )
    .await;

    // Anyone may leave, by group_leave or by removing only themself.
    let mut dave = app.connect("dave").await;
    dave.ok(json!({"type": "group_remove", "conversation": g, "users": ["dave"]}))
        .await;
    let list = alice.ok(json!({"type": "conversations"})).await;
    assert_eq!(list["conversations"][0]["members"], json!(["alice", "bob"]));
    assert_eq!(list["conversations"][0]["admins"], json!(["alice", "bob"]));
    bob.ok(json!({"type": "group_leave", "conversation": g}))
        .await;
}

#[tokio::test]
async fn presence_is_told_only_about_users_who_share_a_conversation() {
    let app = TestApp::spawn_with(|c| {
        c.presence_open = false;
        c.presence_grace_ms = 200;
    })
    .await;
    let mut watcher = app.connect("watcher").await;
    watcher.send_dm("friend", "hi", "1").await;
    let mut stranger = app.connect("stranger").await;
    stranger.send_dm("someone", "hi", "1").await;

    let snapshot = watcher
        .ok(json!({"type": "presence_subscribe", "users": ["friend", "stranger", "watcher"]}))
        .await;
    assert_eq!(
        snapshot["presence"],
        json!([
            {"user": "friend", "status": "offline", "last_seen": null},
            {"user": "stranger", "status": "unknown"},
            {"user": "watcher", "status": "online", "last_seen": null},
        ])
    );
    // stranger goes away, then friend comes: the first presence event is friend's.
    stranger.close().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let _friend = app.connect("friend").await;
    let e = watcher
        .next_of("presence", Duration::from_secs(10))
        .await
        .expect("friend's presence");
    assert_eq!(e["user"], "friend");
    assert_eq!(e["status"], "online");
}
