//! The machine-readable specs (docs/asyncapi.yaml, docs/openapi.yaml) against the server.
//!
//! 1. Both files are valid for the official parsers (tests/js/validate-specs.mjs).
//! 2. A real server is driven through scenarios that produce every server frame type, an
//!    `ok` reply to every request kind, every error code and every close code, and HTTP
//!    responses of every documented status; every frame and response is captured and
//!    tests/js/check-frames.mjs checks each against the schema for its direction and type
//!    (replies against the reply schema of the request they answer), and fails on anything
//!    the specs do not describe or on anything they describe that was never seen.
//!
//! Faults are real: the database is made unreachable (connections refused) for
//! `unavailable` and `not_ready`, a table is renamed behind the server's back for
//! `internal`, the server's role loses a privilege for close 1011, and retention prunes
//! events for `resync_required` and close 1013.

mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestApp, PATIENCE};
use futures_util::{SinkExt, StreamExt};
use pgchat::foundation::auth::Authenticator;
use pgchat::foundation::protocol::UserId;
use serde_json::{json, Map, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Everything the test saw, as check-frames.mjs reads it.
#[derive(Default)]
struct Capture {
    ws: Vec<Value>,
    http: Vec<Value>,
    /// Documented things the scenarios could not produce on this build, with why.
    skipped: Map<String, Value>,
}

type Shared = Arc<Mutex<Capture>>;

static CONN: AtomicU64 = AtomicU64::new(0);

/// Whether a client frame should pass the request schema of its type.
#[derive(Clone, Copy, PartialEq)]
enum Expect {
    /// A well-formed request (the server may still refuse it, e.g. `not_found`).
    Valid,
    /// Sent to provoke an error the schema also forbids.
    Invalid,
}

/// A WebSocket client that records every frame it sends and receives.
struct Rec {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    cap: Shared,
    conn: u64,
    label: String,
    events: VecDeque<Value>,
    next_ref: u64,
    hello: Value,
}

/// How a connection attempt ended: a session, or the HTTP refusal.
enum Connect {
    Open(Box<Rec>),
    Refused(u16, Value),
}

impl Rec {
    async fn try_connect(app: &TestApp, cap: &Shared, label: &str, token: &str) -> Connect {
        let mut request = format!("ws://{}/ws", app.addr)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        Self::try_request(cap, label, request).await
    }

    async fn try_request(
        cap: &Shared,
        label: &str,
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Connect {
        let path = request.uri().path().to_string();
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, response)) => {
                record_http(
                    cap,
                    "GET",
                    &path,
                    response.status().as_u16(),
                    None,
                    None,
                    None,
                );
                let mut rec = Rec {
                    ws,
                    cap: cap.clone(),
                    conn: CONN.fetch_add(1, Ordering::Relaxed),
                    label: label.to_string(),
                    events: VecDeque::new(),
                    next_ref: 0,
                    hello: Value::Null,
                };
                let hello = rec.recv().await.expect("hello");
                assert_eq!(hello["type"], "hello", "{hello}");
                rec.hello = hello;
                Connect::Open(Box::new(rec))
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let header = |h: &str| {
                    resp.headers()
                        .get(h)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let body: Value = resp
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                record_http(
                    cap,
                    "GET",
                    &path,
                    status,
                    header("content-type"),
                    header("retry-after"),
                    Some(body.clone()),
                );
                Connect::Refused(status, body)
            }
            Err(e) => panic!("connect failed unexpectedly: {e}"),
        }
    }

    async fn connect(app: &TestApp, cap: &Shared, user: &str) -> Rec {
        Self::connect_with(app, cap, user, &app.token(user)).await
    }

    async fn connect_with(app: &TestApp, cap: &Shared, label: &str, token: &str) -> Rec {
        match Self::try_connect(app, cap, label, token).await {
            Connect::Open(r) => *r,
            Connect::Refused(status, body) => panic!("{label}: connect refused: {status} {body}"),
        }
    }

    fn log(&self, mut record: Value) {
        record["conn"] = json!(self.conn);
        record["label"] = json!(self.label);
        self.cap.lock().unwrap().ws.push(record);
    }

    /// Sends a JSON request as it is.
    async fn send(&mut self, frame: &Value, expect: Expect) {
        let expect = if expect == Expect::Valid {
            "valid"
        } else {
            "invalid"
        };
        self.log(json!({"dir": "client", "kind": "text", "frame": frame, "expect": expect}));
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }

    /// Sends a frame that is not a JSON request (not JSON, binary, broken WebSocket);
    /// `reply`: whether the server answers it (frames that close the socket get none).
    async fn send_raw(&mut self, msg: Message, what: &str, reply: bool) {
        self.log(json!({"dir": "client", "kind": "raw", "text": what, "reply": reply}));
        self.ws.send(msg).await.unwrap();
    }

    /// The next text frame within `d`: Err on timeout, Ok(None) once closed.
    async fn recv_within(&mut self, d: Duration) -> Result<Option<Value>, ()> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(()),
                Ok(None) | Ok(Some(Err(_))) => return Ok(None),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => {
                    let frame: Value = serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {t}", self.label));
                    self.log(json!({"dir": "server", "kind": "text", "frame": frame}));
                    return Ok(Some(frame));
                }
                Message::Binary(b) => {
                    self.log(json!({"dir": "server", "kind": "binary", "text": format!("{} bytes", b.len())}));
                }
                Message::Close(frame) => {
                    let code = frame.as_ref().map(|f| u16::from(f.code));
                    let reason = frame.as_ref().map(|f| f.reason.to_string());
                    self.log(
                        json!({"dir": "server", "kind": "close", "code": code, "reason": reason}),
                    );
                    return Ok(None);
                }
                _ => continue,
            }
        }
    }

    async fn recv(&mut self) -> Option<Value> {
        self.recv_within(PATIENCE)
            .await
            .unwrap_or_else(|()| panic!("{}: no frame within the patience window", self.label))
    }

    /// Sends `frame` with a fresh ref; the reply (events that come first are kept).
    async fn request(&mut self, mut frame: Value, expect: Expect) -> Value {
        self.next_ref += 1;
        // Both kinds of ref: strings and integers.
        let r = if self.next_ref.is_multiple_of(2) {
            json!(self.next_ref)
        } else {
            json!(format!("r{}", self.next_ref))
        };
        frame["ref"] = r.clone();
        self.send(&frame, expect).await;
        loop {
            let f = self.recv().await.unwrap_or_else(|| {
                panic!(
                    "{}: socket closed awaiting the reply to {frame}",
                    self.label
                )
            });
            if f["type"] == "ok" || f["type"] == "error" {
                assert_eq!(f["ref"], r, "replies come in order");
                return f;
            }
            self.events.push_back(f);
        }
    }

    async fn ok(&mut self, frame: Value) -> Value {
        let reply = self.request(frame.clone(), Expect::Valid).await;
        assert_eq!(
            reply["type"], "ok",
            "{}: {frame} failed: {reply}",
            self.label
        );
        reply
    }

    /// A well-formed request the server refuses with `code`.
    async fn refused(&mut self, frame: Value, code: &str) -> Value {
        self.expect_error(frame, Expect::Valid, code).await
    }

    /// A request the schema forbids too, refused with `code`.
    async fn invalid(&mut self, frame: Value, code: &str) -> Value {
        self.expect_error(frame, Expect::Invalid, code).await
    }

    async fn expect_error(&mut self, frame: Value, expect: Expect, code: &str) -> Value {
        let reply = self.request(frame.clone(), expect).await;
        assert_eq!(reply["type"], "error", "{}: {frame}: {reply}", self.label);
        assert_eq!(reply["code"], code, "{}: {frame}: {reply}", self.label);
        reply
    }

    /// The next reply to a frame sent without a ref.
    async fn next_reply(&mut self) -> Value {
        loop {
            let f = self.recv().await.expect("socket open awaiting a reply");
            if f["type"] == "ok" || f["type"] == "error" {
                return f;
            }
            self.events.push_back(f);
        }
    }

    /// The next event of type `kind` (earlier events of other types are dropped).
    async fn event_of(&mut self, kind: &str) -> Value {
        while let Some(e) = self.events.pop_front() {
            if e["type"] == kind {
                return e;
            }
        }
        loop {
            let f = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("{}: closed awaiting a {kind} event", self.label));
            if f["type"] == kind {
                return f;
            }
        }
    }

    /// Reads until the server closes; the close code.
    async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.recv_within(PATIENCE).await {
                Err(()) => panic!("{}: the socket did not close in time", self.label),
                Ok(Some(_)) => continue,
                Ok(None) => break,
            }
        }
        let cap = self.cap.lock().unwrap();
        cap.ws
            .iter()
            .rev()
            .find(|r| r["conn"] == self.conn)
            .and_then(|r| r["code"].as_u64())
            .map(|c| c as u16)
    }

    async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Read to the end so the server's side is gone before the test goes on.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

fn record_http(
    cap: &Shared,
    method: &str,
    path: &str,
    status: u16,
    content_type: Option<String>,
    retry_after: Option<String>,
    body: Option<Value>,
) {
    cap.lock().unwrap().http.push(json!({
        "method": method,
        "path": path,
        "status": status,
        "content_type": content_type,
        "retry_after": retry_after,
        "body": body,
    }));
}

/// An HTTP request to the server, recorded; the status and body (JSON, or text as a string).
struct Http<'a> {
    app: &'a TestApp,
    cap: Shared,
    client: reqwest::Client,
}

impl Http<'_> {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> (u16, Value) {
        let method_ = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.client.request(method_, self.app.http(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let header = |h: &str| {
            resp.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header("content-type");
        let retry_after = header("retry-after");
        let etag = header("etag");
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else if content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("application/json"))
        {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        } else {
            Value::String(text)
        };
        record_http(
            &self.cap,
            method,
            path,
            status,
            content_type,
            retry_after,
            Some(body.clone()),
        );
        if let Some(etag) = etag {
            self.cap.lock().unwrap().http.last_mut().unwrap()["etag"] = json!(etag);
        }
        (status, body)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.call("GET", path, token, &[], None).await
    }

    async fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        self.json("POST", path, token, body).await
    }

    async fn patch_json(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        self.json("PATCH", path, token, body).await
    }

    async fn json(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> (u16, Value) {
        self.call(
            method,
            path,
            token,
            &[("content-type", "application/json")],
            Some(body.to_string()),
        )
        .await
    }

    async fn delete(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.call("DELETE", path, token, &[], None).await
    }

    /// Each v1.2 route once, as `token`: for the refusals every route shares (429, 500,
    /// 503). `dm` is a conversation; the statuses, in the order asked.
    async fn every_change_route(&self, dm: &str, token: &str) -> Vec<u16> {
        let message = format!("/api/conversations/{dm}/messages/1");
        vec![
            self.patch_json(&message, Some(token), &json!({"body": "changed"}))
                .await
                .0,
            self.delete(&message, Some(token)).await.0,
            self.post_json(
                &format!("{message}/reactions"),
                Some(token),
                &json!({"emoji": "+1", "on": true}),
            )
            .await
            .0,
            self.get("/api/search?q=lunch", Some(token)).await.0,
            self.get(&format!("/api/conversations/{dm}/receipts"), Some(token))
                .await
                .0,
        ]
    }
}

/// Polls until `cond` holds; panics after PATIENCE.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An admin connection to the test server's `postgres` database (to take this test's
/// database away and give it back).
async fn maintenance(db_url: &str) -> tokio_postgres::Client {
    let (base, _) = db_url.rsplit_once('/').unwrap();
    let (client, conn) =
        tokio_postgres::connect(&format!("{base}/postgres"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test]
async fn the_specs_are_valid_and_describe_every_frame_the_server_sends() {
    // 1. Both documents pass the official parsers (checked while the scenarios run).
    let validation = common::node::node("validate-specs.mjs")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node runs");

    // 2. A server to capture from, running as a role of its own (so that a privilege can
    // be taken away), with limits small enough to reach quickly.
    let db = common::TestDb::new().await;
    let role = db.url_for_role("pgchat_spec").await;
    let mut app = TestApp::spawn_on(db, |c| {
        c.database_url = Some(role.clone());
        // The demo's sign-in is captured too (the test secret would close it).
        c.dev_sign_in = pgchat::foundation::config::DevSignIn::On;
        c.dev_sign_in_per_minute = 3;
        // Who shares no conversation is `unknown` to presence.
        c.presence_open = false;
        c.presence_grace_ms = 200;
        c.max_connections = 24;
        c.max_sockets_per_user = 3;
        // A burst the scenarios stay within, and a refill slow enough that a flood is
        // refused, even on a busy machine.
        c.rate_limit_per_sec = 5;
        c.rate_limit_burst = 200;
        // A feed of one frame: a new direct conversation's two events are read from the
        // table (how close 1011 is reached below).
        c.recent_events_per_user = 1;
        c.db_acquire_timeout_ms = 500;
        c.health_cache_ms = 10;
    })
    .await;
    let cap: Shared = Arc::new(Mutex::new(Capture::default()));
    let http = Http {
        app: &app,
        cap: cap.clone(),
        client: reqwest::Client::new(),
    };
    let admin = app.db.client().await;

    // A token that expires in 3 s (a margin for a busy machine): token_expiring right after
    // hello, then close 1008.
    let short = Authenticator::new(common::SECRET).mint(
        &UserId::parse("frank").unwrap(),
        None,
        Duration::from_secs(3),
    );
    let mut frank = Rec::connect_with(&app, &cap, "frank", &short).await;

    // ---- messaging, groups, reads, typing, presence: the durable and ephemeral events.
    let mut alice = Rec::connect(&app, &cap, "alice").await;
    let mut bob = Rec::connect(&app, &cap, "bob").await;
    let sent = alice
        .ok(json!({"type": "send", "to": "bob", "body": "hi bob", "client_msg_id": "m1"}))
        .await;
    let dm = sent["message"]["conversation"]
        .as_str()
        .unwrap()
        .to_string();
    bob.event_of("conversation").await;
    bob.event_of("message").await;
    alice
        .ok(json!({"type": "send", "conversation": dm, "body": "<b>again</b>", "client_msg_id": "m2"}))
        .await;
    // The same client_msg_id: the first message again.
    alice
        .ok(json!({"type": "send", "conversation": dm, "body": "ignored", "client_msg_id": "m1"}))
        .await;
    bob.event_of("message").await;
    bob.ok(json!({"type": "read", "conversation": dm, "cseq": 2}))
        .await;
    alice.event_of("read").await;
    alice
        .ok(json!({"type": "typing", "conversation": dm, "state": "start"}))
        .await;
    assert_eq!(bob.event_of("typing").await["state"], "start");
    alice
        .ok(json!({"type": "typing", "conversation": dm, "state": "stop"}))
        .await;
    assert_eq!(bob.event_of("typing").await["state"], "stop");
    bob.ok(json!({"type": "history", "conversation": dm, "limit": 1}))
        .await;
    bob.ok(json!({"type": "history", "conversation": dm, "before_cseq": 2}))
        .await;
    let group = alice
        .ok(json!({"type": "group_create", "name": "Team", "members": ["bob", "carol"], "client_op_id": "op-1"}))
        .await;
    let g = group["conversation"]["id"].as_str().unwrap().to_string();
    bob.event_of("conversation").await;
    alice
        .ok(json!({"type": "group_add", "conversation": g, "users": ["dave", "erin"], "admin": true}))
        .await;
    alice
        .ok(json!({"type": "members", "conversation": g, "limit": 2}))
        .await;
    alice
        .ok(json!({"type": "members", "conversation": g, "after": "bob"}))
        .await;
    alice
        .ok(json!({"type": "receipts", "conversation": g, "limit": 2}))
        .await;
    alice
        .ok(json!({"type": "receipts", "conversation": g, "after": "bob"}))
        .await;
    alice
        .ok(json!({"type": "group_remove", "conversation": g, "users": ["dave"]}))
        .await;
    bob.ok(json!({"type": "conversations"})).await;
    bob.ok(json!({"type": "conversations", "limit": 1})).await;
    bob.ok(json!({"type": "group_leave", "conversation": g}))
        .await;
    bob.event_of("removed").await;
    // Presence: bob is online; erin (in alice's group, never connected) offline with no
    // last_seen; mallory shares nothing with alice: unknown. Then erin comes and goes.
    let snapshot = alice
        .ok(json!({"type": "presence_subscribe", "users": ["bob", "erin", "mallory"]}))
        .await;
    let statuses: Vec<&str> = snapshot["presence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["online", "offline", "unknown"], "{snapshot}");
    let erin = Rec::connect(&app, &cap, "erin").await;
    assert_eq!(alice.event_of("presence").await["status"], "online");
    erin.close().await;
    assert_eq!(alice.event_of("presence").await["status"], "offline");
    alice.ok(json!({"type": "ping"})).await;
    // dave, removed while away, resumes: his stream replays what he could see.
    let mut dave = Rec::connect(&app, &cap, "dave").await;
    let head = dave.ok(json!({"type": "resume", "after": 0})).await;
    assert_eq!(head["head"], dave.hello["head"]);
    assert!(dave.events.iter().any(|e| e["type"] == "removed"));
    dave.close().await;

    // ---- v1.2: replies, mentions, edits, reactions, search and deletions, each with
    // its events, and the refusals the schemas also describe.
    let mut uma = Rec::connect(&app, &cap, "uma").await;
    let mut vic = Rec::connect(&app, &cap, "vic").await;
    let first = uma
        .ok(json!({"type": "send", "to": "vic", "body": "lunch at noon?", "client_msg_id": "u1"}))
        .await;
    let ud = first["message"]["conversation"]
        .as_str()
        .unwrap()
        .to_string();
    vic.event_of("message").await;
    let reply = vic
        .ok(
            json!({"type": "send", "conversation": ud, "body": "yes, @uma", "client_msg_id": "v1",
                   "reply_to": 1, "mentions": ["uma"]}),
        )
        .await;
    assert_eq!(
        reply["message"]["reply_to"]["snippet"], "lunch at noon?",
        "{reply}"
    );
    let list = uma.ok(json!({"type": "conversations"})).await;
    assert_eq!(list["conversations"][0]["mentions_unread"], 1, "{list}");
    uma.ok(json!({"type": "edit", "conversation": ud, "cseq": 1, "body": "lunch at one?"}))
        .await;
    let edited = vic.event_of("message_edited").await;
    assert_eq!(edited["message"]["body"], "lunch at one?", "{edited}");
    vic.ok(json!({"type": "react", "conversation": ud, "cseq": 1, "emoji": "👍", "on": true}))
        .await;
    uma.event_of("reaction").await;
    // The same again: {} and no event.
    vic.ok(json!({"type": "react", "conversation": ud, "cseq": 1, "emoji": "👍", "on": true}))
        .await;
    uma.ok(json!({"type": "edit", "conversation": ud, "cseq": 1, "body": "lunch at one?"}))
        .await;
    let found = uma
        .ok(json!({"type": "search", "query": "lunch", "limit": 1}))
        .await;
    assert_eq!(found["messages"][0]["body"], "lunch at one?", "{found}");
    uma.ok(
        json!({"type": "search", "query": "\"at one\" or noon", "conversation": ud,
                  "before_id": found["messages"][0]["id"].as_i64().unwrap() + 1}),
    )
    .await;
    uma.ok(json!({"type": "history", "conversation": ud})).await;
    uma.ok(json!({"type": "delete", "conversation": ud, "cseq": 1}))
        .await;
    vic.event_of("message_deleted").await;
    uma.ok(json!({"type": "delete", "conversation": ud, "cseq": 1}))
        .await;
    // The tombstone, and the reply whose snippet went with it.
    let page = vic.ok(json!({"type": "history", "conversation": ud})).await;
    assert_eq!(
        (
            &page["messages"][0]["deleted"],
            &page["messages"][1]["reply_to"]["snippet"]
        ),
        (&json!(true), &json!("")),
        "{page}"
    );
    vic.ok(json!({"type": "conversations"})).await;
    // Refused by the state of things.
    uma.refused(
        json!({"type": "edit", "conversation": ud, "cseq": 2, "body": "not mine"}),
        "forbidden",
    )
    .await;
    uma.refused(
        json!({"type": "delete", "conversation": ud, "cseq": 2}),
        "forbidden",
    )
    .await;
    vic.refused(
        json!({"type": "react", "conversation": ud, "cseq": 1, "emoji": "👍", "on": false}),
        "not_found",
    )
    .await;
    vic.refused(
        json!({"type": "edit", "conversation": ud, "cseq": 9, "body": "nothing there"}),
        "not_found",
    )
    .await;
    vic.refused(
        json!({"type": "react", "conversation": ud, "cseq": 2, "emoji": "  ", "on": true}),
        "bad_request",
    )
    .await;
    vic.refused(
        json!({"type": "send", "conversation": ud, "body": "hey", "client_msg_id": "v2",
               "mentions": ["mallory"]}),
        "bad_request",
    )
    .await;
    vic.refused(
        json!({"type": "send", "conversation": ud, "body": "hey", "client_msg_id": "v3",
               "reply_to": 99}),
        "bad_request",
    )
    .await;
    uma.refused(
        json!({"type": "search", "query": "plan", "conversation": g}),
        "forbidden",
    )
    .await;
    uma.refused(json!({"type": "search", "query": "  "}), "bad_request")
        .await;
    // Refused by the schemas too.
    uma.invalid(
        json!({"type": "edit", "conversation": ud, "cseq": 0, "body": "x"}),
        "bad_request",
    )
    .await;
    vic.invalid(
        json!({"type": "edit", "conversation": ud, "cseq": 2, "body": "x".repeat(4001)}),
        "too_large",
    )
    .await;
    vic.invalid(json!({"type": "delete", "conversation": ud}), "bad_request")
        .await;
    vic.invalid(
        json!({"type": "react", "conversation": ud, "cseq": 2, "emoji": "", "on": true}),
        "bad_request",
    )
    .await;
    vic.invalid(
        json!({"type": "react", "conversation": ud, "cseq": 2, "emoji": "x".repeat(33), "on": true}),
        "too_large",
    )
    .await;
    vic.invalid(
        json!({"type": "react", "conversation": ud, "cseq": 2, "emoji": "👍", "on": "yes"}),
        "bad_request",
    )
    .await;
    vic.invalid(
        json!({"type": "send", "conversation": ud, "body": "hey", "client_msg_id": "v4",
               "reply_to": 0}),
        "bad_request",
    )
    .await;
    let many: Vec<String> = (0..51).map(|i| format!("u{i}")).collect();
    vic.invalid(
        json!({"type": "send", "conversation": ud, "body": "hey", "client_msg_id": "v5",
               "mentions": many}),
        "too_large",
    )
    .await;
    uma.invalid(json!({"type": "search", "query": ""}), "bad_request")
        .await;
    uma.invalid(
        json!({"type": "search", "query": "x".repeat(201)}),
        "too_large",
    )
    .await;
    uma.invalid(
        json!({"type": "search", "query": "x", "limit": 51}),
        "bad_request",
    )
    .await;
    uma.invalid(
        json!({"type": "search", "query": "x", "before_id": 0}),
        "bad_request",
    )
    .await;
    // A session of vic's replays the stream: the reaction, whose message is deleted, comes
    // back as message_deleted, and the messages as they are now (tombstones).
    let mut vic2 = Rec::connect(&app, &cap, "vic").await;
    vic2.ok(json!({"type": "resume", "after": 0})).await;
    let kinds: Vec<&str> = vic2
        .events
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "conversation",
            "message",
            "message",
            "message_edited",
            "message_deleted",
            "message_deleted"
        ],
        "{:?}",
        vic2.events
    );
    vic2.close().await;
    uma.close().await;
    vic.close().await;

    // ---- token refresh in place.
    alice
        .ok(json!({"type": "auth", "token": app.token("alice")}))
        .await;
    alice
        .refused(
            json!({"type": "auth", "token": app.token("bob")}),
            "forbidden",
        )
        .await;
    let forged = Authenticator::new("another-secret").mint(
        &UserId::parse("alice").unwrap(),
        None,
        Duration::from_secs(600),
    );
    alice
        .refused(json!({"type": "auth", "token": forged}), "unauthorized")
        .await;
    alice
        .invalid(json!({"type": "auth", "token": ""}), "bad_request")
        .await;

    // ---- requests the server refuses.
    alice
        .invalid(
            json!({"type": "history", "conversation": dm, "limit": 0}),
            "bad_request",
        )
        .await;
    // A ref of the wrong type: the error cannot echo it.
    alice
        .send(
            &json!({"type": "ping", "ref": {"not": "a ref"}}),
            Expect::Invalid,
        )
        .await;
    let e = alice.next_reply().await;
    assert_eq!(
        (&e["code"], e.get("ref")),
        (&json!("bad_request"), None),
        "{e}"
    );
    alice
        .invalid(json!({"type": "send", "to": "bob", "conversation": dm, "body": "x", "client_msg_id": "m3"}), "bad_request")
        .await;
    alice
        .invalid(
            json!({"type": "read", "conversation": dm, "cseq": "2"}),
            "bad_request",
        )
        .await;
    // Well-formed, refused by the state of things.
    alice
        .refused(
            json!({"type": "read", "conversation": dm, "cseq": 99}),
            "bad_request",
        )
        .await;
    alice
        .refused(
            json!({"type": "group_leave", "conversation": dm}),
            "bad_request",
        )
        .await;
    alice
        .refused(json!({"type": "resume", "after": 1_000_000}), "bad_request")
        .await;
    alice
        .send_raw(Message::text("{not json"), "not JSON", true)
        .await;
    assert_eq!(alice.next_reply().await["code"], "bad_request");
    alice
        .send_raw(
            Message::text(r#"{"type":"ping","type":"send"}"#),
            "a duplicated field",
            true,
        )
        .await;
    assert_eq!(alice.next_reply().await["code"], "bad_request");
    alice
        .send_raw(Message::binary(vec![1u8, 2, 3]), "a binary frame", true)
        .await;
    assert_eq!(alice.next_reply().await["code"], "bad_request");
    alice.invalid(json!({"type": "nope"}), "unknown_type").await;
    alice
        .refused(
            json!({"type": "history", "conversation": "no-such"}),
            "not_found",
        )
        .await;
    let mut mallory = Rec::connect(&app, &cap, "mallory").await;
    mallory
        .refused(json!({"type": "history", "conversation": g}), "forbidden")
        .await;
    mallory
        .refused(
            json!({"type": "group_add", "conversation": g, "users": ["mallory"]}),
            "forbidden",
        )
        .await;
    alice
        .invalid(
            json!({"type": "send", "conversation": dm, "body": "x".repeat(4001), "client_msg_id": "m4"}),
            "too_large",
        )
        .await;

    // ---- rate limits: one bucket per user, shared by the sockets and the HTTP API.
    let mut flood = Rec::connect(&app, &cap, "flood").await;
    let flood_token = app.token("flood");
    let (mut api_429, mut history_429, mut post_429) = (false, false, false);
    let mut changes_429 = [false; 5];
    let mut socket_429 = false;
    let flood_path = format!("/api/conversations/{dm}/messages");
    for _ in 0..5 {
        for _ in 0..250 {
            flood.next_ref += 1;
            let frame = json!({"type": "ping", "ref": flood.next_ref});
            flood.send(&frame, Expect::Valid).await;
        }
        for _ in 0..250 {
            socket_429 |= flood.next_reply().await["code"] == "rate_limited";
        }
        api_429 |= http.get("/api/conversations", Some(&flood_token)).await.0 == 429;
        history_429 |= http.get(&flood_path, Some(&flood_token)).await.0 == 429;
        post_429 |=
            http.post_json(
                &flood_path,
                Some(&flood_token),
                &json!({"body": "x", "client_msg_id": "f1"}),
            )
            .await
            .0 == 429;
        for (seen, status) in changes_429
            .iter_mut()
            .zip(http.every_change_route(&dm, &flood_token).await)
        {
            *seen |= status == 429;
        }
        if socket_429 && api_429 && history_429 && post_429 && changes_429.iter().all(|s| *s) {
            break;
        }
    }
    assert!(
        socket_429 && api_429 && history_429 && post_429 && changes_429.iter().all(|s| *s),
        "the flood was not limited: {changes_429:?}"
    );
    flood.close().await;

    // ---- resync_required: events retention pruned before oscar resumed from 0.
    alice
        .ok(json!({"type": "send", "to": "oscar", "body": "old news", "client_msg_id": "o1"}))
        .await;
    admin
        .batch_execute(
            "UPDATE event_queue SET created_at = now() - interval '2 days' WHERE user_id = 'oscar';
             SELECT prune_events(interval '1 day', 100);",
        )
        .await
        .unwrap();
    let mut oscar = Rec::connect(&app, &cap, "oscar").await;
    oscar
        .refused(json!({"type": "resume", "after": 0}), "resync_required")
        .await;
    oscar.close().await;

    // ---- close 1013: a live session whose next events are pruned before it sends them.
    let mut gus = Rec::connect(&app, &cap, "gus").await;
    admin
        .batch_execute(
            "BEGIN;
             SELECT pgchat.ensure_user('shop');
             SELECT pgchat.send_direct('shop', 'gus', 'your order', 'order-1');
             UPDATE event_queue SET created_at = now() - interval '2 days' WHERE user_id = 'gus';
             SELECT prune_events(interval '1 day', 100);
             COMMIT;",
        )
        .await
        .unwrap();
    assert_eq!(gus.close_code().await, Some(1013));

    // ---- close 1011: the server's role may no longer read the event stream.
    let mut hank = Rec::connect(&app, &cap, "hank").await;
    admin
        .batch_execute("REVOKE SELECT ON event_queue FROM pgchat_spec")
        .await
        .unwrap();
    // A new direct conversation: two events each for ivan and hank, which a feed of one
    // frame cannot hold, so both sessions read the table, and fail.
    let mut ivan = Rec::connect(&app, &cap, "ivan").await;
    ivan.send(
        &json!({"type": "send", "to": "hank", "body": "hello", "client_msg_id": "h-1", "ref": "h"}),
        Expect::Valid,
    )
    .await;
    assert_eq!(hank.close_code().await, Some(1011));
    assert_eq!(ivan.close_code().await, Some(1011));
    admin
        .batch_execute("GRANT SELECT ON event_queue TO pgchat_spec")
        .await
        .unwrap();

    // ---- frames that end the session: 1009, 1007, 1002.
    let mut big = Rec::connect(&app, &cap, "ivan1").await;
    big.send_raw(
        Message::text(format!(
            r#"{{"type":"ping","pad":"{}"}}"#,
            "x".repeat(70_000)
        )),
        "a frame over max_frame_bytes",
        false,
    )
    .await;
    assert_eq!(big.close_code().await, Some(1009));
    let raw = |op: Data, data: &[u8]| {
        Message::Frame(Frame::message(data.to_vec(), OpCode::Data(op), true))
    };
    let mut utf = Rec::connect(&app, &cap, "ivan2").await;
    utf.send_raw(
        raw(Data::Text, b"{\xff}"),
        "a text frame that is not UTF-8",
        false,
    )
    .await;
    assert_eq!(utf.close_code().await, Some(1007));
    let mut opcode = Rec::connect(&app, &cap, "ivan3").await;
    opcode
        .send_raw(raw(Data::Reserved(3), b"x"), "a reserved opcode", false)
        .await;
    assert_eq!(opcode.close_code().await, Some(1002));

    // ---- frank's short token: the warning came after hello, the close at expiry.
    let warning = frank.event_of("token_expiring").await;
    assert!(
        warning["expires_in_ms"].as_u64().unwrap() <= 3_000,
        "{warning}"
    );
    assert_eq!(frank.close_code().await, Some(1008));

    // ---- refusals before the upgrade.
    let no_token = format!("ws://{}/ws", app.addr)
        .into_client_request()
        .unwrap();
    match Rec::try_request(&cap, "anonymous", no_token).await {
        Connect::Refused(401, _) => {}
        _ => panic!("a socket without a token is refused with 401"),
    }
    let by_query = format!("ws://{}/ws?token={}", app.addr, app.token("quinn"))
        .into_client_request()
        .unwrap();
    match Rec::try_request(&cap, "quinn", by_query).await {
        Connect::Open(q) => q.close().await,
        Connect::Refused(s, b) => panic!("?token= is refused: {s} {b}"),
    }
    // The user's socket cap (3 here): 429.
    let mut many = Vec::new();
    for _ in 0..3 {
        many.push(Rec::connect(&app, &cap, "many").await);
    }
    match Rec::try_connect(&app, &cap, "many", &app.token("many")).await {
        Connect::Refused(429, body) => assert_eq!(body["error"]["code"], "rate_limited"),
        _ => panic!("a fourth socket for one user is refused with 429"),
    }
    for m in many {
        m.close().await;
    }
    // This worker's capacity (24 sockets here): 503 at_capacity.
    let mut fillers = Vec::new();
    for i in 0..30 {
        match Rec::try_connect(&app, &cap, "filler", &app.token(&format!("fill{i}"))).await {
            Connect::Open(r) => fillers.push(*r),
            Connect::Refused(503, body) => {
                assert_eq!(body["error"]["code"], "at_capacity", "{body}");
                break;
            }
            Connect::Refused(s, b) => panic!("unexpected refusal {s} {b}"),
        }
    }
    assert!(fillers.len() < 30, "the worker never reached its capacity");
    for f in fillers {
        f.close().await;
    }
    let server = app.app.clone();
    until("the fillers' sockets are released", || {
        server.open_sockets() < 12
    })
    .await;
    // Not a WebSocket upgrade: 400 once the token is checked.
    let alice_token = app.token("alice");
    http.get("/ws", Some(&alice_token)).await;

    // ---- the HTTP API and the operational endpoints.
    let messages = format!("/api/conversations/{dm}/messages");
    let group_messages = format!("/api/conversations/{g}/messages");
    let mallory_token = app.token("mallory");
    http.get("/api/conversations", Some(&alice_token)).await;
    http.get("/api/conversations?limit=1", Some(&alice_token))
        .await;
    http.get("/api/conversations?before=nonsense", Some(&alice_token))
        .await;
    http.get("/api/conversations", None).await;
    http.get(&format!("{messages}?limit=1"), Some(&alice_token))
        .await;
    http.get(&format!("{messages}?limit=0"), Some(&alice_token))
        .await;
    http.get(&format!("{messages}?limit=1&limit=2"), Some(&alice_token))
        .await;
    http.get(&messages, None).await;
    http.get(&group_messages, Some(&mallory_token)).await;
    http.get("/api/conversations/no-such/messages", Some(&alice_token))
        .await;
    let send = |id: &str| json!({"body": "over HTTP", "client_msg_id": id});
    http.post_json(&messages, Some(&alice_token), &send("h1"))
        .await;
    http.post_json(&messages, Some(&alice_token), &send("h1"))
        .await;
    http.call(
        "POST",
        &messages,
        Some(&alice_token),
        &[],
        Some(send("h2").to_string()),
    )
    .await;
    http.post_json(
        &messages,
        Some(&alice_token),
        &json!({"body": "x".repeat(4001), "client_msg_id": "h3"}),
    )
    .await;
    http.post_json(
        &messages,
        Some(&alice_token),
        &json!({"body": "x".repeat(70_000), "client_msg_id": "h4"}),
    )
    .await;
    http.post_json(&messages, None, &send("h5")).await;
    http.post_json(&group_messages, Some(&mallory_token), &send("h6"))
        .await;
    http.post_json(
        "/api/conversations/no-such/messages",
        Some(&alice_token),
        &send("h7"),
    )
    .await;
    // v1.2 over HTTP: a reply with a mention, then its edit, reactions, search, receipts
    // and deletion, each with its refusals.
    let uma_token = app.token("uma");
    let vic_token = app.token("vic");
    let ud_messages = format!("/api/conversations/{ud}/messages");
    let (_, sent) = http
        .post_json(
            &ud_messages,
            Some(&vic_token),
            &json!({"body": "see you at one", "client_msg_id": "vh1", "reply_to": 2,
                    "mentions": ["uma"]}),
        )
        .await;
    let cseq = sent["message"]["cseq"].as_i64().expect("a message");
    let message = format!("{ud_messages}/{cseq}");
    let reactions = format!("{message}/reactions");
    let edit = json!({"body": "see you at two"});
    let react = json!({"emoji": "🎉", "on": true});
    http.patch_json(&message, Some(&vic_token), &edit).await;
    http.patch_json(&message, Some(&uma_token), &edit).await;
    http.patch_json(&format!("{ud_messages}/99"), Some(&vic_token), &edit)
        .await;
    http.patch_json(&format!("{ud_messages}/x"), Some(&vic_token), &edit)
        .await;
    http.patch_json(
        &message,
        Some(&vic_token),
        &json!({"body": "x".repeat(4001)}),
    )
    .await;
    http.patch_json(&message, None, &edit).await;
    http.post_json(&reactions, Some(&uma_token), &react).await;
    http.post_json(
        &reactions,
        Some(&uma_token),
        &json!({"emoji": "", "on": true}),
    )
    .await;
    http.post_json(
        &reactions,
        Some(&uma_token),
        &json!({"emoji": "x".repeat(33), "on": true}),
    )
    .await;
    http.post_json(&reactions, Some(&mallory_token), &react)
        .await;
    http.post_json(
        &format!("{ud_messages}/99/reactions"),
        Some(&uma_token),
        &react,
    )
    .await;
    http.post_json(&reactions, None, &react).await;
    http.get(
        &format!("/api/search?q=two&conversation={ud}&limit=5"),
        Some(&uma_token),
    )
    .await;
    http.get("/api/search?q=", Some(&uma_token)).await;
    http.get(
        &format!("/api/search?q={}", "x".repeat(201)),
        Some(&uma_token),
    )
    .await;
    http.get(
        &format!("/api/search?q=two&conversation={g}"),
        Some(&uma_token),
    )
    .await;
    http.get("/api/search?q=two&conversation=no-such", Some(&uma_token))
        .await;
    http.get("/api/search?q=two", None).await;
    let receipts = format!("/api/conversations/{ud}/receipts");
    http.get(&format!("{receipts}?limit=1"), Some(&uma_token))
        .await;
    http.get(&format!("{receipts}?limit=0"), Some(&uma_token))
        .await;
    http.get(&receipts, Some(&mallory_token)).await;
    http.get("/api/conversations/no-such/receipts", Some(&uma_token))
        .await;
    http.get(&receipts, None).await;
    // The conversation list with a mention unread, and the page with the reaction.
    http.get("/api/conversations", Some(&uma_token)).await;
    http.get(&ud_messages, Some(&uma_token)).await;
    http.delete(&message, Some(&uma_token)).await;
    http.delete(&format!("{ud_messages}/0"), Some(&vic_token))
        .await;
    http.delete("/api/conversations/no-such/messages/1", Some(&vic_token))
        .await;
    http.delete(&message, None).await;
    http.delete(&message, Some(&vic_token)).await;
    http.delete(&message, Some(&vic_token)).await;
    http.get("/health", None).await;
    http.get("/ready", None).await;
    http.get("/live", None).await;
    http.get("/metrics", None).await;
    http.call(
        "GET",
        "/metrics",
        None,
        &[("accept", "application/openmetrics-text; version=1.0.0")],
        None,
    )
    .await;
    http.get("/no/such/path", None).await;
    http.call(
        "DELETE",
        "/api/conversations",
        Some(&alice_token),
        &[],
        None,
    )
    .await;
    // The browser demo and its sign-in (development only).
    let (status, _) = http
        .post_json(
            "/dev/token",
            None,
            &json!({"user": "alice", "name": "Alice"}),
        )
        .await;
    if status == 404 {
        let why = "the route is not on this build (it comes with the browser demo)";
        let mut c = cap.lock().unwrap();
        for what in [
            "POST /dev/token",
            "GET /",
            "GET /app.js",
            "GET /app.css",
            "GET /icon.svg",
            "GET /pgchat.js",
        ] {
            c.skipped.insert(what.into(), why.into());
        }
    } else {
        http.post_json("/dev/token", None, &json!({"user": "not a user id"}))
            .await;
        http.post_json("/dev/token", None, &json!({"user": "x".repeat(70_000)}))
            .await;
        // Sign-ins are limited per address (dev_sign_in_per_minute, 3 here): the fourth
        // is refused.
        http.post_json("/dev/token", None, &json!({"user": "alice"}))
            .await;
        for path in ["/", "/app.js", "/app.css", "/icon.svg", "/pgchat.js"] {
            let etag = {
                http.get(path, None).await;
                let c = cap.lock().unwrap();
                c.http.last().unwrap()["etag"].as_str().map(str::to_string)
            };
            let etag = etag.unwrap_or_else(|| panic!("{path} has no ETag"));
            http.call("GET", path, None, &[("if-none-match", &etag)], None)
                .await;
        }
    }

    // ---- internal: a table renamed behind the server's back.
    admin
        .batch_execute("ALTER TABLE messages RENAME TO messages_elsewhere")
        .await
        .unwrap();
    alice
        .refused(
            json!({"type": "send", "conversation": dm, "body": "lost?", "client_msg_id": "m5"}),
            "internal",
        )
        .await;
    http.get("/api/conversations", Some(&alice_token)).await;
    http.get(&format!("{messages}?before_cseq=2"), Some(&alice_token))
        .await;
    http.post_json(&messages, Some(&alice_token), &send("h8"))
        .await;
    let internal = http.every_change_route(&dm, &alice_token).await;
    assert_eq!(&internal[..4], [500; 4], "with messages gone");
    admin
        .batch_execute(
            "ALTER TABLE messages_elsewhere RENAME TO messages;
             ALTER TABLE members RENAME TO members_elsewhere",
        )
        .await
        .unwrap();
    let (status, _) = http
        .get(
            &format!("/api/conversations/{dm}/receipts"),
            Some(&alice_token),
        )
        .await;
    assert_eq!(status, 500, "receipts with members gone");
    admin
        .batch_execute("ALTER TABLE members_elsewhere RENAME TO members")
        .await
        .unwrap();

    // ---- unavailable and not_ready: the database refuses every connection.
    let maint = maintenance(&app.db.url).await;
    let name = app.db.name.clone();
    drop(admin);
    maint
        .batch_execute(&format!(
            "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}';"
        ))
        .await
        .unwrap();
    let unavailable = alice
        .request(
            json!({"type": "send", "conversation": dm, "body": "during", "client_msg_id": "m6"}),
            Expect::Valid,
        )
        .await;
    assert_eq!(unavailable["code"], "unavailable", "{unavailable}");
    http.get("/api/conversations", Some(&alice_token)).await;
    http.get(&format!("{messages}?before_cseq=2"), Some(&alice_token))
        .await;
    http.post_json(&messages, Some(&alice_token), &send("h9"))
        .await;
    let unavailable = http.every_change_route(&dm, &alice_token).await;
    assert_eq!(unavailable, [503; 5], "with the database unreachable");
    http.get("/ready", None).await;
    http.get("/health", None).await;
    match Rec::try_connect(&app, &cap, "carol", &app.token("carol")).await {
        Connect::Refused(503, body) => assert_eq!(body["error"]["code"], "not_ready", "{body}"),
        _ => panic!("a socket is refused while the database is unreachable"),
    }
    maint
        .batch_execute(&format!(
            "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"
        ))
        .await
        .unwrap();

    // ---- close 1001: the server shuts down.
    drop(http);
    app.shutdown().await;
    assert_eq!(alice.close_code().await, Some(1001));
    drop(bob);
    drop(mallory);

    let out = validation.wait_with_output().await.expect("node runs");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "validate-specs.mjs failed");

    // 3. Every captured frame and response against the specs.
    let capture = {
        let c = cap.lock().unwrap();
        json!({"ws": c.ws, "http": c.http, "skipped": c.skipped})
    };
    let file = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("spec-capture.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&capture).unwrap()).unwrap();
    let out = common::node::node("check-frames.mjs")
        .arg(&file)
        .output()
        .await
        .expect("node runs");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the captured frames do not match the specs (capture: {})",
        file.display()
    );
}
