//! `idle`: N authenticated sockets held open for a while, reading (so that the server's
//! pings are answered), and the server's resident memory before and after: what one idle
//! connection costs.
//!
//! The workers' pids come from `GET /health`. On this machine their memory is read from
//! `/proc/<pid>/status` (VmRSS); elsewhere from the `memory.rss_bytes` that /health itself
//! reports. Behind one shared port, /health answers from whichever worker accepts, so it
//! is asked until no new worker shows up.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::{close_sink, health, host_of, read_frames, vm_rss, Conn, Ended, SeqCheck};
use super::pool::open_one;
use super::progress::{self, Progress, Shows};
use super::report::{Errors, IdleResult, Report, ServerMemory};
use super::{BenchError, Ctx, IdleOptions, Live};

/// Behind a shared port: this many /health answers in a row without a new worker end
/// the search (at most `HEALTH_TRIES`).
const HEALTH_QUIET: usize = 12;
const HEALTH_TRIES: usize = 64;

pub(crate) async fn run(ctx: &Arc<Ctx>, o: &IdleOptions) -> Result<Report, BenchError> {
    let before = snapshot(ctx).await;
    // No planned length: opening takes what it takes, then the hold.
    let progress = Progress::start(
        ctx,
        Instant::now(),
        None,
        Shows::Sockets(o.connections as u64),
    );
    let stop = CancellationToken::new();
    let holders = open_all(ctx, o, &stop).await;
    let opened = holders.len() as u64;
    Live::add(&ctx.live.failed, o.connections as u64 - opened);

    ctx.set_phase(progress::HOLD);
    let held = Instant::now();
    tokio::time::sleep(o.hold).await;
    let held_s = held.elapsed().as_secs_f64();
    let after = snapshot(ctx).await;
    stop.cancel();

    let mut report = Report::new("idle");
    let dropped = collect(holders, &mut report).await;
    progress.finish().await;

    let mut result = IdleResult {
        requested: o.connections as u64,
        opened,
        failed: o.connections as u64 - opened,
        dropped,
        held_s,
        rss_source: before.source.to_string(),
        server_connections: after.connections,
        ..Default::default()
    };
    result.servers = compare(ctx, &before, &after, &mut report.notes);
    report.notes.extend(before.problem);
    add_totals(&mut result);
    report.elapsed_s = held_s;
    report.idle = Some(result);
    Ok(report)
}

/// What a held socket's task hands back: its errors, its stream check, and how the server
/// ended it if it did.
type Held = (Errors, SeqCheck, Ended);

/// Opens `o.connections` sockets, `o.concurrency` handshakes at a time, each held by a
/// task of its own (see [`hold`]) until `stop`. Returns the tasks of those that opened.
async fn open_all(
    ctx: &Arc<Ctx>,
    o: &IdleOptions,
    stop: &CancellationToken,
) -> Vec<JoinHandle<Held>> {
    stream::iter(0..o.connections)
        .map(|i| {
            let ctx = ctx.clone();
            async move { open_one(&ctx, i % ctx.urls.len()).await }
        })
        .buffer_unordered(o.concurrency)
        .filter_map(|c| async { c })
        .map(|conn| {
            Live::add(&ctx.live.acked, 1);
            tokio::spawn(hold(conn, stop.clone()))
        })
        .collect()
        .await
}

/// Reads one socket until `stop`: an idle socket that is not read would leave the server's
/// pings unanswered, and the server would drop it. Then closes it.
async fn hold(conn: Conn, stop: CancellationToken) -> Held {
    let (sink, mut stream, mut seq) = conn.split();
    let mut errors = Errors::default();
    let ended = read_frames(&mut stream, &mut seq, &mut errors, &stop, |_, _| {}).await;
    close_sink(sink).await;
    (errors, seq, ended)
}

/// Waits for the held sockets' tasks (stopped after the hold) and adds what they saw to
/// `report`. Returns how many sockets the server closed or dropped while they were held.
async fn collect(holders: Vec<JoinHandle<Held>>, report: &mut Report) -> u64 {
    let mut dropped = 0;
    for h in futures_util::future::join_all(holders).await {
        let (errors, seq, ended) = h.expect("socket task");
        report.errors.merge(errors);
        report.stream.add(&seq);
        if let Some(kind) = ended {
            report.errors.close(&kind);
            dropped += 1;
        }
    }
    dropped
}

/// Each worker's memory before the hold and after it. A worker that can't be compared
/// (no answer after the hold, or never measured at all) gets a note instead, so that the
/// total is not taken for the whole server's.
fn compare(
    ctx: &Ctx,
    before: &Snapshot,
    after: &Snapshot,
    notes: &mut Vec<String>,
) -> Vec<ServerMemory> {
    let mut servers = Vec::new();
    for (worker, &(pid, rss_before)) in &before.workers {
        match after.workers.get(worker) {
            Some(&(_, rss_after)) => servers.push(ServerMemory {
                worker: worker.clone(),
                pid,
                rss_before_bytes: rss_before,
                rss_after_bytes: rss_after,
            }),
            None => notes.push(format!(
                "worker {worker} did not answer /health after the hold"
            )),
        }
    }
    for w in ctx.workers.lock().unwrap().iter() {
        if !before.workers.contains_key(w) {
            notes.push(format!(
                "worker {w} held sockets but was not measured: /health never answered from it"
            ));
        }
    }
    servers
}

/// The memory of the compared workers, summed, and what one connection cost: the growth
/// over the sockets that opened (none if none opened or no worker was compared).
fn add_totals(result: &mut IdleResult) {
    result.rss_before_bytes = result.servers.iter().map(|s| s.rss_before_bytes).sum();
    result.rss_after_bytes = result.servers.iter().map(|s| s.rss_after_bytes).sum();
    if result.opened > 0 && !result.servers.is_empty() {
        let grew = result.rss_after_bytes as i64 - result.rss_before_bytes as i64;
        result.rss_per_connection_bytes = Some(grew / result.opened as i64);
    }
}

/// The workers' memory at one moment.
struct Snapshot {
    /// worker → (pid, resident bytes).
    workers: BTreeMap<String, (u32, u64)>,
    source: &'static str,
    /// Open sockets, summed over the workers' /health.
    connections: Option<u64>,
    problem: Option<String>,
}

async fn snapshot(ctx: &Ctx) -> Snapshot {
    let local = ctx
        .urls
        .iter()
        .all(|u| host_of(u).map(|(_, local)| local).unwrap_or(false));
    let mut seen = BTreeMap::new();
    let mut problem = None;
    for url in &ctx.urls {
        let (mut tries, mut quiet) = (0, 0);
        // One URL per worker: one answer each. One shared URL: ask until no new worker.
        let shared = ctx.urls.len() == 1;
        while tries < if shared { HEALTH_TRIES } else { 1 } && quiet < HEALTH_QUIET {
            tries += 1;
            match health(url).await {
                Ok(h) => {
                    if seen.contains_key(&h.worker) {
                        quiet += 1;
                    } else {
                        quiet = 0;
                        seen.insert(h.worker.clone(), h);
                    }
                }
                Err(e) => {
                    problem = Some(format!("server memory not measured: {e}"));
                    break;
                }
            }
        }
    }
    let mut source = if local { "proc" } else { "health" };
    let mut workers = BTreeMap::new();
    for (w, h) in &seen {
        let rss = if local { vm_rss(h.pid) } else { None };
        if local && rss.is_none() {
            source = "health";
        }
        workers.insert(w.clone(), (h.pid, rss.unwrap_or(h.memory.rss_bytes)));
    }
    if seen.is_empty() {
        source = "none";
    }
    Snapshot {
        connections: (!seen.is_empty()).then(|| seen.values().map(|h| h.connections).sum()),
        workers,
        source,
        problem,
    }
}
