//! Runs a deterministic simulation over many seeds, for the simulations of
//! the group protocol, exactly-once processing and the producer's requests in
//! flight: `EDA_SIM_FIRST_SEED` and `EDA_SIM_SEEDS` choose the seeds, the
//! faults each seed injected are summed into one line, and every failing seed
//! is reported, not just the first, so a failure can be replayed by its seed.

use std::collections::BTreeMap;

/// Faults a seed injected, by kind.
pub(crate) type Faults = BTreeMap<&'static str, u64>;

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
