//! One bench socket: connect with a minted token, read the hello, then read frames
//! parsing only what a scenario needs, and check the socket's event stream as it goes
//! (each durable event must carry the previous `seq` + 1).
//!
//! Frames are parsed into [`Frame`], whose strings borrow from the text they came in:
//! the fields read here (`type`, `code`, `client_msg_id`) are the server's fixed words and
//! ids this tool chose, never escaped, so no allocation per frame. A frame that does not
//! fit is counted as an error, not guessed at.

use std::fmt;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, Uri};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::report::Errors;
use super::BenchError;

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub(crate) type Sink = SplitSink<Ws, Message>;
pub(crate) type Stream = SplitStream<Ws>;

/// A handshake that takes longer than this has failed (kind `timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// tungstenite allocates its read buffer up front (128 KiB by default): thousands of idle
/// sockets would cost the tool more memory than the server. Frames here are small.
const READ_BUFFER: usize = 8 * 1024;
/// How long setup steps (warm-up, group creation) may take before the run gives up.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The first frame of every session.
#[derive(Debug, Deserialize)]
pub(crate) struct Hello {
    pub(crate) worker: String,
    pub(crate) head: i64,
}

/// An open, authenticated socket, before a scenario splits it into its two halves.
pub(crate) struct Conn {
    pub(crate) ws: Ws,
    pub(crate) user: String,
    pub(crate) worker: String,
    pub(crate) seq: SeqCheck,
}

/// Why a handshake failed; its `Display` is the key errors are counted under.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// Refused before the upgrade: the HTTP status and the body's error code.
    Refused(u16, String),
    Io(std::io::ErrorKind),
    Timeout,
    /// Upgraded, but the first frame was not a hello (or the socket closed first).
    NoHello,
    Other(String),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Refused(status, code) => write!(f, "http {status} {code}"),
            ConnectError::Io(kind) => write!(f, "io: {kind}"),
            ConnectError::Timeout => f.write_str("timeout"),
            ConnectError::NoHello => f.write_str("no hello"),
            ConnectError::Other(what) => f.write_str(what),
        }
    }
}

impl From<tungstenite::Error> for ConnectError {
    fn from(e: tungstenite::Error) -> Self {
        use tungstenite::Error as E;
        match e {
            E::Http(resp) => {
                let code = resp
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                    .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
                    .unwrap_or_default();
                ConnectError::Refused(resp.status().as_u16(), code)
            }
            E::Io(io) => ConnectError::Io(io.kind()),
            E::ConnectionClosed | E::AlreadyClosed => ConnectError::NoHello,
            other => ConnectError::Other(error_kind(&other)),
        }
    }
}

/// Connects to `url` as the holder of `token` and reads the hello.
pub(crate) async fn connect(url: &str, token: &str) -> Result<(Ws, Hello), ConnectError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| ConnectError::Other(format!("bad url: {e}")))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| ConnectError::Other("bad token".into()))?;
    request.headers_mut().insert(header::AUTHORIZATION, bearer);
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let attempt = async {
        // Nagle off: a latency tool must not hold small frames back.
        let (mut ws, _) =
            tokio_tungstenite::connect_async_with_config(request, Some(config), true).await?;
        let hello = loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    break serde_json::from_str::<Hello>(t.as_str())
                        .map_err(|_| ConnectError::NoHello)?;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Err(e)) => return Err(e.into()),
                _ => return Err(ConnectError::NoHello),
            }
        };
        Ok((ws, hello))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .unwrap_or(Err(ConnectError::Timeout))
}

impl Conn {
    /// Waits for the first frame that `pick` accepts, checking `seq` on the way. Used in
    /// setup, before the socket is split.
    pub(crate) async fn wait_for(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&Frame<'_>, &str) -> bool,
    ) -> Result<String, BenchError> {
        let deadline = Instant::now() + SETUP_TIMEOUT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| setup(format!("{}: no {what} within {SETUP_TIMEOUT:?}", self.user)))?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let frame: Frame = serde_json::from_str(t.as_str())
                        .map_err(|e| setup(format!("{}: unparsable frame: {e}", self.user)))?;
                    if let Some(seq) = frame.seq {
                        self.seq.see(seq);
                    }
                    if pick(&frame, t.as_str()) {
                        return Ok(t.as_str().to_string());
                    }
                }
                Some(Ok(Message::Close(c))) => {
                    return Err(setup(format!(
                        "{}: closed ({}) while waiting for {what}",
                        self.user,
                        close_kind(c.as_ref())
                    )))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Err(setup(format!(
                        "{}: {} while waiting for {what}",
                        self.user,
                        error_kind(&e)
                    )))
                }
                None => {
                    return Err(setup(format!(
                        "{}: closed while waiting for {what}",
                        self.user
                    )))
                }
            }
        }
    }

    pub(crate) async fn send_text(&mut self, text: String) -> Result<(), BenchError> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| setup(format!("{}: send failed: {}", self.user, error_kind(&e))))
    }

    /// Sends a request and waits for its reply (by `ref`), which must be `ok`.
    pub(crate) async fn request(
        &mut self,
        text: String,
        reference: i64,
    ) -> Result<String, BenchError> {
        self.send_text(text).await?;
        let mut failed = false;
        let reply = self
            .wait_for("reply", |f, _| {
                let mine = f.reference == Some(reference) && matches!(f.kind, "ok" | "error");
                failed = mine && f.kind == "error";
                mine
            })
            .await?;
        if failed {
            return Err(setup(format!("{}: {reply}", self.user)));
        }
        Ok(reply)
    }

    pub(crate) fn split(self) -> (Sink, Stream, SeqCheck) {
        let (sink, stream) = self.ws.split();
        (sink, stream, self.seq)
    }

    /// Closes politely without waiting long for the server's answer.
    pub(crate) async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }
}

fn setup(m: String) -> BenchError {
    BenchError::Setup(m)
}

/// Sends a close frame on a sink whose stream half is done with.
pub(crate) async fn close_sink(mut sink: Sink) {
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
}

/// A socket's view of its user's event stream: `seq` must go up by exactly one.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SeqCheck {
    last: i64,
    /// Events skipped over (seq jumped by more than one).
    pub(crate) gaps: u64,
    /// Events whose seq was not above the last one.
    pub(crate) duplicates: u64,
}

impl SeqCheck {
    /// The stream as the hello left it: live events follow `head`.
    pub(crate) fn new(head: i64) -> Self {
        SeqCheck {
            last: head,
            ..Default::default()
        }
    }

    pub(crate) fn see(&mut self, seq: i64) {
        if seq == self.last + 1 {
            self.last = seq;
        } else if seq <= self.last {
            self.duplicates += 1;
        } else {
            self.gaps += (seq - self.last - 1) as u64;
            self.last = seq;
        }
    }
}

/// The fields of a server frame that the scenarios read; everything else is skipped.
#[derive(Debug, Deserialize)]
pub(crate) struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub(crate) kind: &'a str,
    #[serde(default)]
    pub(crate) seq: Option<i64>,
    /// The tool's refs are integers: a message's number, or negative in setup.
    #[serde(rename = "ref", default)]
    pub(crate) reference: Option<i64>,
    #[serde(default, borrow)]
    pub(crate) code: Option<&'a str>,
    /// The message a `reaction` or `message_deleted` event is about.
    #[serde(default)]
    pub(crate) cseq: Option<i64>,
    #[serde(default, borrow)]
    pub(crate) message: Option<MessageField<'a>>,
}

impl<'a> Frame<'a> {
    /// The `client_msg_id` of a `message` event or of a `send` reply.
    pub(crate) fn client_msg_id(&self) -> Option<&'a str> {
        match &self.message {
            Some(MessageField::Message(m)) => m.client_msg_id,
            _ => None,
        }
    }

    /// The `cseq` of the message a `message` or `message_edited` event or a reply carries.
    pub(crate) fn message_cseq(&self) -> Option<i64> {
        match &self.message {
            Some(MessageField::Message(m)) => m.cseq,
            _ => None,
        }
    }
}

/// `message` is an object in events and `send` replies, and a string in error replies.
#[derive(Debug)]
pub(crate) enum MessageField<'a> {
    Message(MessageRef<'a>),
    Text,
}

#[derive(Debug, Deserialize)]
pub(crate) struct MessageRef<'a> {
    #[serde(default, borrow)]
    pub(crate) client_msg_id: Option<&'a str>,
    #[serde(default)]
    pub(crate) cseq: Option<i64>,
}

impl<'de: 'a, 'a> Deserialize<'de> for MessageField<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = MessageField<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a message object or an error message")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(MessageField::Text)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                MessageRef::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(MessageField::Message)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// How a read loop ended, when the server (not the tool) ended it.
pub(crate) type Ended = Option<String>;

/// Reads `stream` until `stop` fires or the socket ends, checking `seq` and handing each
/// frame, with the instant it was read, to `on_frame`. Error replies are counted in
/// `errors` by code; a close by the server is returned as its kind (`close 1013`, …).
pub(crate) async fn read_frames(
    stream: &mut Stream,
    seq: &mut SeqCheck,
    errors: &mut Errors,
    stop: &CancellationToken,
    mut on_frame: impl FnMut(&Frame<'_>, Instant),
) -> Ended {
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.cancelled() => return None,
            m = stream.next() => m,
        };
        let now = Instant::now();
        match msg {
            Some(Ok(Message::Text(t))) => match serde_json::from_str::<Frame>(t.as_str()) {
                Ok(frame) => {
                    if let Some(s) = frame.seq {
                        seq.see(s);
                    }
                    if frame.kind == "error" {
                        errors.reply(frame.code.unwrap_or("(no code)"));
                    }
                    on_frame(&frame, now);
                }
                Err(_) => errors.other("unparsable frame"),
            },
            Some(Ok(Message::Close(c))) => return Some(close_kind(c.as_ref())),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Some(error_kind(&e)),
            None => return Some("eof".into()),
        }
    }
}

pub(crate) fn close_kind(frame: Option<&tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(f) => format!("close {}", u16::from(f.code)),
        None => "close (no code)".into(),
    }
}

pub(crate) fn error_kind(e: &tungstenite::Error) -> String {
    use tungstenite::Error as E;
    match e {
        E::Io(io) => format!("io: {}", io.kind()),
        E::ConnectionClosed | E::AlreadyClosed => "eof".into(),
        E::Protocol(p) => format!("protocol: {p}"),
        E::Capacity(c) => format!("capacity: {c}"),
        E::Tls(_) => "tls".into(),
        E::Url(u) => format!("url: {u}"),
        E::Http(r) => format!("http {}", r.status().as_u16()),
        other => other.to_string(),
    }
}

/// What the bench reads off a worker's `GET /health`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Health {
    pub(crate) worker: String,
    pub(crate) pid: u32,
    #[serde(default)]
    pub(crate) connections: u64,
    pub(crate) memory: HealthMemory,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct HealthMemory {
    pub(crate) rss_bytes: u64,
}

/// The `host:port` of a ws:// URL, and whether it is this machine.
pub(crate) fn host_of(ws_url: &str) -> Result<(String, bool), String> {
    let uri: Uri = ws_url.parse().map_err(|e| format!("{ws_url}: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("{ws_url}: no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let local = matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "::1");
    Ok((format!("{host}:{port}"), local))
}

/// `GET /health` of the worker behind `ws_url` (same host and port, over plain HTTP/1.0,
/// which needs no client library: one request, the body until the server closes).
pub(crate) async fn health(ws_url: &str) -> Result<Health, String> {
    let (addr, _) = host_of(ws_url)?;
    let fetch = async {
        let mut tcp = TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
        let request = format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or("no HTTP response header")?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return Err(head.lines().next().unwrap_or("").to_string());
        }
        serde_json::from_str::<Health>(body).map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .unwrap_or_else(|_| Err("timeout".into()))
        .map_err(|e| format!("GET http://{addr}/health: {e}"))
}

/// Resident memory of a process on this machine, from `/proc/<pid>/status`.
pub(crate) fn vm_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_without_the_fields_the_bench_does_not_read() {
        let event = r#"{"type":"message","seq":7,"message":{"id":1,"conversation":"d1","cseq":3,
            "sender":{"id":"a","name":null},"body":"hi \"you\"","client_msg_id":"42","created_at":"x"}}"#;
        let f: Frame = serde_json::from_str(event).unwrap();
        assert_eq!(
            (f.kind, f.seq, f.client_msg_id(), f.message_cseq()),
            ("message", Some(7), Some("42"), Some(3))
        );

        let reaction = r#"{"type":"reaction","seq":8,"conversation":"d1","cseq":3,"user":"a",
            "emoji":"\u00e9","on":true}"#;
        let f: Frame = serde_json::from_str(reaction).unwrap();
        assert_eq!(
            (f.kind, f.cseq, f.message_cseq()),
            ("reaction", Some(3), None)
        );

        let error = r#"{"type":"error","ref":5,"code":"rate_limited","message":"slow down","retry_after_ms":9}"#;
        let f: Frame = serde_json::from_str(error).unwrap();
        assert_eq!((f.reference, f.code), (Some(5), Some("rate_limited")));
        assert!(f.client_msg_id().is_none());

        let group = r#"{"type":"ok","ref":-1,"conversation":{"id":"g1","members":["a"]}}"#;
        let f: Frame = serde_json::from_str(group).unwrap();
        assert_eq!((f.kind, f.reference), ("ok", Some(-1)));
    }

    #[test]
    fn seq_check_counts_gaps_and_duplicates() {
        let mut s = SeqCheck::new(3);
        for seq in [4, 5, 5, 8, 9, 2] {
            s.see(seq);
        }
        assert_eq!((s.gaps, s.duplicates), (2, 2));
    }

    #[test]
    fn health_urls_and_locality_come_from_the_ws_url() {
        assert_eq!(
            host_of("ws://127.0.0.1:3001/ws").unwrap(),
            ("127.0.0.1:3001".to_string(), true)
        );
        assert!(!host_of("ws://chat.example:80/ws").unwrap().1);
    }
}
