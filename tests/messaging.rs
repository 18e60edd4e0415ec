//! Sending, delivery, history, conversations, resume: the durable stream end to end.

mod common;

use std::collections::BTreeSet;

use common::TestApp;
use serde_json::json;

#[tokio::test]
async fn a_direct_message_reaches_the_recipient_live_and_the_sender_gets_the_ack() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    assert_eq!(bob.head(), 0);

    let sent = alice.send_dm("bob", "hello bob", "m1").await;
    assert_eq!(sent["body"], "hello bob");
    assert_eq!(sent["cseq"], 1);
    assert_eq!(sent["sender"]["id"], "alice");
    assert_eq!(sent["sender"]["name"], "alice name");
    assert_eq!(sent["client_msg_id"], "m1");
    let conversation = sent["conversation"].as_str().unwrap().to_string();

    // The first message creates the conversation: bob sees it, then the message.
    let e = bob.event().await;
    assert_eq!(e["type"], "conversation");
    assert_eq!(e["seq"], 1);
    assert_eq!(e["conversation"]["id"], conversation.as_str());
    assert_eq!(e["conversation"]["kind"], "direct");
    assert_eq!(e["conversation"]["members"], json!(["alice", "bob"]));
    let e = bob.event().await;
    assert_eq!(e["type"], "message");
    assert_eq!(e["seq"], 2);
    assert_eq!(e["message"], sent);

    // The sender's own session gets its copy too.
    assert_eq!(alice.event_of("message").await["message"], sent);

    // The reply goes the other way through the same conversation.
    let back = bob
        .ok(json!({"type": "send", "conversation": conversation, "body": "hi alice", "client_msg_id": "b1"}))
        .await;
    assert_eq!(back["message"]["cseq"], 2);
    let e = alice.event_of("message").await;
    assert_eq!(e["message"]["body"], "hi alice");
    assert_eq!(e["seq"], 3);
}

#[tokio::test]
async fn a_retried_send_returns_the_first_message_and_stores_nothing_new() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let first = alice.send_dm("bob", "once", "same-id").await;
    let again = alice.send_dm("bob", "once", "same-id").await;
    assert_eq!(first, again);
    // Even with a different body, the key decides.
    let third = alice.send_dm("bob", "changed", "same-id").await;
    assert_eq!(first, third);

    let n = app.db.count("SELECT count(*) FROM messages").await;
    assert_eq!(n, 1);
    let head = app
        .db
        .count("SELECT head FROM users WHERE id = 'bob'")
        .await;
    assert_eq!(head, 2, "one conversation event and one message event");
}

#[tokio::test]
async fn a_retry_pipelined_behind_its_first_send_returns_the_same_message() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    // Sent back to back, so that they are likely queued together, with other sends around.
    let sends = [
        ("a", "k1"),
        ("b", "k2"),
        ("a again", "k1"),
        ("c", "k3"),
        ("a thrice", "k1"),
    ];
    for (i, (body, key)) in sends.iter().enumerate() {
        let request =
            json!({"type": "send", "to": "bob", "body": body, "client_msg_id": key, "ref": i});
        alice.send_text(request.to_string()).await;
    }
    let mut replies = Vec::new();
    for i in 0..sends.len() {
        let reply = alice.reply_to_int(i as i64).await;
        assert_eq!(reply["type"], "ok", "{reply}");
        replies.push(reply["message"].clone());
    }
    assert_eq!(replies[0], replies[2]);
    assert_eq!(replies[0], replies[4]);
    assert_eq!(replies[0]["body"], "a");
    let cseqs: Vec<i64> = [0, 1, 3]
        .iter()
        .map(|&i| replies[i]["cseq"].as_i64().unwrap())
        .collect();
    assert_eq!(
        cseqs,
        vec![1, 2, 3],
        "three messages, numbered without a gap"
    );
    assert_eq!(app.db.count("SELECT count(*) FROM messages").await, 3);
}

#[tokio::test]
async fn a_message_sent_while_offline_arrives_on_resume_in_order() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    alice.send_dm("bob", "one", "1").await;
    let mut seen = 0;
    while seen < 2 {
        seen = bob.event().await["seq"].as_i64().unwrap();
    }
    bob.close().await;

    for i in 2..=6 {
        alice
            .send_dm("bob", &format!("msg {i}"), &i.to_string())
            .await;
    }

    // A later session resumes after what the first one saw.
    let mut bob = app.connect("bob").await;
    assert_eq!(bob.head(), 7);
    let reply = bob.ok(json!({"type": "resume", "after": seen})).await;
    assert_eq!(reply["head"], 7);
    let replayed = bob.buffered();
    let seqs: Vec<i64> = replayed
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        vec![3, 4, 5, 6, 7],
        "every missed event, in order, before the reply"
    );
    let bodies: Vec<&str> = replayed
        .iter()
        .map(|e| e["message"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, vec!["msg 2", "msg 3", "msg 4", "msg 5", "msg 6"]);
}

#[tokio::test]
async fn resume_from_zero_replays_the_whole_stream_and_live_events_follow() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    alice.send_dm("bob", "a", "1").await;
    alice.send_dm("carol", "b", "2").await;

    let mut bob = app.connect("bob").await;
    bob.ok(json!({"type": "resume", "after": 0})).await;
    let kinds: Vec<String> = bob
        .buffered()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, vec!["conversation", "message"]);

    alice.send_dm("bob", "live", "3").await;
    let e = bob.event().await;
    assert_eq!(e["seq"], 3);
    assert_eq!(e["message"]["body"], "live");
}

#[tokio::test]
async fn resume_beyond_the_head_is_a_bad_request_and_pruned_streams_need_a_resync() {
    let app = TestApp::spawn().await;
    let mut bob = app.connect("bob").await;
    let e = bob
        .err(json!({"type": "resume", "after": 5}), "bad_request")
        .await;
    assert!(e["message"].as_str().unwrap().contains("head"), "{e}");

    let mut alice = app.connect("alice").await;
    alice.send_dm("bob", "x", "1").await;
    alice.send_dm("bob", "y", "2").await;
    // Retention prunes bob's two oldest events (made old here), as the server's pruner does.
    let db = app.db.client().await;
    db.execute(
        "UPDATE event_queue SET created_at = now() - interval '2 days'
         WHERE user_id = 'bob' AND seq <= 2",
        &[],
    )
    .await
    .unwrap();
    let pruned: i64 = db
        .query_one("SELECT prune_events(interval '1 day', 100)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pruned, 2);
    bob.err(json!({"type": "resume", "after": 1}), "resync_required")
        .await;
    // From the pruned point on, resuming works.
    let ok = bob.ok(json!({"type": "resume", "after": 2})).await;
    assert_eq!(ok["head"], 3);
}

#[tokio::test]
async fn concurrent_senders_to_one_recipient_keep_its_seq_gap_free() {
    let app = TestApp::spawn().await;
    let mut bob = app.connect("bob").await;
    let senders = 6;
    let per_sender = 25;
    let mut tasks = Vec::new();
    for s in 0..senders {
        let mut c = app.connect(&format!("s{s}")).await;
        tasks.push(tokio::spawn(async move {
            // Pipeline the sends: all requests first, then the replies.
            for i in 0..per_sender {
                c.send_text(
                    json!({"type": "send", "to": "bob", "body": format!("{s}:{i}"),
                           "client_msg_id": format!("{i}"), "ref": format!("{i}")})
                    .to_string(),
                )
                .await;
            }
            for i in 0..per_sender {
                let reply = c.reply_to(&format!("{i}")).await;
                assert_eq!(reply["type"], "ok", "{reply}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Each sender opened a conversation with bob (one event) and sent per_sender messages.
    let expected = senders * (per_sender + 1);
    let mut seqs = Vec::new();
    let mut per_conversation: std::collections::HashMap<String, Vec<i64>> = Default::default();
    while seqs.len() < expected {
        let e = bob.event().await;
        seqs.push(e["seq"].as_i64().unwrap());
        if e["type"] == "message" {
            per_conversation
                .entry(e["message"]["conversation"].as_str().unwrap().into())
                .or_default()
                .push(e["message"]["cseq"].as_i64().unwrap());
        }
    }
    let want: Vec<i64> = (1..=expected as i64).collect();
    assert_eq!(seqs, want, "live delivery is in seq order with no gap");
    for (c, cseqs) in per_conversation {
        let want: Vec<i64> = (1..=per_sender as i64).collect();
        assert_eq!(cseqs, want, "cseq of {c} is gap-free and ordered");
    }
    // And the stored stream agrees.
    let db = app.db.client().await;
    let stored: Vec<i64> = db
        .query(
            "SELECT seq FROM event_queue WHERE user_id = 'bob' ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, want);
}

#[tokio::test]
async fn history_pages_backwards_with_has_more_and_total() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let first = alice.send_dm("bob", "m1", "1").await;
    let conversation = first["conversation"].as_str().unwrap().to_string();
    for i in 2..=5 {
        alice.send_dm("bob", &format!("m{i}"), &i.to_string()).await;
    }
    let page = alice
        .ok(json!({"type": "history", "conversation": conversation, "limit": 2}))
        .await;
    let bodies = common::bodies(&page);
    assert_eq!(bodies, vec!["m4", "m5"], "the newest page, oldest first");
    assert_eq!(page["has_more"], true);
    assert_eq!(page["total"], 5);
    assert_eq!(page["messages"][0]["sender"]["name"], "alice name");

    let older = alice
        .ok(json!({"type": "history", "conversation": conversation, "before_cseq": 4, "limit": 10}))
        .await;
    let cseqs: Vec<i64> = older["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["cseq"].as_i64().unwrap())
        .collect();
    assert_eq!(cseqs, vec![1, 2, 3]);
    assert_eq!(older["has_more"], false);

    // bob is a member too; a default page has all five.
    let mut bob = app.connect("bob").await;
    let all = bob
        .ok(json!({"type": "history", "conversation": conversation}))
        .await;
    assert_eq!(all["messages"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn a_non_member_can_neither_send_to_nor_read_a_conversation() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let m = alice.send_dm("bob", "private", "1").await;
    let conversation = m["conversation"].as_str().unwrap().to_string();

    let mut eve = app.connect("eve").await;
    eve.err(
        json!({"type": "send", "conversation": conversation, "body": "let me in", "client_msg_id": "e1"}),
        "forbidden",
    )
    .await;
    eve.err(
        json!({"type": "history", "conversation": conversation}),
        "forbidden",
    )
    .await;
    eve.err(
        json!({"type": "send", "conversation": "c-nope", "body": "x", "client_msg_id": "e2"}),
        "not_found",
    )
    .await;
    eve.err(
        json!({"type": "history", "conversation": "c-nope"}),
        "not_found",
    )
    .await;

    // The refused sends stored nothing, and eve's stream is empty.
    let n = app.db.count("SELECT count(*) FROM messages").await;
    assert_eq!(n, 1);
    let eve_events = app
        .db
        .count("SELECT count(*) FROM event_queue WHERE user_id = 'eve'")
        .await;
    assert_eq!(eve_events, 0);
}

#[tokio::test]
async fn a_refused_send_in_a_batch_does_not_harm_the_others() {
    let app = TestApp::spawn_with(|c| c.writers = 1).await;
    let mut alice = app.connect("alice").await;
    // Pipelined so that they share batches: good, bad, good.
    for (i, frame) in [
        json!({"type": "send", "to": "bob", "body": "ok 1", "client_msg_id": "1"}),
        json!({"type": "send", "conversation": "c-missing", "body": "bad", "client_msg_id": "2"}),
        json!({"type": "send", "to": "bob", "body": "ok 2", "client_msg_id": "3"}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut f = frame;
        f["ref"] = json!(i.to_string());
        alice.send_text(f.to_string()).await;
    }
    assert_eq!(alice.reply_to("0").await["type"], "ok");
    assert_eq!(alice.reply_to("1").await["code"], "not_found");
    let third = alice.reply_to("2").await;
    assert_eq!(third["message"]["cseq"], 2);
}

#[tokio::test]
async fn conversations_lists_members_last_message_and_unread() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    alice.send_dm("bob", "to bob 1", "1").await;
    alice.send_dm("bob", "to bob 2", "2").await;
    alice.send_dm("carol", "to carol", "3").await;

    let mut bob = app.connect("bob").await;
    let list = bob.ok(json!({"type": "conversations"})).await;
    let convs = list["conversations"].as_array().unwrap();
    assert_eq!(convs.len(), 1);
    assert_eq!(convs[0]["kind"], "direct");
    assert_eq!(convs[0]["members"], json!(["alice", "bob"]));
    assert_eq!(convs[0]["last_message"]["body"], "to bob 2");
    assert_eq!(convs[0]["unread"], 2);

    let list = alice.ok(json!({"type": "conversations"})).await;
    let convs = list["conversations"].as_array().unwrap();
    let ids: BTreeSet<&str> = convs.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(
        convs[0]["last_message"]["body"], "to carol",
        "most recent first"
    );
    assert_eq!(convs[0]["unread"], 0, "your own messages are not unread");

    // Replying marks what came before as read; the other side has one unread.
    bob.send_dm("alice", "back to you", "b1").await;
    let list = bob.ok(json!({"type": "conversations"})).await;
    assert_eq!(list["conversations"][0]["unread"], 0);
    let list = alice.ok(json!({"type": "conversations"})).await;
    assert_eq!(
        list["conversations"][0]["last_message"]["body"],
        "back to you"
    );
    assert_eq!(list["conversations"][0]["unread"], 1);
}

#[tokio::test]
async fn a_user_can_hold_several_sessions_and_each_gets_every_event() {
    let app = TestApp::spawn().await;
    let mut bob1 = app.connect("bob").await;
    let mut bob2 = app.connect("bob").await;
    let mut alice = app.connect("alice").await;
    let m = alice.send_dm("bob", "both of you", "1").await;
    assert_eq!(bob1.event_of("message").await["message"], m);
    assert_eq!(bob2.event_of("message").await["message"], m);
}

#[tokio::test]
async fn a_user_can_write_to_themself() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let m = alice.send_dm("alice", "note to self", "1").await;
    let e = alice.event_of("conversation").await;
    assert_eq!(e["conversation"]["members"], json!(["alice"]));
    assert_eq!(alice.event_of("message").await["message"], m);
}

#[tokio::test]
async fn ping_answers_ok() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let r = alice.ok(json!({"type": "ping"})).await;
    assert_eq!(r, json!({"type": "ok", "ref": "r1"}));
}

#[tokio::test]
async fn replies_come_in_request_order_even_when_pipelined() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    // A slow request (a send, which commits) then a fast one (ping).
    alice
        .send_text(
            json!({"type": "send", "to": "bob", "body": "x", "client_msg_id": "1", "ref": 1})
                .to_string(),
        )
        .await;
    alice
        .send_text(json!({"type": "ping", "ref": 2}).to_string())
        .await;
    let mut refs = Vec::new();
    while refs.len() < 2 {
        let f = alice.recv().await.unwrap();
        if f["type"] == "ok" {
            refs.push(f["ref"].as_i64().unwrap());
        }
    }
    assert_eq!(refs, vec![1, 2]);
}

/// Connects `user` with `?after=N`.
async fn connect_after(app: &TestApp, user: &str, after: i64) -> common::Client {
    common::Client::connect_url(
        &format!("ws://{}/ws?after={after}", app.addr),
        &app.token(user),
    )
    .await
}

#[tokio::test]
async fn a_session_started_after_n_gets_every_later_event_in_order_then_live_ones() {
    // A feed that keeps one frame: the replay is read from the table, while more events
    // commit meanwhile.
    let app = TestApp::spawn_with(|c| c.recent_events_per_user = 1).await;
    let mut alice = app.connect("alice").await;
    for i in 0..10 {
        alice.send_dm("bob", &i.to_string(), &format!("m{i}")).await;
    }
    let sender = tokio::spawn(async move {
        for i in 10..40 {
            alice.send_dm("bob", &i.to_string(), &format!("m{i}")).await;
        }
        alice
    });
    let mut bob = connect_after(&app, "bob", 3).await;
    assert_eq!(bob.hello["after"], 3, "{}", bob.hello);
    // The stream: the conversation (seq 1), then the messages (seq 2..=41). From 3 on,
    // every event in order, replayed and live alike, with no resume.
    let mut seen = Vec::new();
    while seen.len() < 38 {
        let e = bob.event().await;
        seen.push(e["seq"].as_i64().unwrap());
    }
    assert_eq!(seen, (4..=41).collect::<Vec<i64>>());
    sender.await.unwrap();
}

#[tokio::test]
async fn a_session_cannot_start_after_a_seq_it_could_not_have_seen() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    alice.send_dm("bob", "one", "m1").await;
    // Beyond the head: the first frame after hello says to resync, and nothing follows.
    let mut bob = connect_after(&app, "bob", 99).await;
    let first = bob.recv().await.unwrap();
    assert_eq!(
        (first["type"].as_str(), first["code"].as_str()),
        (Some("error"), Some("resync_required")),
        "{first}"
    );
    alice.send_dm("bob", "two", "m2").await;
    assert_eq!(
        bob.recv_within(std::time::Duration::from_millis(300)).await,
        Err(()),
        "no events until a resume succeeds"
    );
    let ok = bob.ok(json!({"type": "resume", "after": 0})).await;
    assert_eq!(ok["head"], 3);
    // Pruned past N: the same.
    app.db
        .client()
        .await
        .batch_execute(
            "UPDATE event_queue SET created_at = now() - interval '2 days' WHERE user_id = 'bob';
             SELECT prune_events(interval '1 day', 100);",
        )
        .await
        .unwrap();
    let mut bob = connect_after(&app, "bob", 1).await;
    let first = bob.recv().await.unwrap();
    assert_eq!(first["code"], "resync_required", "{first}");
    // Not a number: refused before the upgrade.
    let refused = common::try_connect_url(
        &format!("ws://{}/ws?after=-1", app.addr),
        Some(&app.token("bob")),
    )
    .await;
    match refused {
        Err((400, body)) => assert_eq!(body["error"]["code"], "bad_request", "{body}"),
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("?after=-1 must be refused"),
    }
}

#[tokio::test]
async fn conversations_are_paged_and_a_user_in_ten_thousand_groups_gets_bounded_pages() {
    let app = TestApp::spawn_with(|c| {
        c.rate_limit_per_sec = 10_000;
        c.rate_limit_burst = 10_000;
    })
    .await;
    let mut alice = app.connect("alice").await;
    // 10,000 groups of alice's, with two others each, made in SQL.
    app.db
        .client()
        .await
        .batch_execute(
            "INSERT INTO users (id) VALUES ('p1'), ('p2');
             INSERT INTO conversations (id, kind, name, created_by, version, created_at)
             SELECT 'g' || g, 'group', 'group ' || g, 'alice', 1,
                    now() - g * interval '1 second'
             FROM generate_series(1, 10000) g;
             INSERT INTO members (conversation_id, user_id, admin)
             SELECT 'g' || g, u, u = 'alice'
             FROM generate_series(1, 10000) g, unnest(ARRAY['alice', 'p1', 'p2']) u;",
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut request = json!({"type": "conversations"});
        if let Some(b) = &before {
            request["before"] = json!(b);
        }
        let page = alice.ok(request).await;
        let entries = page["conversations"].as_array().unwrap();
        assert!(entries.len() <= 100, "a page holds at most 100");
        assert!(
            page.to_string().len() < 256 * 1024,
            "a page of a user in 10,000 groups stays small"
        );
        seen.extend(
            entries
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string()),
        );
        if page["has_more"] == false {
            assert!(page["next"].is_null());
            break;
        }
        before = Some(page["next"].as_str().unwrap().to_string());
    }
    // Every conversation once, most recently active first (g1 is the newest).
    assert_eq!(seen.len(), 10_000);
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 10_000);
    assert_eq!((seen[0].as_str(), seen[9_999].as_str()), ("g1", "g10000"));
    // The same pages over HTTP.
    let http = reqwest::Client::new();
    let page: serde_json::Value = http
        .get(app.http("/api/conversations?limit=2"))
        .bearer_auth(app.token("alice"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["conversations"].as_array().unwrap().len(), 2);
    let next = page["next"].as_str().unwrap();
    let second: serde_json::Value = http
        .get(app.http(&format!("/api/conversations?limit=2&before={next}")))
        .bearer_auth(app.token("alice"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(second["conversations"][0]["id"], "g3", "{second}");
}
