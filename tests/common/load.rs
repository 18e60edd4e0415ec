//! Steady DM and group traffic for the fault tests: one client task per user, each sending
//! one message at a time (alternately to a DM peer on another worker and to its group),
//! reading every event, and recording all of it in the [`Checker`]. A client whose socket
//! dies reconnects (to the next worker when its own refuses) with `?after=` the last seq it
//! saw without a gap, and retries its unacknowledged send with the same `client_msg_id`.
//! Every session is held to strict order: each event must be the one after the last.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::checker::{Checker, Counts, Target};
use super::cluster::Cluster;
use super::pg::PrivatePg;
use super::TestDb;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    /// Send steadily.
    Load,
    /// Send nothing new; finish (retry) what is unacknowledged; keep reading.
    Drain,
    /// Reconnect once more from the last seq seen (`?after=`), catch up, and stop.
    Final,
}

/// A client that stops reading once it has been connected for `after`, until `until` says
/// true.
#[derive(Clone, Debug)]
pub struct Stall {
    pub after: Duration,
    pub until: watch::Receiver<bool>,
    /// SO_RCVBUF of its sockets, small so the server's queue fills rather than the kernel's.
    pub recv_buffer: u32,
}

pub struct Spec {
    pub user: String,
    pub home: usize,
    pub targets: Vec<Target>,
    /// Characters per message body.
    pub body_chars: usize,
    pub stall: Option<Stall>,
}

pub struct Fleet {
    pub checker: Arc<Checker>,
    pub users: Vec<String>,
    phase: watch::Sender<Phase>,
    handles: Vec<JoinHandle<()>>,
}

/// The ordinary load: `users` users spread over the cluster's workers; user i writes to
/// user i+1 (on the next worker) and to its group of `group_size` consecutive users.
pub async fn plan(
    cluster: &Cluster,
    checker: &Checker,
    users: usize,
    group_size: usize,
) -> Vec<Spec> {
    let names: Vec<String> = (0..users).map(|i| format!("u{i}")).collect();
    let mut specs = Vec::new();
    let mut groups = Vec::new();
    for chunk in names.chunks(group_size) {
        let mut creator = cluster.connect(0, &chunk[0]).await;
        let reply = creator
            .ok(
                json!({"type": "group_create", "name": format!("group of {}", chunk[0]),
                       "members": chunk[1..]}),
            )
            .await;
        checker.conversation(&reply["conversation"]);
        groups.push(reply["conversation"]["id"].as_str().unwrap().to_string());
        creator.close().await;
    }
    for (i, user) in names.iter().enumerate() {
        specs.push(Spec {
            user: user.clone(),
            home: i % cluster.workers,
            targets: vec![
                Target::User(names[(i + 1) % users].clone()),
                Target::Conversation(groups[i / group_size].clone()),
            ],
            body_chars: 40,
            stall: None,
        });
    }
    specs
}

impl Fleet {
    /// Starts one client task per spec; each sends every `interval`.
    pub fn start(
        cluster: &Cluster,
        checker: Arc<Checker>,
        specs: Vec<Spec>,
        interval: Duration,
    ) -> Fleet {
        let urls: Arc<Vec<String>> = Arc::new(
            (0..cluster.workers)
                .map(|w| format!("ws://127.0.0.1:{}/ws", cluster.port(w)))
                .collect(),
        );
        let (phase, rx) = watch::channel(Phase::Load);
        let users = specs.iter().map(|s| s.user.clone()).collect();
        let handles = specs
            .into_iter()
            .map(|spec| {
                let client = LoadClient {
                    token: cluster.token(&spec.user),
                    spec,
                    urls: urls.clone(),
                    checker: checker.clone(),
                    phase: rx.clone(),
                    interval,
                    next: 0,
                    pending: None,
                };
                tokio::spawn(client.run())
            })
            .collect();
        Fleet {
            checker,
            users,
            phase,
            handles,
        }
    }

    /// Stops the load, waits for every send to be acknowledged and delivered live, then has
    /// every client reconnect and resume; returns the checker's verdict.
    pub async fn finish(self) -> Result<Counts, String> {
        let _ = self.phase.send(Phase::Drain);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let c = self.checker.counts();
            if c.acked == c.sent {
                break;
            }
            if Instant::now() > deadline {
                self.checker
                    .problem(format!("not every send was acked within 60 s: {c}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Live delivery converges by itself while the clients stay connected: a session
        // that hears nothing more although it is open would be a lost notification.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let missing = self.checker.missing_deliveries();
            if missing.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                self.checker.problem(format!(
                    "live delivery did not converge within 30 s for {missing:?}"
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.phase.send(Phase::Final);
        for h in self.handles {
            if tokio::time::timeout(Duration::from_secs(60), h)
                .await
                .is_err()
            {
                self.checker
                    .problem("a client did not finish its final resume in 60 s".into());
            }
        }
        self.checker.verify()
    }
}

#[derive(Clone)]
struct Pending {
    client_msg_id: String,
    target: Target,
    body: String,
    /// Not before: after `unavailable` or `rate_limited`.
    at: Instant,
}

struct LoadClient {
    spec: Spec,
    token: String,
    urls: Arc<Vec<String>>,
    checker: Arc<Checker>,
    phase: watch::Receiver<Phase>,
    interval: Duration,
    next: u64,
    pending: Option<Pending>,
}

enum Ended {
    /// The final resume is done: the client stops.
    Done,
    /// The socket ended (how); reconnect.
    Lost(String),
}

type Ws = WebSocketStream<TcpStream>;

impl LoadClient {
    async fn run(mut self) {
        let mut worker = self.spec.home;
        loop {
            // Where this client's stream is complete: the session starts after it.
            let after = self.checker.contiguous_head(&self.spec.user);
            let ws = match self.connect(worker, after).await {
                Some(ws) => ws,
                None => {
                    self.checker.connect_refused();
                    worker = (worker + 1) % self.urls.len();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            match self.session(ws, after).await {
                Ended::Done => return,
                Ended::Lost(how) => {
                    self.checker.closed(&self.spec.user, how);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn connect(&self, worker: usize, after: i64) -> Option<Ws> {
        let url = &self.urls[worker];
        let mut request = format!("{url}?after={after}")
            .as_str()
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        let addr = url
            .trim_start_matches("ws://")
            .trim_end_matches("/ws")
            .parse()
            .unwrap();
        let socket = TcpSocket::new_v4().ok()?;
        if let Some(stall) = &self.spec.stall {
            socket.set_recv_buffer_size(stall.recv_buffer).ok()?;
        }
        let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
            .await
            .ok()?
            .ok()?;
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::client_async(request, stream),
        )
        .await
        .ok()?
        .ok()?;
        Some(ws)
    }

    async fn session(&mut self, mut ws: Ws, after: i64) -> Ended {
        let user = self.spec.user.clone();
        let final_connection = *self.phase.borrow() == Phase::Final;
        let head = match next_json(&mut ws, Duration::from_secs(15)).await {
            Ok(Some(hello)) if hello["type"] == "hello" => {
                if hello["after"] != json!(after) {
                    self.checker.problem(format!(
                        "{user}: asked ?after={after}, the hello says {}",
                        hello["after"]
                    ));
                }
                hello["head"].as_i64().unwrap_or(0)
            }
            Ok(Some(other)) => {
                self.checker
                    .problem(format!("{user}: first frame is not hello: {other}"));
                return Ended::Lost("no hello".into());
            }
            Ok(None) => return Ended::Lost("closed before hello".into()),
            Err(how) => return Ended::Lost(how),
        };
        // Started after what this client has seen: every event from here on must be the
        // next one, replayed and live alike.
        let conn = self.checker.connected_after(&user, after);
        let connected_at = Instant::now();
        let mut stalled = false;
        // Caught up once the replay reached the hello's head.
        let mut resumed = after >= head;
        if resumed && final_connection {
            let _ = ws.close(None).await;
            return Ended::Done;
        }
        // The send this socket waits a reply for (one at a time), if any.
        let mut in_flight: Option<Pending> = None;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                frame = next_json(&mut ws, Duration::from_secs(60)) => {
                    let v = match frame {
                        Ok(Some(v)) => v,
                        Ok(None) => return Ended::Lost("eof".into()),
                        Err(how) => return Ended::Lost(how),
                    };
                    match v["type"].as_str() {
                        Some("ok") | Some("error") => {
                            let Some(p) = in_flight.take() else {
                                self.checker.problem(format!("{user}: a reply to nothing: {v}"));
                                continue;
                            };
                            if v["type"] == "ok" {
                                self.checker.acked(&user, &p.client_msg_id, &v["message"]);
                                self.pending = None;
                            } else if v["code"] == "unavailable" {
                                self.checker.unavailable(&user, &p.client_msg_id);
                                self.retry_after(Duration::from_millis(100));
                            } else {
                                self.checker.send_error(&user, &p.client_msg_id, &v);
                                let wait = v["retry_after_ms"].as_u64().unwrap_or(100);
                                self.retry_after(Duration::from_millis(wait));
                                if v["code"] != "rate_limited" {
                                    self.pending = None; // recorded as a violation
                                }
                            }
                        }
                        _ => {
                            self.checker.received(conn, &v);
                            if !resumed && v["seq"].as_i64().is_some_and(|seq| seq >= head) {
                                resumed = true;
                                if final_connection {
                                    let _ = ws.close(None).await;
                                    return Ended::Done;
                                }
                            }
                        }
                    }
                }
                _ = tick.tick() => {
                    if !resumed || in_flight.is_some() {
                        continue;
                    }
                    if let Some(stall) = self.spec.stall.as_mut() {
                        if !stalled && connected_at.elapsed() >= stall.after {
                            // A consumer too slow for its queue: it reads nothing for a while.
                            stalled = true;
                            let _ = stall.until.wait_for(|&go| go).await;
                            continue;
                        }
                    }
                    let phase = *self.phase.borrow();
                    if phase == Phase::Final && self.pending.is_none() {
                        // Everything is acked: a fresh connection resumes once more.
                        let _ = ws.close(None).await;
                        return Ended::Lost("closed for the final resume".into());
                    }
                    if phase == Phase::Load && self.pending.is_none() {
                        self.pending = Some(self.compose());
                    }
                    let Some(p) = self.pending.clone().filter(|p| p.at <= Instant::now()) else {
                        continue;
                    };
                    let mut request = json!({"type": "send", "body": p.body,
                                             "client_msg_id": p.client_msg_id, "ref": "send"});
                    match &p.target {
                        Target::User(u) => request["to"] = json!(u),
                        Target::Conversation(c) => request["conversation"] = json!(c),
                    }
                    self.checker.sent(&user, &p.client_msg_id, &p.target, &p.body);
                    if ws.send(Message::text(request.to_string())).await.is_err() {
                        return Ended::Lost("send failed".into());
                    }
                    in_flight = Some(p);
                }
            }
        }
    }

    fn compose(&mut self) -> Pending {
        let n = self.next;
        self.next += 1;
        let target = self.spec.targets[n as usize % self.spec.targets.len()].clone();
        let head = format!("{} #{n} ", self.spec.user);
        let body = format!(
            "{head}{}",
            "x".repeat(self.spec.body_chars.saturating_sub(head.len()))
        );
        Pending {
            client_msg_id: format!("{}-{n}", self.spec.user),
            target,
            body,
            at: Instant::now(),
        }
    }

    fn retry_after(&mut self, d: Duration) {
        if let Some(p) = self.pending.as_mut() {
            p.at = Instant::now() + d;
        }
    }
}

/// The next text frame as JSON: Ok(None) on a clean end, Err(how) on a close frame with its
/// code, a reset, or `within` passing with nothing.
async fn next_json(ws: &mut Ws, within: Duration) -> Result<Option<Value>, String> {
    loop {
        let msg = match tokio::time::timeout(within, ws.next()).await {
            Err(_) => return Err("silent".into()),
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => return Err(describe(e)),
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Text(t) => return Ok(Some(serde_json::from_str(t.as_str()).unwrap())),
            Message::Close(frame) => {
                return Err(match frame {
                    Some(f) => format!("close {}", u16::from(f.code)),
                    None => "close".into(),
                })
            }
            _ => continue,
        }
    }
}

/// An error's kind without its details (for counting).
fn describe(e: tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Io(io) => format!("io {:?}", io.kind()),
        Error::Protocol(p) => format!("protocol {p:?}"),
        other => format!(
            "error {}",
            other.to_string().split(':').next().unwrap_or("")
        ),
    }
}

pub const USERS: usize = 12;
pub const GROUP: usize = 6;
/// Each client sends one message this often (12 clients: about 100 sends/s in all).
pub const INTERVAL: Duration = Duration::from_millis(120);
const BEFORE_FAULT: Duration = Duration::from_secs(3);
const AFTER_FAULT: Duration = Duration::from_secs(4);

/// Limits the load needs: the default per-socket rate would refuse it.
const LOAD_ENV: [(&str, &str); 2] = [
    ("PGCHAT_RATE_LIMIT_PER_SEC", "1000"),
    ("PGCHAT_RATE_LIMIT_BURST", "1000"),
];

pub struct Rig {
    // Field order is drop order: the workers stop before their database.
    pub cluster: Cluster,
    pub pg: PrivatePg,
}

/// A private PostgreSQL cluster and `pgchat serve --workers 3` on it, with `extra_env`.
pub async fn rig(extra_env: &[(&str, &str)]) -> Rig {
    let pg = PrivatePg::start().await;
    let db = TestDb::on_private_cluster(pg.url("pgchat"), "pgchat");
    let mut env = LOAD_ENV.to_vec();
    env.extend_from_slice(extra_env);
    let cluster = Cluster::start_on(db, 3, &env).await;
    Rig { cluster, pg }
}

impl Rig {
    /// Load, `fault`, more load, then the checker's verdict; panics on any violation, and
    /// on any difference between the acked messages and the stored ones.
    pub async fn under_load<F: std::future::Future<Output = ()>>(
        &self,
        name: &str,
        specs: Vec<Spec>,
        checker: Arc<Checker>,
        fault: F,
    ) -> Counts {
        self.under_load_at(INTERVAL, name, specs, checker, fault)
            .await
    }

    pub async fn under_load_at<F: std::future::Future<Output = ()>>(
        &self,
        interval: Duration,
        name: &str,
        specs: Vec<Spec>,
        checker: Arc<Checker>,
        fault: F,
    ) -> Counts {
        let fleet = Fleet::start(&self.cluster, checker.clone(), specs, interval);
        tokio::time::sleep(BEFORE_FAULT).await;
        fault.await;
        tokio::time::sleep(AFTER_FAULT).await;
        let verdict = fleet.finish().await;
        let counts = match verdict {
            Ok(c) => c,
            Err(report) => panic!("{name}: the checker found violations:\n{report}"),
        };
        println!("{name}: {counts}");
        // None of these faults is internal to pgchat: no session may end with 1011.
        assert!(
            !counts.closes.contains_key("close 1011"),
            "{name}: sessions closed as if by an internal fault: {counts}"
        );
        // The final consistency check: what was acked is exactly what is stored.
        let stored = self.stored_ids().await;
        assert_eq!(
            stored,
            checker.acked_ids(),
            "{name}: stored messages differ from acked ones"
        );
        assert!(counts.acked > 0 && counts.delivered > 0, "{name}: {counts}");
        counts
    }

    pub async fn stored_ids(&self) -> std::collections::BTreeSet<i64> {
        let db = self.cluster.db.client().await;
        db.query("SELECT id FROM messages", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, i64>(0))
            .collect()
    }

    pub async fn standard_load(&self) -> (Vec<Spec>, Arc<Checker>) {
        let checker = Arc::new(Checker::new());
        let specs = plan(&self.cluster, &checker, USERS, GROUP).await;
        (specs, checker)
    }

    /// How many times each worker's listener has connected (1 until a fault).
    pub async fn listener_connects(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for w in 0..self.cluster.workers {
            let h: Value = self.cluster.health(w).await;
            out.push(h["listener"]["connects"].as_u64().unwrap_or(0));
        }
        out
    }
}
