//! Opens many sockets at once and places them on workers.
//!
//! A socket's worker is known only from its hello (`worker`): with one URL per worker it
//! follows the URL, with one shared port (SO_REUSEPORT) the kernel decides. Either way the
//! users are fresh and interchangeable until they have a role, so the tool opens sockets,
//! sorts them by worker, and then gives each the role its worker suits; sockets left over
//! are closed.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};

use super::client::{connect, Conn, SeqCheck};
use super::{BenchError, Ctx};

/// Handshakes in flight while a scenario sets up.
const SETUP_CONCURRENCY: usize = 64;
/// Rounds of "open more sockets" before placement gives up.
const PLACEMENT_ROUNDS: usize = 20;

/// Opens a socket as a fresh user on `ctx.urls[url]`. Failures are counted in the run's
/// errors.
pub(crate) async fn open_one(ctx: &Ctx, url: usize) -> Option<Conn> {
    let (user, token) = ctx.new_user();
    match connect(&ctx.urls[url], &token).await {
        Ok((ws, hello)) => {
            ctx.saw_worker(&hello.worker);
            Some(Conn {
                ws,
                user,
                worker: hello.worker,
                seq: SeqCheck::new(hello.head),
            })
        }
        Err(e) => {
            ctx.errors.lock().unwrap().connect(&e.to_string());
            None
        }
    }
}

/// Opens `n` sockets, the i-th on `urls[i % urls.len()]`; returns those that opened, with
/// the index of their URL.
async fn open_many(ctx: &Arc<Ctx>, n: usize, urls: &[usize]) -> Vec<(usize, Conn)> {
    stream::iter(0..n)
        .map(|i| {
            let url = urls[i % urls.len()];
            async move { open_one(ctx, url).await.map(|c| (url, c)) }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .filter_map(|c| async { c })
        .collect()
        .await
}

/// Open sockets sorted by worker, workers in the order first seen.
#[derive(Default)]
struct Buckets {
    order: Vec<String>,
    by_worker: HashMap<String, Vec<Conn>>,
    /// The workers each URL has led to: a URL that led to one worker only is that
    /// worker's own port.
    url_workers: Vec<BTreeSet<String>>,
}

impl Buckets {
    async fn open(&mut self, ctx: &Arc<Ctx>, n: usize, urls: &[usize]) {
        self.url_workers.resize(ctx.urls.len(), BTreeSet::new());
        for (url, conn) in open_many(ctx, n, urls).await {
            self.url_workers[url].insert(conn.worker.clone());
            if !self.by_worker.contains_key(&conn.worker) {
                self.order.push(conn.worker.clone());
            }
            self.by_worker
                .entry(conn.worker.clone())
                .or_default()
                .push(conn);
        }
    }

    fn count(&self, worker: &str) -> usize {
        self.by_worker.get(worker).map_or(0, Vec::len)
    }

    /// The URLs that lead to `worker` alone, or every URL if none does.
    fn urls_for(&self, worker: &str) -> Vec<usize> {
        let own: Vec<usize> = (0..self.url_workers.len())
            .filter(|&u| self.url_workers[u].len() == 1 && self.url_workers[u].contains(worker))
            .collect();
        if own.is_empty() {
            (0..self.url_workers.len()).collect()
        } else {
            own
        }
    }

    fn take(&mut self, worker: &str) -> Conn {
        self.by_worker
            .get_mut(worker)
            .and_then(Vec::pop)
            .expect("placement counted this socket")
    }

    /// Opens sockets until every one of `workers` holds as many as it `needed`, in up to
    /// [`PLACEMENT_ROUNDS`] rounds: through a shared port the kernel picks the worker, so
    /// one round may fall short.
    async fn top_up(&mut self, ctx: &Arc<Ctx>, workers: &[String], needed: &[usize]) {
        let w = workers.len();
        for _ in 0..PLACEMENT_ROUNDS {
            let short: Vec<(usize, usize)> = (0..w)
                .map(|i| (i, needed[i].saturating_sub(self.count(&workers[i]))))
                .filter(|&(_, d)| d > 0)
                .collect();
            if short.is_empty() {
                break;
            }
            for (i, d) in short {
                let urls = self.urls_for(&workers[i]);
                // Through a shared port a socket reaches this worker by chance: ask for more.
                let ask = if urls.len() == ctx.urls.len() && ctx.urls.len() == 1 {
                    d * w + 2
                } else {
                    d
                };
                self.open(ctx, ask, &urls).await;
            }
        }
    }

    /// The first of `workers` that holds fewer sockets than it `needed`: the worker, what
    /// it holds, what it needs.
    fn first_short<'w>(
        &self,
        workers: &'w [String],
        needed: &[usize],
    ) -> Option<(&'w str, usize, usize)> {
        workers
            .iter()
            .zip(needed)
            .map(|(w, &need)| (w.as_str(), self.count(w), need))
            .find(|&(_, have, need)| have < need)
    }

    async fn close_rest(self) {
        let rest = self.by_worker.into_values().flatten().map(Conn::close);
        futures_util::future::join_all(rest).await;
    }
}

/// A dm pair: the sender's socket and the receiver's, each its own user.
pub(crate) struct Pair {
    pub(crate) sender: Conn,
    pub(crate) receiver: Conn,
    /// Sender and receiver are on different workers.
    pub(crate) cross: bool,
}

/// Opens `n` pairs, `cross` of them (a fraction) with their two sockets on different
/// workers. With one worker only, every pair is on it (and a note says so).
pub(crate) async fn pairs(ctx: &Arc<Ctx>, n: usize, cross: f64) -> Result<Vec<Pair>, BenchError> {
    let all: Vec<usize> = (0..ctx.urls.len()).collect();
    // One shared port: open a few more than needed, so that every worker shows up.
    let first = if cross > 0.0 && all.len() == 1 {
        (2 * n).max(16)
    } else {
        2 * n
    };
    let mut b = Buckets::default();
    b.open(ctx, first, &all).await;
    if b.order.is_empty() {
        return Err(no_socket(ctx));
    }
    let workers = b.order.clone();
    let cross = cross_possible(ctx, cross, &workers);
    let plan = plan_pairs(n, cross, workers.len());
    let needed = sockets_needed(&plan, workers.len());
    b.top_up(ctx, &workers, &needed).await;
    if let Some((worker, have, need)) = b.first_short(&workers, &needed) {
        b.close_rest().await;
        return Err(BenchError::Setup(format!(
            "could not place the sockets: worker {worker} has {have} of the {need} it needs \
             (failed connects: {})",
            connect_errors(ctx)
        )));
    }
    let pairs = plan
        .into_iter()
        .map(|(s, r, cross)| Pair {
            sender: b.take(&workers[s]),
            receiver: b.take(&workers[r]),
            cross,
        })
        .collect();
    b.close_rest().await;
    Ok(pairs)
}

/// The fraction of cross-worker pairs that `workers` allow: `cross`, or none with a
/// single worker, and a note then, so that the report does not claim a mix it never ran.
fn cross_possible(ctx: &Ctx, cross: f64, workers: &[String]) -> f64 {
    if cross > 0.0 && workers.len() < 2 {
        ctx.note(format!(
            "only one worker ({}): --cross {cross} cannot be met, every pair is on that worker",
            workers[0]
        ));
        0.0
    } else {
        cross
    }
}

/// Which of `w` workers each of `n` pairs has its sender and its receiver on, and whether
/// the two differ. Pair i is cross-worker when the running count of cross pairs steps up
/// at i: the cross pairs are spread evenly over the pair numbers (and so over the
/// phases). Senders go round the workers; a cross pair's receiver is on the next one.
fn plan_pairs(n: usize, cross: f64, w: usize) -> Vec<(usize, usize, bool)> {
    let n_cross = (cross * n as f64).round() as usize;
    (0..n)
        .map(|i| {
            let is_cross = (i + 1) * n_cross / n > i * n_cross / n;
            let s = i % w;
            (s, if is_cross { (s + 1) % w } else { s }, is_cross)
        })
        .collect()
}

/// How many sockets each of `w` workers must hold for `plan`.
fn sockets_needed(plan: &[(usize, usize, bool)], w: usize) -> Vec<usize> {
    let mut needed = vec![0usize; w];
    for &(s, r, _) in plan {
        needed[s] += 1;
        needed[r] += 1;
    }
    needed
}

/// Opens `n` sockets and orders them so that consecutive ones are on different workers
/// (as far as the workers allow): chunks of them spread over the workers.
pub(crate) async fn spread(ctx: &Arc<Ctx>, n: usize) -> Result<Vec<Conn>, BenchError> {
    let all: Vec<usize> = (0..ctx.urls.len()).collect();
    let mut b = Buckets::default();
    b.open(ctx, n, &all).await;
    // Failed handshakes (counted as errors) are made up for, a few times.
    for _ in 0..3 {
        let have: usize = b.by_worker.values().map(Vec::len).sum();
        if have >= n {
            break;
        }
        b.open(ctx, n - have, &all).await;
    }
    let have: usize = b.by_worker.values().map(Vec::len).sum();
    if have < n {
        b.close_rest().await;
        return Err(if have == 0 {
            no_socket(ctx)
        } else {
            BenchError::Setup(format!(
                "opened {have} of {n} sockets (failed connects: {})",
                connect_errors(ctx)
            ))
        });
    }
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        for w in b.order.clone() {
            if out.len() < n && b.count(&w) > 0 {
                out.push(b.take(&w));
            }
        }
    }
    b.close_rest().await;
    Ok(out)
}

fn no_socket(ctx: &Ctx) -> BenchError {
    BenchError::Setup(format!(
        "no socket opened on {}: {}",
        ctx.urls.join(", "),
        connect_errors(ctx)
    ))
}

fn connect_errors(ctx: &Ctx) -> String {
    let e = ctx.errors.lock().unwrap();
    if e.connects.is_empty() {
        "none".into()
    } else {
        super::report::list(&e.connects)
    }
}
