//! Rate limits: one token bucket per user, shared by all the user's sessions on this worker
//! and the HTTP API, so opening more sockets buys no more requests. Buckets are kept for the
//! most recently active users only, so the map stays bounded.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;
use tokio::time::Instant;

use crate::foundation::error::{ApiError, Code};
use crate::foundation::metrics::Metrics;

/// A token bucket: `rate` requests per second, saving up to `burst`.
pub(crate) struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        Self::per_second(rate as f64, burst)
    }

    fn per_second(rate: f64, burst: u32) -> Self {
        TokenBucket {
            tokens: burst as f64,
            rate,
            burst: burst as f64,
            last: Instant::now(),
        }
    }

    /// Takes a token, or says in how many milliseconds one will be there.
    pub(crate) fn take(&mut self) -> Result<(), u64> {
        self.take_n(1)
    }

    /// Takes `n` tokens at once (at most a whole burst), or says in how many milliseconds
    /// they will be there; takes none then.
    pub(crate) fn take_n(&mut self, n: u32) -> Result<(), u64> {
        let n = (n as f64).min(self.burst);
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err((((n - self.tokens) / self.rate) * 1000.0).ceil() as u64)
        }
    }
}

/// `POST /dev/token`'s limit: one bucket per client address, `per_minute` sign-ins a
/// minute (a minute's worth at once), for the most recent 1024 addresses. Outside that
/// it would mint tokens as fast as anyone asked.
pub(crate) struct SignInLimits {
    /// A std mutex: one map lookup and a little arithmetic.
    buckets: Mutex<LruCache<std::net::IpAddr, TokenBucket>>,
    per_minute: u32,
}

impl SignInLimits {
    pub(crate) fn new(per_minute: u32) -> SignInLimits {
        SignInLimits {
            buckets: Mutex::new(LruCache::new(NonZeroUsize::new(1024).expect("1024"))),
            per_minute: per_minute.max(1),
        }
    }

    /// Takes a sign-in for `from`, or the `rate_limited` refusal (counted).
    pub(crate) fn take(&self, from: std::net::IpAddr, metrics: &Metrics) -> Result<(), ApiError> {
        let mut buckets = self.buckets.lock().expect("sign-in limit lock");
        let per_minute = self.per_minute;
        let bucket = buckets.get_or_insert_mut(from, || {
            TokenBucket::per_second(per_minute as f64 / 60.0, per_minute)
        });
        bucket.take().map_err(|retry_after_ms| {
            metrics.rate_limited.inc();
            let mut e = ApiError::new(
                Code::RateLimited,
                format!(
                    "more than {per_minute} development sign-ins a minute from your address \
                     (dev_sign_in_per_minute): wait {retry_after_ms} ms"
                ),
            );
            e.retry_after_ms = Some(retry_after_ms);
            e
        })
    }
}

/// The buckets, one per user, for at most `capacity` users at a time (twice
/// `max_connections`, so a user with a live socket is evicted only after that many other
/// users were active since its last request). A user evicted from the map starts again
/// with a full bucket: the bound costs at most one burst per eviction, never memory.
pub(crate) struct UserLimits {
    /// A std mutex: each critical section is one map lookup and a little arithmetic.
    buckets: Mutex<LruCache<String, TokenBucket>>,
    rate: u32,
    burst: u32,
}

impl UserLimits {
    pub(crate) fn new(capacity: usize, rate: u32, burst: u32) -> UserLimits {
        UserLimits {
            buckets: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity.max(1)).expect("at least 1"),
            )),
            rate,
            burst,
        }
    }

    pub(crate) fn take(&self, user: &str) -> Result<(), u64> {
        self.take_n(user, 1)
    }

    /// Takes `n` of `user`'s tokens at once (at most a whole burst): a request that costs
    /// more than one.
    pub(crate) fn take_n(&self, user: &str, n: u32) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().expect("rate limit lock");
        if let Some(b) = buckets.get_mut(user) {
            return b.take_n(n);
        }
        let mut b = TokenBucket::new(self.rate, self.burst);
        let result = b.take_n(n);
        buckets.put(user.to_string(), b);
        result
    }

    /// The `rate_limited` error, counted.
    pub(crate) fn refusal(&self, metrics: &Metrics, retry_after_ms: u64) -> ApiError {
        metrics.rate_limited.inc();
        let mut e = ApiError::new(
            Code::RateLimited,
            format!(
                "more than {} requests per second: wait {retry_after_ms} ms",
                self.rate
            ),
        );
        e.retry_after_ms = Some(retry_after_ms);
        e
    }
}
