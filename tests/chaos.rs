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
//! same key, on the other instance.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use rust_eda::events::{Envelope, InventoryFailed, InventoryReserved, NotificationSent, topics};
use rust_eda::http_client::{self, HttpUrl};
use rust_eda::kafka::middleware::dead_letter;
use rust_eda::kafka::read_topic;
use serde_json::{Value, json};
use support::process::{Process, Webhook, configure, dump_log, local_port, wait_ready};
use support::{PrivateBroker, connect, unique, within};

const PRODUCTS: usize = 8;

/// One service process of the run.
struct Instance {
    service: &'static str,
    name: String,
    /// Where `/ready` answers: the API port or the metrics port.
    port: u16,
    process: Option<Process>,
}

struct Cluster {
    dir: PathBuf,
    broker: PrivateBroker,
    webhook: SocketAddr,
    instances: Vec<Instance>,
}

impl Cluster {
    fn spawn(&mut self, i: usize) {
        let instance = &self.instances[i];
        let port_var = if instance.service == "order-service" {
            "APP_SERVER_PORT"
        } else {
            "APP_METRICS_PORT"
        };
        let mut command = support::service_command(instance.service);
        configure(
            &mut command,
            &self.broker.brokers(),
            &self.dir,
            self.webhook,
            6,
        );
        command
            .env(port_var, instance.port.to_string())
            .env("APP_ORDER_PUBLISH_TIMEOUT_MS", "5000");
        let process = Process::spawn(&instance.name, command, &self.dir);
        self.instances[i].process = Some(process);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.instances[i].process.take() {
            process.kill();
        }
    }

    async fn wait_ready(&self, i: usize, secs: u64) -> Duration {
        let instance = &self.instances[i];
        wait_ready(instance.port, &instance.name, secs).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.instances.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            for instance in &self.instances {
                dump_log(
                    &self.dir.join(format!("{}.log", instance.name)),
                    &instance.name,
                    15,
                );
            }
            eprintln!("logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A small deterministic generator, so that a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

/// Sends order `i` until it is accepted (or the budget runs out), alternating
/// between the two API instances, always with the same `Idempotency-Key`.
async fn send_order(i: usize, body: Value, ports: [u16; 2], run: &str) -> Option<String> {
    let key = format!("{run}-{i}");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut attempt = 0;
    while Instant::now() < deadline {
        let port = ports[(i + attempt) % 2];
        attempt += 1;
        let url: HttpUrl = format!("http://127.0.0.1:{port}/api/v1/orders")
            .parse()
            .unwrap();
        let r = http_client::request(
            http::Method::POST,
            &url,
            &[
                ("content-type", "application/json"),
                ("idempotency-key", &key),
            ],
            Bytes::from(body.to_string()),
            Duration::from_secs(10),
        )
        .await;
        match r {
            Ok(r) if r.status == 201 => {
                return Some(r.json()["order_id"].as_str().unwrap().to_owned());
            }
            Ok(r) if r.status == 400 || r.status == 422 => {
                panic!("order {i} refused: {} {:?}", r.status, r.json())
            }
            _ => tokio::time::sleep(Duration::from_millis(200 * attempt.min(10) as u64)).await,
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "takes minutes: scripts/test.sh and scripts/chaos.sh run it"]
async fn no_order_is_lost_or_doubled_while_processes_are_killed() {
    let orders = env_number("EDA_CHAOS_ORDERS", 1000) as usize;
    let rate = env_number("EDA_CHAOS_RATE", 25).max(1);
    let seed = env_number("EDA_CHAOS_SEED", 0x5eed_cafe);
    let run = unique("chaos");

    // Stock for about 60% of the demand, so both outcomes happen throughout.
    let stock: BTreeMap<String, u64> = (0..PRODUCTS)
        .map(|p| {
            (
                format!("p-{p}"),
                (orders as u64 * 3 / PRODUCTS as u64).max(5),
            )
        })
        .collect();
    let dir = std::env::temp_dir().join(&run);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("stock.json"), json!(stock).to_string()).unwrap();
    let webhook = Webhook::start().await;

    let services = [
        "order-service",
        "order-service",
        "inventory-service",
        "inventory-service",
        "notification-service",
        "notification-service",
    ];
    let mut cluster = Cluster {
        dir,
        broker: PrivateBroker::start(),
        webhook: webhook.addr,
        instances: services
            .iter()
            .enumerate()
            .map(|(i, s)| Instance {
                service: s,
                name: format!("{s}-{}", i % 2 + 1),
                port: local_port(),
                process: None,
            })
            .collect(),
    };
    for i in 0..services.len() {
        cluster.spawn(i);
        // One at a time: the first creates the topics and seeds the ledger.
        cluster.wait_ready(i, 90).await;
    }
    let ports = [cluster.instances[0].port, cluster.instances[1].port];

    // The load: `orders` orders at `rate` per second, each sent until accepted.
    let mut rng = Rng(seed | 1);
    // The order id each order was accepted under, once it was.
    let sent: Arc<Mutex<Vec<Option<String>>>> = Arc::new(Mutex::new(vec![None; orders]));
    let mut bodies = Vec::new();
    for _ in 0..orders {
        let lines = 1 + rng.below(2);
        let mut items = BTreeMap::new();
        for _ in 0..lines {
            *items
                .entry(format!("p-{}", rng.below(PRODUCTS as u64)))
                .or_insert(0) += 1 + rng.below(5);
        }
        let items: Vec<(String, u64)> = items.into_iter().collect();
        bodies.push(json!({
            "customer_id": format!("customer-{}", rng.below(50)),
            "items": items.iter().map(|(p, q)| json!({"product_id": p, "quantity": q, "price": 9.5})).collect::<Vec<_>>(),
        }));
    }
    let done = Arc::new(AtomicUsize::new(0));
    let load = {
        let (sent, done, run) = (Arc::clone(&sent), Arc::clone(&done), run.clone());
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            for (i, body) in bodies.into_iter().enumerate() {
                tick.tick().await;
                let (sent, done, run) = (Arc::clone(&sent), Arc::clone(&done), run.clone());
                tasks.spawn(async move {
                    let id = send_order(i, body, ports, &run).await;
                    sent.lock()[i] = id;
                    done.fetch_add(1, Ordering::Relaxed);
                });
            }
            while tasks.join_next().await.is_some() {}
        })
    };

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
        if broker_recovery.is_none() && done.load(Ordering::Relaxed) >= orders / 2 {
            cluster.broker.restart();
            let restarted = Instant::now();
            for i in [0, 1] {
                cluster.wait_ready(i, 120).await;
            }
            broker_recovery = Some(restarted.elapsed());
            eprintln!("broker restarted at {:?}", started.elapsed());
            continue;
        }
        let victim = controller_rng.below(services.len() as u64) as usize;
        cluster.kill(victim);
        kills += 1;
        tokio::time::sleep(Duration::from_millis(200 + controller_rng.below(800))).await;
        cluster.spawn(victim);
        let recovery = cluster.wait_ready(victim, 120).await;
        longest_recovery = longest_recovery.max(recovery);
        eprintln!(
            "{:>6.1?}: killed {} and it was ready again in {recovery:.1?} ({} orders sent)",
            started.elapsed(),
            cluster.instances[victim].name,
            done.load(Ordering::Relaxed)
        );
    }
    within(300, "the load generator", load).await.unwrap();
    let load_time = started.elapsed();

    // Quiet: wait until every accepted order is notified (or two minutes pass).
    let accepted: Vec<(usize, String)> = sent
        .lock()
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.clone().map(|id| (i, id)))
        .collect();
    let kafka = connect(&cluster.broker.brokers()).await;
    let quiet_by = Instant::now() + Duration::from_secs(120);
    let mut notified_orders: HashSet<String>;
    loop {
        let calls = webhook.calls().into_values().map(|(o, _)| o).collect();
        notified_orders = calls;
        if accepted.iter().all(|(_, id)| notified_orders.contains(id)) || Instant::now() > quiet_by
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A little longer, so that a late duplicate would show.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Verify against the topics themselves.
    let read = |topic: &'static str| {
        let kafka = kafka.clone();
        async move {
            within(60, &format!("reading {topic}"), read_topic(&kafka, topic))
                .await
                .unwrap_or_else(|e| panic!("reading {topic}: {e}"))
        }
    };
    let mut decisions: HashMap<String, HashSet<String>> = HashMap::new();
    let mut reserved_units: BTreeMap<String, u64> = BTreeMap::new();
    let mut reserved_orders: HashSet<String> = HashSet::new();
    for m in read(topics::INVENTORY_RESERVED).await {
        let e = Envelope::<InventoryReserved>::decode(&m).expect("a reserved event");
        let order = e.payload.order_id.to_string();
        decisions
            .entry(order.clone())
            .or_default()
            .insert(e.event_id.to_string());
        if reserved_orders.insert(order) {
            for item in e.payload.items {
                *reserved_units.entry(item.product_id).or_default() += item.quantity;
            }
        }
    }
    for m in read(topics::INVENTORY_FAILED).await {
        let e = Envelope::<InventoryFailed>::decode(&m).expect("a failed event");
        decisions
            .entry(e.payload.order_id.to_string())
            .or_default()
            .insert(e.event_id.to_string());
    }
    let sent_notifications = read(topics::NOTIFICATION_SENT).await;
    let mut sent_per_event: HashMap<String, usize> = HashMap::new();
    for m in &sent_notifications {
        let e = Envelope::<NotificationSent>::decode(m).expect("a notification event");
        *sent_per_event
            .entry(e.payload.source_event_id.to_string())
            .or_default() += 1;
    }
    let mut parked = 0;
    for topic in [
        topics::ORDER_CREATED,
        topics::INVENTORY_RESERVED,
        topics::INVENTORY_FAILED,
    ] {
        let dlq = dead_letter::topic_for(topic);
        parked += within(60, "reading a dead-letter topic", read_topic(&kafka, &dlq))
            .await
            .map(|r| r.len())
            .unwrap_or(0);
    }

    let calls = webhook.calls();
    let mut keys_per_order: HashMap<&str, usize> = HashMap::new();
    for (order, _) in calls.values() {
        *keys_per_order.entry(order.as_str()).or_default() += 1;
    }
    let webhook_repeats: usize = calls.values().map(|(_, n)| n - 1).sum();

    let accepted_ids: HashSet<&str> = accepted.iter().map(|(_, id)| id.as_str()).collect();
    let final_count = accepted_ids
        .iter()
        .filter(|id| decisions.contains_key(**id))
        .count();
    let lost: Vec<&&str> = accepted_ids
        .iter()
        .filter(|id| !decisions.contains_key(**id) || !keys_per_order.contains_key(**id))
        .collect();
    let decided_twice = decisions.values().filter(|ids| ids.len() > 1).count();
    let notified_twice = keys_per_order.values().filter(|n| **n > 1).count();
    let sent_twice = sent_per_event.values().filter(|n| **n > 1).count();
    let overbooked: Vec<String> = reserved_units
        .iter()
        .filter(|(p, units)| **units > stock[*p])
        .map(|(p, units)| format!("{p}: {units} > {}", stock[p]))
        .collect();
    let unknown_decisions = decisions
        .keys()
        .filter(|id| !accepted_ids.contains(id.as_str()))
        .count();

    let rows = [
        ("orders sent", orders.to_string(), true),
        (
            "accepted (2xx)",
            accepted_ids.len().to_string(),
            accepted_ids.len() == orders,
        ),
        (
            "final (reserved or rejected)",
            format!(
                "{final_count} ({} reserved, {} rejected)",
                reserved_orders.len(),
                final_count.saturating_sub(reserved_orders.len())
            ),
            true,
        ),
        (
            "lost (accepted, not decided and notified)",
            lost.len().to_string(),
            lost.is_empty(),
        ),
        (
            "decided twice",
            decided_twice.to_string(),
            decided_twice == 0,
        ),
        (
            "notified twice (distinct webhook keys)",
            notified_twice.to_string(),
            notified_twice == 0,
        ),
        (
            "stock consistent (reserved <= initial)",
            if overbooked.is_empty() {
                "yes".into()
            } else {
                overbooked.join(", ")
            },
            overbooked.is_empty(),
        ),
        (
            "decisions for orders never accepted",
            unknown_decisions.to_string(),
            unknown_decisions == 0,
        ),
        (
            "records parked in dead-letter topics",
            parked.to_string(),
            parked == 0,
        ),
        ("kills survived", kills.to_string(), true),
        (
            "longest recovery after a kill",
            format!("{longest_recovery:.1?}"),
            true,
        ),
        (
            "broker restart, until both APIs were ready",
            broker_recovery.map_or("not reached".into(), |d| format!("{d:.1?}")),
            broker_recovery.is_some(),
        ),
        (
            "webhook calls repeated with the same key (dropped by key)",
            webhook_repeats.to_string(),
            true,
        ),
        (
            "notification.sent repeated for one outcome",
            sent_twice.to_string(),
            true,
        ),
        ("load phase", format!("{load_time:.1?}"), true),
    ];
    println!("\n| check | value | |\n| --- | --- | --- |");
    for (what, value, ok) in &rows {
        println!(
            "| {what} | {value} | {} |",
            if *ok { "ok" } else { "VIOLATED" }
        );
    }
    let violations: Vec<&str> = rows.iter().filter(|r| !r.2).map(|r| r.0).collect();
    if !violations.is_empty() {
        eprintln!(
            "lost orders (first 10): {:?}",
            lost.iter().take(10).collect::<Vec<_>>()
        );
    }
    assert!(violations.is_empty(), "chaos run violated: {violations:?}");
}
