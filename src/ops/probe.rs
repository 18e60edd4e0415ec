//! `pgchat health`: one HTTP request to the server on this host, for a container's
//! `HEALTHCHECK` (the runtime image carries no curl). Exit 0 when the answer is 200,
//! 1 otherwise, with one line saying what came back.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use crate::foundation::config::Config;

/// How long the whole probe may take; Docker's own default timeout is 30 s.
const TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) fn main(config: &Config, path: &str) -> ExitCode {
    match probe(config, path) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("pgchat health: {path} answered {status}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("pgchat health: {path}: {e}");
            ExitCode::from(1)
        }
    }
}

/// The status code `GET path` gets from the server listening on `host:port`.
fn probe(config: &Config, path: &str) -> std::io::Result<u16> {
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    if !path.starts_with('/') || path.contains(char::is_whitespace) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "--path must be a path such as /ready",
        ));
    }
    // /health and /metrics are on ops_listen when it is set (its first worker's port).
    let ops = config
        .ops_listen
        .as_deref()
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .filter(|_| path == "/health" || path == "/metrics");
    let (host, port) = match ops {
        Some(a) => (a.ip(), a.port()),
        None => (
            config
                .listen_host()
                .parse::<IpAddr>()
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            config.port,
        ),
    };
    // A wildcard address listens on loopback too.
    let ip = if host.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host
    };
    let mut tcp = TcpStream::connect_timeout(&SocketAddr::new(ip, port), TIMEOUT)?;
    tcp.set_read_timeout(Some(TIMEOUT))?;
    tcp.set_write_timeout(Some(TIMEOUT))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = Vec::new();
    tcp.take(1024).read_to_end(&mut head)?;
    // "HTTP/1.1 200 OK"
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("not an HTTP answer"))
}
