//! Runs a deterministic simulation over many seeds, for the simulations of
//! the group protocol, exactly-once processing and the producer's requests in
//! flight: `EDA_SIM_FIRST_SEED` and `EDA_SIM_SEEDS` choose the seeds, the
//! faults each seed injected are summed into one line, and every failing seed
//! is reported, not just the first, so a failure can be replayed by its seed.

use std::collections::BTreeMap;

/// Faults a seed injected, by kind.
pub(crate) type Faults = BTreeMap<&'static str, u64>;

/// splitmix64: small, fast, and the same sequence everywhere.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 for `n` = 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True `per_million` times in a million.
    pub(crate) fn chance(&mut self, per_million: u64) -> bool {
        self.below(1_000_000) < per_million
    }
}

/// A number from the environment, or `default` when unset or not a number.
pub(crate) fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `run` for the seeds `EDA_SIM_FIRST_SEED` (1) onwards, `EDA_SIM_SEEDS`
/// of them (`seeds` unless set), prints what `what` injected over all of
/// them, and fails with every seed that failed.
pub(crate) fn run_seeds(what: &str, seeds: u64, run: impl Fn(u64) -> Result<Faults, String>) {
    let first = env_u64("EDA_SIM_FIRST_SEED", 1);
    let seeds = env_u64("EDA_SIM_SEEDS", seeds);
    let mut totals = Faults::new();
    let mut failures = Vec::new();
    for seed in first..first + seeds {
        match run(seed) {
            Ok(faults) => {
                for (k, v) in faults {
                    *totals.entry(k).or_default() += v;
                }
            }
            Err(e) => failures.push(format!("seed {seed}: {e}")),
        }
    }
    eprintln!(
        "{what}: seeds {first}..{}, {} failed; faults injected: {totals:?}",
        first + seeds - 1,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
