//! The chaos run: the broker, two instances of each service as processes, a
//! webhook receiver and a load of orders, while instances are SIGKILLed and
//! restarted every few seconds and the broker restarts once. Afterwards every
//! accepted order must have been decided once and notified once, and the stock
//! must add up.
//!
//! `EDA_CHAOS_ORDERS` orders (default 1,000, the CI variant) are offered at
//! `EDA_CHAOS_RATE` per second (default 25); `scripts/chaos.sh` runs 5,000. It
//! takes minutes, so a plain `cargo test` leaves it out (ignored);
//! `scripts/test.sh` runs it, as does `cargo test --test chaos -- --ignored`.
//! Clients behave as the API asks: every order has an `Idempotency-Key`, and a
//! request that fails (connection refused, timeout, 503, 409) is retried with the
//! same key, on the other instance. The broker faults on a three-node cluster
//! are `tests/cluster_chaos.rs`.

mod support;

use std::time::{Duration, Instant};

use support::chaos::{
    Rng, SERVICES, System, env_number, ownership_row, report, row, start_load, verify, wait_quiet,
};
use support::{PrivateBroker, connect, unique, within};

#[tokio::test(flavor = "multi_thread")]
#[ignore = "takes minutes: scripts/test.sh and scripts/chaos.sh run it"]
async fn no_order_is_lost_or_doubled_while_processes_are_killed() {
    let orders = env_number("EDA_CHAOS_ORDERS", 1000) as usize;
    let rate = env_number("EDA_CHAOS_RATE", 25).max(1);
    let seed = env_number("EDA_CHAOS_SEED", 0x5eed_cafe);
    let run = unique("chaos");
    let mut system = System::start(&run, PrivateBroker::start(), orders).await;
    let (load, log) = start_load(Some(orders), rate, seed, system.api_ports(), &run);

    // The controller: a SIGKILL every few seconds, the broker restarted once, half-way.
    let started = Instant::now();
    let mut kills = 0;
    let mut longest_recovery = Duration::ZERO;
    let mut broker_recovery = None;
    let mut controller_rng = Rng(seed.rotate_left(17) | 1);
    while !load.is_finished() {
        tokio::time::sleep(Duration::from_millis(2000 + controller_rng.below(2000))).await;
        if load.is_finished() {
            break;
        }
        let done = log.done.load(std::sync::atomic::Ordering::Relaxed);
        if broker_recovery.is_none() && done >= orders / 2 {
            system.broker.restart();
            let restarted = Instant::now();
            for i in [0, 1] {
                system.wait_ready(i, 120).await;
            }
            broker_recovery = Some(restarted.elapsed());
            eprintln!("broker restarted at {:?}", started.elapsed());
            continue;
        }
        let victim = controller_rng.below(SERVICES.len() as u64) as usize;
        system.kill(victim);
        kills += 1;
        tokio::time::sleep(Duration::from_millis(200 + controller_rng.below(800))).await;
        system.spawn(victim);
        let recovery = system.wait_ready(victim, 120).await;
        longest_recovery = longest_recovery.max(recovery);
        eprintln!(
            "{:>6.1?}: killed {} and it was ready again in {recovery:.1?} ({done} orders sent)",
            started.elapsed(),
            system.instances[victim].name,
        );
    }
    within(300, "the load generator", load).await.unwrap();
    let load_time = started.elapsed();

    let accepted = log.accepted();
    wait_quiet(&system.webhook, &accepted, 120).await;
    let kafka = connect(&system.broker.brokers()).await;
    let (mut rows, lost) = verify(&kafka, &system.webhook, &system.stock, orders, &accepted).await;
    rows.extend([
        ownership_row(&system),
        row("kills survived", kills, true),
        row(
            "longest recovery after a kill",
            format!("{longest_recovery:.1?}"),
            true,
        ),
        row(
            "broker restart, until both APIs were ready",
            broker_recovery.map_or("not reached".into(), |d| format!("{d:.1?}")),
            broker_recovery.is_some(),
        ),
        row("load phase", format!("{load_time:.1?}"), true),
    ]);
    report(&rows, &lost);
}
