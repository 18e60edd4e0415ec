//! The HTTP API's side of issue 18 against a real server: editing, deleting and reacting
//! to messages, replies and mentions on send, search and receipts, with the documented
//! refusals; and that a change made over HTTP reaches the members' sockets as the same
//! event a socket's change would.

mod common;

use common::{Client, TestApp};
use serde_json::{json, Value};

/// A server whose rate limit these tests, which ask a lot quickly, stay well within.
async fn server() -> TestApp {
    TestApp::spawn_with(|c| {
        c.rate_limit_per_sec = 10_000;
        c.rate_limit_burst = 10_000;
        c.max_mentions = 3;
    })
    .await
}

/// The HTTP API as one user sees it.
struct Api<'a> {
    app: &'a TestApp,
    token: Option<String>,
    http: reqwest::Client,
}

impl<'a> Api<'a> {
    fn of(app: &'a TestApp, user: &str) -> Api<'a> {
        Api {
            app,
            token: Some(app.token(user)),
            http: reqwest::Client::new(),
        }
    }

    fn anonymous(app: &'a TestApp) -> Api<'a> {
        Api {
            app,
            token: None,
            http: reqwest::Client::new(),
        }
    }

    /// `method path` with `body` as JSON (when given); the status and the JSON answer.
    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.raw(method, path, body.map(|b| b.to_string()), true)
            .await
    }

    async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        json_type: bool,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, self.app.http(path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            if json_type {
                req = req.header("content-type", "application/json");
            }
            req = req.body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text}"));
        (status, value)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await
    }

    /// `method path`, asserting 200; the answer.
    async fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, answer) = self.call(method, path, body).await;
        assert_eq!(status, 200, "{method} {path} {body:?}: {answer}");
        answer
    }

    /// `method path`, asserting the refusal `status` with `code`; the error's message.
    async fn refused(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        status: u16,
        code: &str,
    ) -> String {
        let (got, answer) = self.call(method, path, body).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{method} {path} {body:?}: {answer}"
        );
        answer["error"]["message"].as_str().unwrap().to_string()
    }
}

fn message_path(conversation: &str, cseq: i64) -> String {
    format!("/api/conversations/{conversation}/messages/{cseq}")
}

/// A direct conversation of alice and bob with alice's message "hello there" (cseq 1), both
/// connected; the conversation's id.
async fn direct(app: &TestApp) -> (Client, Client, String) {
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let sent = alice.send_dm("bob", "hello there", "m1").await;
    alice.event_of("message").await;
    bob.event_of("message").await;
    let dm = sent["conversation"].as_str().unwrap().to_string();
    (alice, bob, dm)
}

/// The next durable event of `client` that is not a `read`, `message` or `conversation`
/// of the set-up; how a test checks that a refused or repeated change told no one.
async fn next_change(client: &mut Client) -> Value {
    loop {
        let e = client.event().await;
        match e["type"].as_str() {
            Some("message_edited" | "message_deleted" | "reaction" | "message") => return e,
            _ => continue,
        }
    }
}

#[tokio::test]
async fn an_edit_over_http_answers_the_message_and_every_member_gets_message_edited() {
    let app = server().await;
    let (mut alice, mut bob, dm) = direct(&app).await;
    let api = Api::of(&app, "alice");

    let answer = api
        .ok(
            "PATCH",
            &message_path(&dm, 1),
            Some(&json!({"body": "hello, edited"})),
        )
        .await;
    let m = &answer["message"];
    assert_eq!(m["body"], "hello, edited", "{answer}");
    assert_eq!(
        (m["cseq"].as_i64(), m["deleted"].as_bool()),
        (Some(1), Some(false))
    );
    assert!(m["edited_at"].is_string(), "{answer}");
    assert_eq!(
        answer.as_object().unwrap().len(),
        1,
        "only the message: {answer}"
    );

    for client in [&mut bob, &mut alice] {
        let e = next_change(client).await;
        assert_eq!(e["type"], "message_edited", "{e}");
        assert_eq!(e["message"]["body"], "hello, edited");
        assert_eq!(e["message"]["edited_at"], m["edited_at"]);
    }
    let (_, page) = Api::of(&app, "bob")
        .get(&format!("/api/conversations/{dm}/messages"))
        .await;
    assert_eq!(page["messages"][0]["body"], "hello, edited", "{page}");

    // The same body again: the message, and no event.
    let again = api
        .ok(
            "PATCH",
            &message_path(&dm, 1),
            Some(&json!({"body": "hello, edited"})),
        )
        .await;
    assert_eq!(again["message"], answer["message"]);
    alice.send_dm("bob", "next", "m2").await;
    assert_eq!(next_change(&mut bob).await["type"], "message");
}

#[tokio::test]
async fn a_reaction_over_http_answers_empty_and_every_member_gets_reaction() {
    let app = server().await;
    let (mut alice, mut bob, dm) = direct(&app).await;
    let reactions = format!("{}/reactions", message_path(&dm, 1));
    let api = Api::of(&app, "bob");

    let answer = api
        .ok(
            "POST",
            &reactions,
            Some(&json!({"emoji": "👍", "on": true})),
        )
        .await;
    assert_eq!(answer, json!({}));
    for client in [&mut alice, &mut bob] {
        let e = next_change(client).await;
        assert_eq!(
            (
                &e["type"],
                &e["conversation"],
                &e["cseq"],
                &e["user"],
                &e["emoji"],
                &e["on"]
            ),
            (
                &json!("reaction"),
                &json!(dm),
                &json!(1),
                &json!("bob"),
                &json!("👍"),
                &json!(true)
            ),
            "{e}"
        );
    }
    // Each reader sees whether they are among the reactors.
    let (_, bobs) = api.get(&format!("/api/conversations/{dm}/messages")).await;
    assert_eq!(
        bobs["messages"][0]["reactions"],
        json!([{"emoji": "👍", "count": 1, "me": true}])
    );
    let (_, alices) = Api::of(&app, "alice")
        .get(&format!("/api/conversations/{dm}/messages"))
        .await;
    assert_eq!(
        alices["messages"][0]["reactions"],
        json!([{"emoji": "👍", "count": 1, "me": false}])
    );

    // On again: {} and no event; then off, which is one.
    api.ok(
        "POST",
        &reactions,
        Some(&json!({"emoji": "👍", "on": true})),
    )
    .await;
    api.ok(
        "POST",
        &reactions,
        Some(&json!({"emoji": "👍", "on": false})),
    )
    .await;
    let e = next_change(&mut alice).await;
    assert_eq!(
        (&e["type"], &e["on"]),
        (&json!("reaction"), &json!(false)),
        "{e}"
    );
    // Off when off: {} and no event.
    api.ok(
        "POST",
        &reactions,
        Some(&json!({"emoji": "👍", "on": false})),
    )
    .await;
    bob.send_dm("alice", "after", "b1").await;
    assert_eq!(next_change(&mut alice).await["type"], "message");
}

#[tokio::test]
async fn a_delete_over_http_leaves_a_tombstone_and_every_member_gets_message_deleted() {
    let app = server().await;
    let (mut alice, mut bob, dm) = direct(&app).await;
    let api = Api::of(&app, "alice");
    let first = Api::of(&app, "bob")
        .get(&format!("/api/conversations/{dm}/messages"))
        .await
        .1["messages"][0]
        .clone();
    Api::of(&app, "bob")
        .ok(
            "POST",
            &format!("{}/reactions", message_path(&dm, 1)),
            Some(&json!({"emoji": "🎉", "on": true})),
        )
        .await;
    next_change(&mut bob).await;
    next_change(&mut alice).await;

    let answer = api.ok("DELETE", &message_path(&dm, 1), None).await;
    assert_eq!(answer, json!({}));
    for client in [&mut bob, &mut alice] {
        let e = next_change(client).await;
        assert_eq!(
            (&e["type"], &e["conversation"], &e["cseq"], &e["id"]),
            (
                &json!("message_deleted"),
                &json!(dm),
                &json!(1),
                &first["id"]
            ),
            "{e}"
        );
    }
    let (_, page) = api.get(&format!("/api/conversations/{dm}/messages")).await;
    let tomb = &page["messages"][0];
    assert_eq!(
        (
            &tomb["deleted"],
            &tomb["body"],
            &tomb["reactions"],
            &tomb["edited_at"]
        ),
        (&json!(true), &json!(""), &json!([]), &Value::Null),
        "{page}"
    );
    assert_eq!(
        (&tomb["id"], &tomb["created_at"]),
        (&first["id"], &first["created_at"])
    );

    // Deleting it again is {} and tells no one; editing or reacting to it is not_found.
    api.ok("DELETE", &message_path(&dm, 1), None).await;
    api.refused(
        "PATCH",
        &message_path(&dm, 1),
        Some(&json!({"body": "back"})),
        404,
        "not_found",
    )
    .await;
    api.refused(
        "POST",
        &format!("{}/reactions", message_path(&dm, 1)),
        Some(&json!({"emoji": "👍", "on": true})),
        404,
        "not_found",
    )
    .await;
    bob.send_dm("alice", "still here", "b1").await;
    assert_eq!(next_change(&mut alice).await["type"], "message");
}

#[tokio::test]
async fn a_group_admin_may_delete_anyones_message_over_http_and_others_may_not() {
    let app = server().await;
    let mut alice = app.connect("alice").await;
    let group = alice
        .ok(json!({"type": "group_create", "name": "Team", "members": ["bob", "carol"]}))
        .await;
    let g = group["conversation"]["id"].as_str().unwrap().to_string();
    let mut bob = app.connect("bob").await;
    bob.ok(json!({"type": "send", "conversation": g, "body": "one", "client_msg_id": "b1"}))
        .await;
    bob.ok(json!({"type": "send", "conversation": g, "body": "two", "client_msg_id": "b2"}))
        .await;

    // carol is a member, not an admin and not the sender.
    Api::of(&app, "carol")
        .refused("DELETE", &message_path(&g, 1), None, 403, "forbidden")
        .await;
    // Nobody edits another's message, an admin included.
    Api::of(&app, "alice")
        .refused(
            "PATCH",
            &message_path(&g, 1),
            Some(&json!({"body": "mine now"})),
            403,
            "forbidden",
        )
        .await;
    Api::of(&app, "alice")
        .ok("DELETE", &message_path(&g, 1), None)
        .await;
    Api::of(&app, "bob")
        .ok("DELETE", &message_path(&g, 2), None)
        .await;
    let mut deleted = Vec::new();
    while deleted.len() < 2 {
        let e = alice.event().await;
        if e["type"] == "message_deleted" {
            deleted.push(e["cseq"].as_i64().unwrap());
        }
    }
    assert_eq!(deleted, [1, 2]);
}

#[tokio::test]
async fn changes_over_http_are_refused_with_the_documented_codes() {
    let app = server().await;
    let (_alice, _bob, dm) = direct(&app).await;
    let alice = Api::of(&app, "alice");
    let bob = Api::of(&app, "bob");
    let mallory = Api::of(&app, "mallory");
    let edit = json!({"body": "changed"});
    let react = json!({"emoji": "👍", "on": true});
    let reactions = |cseq: &str| format!("/api/conversations/{dm}/messages/{cseq}/reactions");

    // Who: another's message, and someone who is not a member.
    bob.refused(
        "PATCH",
        &message_path(&dm, 1),
        Some(&edit),
        403,
        "forbidden",
    )
    .await;
    bob.refused("DELETE", &message_path(&dm, 1), None, 403, "forbidden")
        .await;
    mallory
        .refused(
            "PATCH",
            &message_path(&dm, 1),
            Some(&edit),
            403,
            "forbidden",
        )
        .await;
    mallory
        .refused("DELETE", &message_path(&dm, 1), None, 403, "forbidden")
        .await;
    mallory
        .refused("POST", &reactions("1"), Some(&react), 403, "forbidden")
        .await;
    // What: no such conversation, no such message.
    for (method, path, body) in [
        ("PATCH", message_path("no-such", 1), Some(&edit)),
        ("DELETE", message_path("no-such", 1), None),
        (
            "POST",
            "/api/conversations/no-such/messages/1/reactions".into(),
            Some(&react),
        ),
        ("PATCH", message_path(&dm, 99), Some(&edit)),
        ("DELETE", message_path(&dm, 99), None),
        ("POST", reactions("99"), Some(&react)),
    ] {
        alice.refused(method, &path, body, 404, "not_found").await;
    }
    // A path cseq that is not a whole number of 1 or more.
    for cseq in ["0", "-1", "abc", "1.5", "+1", "99999999999999999999"] {
        let path = format!("/api/conversations/{dm}/messages/{cseq}");
        let why = alice
            .refused("PATCH", &path, Some(&edit), 400, "bad_request")
            .await;
        assert!(why.starts_with("cseq: "), "{cseq}: {why}");
        alice
            .refused("DELETE", &path, None, 400, "bad_request")
            .await;
        alice
            .refused("POST", &reactions(cseq), Some(&react), 400, "bad_request")
            .await;
    }
    // Bodies: missing or mistyped fields, blank and over-long values.
    for body in [json!({}), json!({"body": 5}), json!({"body": ""})] {
        alice
            .refused(
                "PATCH",
                &message_path(&dm, 1),
                Some(&body),
                400,
                "bad_request",
            )
            .await;
    }
    alice
        .refused(
            "PATCH",
            &message_path(&dm, 1),
            Some(&json!({"body": "x".repeat(4001)})),
            413,
            "too_large",
        )
        .await;
    alice
        .refused(
            "PATCH",
            &message_path(&dm, 1),
            Some(&json!({"body": "x".repeat(70_000)})),
            413,
            "too_large",
        )
        .await;
    let (status, answer) = alice
        .raw(
            "PATCH",
            &message_path(&dm, 1),
            Some(edit.to_string()),
            false,
        )
        .await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (400, &json!("bad_request"))
    );
    for body in [
        json!({"emoji": "👍"}),
        json!({"on": true}),
        json!({"emoji": "👍", "on": "yes"}),
        json!({"emoji": "", "on": true}),
        json!({"emoji": "  ", "on": true}),
    ] {
        alice
            .refused("POST", &reactions("1"), Some(&body), 400, "bad_request")
            .await;
    }
    alice
        .refused(
            "POST",
            &reactions("1"),
            Some(&json!({"emoji": "x".repeat(33), "on": true})),
            413,
            "too_large",
        )
        .await;
    // A 21st different emoji on one message.
    for i in 0..20 {
        alice
            .ok(
                "POST",
                &reactions("1"),
                Some(&json!({"emoji": format!("e{i}"), "on": true})),
            )
            .await;
    }
    alice
        .refused(
            "POST",
            &reactions("1"),
            Some(&json!({"emoji": "e20", "on": true})),
            413,
            "too_large",
        )
        .await;
    // No token.
    let anonymous = Api::anonymous(&app);
    anonymous
        .refused(
            "PATCH",
            &message_path(&dm, 1),
            Some(&edit),
            401,
            "unauthorized",
        )
        .await;
    anonymous
        .refused("DELETE", &message_path(&dm, 1), None, 401, "unauthorized")
        .await;
    anonymous
        .refused("POST", &reactions("1"), Some(&react), 401, "unauthorized")
        .await;
    // Another method on the message's path: 405 with the error body.
    let (status, answer) = alice.get(&message_path(&dm, 1)).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (405, &json!("bad_request"))
    );

    // Nothing refused changed the message.
    let (_, page) = alice
        .get(&format!("/api/conversations/{dm}/messages"))
        .await;
    let m = &page["messages"][0];
    assert_eq!(
        (&m["body"], &m["edited_at"]),
        (&json!("hello there"), &Value::Null)
    );
    assert_eq!(m["reactions"].as_array().unwrap().len(), 20);
}

#[tokio::test]
async fn a_send_over_http_answers_a_message_and_mentions_members() {
    let app = server().await;
    let mut alice = app.connect("alice").await;
    let group = alice
        .ok(json!({"type": "group_create", "name": "Team", "members": ["bob", "carol", "dave"]}))
        .await;
    let g = group["conversation"]["id"].as_str().unwrap().to_string();
    alice
        .ok(json!({"type": "send", "conversation": g, "body": "what's for lunch?", "client_msg_id": "a1"}))
        .await;
    let bob = Api::of(&app, "bob");
    let messages = format!("/api/conversations/{g}/messages");

    let answer = bob
        .ok(
            "POST",
            &messages,
            Some(
                &json!({"body": "soup, @alice", "client_msg_id": "b1", "reply_to": 1,
                         "mentions": ["alice", "alice"]}),
            ),
        )
        .await;
    let m = &answer["message"];
    assert_eq!(
        m["reply_to"],
        json!({"cseq": 1, "sender": "alice", "snippet": "what's for lunch?"}),
        "{answer}"
    );
    assert_eq!(
        m["mentions"],
        json!(["alice"]),
        "duplicates removed: {answer}"
    );
    let e = alice.event_of("message").await;
    assert_eq!(e["message"]["cseq"], 1, "alice's own message first: {e}");
    let e = alice.event_of("message").await;
    assert_eq!(
        (&e["message"]["reply_to"], &e["message"]["mentions"]),
        (&m["reply_to"], &m["mentions"])
    );

    // alice's conversations count the mention until she reads it.
    let (_, list) = Api::of(&app, "alice").get("/api/conversations").await;
    let entry = &list["conversations"][0];
    assert_eq!(
        (&entry["unread"], &entry["mentions_unread"]),
        (&json!(1), &json!(1)),
        "{list}"
    );
    let (_, list) = bob.get("/api/conversations").await;
    assert_eq!(list["conversations"][0]["mentions_unread"], 0, "{list}");
    alice
        .ok(json!({"type": "read", "conversation": g, "cseq": 2}))
        .await;
    let (_, list) = Api::of(&app, "alice").get("/api/conversations").await;
    assert_eq!(list["conversations"][0]["mentions_unread"], 0, "{list}");

    // Without reply_to and mentions (or with them null and empty), a plain message.
    let plain = bob
        .ok(
            "POST",
            &messages,
            Some(
                &json!({"body": "plain", "client_msg_id": "b2", "reply_to": null, "mentions": []}),
            ),
        )
        .await;
    assert_eq!(
        (&plain["message"]["reply_to"], &plain["message"]["mentions"]),
        (&Value::Null, &json!([]))
    );

    // Refusals, none of which stores a message.
    for (body, status, code) in [
        (json!({"reply_to": 99}), 400, "bad_request"),
        (json!({"reply_to": 0}), 400, "bad_request"),
        (json!({"reply_to": "1"}), 400, "bad_request"),
        (json!({"mentions": ["mallory"]}), 400, "bad_request"),
        (json!({"mentions": "alice"}), 400, "bad_request"),
        (json!({"mentions": null}), 400, "bad_request"),
        (json!({"mentions": ["not a user"]}), 400, "bad_request"),
        (
            json!({"mentions": ["alice", "carol", "dave", "bob"]}),
            413,
            "too_large",
        ),
    ] {
        let mut full = body.clone();
        full["body"] = json!("refused");
        full["client_msg_id"] = json!(format!("r-{body}"));
        bob.refused("POST", &messages, Some(&full), status, code)
            .await;
    }
    let (_, page) = bob.get(&messages).await;
    assert_eq!(page["total"], 3, "{page}");

    // The reply's snippet follows the original: its edit, then its deletion.
    let alice_api = Api::of(&app, "alice");
    alice_api
        .ok(
            "PATCH",
            &message_path(&g, 1),
            Some(&json!({"body": "what's for dinner?"})),
        )
        .await;
    let (_, page) = bob.get(&messages).await;
    assert_eq!(
        page["messages"][1]["reply_to"]["snippet"], "what's for dinner?",
        "{page}"
    );
    alice_api.ok("DELETE", &message_path(&g, 1), None).await;
    let (_, page) = bob.get(&messages).await;
    assert_eq!(
        page["messages"][1]["reply_to"],
        json!({"cseq": 1, "sender": "alice", "snippet": ""}),
        "{page}"
    );
}

#[tokio::test]
async fn search_over_http_finds_what_the_user_may_see_newest_first_in_pages() {
    let app = server().await;
    let mut alice = app.connect("alice").await;
    let dm = alice.send_dm("bob", "apple pie recipe", "m1").await["conversation"]
        .as_str()
        .unwrap()
        .to_string();
    alice.send_dm("bob", "banana bread", "m2").await;
    alice.send_dm("bob", "apple crumble", "m3").await;
    let group = alice
        .ok(json!({"type": "group_create", "name": "Fruit", "members": ["carol"]}))
        .await;
    let g = group["conversation"]["id"].as_str().unwrap().to_string();
    alice
        .ok(json!({"type": "send", "conversation": g, "body": "apple juice", "client_msg_id": "g1"}))
        .await;
    let bob = Api::of(&app, "bob");

    // bob is not in the group: he finds the two of the direct conversation, newest first.
    let (status, found) = bob.get("/api/search?q=apple").await;
    assert_eq!(status, 200, "{found}");
    let bodies = |page: &Value| -> Vec<String> {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["body"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        bodies(&found),
        ["apple crumble", "apple pie recipe"],
        "{found}"
    );
    assert_eq!(found["has_more"], false);
    assert_eq!(found.as_object().unwrap().len(), 2, "{found}");

    // Pages of one, by before_id.
    let (_, first) = bob.get("/api/search?q=apple&limit=1").await;
    assert_eq!(
        (bodies(&first), &first["has_more"]),
        (vec!["apple crumble".to_string()], &json!(true))
    );
    let last = first["messages"][0]["id"].as_i64().unwrap();
    let (_, second) = bob
        .get(&format!("/api/search?q=apple&limit=1&before_id={last}"))
        .await;
    assert_eq!(
        (bodies(&second), &second["has_more"]),
        (vec!["apple pie recipe".to_string()], &json!(false))
    );

    // alice sees her group too; one conversation only with `conversation`; websearch syntax.
    let api = Api::of(&app, "alice");
    let (_, all) = api.get("/api/search?q=apple").await;
    assert_eq!(
        bodies(&all),
        ["apple juice", "apple crumble", "apple pie recipe"]
    );
    let (_, only) = api
        .get(&format!("/api/search?q=apple&conversation={g}"))
        .await;
    assert_eq!(bodies(&only), ["apple juice"]);
    let (_, without) = api.get("/api/search?q=apple%20-pie").await;
    assert_eq!(bodies(&without), ["apple juice", "apple crumble"]);
    let (_, phrase) = api.get("/api/search?q=%22banana%20bread%22").await;
    assert_eq!(bodies(&phrase), ["banana bread"]);

    // Only punctuation: no words to look for, so nothing is found (not an error).
    let (status, none) = api.get("/api/search?q=%21%21%21").await;
    assert_eq!(
        (status, bodies(&none)),
        (200, Vec::<String>::new()),
        "{none}"
    );

    // An edit re-indexes; a deletion removes.
    api.ok(
        "PATCH",
        &message_path(&dm, 3),
        Some(&json!({"body": "pear crumble"})),
    )
    .await;
    api.ok("DELETE", &message_path(&dm, 1), None).await;
    let (_, after) = bob.get("/api/search?q=apple").await;
    assert_eq!(bodies(&after), Vec::<String>::new(), "{after}");
    let (_, pear) = bob.get("/api/search?q=pear").await;
    assert_eq!(bodies(&pear), ["pear crumble"]);

    // Refusals.
    bob.refused(
        "GET",
        &format!("/api/search?q=apple&conversation={g}"),
        None,
        403,
        "forbidden",
    )
    .await;
    bob.refused(
        "GET",
        "/api/search?q=apple&conversation=no-such",
        None,
        404,
        "not_found",
    )
    .await;
    for path in [
        "/api/search",
        "/api/search?q=",
        "/api/search?q=%20%20",
        "/api/search?q=apple&limit=0",
        "/api/search?q=apple&limit=51",
        "/api/search?q=apple&limit=ten",
        "/api/search?q=apple&before_id=0",
        "/api/search?q=apple&q=pie",
    ] {
        bob.refused("GET", path, None, 400, "bad_request").await;
    }
    bob.refused(
        "GET",
        &format!("/api/search?q={}", "a".repeat(201)),
        None,
        413,
        "too_large",
    )
    .await;
    Api::anonymous(&app)
        .refused("GET", "/api/search?q=apple", None, 401, "unauthorized")
        .await;
}

#[tokio::test]
async fn a_member_added_later_finds_only_what_came_after_joining() {
    let app = server().await;
    let mut alice = app.connect("alice").await;
    let group = alice
        .ok(json!({"type": "group_create", "name": "Plans", "members": ["bob"]}))
        .await;
    let g = group["conversation"]["id"].as_str().unwrap().to_string();
    alice
        .ok(json!({"type": "send", "conversation": g, "body": "secret plan one", "client_msg_id": "a1"}))
        .await;
    alice
        .ok(json!({"type": "group_add", "conversation": g, "users": ["carol"]}))
        .await;
    alice
        .ok(json!({"type": "send", "conversation": g, "body": "plan two", "client_msg_id": "a2"}))
        .await;
    let (_, found) = Api::of(&app, "carol").get("/api/search?q=plan").await;
    let bodies: Vec<&str> = found["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["plan two"], "{found}");
}

#[tokio::test]
async fn receipts_over_http_give_every_members_read_position_in_pages() {
    let app = server().await;
    let mut alice = app.connect("alice").await;
    let group = alice
        .ok(json!({"type": "group_create", "name": "Readers", "members": ["bob", "carol"]}))
        .await;
    let g = group["conversation"]["id"].as_str().unwrap().to_string();
    alice
        .ok(json!({"type": "send", "conversation": g, "body": "one", "client_msg_id": "a1"}))
        .await;
    alice
        .ok(json!({"type": "send", "conversation": g, "body": "two", "client_msg_id": "a2"}))
        .await;
    let mut bob = app.connect("bob").await;
    bob.ok(json!({"type": "read", "conversation": g, "cseq": 1}))
        .await;
    let api = Api::of(&app, "carol");
    let receipts = format!("/api/conversations/{g}/receipts");

    let (status, all) = api.get(&receipts).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(
        all,
        json!({"receipts": [{"user": "alice", "cseq": 2}, {"user": "bob", "cseq": 1},
                            {"user": "carol", "cseq": 0}], "has_more": false})
    );
    let (_, first) = api.get(&format!("{receipts}?limit=1")).await;
    assert_eq!(
        first,
        json!({"receipts": [{"user": "alice", "cseq": 2}], "has_more": true})
    );
    let (_, rest) = api.get(&format!("{receipts}?after=alice&limit=5")).await;
    assert_eq!(rest["receipts"].as_array().unwrap().len(), 2, "{rest}");
    assert_eq!(rest["has_more"], false);

    Api::of(&app, "mallory")
        .refused("GET", &receipts, None, 403, "forbidden")
        .await;
    api.refused(
        "GET",
        "/api/conversations/no-such/receipts",
        None,
        404,
        "not_found",
    )
    .await;
    for q in [
        "?limit=0",
        "?limit=1001",
        "?limit=x",
        "?after=not%20a%20user",
    ] {
        api.refused("GET", &format!("{receipts}{q}"), None, 400, "bad_request")
            .await;
    }
    Api::anonymous(&app)
        .refused("GET", &receipts, None, 401, "unauthorized")
        .await;
}

#[tokio::test]
async fn a_socket_that_was_away_replays_http_changes_in_order() {
    let app = server().await;
    let (alice, bob, dm) = direct(&app).await;
    bob.close().await;
    alice.close().await;
    let api = Api::of(&app, "alice");
    api.ok(
        "PATCH",
        &message_path(&dm, 1),
        Some(&json!({"body": "edited away"})),
    )
    .await;
    api.ok(
        "POST",
        &format!("{}/reactions", message_path(&dm, 1)),
        Some(&json!({"emoji": "👀", "on": true})),
    )
    .await;
    api.ok("DELETE", &message_path(&dm, 1), None).await;

    let mut bob = app.connect("bob").await;
    bob.ok(json!({"type": "resume", "after": 0})).await;
    let kinds: Vec<String> = bob
        .buffered()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .filter(|t| t != "conversation" && t != "message")
        .collect();
    // The reaction's event, replayed after the message was deleted, is message_deleted:
    // the emoji went with the message.
    assert_eq!(
        kinds,
        ["message_edited", "message_deleted", "message_deleted"],
    );
}

#[tokio::test]
async fn a_deleted_mention_stops_counting_as_unread() {
    let app = server().await;
    let mut alice = app.connect("alice").await;
    let group = alice
        .ok(json!({"type": "group_create", "name": "Team", "members": ["bob"]}))
        .await;
    let g = group["conversation"]["id"].as_str().unwrap().to_string();
    let bob = Api::of(&app, "bob");
    bob.ok(
        "POST",
        &format!("/api/conversations/{g}/messages"),
        Some(&json!({"body": "@alice look", "client_msg_id": "b1", "mentions": ["alice"]})),
    )
    .await;
    let alice_api = Api::of(&app, "alice");
    let mentions = |list: &Value| list["conversations"][0]["mentions_unread"].clone();
    assert_eq!(mentions(&alice_api.get("/api/conversations").await.1), 1);
    bob.ok("DELETE", &message_path(&g, 1), None).await;
    assert_eq!(mentions(&alice_api.get("/api/conversations").await.1), 0);
}
