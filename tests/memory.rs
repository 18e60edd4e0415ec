//! Memory that one user can make a worker hold (issue 17): the review's reproduction, from
//! outside. A real `pgchat serve` process; one user's 20 sockets (the per-user cap), each
//! with tiny receive buffers, pipelining `history` pages of 100 long messages whose every
//! character JSON escapes to six bytes (each followed by a ping), and 40 HTTP connections
//! asking the API for the same page; none reads. The worker's resident memory is
//! read from /proc while the sockets stay open.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u64) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kb * 1024
}

/// A WebSocket that asks for much and reads nothing: a 4 KiB receive buffer, so the
/// kernel takes little of what the server sends before the server must hold it.
async fn stalled_socket(
    port: u16,
    token: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        socket.connect(&addr.into()).unwrap();
        socket.set_nonblocking(true).unwrap();
        let stream = tokio::net::TcpStream::from_std(socket.into()).unwrap();
        let mut request = format!("ws://127.0.0.1:{port}/ws")
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        match tokio_tungstenite::client_async(request, stream).await {
            Ok((ws, _)) => return ws,
            // 503 not_ready: the worker's database connections are all busy.
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no upgrade within the patience window: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test]
async fn one_user_s_stalled_sockets_cannot_pin_a_worker_s_memory() {
    // The rate limit is lifted so that the pipelined requests are sent at once; with the
    // default (20/s, burst 40) the same requests get through in half a minute.
    let cluster = Cluster::start(
        1,
        &[
            ("PGCHAT_RATE_LIMIT_PER_SEC", "100000"),
            ("PGCHAT_RATE_LIMIT_BURST", "100000"),
        ],
    )
    .await;
    let token = cluster.token("mallory");
    let mut mallory = cluster.connect(0, "mallory").await;
    let group = mallory
        .ok(json!({"type": "group_create", "name": "g", "members": ["alice"]}))
        .await;
    let group = group["conversation"]["id"].as_str().unwrap().to_string();
    drop(mallory);
    // 100 messages of 4000 characters that JSON writes as \u0001: 24 KB each on the wire,
    // 2.4 MB a page.
    cluster
        .db
        .client()
        .await
        .batch_execute(&format!(
            "SELECT pgchat.send('alice', '{group}', repeat(chr(1), 4000), 'g-' || i)
             FROM generate_series(1, 100) AS i"
        ))
        .await
        .unwrap();
    let pid = cluster.health(0).await["pid"].as_u64().unwrap();
    let before = rss(pid);
    let mut sockets = Vec::new();
    for _ in 0..20 {
        sockets.push(stalled_socket(cluster.port(0), &token).await);
    }
    for ws in &mut sockets {
        // History pages, each followed by a ping: replies queue behind one another (the
        // writer hands tungstenite one while the next waits).
        for r in 0..16 {
            let request = json!({"type": "history", "conversation": group, "limit": 100, "ref": r});
            ws.send(Message::text(request.to_string())).await.unwrap();
            let ping = json!({"type": "ping", "ref": format!("p{r}")});
            ws.send(Message::text(ping.to_string())).await.unwrap();
        }
    }
    // And the HTTP API: 40 connections asking for the same page, reading nothing back.
    let mut http = Vec::new();
    for _ in 0..40 {
        http.push(stalled_http(cluster.port(0), &token, &group).await);
    }
    // Give the worker time to run every request it will run, and to hold what it holds.
    let mut peak = before;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        peak = peak.max(rss(pid));
    }
    let grown = peak.saturating_sub(before);
    println!(
        "worker RSS before {:.1} MiB, peak with 20 stalled sockets and 40 HTTP connections {:.1} MiB: grew {:.1} MiB",
        before as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        grown as f64 / 1048576.0
    );
    // The user's share of the reply budget is 16 MiB by default; allocator slack and the
    // rows being encoded come on top, but nothing near the 112 MiB this cost before.
    assert!(
        grown < 48 * 1024 * 1024,
        "one user's stalled sockets grew the worker by {:.1} MiB",
        grown as f64 / 1048576.0
    );
    // Everyone else is served meanwhile.
    let mut carol = cluster.connect(0, "carol").await;
    carol.ok(json!({"type": "ping"})).await;
    drop((sockets, http));
}

/// An HTTP connection that asks for a history page and reads nothing back.
async fn stalled_http(port: u16, token: &str, conversation: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    socket.connect(&addr.into()).unwrap();
    socket.set_nonblocking(true).unwrap();
    let mut stream = tokio::net::TcpStream::from_std(socket.into()).unwrap();
    let request = format!(
        "GET /api/conversations/{conversation}/messages?limit=100 HTTP/1.1\r\n\
         Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

#[tokio::test]
async fn a_client_that_reads_gets_every_pipelined_reply_however_little_its_share() {
    // The smallest share the configuration allows (one worst-case reply): ten pipelined
    // pages of long messages must all be answered, in order, to a client that reads them.
    let app = common::TestApp::spawn_with(|c| {
        c.outbound_user_bytes = c.largest_reply();
        c.rate_limit_burst = 1000;
    })
    .await;
    let mut mallory = app.connect("mallory").await;
    let group = mallory
        .ok(json!({"type": "group_create", "name": "g", "members": ["alice"]}))
        .await;
    let group = group["conversation"]["id"].as_str().unwrap().to_string();
    app.db
        .client()
        .await
        .batch_execute(&format!(
            "SELECT pgchat.send('alice', '{group}', repeat(chr(1), 4000), 'g-' || i)
             FROM generate_series(1, 100) AS i"
        ))
        .await
        .unwrap();
    // Delivered live first: the worker has heard of them (and its cache knows).
    for _ in 0..100 {
        mallory.event_of("message").await;
    }
    for r in 0..10 {
        let request = json!({"type": "history", "conversation": group, "limit": 100, "ref": r});
        mallory.send_text(request.to_string()).await;
    }
    for r in 0..10 {
        let reply = mallory.reply_to_int(r).await;
        assert_eq!(reply["type"], "ok", "reply {r}: {}", reply["code"]);
        assert_eq!(reply["messages"].as_array().unwrap().len(), 100);
    }
}
