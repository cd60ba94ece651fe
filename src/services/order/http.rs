//! The order service's HTTP API (warp).
//!
//! | Route | Answer |
//! | --- | --- |
//! | `POST /api/v1/orders` | `201` with the order once the broker acknowledged `order.created`; `400`/`413`/`415` for bad requests; `403` for an order of another customer; `409`/`422` for a misused `Idempotency-Key`; `503` when the broker does not acknowledge in time |
//! | `GET /api/v1/orders/{id}` | `200` with the order and its status; `400` for a malformed id; `404` for an unknown one, or one of another customer |
//! | `GET /health` | `200` while the process runs |
//! | `GET /ready` | `200` once the broker answers and the order view caught up; `503` before, or while a part reports a problem; the reasons are on the operations port |
//! | `GET /api/v1/openapi.json` | the `OpenAPI` 3 description of this API |
//! | `GET /api/v1/asyncapi.json` | the `AsyncAPI` 3 description of the Kafka topics and their events |
//!
//! `/metrics` is not on this port but on the operations port (`APP_METRICS_PORT`),
//! which belongs on the internal network.
//!
//! **Who may call.** The order routes take `Authorization: Bearer <token>` and act
//! for the customer the token names ([`crate::auth`]): a missing or refused token
//! gets `401` with `WWW-Authenticate`, an order body naming another customer
//! `403`, and an order of another customer reads as `404`, exactly like one that
//! does not exist. Every client (the token's customer, or the address of a
//! request without a valid token) has a request budget
//! (`APP_SERVER_RATE_LIMIT_PER_SECOND`); past it, `429` with `Retry-After`.
//!
//! `POST` takes an optional `Idempotency-Key` header. The order id is an HMAC of
//! the key and the customer under the server's secret, so a retry (after a
//! timeout, on another instance, after a restart) names the same order, and nobody
//! without the secret can compute it: within
//! `APP_ORDER_IDEMPOTENCY_RETENTION_HOURS` it is answered with the order it
//! created, marked `Idempotent-Replayed: true`, and if it did reach the broker
//! twice, the inventory decides the order once. The same key with a different
//! order, or after the retention, is refused with `422`; while the first request
//! is still in flight on this instance, with `409`.
//!
//! Every error is JSON: `{"error": "...", "details": [{"field": "...", "message": "..."}]}`.
//! Every answer carries `X-Correlation-ID`: the client's, or a new one.
//!
//! **Tracing.** A request's W3C `traceparent` (and `tracestate`) is continued
//! with a span of its own, or a trace is started; `order.created` carries that
//! span in its `traceparent` header, and the answer names it in `traceresponse`
//! (Trace Context Level 2), so a caller learns the trace id of its order.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::view::OrderViews;
use crate::auth::{AuthError, Authenticator, Principal};
use crate::correlation;
use crate::domain::{FieldError, IdempotencyKey, NewOrder, OrderId, OrderIdKey, total};
use crate::events::{self, Envelope, OrderCreated};
use crate::http::ops;
use crate::http::rate_limit::{Client, RateLimiter, retry_after_seconds};
use crate::http::server::{PeerAddr, error_response as error, retry_after};
use crate::kafka::{Follower, ProduceError, Producer};
use crate::metrics;
use crate::trace::{self, TraceContext};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: u64 = 64 * 1024;
/// The correlation id header.
pub const CORRELATION_HEADER: &str = "x-correlation-id";
/// The idempotency key header of `POST /api/v1/orders`.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// The `OpenAPI` document served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");
/// The `AsyncAPI` document of the topics, served at `/api/v1/asyncapi.json`.
pub const ASYNCAPI: &str = include_str!("asyncapi.json");

/// What the handlers share.
pub struct AppState {
    /// Publishes `order.created`.
    pub producer: Producer,
    /// The orders as the topics tell them.
    pub views: Arc<OrderViews>,
    /// Keeps the views up to date.
    pub follower: Follower,
    /// For `/ready`.
    pub probe: ops::BrokerProbe,
    /// Orders with an idempotency key being published by this instance.
    pub in_flight: parking_lot::Mutex<HashSet<OrderId>>,
    /// How long an idempotency key answers with its order.
    pub idempotency_retention: Duration,
    /// The key of order ids made from idempotency keys.
    pub order_ids: OrderIdKey,
    /// Checks callers' credentials.
    pub auth: Authenticator,
    /// Each client's request budget.
    pub limiter: RateLimiter,
}

/// The customer a request may act for (`None` with authentication off), or
/// the answer that refuses it.
type Access = Result<Option<Principal>, Box<Response>>;

/// All routes, with JSON answers for every rejection.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone + Send + Sync + 'static {
    let with_state = {
        let state = Arc::clone(&state);
        warp::any().map(move || Arc::clone(&state))
    };
    let correlation = warp::header::optional::<String>(CORRELATION_HEADER).map(correlation_id);
    // The caller's trace continued, or a new one: the span of this request.
    let span = warp::header::optional::<String>(trace::TRACEPARENT)
        .and(warp::header::optional::<String>(trace::TRACESTATE))
        .map(|parent: Option<String>, state: Option<String>| {
            TraceContext::continue_or_start(parent.as_deref(), state.as_deref())
        });
    let access = warp::header::optional::<String>("authorization")
        .and(warp::ext::optional::<PeerAddr>())
        .and(with_state.clone())
        .map(
            |authorization: Option<String>, peer, state: Arc<AppState>| {
                check_access(&state, authorization.as_deref(), peer)
            },
        );

    // Access is decided from the headers, before the body is read: a request
    // that will be refused does not hold a slot while its body trickles in.
    let create = warp::path!("api" / "v1" / "orders")
        .and(warp::post())
        .and(with_state.clone())
        .and(correlation)
        .and(span)
        .and(access.clone())
        .and_then(
            |state, id: String, span: TraceContext, access: Access| async move {
                match access {
                    Ok(principal) => Ok((state, id, span, principal)),
                    Err(refused) => Err(warp::reject::custom(Refused::new(tag(
                        *refused, &id, &span,
                    )))),
                }
            },
        )
        .untuple_one()
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<String>(IDEMPOTENCY_HEADER))
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .then(
            |state, id: String, span: TraceContext, principal, content_type, key, body| {
                let correlation_id = id.clone();
                let traced = trace::scope(span.clone(), async move {
                    let request = CreateRequest {
                        correlation_id: &id,
                        principal,
                        content_type,
                        idempotency_key: key,
                        body,
                    };
                    tag(create_order(state, request).await, &id, &span)
                });
                correlation::scope(correlation_id, traced)
            },
        );

    let openapi = warp::path!("api" / "v1" / "openapi.json")
        .and(warp::get())
        .map(|| {
            warp::reply::with_header(OPENAPI, "content-type", "application/json").into_response()
        });
    let asyncapi = warp::path!("api" / "v1" / "asyncapi.json")
        .and(warp::get())
        .map(|| {
            warp::reply::with_header(ASYNCAPI, "content-type", "application/json").into_response()
        });

    let get = warp::path!("api" / "v1" / "orders" / String)
        .and(warp::get())
        .and(with_state.clone())
        .and(correlation)
        .and(span)
        .and(access)
        .map(
            |id: String, state: Arc<AppState>, corr: String, span, access: Access| match access {
                Ok(principal) => tag(get_order(&state, principal.as_ref(), &id), &corr, &span),
                Err(refused) => tag(*refused, &corr, &span),
            },
        );

    // Scrapes belong on the operations port; say so rather than a bare 404.
    let metrics_elsewhere = warp::path!("metrics").and(warp::get()).map(|| {
        error(
            StatusCode::NOT_FOUND,
            "metrics are served on the operations port (APP_METRICS_PORT, 9103 by default), not on the API port",
            Vec::new(),
        )
    });

    let ready = warp::path!("ready")
        .and(warp::get())
        .and(with_state)
        .then(|state: Arc<AppState>| async move { ready(&state).await });

    create
        .or(get)
        .unify()
        .or(ops::health_route())
        .unify()
        .or(metrics_elsewhere)
        .unify()
        .or(ready)
        .unify()
        .or(openapi)
        .unify()
        .or(asyncapi)
        .unify()
        .or(method_not_allowed())
        .unify()
        .recover(rejection)
        .unify()
        .with(warp::log::custom(ops::record))
}

/// The methods each path serves, for `405` answers' `Allow` header.
fn allowed_methods(path: &str) -> Option<&'static str> {
    match path {
        "/api/v1/orders" => Some("POST"),
        "/health" | "/ready" | "/api/v1/openapi.json" | "/api/v1/asyncapi.json" => Some("GET"),
        p if p
            .strip_prefix("/api/v1/orders/")
            .is_some_and(|id| !id.is_empty() && !id.contains('/')) =>
        {
            Some("GET")
        }
        _ => None,
    }
}

/// `405` with `Allow` for a known path asked with a method it does not serve. A
/// request with the right method that a route refused (a body too large, say)
/// falls through with its own rejection.
fn method_not_allowed()
-> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    warp::path::full().and(warp::method()).and_then(
        |path: warp::path::FullPath, method: warp::http::Method| async move {
            match allowed_methods(path.as_str()) {
                Some(allowed) if allowed != method.as_str() => {
                    let mut response = error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        format!(
                            "{method} is not allowed on {}; use {allowed}",
                            path.as_str()
                        ),
                        Vec::new(),
                    );
                    response
                        .headers_mut()
                        .insert("allow", HeaderValue::from_static(allowed));
                    Ok(response)
                }
                _ => Err(warp::reject::not_found()),
            }
        },
    )
}

/// Checks the caller's credentials and request budget. The verdict picks the
/// budget (the customer's, or the address's without a valid token), and an
/// exhausted budget is answered `429` before any `401`, so that guessing tokens
/// from one address is throttled like any other flood. An address already over
/// its budget is answered `429` before its credentials are checked at all: a
/// flood costs no signature check per request.
fn check_access(state: &AppState, authorization: Option<&str>, peer: Option<PeerAddr>) -> Access {
    let now = Instant::now();
    let address = Client::Address(peer.map(|p| p.0.ip()));
    if let Err(wait) = state.limiter.peek(address, now) {
        return Err(Box::new(too_many_requests(wait)));
    }
    let verdict = state.auth.authenticate(authorization);
    let client = match &verdict {
        Ok(Some(principal)) => Client::Customer(&principal.customer_id),
        _ => address,
    };
    if let Err(wait) = state.limiter.check(client, now) {
        return Err(Box::new(too_many_requests(wait)));
    }
    verdict.map_err(|refusal| {
        metrics::counter(
            "eda_http_auth_refused_total",
            "Order API requests answered 401 by reason.",
            &[("reason", refusal_reason(&refusal))],
        )
        .inc();
        Box::new(unauthorized(&refusal))
    })
}

/// `429` with `Retry-After`, counted.
fn too_many_requests(wait: Duration) -> Response {
    metrics::counter(
        "eda_http_rate_limited_total",
        "Order API requests answered 429: the client was over APP_SERVER_RATE_LIMIT_PER_SECOND.",
        &[],
    )
    .inc();
    let seconds = retry_after_seconds(wait);
    let mut response = error(
        StatusCode::TOO_MANY_REQUESTS,
        format!("too many requests from this client; retry in {seconds} s"),
        Vec::new(),
    );
    response
        .headers_mut()
        .insert("retry-after", HeaderValue::from(seconds));
    response
}

/// A metric label for each kind of refusal.
fn refusal_reason(refusal: &AuthError) -> &'static str {
    match refusal {
        AuthError::Missing | AuthError::NotBearer => "missing",
        AuthError::Expired | AuthError::NotYetValid => "expired",
        AuthError::BadSignature => "signature",
        AuthError::UnknownKey => "unknown_key",
        AuthError::Invalid(_) | AuthError::WrongParty(_) | AuthError::NoCustomer(_) => "invalid",
    }
}

/// `401` with RFC 6750's `WWW-Authenticate` challenge.
fn unauthorized(refusal: &AuthError) -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, refusal.to_string(), Vec::new());
    let challenge = match refusal {
        AuthError::Missing => r#"Bearer realm="orders""#.to_owned(),
        other => format!(
            r#"Bearer realm="orders", error="invalid_token", error_description="{}""#,
            other.to_string().replace(['"', '\\'], "'")
        ),
    };
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert("www-authenticate", value);
    }
    response
}

/// The client's correlation id if it is sane, else a new one.
fn correlation_id(given: Option<String>) -> String {
    given
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Names the request's correlation id and span on its answer.
fn tag(mut response: Response, correlation_id: &str, span: &TraceContext) -> Response {
    if let Ok(v) = HeaderValue::from_str(correlation_id) {
        response.headers_mut().insert(CORRELATION_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&span.to_string()) {
        response.headers_mut().insert(trace::TRACERESPONSE, v);
    }
    response
}

fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
}

/// What `POST /api/v1/orders` received.
struct CreateRequest<'a> {
    correlation_id: &'a str,
    /// Who it acts for; `None` with authentication off.
    principal: Option<Principal>,
    content_type: Option<String>,
    idempotency_key: Option<String>,
    body: Bytes,
}

fn parse_order(
    request: &CreateRequest<'_>,
) -> Result<(NewOrder, Option<IdempotencyKey>), Box<Response>> {
    if !is_json(request.content_type.as_deref()) {
        return Err(Box::new(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the request body must be JSON",
            vec![FieldError {
                field: "Content-Type".into(),
                message: "must be application/json".into(),
            }],
        )));
    }
    let mut value: serde_json::Value = serde_json::from_slice(&request.body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "the request body is not valid JSON",
            vec![FieldError {
                field: "body".into(),
                message: e.to_string(),
            }],
        ))
    })?;
    if let (Some(principal), Some(body)) = (&request.principal, value.as_object_mut()) {
        // The token says who orders; the body may repeat it, not contradict it.
        match body.get("customer_id") {
            None => {
                body.insert("customer_id".into(), principal.customer_id.clone().into());
            }
            Some(serde_json::Value::String(named)) if named.trim() != principal.customer_id => {
                return Err(Box::new(error(
                    StatusCode::FORBIDDEN,
                    "the order names another customer than the token",
                    vec![FieldError {
                        field: "customer_id".into(),
                        message: "must be the token's customer, or left out".into(),
                    }],
                )));
            }
            Some(_) => {}
        }
    }
    let order = NewOrder::parse(&value).map_err(|details| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "the order is invalid",
            details,
        ))
    })?;
    let key = request
        .idempotency_key
        .as_deref()
        .map(IdempotencyKey::parse)
        .transpose()
        .map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                "the Idempotency-Key is invalid",
                vec![e],
            )
        })?;
    Ok((order, key))
}

/// Removes an order from the in-flight set when its request ends, however it ends.
struct InFlight<'a> {
    state: &'a AppState,
    id: OrderId,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.state.in_flight.lock().remove(&self.id);
    }
}

async fn create_order(state: Arc<AppState>, request: CreateRequest<'_>) -> Response {
    let (order, key) = match parse_order(&request) {
        Ok(parsed) => parsed,
        Err(response) => return *response,
    };
    let order_id = match &key {
        Some(key) => OrderId::for_idempotency_key(&state.order_ids, &order.customer_id, key),
        None => OrderId::new(),
    };
    let _in_flight = match &key {
        None => None,
        Some(key) => {
            if let Some(answer) = earlier_answer(&state, order_id, &order, key) {
                return answer;
            }
            let unkeyed = OrderId::unkeyed_for_idempotency_key(&order.customer_id, key);
            if let Some(answer) = earlier_answer(&state, unkeyed, &order, key) {
                return answer;
            }
            if !state.in_flight.lock().insert(order_id) {
                return retry_after(
                    error(
                        StatusCode::CONFLICT,
                        "a request with this Idempotency-Key is still in progress; retry shortly",
                        Vec::new(),
                    ),
                    "1",
                );
            }
            Some(InFlight {
                state: &state,
                id: order_id,
            })
        }
    };

    let created = OrderCreated {
        order_id,
        total: total(&order.items),
        customer_id: order.customer_id,
        items: order.items,
        created_at: events::now(),
    };
    let event = Envelope::new(created, request.correlation_id);
    let record = event.to_record().map(|record| match &key {
        Some(key) => record.header(IDEMPOTENCY_HEADER, key.as_str()),
        None => record,
    });
    // The producer's delivery timeout (APP_ORDER_PUBLISH_TIMEOUT_MS) bounds the wait.
    let sent = match record {
        Ok(record) => state.producer.send(record).await,
        Err(e) => Err(e),
    };
    match sent {
        Ok(delivery) => {
            state.views.created(&event.payload);
            log::info!(
                "order {} accepted for customer {} ({} items, total {}), {}/{}@{}",
                event.payload.order_id,
                event.payload.customer_id,
                event.payload.items.len(),
                event.payload.total,
                events::topics::ORDER_CREATED,
                delivery.partition,
                delivery.offset
            );
            created_response(&state, order_id, false)
        }
        // A batch that timed out may still have reached the broker: the order is
        // then in the log, and saying "not accepted" would be wrong.
        Err(e @ ProduceError::DeliveryTimeout { .. }) => {
            log::error!(
                "order {order_id}: outcome unknown, the broker did not acknowledge it in time: {e}"
            );
            retry_after(
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "outcome unknown: the event broker did not confirm order {order_id} in time, and it may still have been recorded; retry with the same Idempotency-Key, which answers with the order if it was, or check GET /api/v1/orders/{order_id}"
                    ),
                    Vec::new(),
                ),
                "5",
            )
        }
        Err(e) => {
            log::error!("order not accepted, the broker refused or could not take it: {e}");
            retry_after(
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the event broker could not take the order, so it was not accepted; retry later, with the same Idempotency-Key so that it is created at most once",
                    Vec::new(),
                ),
                "5",
            )
        }
    }
}

/// The answer to a repeated idempotency key, if the key was used before.
fn earlier_answer(
    state: &AppState,
    order_id: OrderId,
    order: &NewOrder,
    key: &IdempotencyKey,
) -> Option<Response> {
    let earlier = state
        .views
        .get(&order_id)
        .filter(|earlier| earlier.customer_id == order.customer_id)?;
    if earlier.items != order.items {
        return Some(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "this Idempotency-Key was used for a different order; use a new key for a new order",
            vec![FieldError {
                field: "Idempotency-Key".into(),
                message: format!("already used for order {order_id}"),
            }],
        ));
    }
    let age = rskafka::chrono::DateTime::parse_from_rfc3339(&earlier.created_at)
        .ok()
        .and_then(|at| {
            let now = rskafka::chrono::DateTime::<rskafka::chrono::Utc>::from(
                std::time::SystemTime::now(),
            );
            (now - at.to_utc()).to_std().ok()
        })
        .unwrap_or_default();
    if age > state.idempotency_retention {
        return Some(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "this Idempotency-Key expired; use a new key for a new order",
            vec![FieldError {
                field: "Idempotency-Key".into(),
                message: format!(
                    "used for order {order_id} more than {} hours ago",
                    state.idempotency_retention.as_secs() / 3600
                ),
            }],
        ));
    }
    log::info!(
        "order {order_id}: Idempotency-Key {} repeated; answering with the order it created",
        key.as_str()
    );
    Some(created_response(state, order_id, true))
}

/// `201` with the order as the view shows it, and its `Location`.
fn created_response(state: &AppState, order_id: OrderId, replayed: bool) -> Response {
    let view = state.views.get(&order_id);
    let mut response =
        warp::reply::with_status(warp::reply::json(&view), StatusCode::CREATED).into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/orders/{order_id}")) {
        headers.insert("location", location);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

fn get_order(state: &AppState, principal: Option<&Principal>, id: &str) -> Response {
    let Ok(order_id) = id.parse::<OrderId>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "malformed order id",
            vec![FieldError {
                field: "id".into(),
                message: "must be a UUID".into(),
            }],
        );
    };
    // Another customer's order is answered like a missing one: no oracle.
    let visible = |customer: &str| principal.is_none_or(|p| p.customer_id == customer);
    match state.views.get(&order_id) {
        Some(view) if visible(&view.customer_id) => warp::reply::json(&view).into_response(),
        Some(_) | None => error(
            StatusCode::NOT_FOUND,
            format!("order {order_id} not found"),
            Vec::new(),
        ),
    }
}

/// The public `/ready`: the verdict of the operations port's, the order view
/// catching up included, without the reasons.
async fn ready(state: &AppState) -> Response {
    let (ready, _) = state.probe.readiness(ready_details(state)).await;
    if ready {
        warp::reply::json(&serde_json::json!({"status": "ready"})).into_response()
    } else {
        warp::reply::with_status(
            warp::reply::json(&serde_json::json!({
                "status": "not ready",
                "details": "on the operations port (APP_METRICS_PORT)",
            })),
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .into_response()
    }
}

/// What the operations port's `/ready` adds: the order view's state. Until it
/// holds every order written before the start, a GET could answer 404 for an
/// order that exists.
pub fn ready_details(state: &AppState) -> ops::ReadyDetails {
    let mut details = ops::ReadyDetails::default();
    if state.follower.is_caught_up() {
        details
            .fields
            .insert("order_view".into(), "caught up".into());
    } else {
        details
            .problems
            .push("order view: catching up with the event topics".into());
        details
            .fields
            .insert("order_view".into(), "catching up".into());
    }
    details
        .fields
        .insert("orders".into(), state.views.len().into());
    details
}

/// A request refused from its headers (`401`, `429`), carrying its answer past
/// the filters that would read the body.
#[derive(Debug)]
struct Refused(parking_lot::Mutex<Option<Response>>);

impl Refused {
    fn new(answer: Response) -> Self {
        Self(parking_lot::Mutex::new(Some(answer)))
    }
}

impl warp::reject::Reject for Refused {}

async fn rejection(err: Rejection) -> Result<Response, Infallible> {
    if let Some(answer) = err.find::<Refused>().and_then(|r| r.0.lock().take()) {
        return Ok(answer);
    }
    let (status, message) = if err.is_not_found() {
        (StatusCode::NOT_FOUND, "no such route".to_owned())
    } else if err.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
        )
    } else if err.find::<warp::reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "a Content-Length header is required".to_owned(),
        )
    } else if err.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this route".to_owned(),
        )
    } else if err.find::<warp::reject::InvalidHeader>().is_some() {
        (
            StatusCode::BAD_REQUEST,
            "a request header is invalid".to_owned(),
        )
    } else {
        log::warn!("unhandled rejection: {err:?}");
        (StatusCode::BAD_REQUEST, "bad request".to_owned())
    };
    Ok(error(status, message, Vec::new()))
}
