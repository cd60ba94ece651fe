//! A per-client request rate limit: a token bucket for each client (the
//! customer of a valid token, or the address of a request without one) that
//! holds `burst` requests and refills at `per_second`. A request that finds its
//! bucket empty is answered `429 Too Many Requests` with `Retry-After`: the
//! whole seconds until the bucket has a request again.
//!
//! Buckets of clients that went quiet are dropped once they would be full
//! again, and the table is capped, so a flood of new addresses costs memory
//! only up to the cap.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::RateLimit;

/// Most clients tracked at once; past it, idle buckets are dropped first and,
/// if every bucket is busy, the table starts afresh.
const MAX_CLIENTS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every client.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// A limiter with `limit`; `per_second` of 0 lets everything through.
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `client`'s bucket at `now`, or says how long
    /// until one is there.
    pub fn check(&self, client: &str, now: Instant) -> Result<(), Duration> {
        let RateLimit { per_second, burst } = self.limit;
        if per_second <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(client) {
            let refill = Duration::from_secs_f64(burst / per_second);
            buckets.retain(|_, b| now.saturating_duration_since(b.at) < refill);
            if buckets.len() >= MAX_CLIENTS {
                log::warn!("rate limit: {MAX_CLIENTS} clients active at once; forgetting them all");
                buckets.clear();
            }
        }
        let bucket = buckets.entry(client.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }
}

/// `Retry-After` for a wait: whole seconds, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: f64) -> RateLimiter {
        RateLimiter::new(RateLimit { per_second, burst })
    }

    #[test]
    fn a_client_gets_its_burst_then_the_rate() {
        let l = limiter(2.0, 3.0);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check("a", t0), Ok(()));
        }
        let wait = l.check("a", t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
        assert_eq!(retry_after_seconds(wait), 1);
        // Other clients have buckets of their own.
        assert_eq!(l.check("b", t0), Ok(()));
        // Half a second later one request is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(l.check("a", t1), Ok(()));
        assert!(l.check("a", t1).is_err());
        // A long pause refills to the burst, never beyond.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(l.check("a", t2), Ok(()));
        }
        assert!(l.check("a", t2).is_err());
    }

    #[test]
    fn slow_rates_ask_for_longer_waits_and_zero_is_no_limit() {
        let l = limiter(0.1, 1.0);
        let t0 = Instant::now();
        assert_eq!(l.check("a", t0), Ok(()));
        assert_eq!(retry_after_seconds(l.check("a", t0).unwrap_err()), 10);
        let off = limiter(0.0, 1.0);
        for _ in 0..1000 {
            assert_eq!(off.check("a", t0), Ok(()));
        }
    }

    #[test]
    fn idle_clients_are_forgotten_when_the_table_is_full() {
        let l = limiter(100.0, 1.0);
        let t0 = Instant::now();
        for i in 0..MAX_CLIENTS {
            l.check(&i.to_string(), t0).unwrap();
        }
        // A second on, every bucket is full again: they go, the new one stays.
        l.check("new", t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(l.buckets.lock().len(), 1);
    }
}
