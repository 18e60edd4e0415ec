//! The hostile-input corpus: frames, tokens and HTTP requests a hostile or broken client
//! may send, each with the error PROTOCOL.md documents for it. Every case checks exactly
//! that error, that the socket still answers where the contract keeps it open, and that
//! nothing was stored; each test ends by checking that another session was unaffected.

mod common;

use std::time::Duration;

use common::{Client, TestApp, PATIENCE, SECRET};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// Small limits, so that "past the limit" is cheap to send; a rate limit no corpus reaches.
async fn spawn() -> TestApp {
    TestApp::spawn_with(|c| {
        c.max_frame_bytes = 4096;
        c.max_message_chars = 50;
        c.max_group_members = 5;
        c.max_presence_users = 5;
        c.rate_limit_per_sec = 100_000;
        c.rate_limit_burst = 100_000;
    })
    .await
}

/// Row counts of every table a request could write to.
async fn rows(app: &TestApp) -> Vec<i64> {
    let row = app
        .db
        .client()
        .await
        .query_one(
            "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM conversations),
                    (SELECT count(*) FROM members), (SELECT count(*) FROM messages),
                    (SELECT count(*) FROM event_queue), (SELECT count(*) FROM reactions),
                    (SELECT count(*) FROM mentions),
                    (SELECT count(*) FROM messages WHERE edited_at IS NOT NULL OR deleted)",
            &[],
        )
        .await
        .unwrap();
    (0..8).map(|i| row.get(i)).collect()
}

/// What a corpus found wrong, all of it reported at the end rather than the first only.
struct Tally {
    rows: Vec<i64>,
    wrong: Vec<String>,
}

impl Tally {
    async fn new(app: &TestApp) -> Tally {
        Tally {
            rows: rows(app).await,
            wrong: Vec::new(),
        }
    }

    /// Notes `what` if the row counts changed since the last case (users aside when
    /// `users_may_change`).
    async fn stored_nothing(&mut self, app: &TestApp, what: &str) {
        let now = rows(app).await;
        if now != self.rows {
            self.wrong
                .push(format!("{what} stored rows: {:?} -> {now:?}", self.rows));
        }
        self.rows = now;
    }

    fn finish(self) {
        let n = self.wrong.len();
        assert!(n == 0, "{n} wrong:\n{}", self.wrong.join("\n"));
    }
}

/// What a case sends over the socket.
enum Send {
    Text(String),
    Binary(Vec<u8>),
}

/// One socket case: what is sent and the code of the error it must get (`None`: an `ok`
/// that stores nothing).
struct Case {
    send: Send,
    code: Option<&'static str>,
}

fn err(code: &'static str, text: impl Into<String>) -> Case {
    Case {
        send: Send::Text(text.into()),
        code: Some(code),
    }
}

fn ok(text: impl Into<String>) -> Case {
    Case {
        send: Send::Text(text.into()),
        code: None,
    }
}

fn bad(v: Value) -> Case {
    err("bad_request", v.to_string())
}

/// The conversations the corpus aims at, made before it runs.
struct Arena {
    /// alice and bob's direct conversation.
    direct: String,
    /// A group of alice and bob.
    group: String,
    /// A direct conversation alice is not in.
    foreign: String,
    /// A group alice is not in.
    foreign_group: String,
}

async fn group_of(c: &mut Client, name: &str, other: &str) -> Value {
    c.ok(json!({"type": "group_create", "name": name, "members": [other]}))
        .await
}

async fn arena(app: &TestApp, alice: &mut Client, bob: &mut Client) -> Arena {
    let id = |v: &Value| v.as_str().expect("a conversation id").to_string();
    let direct = id(&alice.send_dm("bob", "hello", "setup-1").await["conversation"]);
    let group = id(&group_of(alice, "team", "bob").await["conversation"]["id"]);
    let mut carol = app.connect("carol").await;
    let foreign = id(&carol.send_dm("dave", "private", "setup-2").await["conversation"]);
    let foreign_group = id(&group_of(&mut carol, "secret", "dave").await["conversation"]["id"]);
    // Both saw the setup; what they get later is checked against nothing else arriving.
    for c in [alice, bob] {
        while c
            .recv_within(Duration::from_millis(300))
            .await
            .ok()
            .flatten()
            .is_some()
        {}
        c.buffered();
    }
    Arena {
        direct,
        group,
        foreign,
        foreign_group,
    }
}

/// Every string field of every request, with the value `v` in it, and the code expected
/// when `v` is refused by that field's rule (`id_code` for conversation ids, which accept
/// any text but name nothing that exists).
fn every_string_field(a: &Arena, v: &str, user_code: &str, id_code: &str) -> Vec<(Value, String)> {
    let (d, g) = (&a.direct, &a.group);
    let codes = |c: &str| c.to_string();
    vec![
        (
            json!({"type":"send","to":v,"body":"x","client_msg_id":"m"}),
            codes(user_code),
        ),
        (
            json!({"type":"send","conversation":v,"body":"x","client_msg_id":"m"}),
            codes(id_code),
        ),
        (json!({"type":"history","conversation":v}), codes(id_code)),
        (
            json!({"type":"group_create","name":"n","members":[v]}),
            codes(user_code),
        ),
        (
            json!({"type":"group_add","conversation":v,"users":["bob"]}),
            codes(id_code),
        ),
        (
            json!({"type":"group_add","conversation":g,"users":[v]}),
            codes(user_code),
        ),
        (
            json!({"type":"group_remove","conversation":g,"users":[v]}),
            codes(user_code),
        ),
        (
            json!({"type":"group_leave","conversation":v}),
            codes(id_code),
        ),
        (
            json!({"type":"read","conversation":v,"cseq":1}),
            codes(id_code),
        ),
        (
            json!({"type":"send","conversation":g,"body":"x","client_msg_id":"m","mentions":[v]}),
            codes(user_code),
        ),
        (
            json!({"type":"edit","conversation":v,"cseq":1,"body":"x"}),
            codes(id_code),
        ),
        (
            json!({"type":"delete","conversation":v,"cseq":1}),
            codes(id_code),
        ),
        (
            json!({"type":"react","conversation":v,"cseq":1,"emoji":"+1","on":true}),
            codes(id_code),
        ),
        (
            json!({"type":"search","query":"x","conversation":v}),
            codes(id_code),
        ),
        (
            json!({"type":"typing","conversation":v,"state":"stop"}),
            codes(id_code),
        ),
        (
            json!({"type":"typing","conversation":d,"state":v}),
            codes("bad_request"),
        ),
        (
            json!({"type":"presence_subscribe","users":[v]}),
            codes(user_code),
        ),
        (json!({"type":v}), codes("unknown_type")),
    ]
}

fn socket_corpus(a: &Arena) -> Vec<Case> {
    let (d, g, f, fg) = (&a.direct, &a.group, &a.foreign, &a.foreign_group);
    let two63 = "9223372036854775808";
    let long = "x".repeat(65);
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let deep_obj = |n: usize| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
    let mut cases = vec![
        // Not JSON.
        err("bad_request", ""),
        err("bad_request", "   "),
        err("bad_request", "not json"),
        err("bad_request", "{"),
        err("bad_request", r#"{"type":"ping""#),
        err("bad_request", r#"{"type":"ping"} {"type":"ping"}"#),
        err("bad_request", r#"{"type":"ping"}x"#),
        err("bad_request", "\u{feff}{\"type\":\"ping\"}"),
        err("bad_request", "{'type':'ping'}"),
        err("bad_request", r#"{type:"ping"}"#),
        err("bad_request", r#"{"type":"ping",}"#),
        err("bad_request", r#"{"type":"p\ud800"}"#),
        err("bad_request", r#"{"type":"ping","x":1e400}"#),
        err("bad_request", "NaN"),
        // JSON, but not an object.
        err("bad_request", "null"),
        err("bad_request", "true"),
        err("bad_request", "42"),
        err("bad_request", r#""ping""#),
        err("bad_request", r#"[{"type":"ping"}]"#),
        // The envelope.
        err("bad_request", "{}"),
        err("bad_request", r#"{"type":null}"#),
        err("bad_request", r#"{"type":5}"#),
        err("bad_request", r#"{"type":["ping"]}"#),
        err("bad_request", r#"{"type":{"ping":1}}"#),
        err("unknown_type", r#"{"type":""}"#),
        err("unknown_type", r#"{"type":"PING"}"#),
        err("unknown_type", r#"{"type":" ping"}"#),
        err("unknown_type", "{\"type\":\"\u{202e}ping\"}"),
        err("unknown_type", "{\"type\":\"pi\u{200b}ng\"}"),
        err("bad_request", r#"{"type":"ping","ref":1.5}"#),
        err("bad_request", r#"{"type":"ping","ref":true}"#),
        err("bad_request", r#"{"type":"ping","ref":[1]}"#),
        err("bad_request", r#"{"type":"ping","ref":{"a":1}}"#),
        err("bad_request", r#"{"type":"ping","ref":1e3}"#),
        err("bad_request", r#"{"type":"ping","ref":18446744073709551616}"#),
        // Duplicate fields: which one counts would depend on the parser, so neither does.
        err("bad_request", r#"{"type":"ping","type":"conversations"}"#),
        err("bad_request", r#"{"type":"ping","ref":1,"ref":2}"#),
        err(
            "bad_request",
            format!(r#"{{"type":"send","conversation":"{d}","body":"a","body":"b","client_msg_id":"dup"}}"#),
        ),
        err("bad_request", r#"{"type":"resume","after":0,"after":0}"#),
        err(
            "bad_request",
            format!(r#"{{"type":"history","conversation":"{d}","conversation":"{f}"}}"#),
        ),
        // Deep nesting, past serde_json's recursion limit, inside the frame limit.
        err("bad_request", format!(r#"{{"type":"ping","x":{}}}"#, deep(200))),
        err("bad_request", deep(2000)),
        err("bad_request", format!(r#"{{"type":"ping","x":{}}}"#, deep_obj(200))),
        ok(format!(r#"{{"type":"ping","x":{}}}"#, deep(100))),
        // Accepted envelopes that store nothing.
        ok(r#"{"type":"ping","ref":"\u0000"}"#),
        ok(r#"{"type":"ping","ref":-1}"#),
        ok(r#"{"type":"ping","ref":18446744073709551615}"#),
        ok(r#"{"type":"ping","ref":null}"#),
        ok(r#"{"ref":"first","type":"ping","unknown":{"x":[1,2]}}"#),
        ok(r#"{"type":"conversations","extra":"'; DROP TABLE messages; --"}"#),
        ok(json!({"type":"typing","conversation":d,"state":"stop"}).to_string()),
        // resume: after is a seq, >= 0, at most the head.
        bad(json!({"type":"resume"})),
        bad(json!({"type":"resume","after":-1})),
        err("bad_request", format!(r#"{{"type":"resume","after":{two63}}}"#)),
        err("bad_request", r#"{"type":"resume","after":1e3}"#),
        err("bad_request", r#"{"type":"resume","after":1.0}"#),
        bad(json!({"type":"resume","after":"5"})),
        bad(json!({"type":"resume","after":null})),
        bad(json!({"type":"resume","after":true})),
        bad(json!({"type":"resume","after":i64::MAX})),
        // send.
        bad(json!({"type":"send"})),
        bad(json!({"type":"send","to":"bob","conversation":d,"body":"x","client_msg_id":"m"})),
        bad(json!({"type":"send","to":5,"body":"x","client_msg_id":"m"})),
        bad(json!({"type":"send","to":["bob"],"body":"x","client_msg_id":"m"})),
        bad(json!({"type":"send","to":"","body":"x","client_msg_id":"m"})),
        bad(json!({"type":"send","to":long,"body":"x","client_msg_id":"m"})),
        bad(json!({"type":"send","to":"bob' OR '1'='1","body":"x","client_msg_id":"m"})),
        bad(json!({"type":"send","to":"bob;DROP TABLE users","body":"x","client_msg_id":"m"})),
        bad(json!({"type":"send","conversation":"","body":"x","client_msg_id":"m"})),
        bad(json!({"type":"send","conversation":long,"body":"x","client_msg_id":"m"})),
        bad(json!({"type":"send","conversation":17,"body":"x","client_msg_id":"m"})),
        err(
            "not_found",
            json!({"type":"send","conversation":format!("{d}' OR '1'='1"),"body":"x","client_msg_id":"m"}).to_string(),
        ),
        err(
            "forbidden",
            json!({"type":"send","conversation":f,"body":"x","client_msg_id":"m"}).to_string(),
        ),
        bad(json!({"type":"send","to":"bob","client_msg_id":"m"})),
        bad(json!({"type":"send","to":"bob","body":"","client_msg_id":"m"})),
        bad(json!({"type":"send","to":"bob","body":7,"client_msg_id":"m"})),
        bad(json!({"type":"send","to":"bob","body":null,"client_msg_id":"m"})),
        bad(json!({"type":"send","to":"bob","body":["x"],"client_msg_id":"m"})),
        bad(json!({"type":"send","to":"bob","body":{"text":"x"},"client_msg_id":"m"})),
        err(
            "too_large",
            json!({"type":"send","to":"bob","body":"é".repeat(51),"client_msg_id":"m"}).to_string(),
        ),
        bad(json!({"type":"send","to":"bob","body":"x"})),
        bad(json!({"type":"send","to":"bob","body":"x","client_msg_id":""})),
        bad(json!({"type":"send","to":"bob","body":"x","client_msg_id":long})),
        bad(json!({"type":"send","to":"bob","body":"x","client_msg_id":5})),
        bad(json!({"type":"send","to":"bob","body":"x","client_msg_id":null})),
        // history.
        bad(json!({"type":"history"})),
        bad(json!({"type":"history","conversation":long})),
        bad(json!({"type":"history","conversation":d,"limit":0})),
        bad(json!({"type":"history","conversation":d,"limit":-1})),
        bad(json!({"type":"history","conversation":d,"limit":101})),
        err("bad_request", format!(r#"{{"type":"history","conversation":"{d}","limit":{two63}}}"#)),
        err("bad_request", format!(r#"{{"type":"history","conversation":"{d}","limit":1e3}}"#)),
        bad(json!({"type":"history","conversation":d,"limit":"5"})),
        bad(json!({"type":"history","conversation":d,"limit":1.5})),
        bad(json!({"type":"history","conversation":d,"before_cseq":0})),
        bad(json!({"type":"history","conversation":d,"before_cseq":-1})),
        err("bad_request", format!(r#"{{"type":"history","conversation":"{d}","before_cseq":{two63}}}"#)),
        bad(json!({"type":"history","conversation":d,"before_cseq":"5"})),
        err("forbidden", json!({"type":"history","conversation":f}).to_string()),
        err("not_found", json!({"type":"history","conversation":"nope"}).to_string()),
        // conversations (paged) and receipts.
        bad(json!({"type":"conversations","limit":0})),
        bad(json!({"type":"conversations","limit":101})),
        bad(json!({"type":"conversations","limit":"5"})),
        bad(json!({"type":"conversations","before":"yesterday"})),
        bad(json!({"type":"conversations","before":"12/"})),
        bad(json!({"type":"conversations","before":"x/d1"})),
        bad(json!({"type":"conversations","before":99})),
        bad(json!({"type":"receipts"})),
        bad(json!({"type":"receipts","conversation":d,"limit":0})),
        bad(json!({"type":"receipts","conversation":d,"limit":1001})),
        bad(json!({"type":"receipts","conversation":d,"after":"bo b"})),
        err("forbidden", json!({"type":"receipts","conversation":f}).to_string()),
        err("not_found", json!({"type":"receipts","conversation":"nope"}).to_string()),
        // group_create.
        bad(json!({"type":"group_create","members":[]})),
        bad(json!({"type":"group_create","name":"","members":[]})),
        bad(json!({"type":"group_create","name":"   ","members":[]})),
        bad(json!({"type":"group_create","name":"a\u{0}b","members":[]})),
        bad(json!({"type":"group_create","name":"n".repeat(101),"members":[]})),
        bad(json!({"type":"group_create","name":42,"members":[]})),
        bad(json!({"type":"group_create","name":"\u{200b}\u{200b}","members":[]})),
        bad(json!({"type":"group_create","name":"\u{202e}\u{200f}\u{2066}","members":[]})),
        bad(json!({"type":"group_create","name":"\u{1}\u{7f}\n","members":[]})),
        bad(json!({"type":"group_create","name":"n"})),
        bad(json!({"type":"group_create","name":"n","members":"bob"})),
        bad(json!({"type":"group_create","name":"n","members":[1]})),
        bad(json!({"type":"group_create","name":"n","members":[null]})),
        bad(json!({"type":"group_create","name":"n","members":["new-1","bo b"]})),
        err(
            "too_large",
            json!({"type":"group_create","name":"n","members":["n1","n2","n3","n4","n5"]}).to_string(),
        ),
        // group_add, group_remove, group_leave.
        bad(json!({"type":"group_add","users":["bob"]})),
        bad(json!({"type":"group_add","conversation":g})),
        bad(json!({"type":"group_add","conversation":g,"users":[]})),
        bad(json!({"type":"group_add","conversation":g,"users":"bob"})),
        bad(json!({"type":"group_add","conversation":d,"users":["new-2"]})),
        err("not_found", json!({"type":"group_add","conversation":"g999999","users":["new-3"]}).to_string()),
        err("forbidden", json!({"type":"group_add","conversation":fg,"users":["new-4"]}).to_string()),
        err(
            "too_large",
            json!({"type":"group_add","conversation":g,"users":["n1","n2","n3","n4","n5","n6"]}).to_string(),
        ),
        err(
            "too_large",
            json!({"type":"group_add","conversation":g,"users":["n1","n2","n3","n4"]}).to_string(),
        ),
        bad(json!({"type":"group_remove","conversation":g,"users":[]})),
        bad(json!({"type":"group_remove","conversation":d,"users":["bob"]})),
        err("not_found", json!({"type":"group_remove","conversation":"g999999","users":["bob"]}).to_string()),
        bad(json!({"type":"group_leave"})),
        bad(json!({"type":"group_leave","conversation":d})),
        err("not_found", json!({"type":"group_leave","conversation":"g999999"}).to_string()),
        // read.
        bad(json!({"type":"read","conversation":d})),
        bad(json!({"type":"read","conversation":d,"cseq":-1})),
        bad(json!({"type":"read","conversation":d,"cseq":0})),
        err("bad_request", format!(r#"{{"type":"read","conversation":"{d}","cseq":{two63}}}"#)),
        err("bad_request", format!(r#"{{"type":"read","conversation":"{d}","cseq":1e3}}"#)),
        bad(json!({"type":"read","conversation":d,"cseq":"1"})),
        bad(json!({"type":"read","conversation":d,"cseq":i64::MAX})),
        err("forbidden", json!({"type":"read","conversation":f,"cseq":1}).to_string()),
        // typing.
        bad(json!({"type":"typing","conversation":d})),
        bad(json!({"type":"typing","conversation":d,"state":"START"})),
        bad(json!({"type":"typing","conversation":d,"state":1})),
        err("forbidden", json!({"type":"typing","conversation":f,"state":"start"}).to_string()),
        // presence_subscribe.
        bad(json!({"type":"presence_subscribe"})),
        bad(json!({"type":"presence_subscribe","users":"bob"})),
        bad(json!({"type":"presence_subscribe","users":[1]})),
        err(
            "too_large",
            json!({"type":"presence_subscribe","users":["a","b","c","d","e","f"]}).to_string(),
        ),
        // Replies and mentions on send.
        bad(json!({"type":"send","conversation":d,"body":"x","client_msg_id":"r1","reply_to":0})),
        bad(json!({"type":"send","conversation":d,"body":"x","client_msg_id":"r2","reply_to":"1"})),
        bad(json!({"type":"send","conversation":d,"body":"x","client_msg_id":"r3","reply_to":99})),
        bad(json!({"type":"send","to":"erin","body":"x","client_msg_id":"r4","reply_to":1})),
        bad(json!({"type":"send","conversation":d,"body":"x","client_msg_id":"r5","mentions":"bob"})),
        bad(json!({"type":"send","conversation":d,"body":"x","client_msg_id":"r6","mentions":[1]})),
        bad(json!({"type":"send","conversation":d,"body":"x","client_msg_id":"r7","mentions":["carol"]})),
        bad(json!({"type":"send","to":"erin","body":"x","client_msg_id":"r8","mentions":["bob"]})),
        err(
            "too_large",
            json!({"type":"send","conversation":d,"body":"x","client_msg_id":"r9",
                   "mentions":(0..51).map(|i| format!("u{i}")).collect::<Vec<_>>()}).to_string(),
        ),
        // edit, delete, react.
        bad(json!({"type":"edit","conversation":d,"body":"x"})),
        bad(json!({"type":"edit","conversation":d,"cseq":"1","body":"x"})),
        bad(json!({"type":"edit","conversation":d,"cseq":0,"body":"x"})),
        bad(json!({"type":"edit","conversation":d,"cseq":1,"body":""})),
        bad(json!({"type":"edit","conversation":d,"cseq":1})),
        err("too_large", json!({"type":"edit","conversation":d,"cseq":1,"body":"x".repeat(4001)}).to_string()),
        err("forbidden", json!({"type":"edit","conversation":f,"cseq":1,"body":"x"}).to_string()),
        err("not_found", json!({"type":"edit","conversation":d,"cseq":99,"body":"x"}).to_string()),
        bad(json!({"type":"delete","conversation":d,"cseq":-1})),
        bad(json!({"type":"delete","conversation":d})),
        err("forbidden", json!({"type":"delete","conversation":f,"cseq":1}).to_string()),
        err("not_found", json!({"type":"delete","conversation":d,"cseq":99}).to_string()),
        bad(json!({"type":"react","conversation":d,"cseq":1,"on":true})),
        bad(json!({"type":"react","conversation":d,"cseq":1,"emoji":"","on":true})),
        bad(json!({"type":"react","conversation":d,"cseq":1,"emoji":"\u{200b}","on":true})),
        bad(json!({"type":"react","conversation":d,"cseq":1,"emoji":"+1","on":"yes"})),
        bad(json!({"type":"react","conversation":d,"cseq":1,"emoji":"+1"})),
        bad(json!({"type":"react","conversation":d,"cseq":1,"emoji":7,"on":true})),
        err("too_large", json!({"type":"react","conversation":d,"cseq":1,"emoji":"e".repeat(33),"on":true}).to_string()),
        err("forbidden", json!({"type":"react","conversation":f,"cseq":1,"emoji":"+1","on":true}).to_string()),
        err("not_found", json!({"type":"react","conversation":d,"cseq":99,"emoji":"+1","on":true}).to_string()),
        // search.
        bad(json!({"type":"search"})),
        bad(json!({"type":"search","query":""})),
        bad(json!({"type":"search","query":"   "})),
        bad(json!({"type":"search","query":["x"]})),
        bad(json!({"type":"search","query":"x","limit":0})),
        bad(json!({"type":"search","query":"x","limit":51})),
        bad(json!({"type":"search","query":"x","before_id":0})),
        err("too_large", json!({"type":"search","query":"x".repeat(201)}).to_string()),
        err("forbidden", json!({"type":"search","query":"x","conversation":f}).to_string()),
        err("forbidden", json!({"type":"search","query":"x","conversation":fg}).to_string()),
        err("not_found", json!({"type":"search","query":"x","conversation":"g999999"}).to_string()),
        // Binary frames.
        Case {
            send: Send::Binary(vec![1, 2, 3]),
            code: Some("bad_request"),
            },
        Case {
            send: Send::Binary(br#"{"type":"ping"}"#.to_vec()),
            code: Some("bad_request"),
            },
        Case {
            send: Send::Binary(Vec::new()),
            code: Some("bad_request"),
            },
    ];
    // NUL in every string field: PostgreSQL text cannot hold it, so it is refused at the
    // edge (ids, names, states; an unknown type stays unknown).
    for (v, code) in every_string_field(a, "x\u{0}y", "bad_request", "bad_request") {
        cases.push(err(leak(code), v.to_string()));
    }
    // Control, zero-width and right-to-left characters: not in the user id alphabet;
    // conversation ids accept any text, and name no conversation.
    for s in [
        "\u{1}\u{1b}[31m",
        "bob\u{200b}",
        "\u{202e}bob",
        "bob\u{feff}",
    ] {
        for (v, code) in every_string_field(a, s, "bad_request", "not_found") {
            cases.push(err(leak(code), v.to_string()));
        }
    }
    cases
}

/// The corpus needs `&'static str` codes; a handful of strings is leaked once per run.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[tokio::test]
async fn every_hostile_frame_gets_its_documented_error_and_the_socket_goes_on() {
    let app = spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let a = arena(&app, &mut alice, &mut bob).await;
    let cases = socket_corpus(&a);
    assert!(cases.len() >= 150, "{} socket cases", cases.len());
    let mut tally = Tally::new(&app).await;
    for (i, case) in cases.iter().enumerate() {
        let shown = match &case.send {
            Send::Text(t) => t.chars().take(200).collect::<String>(),
            Send::Binary(b) => format!("binary {b:?}"),
        };
        match &case.send {
            Send::Text(t) => alice.send_text(t.clone()).await,
            Send::Binary(b) => alice.send_raw(Message::binary(b.clone())).await,
        }
        let reply = alice.next_reply().await;
        let expected = match case.code {
            Some(code) => {
                reply["type"] == "error"
                    && reply["code"] == code
                    && reply["message"].as_str().is_some_and(|m| !m.is_empty())
            }
            None => reply["type"] == "ok",
        };
        if !expected {
            tally.wrong.push(format!(
                "case {i} {shown:?}: expected {:?}, got {reply}",
                case.code
            ));
        }
        // The socket stays usable: the next request is answered, in order.
        alice
            .ok(json!({"type": "ping", "ref": format!("after-{i}")}))
            .await;
        let what = format!("case {i} {shown:?}");
        tally.stored_nothing(&app, &what).await;
    }
    tally.finish();
    // bob was told nothing, and is served as before.
    assert!(
        bob.recv_within(Duration::from_millis(300)).await.is_err(),
        "bob received something from refused requests"
    );
    both_still_served(&mut alice, &mut bob).await;
}

/// Each of two sessions sends to the other, who receives it: nothing that happened on
/// the server before harmed either.
async fn both_still_served(alice: &mut Client, bob: &mut Client) {
    async fn one_way(from: &mut Client, to: &mut Client, key: &str) {
        let to_user = to.hello["user"].as_str().unwrap().to_string();
        let sent = from.send_dm(&to_user, "still served", key).await;
        while to.event_of("message").await["message"]["id"] != sent["id"] {}
    }
    one_way(alice, bob, "end-1").await;
    one_way(bob, alice, "end-2").await;
}

/// Strings that look like attacks, and every kind of odd character except NUL, are data:
/// stored, delivered and returned exactly as sent.
#[tokio::test]
async fn strings_that_look_like_attacks_are_stored_and_returned_verbatim() {
    let app = spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let strings = [
        "'; DROP TABLE messages; --",
        "' OR '1'='1",
        "Robert'); DELETE FROM users;--",
        "$1 $$ \\x00 %s %n {0}",
        "\u{1}\u{8}\u{1b}[31mred\u{7f}",
        "a\u{200b}b\u{200c}c\u{200d}d\u{2060}\u{feff}",
        "\u{202e}evil\u{202c} \u{200f}\u{2066}x\u{2069}",
        "line\u{2028}sep\u{2029}\u{85}",
        "\u{10ffff}\u{1f600}",
    ];
    for (i, s) in strings.iter().enumerate() {
        let cmid = s.chars().take(60).collect::<String>();
        let sent = alice.send_dm("bob", s, &cmid).await;
        assert_eq!(sent["body"], *s, "{s:?}");
        assert_eq!(sent["client_msg_id"], cmid.as_str(), "{s:?}");
        let got = bob.event_of("message").await;
        assert_eq!(got["message"]["body"], *s, "{s:?}");
        assert_eq!(got["message"]["client_msg_id"], cmid.as_str());
        // The same key again is the same message, however odd the key.
        let again = alice.send_dm("bob", "other", &cmid).await;
        assert_eq!(again["id"], sent["id"], "{s:?}");
        let group = alice
            .ok(json!({"type": "group_create", "name": format!("g{i} {s}"), "members": ["bob"]}))
            .await;
        assert_eq!(group["conversation"]["name"], format!("g{i} {s}"));
    }
    let conversation = alice.send_dm("bob", "last", "last").await["conversation"].clone();
    let page = alice
        .ok(json!({"type": "history", "conversation": conversation, "limit": 100}))
        .await;
    let bodies = common::bodies(&page);
    let mut expected: Vec<&str> = strings.to_vec();
    expected.push("last");
    assert_eq!(bodies, expected);
    let n = app.db.count("SELECT count(*) FROM messages").await;
    assert_eq!(n, strings.len() as i64 + 1);
    let names = alice.ok(json!({"type": "conversations"})).await;
    for (i, s) in strings.iter().enumerate() {
        let name = format!("g{i} {s}");
        assert!(
            names["conversations"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == name.as_str()),
            "{name:?} listed verbatim"
        );
    }
}

/// A frame of `len` bytes sent in pieces of `piece` bytes: a text frame then continuations.
fn fragments(text: &str, piece: usize) -> Vec<Message> {
    let bytes = text.as_bytes();
    let chunks: Vec<&[u8]> = bytes.chunks(piece).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let op = if i == 0 { Data::Text } else { Data::Continue };
            Message::Frame(Frame::message(
                c.to_vec(),
                OpCode::Data(op),
                i == chunks.len() - 1,
            ))
        })
        .collect()
}

#[tokio::test]
async fn frames_past_the_limit_close_with_1009_whole_or_in_fragments() {
    let app = spawn().await;
    let mut bob = app.connect("bob").await;
    // Fragments that add up to a valid request inside the limit are one request.
    let mut alice = app.connect("alice").await;
    let request = json!({"type": "ping", "ref": "frag", "pad": "p".repeat(2000)}).to_string();
    for m in fragments(&request, 300) {
        alice.send_raw(m).await;
    }
    let reply = alice.next_reply().await;
    assert_eq!(reply["type"], "ok", "{reply}");
    assert_eq!(reply["ref"], "frag");

    let oversized = json!({"type": "ping", "pad": "p".repeat(5000)}).to_string();
    // One frame past the limit.
    alice.send_text(oversized.clone()).await;
    assert_eq!(alice.close_code().await, Some(1009));
    // Fragments each within the limit, adding up past it.
    let mut alice = app.connect("alice").await;
    for m in fragments(&oversized, 1000) {
        alice.send_raw(m).await;
    }
    assert_eq!(alice.close_code().await, Some(1009));
    // Fragments that never end, each small: closed once their sum passes the limit.
    let mut alice = app.connect("alice").await;
    alice
        .send_raw(Message::Frame(Frame::message(
            b"{\"type\":\"ping\",\"pad\":\"".to_vec(),
            OpCode::Data(Data::Text),
            false,
        )))
        .await;
    for _ in 0..10 {
        alice
            .send_raw(Message::Frame(Frame::message(
                vec![b'p'; 500],
                OpCode::Data(Data::Continue),
                false,
            )))
            .await;
    }
    assert_eq!(alice.close_code().await, Some(1009));
    // A binary message in fragments is refused like a whole one, and the socket goes on.
    let mut alice = app.connect("alice").await;
    alice
        .send_raw(Message::Frame(Frame::message(
            vec![1, 2],
            OpCode::Data(Data::Binary),
            false,
        )))
        .await;
    alice
        .send_raw(Message::Frame(Frame::message(
            vec![3],
            OpCode::Data(Data::Continue),
            true,
        )))
        .await;
    let reply = alice.next_reply().await;
    assert_eq!(reply["code"], "bad_request", "{reply}");
    alice.ok(json!({"type": "ping"})).await;
    // Nothing stored, and bob is served.
    assert_eq!(app.db.count("SELECT count(*) FROM messages").await, 0);
    bob.ok(json!({"type": "ping"})).await;
    alice.send_dm("bob", "fine", "f-1").await;
    assert_eq!(bob.event_of("message").await["message"]["body"], "fine");
}

#[tokio::test]
async fn a_flood_of_pings_leaves_everyone_else_served() {
    let app = spawn().await;
    let mut bob = app.connect("bob").await;
    let mut carol = app.connect("carol").await;
    let mut flooder = app.connect("mallory").await;
    let flood = async {
        for _ in 0..5_000 {
            flooder.send_raw(Message::Ping(vec![0u8; 100].into())).await;
        }
        // And a flood of JSON pings, which the rate limit may refuse.
        for _ in 0..500 {
            flooder.send_text(r#"{"type":"ping"}"#).await;
        }
    };
    let others = async {
        for i in 0..20 {
            let sent = bob
                .send_dm("carol", &format!("m{i}"), &format!("k{i}"))
                .await;
            let got = carol.event_of("message").await;
            assert_eq!(got["message"]["id"], sent["id"]);
        }
    };
    tokio::time::timeout(PATIENCE * 2, async { tokio::join!(flood, others) })
        .await
        .expect("others are served during the flood");
    // And after it.
    carol.ok(json!({"type": "ping"})).await;
    let reply = reqwest::get(app.http("/live")).await.unwrap();
    assert_eq!(reply.status(), 200);
}

/// A token signed with `secret` and `alg`, carrying `claims` as given.
fn jwt(alg: Algorithm, secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn b64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ABC[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

/// A token whose header says `header` and whose signature is whatever `sig` is.
fn forged(header: Value, claims: Value, sig: &str) -> String {
    format!(
        "{}.{}.{sig}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Tokens that must be refused with 401 `unauthorized`, each with what it tries.
fn bad_tokens() -> Vec<(&'static str, Option<String>)> {
    let exp = now() + 3600;
    let hs = |claims: Value| jwt(Algorithm::HS256, SECRET, claims);
    let good_claims = json!({"sub": "mallory", "exp": exp});
    let signature_of_a_good_token = hs(good_claims.clone())
        .rsplit('.')
        .next()
        .unwrap()
        .to_string();
    vec![
        ("no token", None),
        ("empty", Some(String::new())),
        ("garbage", Some("garbage".into())),
        ("three dots of garbage", Some("a.b.c".into())),
        (
            "alg none, no signature",
            Some(forged(
                json!({"alg":"none","typ":"JWT"}),
                good_claims.clone(),
                "",
            )),
        ),
        (
            "alg none, with a signature",
            Some(forged(
                json!({"alg":"none","typ":"JWT"}),
                good_claims.clone(),
                &signature_of_a_good_token,
            )),
        ),
        (
            "HS512 with the right secret",
            Some(jwt(Algorithm::HS512, SECRET, good_claims.clone())),
        ),
        (
            "RS256 header over an HS256 signature",
            Some(forged(
                json!({"alg":"RS256","typ":"JWT"}),
                good_claims.clone(),
                &signature_of_a_good_token,
            )),
        ),
        (
            "wrong secret",
            Some(jwt(Algorithm::HS256, "not-the-secret", good_claims.clone())),
        ),
        (
            "claims changed after signing",
            Some(forged(
                json!({"alg":"HS256","typ":"JWT"}),
                json!({"sub": "admin", "exp": exp}),
                &signature_of_a_good_token,
            )),
        ),
        (
            "expired",
            Some(hs(json!({"sub": "mallory", "exp": now() - 60}))),
        ),
        ("no exp", Some(hs(json!({"sub": "mallory"})))),
        (
            "exp a string",
            Some(hs(json!({"sub": "mallory", "exp": exp.to_string()}))),
        ),
        ("no sub", Some(hs(json!({"exp": exp})))),
        ("sub a number", Some(hs(json!({"sub": 7, "exp": exp})))),
        ("sub empty", Some(hs(json!({"sub": "", "exp": exp})))),
        (
            "sub with a space",
            Some(hs(json!({"sub": "mal lory", "exp": exp}))),
        ),
        (
            "sub with NUL",
            Some(hs(json!({"sub": "mal\u{0}lory", "exp": exp}))),
        ),
        (
            "sub with a zero-width space",
            Some(hs(json!({"sub": "mal\u{200b}lory", "exp": exp}))),
        ),
        (
            "sub with an RTL override",
            Some(hs(json!({"sub": "\u{202e}mallory", "exp": exp}))),
        ),
        (
            "sub over 64 chars",
            Some(hs(json!({"sub": "m".repeat(65), "exp": exp}))),
        ),
        (
            "sub that looks like SQL",
            Some(hs(json!({"sub": "x' OR '1'='1", "exp": exp}))),
        ),
        (
            "name over 100 chars",
            Some(hs(
                json!({"sub": "mallory", "name": "n".repeat(101), "exp": exp}),
            )),
        ),
        (
            "name with NUL",
            Some(hs(
                json!({"sub": "mallory", "name": "Mal\u{0}", "exp": exp}),
            )),
        ),
        (
            "name a number",
            Some(hs(json!({"sub": "mallory", "name": 5, "exp": exp}))),
        ),
    ]
}

#[tokio::test]
async fn hostile_tokens_are_refused_before_the_upgrade_and_by_the_api() {
    let app = spawn().await;
    let mut bob = app.connect("bob").await;
    let before = rows(&app).await;
    let http = reqwest::Client::new();
    let mut cases = 0;
    for (what, token) in bad_tokens() {
        // The socket, with the token in the header.
        let refused = app.try_connect(token.as_deref()).await;
        let (status, body) = refused.err().unwrap_or_else(|| panic!("{what}: accepted"));
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
        // The socket, with the token in the query string.
        if let Some(t) = &token {
            let url = format!("ws://{}/ws?token={}", app.addr, urlencode(t));
            let refused = common::try_connect_url(&url, None).await;
            let (status, body) = refused.err().unwrap_or_else(|| panic!("{what}: accepted"));
            assert_eq!(
                (status, &body["error"]["code"]),
                (401, &json!("unauthorized")),
                "{what}"
            );
        }
        // The HTTP API, reading and writing.
        let with = |r: reqwest::RequestBuilder| match &token {
            Some(t) => r.header("authorization", format!("Bearer {t}")),
            None => r,
        };
        let get = with(http.get(app.http("/api/conversations")))
            .send()
            .await
            .unwrap();
        assert_eq!(get.status(), 401, "{what}");
        let body: Value = get.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
        let post = with(http.post(app.http("/api/conversations/d1/messages")))
            .json(&json!({"body": "x", "client_msg_id": "t"}))
            .send()
            .await
            .unwrap();
        assert_eq!(post.status(), 401, "{what}");
        cases += 4;
        assert_eq!(rows(&app).await, before, "{what}: stored something");
    }
    assert!(cases >= 90, "{cases} token cases");
    // Other ways of not sending a bearer token.
    for header in ["Basic bWFsbG9yeTpwdw==", "Bearer", "Token abc", "Bearer  "] {
        let r = http
            .get(app.http("/api/conversations"))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{header}");
    }
    // bob, already connected, is served; a good token still works.
    bob.ok(json!({"type": "ping"})).await;
    let mut alice = app.connect("alice").await;
    alice.send_dm("bob", "hi", "tok-1").await;
    assert_eq!(bob.event_of("message").await["message"]["body"], "hi");
}

/// A token not valid before an hour from now.
#[tokio::test]
async fn a_token_not_yet_valid_is_refused() {
    let app = spawn().await;
    let token = jwt(
        Algorithm::HS256,
        SECRET,
        json!({"sub": "mallory", "nbf": now() + 3600, "exp": now() + 7200}),
    );
    let (status, body) = app.try_connect(Some(&token)).await.err().expect("refused");
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("unauthorized"))
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One HTTP case: method, path, content type, body, and the status and code expected.
struct HttpCase {
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn http_corpus(a: &Arena) -> Vec<HttpCase> {
    let (d, f) = (&a.direct, &a.foreign);
    let json_ct = Some("application/json");
    let post = |path: String, ct, body: &[u8], status, code| HttpCase {
        method: "POST",
        path,
        content_type: ct,
        body: body.to_vec(),
        status,
        code,
    };
    let get = |path: String, status, code| HttpCase {
        method: "GET",
        path,
        content_type: None,
        body: Vec::new(),
        status,
        code,
    };
    let send = format!("/api/conversations/{d}/messages");
    let body = |v: Value| v.to_string().into_bytes();
    let long = "x".repeat(65);
    let mut cases = vec![
        // Bodies that are not a send.
        post(send.clone(), json_ct, b"not json", 400, "bad_request"),
        post(send.clone(), json_ct, b"", 400, "bad_request"),
        post(send.clone(), json_ct, b"[1]", 400, "bad_request"),
        post(send.clone(), json_ct, b"null", 400, "bad_request"),
        post(send.clone(), json_ct, b"\xff\xfe{}", 400, "bad_request"),
        post(
            send.clone(),
            json_ct,
            &body(json!({"client_msg_id": "h"})),
            400,
            "bad_request",
        ),
        post(
            send.clone(),
            json_ct,
            &body(json!({"body": "x"})),
            400,
            "bad_request",
        ),
        post(
            send.clone(),
            json_ct,
            &body(json!({"body": 5, "client_msg_id": "h"})),
            400,
            "bad_request",
        ),
        post(
            send.clone(),
            json_ct,
            &body(json!({"body": null, "client_msg_id": "h"})),
            400,
            "bad_request",
        ),
        post(
            send.clone(),
            json_ct,
            &body(json!({"body": "", "client_msg_id": "h"})),
            400,
            "bad_request",
        ),
        post(
            send.clone(),
            json_ct,
            &body(json!({"body": "a\u{0}", "client_msg_id": "h"})),
            400,
            "bad_request",
        ),
        post(
            send.clone(),
            json_ct,
            &body(json!({"body": "x", "client_msg_id": "h\u{0}"})),
            400,
            "bad_request",
        ),
        post(
            send.clone(),
            json_ct,
            &body(json!({"body": "x", "client_msg_id": long})),
            400,
            "bad_request",
        ),
        post(
            send.clone(),
            json_ct,
            &body(json!({"body": "x", "client_msg_id": 1e3})),
            400,
            "bad_request",
        ),
        post(
            send.clone(),
            json_ct,
            &body(json!({"body": "x", "client_msg_id": ""})),
            400,
            "bad_request",
        ),
        post(
            send.clone(),
            json_ct,
            br#"{"body":"a","body":"b","client_msg_id":"h"}"#,
            400,
            "bad_request",
        ),
        post(
            send.clone(),
            json_ct,
            format!(
                r#"{{"body":{},"client_msg_id":"h"}}"#,
                "[".repeat(300) + &"]".repeat(300)
            )
            .as_bytes(),
            400,
            "bad_request",
        ),
        post(
            send.clone(),
            json_ct,
            &body(json!({"body": "é".repeat(51), "client_msg_id": "h"})),
            413,
            "too_large",
        ),
        // A body past the byte limit (max_frame_bytes, as on the socket).
        post(
            send.clone(),
            json_ct,
            &body(json!({"body": "x".repeat(10_000), "client_msg_id": "h"})),
            413,
            "too_large",
        ),
        post(
            send.clone(),
            json_ct,
            &vec![b' '; 100_000],
            413,
            "too_large",
        ),
        // Wrong content types.
        post(
            send.clone(),
            Some("text/plain"),
            &body(json!({"body": "x", "client_msg_id": "h"})),
            400,
            "bad_request",
        ),
        post(
            send.clone(),
            None,
            &body(json!({"body": "x", "client_msg_id": "h"})),
            400,
            "bad_request",
        ),
        post(
            send.clone(),
            Some("application/x-www-form-urlencoded"),
            b"body=x&client_msg_id=h",
            400,
            "bad_request",
        ),
        post(
            send.clone(),
            Some("multipart/form-data; boundary=x"),
            b"--x--",
            400,
            "bad_request",
        ),
        // Path segments.
        post(
            "/api/conversations/a%00b/messages".into(),
            json_ct,
            &body(json!({"body": "x", "client_msg_id": "h"})),
            400,
            "bad_request",
        ),
        post(
            format!("/api/conversations/{long}/messages"),
            json_ct,
            &body(json!({"body": "x", "client_msg_id": "h"})),
            400,
            "bad_request",
        ),
        post(
            "/api/conversations/%FF/messages".into(),
            json_ct,
            &body(json!({"body": "x", "client_msg_id": "h"})),
            400,
            "bad_request",
        ),
        post(
            format!("/api/conversations/{d}%E2%80%8B/messages"),
            json_ct,
            &body(json!({"body": "x", "client_msg_id": "h"})),
            404,
            "not_found",
        ),
        post(
            format!("/api/conversations/%E2%80%AE{d}/messages"),
            json_ct,
            &body(json!({"body": "x", "client_msg_id": "h"})),
            404,
            "not_found",
        ),
        post(
            format!("/api/conversations/{d}'%20OR%20'1'='1/messages"),
            json_ct,
            &body(json!({"body": "x", "client_msg_id": "h"})),
            404,
            "not_found",
        ),
        post(
            format!("/api/conversations/{d}%01/messages"),
            json_ct,
            &body(json!({"body": "x", "client_msg_id": "h"})),
            404,
            "not_found",
        ),
        post(
            format!("/api/conversations/{f}/messages"),
            json_ct,
            &body(json!({"body": "x", "client_msg_id": "h"})),
            403,
            "forbidden",
        ),
        // History's query and path.
        get(
            format!("/api/conversations/{d}/messages?limit=0"),
            400,
            "bad_request",
        ),
        get(
            format!("/api/conversations/{d}/messages?limit=-1"),
            400,
            "bad_request",
        ),
        get(
            format!("/api/conversations/{d}/messages?limit=101"),
            400,
            "bad_request",
        ),
        get(
            format!("/api/conversations/{d}/messages?limit=1e3"),
            400,
            "bad_request",
        ),
        get(
            format!("/api/conversations/{d}/messages?limit=%225%22"),
            400,
            "bad_request",
        ),
        get(
            format!("/api/conversations/{d}/messages?limit=9223372036854775808"),
            400,
            "bad_request",
        ),
        get(
            format!("/api/conversations/{d}/messages?limit=5%00"),
            400,
            "bad_request",
        ),
        get(
            format!("/api/conversations/{d}/messages?limit=1&limit=2"),
            400,
            "bad_request",
        ),
        get(
            format!("/api/conversations/{d}/messages?before_cseq=0"),
            400,
            "bad_request",
        ),
        get(
            format!("/api/conversations/{d}/messages?before_cseq=abc"),
            400,
            "bad_request",
        ),
        get(
            format!("/api/conversations/{d}/messages?before_cseq=%FF"),
            400,
            "bad_request",
        ),
        get(
            "/api/conversations/a%00b/messages".into(),
            400,
            "bad_request",
        ),
        get(
            format!("/api/conversations/{long}/messages"),
            400,
            "bad_request",
        ),
        get("/api/conversations/%FF/messages".into(), 400, "bad_request"),
        get("/api/conversations/nope/messages".into(), 404, "not_found"),
        get(format!("/api/conversations/{f}/messages"), 403, "forbidden"),
        get("/api/conversations/x/y/z".into(), 404, "not_found"),
        get("/api/../../etc/passwd".into(), 404, "not_found"),
        get("/api/conversations%00".into(), 404, "not_found"),
    ];
    // The socket's path without an upgrade is a bad request, in the documented shape.
    cases.push(get("/ws".into(), 400, "bad_request"));
    cases
}

async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn hostile_http_requests_get_their_documented_status_and_store_nothing() {
    let app = spawn().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let a = arena(&app, &mut alice, &mut bob).await;
    let token = app.token("alice");
    let http = reqwest::Client::new();
    let cases = http_corpus(&a);
    let mut tally = Tally::new(&app).await;
    for (i, c) in cases.iter().enumerate() {
        let url = app.http(&c.path);
        let mut r = match c.method {
            "GET" => http.get(url),
            _ => http.post(url),
        }
        .header("authorization", format!("Bearer {token}"));
        if let Some(ct) = c.content_type {
            r = r.header("content-type", ct);
        }
        let response = r.body(c.body.clone()).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status != c.status
            || body["error"]["code"] != c.code
            || !body["error"]["message"].is_string()
        {
            tally.wrong.push(format!(
                "case {i}: {} {}: expected {} {}, got {status} {text:?}",
                c.method, c.path, c.status, c.code
            ));
        }
        let what = format!("case {i}: {} {}", c.method, c.path);
        tally.stored_nothing(&app, &what).await;
    }
    tally.finish();
    // Verbatim through HTTP too, and the socket sees it.
    let odd = "'; DROP TABLE messages; -- \u{202e}\u{200b}\u{1}";
    let auth = format!("Bearer {token}");
    let path = format!("/api/conversations/{}/messages", a.direct);
    let sent = json_of(
        http.post(app.http(&path))
            .header("authorization", &auth)
            .json(&json!({"body": odd, "client_msg_id": odd})),
    )
    .await;
    assert_eq!(sent["message"]["body"], odd, "{sent}");
    assert_eq!(bob.event_of("message").await["message"]["body"], odd);
    let page = json_of(
        http.get(app.http(&format!("{path}?limit=1")))
            .header("authorization", &auth),
    )
    .await;
    assert_eq!(page["messages"][0]["client_msg_id"], odd, "{page}");
    // The sockets were untouched by all of it.
    both_still_served(&mut alice, &mut bob).await;
}

/// Frames that break RFC 6455 end the socket, since the stream cannot be read past them,
/// with the close code that says why; the server goes on serving everyone else.
#[tokio::test]
async fn websocket_protocol_violations_close_with_1002_or_1007() {
    let app = spawn().await;
    let mut bob = app.connect("bob").await;
    let raw = |op: Data, data: &[u8], fin: bool| {
        Message::Frame(Frame::message(data.to_vec(), OpCode::Data(op), fin))
    };
    let cases: Vec<(&str, Vec<Message>, u16)> = vec![
        (
            "invalid UTF-8",
            vec![raw(Data::Text, b"{\xff}", true)],
            1007,
        ),
        (
            "UTF-8 cut between fragments and never finished",
            vec![
                raw(Data::Text, b"{\"type\":\"\xe2\x82", false),
                raw(Data::Continue, b"\"}", true),
            ],
            1007,
        ),
        (
            "a continuation with nothing to continue",
            vec![raw(Data::Continue, b"x", true)],
            1002,
        ),
        (
            "a new text frame inside a fragmented one",
            vec![raw(Data::Text, b"{", false), raw(Data::Text, b"{}", true)],
            1002,
        ),
        (
            "a reserved opcode",
            vec![raw(Data::Reserved(3), b"x", true)],
            1002,
        ),
    ];
    for (what, frames, code) in cases {
        let mut c = app.connect("alice").await;
        for f in frames {
            c.send_raw(f).await;
        }
        assert_eq!(c.close_code().await, Some(code), "{what}");
        bob.ok(json!({"type": "ping"})).await;
    }
    let mut alice = app.connect("alice").await;
    alice.send_dm("bob", "fine", "v-1").await;
    assert_eq!(bob.event_of("message").await["message"]["body"], "fine");
}

/// Batches of random request-shaped frames, pipelined on one socket: each gets exactly one
/// reply, in order, with its ref and a documented code; a batch refused whole stores
/// nothing; the socket goes on. Few cases: each costs round trips to a real server.
#[test]
fn random_frames_over_a_socket_each_get_one_documented_reply_in_order() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (app, alice, a) = rt.block_on(async {
        let app = spawn().await;
        let mut alice = app.connect("alice").await;
        let mut bob = app.connect("bob").await;
        let a = arena(&app, &mut alice, &mut bob).await;
        (app, alice, a)
    });
    let strings = vec![
        "bob", "alice", &a.direct, &a.group, &a.foreign, "", "x\u{0}", "\u{202e}", "nope", "start",
        "stop", "'; --",
    ]
    .into_iter()
    .map(|s| Value::from(s.to_string()))
    .collect::<Vec<_>>();
    let leaf = prop_oneof![
        prop::sample::select(strings.clone()),
        prop::sample::select(vec![-1i64, 0, 1, 5, 100, 101, i64::MAX]).prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        Just(Value::from(1.5)),
        Just(Value::Null),
        prop::collection::vec(prop::sample::select(strings), 0..3).prop_map(Value::from),
    ];
    let kinds = vec![
        "resume",
        "send",
        "history",
        "conversations",
        "receipts",
        "group_create",
        "group_add",
        "group_remove",
        "group_leave",
        "read",
        "typing",
        "presence_subscribe",
        "ping",
        "nope",
    ];
    let keys = vec![
        "after",
        "conversation",
        "to",
        "body",
        "client_msg_id",
        "before_cseq",
        "before",
        "limit",
        "name",
        "members",
        "users",
        "cseq",
        "state",
    ];
    let frame = (
        prop::sample::select(kinds),
        prop::collection::vec((prop::sample::select(keys), leaf), 0..5),
    );
    let batch = prop::collection::vec(frame, 1..6);
    let documented = [
        "bad_request",
        "unknown_type",
        "not_found",
        "forbidden",
        "too_large",
        "resync_required",
    ];
    let mut runner = TestRunner::new(Config {
        // PROPTEST_CASES raises it for a longer hunt.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(48),
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        source_file: Some(file!()),
        ..Config::default()
    });
    // The runner takes a `Fn`: the socket and the ref counter are borrowed per case.
    let alice = std::cell::RefCell::new(alice);
    let n = std::cell::Cell::new(0u64);
    runner
        .run(&batch, |batch| {
            let mut alice = alice.borrow_mut();
            rt.block_on(async {
                let before = rows(&app).await;
                let mut refs = Vec::new();
                for (kind, fields) in &batch {
                    n.set(n.get() + 1);
                    let mut v = json!({"type": kind, "ref": n.get()});
                    for (k, value) in fields {
                        v[*k] = value.clone();
                    }
                    alice.send_text(v.to_string()).await;
                    refs.push((n.get(), v));
                }
                let mut all_refused = true;
                for (r, sent) in refs {
                    let reply = alice.next_reply().await;
                    prop_assert_eq!(&reply["ref"], &json!(r), "{} -> {}", sent, reply);
                    if reply["type"] == "ok" {
                        all_refused = false;
                    } else {
                        let code = reply["code"].as_str().unwrap_or_default();
                        prop_assert!(documented.contains(&code), "{} -> {}", sent, reply);
                    }
                }
                alice.ok(json!({"type": "ping"})).await;
                if all_refused {
                    // Known exception, see `Case`: a refused group_add may leave users.
                    let users = usize::from(batch.iter().any(|(k, _)| *k == "group_add"));
                    prop_assert_eq!(&rows(&app).await[users..], &before[users..]);
                }
                Ok::<(), TestCaseError>(())
            })
        })
        .unwrap();
}

/// A known path asked with a method it does not serve: 405, an `Allow` header naming the
/// methods it takes, and the error body naming them too (docs/PROTOCOL.md).
#[tokio::test]
async fn a_known_path_asked_with_another_method_names_the_methods_it_takes() {
    let app = spawn().await;
    let http = reqwest::Client::new();
    for (method, path, methods) in [
        (reqwest::Method::DELETE, "/api/conversations", "GET,HEAD"),
        (
            reqwest::Method::PUT,
            "/api/conversations/c1/messages",
            "GET,HEAD,POST",
        ),
        (reqwest::Method::POST, "/health", "GET,HEAD"),
    ] {
        let response = http
            .request(method.clone(), app.http(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 405, "{method} {path}");
        let allow = response.headers()["allow"].to_str().unwrap().to_string();
        assert_eq!(allow, methods, "{method} {path}: Allow");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_request", "{method} {path}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.ends_with(methods), "{method} {path}: {message}");
    }
}
