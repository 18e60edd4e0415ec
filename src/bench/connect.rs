//! `connect`: authenticated handshakes (connect, wait for the hello, close), `concurrency`
//! at a time, each as a fresh user: handshakes per second, their latency, and why the
//! failed ones failed.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::client::connect;
use super::progress::{self, Progress, Shows};
use super::report::{histogram, Errors, Handshakes, Latency, Report};
use super::{micros, BenchError, ConnectOptions, Ctx, Live};

pub(crate) async fn run(ctx: &Arc<Ctx>, o: &ConnectOptions) -> Result<Report, BenchError> {
    let next = Arc::new(AtomicUsize::new(0));
    let latency = Arc::new(Mutex::new(histogram()));
    let progress = Progress::start(ctx, Instant::now(), None, Shows::Handshakes(o.count as u64));
    ctx.set_phase(progress::RUN);
    let start = Instant::now();
    let workers = (0..o.concurrency.min(o.count)).map(|_| {
        let (ctx, next, latency, count) = (ctx.clone(), next.clone(), latency.clone(), o.count);
        tokio::spawn(async move {
            let mut errors = Errors::default();
            let mut seen = BTreeSet::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let url = &ctx.urls[i % ctx.urls.len()];
                let (_, token) = ctx.new_user();
                Live::add(&ctx.live.sent, 1);
                let began = Instant::now();
                match connect(url, &token).await {
                    Ok((mut ws, hello)) => {
                        let took = began.elapsed();
                        latency.lock().unwrap().saturating_record(micros(took));
                        Live::add(&ctx.live.acked, 1);
                        seen.insert(hello.worker);
                        // Close and wait (briefly) for the server's close in return, so
                        // the next handshake does not race this one's teardown.
                        let _ = ws.close(None).await;
                        let _ = tokio::time::timeout(Duration::from_secs(2), async {
                            while let Some(Ok(_)) = ws.next().await {}
                        })
                        .await;
                    }
                    Err(e) => {
                        errors.connect(&e.to_string());
                        Live::add(&ctx.live.failed, 1);
                    }
                }
            }
            (errors, seen)
        })
    });
    let mut report = Report::new("connect");
    for done in join_all(workers.collect::<Vec<_>>()).await {
        let (errors, seen) = done.expect("handshake task");
        report.errors.merge(errors);
        for w in seen {
            ctx.saw_worker(&w);
        }
    }
    let elapsed = start.elapsed();
    progress.finish().await;

    let latency = latency.lock().unwrap();
    let succeeded = latency.len();
    report.elapsed_s = elapsed.as_secs_f64();
    report.handshakes = Some(Handshakes {
        attempted: o.count as u64,
        succeeded,
        failed: o.count as u64 - succeeded,
        per_s: (succeeded as f64 / elapsed.as_secs_f64() * 10.0).round() / 10.0,
    });
    report.latency = vec![Latency::of("handshake", &latency)];
    Ok(report)
}
