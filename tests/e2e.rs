//! The whole system end to end: a real broker and the three real binaries as
//! processes, driven over HTTP like a user with curl would.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use rust_eda::events::{Envelope, InventoryFailed, InventoryReserved, NotificationSent, topics};
use rust_eda::http_client::{self, HttpResponse, HttpUrl};
use rust_eda::kafka::{OffsetStore, Producer, ProducerConfig, ProducerRecord, read_topic};
use serde_json::{Value, json};
use support::process::{Process, SERVICES, Webhook, configure, dump_log, local_port, wait_ready};
use support::{PrivateBroker, connect, unique, within};

/// The broker and the three services, each a process.
struct System {
    broker: PrivateBroker,
    dir: PathBuf,
    port: u16,
    webhook: Webhook,
    processes: HashMap<&'static str, Process>,
    publish_timeout_ms: u64,
    /// Extra variables for every service, such as the security settings.
    env: Vec<(String, String)>,
    /// `APP_METRICS_PORT` of each service.
    metrics_ports: HashMap<&'static str, u16>,
    /// The customer whose token the requests carry.
    customer: String,
}

impl System {
    async fn start(stock: Value) -> Self {
        Self::start_with(stock, PrivateBroker::start(), Vec::new()).await
    }

    async fn start_with(stock: Value, broker: PrivateBroker, env: Vec<(String, String)>) -> Self {
        let dir = std::env::temp_dir().join(unique("eda-e2e"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("stock.json"), stock.to_string()).unwrap();
        let mut system = Self {
            broker,
            dir,
            port: local_port(),
            webhook: Webhook::start().await,
            processes: HashMap::new(),
            publish_timeout_ms: 3000,
            env,
            metrics_ports: SERVICES.into_iter().map(|s| (s, local_port())).collect(),
            customer: "customer-123".to_owned(),
        };
        for service in SERVICES {
            system.spawn(service);
        }
        system.wait_ready().await;
        system
    }

    fn spawn(&mut self, service: &'static str) {
        let process = Process::spawn(service, self.configured(service), &self.dir);
        self.processes.insert(service, process);
    }

    /// The command for `service` with the system's settings.
    fn configured(&self, service: &str) -> Command {
        let mut command = support::service_command(service);
        configure(
            &mut command,
            &self.broker.brokers(),
            &self.dir,
            self.webhook.addr,
            3,
        );
        command
            .env("APP_SERVER_PORT", self.port.to_string())
            .env(
                "APP_METRICS_PORT",
                self.metrics_ports
                    .get(service)
                    .map_or_else(String::new, u16::to_string),
            )
            .env(
                "APP_ORDER_PUBLISH_TIMEOUT_MS",
                self.publish_timeout_ms.to_string(),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Runs `service` with the system's settings changed by `set` and `unset`, and
    /// returns its output once it exits (it must, within 30 s).
    async fn run_once(
        &self,
        service: &str,
        set: &[(&str, &str)],
        unset: &[&str],
    ) -> std::process::Output {
        let mut command = self.configured(service);
        for (k, v) in set {
            command.env(k, v);
        }
        for k in unset {
            command.env_remove(k);
        }
        command.stdin(Stdio::null());
        let mut command = tokio::process::Command::from(command);
        command.kill_on_drop(true);
        within(30, &format!("{service} exiting"), command.output())
            .await
            .expect("run the service")
    }

    fn kill(&mut self, service: &str) {
        self.processes.remove(service).expect("running").kill();
    }

    async fn restart(&mut self, service: &'static str) {
        self.kill(service);
        self.spawn(service);
        self.wait_service_ready(service).await;
    }

    fn url(&self, path: &str) -> HttpUrl {
        format!("http://127.0.0.1:{}{path}", self.port)
            .parse()
            .unwrap()
    }

    async fn get(&self, path: &str) -> HttpResponse {
        let authorization = support::auth::bearer(&self.customer);
        http_client::request(
            http::Method::GET,
            &self.url(path),
            &[("authorization", &authorization)],
            Bytes::new(),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    async fn post(&self, path: &str, content_type: &str, body: impl Into<Bytes>) -> HttpResponse {
        self.post_with(path, content_type, &[], body).await
    }

    /// [`Self::post`] with `extra` headers.
    async fn post_with(
        &self,
        path: &str,
        content_type: &str,
        extra: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> HttpResponse {
        let authorization = support::auth::bearer(&self.customer);
        let mut headers = vec![
            ("content-type", content_type),
            ("authorization", authorization.as_str()),
        ];
        headers.extend_from_slice(extra);
        http_client::request(
            http::Method::POST,
            &self.url(path),
            &headers,
            body.into(),
            Duration::from_secs(15),
        )
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// The `/metrics` page of `service`, as `name{labels}` → value.
    async fn metrics(&self, service: &str) -> HashMap<String, f64> {
        support::metrics_page(self.metrics_ports[service])
            .await
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    async fn order(&self, items: Value) -> HttpResponse {
        let body = json!({"customer_id": "customer-123", "items": items});
        self.post("/api/v1/orders", "application/json", body.to_string())
            .await
    }

    /// Waits until every service answers `/ready`.
    async fn wait_ready(&self) {
        for service in SERVICES {
            self.wait_service_ready(service).await;
        }
    }

    /// Waits until `service` answers `/ready`: the order service on its API
    /// port, the consumers on their operations ports.
    async fn wait_service_ready(&self, service: &str) {
        let port = match service {
            "order-service" => self.port,
            _ => self.metrics_ports[service],
        };
        wait_ready(port, service, 90).await;
    }

    /// Waits until `service`'s consumer owns its partitions and has read each
    /// to its end (every `eda_consumer_lag` at 0): a restarted consumer caught up.
    async fn wait_caught_up(&self, service: &str) {
        within(60, &format!("{service} catching up"), async {
            loop {
                let metrics = self.metrics(service).await;
                let series = |name: &str| {
                    metrics
                        .iter()
                        .filter(|(k, _)| k.starts_with(name))
                        .map(|(_, v)| *v)
                        .collect::<Vec<f64>>()
                };
                let owned: f64 = series("eda_consumer_owned_partitions{").iter().sum();
                let lags = series("eda_consumer_lag{");
                if owned > 0.0 && lags.len() as f64 == owned && lags.iter().all(|l| *l == 0.0) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
    }

    /// Polls the order until `done` holds.
    async fn await_order(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        within(60, what, async {
            loop {
                let r = self.get(&format!("/api/v1/orders/{id}")).await;
                let v = r.json();
                if r.status == 200 && done(&v) {
                    return v;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
    }
}

impl Drop for System {
    fn drop(&mut self) {
        for (_, mut process) in self.processes.drain() {
            process.kill();
        }
        if std::thread::panicking() {
            for service in SERVICES {
                dump_log(&self.dir.join(format!("{service}.log")), service, 25);
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The records of a dead-letter topic, once there are any.
async fn parked_in(cluster: &rust_eda::kafka::Cluster, dlq: &str) -> Vec<rust_eda::kafka::Message> {
    within(60, &format!("a record parked in {dlq}"), async {
        loop {
            let parked = read_topic(cluster, dlq).await.unwrap_or_default();
            if !parked.is_empty() {
                return parked;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
}

/// Checks every record of every topic the system creates (but `skip`) against
/// the AsyncAPI document, and counts them per message.
async fn conforming(
    cluster: &rust_eda::kafka::Cluster,
    skip: &[&str],
) -> std::collections::BTreeMap<String, usize> {
    let contract = support::contract::Contract::load();
    let mut counts = std::collections::BTreeMap::new();
    for spec in rust_eda::events::topic_specs(3, 1) {
        if skip.contains(&spec.name.as_str()) {
            continue;
        }
        let records = read_topic(cluster, &spec.name)
            .await
            .unwrap_or_else(|e| panic!("read {}: {e}", spec.name));
        for r in &records {
            let message = contract
                .check(&spec.name, r.key.as_deref(), &r.headers, r.value.as_deref())
                .unwrap_or_else(|e| panic!("{}@{}/{}: {e}", spec.name, r.partition, r.offset));
            *counts
                .entry(format!("{}: {message}", spec.name))
                .or_default() += 1;
        }
    }
    counts
}

fn order_id(response: &HttpResponse) -> String {
    response.json()["order_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no order_id in {:?}", response.json()))
        .to_owned()
}

fn fields(response: &HttpResponse) -> Vec<String> {
    response.json()["details"]
        .as_array()
        .expect("details")
        .iter()
        .map(|d| d["field"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_flow_through_the_three_services() {
    let system = System::start(json!({"product-001": 10, "product-002": 3})).await;

    // pending → reserved → notified, in the caller's trace.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let created = system
        .post_with(
            "/api/v1/orders",
            "application/json",
            &[("traceparent", &format!("00-{trace_id}-{caller_span}-01"))],
            json!({"customer_id": "customer-123", "items": [
                {"product_id": "product-001", "quantity": 2, "price": 99.99},
                {"product_id": "product-002", "quantity": 1, "price": 149.99}
            ]})
            .to_string(),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.json());
    // The answer names the request's span: the caller's trace, a span of its own.
    let response_span = created
        .header("traceresponse")
        .expect("traceresponse")
        .to_owned();
    assert!(
        response_span.starts_with(&format!("00-{trace_id}-"))
            && !response_span.contains(caller_span),
        "{response_span}"
    );
    let body = created.json();
    assert_eq!(body["status"], "pending");
    assert_eq!(body["total"], 349.97);
    assert!(created.header("x-correlation-id").is_some());
    let id = order_id(&created);
    assert_eq!(
        created.header("location"),
        Some(format!("/api/v1/orders/{id}").as_str())
    );
    // The same instance knows the order at once.
    assert_eq!(
        system.get(&format!("/api/v1/orders/{id}")).await.status,
        200
    );
    let done = system
        .await_order(&id, "reserved and notified", |v| {
            v["status"] == "reserved" && !v["notified_at"].is_null()
        })
        .await;
    assert!(done["decided_at"].is_string());
    let consumed =
        "eda_consumer_records_total{group=\"inventory-service\",topic=\"order.created\"}";
    let before = system.metrics("inventory-service").await;
    assert_eq!(before.get(consumed), Some(&1.0), "{before:?}");

    // Beyond stock: rejected with the reason, stock untouched.
    let too_many = system
        .order(json!([
            {"product_id": "product-001", "quantity": 1, "price": 1.0},
            {"product_id": "product-002", "quantity": 3, "price": 1.0}
        ]))
        .await;
    assert_eq!(too_many.status, 201);
    let rejected = system
        .await_order(&order_id(&too_many), "rejected", |v| {
            v["status"] == "rejected"
        })
        .await;
    assert!(
        rejected["reason"].as_str().unwrap().contains("product-002"),
        "{rejected}"
    );
    assert_eq!(rejected["missing"][0]["available"], 2);
    // product-001 was not touched by the rejected order: all 8 left can be reserved.
    let rest = system
        .order(json!([{"product_id": "product-001", "quantity": 8, "price": 1.0}]))
        .await;
    system
        .await_order(&order_id(&rest), "the rest reserved and notified", |v| {
            v["status"] == "reserved" && !v["notified_at"].is_null()
        })
        .await;

    // Every event of the three orders is a CloudEvent in the Kafka binding's
    // binary mode, as an independent client (librdkafka) reads it, and carries
    // its order's trace: the first order's is the caller's, each hop a span.
    let traced_order = id.clone();
    let mut spans: HashMap<String, String> = HashMap::new();
    let mut traces: HashMap<String, HashSet<String>> = HashMap::new();
    for (topic, count, source) in [
        ("order.created", 3, "/rust-eda/order-service"),
        ("inventory.reserved", 2, "/rust-eda/inventory-service"),
        ("inventory.failed", 1, "/rust-eda/inventory-service"),
        ("notification.sent", 3, "/rust-eda/notification-service"),
    ] {
        let out = support::Client::Librdkafka
            .run(&[
                "consume",
                &system.broker.brokers(),
                topic,
                &count.to_string(),
            ])
            .await;
        assert_eq!(out.lines().count(), count, "{topic}: {out}");
        for line in out.lines() {
            let record: Value = serde_json::from_str(line).unwrap();
            let h = &record["headers"];
            let event: Value = serde_json::from_str(record["value"].as_str().unwrap()).unwrap();
            assert_eq!(h["ce_specversion"], "1.0", "{topic}: {h}");
            assert_eq!(h["ce_id"], event["event_id"], "{topic}");
            assert_eq!(h["ce_type"], event["event_type"], "{topic}");
            assert_eq!(h["ce_type"], topic);
            assert_eq!(h["ce_source"], source, "{topic}");
            assert_eq!(h["ce_time"], event["occurred_at"], "{topic}");
            assert_eq!(h["ce_subject"], record["key"], "{topic}");
            assert_eq!(h["ce_subject"], event["payload"]["order_id"], "{topic}");
            assert_eq!(h["content-type"], "application/json", "{topic}");
            let traceparent = h["traceparent"]
                .as_str()
                .unwrap_or_else(|| panic!("{topic}: no traceparent in {h}"));
            let parts: Vec<&str> = traceparent.split('-').collect();
            assert_eq!(
                (parts.len(), parts[0], parts[3]),
                (4, "00", "01"),
                "{traceparent}"
            );
            let order = record["key"].as_str().unwrap().to_owned();
            traces
                .entry(order.clone())
                .or_default()
                .insert(parts[1].to_owned());
            if order == traced_order {
                spans.insert(topic.to_owned(), parts[2].to_owned());
            }
        }
    }
    assert_eq!(traces.len(), 3, "{traces:?}");
    for (order, ids) in &traces {
        assert_eq!(
            ids.len(),
            1,
            "one trace per order, across services: {order}: {ids:?}"
        );
    }
    assert!(traces[&traced_order].contains(trace_id), "{traces:?}");
    assert_eq!(
        spans["order.created"],
        response_span.split('-').nth(2).unwrap(),
        "order.created carries the request's span"
    );
    let hops: HashSet<&String> = spans.values().collect();
    assert_eq!(
        (spans.len(), hops.len()),
        (3, 3),
        "a span per hop: {spans:?}"
    );

    // One trace id follows the order through the three services' logs, beside
    // its correlation id.
    let correlation = created.header("x-correlation-id").unwrap();
    for service in SERVICES {
        let log = std::fs::read_to_string(system.dir.join(format!("{service}.log"))).unwrap();
        let lines: Vec<Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["correlation_id"] == correlation)
            .collect();
        assert!(
            !lines.is_empty(),
            "{service} logged nothing about the order"
        );
        for line in &lines {
            assert_eq!(line["trace_id"], trace_id, "{service}: {line}");
        }
    }

    // Bad requests get the documented 4xx bodies.
    let r = system
        .order(json!([{"product_id": "", "quantity": 0, "price": -1}]))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "the order is invalid");
    assert_eq!(
        fields(&r),
        ["items[0].product_id", "items[0].quantity", "items[0].price"]
    );
    let r = system
        .post("/api/v1/orders", "application/json", "{oops")
        .await;
    assert_eq!((r.status, fields(&r)), (400, vec!["body".to_owned()]));
    let r = system.post("/api/v1/orders", "text/plain", "{}").await;
    assert_eq!(
        (r.status, fields(&r)),
        (415, vec!["Content-Type".to_owned()])
    );
    let r = system
        .post("/api/v1/orders", "application/json", vec![b'x'; 70_000])
        .await;
    assert_eq!(r.status, 413);
    assert!(r.json()["error"].is_string());
    let r = system.get("/api/v1/orders/not-a-uuid").await;
    assert_eq!((r.status, fields(&r)), (400, vec!["id".to_owned()]));
    let r = system
        .get("/api/v1/orders/00000000-0000-4000-8000-000000000000")
        .await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("not found"));
    assert_eq!(system.get("/health").await.json()["status"], "ok");
    assert_eq!(system.get("/nowhere").await.status, 404);

    // One webhook call per outcome.
    within(30, "three webhook calls", async {
        while system.webhook.counts().len() < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(system.webhook.counts().values().all(|&n| n == 1));
    // The webhook call of the traced order is made in the notifier's span.
    assert_eq!(
        system.webhook.traceparent(&traced_order),
        Some(format!("00-{trace_id}-{}-01", spans["notification.sent"])),
    );

    // The metrics moved with the orders.
    let order = system.metrics("order-service").await;
    let posted = "eda_http_requests_total{method=\"POST\",route=\"/api/v1/orders\",status=\"201\"}";
    assert_eq!(order.get(posted), Some(&3.0), "{order:?}");
    assert_eq!(
        order.get("eda_producer_records_total{topic=\"order.created\"}"),
        Some(&3.0)
    );
    assert!(order["process_resident_memory_bytes"] > 1e6);
    assert!(order["process_open_fds"] > 3.0);
    let after = system.metrics("inventory-service").await;
    assert_eq!(after.get(consumed), Some(&3.0), "{after:?}");
    assert!(
        after["eda_consumer_bytes_total{group=\"inventory-service\",topic=\"order.created\"}"]
            > 300.0
    );
    assert_eq!(
        after.get("eda_producer_records_total{topic=\"inventory.reserved\"}"),
        Some(&2.0)
    );
    assert_eq!(
        after.get("eda_consumer_owned_partitions{group=\"inventory-service\"}"),
        Some(&3.0)
    );
    assert_eq!(
        after.get("eda_consumer_group_members{group=\"inventory-service\"}"),
        Some(&1.0)
    );
    let lags: Vec<_> = after
        .keys()
        .filter(|k| k.starts_with("eda_consumer_lag{"))
        .collect();
    assert_eq!(lags.len(), 3, "one lag per owned partition: {after:?}");
    // The view learns of a notification from notification.sent, which the handler
    // publishes just before it returns and the counter moves: wait for the counter.
    let notification = within(10, "the notification counters", async {
        loop {
            let m = system.metrics("notification-service").await;
            let counted: f64 = m
                .iter()
                .filter(|(k, _)| {
                    k.starts_with("eda_consumer_records_total{group=\"notification-service\"")
                })
                .map(|(_, v)| v)
                .sum();
            if counted >= 3.0 {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    for (topic, n) in [("inventory.reserved", 2.0), ("inventory.failed", 1.0)] {
        let key = format!(
            "eda_consumer_records_total{{group=\"notification-service\",topic=\"{topic}\"}}"
        );
        assert_eq!(notification.get(&key), Some(&n), "{notification:?}");
    }
    assert!(notification.contains_key("eda_consumer_handler_seconds_count{group=\"notification-service\",topic=\"inventory.reserved\"}"));

    // Kafka's own tool sees the services' groups: the inventory consumed every
    // order.created record, the notifier both outcomes. The outcome topics are
    // written in transactions, and the commits step over their markers, as a
    // Java consumer's do: the position is past the records, and no lag.
    for (group, topic, records) in [
        ("inventory-service", "order.created", 3),
        ("notification-service", "inventory.reserved", 2),
        ("notification-service", "inventory.failed", 1),
    ] {
        within(
            60,
            &format!("kafka-consumer-groups showing {group} on {topic}"),
            async {
                loop {
                    if described(&system.broker.brokers(), group)
                        .await
                        .get(topic)
                        .is_some_and(|&(offset, lag)| offset >= records && lag == 0)
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
        )
        .await;
    }

    // The order service serves the AsyncAPI document kept in the repository.
    let served = system.get("/api/v1/asyncapi.json").await;
    assert_eq!(served.status, 200);
    let kept =
        std::fs::read_to_string(support::repo_root().join("src/services/order/asyncapi.json"));
    let kept: Value = serde_json::from_str(&kept.unwrap()).unwrap();
    assert_eq!(served.json(), kept);

    // Every record of every topic is one the AsyncAPI document describes: the
    // events, the inventory's ledger and the groups' coordination records.
    let cluster = connect(&system.broker.brokers()).await;
    let counts = conforming(&cluster, &[]).await;
    for (message, n) in [
        ("order.created: OrderCreated", 3),
        ("inventory.reserved: InventoryReserved", 2),
        ("inventory.failed: InventoryFailed", 1),
        ("notification.sent: NotificationSent", 3),
        ("inventory.ledger: LedgerRecord", 4),
    ] {
        assert_eq!(counts.get(message), Some(&n), "{counts:?}");
    }
    for kind in ["MemberRecord", "OwnerRecord", "OffsetRecord"] {
        assert!(
            counts.contains_key(&format!("__eda_offsets: {kind}")),
            "{counts:?}"
        );
    }

    // The operator's view of the inventory's group, from a service binary:
    // one active member owning the three partitions, every order consumed.
    let command = |args: &[&str]| {
        let mut command = system.configured("inventory-service");
        command.args(args).stdin(Stdio::null());
        let mut command = tokio::process::Command::from(command);
        command.kill_on_drop(true);
        async move {
            within(30, "an operator command", command.output())
                .await
                .unwrap()
        }
    };
    let out = command(&["describe-group", "inventory-service", "--json"]).await;
    assert!(out.status.success(), "{out:?}");
    let group: Value = serde_json::from_slice(&out.stdout).unwrap();
    let members = group["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{group}");
    assert_eq!(
        (
            members[0]["state"].as_str(),
            members[0]["partitions"].as_u64()
        ),
        (Some("active"), Some(3)),
        "{group}"
    );
    let partitions = group["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 3, "{group}");
    let sum = |field: &str| {
        partitions
            .iter()
            .map(|p| p[field].as_i64().unwrap())
            .sum::<i64>()
    };
    assert_eq!(
        (sum("committed"), sum("log_end"), sum("lag")),
        (3, 3, 0),
        "{group}"
    );
    let table = command(&["describe-group", "inventory-service"]).await;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("total lag 0") && table.contains("order.created  0"),
        "{table}"
    );
    // A running group is not reset.
    let refused = command(&[
        "reset-offsets",
        "inventory-service",
        "--all-topics",
        "--to-earliest",
        "--execute",
    ])
    .await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("stop every instance"),
        "{refused:?}"
    );
    let usage = command(&["reset-offsets", "inventory-service"]).await;
    assert_eq!(usage.status.code(), Some(64), "{usage:?}");
}

/// Orders other clients publish reach the services: the Java client and
/// librdkafka write `order.created` events, each compressed another way, and
/// every one is decided, notified and shown by the order API.
#[tokio::test(flavor = "multi_thread")]
async fn orders_published_by_java_and_librdkafka_in_any_codec_are_decided_and_notified() {
    use rust_eda::domain::{OrderId, OrderItem};
    use rust_eda::events::OrderCreated;
    use support::Client;

    let mut system = System::start(json!({"widget": 100})).await;
    for (client, codec) in [
        (Client::Java, "zstd"),
        (Client::Librdkafka, "lz4"),
        (Client::Java, "snappy"),
        (Client::Librdkafka, "gzip"),
    ] {
        let order_id = OrderId::new();
        let event = Envelope::new(
            OrderCreated {
                order_id,
                customer_id: format!("{client:?}-customer"),
                items: vec![OrderItem {
                    product_id: "widget".into(),
                    quantity: 2,
                    price: 3.5,
                }],
                total: 7.0,
                created_at: rust_eda::events::now(),
            },
            format!("{client:?}-{codec}"),
        );
        let value = serde_json::to_string(&event).unwrap();
        let id = order_id.to_string();
        system.customer = format!("{client:?}-customer");
        client
            .run(&[
                "send",
                &system.broker.brokers(),
                topics::ORDER_CREATED,
                codec,
                &id,
                &value,
            ])
            .await;
        let order = system
            .await_order(
                &id,
                &format!("{client:?}/{codec}: reserved and notified"),
                |v| v["status"] == "reserved" && !v["notified_at"].is_null(),
            )
            .await;
        assert_eq!(order["customer_id"], format!("{client:?}-customer"));
    }
}

/// Per topic, the committed offsets and the lag of `group` summed over its
/// partitions, as Kafka's `kafka-consumer-groups --describe` shows them.
async fn described(brokers: &str, group: &str) -> HashMap<String, (i64, i64)> {
    let mut topics: HashMap<String, (i64, i64)> = HashMap::new();
    for ((topic, _), (offset, lag)) in support::consumer_groups_describe(brokers, group).await {
        let entry = topics.entry(topic).or_default();
        entry.0 += offset.max(0);
        entry.1 += lag.max(0);
    }
    topics
}

/// Managed Kafka's setup (Confluent Cloud: SASL_SSL with PLAIN), on the local
/// Apache Kafka. Logs are at debug level, where a leaked credential would most
/// likely show, and must not hold the password.
#[tokio::test(flavor = "multi_thread")]
async fn orders_flow_over_sasl_ssl_and_no_log_line_holds_the_password() {
    const PASSWORD: &str = "s3cret-Pa55-9f1c";
    let broker = PrivateBroker::start_secured(true, &[("eda-services", PASSWORD, "plain")]);
    let env = [
        ("APP_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
        ("APP_KAFKA_SASL_MECHANISM", "PLAIN"),
        ("APP_KAFKA_SASL_USERNAME", "eda-services"),
        ("APP_KAFKA_SASL_PASSWORD", PASSWORD),
        ("APP_LOGGER_LEVEL", "debug"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .chain([(
        "APP_KAFKA_SSL_CA_LOCATION".to_owned(),
        broker.ca().display().to_string(),
    )])
    .collect();
    let system = System::start_with(json!({"gadget": 4}), broker, env).await;

    let created = system
        .order(json!([{"product_id": "gadget", "quantity": 3, "price": 5.0}]))
        .await;
    assert_eq!(created.status, 201, "{:?}", created.json());
    system
        .await_order(&order_id(&created), "reserved and notified", |v| {
            v["status"] == "reserved" && !v["notified_at"].is_null()
        })
        .await;
    let rejected = system
        .order(json!([{"product_id": "gadget", "quantity": 2, "price": 5.0}]))
        .await;
    system
        .await_order(&order_id(&rejected), "rejected", |v| {
            v["status"] == "rejected"
        })
        .await;

    for service in SERVICES {
        let log = std::fs::read_to_string(system.dir.join(format!("{service}.log"))).unwrap();
        assert!(
            log.contains("connected to Kafka"),
            "{service} logged no connection:\n{log}"
        );
        assert!(
            !log.contains(PASSWORD),
            "{service} logged the SASL password"
        );
    }

    // A wrong password and an untrusted certificate stop a service at start.
    let wrong = "wrong-Pa55-7d2e";
    let output = system
        .run_once(
            "order-service",
            &[("APP_KAFKA_SASL_PASSWORD", wrong), ("APP_SERVER_PORT", "0")],
            &[],
        )
        .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refused the credentials"), "{stderr}");
    assert!(!stderr.contains(wrong), "{stderr}");
    let output = system
        .run_once(
            "order-service",
            &[("APP_SERVER_PORT", "0")],
            &["APP_KAFKA_SSL_CA_LOCATION"],
        )
        .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not trusted") && stderr.contains("APP_KAFKA_SSL_CA_LOCATION"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_services_restart_with_orders_stock_and_offsets_intact() {
    let mut system = System::start(json!({"widget": 5})).await;

    let first = order_id(
        &system
            .order(json!([{"product_id": "widget", "quantity": 3, "price": 2.5}]))
            .await,
    );
    system
        .await_order(&first, "reserved and notified", |v| {
            v["status"] == "reserved" && !v["notified_at"].is_null()
        })
        .await;

    // SIGKILL each service, then start it again.
    for service in SERVICES {
        system.restart(service).await;
    }

    // Orders survive: the order view was rebuilt from the topics.
    let view = system.get(&format!("/api/v1/orders/{first}")).await.json();
    assert_eq!(view["status"], "reserved", "{view}");
    assert!(view["notified_at"].is_string());

    // Stock survives: 2 left, so 3 more are refused and 2 more are reserved.
    let refused = order_id(
        &system
            .order(json!([{"product_id": "widget", "quantity": 3, "price": 2.5}]))
            .await,
    );
    let refused = system
        .await_order(&refused, "rejected", |v| v["status"] == "rejected")
        .await;
    assert_eq!(refused["missing"][0]["available"], 2, "{refused}");
    let last = order_id(
        &system
            .order(json!([{"product_id": "widget", "quantity": 2, "price": 2.5}]))
            .await,
    );
    system
        .await_order(&last, "reserved and notified", |v| {
            v["status"] == "reserved" && !v["notified_at"].is_null()
        })
        .await;

    // Kill the consumers once more right after work, and let them catch up.
    system.restart("inventory-service").await;
    system.restart("notification-service").await;
    system.wait_caught_up("inventory-service").await;
    system.wait_caught_up("notification-service").await;

    // Exactly one decision and one notification per order, whatever was redelivered.
    let cluster = connect(&system.broker.brokers()).await;
    let mut decisions: HashMap<String, usize> = HashMap::new();
    for m in read_topic(&cluster, topics::INVENTORY_RESERVED)
        .await
        .unwrap()
    {
        let e = Envelope::<InventoryReserved>::decode(&m).unwrap();
        *decisions.entry(e.payload.order_id.to_string()).or_default() += 1;
    }
    for m in read_topic(&cluster, topics::INVENTORY_FAILED)
        .await
        .unwrap()
    {
        let e = Envelope::<InventoryFailed>::decode(&m).unwrap();
        *decisions.entry(e.payload.order_id.to_string()).or_default() += 1;
    }
    assert_eq!(decisions.len(), 3, "{decisions:?}");
    assert!(
        decisions.values().all(|&n| n == 1),
        "decided twice: {decisions:?}"
    );

    let mut notified: HashMap<String, usize> = HashMap::new();
    for m in read_topic(&cluster, topics::NOTIFICATION_SENT)
        .await
        .unwrap()
    {
        let e = Envelope::<NotificationSent>::decode(&m).unwrap();
        *notified
            .entry(e.payload.source_event_id.to_string())
            .or_default() += 1;
    }
    assert_eq!(notified.len(), 3, "{notified:?}");
    assert!(
        notified.values().all(|&n| n == 1),
        "notified twice: {notified:?}"
    );
    let webhook = system.webhook.counts();
    assert_eq!(webhook.len(), 3, "{webhook:?}");
    assert!(
        webhook.values().all(|&n| n == 1),
        "webhook called twice: {webhook:?}"
    );

    // Offsets survive: the inventory group committed every order.created record.
    let store = OffsetStore::new(
        Producer::new(cluster.clone(), ProducerConfig::default()),
        rust_eda::kafka::DEFAULT_OFFSETS_TOPIC,
    );
    within(30, "inventory offsets committed", async {
        loop {
            let committed: i64 = store
                .load("inventory-service")
                .await
                .unwrap()
                .values()
                .sum();
            if committed == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_broker_gets_a_503_and_no_order() {
    let system = System::start(json!({"widget": 5})).await;
    system.broker.stop();
    let started = std::time::Instant::now();
    let r = system
        .order(json!([{"product_id": "widget", "quantity": 1, "price": 1.0}]))
        .await;
    assert_eq!(r.status, 503, "{:?}", r.json());
    assert!(r.json()["error"].as_str().unwrap().contains("broker"));
    assert_eq!(r.header("retry-after"), Some("5"));
    assert!(
        started.elapsed() < Duration::from_millis(system.publish_timeout_ms + 5_000),
        "took {:?}",
        started.elapsed()
    );
    let ready = system.get("/ready").await;
    assert_eq!(ready.status, 503);
    assert_eq!(system.get("/health").await.status, 200);

    // Once the broker is back, no trace of the refused order is found.
    system.broker.restart();
    let cluster = connect(&system.broker.brokers()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let created = read_topic(&cluster, topics::ORDER_CREATED).await.unwrap();
    assert!(
        created.is_empty(),
        "a refused order was stored: {created:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_and_undeliverable_records_are_parked_and_a_replay_delivers_them() {
    // The webhook points at a port nobody listens on, and gives up quickly.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let env = vec![
        (
            "APP_NOTIFICATION_WEBHOOK_URL".to_owned(),
            format!("http://{dead}/hooks/orders"),
        ),
        (
            "APP_NOTIFICATION_WEBHOOK_RETRIES".to_owned(),
            "0".to_owned(),
        ),
        ("APP_KAFKA_MAX_ATTEMPTS".to_owned(), "3".to_owned()),
    ];
    let mut system = System::start_with(json!({"widget": 5}), PrivateBroker::start(), env).await;
    let cluster = connect(&system.broker.brokers()).await;

    // A poison record is parked at once, with the decoding error.
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    producer
        .send(
            ProducerRecord::new(topics::ORDER_CREATED)
                .key("garbage")
                .value("{not json"),
        )
        .await
        .unwrap();
    let poison_dlq = format!("{}.dlq", topics::ORDER_CREATED);
    let poison = parked_in(&cluster, &poison_dlq).await;
    assert_eq!(poison[0].value.as_deref(), Some(&b"{not json"[..]));
    assert_eq!(poison[0].header_str("dlq.attempts"), Some("1"));
    assert_eq!(
        poison[0].header_str("dlq.topic"),
        Some(topics::ORDER_CREATED)
    );

    let id = order_id(
        &system
            .order(json!([{"product_id": "widget", "quantity": 1, "price": 2.5}]))
            .await,
    );
    system
        .await_order(&id, "reserved", |v| v["status"] == "reserved")
        .await;

    // Three attempts, then the outcome is parked and the partition moves on.
    let dlq = format!("{}.dlq", topics::INVENTORY_RESERVED);
    let parked = parked_in(&cluster, &dlq).await;
    assert_eq!(parked.len(), 1);
    let record = &parked[0];
    assert_eq!(
        record.header_str("dlq.topic"),
        Some(topics::INVENTORY_RESERVED)
    );
    assert_eq!(record.header_str("dlq.attempts"), Some("3"));
    let error = record.header_str("dlq.error").unwrap();
    assert!(error.contains("gave up after 3 attempts"), "{error}");
    // The webhook's path, where its token usually is, is not in the header.
    assert!(!error.contains("/hooks/orders"), "{error}");
    let view = system.get(&format!("/api/v1/orders/{id}")).await.json();
    assert!(view["notified_at"].is_null(), "{view}");

    // The operator lists what is parked: the record, its key and every header,
    // the event's own and the dlq.* ones.
    let list = |topic: &str| {
        let mut command = system.configured("order-service");
        command.args(["list-dlq", topic]).stdin(Stdio::null());
        let mut command = tokio::process::Command::from(command);
        command.kill_on_drop(true);
        async move { within(30, "list-dlq", command.output()).await.unwrap() }
    };
    let out = list(&dlq).await;
    assert!(out.status.success(), "{out:?}");
    let listed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let h = &listed[0]["headers"];
    assert_eq!(listed[0]["key"], id.as_str());
    assert_eq!(h["dlq.topic"], topics::INVENTORY_RESERVED);
    assert_eq!(h["dlq.attempts"], "3");
    assert!(h["dlq.error"].as_str().unwrap().contains("gave up"), "{h}");
    assert_eq!(h["ce_type"], topics::INVENTORY_RESERVED);
    let not_dlq = list(topics::INVENTORY_RESERVED).await;
    assert_eq!(not_dlq.status.code(), Some(64), "{not_dlq:?}");

    // The webhook is fixed: the notification service restarts with the working
    // URL, and the operator replays the dead-letter topic.
    system.env.clear();
    system.restart("notification-service").await;
    let replay = |dry_run: bool| {
        let mut args = vec!["replay-dlq", dlq.as_str()];
        if !dry_run {
            args.push("--execute");
        }
        let mut command = system.configured("order-service");
        command.args(args).stdin(Stdio::null());
        let mut command = tokio::process::Command::from(command);
        command.kill_on_drop(true);
        async move {
            let out = within(30, "replay-dlq", command.output()).await.unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let dry = replay(true).await;
    assert!(
        dry.contains("would replay 1 records of inventory.reserved.dlq to inventory.reserved"),
        "{dry}"
    );
    let done = replay(false).await;
    assert!(
        done.contains("replayed 1 in all; 0 replayed before"),
        "{done}"
    );
    system
        .await_order(&id, "notified after the replay", |v| {
            !v["notified_at"].is_null()
        })
        .await;
    assert_eq!(system.webhook.counts().len(), 1);
    let again = replay(false).await;
    assert!(
        again.contains("replayed 0 in all; 1 replayed before"),
        "{again}"
    );

    // The parked records and the replayed one are as the AsyncAPI document
    // says (order.created holds the poison record, which is not).
    let counts = conforming(&cluster, &[topics::ORDER_CREATED]).await;
    for (message, n) in [
        ("order.created.dlq: ParkedRecord", 1),
        ("inventory.reserved.dlq: ParkedRecord", 1),
        ("inventory.reserved: InventoryReserved", 2),
    ] {
        assert_eq!(counts.get(message), Some(&n), "{counts:?}");
    }
}
