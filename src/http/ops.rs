//! What operators scrape and probe: `/health`, `/ready` and `/metrics` on every
//! service, and the HTTP metrics and access log line of every request.
//!
//! Each service serves them on a port of its own ([`OpsServer`]),
//! `APP_METRICS_PORT`, by default 9103 (order), 9101 (inventory) and 9102
//! (notification), meant for the internal network; the order API's public port
//! keeps `/health` and `/ready` for load balancers, but not `/metrics`.
//!
//! `/ready` asks the broker through a [`BrokerProbe`], which sends at most one
//! Metadata request a second however many probes come, so probing is cheap and
//! cannot be turned into load on the broker. The public port answers `ready` or
//! `not ready` and nothing more; the operations port says why (the broker's
//! error, each part's problem) and what the service adds.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use tokio::time::Instant;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::config::Config;
use crate::kafka::Cluster;
use crate::metrics;
use crate::shutdown::Shutdown;

/// `GET /metrics`: the registry in the Prometheus text format.
pub fn metrics_route()
-> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    warp::path!("metrics").and(warp::get()).map(|| {
        warp::reply::with_header(
            metrics::render(),
            "content-type",
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .into_response()
    })
}

/// `GET /health`: the process answers.
pub fn health_route()
-> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    warp::path!("health")
        .and(warp::get())
        .map(|| warp::reply::json(&json!({"status": "ok"})).into_response())
}

/// How long one answer of the broker stands for every probe.
const PROBE_FRESH: Duration = Duration::from_secs(1);

/// Whether the broker answers, asked at most once per [`PROBE_FRESH`]: probes
/// arriving together wait for one Metadata request and share its answer.
#[derive(Clone)]
pub struct BrokerProbe {
    ask: Arc<dyn Fn() -> Ask + Send + Sync>,
    last: Arc<tokio::sync::Mutex<Option<Answer>>>,
}

/// The broker's last answer, and when it came.
type Answer = (Instant, Result<(), String>);

/// One question to the broker: whether it answers.
type Ask = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

impl BrokerProbe {
    /// A probe of `cluster`'s brokers.
    pub fn new(cluster: Cluster) -> Self {
        Self::asking(move || {
            let cluster = cluster.clone();
            Box::pin(async move { cluster.refresh_metadata().await.map_err(|e| e.to_string()) })
        })
    }

    fn asking(ask: impl Fn() -> Ask + Send + Sync + 'static) -> Self {
        Self {
            ask: Arc::new(ask),
            last: Arc::default(),
        }
    }

    /// Whether the broker answered a Metadata request within 2 s, at most
    /// [`PROBE_FRESH`] ago.
    pub async fn check(&self) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = &*last
            && at.elapsed() < PROBE_FRESH
        {
            return answer.clone();
        }
        let answer = tokio::time::timeout(Duration::from_secs(2), (self.ask)())
            .await
            .map_err(|_| "the broker did not answer within 2 s".to_owned())
            .and_then(|r| r);
        *last = Some((Instant::now(), answer.clone()));
        answer
    }

    /// Whether the service is ready, and what its `/ready` says on the
    /// operations port: ready while the broker answers and no part reports a
    /// problem ([`crate::health`], and those of `details`); the fields name the
    /// broker's state, every problem, and what `details` adds.
    pub async fn readiness(
        &self,
        details: ReadyDetails,
    ) -> (bool, serde_json::Map<String, serde_json::Value>) {
        let ReadyDetails {
            mut problems,
            mut fields,
        } = details;
        problems.extend(crate::health::problems());
        let broker = self.check().await;
        let ready = broker.is_ok() && problems.is_empty();
        fields.insert(
            "status".into(),
            (if ready { "ready" } else { "not ready" }).into(),
        );
        fields.insert(
            "broker".into(),
            broker.err().unwrap_or_else(|| "ok".to_owned()).into(),
        );
        fields.insert("problems".into(), problems.into());
        (ready, fields)
    }
}

/// The access log line and the HTTP metrics of one request; for `warp::log::custom`.
pub fn record(info: warp::log::Info<'_>) {
    let route = route_of(info.path());
    let method = method_label(info.method());
    let status = info.status().as_u16().to_string();
    metrics::counter(
        "eda_http_requests_total",
        "HTTP requests by route, method and status.",
        &[("route", route), ("method", method), ("status", &status)],
    )
    .inc();
    metrics::histogram(
        "eda_http_request_duration_seconds",
        "HTTP request latency by route and method.",
        &[("route", route), ("method", method)],
    )
    .observe(info.elapsed());
    // Probes and scrapes come every few seconds; they would drown the log.
    let level = if matches!(route, "/health" | "/ready" | "/metrics") {
        log::Level::Debug
    } else {
        log::Level::Info
    };
    log::log!(
        level,
        "{} {} {status} {:.1} ms",
        info.method(),
        info.path(),
        info.elapsed().as_secs_f64() * 1000.0
    );
}

/// The method as a label: HTTP's own methods by name, any other `other`. A
/// client may send any token as a method, and a label per token would grow the
/// metrics without bound.
fn method_label(method: &warp::http::Method) -> &'static str {
    use warp::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// The route template of a path, so that order ids do not each make a series.
fn route_of(path: &str) -> &'static str {
    match path.trim_end_matches('/') {
        "/api/v1/orders" => "/api/v1/orders",
        p if p.starts_with("/api/v1/orders/") => "/api/v1/orders/{id}",
        "/health" => "/health",
        "/ready" => "/ready",
        "/metrics" => "/metrics",
        _ => "other",
    }
}

/// The operations port could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve health and metrics on {addr}: {source}")]
pub struct BindError {
    /// The address it tried.
    pub addr: String,
    /// Why binding failed.
    #[source]
    pub source: std::io::Error,
}

/// What a service adds to `/ready` on its operations port.
#[derive(Debug, Default)]
pub struct ReadyDetails {
    /// Why it is not ready, besides the broker and [`crate::health`].
    pub problems: Vec<String>,
    /// Fields for operators (the orders in a view, say).
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// The operations port of a consumer service.
pub struct OpsServer {
    listener: TcpListener,
    limits: super::server::Limits,
}

impl OpsServer {
    /// Binds `APP_SERVER_HOST`:`APP_METRICS_PORT` (or `default_port`).
    pub async fn bind(config: &Config, default_port: u16) -> Result<Self, BindError> {
        let port = config.server.metrics_port.unwrap_or(default_port);
        let addr = format!("{}:{port}", config.server.host);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| BindError { addr, source })?;
        if let Ok(local) = listener.local_addr() {
            log::info!("health and metrics on http://{local} (/health, /ready, /metrics)");
        }
        Ok(Self {
            listener,
            limits: super::server::Limits::from_config(&config.server),
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`; ready while the broker answers and no part of
    /// the service reports a problem ([`crate::health`], and what `details`
    /// says). `/ready` names the broker's state, every problem, and the fields
    /// `details` gives.
    pub async fn serve<D>(self, probe: BrokerProbe, details: D, shutdown: Shutdown)
    where
        D: Fn() -> ReadyDetails + Clone + Send + Sync + 'static,
    {
        let ready = warp::path!("ready").and(warp::get()).then(move || {
            let (probe, details) = (probe.clone(), details.clone());
            async move {
                let (ready, fields) = probe.readiness(details()).await;
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                warp::reply::with_status(warp::reply::json(&fields), status).into_response()
            }
        });
        let routes = health_route()
            .or(ready)
            .unify()
            .or(metrics_route())
            .unify()
            .recover(not_found)
            .unify()
            .with(warp::log::custom(record));
        super::server::serve(self.listener, warp::service(routes), self.limits, shutdown).await;
    }
}

async fn not_found(_: warp::Rejection) -> Result<Response, Infallible> {
    Ok(warp::reply::with_status(
        warp::reply::json(
            &json!({"error": "not found: this port serves /health, /ready and /metrics"}),
        ),
        StatusCode::NOT_FOUND,
    )
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However many probes come at once, the broker is asked once a second.
    #[tokio::test(start_paused = true)]
    async fn probes_share_one_question_a_second() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let asked = Arc::new(AtomicUsize::new(0));
        let probe = {
            let asked = Arc::clone(&asked);
            BrokerProbe::asking(move || {
                asked.fetch_add(1, Ordering::SeqCst);
                Box::pin(async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok(())
                })
            })
        };
        let probes: Vec<_> = (0..200)
            .map(|_| {
                let probe = probe.clone();
                tokio::spawn(async move { probe.check().await })
            })
            .collect();
        for p in probes {
            assert_eq!(p.await.unwrap(), Ok(()));
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        tokio::time::sleep(PROBE_FRESH).await;
        assert_eq!(probe.check().await, Ok(()));
        assert_eq!(
            asked.load(Ordering::SeqCst),
            2,
            "a stale answer is asked again"
        );
    }

    #[test]
    fn order_ids_collapse_into_one_route() {
        assert_eq!(route_of("/api/v1/orders/3f2a"), "/api/v1/orders/{id}");
        assert_eq!(route_of("/api/v1/orders"), "/api/v1/orders");
        assert_eq!(route_of("/wp-admin"), "other");
    }
}
