//! A per-client request rate limit: a token bucket for each client (the
//! customer of a valid token, or the address of a request without one) that
//! holds `burst` requests and refills at `per_second`. A request that finds its
//! bucket empty is answered `429 Too Many Requests` with `Retry-After`: the
//! whole seconds until the bucket has a request again.
//!
//! Customers and addresses have tables of their own, so that a flood from many
//! addresses cannot touch a customer's bucket. An IPv6 address counts by its
//! /64, the block one host is usually given. Buckets of clients that went quiet
//! are dropped once they would be full again, and each table is capped: when
//! it is full of busy buckets a new client is refused until one is idle, and no
//! bucket in it starts afresh.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::RateLimit;

/// Most clients of one kind (customers, addresses) tracked at once.
const MAX_CLIENTS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Whose budget a request draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client<'a> {
    /// The customer a valid token names.
    Customer(&'a str),
    /// The peer address of a request without a valid token (`None`: unknown).
    Address(Option<IpAddr>),
}

/// The buckets of every client.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    customers: Mutex<HashMap<String, Bucket>>,
    addresses: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// A limiter with `limit`; `per_second` of 0 lets everything through.
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            customers: Mutex::new(HashMap::new()),
            addresses: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `client`'s bucket at `now`, or says how long
    /// until one is there.
    pub fn check(&self, client: Client<'_>, now: Instant) -> Result<(), Duration> {
        self.bucket(client, now, true)
    }

    /// Whether `client`'s bucket holds a request at `now`, without taking it:
    /// an address that is over its budget is refused before its credentials
    /// cost a signature check.
    pub fn peek(&self, client: Client<'_>, now: Instant) -> Result<(), Duration> {
        self.bucket(client, now, false)
    }

    fn bucket(&self, client: Client<'_>, now: Instant, take: bool) -> Result<(), Duration> {
        let RateLimit { per_second, burst } = self.limit;
        if per_second <= 0.0 {
            return Ok(());
        }
        let (table, key) = match client {
            Client::Customer(customer) => (&self.customers, customer.to_owned()),
            Client::Address(addr) => (&self.addresses, address_key(addr)),
        };
        let mut buckets = table.lock();
        let full = Bucket {
            tokens: burst,
            at: now,
        };
        if !buckets.contains_key(&key) {
            if !take {
                return Ok(());
            }
            if buckets.len() >= MAX_CLIENTS {
                let refill = Duration::from_secs_f64(burst / per_second);
                buckets.retain(|_, b| now.saturating_duration_since(b.at) < refill);
                if buckets.len() >= MAX_CLIENTS {
                    // Every client is busy: the newcomer waits for one to go
                    // quiet, and the others keep their buckets.
                    return Err(Duration::from_secs_f64(1.0 / per_second));
                }
            }
            buckets.insert(key.clone(), full);
        }
        let bucket = buckets
            .get_mut(&key)
            .unwrap_or_else(|| unreachable!("inserted above"));
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        let tokens = (bucket.tokens + elapsed * per_second).min(burst);
        if tokens < 1.0 {
            if take {
                bucket.tokens = tokens;
                bucket.at = now;
            }
            return Err(Duration::from_secs_f64((1.0 - tokens) / per_second));
        }
        if take {
            bucket.tokens = tokens - 1.0;
            bucket.at = now;
        }
        Ok(())
    }
}

/// The table key of an address: an IPv4 address, or the /64 of an IPv6 one
/// (an IPv4 address mapped into IPv6 counts as itself).
pub(crate) fn address_key(addr: Option<IpAddr>) -> String {
    match addr.map(|a| a.to_canonical()) {
        None => "unknown".to_owned(),
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
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

    fn customer(c: &str) -> Client<'_> {
        Client::Customer(c)
    }

    fn address(a: &str) -> Client<'static> {
        Client::Address(Some(a.parse().unwrap()))
    }

    #[test]
    fn a_client_gets_its_burst_then_the_rate() {
        let l = limiter(2.0, 3.0);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check(customer("a"), t0), Ok(()));
        }
        let wait = l.check(customer("a"), t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
        assert_eq!(retry_after_seconds(wait), 1);
        // Other clients have buckets of their own.
        assert_eq!(l.check(customer("b"), t0), Ok(()));
        // Half a second later one request is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(l.check(customer("a"), t1), Ok(()));
        assert!(l.check(customer("a"), t1).is_err());
        // A long pause refills to the burst, never beyond.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(l.check(customer("a"), t2), Ok(()));
        }
        assert!(l.check(customer("a"), t2).is_err());
    }

    #[test]
    fn slow_rates_ask_for_longer_waits_and_zero_is_no_limit() {
        let l = limiter(0.1, 1.0);
        let t0 = Instant::now();
        assert_eq!(l.check(customer("a"), t0), Ok(()));
        assert_eq!(
            retry_after_seconds(l.check(customer("a"), t0).unwrap_err()),
            10
        );
        let off = limiter(0.0, 1.0);
        for _ in 0..1000 {
            assert_eq!(off.check(customer("a"), t0), Ok(()));
        }
    }

    #[test]
    fn a_peek_takes_nothing() {
        let l = limiter(1.0, 2.0);
        let t0 = Instant::now();
        assert_eq!(l.peek(address("192.0.2.1"), t0), Ok(()));
        assert!(l.addresses.lock().is_empty(), "a peek adds no bucket");
        l.check(address("192.0.2.1"), t0).unwrap();
        for _ in 0..10 {
            assert_eq!(l.peek(address("192.0.2.1"), t0), Ok(()));
        }
        l.check(address("192.0.2.1"), t0).unwrap();
        assert!(l.peek(address("192.0.2.1"), t0).is_err());
        assert!(l.check(address("192.0.2.1"), t0).is_err());
    }

    #[test]
    fn an_ipv6_host_counts_by_its_64() {
        let l = limiter(1.0, 1.0);
        let t0 = Instant::now();
        l.check(address("2001:db8:1:2::1"), t0).unwrap();
        // Another address of the same /64 shares the bucket...
        assert!(l.check(address("2001:db8:1:2:ffff::7"), t0).is_err());
        // ...another /64 has its own, and an IPv4-mapped address is the IPv4 one.
        l.check(address("2001:db8:1:3::1"), t0).unwrap();
        l.check(address("192.0.2.9"), t0).unwrap();
        assert!(l.check(address("::ffff:192.0.2.9"), t0).is_err());
    }

    #[test]
    fn idle_clients_are_forgotten_when_the_table_is_full() {
        let l = limiter(100.0, 1.0);
        let t0 = Instant::now();
        for i in 0..MAX_CLIENTS {
            l.check(customer(&i.to_string()), t0).unwrap();
        }
        // A second on, every bucket is full again: they go, the new one stays.
        l.check(customer("new"), t0 + Duration::from_secs(1))
            .unwrap();
        assert_eq!(l.customers.lock().len(), 1);
    }

    #[test]
    fn a_flood_of_addresses_neither_resets_customers_nor_busy_addresses() {
        let l = limiter(1.0, 2.0);
        let t0 = Instant::now();
        // A customer and an address spend their bursts.
        for _ in 0..2 {
            l.check(customer("alice"), t0).unwrap();
            l.check(address("198.51.100.1"), t0).unwrap();
        }
        // A flood of new addresses fills the address table with busy buckets.
        for i in 0..MAX_CLIENTS as u32 {
            let addr = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            let _ = l.check(Client::Address(Some(addr)), t0);
        }
        // The next newcomer waits; nobody's bucket started afresh.
        assert!(l.check(address("203.0.113.7"), t0).is_err());
        assert!(
            l.check(customer("alice"), t0).is_err(),
            "alice's bucket was reset"
        );
        assert!(
            l.check(address("198.51.100.1"), t0).is_err(),
            "a busy address was reset"
        );
    }
}
