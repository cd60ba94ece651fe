//! The order service in the test's own process, on a port of its own, over a
//! broker of the test's: for tests of the API that need no other service.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use rust_eda::config::Config;
use rust_eda::http_client::{self, HttpResponse};
use rust_eda::services::Service;
use rust_eda::services::order::OrderService;
use rust_eda::shutdown::ShutdownTrigger;
use serde_json::Value;

use super::process::wait_ready;
use super::{PrivateBroker, within};

/// An order service running in this process.
pub struct Api {
    pub port: u16,
    /// Where `/metrics` is served.
    pub metrics_port: u16,
    stop: Option<ShutdownTrigger>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Api {
    pub async fn start(broker: &PrivateBroker, extra: &[(&str, &str)]) -> Self {
        Self::start_on(&broker.brokers(), extra).await
    }

    /// An order service over `brokers`, which may be shared: its orders are
    /// then among those of other tests and runs.
    pub async fn start_on(brokers: &str, extra: &[(&str, &str)]) -> Self {
        // Later settings win: `extra` over the credentials over the defaults.
        let vars: Vec<(String, String)> = [
            ("APP_KAFKA_BROKERS", brokers),
            ("APP_SERVER_HOST", "127.0.0.1"),
            ("APP_SERVER_PORT", "0"),
            ("APP_KAFKA_TOPIC_PARTITIONS", "3"),
            ("APP_KAFKA_FETCH_MAX_WAIT_MS", "50"),
            ("APP_METRICS_PORT", "0"),
        ]
        .iter()
        .chain(super::auth::env().iter())
        .chain(extra)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let config = Config::from_sources(None, Path::new("/nonexistent"), vars).expect("config");
        let service = within(
            60,
            "building the order service",
            OrderService::build(config),
        )
        .await
        .expect("order service");
        let port = service.local_addr().expect("bound").port();
        let metrics_port = service.metrics_addr().expect("bound").port();
        let (stop, shutdown) = ShutdownTrigger::new();
        let task = tokio::spawn(async move {
            service.run_until_stopped(shutdown).await.expect("ran");
        });
        let api = Self {
            port,
            metrics_port,
            stop: Some(stop),
            task: Some(task),
        };
        wait_ready(port, "the order service", 30).await;
        api
    }

    pub async fn call(
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

    /// A GET as customer `c-1`, the customer of the tests' orders.
    pub async fn get(&self, path: &str) -> HttpResponse {
        let authorization = super::auth::bearer("c-1");
        self.call(
            http::Method::GET,
            path,
            &[("authorization", &authorization)],
            Bytes::new(),
        )
        .await
    }

    /// Places `body` as the customer it names.
    pub async fn post_order(&self, body: &Value, key: Option<&str>) -> HttpResponse {
        let authorization = super::auth::bearer(body["customer_id"].as_str().unwrap_or("c-1"));
        let mut headers = vec![
            ("content-type", "application/json"),
            ("authorization", authorization.as_str()),
        ];
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

    pub async fn stop(mut self) {
        self.stop.take().unwrap().trigger();
        within(30, "the order service stopping", self.task.take().unwrap())
            .await
            .unwrap();
    }
}
