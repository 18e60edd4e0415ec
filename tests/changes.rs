//! Messages people change, answer and find (protocol v1.2): edit, delete, react, replies,
//! mentions and their unread counts, search. Each change is a durable event in every
//! member's stream, gap-free, replayed by resume; refusals write nothing; a deletion
//! leaves no trace of the text anywhere in the database.

mod common;

use common::cluster::Cluster;
use common::{Client, TestApp};
use serde_json::{json, Value};

/// alice (the creator, an admin), bob and carol in a group; its id.
async fn group(alice: &mut Client) -> String {
    let g = alice
        .ok(json!({"type": "group_create", "name": "g", "members": ["bob", "carol"]}))
        .await;
    g["conversation"]["id"].as_str().unwrap().to_string()
}

async fn send(c: &mut Client, conversation: &str, body: &str, key: &str) -> Value {
    c.ok(json!({"type": "send", "conversation": conversation, "body": body, "client_msg_id": key}))
        .await["message"]
        .clone()
}

/// The events of `kind` among what `c` received, waiting for `n` of them.
async fn events_of(c: &mut Client, kind: &str, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let e = c.event().await;
        if e["type"] == kind {
            out.push(e);
        }
    }
    out
}

async fn head(app: &TestApp, user: &str) -> i64 {
    app.db
        .count(&format!(
            "SELECT head FROM pgchat.users WHERE id = '{user}'"
        ))
        .await
}

async fn search(c: &mut Client, mut q: Value) -> Value {
    q["type"] = json!("search");
    c.ok(q).await
}

async fn history(c: &mut Client, conversation: &str) -> Vec<Value> {
    c.ok(json!({"type": "history", "conversation": conversation}))
        .await["messages"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn an_edit_reaches_every_member_and_history_shows_the_new_body() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let gid = group(&mut alice).await;
    let m = send(&mut alice, &gid, "helo world", "a1").await;
    assert_eq!(m["edited_at"], Value::Null);
    assert_eq!(m["deleted"], false);
    assert_eq!(m["mentions"], json!([]));
    assert_eq!(m["reactions"], json!([]));
    assert_eq!(m["reply_to"], Value::Null);

    let edited = alice
        .ok(json!({"type": "edit", "conversation": gid, "cseq": 1, "body": "hello world"}))
        .await["message"]
        .clone();
    assert_eq!(edited["body"], "hello world");
    assert_eq!(edited["id"], m["id"]);
    assert_eq!(edited["cseq"], 1);
    assert_eq!(edited["created_at"], m["created_at"]);
    assert!(edited["edited_at"].is_string(), "{edited}");

    let e = bob.event_of("message_edited").await;
    assert_eq!(e["message"], edited);
    let seq = e["seq"].as_i64().unwrap();
    assert_eq!(alice.event_of("message_edited").await["message"], edited);
    assert_eq!(history(&mut bob, &gid).await[0], edited);

    // The same body again: done, with no second event (a retry after `unavailable`).
    let before = head(&app, "bob").await;
    let again = alice
        .ok(json!({"type": "edit", "conversation": gid, "cseq": 1, "body": "hello world"}))
        .await;
    assert_eq!(again["message"], edited);
    assert_eq!(head(&app, "bob").await, before);

    // Only the sender edits; a replayed resume shows the same event at the same seq.
    bob.err(
        json!({"type": "edit", "conversation": gid, "cseq": 1, "body": "mine now"}),
        "forbidden",
    )
    .await;
    let mut late = app.connect("bob").await;
    late.ok(json!({"type": "resume", "after": seq - 1})).await;
    let replayed = late.event().await;
    assert_eq!(replayed["type"], "message_edited");
    assert_eq!(replayed["seq"], seq);
    assert_eq!(replayed["message"], edited);
}

#[tokio::test]
async fn refused_changes_say_why_and_write_nothing() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let mut dave = app.connect("dave").await;
    let gid = group(&mut alice).await;
    send(&mut alice, &gid, "one", "a1").await;
    send(&mut bob, &gid, "two", "b1").await;
    let rows = || async {
        app.db
            .count(
                "SELECT (SELECT count(*) FROM pgchat.event_queue) * 1000
                      + (SELECT count(*) FROM pgchat.reactions) * 100
                      + (SELECT count(*) FROM pgchat.mentions) * 10
                      + (SELECT count(*) FROM pgchat.messages WHERE edited_at IS NOT NULL OR deleted)",
            )
            .await
    };
    let before = rows().await;
    let long = "x".repeat(4001);
    for (request, code) in [
        (
            json!({"type": "edit", "conversation": gid, "cseq": 2, "body": "not mine"}),
            "forbidden",
        ),
        (
            json!({"type": "edit", "conversation": gid, "cseq": 9, "body": "x"}),
            "not_found",
        ),
        (
            json!({"type": "edit", "conversation": "nope", "cseq": 1, "body": "x"}),
            "not_found",
        ),
        (
            json!({"type": "edit", "conversation": gid, "cseq": 1, "body": long}),
            "too_large",
        ),
        (
            json!({"type": "edit", "conversation": gid, "cseq": 1, "body": ""}),
            "bad_request",
        ),
        (
            json!({"type": "edit", "conversation": gid, "cseq": 0, "body": "x"}),
            "bad_request",
        ),
        (
            json!({"type": "delete", "conversation": gid, "cseq": 9}),
            "not_found",
        ),
        (
            json!({"type": "react", "conversation": gid, "cseq": 9, "emoji": "👍", "on": true}),
            "not_found",
        ),
        (
            json!({"type": "react", "conversation": gid, "cseq": 1, "emoji": "", "on": true}),
            "bad_request",
        ),
        (
            json!({"type": "react", "conversation": gid, "cseq": 1, "emoji": "   ", "on": true}),
            "bad_request",
        ),
        (
            json!({"type": "react", "conversation": gid, "cseq": 1, "emoji": "e".repeat(33), "on": true}),
            "too_large",
        ),
        (
            json!({"type": "react", "conversation": gid, "cseq": 1, "emoji": "👍"}),
            "bad_request",
        ),
        (
            json!({"type": "send", "conversation": gid, "body": "r", "client_msg_id": "r1", "reply_to": 7}),
            "bad_request",
        ),
        (
            json!({"type": "send", "conversation": gid, "body": "m", "client_msg_id": "m1", "mentions": ["dave"]}),
            "bad_request",
        ),
        (
            json!({"type": "send", "conversation": gid, "body": "m", "client_msg_id": "m2", "mentions": ["not an id"]}),
            "bad_request",
        ),
        (
            json!({"type": "send", "conversation": gid, "body": "m", "client_msg_id": "m3",
                "mentions": (0..51).map(|i| format!("u{i}")).collect::<Vec<_>>()}),
            "too_large",
        ),
    ] {
        let reply = alice.err(request.clone(), code).await;
        assert!(!reply["message"].as_str().unwrap().is_empty(), "{reply}");
    }
    // Neither the sender nor an admin; not a member at all.
    bob.err(
        json!({"type": "delete", "conversation": gid, "cseq": 1}),
        "forbidden",
    )
    .await;
    for request in [
        json!({"type": "edit", "conversation": gid, "cseq": 1, "body": "x"}),
        json!({"type": "delete", "conversation": gid, "cseq": 1}),
        json!({"type": "react", "conversation": gid, "cseq": 1, "emoji": "👍", "on": true}),
    ] {
        dave.err(request, "forbidden").await;
    }
    assert_eq!(rows().await, before, "nothing refused wrote a row");

    // A reply to, or a mention of a stranger in, a direct conversation that does not
    // exist yet is refused without making the conversation.
    let convs = app
        .db
        .count("SELECT count(*) FROM pgchat.conversations")
        .await;
    alice
        .err(json!({"type": "send", "to": "erin", "body": "r", "client_msg_id": "d1", "reply_to": 1}), "bad_request")
        .await;
    alice
        .err(json!({"type": "send", "to": "erin", "body": "r", "client_msg_id": "d2", "mentions": ["bob"]}), "bad_request")
        .await;
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM pgchat.conversations")
            .await,
        convs
    );
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM pgchat.users WHERE id = 'erin'")
            .await,
        0
    );
    // Mentioning the recipient of a first direct message is fine.
    let dm = alice
        .ok(json!({"type": "send", "to": "erin", "body": "hi @erin", "client_msg_id": "d3", "mentions": ["erin"]}))
        .await;
    assert_eq!(dm["message"]["mentions"], json!(["erin"]));
}

#[tokio::test]
async fn a_deleted_message_is_a_tombstone_and_its_text_is_nowhere_in_the_database() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let mut carol = app.connect("carol").await;
    let gid = group(&mut alice).await;
    let secret = "the launch code is swordfish";
    let m = bob
        .ok(
            json!({"type": "send", "conversation": gid, "body": secret, "client_msg_id": "b1",
                   "mentions": ["carol"]}),
        )
        .await["message"]
        .clone();
    let reply = carol
        .ok(
            json!({"type": "send", "conversation": gid, "body": "what?", "client_msg_id": "c1",
                   "reply_to": 1}),
        )
        .await["message"]
        .clone();
    assert_eq!(
        reply["reply_to"],
        json!({"cseq": 1, "sender": "bob", "snippet": secret})
    );
    for (who, emoji) in [(&mut alice, "😱"), (&mut carol, "🤫")] {
        who.ok(
            json!({"type": "react", "conversation": gid, "cseq": 1, "emoji": emoji, "on": true}),
        )
        .await;
    }
    let reaction_seq = events_of(&mut bob, "reaction", 2).await[0]["seq"]
        .as_i64()
        .unwrap();

    // alice is an admin of the group: she may delete bob's message.
    alice
        .ok(json!({"type": "delete", "conversation": gid, "cseq": 1}))
        .await;
    for c in [&mut alice, &mut bob, &mut carol] {
        let e = c.event_of("message_deleted").await;
        assert_eq!(e["conversation"], gid.as_str());
        assert_eq!(e["cseq"], 1);
        assert_eq!(e["id"], m["id"]);
    }
    let page = history(&mut carol, &gid).await;
    let tomb = &page[0];
    assert_eq!(tomb["deleted"], true);
    assert_eq!(tomb["body"], "");
    assert_eq!(tomb["mentions"], json!([]));
    assert_eq!(tomb["reactions"], json!([]));
    assert_eq!(tomb["reply_to"], Value::Null);
    assert_eq!(tomb["id"], m["id"]);
    assert_eq!(tomb["sender"], m["sender"]);
    assert_eq!(tomb["created_at"], m["created_at"]);
    // The reply's snippet follows the deletion.
    assert_eq!(page[1]["reply_to"]["snippet"], "");

    // Deleting again is done, with no new event; editing or reacting is not_found.
    let before = head(&app, "carol").await;
    bob.ok(json!({"type": "delete", "conversation": gid, "cseq": 1}))
        .await;
    assert_eq!(head(&app, "carol").await, before);
    bob.err(
        json!({"type": "edit", "conversation": gid, "cseq": 1, "body": "x"}),
        "not_found",
    )
    .await;
    bob.err(
        json!({"type": "react", "conversation": gid, "cseq": 1, "emoji": "👍", "on": true}),
        "not_found",
    )
    .await;

    // Nothing in the database holds the text, the mention or the reactions any more.
    let client = app.db.client().await;
    let dump: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM pgchat.messages WHERE body LIKE '%swordfish%')
                  + (SELECT count(*) FROM pgchat.event_queue
                     WHERE payload::text LIKE '%swordfish%' OR payload::text LIKE '%😱%'
                        OR payload::text LIKE '%🤫%')
                  + (SELECT count(*) FROM pgchat.conversation_states WHERE state::text LIKE '%swordfish%')
                  + (SELECT count(*) FROM pgchat.reactions)
                  + (SELECT count(*) FROM pgchat.reaction_counts)
                  + (SELECT count(*) FROM pgchat.reaction_changes)
                  + (SELECT count(*) FROM pgchat.mentions)
                  + (SELECT count(*) FROM pgchat.messages WHERE mentions IS NOT NULL AND cseq = 1)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dump, 0);
    let entry = carol.ok(json!({"type": "conversations"})).await;
    let mine = entry["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == gid.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        mine["mentions_unread"], 0,
        "the deleted mention no longer counts"
    );

    // A resume from before shows the reaction events as the deletion they now are, at the
    // same seqs, and the original message as its tombstone: no emoji, no text.
    let mut late = app.connect("bob").await;
    late.ok(json!({"type": "resume", "after": 0})).await;
    let mut seqs = Vec::new();
    for e in late.buffered() {
        seqs.push(e["seq"].as_i64().unwrap());
        let text = e.to_string();
        assert!(
            !text.contains("swordfish") && !text.contains("😱"),
            "{text}"
        );
        if e["seq"] == reaction_seq {
            assert_eq!(e["type"], "message_deleted", "{e}");
            assert_eq!(e["cseq"], 1);
        }
    }
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "gap-free"
    );
}

#[tokio::test]
async fn in_a_direct_conversation_only_the_sender_deletes() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let m = alice.send_dm("bob", "hi", "a1").await;
    let c = m["conversation"].as_str().unwrap().to_string();
    bob.err(
        json!({"type": "delete", "conversation": c, "cseq": 1}),
        "forbidden",
    )
    .await;
    alice
        .ok(json!({"type": "delete", "conversation": c, "cseq": 1}))
        .await;
    assert_eq!(bob.event_of("message_deleted").await["cseq"], 1);
    let list = bob.ok(json!({"type": "conversations"})).await;
    let last = &list["conversations"][0]["last_message"];
    assert_eq!(last["deleted"], true);
    assert_eq!(last["body"], "");
}

#[tokio::test]
async fn reactions_are_counted_once_each_with_me_and_at_most_twenty_emoji() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let mut carol = app.connect("carol").await;
    let gid = group(&mut alice).await;
    send(&mut alice, &gid, "react to me", "a1").await;
    let react = |emoji: &str, on: bool| json!({"type": "react", "conversation": gid, "cseq": 1, "emoji": emoji, "on": on});
    bob.ok(react("👍", true)).await;
    carol.ok(react("🎉", true)).await;
    carol.ok(react("👍", true)).await;
    let e = alice.event_of("reaction").await;
    assert_eq!(
        (
            &e["conversation"],
            &e["cseq"],
            &e["user"],
            &e["emoji"],
            &e["on"]
        ),
        (
            &json!(gid),
            &json!(1),
            &json!("bob"),
            &json!("👍"),
            &json!(true)
        )
    );
    // Again on: done, no event.
    let before = head(&app, "alice").await;
    bob.ok(react("👍", true)).await;
    bob.ok(react("🙃", false)).await;
    assert_eq!(head(&app, "alice").await, before);

    let seen_by = |page: &[Value]| page[0]["reactions"].clone();
    assert_eq!(
        seen_by(&history(&mut bob, &gid).await),
        json!([{"emoji": "👍", "count": 2, "me": true}, {"emoji": "🎉", "count": 1, "me": false}])
    );
    assert_eq!(
        seen_by(&history(&mut alice, &gid).await),
        json!([{"emoji": "👍", "count": 2, "me": false}, {"emoji": "🎉", "count": 1, "me": false}])
    );
    bob.ok(react("👍", false)).await;
    let off = events_of(&mut alice, "reaction", 3).await;
    assert_eq!(off[2]["on"], false);
    assert_eq!(
        seen_by(&history(&mut carol, &gid).await),
        json!([{"emoji": "👍", "count": 1, "me": true}, {"emoji": "🎉", "count": 1, "me": true}])
    );
    // The counts are kept, not counted: the table says what history said.
    assert_eq!(
        app.db
            .count("SELECT sum(count)::int8 FROM pgchat.reaction_counts")
            .await,
        2
    );

    // 20 distinct emoji at most; one already there still counts.
    for i in 0..18 {
        alice.ok(react(&format!(":e{i}:"), true)).await;
    }
    alice.err(react(":one-too-many:", true), "too_large").await;
    alice.ok(react("🎉", true)).await;
    let page = history(&mut alice, &gid).await;
    assert_eq!(page[0]["reactions"].as_array().unwrap().len(), 20);

    // An edit's event carries each recipient's own `me`.
    alice
        .ok(json!({"type": "edit", "conversation": gid, "cseq": 1, "body": "edited"}))
        .await;
    let mine = |e: &Value, emoji: &str| {
        e["message"]["reactions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["emoji"] == emoji)
            .unwrap()["me"]
            .clone()
    };
    let for_carol = carol.event_of("message_edited").await;
    let for_bob = bob.event_of("message_edited").await;
    assert_eq!(mine(&for_carol, "🎉"), true);
    assert_eq!(mine(&for_bob, "🎉"), false);
    assert_eq!(for_carol["message"]["body"], "edited");
}

#[tokio::test]
async fn mentions_have_their_own_unread_count_kept_beside_the_read_marker() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let gid = group(&mut alice).await;
    let mentions_unread = |list: &Value, id: &str| {
        list["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap()["mentions_unread"]
            .as_i64()
            .unwrap()
    };
    for (i, mentions) in [json!(["bob"]), json!([]), json!(["bob", "carol"])]
        .iter()
        .enumerate()
    {
        let m = alice
            .ok(
                json!({"type": "send", "conversation": gid, "body": format!("m{i}"),
                       "client_msg_id": format!("a{i}"), "mentions": mentions}),
            )
            .await;
        assert_eq!(&m["message"]["mentions"], mentions);
    }
    // Mentioning oneself counts for no one.
    alice
        .ok(json!({"type": "send", "conversation": gid, "body": "me", "client_msg_id": "a9", "mentions": ["alice"]}))
        .await;
    let list = bob.ok(json!({"type": "conversations"})).await;
    assert_eq!(mentions_unread(&list, &gid), 2);
    assert_eq!(list["conversations"][0]["unread"], 4);
    let list = alice.ok(json!({"type": "conversations"})).await;
    assert_eq!(mentions_unread(&list, &gid), 0);

    // Reading past the first mention leaves one; bob's own message marks all read.
    bob.ok(json!({"type": "read", "conversation": gid, "cseq": 2}))
        .await;
    let list = bob.ok(json!({"type": "conversations"})).await;
    assert_eq!(mentions_unread(&list, &gid), 1);
    send(&mut bob, &gid, "caught up", "b1").await;
    let list = bob.ok(json!({"type": "conversations"})).await;
    assert_eq!(mentions_unread(&list, &gid), 0);
    let list = app
        .connect("carol")
        .await
        .ok(json!({"type": "conversations"}))
        .await;
    assert_eq!(mentions_unread(&list, &gid), 1);
    assert_eq!(
        app.db.count("SELECT count(*) FROM pgchat.mentions").await,
        1,
        "only carol's unread mention is kept"
    );
}

#[tokio::test]
async fn a_reply_quotes_the_original_as_it_is_now() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let gid = group(&mut alice).await;
    let long = "é".repeat(150);
    send(&mut alice, &gid, &long, "a1").await;
    let r = bob
        .ok(json!({"type": "send", "conversation": gid, "body": "yes", "client_msg_id": "b1", "reply_to": 1}))
        .await["message"]
        .clone();
    assert_eq!(r["reply_to"]["cseq"], 1);
    assert_eq!(r["reply_to"]["sender"], "alice");
    assert_eq!(r["reply_to"]["snippet"], "é".repeat(100));
    assert_eq!(
        alice.event_of("message").await["message"]["reply_to"],
        Value::Null
    );
    assert_eq!(alice.event_of("message").await["message"], r);
    // The reply from another conversation's cseq is refused; an edit shows in the snippet.
    let other = alice.send_dm("bob", "elsewhere", "d1").await;
    alice
        .err(
            json!({"type": "send", "conversation": other["conversation"], "body": "x",
                    "client_msg_id": "d2", "reply_to": 2}),
            "bad_request",
        )
        .await;
    alice
        .ok(json!({"type": "edit", "conversation": gid, "cseq": 1, "body": "short now"}))
        .await;
    assert_eq!(
        history(&mut bob, &gid).await[1]["reply_to"]["snippet"],
        "short now"
    );
    // A retried reply returns the message as stored.
    let again = bob
        .ok(json!({"type": "send", "conversation": gid, "body": "yes", "client_msg_id": "b1", "reply_to": 1}))
        .await["message"]
        .clone();
    assert_eq!(again["id"], r["id"]);
    assert_eq!(again["reply_to"]["snippet"], "short now");
}

#[tokio::test]
async fn search_finds_only_what_the_user_may_see_newest_first() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let mut dave = app.connect("dave").await;
    let gid = group(&mut alice).await;
    for i in 1..=5 {
        send(
            &mut alice,
            &gid,
            &format!("Pancakes recipe number {i}"),
            &format!("a{i}"),
        )
        .await;
    }
    send(&mut alice, &gid, "waffles are different", "w").await;
    let dm = dave
        .send_dm("erin", "pancakes between dave and erin", "d1")
        .await;
    let ids = |r: &Value| -> Vec<i64> {
        r["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["cseq"].as_i64().unwrap())
            .collect()
    };

    // Words match case-insensitively; newest first; pages by before_id.
    let r = search(&mut bob, json!({"query": "PANCAKES", "limit": 2})).await;
    assert_eq!(ids(&r), [5, 4]);
    assert_eq!(r["has_more"], true);
    let last = r["messages"][1]["id"].clone();
    let r = search(
        &mut bob,
        json!({"query": "pancakes", "limit": 10, "before_id": last}),
    )
    .await;
    assert_eq!(ids(&r), [3, 2, 1]);
    assert_eq!(r["has_more"], false);
    let r = search(&mut bob, json!({"query": "\"recipe number 3\""})).await;
    assert_eq!(ids(&r), [3]);
    let r = search(&mut bob, json!({"query": "pancakes -recipe"})).await;
    assert_eq!(ids(&r), Vec::<i64>::new(), "not dave's conversation");
    let r = search(&mut dave, json!({"query": "pancakes"})).await;
    assert_eq!(r["messages"][0]["id"], dm["id"]);
    assert_eq!(r["messages"].as_array().unwrap().len(), 1);
    search(&mut bob, json!({"query": "waffles", "conversation": gid})).await;
    bob.err(
        json!({"type": "search", "query": "waffles", "conversation": dm["conversation"]}),
        "forbidden",
    )
    .await;
    bob.err(json!({"type": "search", "query": ""}), "bad_request")
        .await;
    bob.err(
        json!({"type": "search", "query": "x".repeat(201)}),
        "too_large",
    )
    .await;
    bob.err(
        json!({"type": "search", "query": "x", "limit": 51}),
        "bad_request",
    )
    .await;
    // Punctuation only: a query without words finds nothing, and is no error.
    let r = search(&mut bob, json!({"query": "?!"})).await;
    assert_eq!(ids(&r), Vec::<i64>::new());

    // Edits re-index; deletions remove.
    alice
        .ok(json!({"type": "edit", "conversation": gid, "cseq": 6, "body": "crepes now"}))
        .await;
    assert_eq!(
        ids(&search(&mut bob, json!({"query": "waffles"})).await),
        Vec::<i64>::new()
    );
    assert_eq!(
        ids(&search(&mut bob, json!({"query": "crepes"})).await),
        [6]
    );
    alice
        .ok(json!({"type": "delete", "conversation": gid, "cseq": 5}))
        .await;
    assert_eq!(
        ids(&search(&mut bob, json!({"query": "pancakes"})).await),
        [4, 3, 2, 1]
    );

    // A member added later finds only what came after they joined; one removed finds
    // nothing of that conversation.
    alice
        .ok(json!({"type": "group_add", "conversation": gid, "users": ["dave"]}))
        .await;
    assert_eq!(
        ids(&search(&mut dave, json!({"query": "pancakes", "conversation": gid})).await),
        Vec::<i64>::new()
    );
    send(&mut alice, &gid, "more pancakes", "a7").await;
    assert_eq!(
        ids(&search(&mut dave, json!({"query": "pancakes", "conversation": gid})).await),
        [7]
    );
    alice
        .ok(json!({"type": "group_remove", "conversation": gid, "users": ["bob"]}))
        .await;
    assert_eq!(
        ids(&search(&mut bob, json!({"query": "pancakes"})).await),
        Vec::<i64>::new()
    );
}

#[tokio::test]
async fn changes_made_through_sql_reach_the_sockets_with_the_same_checks() {
    let app = TestApp::spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let gid = group(&mut alice).await;
    send(&mut bob, &gid, "typo", "b1").await;
    let sql = app.db.client().await;
    let edited: Value = sql
        .query_one("SELECT pgchat.edit('bob', $1, 1, 'fixed')", &[&gid])
        .await
        .unwrap()
        .get(0);
    assert_eq!(edited["body"], "fixed");
    assert!(edited["edited_at"].is_string());
    let e = alice.event_of("message_edited").await;
    assert_eq!(e["message"]["body"], "fixed");
    assert_eq!(e["message"]["edited_at"], edited["edited_at"]);
    for (call, state) in [
        ("SELECT pgchat.edit('alice', $1, 1, 'not hers')", "42501"),
        ("SELECT pgchat.edit('bob', $1, 7, 'none')", "P0002"),
        ("SELECT pgchat.edit('bob', $1, 1, '')", "22023"),
        ("SELECT pgchat.delete('carol', $1, 1)", "42501"),
        ("SELECT pgchat.delete('nobody', $1, 1)", "P0002"),
    ] {
        let e = sql.query_one(call, &[&gid]).await.unwrap_err();
        assert_eq!(e.code().unwrap().code(), state, "{call}: {e}");
    }
    // A moderator (an admin of the group) deletes from the backend.
    sql.execute("SELECT pgchat.delete('alice', $1, 1)", &[&gid])
        .await
        .unwrap();
    assert_eq!(bob.event_of("message_deleted").await["cseq"], 1);
    sql.execute("SELECT pgchat.delete('alice', $1, 1)", &[&gid])
        .await
        .unwrap();
    let e = sql
        .query_one("SELECT pgchat.edit('bob', $1, 1, 'back')", &[&gid])
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "P0002");
}

#[tokio::test]
async fn changes_cross_workers_in_stream_order() {
    let cluster = Cluster::start(2, &[]).await;
    let mut alice = cluster.connect(0, "alice").await;
    let mut bob = cluster.connect(1, "bob").await;
    let gid = group(&mut alice).await;
    bob.event_of("conversation").await;
    send(&mut alice, &gid, "one", "a1").await;
    alice
        .ok(json!({"type": "edit", "conversation": gid, "cseq": 1, "body": "uno"}))
        .await;
    alice
        .ok(json!({"type": "react", "conversation": gid, "cseq": 1, "emoji": "👍", "on": true}))
        .await;
    let mut last = 1; // the group's conversation event, above
    let mut next = |e: Value| {
        let seq = e["seq"].as_i64().unwrap();
        assert_eq!(seq, last + 1, "gap-free: {e}");
        last = seq;
        e["type"].as_str().unwrap().to_string()
    };
    let mut kinds = Vec::new();
    for _ in 0..3 {
        kinds.push(next(bob.event().await));
    }
    // (Each is read from the table as it is when the other worker fetches it: had the
    // deletion below committed first, the reaction would have come as message_deleted.)
    assert_eq!(kinds, ["message", "message_edited", "reaction"]);
    alice
        .ok(json!({"type": "delete", "conversation": gid, "cseq": 1}))
        .await;
    assert_eq!(next(bob.event().await), "message_deleted");
    // The other worker's history shows the tombstone (its cache was told).
    let page = history(&mut bob, &gid).await;
    assert_eq!(page[0]["deleted"], true);
}
