//! The browser demo's routes: its files (types, caching, the page's Content-Security-Policy),
//! the development sign-in `POST /dev/token` and the bad input it refuses with the socket's
//! own words, and production, where none of it exists. The demo itself runs in a browser
//! in tests/browser.rs.

mod common;

use common::{TestApp, SECRET};
use pgchat::foundation::config::DevSignIn;
use serde_json::{json, Value};

/// A server with development sign-in open: the test secret is configured, which closes it
/// by default.
async fn demo_app() -> TestApp {
    TestApp::spawn_with(|c| c.dev_sign_in = DevSignIn::On).await
}

/// That none of the demo's paths exists on `app`: 404, exactly like an unknown path.
async fn no_demo(app: &TestApp) {
    let http = reqwest::Client::new();
    let unknown = http.get(app.http("/no-such-page")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let unknown: Value = unknown.json().await.unwrap();
    for (path, _) in FILES {
        let r = http.get(app.http(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(r.json::<Value>().await.unwrap(), unknown, "{path}");
    }
    for method in [reqwest::Method::POST, reqwest::Method::GET] {
        let r = http
            .request(method.clone(), app.http("/dev/token"))
            .json(&json!({"user": "alice"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{method} /dev/token");
        assert_eq!(r.json::<Value>().await.unwrap(), unknown);
    }
}

const FILES: [(&str, &str); 5] = [
    ("/", "text/html; charset=utf-8"),
    ("/app.js", "text/javascript; charset=utf-8"),
    ("/app.css", "text/css; charset=utf-8"),
    ("/pgchat.js", "text/javascript; charset=utf-8"),
    ("/icon.svg", "image/svg+xml"),
];

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("{} has no {name} header", r.url()))
        .to_str()
        .unwrap()
}

async fn sign_in(app: &TestApp, body: Value) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = reqwest::Client::new()
        .post(app.http("/dev/token"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.json().await.unwrap_or(Value::Null), headers)
}

#[tokio::test]
async fn the_demo_files_are_served_with_their_types_caching_and_policy() {
    let app = demo_app().await;
    let http = reqwest::Client::new();
    for (path, content_type) in FILES {
        let r = http.get(app.http(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(header(&r, "content-type"), content_type, "{path}");
        assert_eq!(header(&r, "cache-control"), "no-cache", "{path}");
        assert_eq!(header(&r, "x-content-type-options"), "nosniff", "{path}");
        let etag = header(&r, "etag").to_string();
        assert!(
            etag.starts_with('"') && etag.ends_with('"'),
            "{path}: {etag}"
        );
        let csp = r
            .headers()
            .get("content-security-policy")
            .map(|v| v.to_str().unwrap().to_string());
        let body = r.bytes().await.unwrap();
        assert!(!body.is_empty(), "{path}");

        // The same version again: 304, no body, the same validators.
        let again = http
            .get(app.http(path))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
        assert_eq!(header(&again, "etag"), etag);
        assert!(again.bytes().await.unwrap().is_empty());
        let other = http
            .get(app.http(path))
            .header("if-none-match", "\"0000000000000000\"")
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 200, "{path}: another version is sent whole");

        if path == "/" {
            let csp = csp.expect("the page has a Content-Security-Policy");
            let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
            for d in [
                "default-src 'none'",
                "script-src 'self'",
                "style-src 'self'",
                "connect-src 'self' ws: wss:",
                "frame-ancestors 'none'",
            ] {
                assert!(directives.contains(&d), "CSP lacks {d:?}: {csp}");
            }
            assert!(
                !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
                "{csp}"
            );
        }
    }
    // HEAD answers like GET, without the body.
    let head = http.head(app.http("/")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "content-type"), "text/html; charset=utf-8");
}

#[tokio::test]
async fn the_page_has_no_inline_script_and_the_app_never_parses_data_as_html() {
    let app = demo_app().await;
    let html = reqwest::get(app.http("/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lower = html.to_ascii_lowercase();
    // Every script comes from this origin, by src; no handler attributes, no javascript: URLs.
    for (i, _) in lower.match_indices("<script") {
        let tag = &lower[i..i + lower[i..].find('>').unwrap()];
        assert!(tag.contains(" src=\"/"), "an inline script: {tag}");
        assert!(
            lower[i..].starts_with(&format!("{tag}></script>")),
            "a script with a body: {tag}"
        );
    }
    for attr in [
        " onload=",
        " onerror=",
        " onclick=",
        " onsubmit=",
        "javascript:",
    ] {
        assert!(!lower.contains(attr), "the page holds {attr:?}");
    }
    // The application renders with textContent: none of the DOM's HTML parsers.
    let js = reqwest::get(app.http("/app.js"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "createContextualFragment",
        "DOMParser",
    ] {
        assert!(!js.contains(sink), "app.js uses {sink}");
    }
    // /pgchat.js is the client the repository ships, byte for byte.
    let client = reqwest::get(app.http("/pgchat.js"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(client, include_str!("../clients/js/pgchat.js"));
    assert!(client.contains("export class PgChat"));
}

#[tokio::test]
async fn a_minted_token_connects_as_the_user_with_the_name() {
    let app = demo_app().await;
    let (status, body, headers) = sign_in(&app, json!({"user": "alice", "name": "Alice"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"], "alice");
    assert_eq!(body["name"], "Alice");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(headers["cache-control"], "no-store");
    // Minting stores nothing: the user appears when they connect.
    assert_eq!(app.db.count("SELECT count(*) FROM users").await, 0);

    let token = body["token"].as_str().unwrap();
    let identity = pgchat::foundation::auth::Authenticator::new(SECRET)
        .verify(token)
        .unwrap();
    assert_eq!(identity.user.as_str(), "alice");
    let mut alice = common::Client::connect(&app, token).await;
    assert_eq!(alice.hello["user"], "alice");
    let sent = alice.send_dm("bob", "hi", "m1").await;
    assert_eq!(sent["sender"], json!({"id": "alice", "name": "Alice"}));

    // No name, a null name, and a blank one are all no name.
    for body in [
        json!({"user": "bob"}),
        json!({"user": "bob", "name": null}),
        json!({"user": "bob", "name": "  "}),
    ] {
        let (status, reply, _) = sign_in(&app, body.clone()).await;
        assert_eq!(status, 200, "{body}: {reply}");
        assert_eq!(reply["name"], Value::Null, "{body}");
        let token = reply["token"].as_str().unwrap();
        assert_eq!(
            pgchat::foundation::auth::Authenticator::new(SECRET)
                .verify(token)
                .unwrap()
                .name,
            None
        );
    }
    // Unknown fields are ignored, as in every request.
    let (status, _, _) = sign_in(&app, json!({"user": "carol", "colour": "blue"})).await;
    assert_eq!(status, 200);
    // The longest name a token may carry is accepted.
    let (status, _, _) = sign_in(&app, json!({"user": "dave", "name": "n".repeat(100)})).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_name_the_protocol_forbids_is_refused_with_the_sockets_words() {
    let app = demo_app().await;
    let mut witness = app.connect("witness").await;
    let bad = [
        String::new(),
        "alice smith".into(),
        "x".repeat(65),
        "<script>".into(),
        "ålice".into(),
        "a/b".into(),
        "a\u{0}b".into(),
        "bob\u{200b}".into(),
        "é".repeat(64) + "é",
    ];
    for name in &bad {
        let (status, body, _) = sign_in(&app, json!({ "user": name })).await;
        assert_eq!(status, 400, "{name:?}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{name:?}");
        let message = body["error"]["message"].as_str().unwrap();
        // The socket's refusal of the same id, as a `send` to it.
        let reply = witness
            .err(
                json!({"type": "send", "to": name, "body": "x", "client_msg_id": "c"}),
                "bad_request",
            )
            .await;
        let socket = reply["message"].as_str().unwrap();
        assert_eq!(
            message.strip_prefix("user: ").expect(message),
            socket.strip_prefix("send: to: ").expect(socket),
            "{name:?}"
        );
    }

    let name_rule = "name: a string of at most 100 characters, without NUL";
    let refused: Vec<(Value, &str)> = vec![
        (json!({}), "user: missing (the user id to sign in as)"),
        (
            json!({"user": null}),
            "user: missing (the user id to sign in as)",
        ),
        (json!({"user": 42}), "user: must be a user id string"),
        (json!({"user": ["alice"]}), "user: must be a user id string"),
        (json!({"user": "alice", "name": "n".repeat(101)}), name_rule),
        (json!({"user": "alice", "name": "a\u{0}b"}), name_rule),
        (json!({"user": "alice", "name": 7}), name_rule),
    ];
    for (body, message) in refused {
        let (status, reply, _) = sign_in(&app, body.clone()).await;
        assert_eq!(status, 400, "{body}: {reply}");
        assert_eq!(reply["error"]["code"], "bad_request", "{body}");
        assert_eq!(reply["error"]["message"], message, "{body}");
    }

    // Bodies that are not a JSON object of the right kind, as on the HTTP API.
    let http = reqwest::Client::new();
    let raw = |body: &'static str, content_type: &'static str| {
        http.post(app.http("/dev/token"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    for (body, content_type, needle) in [
        (r#"{"user":"alice"}"#, "text/plain", "Content-Type"),
        (r#"{"user":"#, "application/json", ""),
        (r#"["alice"]"#, "application/json", ""),
        (
            r#"{"user":"alice","user":"mallory"}"#,
            "application/json",
            "duplicate field",
        ),
    ] {
        let r = raw(body, content_type).await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let reply: Value = r.json().await.unwrap();
        assert_eq!(reply["error"]["code"], "bad_request", "{body}");
        assert!(
            reply["error"]["message"].as_str().unwrap().contains(needle),
            "{body}: {reply}"
        );
    }
    let huge = format!(r#"{{"user":"alice","name":"{}"}}"#, "n".repeat(70_000));
    let r = http
        .post(app.http("/dev/token"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "too_large"
    );
    assert_eq!(app.db.count("SELECT count(*) FROM users").await, 1);
}

#[tokio::test]
async fn minted_tokens_follow_the_deployments_token_rules() {
    let app = TestApp::spawn_with(|c| {
        c.dev_sign_in = DevSignIn::On;
        c.jwt_max_lifetime_secs = 600;
        c.jwt_audience = Some("chat".into());
    })
    .await;
    let (status, body, _) = sign_in(&app, json!({"user": "alice"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 600, "capped by jwt_max_lifetime_secs");
    let token = body["token"].as_str().unwrap();
    // The server's own rules (audience required, iat and the cap) accept it.
    let alice = common::Client::connect(&app, token).await;
    assert_eq!(alice.hello["user"], "alice");
}

#[tokio::test]
async fn in_production_there_is_no_demo_and_no_sign_in() {
    let app = TestApp::spawn_with(|c| {
        c.dev_sign_in = DevSignIn::Auto;
        c.node_env = pgchat::foundation::config::NodeEnv::Production;
        c.jwt_secret = Some("p".repeat(40).into());
    })
    .await;
    no_demo(&app).await;
    let http = reqwest::Client::new();
    // The rest of the server is there.
    assert_eq!(
        http.get(app.http("/live")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn with_a_secret_the_backend_trusts_there_is_no_sign_in_unless_asked_for() {
    // The operator's JWT_SECRET, outside production, with nothing else said: minting a
    // token for anyone under it would make anyone anyone, wherever it is trusted.
    let app = TestApp::spawn_with(|c| c.dev_sign_in = DevSignIn::Auto).await;
    no_demo(&app).await;
    let off = TestApp::spawn_with(|c| {
        c.dev_sign_in = DevSignIn::Off;
        c.jwt_secret = None;
        c.data_dir = std::env::temp_dir().join(format!("pgchat-demo-{}", rand::random::<u32>()));
    })
    .await;
    no_demo(&off).await;
}

#[tokio::test]
async fn sign_ins_are_limited_per_client_address() {
    let app = TestApp::spawn_with(|c| {
        c.dev_sign_in = DevSignIn::On;
        c.dev_sign_in_per_minute = 3;
    })
    .await;
    for i in 0..3 {
        let (status, body, _) = sign_in(&app, json!({"user": format!("u{i}")})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body, headers) = sign_in(&app, json!({"user": "u3"})).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(
        body["error"]["retry_after_ms"].as_u64().unwrap() > 1000,
        "{body}"
    );
    assert!(headers.get("retry-after").is_some());
}

#[test]
fn a_generated_secret_opens_sign_in_on_loopback_only() {
    use pgchat::Config;
    let generated = Config {
        jwt_secret: None,
        ..Config::default()
    };
    assert!(generated.dev_sign_in_open());
    assert_eq!(generated.listen_host(), "127.0.0.1");
    // Asked for elsewhere: where host says.
    let anywhere = Config {
        host: Some("0.0.0.0".into()),
        ..generated.clone()
    };
    assert_eq!(anywhere.listen_host(), "0.0.0.0");
    // A configured secret closes it, and the server listens on every interface.
    let configured = Config {
        jwt_secret: Some("s".repeat(40).into()),
        ..Config::default()
    };
    assert!(!configured.dev_sign_in_open());
    assert_eq!(configured.listen_host(), "0.0.0.0");
    // Production never has it, and refuses to be told otherwise.
    let production = Config {
        node_env: pgchat::foundation::config::NodeEnv::Production,
        jwt_secret: Some("s".repeat(40).into()),
        dev_sign_in: DevSignIn::On,
        ..Config::default()
    };
    let e = production.validate().unwrap_err();
    assert!(e.to_string().contains("dev_sign_in"), "{e}");
}

/// This machine's address on its network, if it has one (the source address of a route
/// to a documentation-only address: nothing is sent).
fn non_loopback_address() -> Option<std::net::IpAddr> {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    probe.connect("192.0.2.1:9").ok()?;
    let ip = probe.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test]
async fn with_the_generated_secret_the_server_listens_on_loopback_and_says_so() {
    let db = common::TestDb::new().await;
    let data = std::env::temp_dir().join(format!("pgchat-loopback-{}", rand::random::<u32>()));
    let port = common::cluster::free_ports(1);
    let mut child = common::pgchat_command()
        .env("DATABASE_URL", &db.url)
        .env("PORT", port.to_string())
        .env("PGCHAT_DATA_DIR", &data)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_ready(&format!("http://127.0.0.1:{port}/ready")).await;
    let signed = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/dev/token"))
        .json(&json!({"user": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 200, "the demo's sign-in is open");
    if let Some(ip) = non_loopback_address() {
        let outside = tokio::net::TcpStream::connect((ip, port)).await;
        assert!(
            outside.is_err(),
            "reachable at {ip}:{port} from outside loopback"
        );
    }
    let _ = child.start_kill();
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("development sign-in is open") && stderr.contains("127.0.0.1 only"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&data);
}
