//! The order API against abuse and retries: idempotency keys, the limits of the
//! HTTP server, and a schemathesis fuzzing run against the OpenAPI document. The
//! order service runs in-process on a port of its own, over a broker of the
//! test's own.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use rust_eda::config::Config;
use rust_eda::events::topics;
use rust_eda::http_client::{self, HttpResponse};
use rust_eda::kafka::read_topic;
use rust_eda::services::Service;
use rust_eda::services::order::OrderService;
use rust_eda::shutdown::ShutdownTrigger;
use serde_json::{Value, json};
use support::{PrivateBroker, connect, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An order service running in this process.
struct Api {
    port: u16,
    stop: Option<ShutdownTrigger>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Api {
    async fn start(broker: &PrivateBroker, extra: &[(&str, &str)]) -> Self {
        let mut vars: Vec<(String, String)> = [
            ("APP_KAFKA_BROKERS", broker.brokers().as_str()),
            ("APP_SERVER_HOST", "127.0.0.1"),
            ("APP_SERVER_PORT", "0"),
            ("APP_KAFKA_TOPIC_PARTITIONS", "3"),
            ("APP_KAFKA_FETCH_MAX_WAIT_MS", "50"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        vars.dedup_by(|a, b| a.0 == b.0);
        let config = Config::from_sources(None, Path::new("/nonexistent"), vars).expect("config");
        let service = within(
            60,
            "building the order service",
            OrderService::build(config),
        )
        .await
        .expect("order service");
        let port = service.local_addr().expect("bound").port();
        let (stop, shutdown) = ShutdownTrigger::new();
        let task = tokio::spawn(async move {
            service.run_until_stopped(shutdown).await.expect("ran");
        });
        let api = Self {
            port,
            stop: Some(stop),
            task: Some(task),
        };
        within(30, "the order service becoming ready", async {
            while api.get("/ready").await.status != 200 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        api
    }

    async fn call(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> HttpResponse {
        let url = format!("http://127.0.0.1:{}{path}", self.port)
            .parse()
            .unwrap();
        http_client::request(method, &url, headers, body, Duration::from_secs(15))
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    async fn get(&self, path: &str) -> HttpResponse {
        self.call(http::Method::GET, path, &[], Bytes::new()).await
    }

    async fn post_order(&self, body: &Value, key: Option<&str>) -> HttpResponse {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(key) = key {
            headers.push(("idempotency-key", key));
        }
        self.call(
            http::Method::POST,
            "/api/v1/orders",
            &headers,
            Bytes::from(body.to_string()),
        )
        .await
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().trigger();
        within(30, "the order service stopping", self.task.take().unwrap())
            .await
            .unwrap();
    }
}

fn order(quantity: u64) -> Value {
    json!({"customer_id": "c-1", "items": [{"product_id": "p-1", "quantity": quantity, "price": 2.5}]})
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_creates_one_order_on_any_instance() {
    let broker = PrivateBroker::start();
    let a = Api::start(&broker, &[]).await;
    let b = Api::start(&broker, &[]).await;

    let first = a.post_order(&order(1), Some("retry-me")).await;
    assert_eq!(first.status, 201, "{:?}", first.json());
    assert_eq!(first.header("idempotent-replayed"), None);
    let id = first.json()["order_id"].as_str().unwrap().to_owned();

    // The client retries on the same instance, and on the other one (which learns
    // of the order from the topic); both answer with the first order.
    let again = a.post_order(&order(1), Some("retry-me")).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["order_id"], id.as_str());
    let elsewhere = within(30, "the other instance seeing the order", async {
        loop {
            let r = b.post_order(&order(1), Some("retry-me")).await;
            if r.header("idempotent-replayed") == Some("true") {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(elsewhere.json()["order_id"], id.as_str());

    // The same key for another order is refused; a malformed key too.
    let misuse = a.post_order(&order(2), Some("retry-me")).await;
    assert_eq!(misuse.status, 422);
    assert_eq!(misuse.json()["details"][0]["field"], "Idempotency-Key");
    let malformed = a.post_order(&order(1), Some("has space")).await;
    assert_eq!(malformed.status, 400);
    assert_eq!(malformed.json()["details"][0]["field"], "Idempotency-Key");

    // Both instances at once with a fresh key: whatever reached the topic names
    // one order, so it is decided once downstream.
    let three = order(3);
    let (x, y) = tokio::join!(
        a.post_order(&three, Some("race")),
        b.post_order(&three, Some("race"))
    );
    assert_eq!((x.status, y.status), (201, 201));
    assert_eq!(x.json()["order_id"], y.json()["order_id"]);

    // Without a key, every POST is a new order.
    let one = a.post_order(&order(1), None).await;
    let two = a.post_order(&order(1), None).await;
    assert_ne!(one.json()["order_id"], two.json()["order_id"]);

    let cluster = connect(&broker.brokers()).await;
    let ids: Vec<String> = read_topic(&cluster, topics::ORDER_CREATED)
        .await
        .unwrap()
        .iter()
        .map(|m| serde_json::from_slice::<Value>(m.value.as_deref().unwrap()).unwrap()["payload"]["order_id"]
            .as_str()
            .unwrap()
            .to_owned())
        .collect();
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(
        distinct.len(),
        4,
        "retry-me, race and two without a key: {ids:?}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_excess_requests_are_refused_not_queued() {
    let broker = PrivateBroker::start();
    let api = Api::start(
        &broker,
        &[
            ("APP_SERVER_MAX_IN_FLIGHT", "1"),
            ("APP_SERVER_HEADER_TIMEOUT_MS", "500"),
            ("APP_ORDER_PUBLISH_TIMEOUT_MS", "1000"),
            ("APP_SERVER_REQUEST_TIMEOUT_MS", "1500"),
        ],
    )
    .await;
    let addr = format!("127.0.0.1:{}", api.port);

    // A client that never finishes its headers is disconnected.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    within(
        5,
        "the server closing a connection without headers",
        idle.read_to_end(&mut buf),
    )
    .await
    .unwrap();

    // A body that trickles holds the only slot...
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(
        b"POST /api/v1/orders HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...so another request is answered 503 at once, with Retry-After.
    let refused = api.get("/health").await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("too many requests")
    );
    // The slow request itself ends with 503 at the request timeout.
    let mut answer = Vec::new();
    within(
        5,
        "the slow request timing out",
        slow.read_to_end(&mut answer),
    )
    .await
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("not completed within"), "{answer}");
    // And the slot is free again.
    assert_eq!(api.get("/health").await.status, 200);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fuzzing_the_api_from_its_openapi_document_finds_no_error() {
    let broker = PrivateBroker::start();
    let api = Api::start(&broker, &[]).await;
    let spec = api.get("/api/v1/openapi.json").await;
    assert_eq!(spec.status, 200);
    assert_eq!(spec.json()["openapi"], "3.0.3");

    // scripts/fuzz.sh fails with an install hint when schemathesis is missing
    // (scripts/test.sh installs it first).
    let run = tokio::process::Command::new(support::repo_root().join("scripts/fuzz.sh"))
        .arg(format!("http://127.0.0.1:{}", api.port))
        .kill_on_drop(true)
        .output();
    let out = within(600, "schemathesis", run)
        .await
        .expect("run scripts/fuzz.sh");
    assert!(
        out.status.success(),
        "scripts/fuzz.sh found problems (or could not run):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("No issues found"));
    api.stop().await;
}

/// A publish that times out may still have reached the broker: the order is
/// then in the log, and the API must not say it was not accepted. It answers
/// 503 "outcome unknown" with the order id, and a retry with the same key
/// answers with that order.
#[tokio::test(flavor = "multi_thread")]
async fn a_publish_that_timed_out_is_answered_as_an_unknown_outcome() {
    let broker = PrivateBroker::start();
    let api = Api::start(&broker, &[("APP_ORDER_PUBLISH_TIMEOUT_MS", "1500")]).await;
    broker.pause();
    let answer = api.post_order(&order(1), Some("paused-broker")).await;
    broker.resume();
    assert_eq!(answer.status, 503, "{:?}", answer.json());
    assert!(answer.header("retry-after").is_some());
    let message = answer.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.starts_with("outcome unknown"), "{message}");

    let retried = within(60, "the retry being accepted", async {
        loop {
            let r = api.post_order(&order(1), Some("paused-broker")).await;
            if r.status == 201 {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let id = retried.json()["order_id"].as_str().unwrap().to_owned();
    assert!(message.contains(&id), "the 503 names order {id}: {message}");
    api.stop().await;
}
