//! The HTTP server under every service's routes: warp's filters, served by hyper
//! with the limits a public endpoint needs.
//!
//! - **Header timeout**: a client that does not send its request headers within
//!   `APP_SERVER_HEADER_TIMEOUT_MS` is disconnected, so slow or idle connections
//!   cannot pile up.
//! - **Request timeout**: a request that is not answered within
//!   `APP_SERVER_REQUEST_TIMEOUT_MS` (a body trickling in, say) gets `503`.
//! - **Requests in flight**: beyond `APP_SERVER_MAX_IN_FLIGHT`, a request is
//!   answered `503` with `Retry-After` at once instead of queueing without bound,
//!   so an overload shows as fast refusals that clients can retry, not as
//!   growing latency and memory.
//! - **Probes apart**: `GET /health` and `GET /ready` draw on a small pool of
//!   their own, so a load balancer or an orchestrator still gets its answer
//!   while the API's slots are all taken.
//! - **Connections per client**: one address (an IPv6 address by its /64) holds
//!   at most `APP_SERVER_MAX_CONNECTIONS_PER_CLIENT` connections; more are closed
//!   as soon as they are accepted. An HTTP/1.1 connection serves one request at
//!   a time, so this also caps the address's requests in flight: one address
//!   cannot take every slot.
//!
//! On shutdown the listener closes, and requests in flight get up to the request
//! timeout to finish.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use warp::Reply;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

use super::rate_limit::address_key;
use crate::config::ServerConfig;
use crate::domain::FieldError;
use crate::metrics;
use crate::shutdown::Shutdown;

/// What the server allows a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a client may take to send its request headers.
    pub header_timeout: Duration,
    /// The longest a request may take before it is answered `503`.
    pub request_timeout: Duration,
    /// Requests served at once; more are answered `503` at once.
    pub max_in_flight: usize,
    /// Connections one client address may hold; 0 is no limit (for a server
    /// behind a proxy, where every request comes from the proxy's address).
    pub max_connections_per_client: usize,
}

impl Limits {
    /// The limits `config` sets.
    pub fn from_config(config: &ServerConfig) -> Self {
        Self {
            header_timeout: config.header_timeout,
            request_timeout: config.request_timeout,
            max_in_flight: config.max_in_flight,
            max_connections_per_client: config.max_connections_per_client,
        }
    }
}

/// An error answer, the shape every API route uses:
/// `{"error": "...", "details": [{"field": "...", "message": "..."}]}`.
#[derive(Debug, Serialize)]
struct ErrorBody {
    error: String,
    details: Vec<FieldError>,
}

/// A JSON error answer naming the fields at fault (none for `Vec::new()`).
pub fn error_response(
    status: StatusCode,
    message: impl Into<String>,
    details: Vec<FieldError>,
) -> Response {
    let body = ErrorBody {
        error: message.into(),
        details,
    };
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// `response` with `Retry-After: seconds`, for answers the client should retry.
pub fn retry_after(mut response: Response, seconds: &'static str) -> Response {
    response
        .headers_mut()
        .insert("retry-after", HeaderValue::from_static(seconds));
    response
}

/// The address of the client a request came from, in the request's
/// extensions: `warp::ext::optional::<PeerAddr>()` reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// What [`serve`] serves: `warp::service(routes)` for routes that answer every
/// request (their rejections recovered).
pub trait Routes:
    tower_service::Service<
        hyper::Request<Incoming>,
        Response = Response,
        Error = Infallible,
        Future: Send,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Routes for S where
    S: tower_service::Service<
            hyper::Request<Incoming>,
            Response = Response,
            Error = Infallible,
            Future: Send,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// Probes answered at once, apart from the API's requests. They answer from
/// memory, so a few slots keep them answerable; a flood of probes is refused
/// like any other overload, without touching the API's slots.
const PROBE_IN_FLIGHT: usize = 32;

/// Serves `routes` on `listener` until `shutdown`, then lets requests in flight
/// finish (for at most the request timeout).
pub async fn serve(
    listener: TcpListener,
    routes: impl Routes,
    limits: Limits,
    mut shutdown: Shutdown,
) {
    let guarded = Guarded {
        inner: routes,
        permits: Arc::new(Semaphore::new(limits.max_in_flight)),
        probe_permits: Arc::new(Semaphore::new(PROBE_IN_FLIGHT)),
        limits,
        peer: None,
    };
    let connections = Connections::new(limits.max_connections_per_client);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for connections to close.
                    log::warn!("accepting a connection failed, pausing 100 ms: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.recv() => break,
        };
        let Some(held) = connections.admit(peer.ip()) else {
            rejected("client_connections");
            drop(stream);
            continue;
        };
        let service = Guarded {
            peer: Some(PeerAddr(peer)),
            ..guarded.clone()
        };
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                log::debug!("connection ended with an error: {e}");
            }
            drop(held);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.request_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        log::warn!(
            "requests still in flight after {:?}; closing their connections",
            limits.request_timeout
        );
    }
}

/// The connections each client address holds.
#[derive(Clone)]
struct Connections {
    cap: usize,
    held: Arc<parking_lot::Mutex<HashMap<String, usize>>>,
}

/// One admitted connection; dropping it gives its place back.
struct Held {
    connections: Connections,
    /// Its address's key; `None` when nothing is tracked.
    key: Option<String>,
}

impl Connections {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            held: Arc::default(),
        }
    }

    /// A place for one more connection from `ip`, or `None` when it holds its
    /// share already. With no cap nothing is tracked.
    fn admit(&self, ip: std::net::IpAddr) -> Option<Held> {
        if self.cap == 0 {
            return Some(Held {
                connections: self.clone(),
                key: None,
            });
        }
        let key = address_key(Some(ip));
        let mut held = self.held.lock();
        let count = held.entry(key.clone()).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(Held {
            connections: self.clone(),
            key: Some(key),
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(key) = &self.key else { return };
        let mut held = self.connections.held.lock();
        if let Some(count) = held.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                held.remove(key);
            }
        }
    }
}

/// warp's service behind the in-flight limit and the request timeout.
#[derive(Clone)]
struct Guarded<S> {
    inner: S,
    permits: Arc<Semaphore>,
    /// The pool of `/health` and `/ready`.
    probe_permits: Arc<Semaphore>,
    limits: Limits,
    /// The connection's client.
    peer: Option<PeerAddr>,
}

impl<S: Routes> hyper::service::Service<hyper::Request<Incoming>> for Guarded<S> {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        if let Some(peer) = self.peer {
            request.extensions_mut().insert(peer);
        }
        let is_probe = request.method() == hyper::Method::GET
            && matches!(request.uri().path(), "/health" | "/ready");
        let pool = if is_probe {
            &self.probe_permits
        } else {
            &self.permits
        };
        let permit = Arc::clone(pool).try_acquire_owned();
        let mut inner = self.inner.clone();
        let timeout = self.limits.request_timeout;
        Box::pin(async move {
            let Ok(_permit) = permit else {
                rejected("overload");
                return Ok(retry_after(
                    error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many requests in flight; retry after a second",
                        Vec::new(),
                    ),
                    "1",
                ));
            };
            if let Ok(response) = tokio::time::timeout(timeout, inner.call(request)).await {
                response
            } else {
                rejected("timeout");
                Ok(error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the request was not completed within {timeout:?}"),
                    Vec::new(),
                ))
            }
        })
    }
}

fn rejected(reason: &str) {
    metrics::counter(
        "eda_http_rejected_total",
        "Requests answered 503 by the server itself (overload: too many in flight; timeout), or connections closed at once (client_connections: the address held its share).",
        &[("reason", reason)],
    )
    .inc();
}
