//! What operators scrape and probe: `/health`, `/ready` and `/metrics` on every
//! service, and the HTTP metrics and access log line of every request.
//!
//! Each service serves them on a port of its own ([`OpsServer`]),
//! `APP_METRICS_PORT`, by default 9103 (order), 9101 (inventory) and 9102
//! (notification), meant for the internal network; the order API's public port
//! keeps `/health` and `/ready` for load balancers, but not `/metrics`.

use std::convert::Infallible;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
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

/// Whether the broker answers a metadata request within 2 s.
pub async fn broker_check(cluster: &Cluster) -> Result<(), String> {
    tokio::time::timeout(Duration::from_secs(2), cluster.refresh_metadata())
        .await
        .map_err(|_| "the broker did not answer within 2 s".to_owned())
        .and_then(|r| r.map_err(|e| e.to_string()))
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
    /// the service reports a problem ([`crate::health`]).
    pub async fn serve(self, cluster: Cluster, shutdown: Shutdown) {
        let ready = warp::path!("ready").and(warp::get()).then(move || {
            let cluster = cluster.clone();
            async move {
                let problems = crate::health::problems();
                match broker_check(&cluster).await {
                    Ok(()) if problems.is_empty() => {
                        warp::reply::json(&json!({"status": "ready"})).into_response()
                    }
                    broker => warp::reply::with_status(
                        warp::reply::json(&json!({
                            "status": "not ready",
                            "broker": broker.err().unwrap_or_else(|| "ok".to_owned()),
                            "problems": problems,
                        })),
                        StatusCode::SERVICE_UNAVAILABLE,
                    )
                    .into_response(),
                }
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

    #[test]
    fn order_ids_collapse_into_one_route() {
        assert_eq!(route_of("/api/v1/orders/3f2a"), "/api/v1/orders/{id}");
        assert_eq!(route_of("/api/v1/orders"), "/api/v1/orders");
        assert_eq!(route_of("/wp-admin"), "other");
    }
}
