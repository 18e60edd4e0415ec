//! Accepting connections: the loop axum's `serve` would run, with the limits it lacks.
//!
//! axum's `serve` reads request headers without a time limit (hyper's header timeout needs
//! a timer, which it does not set) and accepts without bound, so a client that sends its
//! headers a byte a second holds a connection, and a task, for ever. Here:
//! - a connection that has not sent its request headers within `header_read_timeout_ms`
//!   is closed (hyper's own timer);
//! - at most `max_handshakes` connections may be between accept and their first request's
//!   headers at once; past that the loop stops accepting, and new connections wait in the
//!   kernel's backlog (they are not refused: a burst of honest reconnects gets through in
//!   turn, and a flood of slow ones holds at most that many slots, each for at most the
//!   header timeout);
//! - TCP_NODELAY on every socket: a session writes small frames back to back (an event,
//!   then the reply), and the second would otherwise wait for the client's delayed ACK.
//!
//! - every request is logged at debug level with its method, path and status, never its
//!   query string: browsers pass their token there (`/ws?token=…`), and a log line is read
//!   by more people, and kept longer, than the token is valid.
//!
//! On shutdown the loop stops accepting and asks every connection still speaking HTTP to
//! finish its request and close; upgraded sockets have left hyper by then (their sessions
//! are tracked by the application).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How connections are accepted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_handshakes: usize,
}

/// Serves `router` on `listener` until `stop` is cancelled, then waits (at most `grace`)
/// for the connections still speaking HTTP to finish.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
    grace: Duration,
) {
    let handshakes = Arc::new(Semaphore::new(limits.max_handshakes.max(1)));
    let connections = TaskTracker::new();
    loop {
        // A slot first: at the cap, connections wait in the backlog, not in memory here.
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            permit = handshakes.clone().acquire_owned() => permit.expect("never closed"),
        };
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        connections.spawn(connection(
            tcp,
            peer,
            router.clone(),
            limits,
            permit,
            stop.clone(),
        ));
    }
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "HTTP connections did not finish in time"
        );
    }
}

/// The request target for a log line: the path, and of the query only its size. Not the
/// parameters' names or values: a token may come as `?token=`, `?access_token=`, or
/// percent-encoded under a name a filter would not recognise, and no list of names to
/// redact would be sure to catch every way.
fn loggable_target(uri: &hyper::Uri) -> String {
    match uri.query() {
        Some(q) => format!("{}?<query: {} bytes, not logged>", uri.path(), q.len()),
        None => uri.path().to_string(),
    }
}

/// One connection: HTTP/1.1 with upgrades, its handshake slot given back as soon as its
/// first request's headers are in.
async fn connection(
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    router: Router,
    limits: Limits,
    permit: OwnedSemaphorePermit,
    stop: CancellationToken,
) {
    let slot = Arc::new(Mutex::new(Some(permit)));
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        // Who asks, for the limits kept per client address (`ConnectInfo`).
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        // The headers are read: the handshake is over for this connection.
        slot.lock().expect("handshake slot").take();
        let router = router.clone();
        async move {
            let started = std::time::Instant::now();
            let method = request.method().clone();
            let target = loggable_target(request.uri());
            let response = router.oneshot(request).await.unwrap_or_else(|e| match e {});
            tracing::debug!(
                %method,
                target,
                status = response.status().as_u16(),
                ms = started.elapsed().as_millis() as u64,
                "request"
            );
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // What hyper buffers of a reply beyond the chunk it was last handed (the reply's
        // charge is given back once hyper has its last chunk), per connection: 64 KiB, not
        // its default of about 400 KiB. Request heads are limited to it too.
        .max_buf_size(64 * 1024);
    let conn = builder
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended");
            }
        }
    }
}
