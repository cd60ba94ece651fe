//! The broker fault run: Apache Kafka as a three-node cluster (every topic at
//! replication factor 3, `min.insync.replicas=2`), two instances of each
//! service, and a steady load of orders while, round after round:
//!
//! - the node leading most of `order.created`'s partitions is SIGKILLed, and
//!   restarted a few seconds later;
//! - so is the node leading the coordination log (`__eda_offsets`, partition 0);
//! - that node is then SIGSTOPped for longer than both the services' session
//!   timeout and Kafka's broker session timeout, then SIGCONTed;
//! - the three nodes restart one after another, each stopped gracefully, the
//!   next only once every partition is fully replicated again;
//! - two nodes are SIGKILLed at once, below `min.insync.replicas`: the API must
//!   answer `503` within its publish timeout and accept nothing, until they are
//!   back;
//! - the coordination log's leader is cut off from the other nodes and from
//!   the services for longer than Kafka's broker session timeout, then joined
//!   again: each node runs in a network namespace of its own, linked to the
//!   others by a bridge, and the cut takes its link down. This needs root and
//!   iproute2; where the machine does not allow it, the report says so;
//! - after each of these, a service instance is SIGKILLed and restarted, as in
//!   `tests/chaos.rs`.
//!
//! For each fault it measures how long until the pipeline delivered again: from
//! the fault until the first notification of an order first offered after it.
//! At the end it makes the checks of `tests/chaos.rs` against the topics.
//!
//! `EDA_CHAOS_ROUNDS` rounds (default 1) at `EDA_CHAOS_RATE` orders per second
//! (default 3): `scripts/test.sh` runs one round, `scripts/chaos.sh --cluster`
//! ten. `EDA_CHAOS_SEED` picks the nodes and instances. `EDA_CHAOS_FAULTS`
//! names the faults to inject, for a closer look at one (`kill-leader`,
//! `kill-log-leader`, `pause`, `rolling-restart`, `two-down`, `partition`,
//! `kill-service`; default all); `EDA_CHAOS_KEEP_LOGS=1` keeps the services'
//! logs.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rust_eda::events::topics;
use rust_eda::kafka::{Admin, DEFAULT_OFFSETS_TOPIC};
use support::chaos::{
    LoadLog, Rng, SERVICES, System, env_number, ownership_row, report, row, start_load, verify,
    wait_quiet,
};
use support::{PrivateBroker, cluster_config, connect, unique, within};

/// Kafka's `broker.session.timeout.ms` default is 9 s, after which the
/// controller fences the paused node and moves its leaderships; the services'
/// session timeout in the tests is 3 s. A pause outlasts both by far.
const PAUSE: Duration = Duration::from_secs(20);
/// How long a killed leader stays down before it is restarted.
const DOWN: Duration = Duration::from_secs(5);
/// How long two nodes stay down together: past the API's publish timeout.
const QUORUM_LOST: Duration = Duration::from_secs(15);
/// How long a node stays cut off: past Kafka's broker session timeout.
const CUT_OFF: Duration = Duration::from_secs(20);

/// The topics whose replication a rolling restart waits for.
const REPLICATED: [&str; 7] = [
    topics::ORDER_CREATED,
    topics::INVENTORY_RESERVED,
    topics::INVENTORY_FAILED,
    topics::NOTIFICATION_SENT,
    topics::INVENTORY_LEDGER,
    DEFAULT_OFFSETS_TOPIC,
    "__transaction_state",
];

/// One fault of the run and what it did.
struct Fault {
    kind: &'static str,
    /// Until the first notification of an order first offered after `at`.
    recovery: Option<Duration>,
}

struct Run {
    system: System,
    admin: Admin,
    log: std::sync::Arc<LoadLog>,
    faults: Vec<Fault>,
    rng: Rng,
    started: Instant,
}

/// Whether `Run::partition` can cut a node off, or why not.
type Partitions = Result<(), String>;

impl Run {
    /// The node leading most partitions of `topic` (`partition`: that one's).
    async fn leader(&self, topic: &str, partition: Option<usize>) -> u16 {
        let states = within(30, "the cluster's metadata", self.admin.partitions(topic))
            .await
            .expect("metadata");
        let leader = match partition {
            Some(p) => states[p].leader,
            None => {
                let mut led: BTreeMap<i32, usize> = BTreeMap::new();
                for s in &states {
                    if let Some(l) = s.leader {
                        *led.entry(l).or_default() += 1;
                    }
                }
                led.into_iter().max_by_key(|(_, n)| *n).map(|(l, _)| l)
            }
        };
        let leader = leader.unwrap_or_else(|| panic!("{topic} has no leader"));
        u16::try_from(leader).expect("a node id")
    }

    /// Waits until every partition of the services' topics, the coordination
    /// log and the transaction log has all its replicas in sync.
    async fn wait_replicated(&self, secs: u64) {
        within(secs, "every partition fully replicated", async {
            loop {
                let mut all = true;
                for topic in REPLICATED {
                    match self.admin.partitions(topic).await {
                        Ok(states) => all &= states.iter().all(|s| s.fully_replicated()),
                        Err(_) => all = false,
                    }
                }
                if all {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
        .await;
    }

    /// Waits for the pipeline to deliver an order first offered after `at`.
    async fn recovery(&self, at: Instant, secs: u64) -> Option<Duration> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            let notified = self.system.webhook.notified_at();
            let first = self
                .log
                .orders
                .lock()
                .iter()
                .filter(|(offered, _)| *offered >= at)
                .filter_map(|(_, id)| id.as_ref().and_then(|id| notified.get(id)))
                .min()
                .copied();
            if let Some(first) = first {
                return Some(first.duration_since(at));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    async fn record(&mut self, kind: &'static str, at: Instant) {
        let recovery = self.recovery(at, 180).await;
        eprintln!(
            "{:>7.1?}: {kind}: delivering again after {}",
            self.started.elapsed(),
            recovery.map_or("-".to_owned(), |d| format!("{d:.1?}"))
        );
        self.faults.push(Fault { kind, recovery });
    }

    /// `start` on `node` (a `scripts/broker.sh` verb), `end` after `hold`; then
    /// the time until the pipeline delivered again, and full replication.
    async fn hold(
        &mut self,
        kind: &'static str,
        node: u16,
        [start, end]: [&str; 2],
        hold: Duration,
    ) {
        let at = Instant::now();
        self.system.broker.node(start, node);
        tokio::time::sleep(hold).await;
        self.system.broker.node(end, node);
        self.record(kind, at).await;
        self.wait_replicated(180).await;
    }

    async fn kill_leader(&mut self, kind: &'static str, topic: &str, partition: Option<usize>) {
        let node = self.leader(topic, partition).await;
        self.hold(kind, node, ["kill-node", "start-node"], DOWN)
            .await;
    }

    async fn pause(&mut self) {
        let node = self.leader(DEFAULT_OFFSETS_TOPIC, Some(0)).await;
        let kind = "SIGSTOP of the coordination log's leader";
        self.hold(kind, node, ["pause-node", "resume-node"], PAUSE)
            .await;
    }

    async fn rolling_restart(&mut self) {
        for node in 1..=self.system.broker.nodes() {
            let at = Instant::now();
            self.system.broker.node("restart-node", node);
            self.record("rolling restart, one node", at).await;
            self.wait_replicated(180).await;
        }
    }

    /// Two nodes down: every attempt that starts while they are must be
    /// answered `503` (or not at all) within the publish timeout, never `201`.
    async fn two_down(&mut self) -> (usize, usize, Duration) {
        let up = 1 + self.rng.below(3) as u16;
        let down: Vec<u16> = (1..=3).filter(|n| *n != up).collect();
        let at = Instant::now();
        for n in &down {
            self.system.broker.node("kill-node", *n);
        }
        // Attempts already on their way may still be answered either way, and
        // so may those still waiting when the nodes come back.
        let window_from = Instant::now() + Duration::from_secs(1);
        tokio::time::sleep(QUORUM_LOST).await;
        let window_to = Instant::now() - self.system.publish_timeout;
        for n in &down {
            self.system.broker.node("start-node", *n);
        }
        self.record("two nodes down, below min.insync.replicas", at)
            .await;
        self.wait_replicated(180).await;
        let attempts = self.log.attempts.lock();
        let window = attempts
            .iter()
            .filter(|a| a.at >= window_from && a.at < window_to);
        let (mut refused, mut accepted, mut slowest) = (0, 0, Duration::ZERO);
        for a in window {
            match a.status {
                201 => accepted += 1,
                503 => refused += 1,
                _ => {}
            }
            slowest = slowest.max(a.took);
        }
        (refused, accepted, slowest)
    }

    async fn partition(&mut self) {
        let node = self.leader(DEFAULT_OFFSETS_TOPIC, Some(0)).await;
        let kind = "network partition of the coordination log's leader";
        self.hold(kind, node, ["partition-node", "heal-node"], CUT_OFF)
            .await;
    }

    async fn kill_service(&mut self) {
        let victim = self.rng.below(SERVICES.len() as u64) as usize;
        let at = Instant::now();
        self.system.kill(victim);
        tokio::time::sleep(Duration::from_millis(200 + self.rng.below(800))).await;
        self.system.spawn(victim);
        self.system.wait_ready(victim, 120).await;
        self.record("SIGKILL of a service instance", at).await;
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() - 1) * p / 100]
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "takes minutes: scripts/test.sh and scripts/chaos.sh --cluster run it"]
async fn no_order_is_lost_or_doubled_while_brokers_fail() {
    let rounds = env_number("EDA_CHAOS_ROUNDS", 1);
    let rate = env_number("EDA_CHAOS_RATE", 3).max(1);
    let seed = env_number("EDA_CHAOS_SEED", 0x5eed_cafe);
    let run_name = unique("cluster-chaos");
    // About three minutes a round.
    let expected = (rounds * 180 * rate) as usize;
    let partitions: Partitions = PrivateBroker::network_namespaces();
    let broker = PrivateBroker::start_cluster(partitions.is_ok());
    let admin = Admin::new(cluster_config(&broker.brokers()));
    let system = System::start(&run_name, broker, expected).await;
    let (load, log) = start_load(None, rate, seed, system.api_ports(), &run_name);
    let mut run = Run {
        system,
        admin,
        log,
        faults: Vec::new(),
        rng: Rng(seed.rotate_left(17) | 1),
        started: Instant::now(),
    };
    run.wait_replicated(120).await;
    // Flowing first, so that the first fault meets a working pipeline.
    run.recovery(run.started, 120)
        .await
        .expect("the pipeline delivers before any fault");

    let mut quorum_refused = 0;
    let mut quorum_accepted = 0;
    let mut slowest_refusal = Duration::ZERO;
    let chosen = std::env::var("EDA_CHAOS_FAULTS").unwrap_or_default();
    let wanted = |fault: &str| chosen.is_empty() || chosen.split(',').any(|f| f.trim() == fault);
    for round in 1..=rounds {
        eprintln!("== round {round} of {rounds}");
        if wanted("kill-leader") {
            run.kill_leader(
                "SIGKILL of the busiest order.created leader",
                topics::ORDER_CREATED,
                None,
            )
            .await;
        }
        if wanted("kill-service") {
            run.kill_service().await;
        }
        if wanted("kill-log-leader") {
            run.kill_leader(
                "SIGKILL of the coordination log's leader",
                DEFAULT_OFFSETS_TOPIC,
                Some(0),
            )
            .await;
        }
        if wanted("pause") {
            run.pause().await;
        }
        if wanted("kill-service") {
            run.kill_service().await;
        }
        if wanted("rolling-restart") {
            run.rolling_restart().await;
        }
        if wanted("two-down") {
            let (refused, accepted, slowest) = run.two_down().await;
            quorum_refused += refused;
            quorum_accepted += accepted;
            slowest_refusal = slowest_refusal.max(slowest);
        }
        if wanted("kill-service") {
            run.kill_service().await;
        }
        if wanted("partition") && partitions.is_ok() {
            run.partition().await;
        }
        if wanted("kill-service") {
            run.kill_service().await;
        }
    }
    run.log.stop();
    within(300, "the load generator", load).await.unwrap();
    let load_time = run.started.elapsed();

    let offered = run.log.orders.lock().len();
    let accepted = run.log.accepted();
    wait_quiet(&run.system.webhook, &accepted, 180).await;
    let kafka = connect(&run.system.broker.brokers()).await;
    let (mut rows, lost) = verify(
        &kafka,
        &run.system.webhook,
        &run.system.stock,
        offered,
        &accepted,
    )
    .await;

    let mut kinds: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let mut unrecovered = 0;
    for f in &run.faults {
        match f.recovery {
            Some(d) => kinds.entry(f.kind).or_default().push(d),
            None => unrecovered += 1,
        }
    }
    for (kind, mut times) in kinds {
        times.sort();
        rows.push(row(
            &format!(
                "{kind}: {} times, delivering again after (p50 / max)",
                times.len()
            ),
            format!(
                "{:.1?} / {:.1?}",
                percentile(&times, 50),
                times[times.len() - 1]
            ),
            true,
        ));
    }
    let limit = run.system.publish_timeout + Duration::from_secs(2);
    rows.extend([
        ownership_row(&run.system),
        row(
            "faults after which the pipeline never delivered again",
            unrecovered,
            unrecovered == 0,
        ),
        row(
            "two nodes down: orders answered 503",
            quorum_refused,
            quorum_refused > 0 || !wanted("two-down"),
        ),
        row(
            "two nodes down: orders answered 201",
            quorum_accepted,
            quorum_accepted == 0,
        ),
        row(
            &format!("two nodes down: slowest answer (limit {limit:.1?})"),
            format!("{slowest_refusal:.1?}"),
            slowest_refusal <= limit,
        ),
        row(
            "network partition",
            match &partitions {
                Ok(()) => "injected".to_owned(),
                Err(why) => format!("not injected: this machine does not allow it ({why})"),
            },
            true,
        ),
        row("rounds", rounds, true),
        row("load phase", format!("{load_time:.1?}"), true),
        row(
            "orders finished by the load",
            run.log.done.load(Ordering::Relaxed),
            true,
        ),
    ]);
    report(&rows, &lost);
}
