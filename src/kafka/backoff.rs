//! Exponential backoff with full jitter, shared by every retry loop of the Kafka layer.
//!
//! Jitter keeps a fleet of clients that lost the same broker from reconnecting in
//! lockstep; the cap keeps a long outage from stretching one wait past what a
//! caller's deadline can absorb.

use std::time::Duration;

/// Sleeps until `at`, or forever when there is no `at`: a `select!` branch for a
/// deadline that may not exist.
pub(crate) async fn sleep_until_or_never(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Upper bound of the first wait.
    pub initial: Duration,
    /// No single wait is longer than this.
    pub max: Duration,
}

impl BackoffConfig {
    /// The longest that `waits` waits of a sequence can take together: each
    /// at its ceiling.
    pub fn longest(&self, waits: u32) -> Duration {
        let (mut total, mut ceiling) = (Duration::ZERO, self.initial);
        for _ in 0..waits {
            total = total.saturating_add(ceiling);
            ceiling = (ceiling * 2).min(self.max);
        }
        total
    }
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

/// The state of one retry sequence.
#[derive(Debug)]
pub struct Backoff {
    config: BackoffConfig,
    ceiling: Duration,
    attempts: u32,
    rng: u64,
}

impl Backoff {
    /// A fresh sequence.
    ///
    /// Costs nothing until the first wait: a consumer starts one per record, and
    /// most records never need a retry.
    pub fn new(config: BackoffConfig) -> Self {
        Self {
            config,
            ceiling: config.initial,
            attempts: 0,
            rng: 0,
        }
    }

    /// How many waits were handed out.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The next wait: uniform in `[ceiling / 2, ceiling]`, the ceiling doubling up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        self.attempts += 1;
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(self.config.max);
        let half = ceiling / 2;
        let span = ceiling.saturating_sub(half).as_nanos() as u64;
        let jitter = if span == 0 {
            0
        } else {
            self.next_random() % span
        };
        half + Duration::from_nanos(jitter)
    }

    /// xorshift64*: plenty for jitter, and no extra dependency.
    fn next_random(&mut self) -> u64 {
        if self.rng == 0 {
            self.rng = seed();
        }
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The first state of a sequence: from the OS RNG behind uuid, so peers do
/// not share jitter; in a deterministic simulation, from its seed.
fn seed() -> u64 {
    #[cfg(test)]
    {
        let seeded = SIMULATION_SEED.with(|seed| {
            let s = seed.get();
            seed.set(s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            s
        });
        if seeded != 0 {
            return seeded | 1;
        }
    }
    uuid::Uuid::new_v4().as_u64_pair().0 | 1
}

#[cfg(test)]
thread_local! {
    /// Set by a deterministic simulation on its thread, so that the jitter of
    /// every sequence there replays with the seed.
    pub(crate) static SIMULATION_SEED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_within_bounds() {
        let config = BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(800),
        };
        let mut b = Backoff::new(config);
        let mut ceiling = Duration::from_millis(100);
        for _ in 0..10 {
            let d = b.next_delay();
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} outside (.., {ceiling:?}]"
            );
            ceiling = (ceiling * 2).min(config.max);
        }
        assert_eq!(b.attempts(), 10);
    }
}
