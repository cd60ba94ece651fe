//! The fault runs' shared parts (`tests/chaos.rs`, `tests/cluster_chaos.rs`):
//! two instances of each service as processes, a load of orders sent as the
//! API asks clients to (an `Idempotency-Key` each, retried on failure on the
//! other instance), and the checks at the end, made against the topics
//! themselves and the webhook's calls.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use rust_eda::events::{
    Envelope, InventoryFailed, InventoryReserved, NotificationSent, OrderCreated, topics,
};
use rust_eda::http_client::{self, HttpUrl};
use rust_eda::kafka::middleware::dead_letter;
use rust_eda::kafka::{Cluster, read_topic};
use serde_json::{Value, json};

use super::process::{Process, Webhook, configure, dump_log, local_port, wait_ready};
use super::{PrivateBroker, within};

/// Products the orders ask for.
pub const PRODUCTS: usize = 8;

/// The services of a run: two instances of each.
pub const SERVICES: [&str; 6] = [
    "order-service",
    "order-service",
    "inventory-service",
    "inventory-service",
    "notification-service",
    "notification-service",
];

/// One service process of the run.
pub struct Instance {
    pub service: &'static str,
    pub name: String,
    /// Where `/ready` answers: the API port or the metrics port.
    pub port: u16,
    process: Option<Process>,
}

/// The broker (one node or a cluster), the services and the webhook they call.
pub struct System {
    pub dir: PathBuf,
    pub broker: PrivateBroker,
    pub webhook: Webhook,
    pub instances: Vec<Instance>,
    /// The initial stock per product.
    pub stock: BTreeMap<String, u64>,
    /// How long the API waits for Kafka before answering `503`.
    pub publish_timeout: Duration,
}

impl System {
    /// Starts two instances of each service on `broker`, one at a time (the
    /// first creates the topics and seeds the ledger), with stock for about 60%
    /// of the demand of `expected_orders` orders, so that both outcomes happen
    /// throughout.
    pub async fn start(run: &str, broker: PrivateBroker, expected_orders: usize) -> Self {
        let stock: BTreeMap<String, u64> = (0..PRODUCTS)
            .map(|p| {
                (
                    format!("p-{p}"),
                    (expected_orders as u64 * 3 / PRODUCTS as u64).max(5),
                )
            })
            .collect();
        let dir = std::env::temp_dir().join(run);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("stock.json"), json!(stock).to_string()).unwrap();
        let mut system = Self {
            dir,
            broker,
            webhook: Webhook::start().await,
            instances: SERVICES
                .iter()
                .enumerate()
                .map(|(i, s)| Instance {
                    service: s,
                    name: format!("{s}-{}", i % 2 + 1),
                    port: local_port(),
                    process: None,
                })
                .collect(),
            stock,
            publish_timeout: Duration::from_secs(5),
        };
        for i in 0..SERVICES.len() {
            system.spawn(i);
            system.wait_ready(i, 90).await;
        }
        system
    }

    /// The two API ports.
    pub fn api_ports(&self) -> [u16; 2] {
        [self.instances[0].port, self.instances[1].port]
    }

    pub fn webhook_addr(&self) -> SocketAddr {
        self.webhook.addr
    }

    pub fn spawn(&mut self, i: usize) {
        let instance = &self.instances[i];
        let port_var = if instance.service == "order-service" {
            "APP_SERVER_PORT"
        } else {
            "APP_METRICS_PORT"
        };
        let mut command = super::service_command(instance.service);
        configure(
            &mut command,
            &self.broker.brokers(),
            &self.dir,
            self.webhook.addr,
            6,
        );
        command.env(port_var, instance.port.to_string()).env(
            "APP_ORDER_PUBLISH_TIMEOUT_MS",
            self.publish_timeout.as_millis().to_string(),
        );
        let process = Process::spawn(&instance.name, command, &self.dir);
        self.instances[i].process = Some(process);
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.instances[i].process.take() {
            process.kill();
        }
    }

    pub async fn wait_ready(&self, i: usize, secs: u64) -> Duration {
        let instance = &self.instances[i];
        wait_ready(instance.port, &instance.name, secs).await
    }

    /// Partition epochs that more than one member started, from the services'
    /// logs (`<partition>: <member> starts at offset <n> (epoch <e>)`). Two
    /// members may both write a claim for one epoch; only the first in the log
    /// counts, and a member starts a partition only once the log says it owns it
    /// in that epoch. Two members starting one epoch would be two live owners at
    /// once. Also how many starts were read, so that a change of the log line
    /// cannot pass unnoticed.
    pub fn double_starts(&self) -> (Vec<String>, usize) {
        let mut owners: BTreeMap<(&str, String, String), HashSet<String>> = BTreeMap::new();
        let mut starts = 0;
        let mut logs = Vec::new();
        for instance in &self.instances {
            let log = std::fs::read_to_string(self.dir.join(format!("{}.log", instance.name)))
                .unwrap_or_default();
            logs.push((instance.service, log));
        }
        for (service, log) in &logs {
            for line in log.lines() {
                let Ok(entry) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                let msg = entry["msg"].as_str().unwrap_or_default();
                let Some((partition, rest)) = msg.split_once(": ") else {
                    continue;
                };
                let Some((member, rest)) = rest.split_once(" starts at offset ") else {
                    continue;
                };
                let Some((_, epoch)) = rest.split_once("(epoch ") else {
                    continue;
                };
                let epoch = epoch.trim_end_matches(')').to_owned();
                starts += 1;
                owners
                    .entry((service, partition.to_owned(), epoch))
                    .or_default()
                    .insert(member.to_owned());
            }
        }
        let doubles = owners
            .into_iter()
            .filter(|(_, members)| members.len() > 1)
            .map(|((service, partition, epoch), members)| {
                format!("{service} {partition} epoch {epoch}: {members:?}")
            })
            .collect();
        (doubles, starts)
    }

    /// Waits until every instance is ready.
    pub async fn wait_all_ready(&self, secs: u64) -> Duration {
        let started = Instant::now();
        for i in 0..self.instances.len() {
            self.wait_ready(i, secs).await;
        }
        started.elapsed()
    }
}

impl Drop for System {
    fn drop(&mut self) {
        for i in 0..self.instances.len() {
            self.kill(i);
        }
        let keep = std::env::var_os("EDA_CHAOS_KEEP_LOGS").is_some();
        if std::thread::panicking() || keep {
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
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

/// One HTTP answer (or failure) the load met.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub at: Instant,
    /// The status, or 0 when no answer came (refused, reset, timed out).
    pub status: u16,
    pub took: Duration,
}

/// What the load generator saw, shared with the fault controller.
#[derive(Default)]
pub struct LoadLog {
    /// Per order: when it was first offered, and the id it was accepted under.
    pub orders: Mutex<Vec<(Instant, Option<String>)>>,
    pub attempts: Mutex<Vec<Attempt>>,
    /// Orders finished (accepted, or given up on).
    pub done: AtomicUsize,
    stop: AtomicBool,
}

impl LoadLog {
    /// Tells the generator to offer no more orders.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Orders accepted, with their index.
    pub fn accepted(&self) -> Vec<(usize, String)> {
        self.orders
            .lock()
            .iter()
            .enumerate()
            .filter_map(|(i, (_, id))| id.clone().map(|id| (i, id)))
            .collect()
    }
}

/// Offers `limit` orders (or until [`LoadLog::stop`]) at `rate` per second,
/// each sent until accepted. The handle ends when every offered order has.
pub fn start_load(
    limit: Option<usize>,
    rate: u64,
    seed: u64,
    ports: [u16; 2],
    run: &str,
) -> (tokio::task::JoinHandle<()>, Arc<LoadLog>) {
    let log = Arc::new(LoadLog::default());
    let handle = {
        let (log, run) = (Arc::clone(&log), run.to_owned());
        tokio::spawn(async move {
            let mut rng = Rng(seed | 1);
            let mut tasks = tokio::task::JoinSet::new();
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
            for i in 0.. {
                if limit.is_some_and(|l| i >= l) || log.stop.load(Ordering::Relaxed) {
                    break;
                }
                tick.tick().await;
                let body = order_body(&mut rng);
                log.orders.lock().push((Instant::now(), None));
                let (log, run) = (Arc::clone(&log), run.clone());
                tasks.spawn(async move {
                    let id = send_order(i, body, ports, &run, &log).await;
                    log.orders.lock()[i].1 = id;
                    log.done.fetch_add(1, Ordering::Relaxed);
                });
            }
            while tasks.join_next().await.is_some() {}
        })
    };
    (handle, log)
}

fn order_body(rng: &mut Rng) -> Value {
    let lines = 1 + rng.below(2);
    let mut items = BTreeMap::new();
    for _ in 0..lines {
        *items
            .entry(format!("p-{}", rng.below(PRODUCTS as u64)))
            .or_insert(0) += 1 + rng.below(5);
    }
    json!({
        "customer_id": format!("customer-{}", rng.below(50)),
        "items": items.iter().map(|(p, q)| json!({"product_id": p, "quantity": q, "price": 9.5})).collect::<Vec<_>>(),
    })
}

/// Sends order `i` until it is accepted (or the budget runs out), alternating
/// between the two API instances, always with the same `Idempotency-Key`.
async fn send_order(
    i: usize,
    body: Value,
    ports: [u16; 2],
    run: &str,
    log: &LoadLog,
) -> Option<String> {
    let key = format!("{run}-{i}");
    let customer = body["customer_id"].as_str().unwrap_or_default().to_owned();
    let authorization = super::auth::bearer(&customer);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut attempt = 0;
    while Instant::now() < deadline {
        let port = ports[(i + attempt) % 2];
        attempt += 1;
        let url: HttpUrl = format!("http://127.0.0.1:{port}/api/v1/orders")
            .parse()
            .unwrap();
        let at = Instant::now();
        let r = http_client::request(
            http::Method::POST,
            &url,
            &[
                ("content-type", "application/json"),
                ("idempotency-key", &key),
                ("authorization", &authorization),
            ],
            Bytes::from(body.to_string()),
            Duration::from_secs(20),
        )
        .await;
        log.attempts.lock().push(Attempt {
            at,
            status: r.as_ref().map_or(0, |r| r.status),
            took: at.elapsed(),
        });
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

/// Waits until every accepted order is notified, or `secs` pass; then a little
/// longer, so that a late duplicate would show.
pub async fn wait_quiet(webhook: &Webhook, accepted: &[(usize, String)], secs: u64) {
    let quiet_by = Instant::now() + Duration::from_secs(secs);
    loop {
        let notified: HashSet<String> = webhook.calls().into_values().map(|(o, _)| o).collect();
        let waiting = accepted
            .iter()
            .filter(|(_, id)| !notified.contains(id))
            .count();
        if waiting == 0 {
            break;
        }
        if Instant::now() > quiet_by {
            // The checks that follow name these orders as lost.
            eprintln!(
                "{waiting} of {} accepted orders not notified after {secs} s",
                accepted.len()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
}

/// A line of the report: what, the value, and whether it holds.
pub type Row = (String, String, bool);

pub fn row(what: &str, value: impl ToString, ok: bool) -> Row {
    (what.to_owned(), value.to_string(), ok)
}

/// The checks every fault run makes at its end, against the topics (read with
/// a client of the test's own) and the webhook's calls.
pub async fn verify(
    kafka: &Cluster,
    webhook: &Webhook,
    stock: &BTreeMap<String, u64>,
    offered: usize,
    accepted: &[(usize, String)],
) -> (Vec<Row>, Vec<String>) {
    let read = |topic: String| {
        let kafka = kafka.clone();
        async move {
            within(60, &format!("reading {topic}"), read_topic(&kafka, &topic))
                .await
                .unwrap_or_else(|e| panic!("reading {topic}: {e}"))
        }
    };
    let mut created: HashSet<String> = HashSet::new();
    let mut created_again = 0;
    for m in read(topics::ORDER_CREATED.to_owned()).await {
        let e = Envelope::<OrderCreated>::decode(&m).expect("an order.created event");
        created_again += usize::from(!created.insert(e.payload.order_id.to_string()));
    }
    // Outcome records per event id: an outcome published again repeats its event.
    let mut outcome_records: HashMap<String, usize> = HashMap::new();
    let mut decisions: HashMap<String, HashSet<String>> = HashMap::new();
    let mut reserved_units: BTreeMap<String, u64> = BTreeMap::new();
    let mut reserved_orders: HashSet<String> = HashSet::new();
    for m in read(topics::INVENTORY_RESERVED.to_owned()).await {
        let e = Envelope::<InventoryReserved>::decode(&m).expect("a reserved event");
        *outcome_records.entry(e.event_id.to_string()).or_default() += 1;
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
    for m in read(topics::INVENTORY_FAILED.to_owned()).await {
        let e = Envelope::<InventoryFailed>::decode(&m).expect("a failed event");
        *outcome_records.entry(e.event_id.to_string()).or_default() += 1;
        decisions
            .entry(e.payload.order_id.to_string())
            .or_default()
            .insert(e.event_id.to_string());
    }
    let mut sent_per_event: HashMap<String, usize> = HashMap::new();
    for m in read(topics::NOTIFICATION_SENT.to_owned()).await {
        let e = Envelope::<NotificationSent>::decode(&m).expect("a notification event");
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
        parked += within(
            60,
            "reading a dead-letter topic",
            read_topic(kafka, &dead_letter::topic_for(topic)),
        )
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
    let lost: Vec<String> = accepted_ids
        .iter()
        .filter(|id| {
            !created.contains(**id)
                || !decisions.contains_key(**id)
                || !keys_per_order.contains_key(**id)
        })
        .map(|id| (*id).to_owned())
        .collect();
    let not_in_log = accepted_ids
        .iter()
        .filter(|id| !created.contains(**id))
        .count();
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

    let rows = vec![
        row("orders offered", offered, true),
        row(
            "accepted (2xx)",
            accepted_ids.len(),
            accepted_ids.len() == offered,
        ),
        row(
            "accepted but not in order.created",
            not_in_log,
            not_in_log == 0,
        ),
        row(
            "final (reserved or rejected)",
            format!(
                "{final_count} ({} reserved, {} rejected)",
                reserved_orders.len(),
                final_count.saturating_sub(reserved_orders.len())
            ),
            true,
        ),
        row(
            "lost (accepted, not logged, decided and notified)",
            lost.len(),
            lost.is_empty(),
        ),
        row("decided twice", decided_twice, decided_twice == 0),
        row(
            "notified twice (distinct webhook keys)",
            notified_twice,
            notified_twice == 0,
        ),
        row(
            "stock consistent (reserved <= initial)",
            if overbooked.is_empty() {
                "yes".into()
            } else {
                overbooked.join(", ")
            },
            overbooked.is_empty(),
        ),
        row(
            "decisions for orders never accepted",
            unknown_decisions,
            unknown_decisions == 0,
        ),
        row("records parked in dead-letter topics", parked, parked == 0),
        row(
            "order.created repeated for one order (an answer lost, the client retried)",
            created_again,
            true,
        ),
        row(
            "outcome records repeated with the same event id",
            outcome_records.values().map(|n| n - 1).sum::<usize>(),
            true,
        ),
        row(
            "webhook calls repeated with the same key (dropped by key)",
            webhook_repeats,
            true,
        ),
        row(
            "notification.sent repeated for one outcome event",
            sent_twice,
            true,
        ),
    ];
    (rows, lost)
}

/// The row for [`System::double_starts`].
pub fn ownership_row(system: &System) -> Row {
    let (doubles, starts) = system.double_starts();
    row(
        "partition epochs started by two members (services' logs)",
        if doubles.is_empty() {
            format!("0 of {starts} starts")
        } else {
            doubles.join("; ")
        },
        doubles.is_empty() && starts > 0,
    )
}

/// Prints `rows` as a Markdown table and fails the test on any violation.
pub fn report(rows: &[Row], lost: &[String]) {
    println!("\n| check | value | |\n| --- | --- | --- |");
    for (what, value, ok) in rows {
        println!(
            "| {what} | {value} | {} |",
            if *ok { "ok" } else { "VIOLATED" }
        );
    }
    let violations: Vec<&str> = rows.iter().filter(|r| !r.2).map(|r| r.0.as_str()).collect();
    if !violations.is_empty() {
        eprintln!(
            "lost orders (first 10): {:?}",
            lost.iter().take(10).collect::<Vec<_>>()
        );
    }
    assert!(violations.is_empty(), "fault run violated: {violations:?}");
}
