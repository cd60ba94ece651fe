//! The order service's HTTP API (warp).
//!
//! | Route | Answer |
//! | --- | --- |
//! | `POST /api/v1/orders` | `201` with the order once the broker acknowledged `order.created`; `400`/`413`/`415` for bad requests; `503` when the broker does not acknowledge in time |
//! | `GET /api/v1/orders/{id}` | `200` with the order and its status; `400` for a malformed id; `404` for an unknown one |
//! | `GET /health` | `200` while the process runs |
//! | `GET /ready` | `200` once the broker answers and the order view caught up; `503` before |
//! | `GET /metrics` | Prometheus metrics (see [`crate::metrics`]) |
//!
//! Every error is JSON: `{"error": "...", "details": [{"field": "...", "message": "..."}]}`.
//! Every answer carries `X-Correlation-ID`: the client's, or a new one.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::json;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::view::OrderViews;
use crate::domain::{FieldError, NewOrder, OrderId, total};
use crate::events::{self, Envelope, OrderCreated};
use crate::kafka::{Cluster, Follower, Producer};
use crate::logging::with_correlation_id;
use crate::services::ops;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: u64 = 64 * 1024;
/// The correlation id header.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// What the handlers share.
pub struct AppState {
    pub producer: Producer,
    pub views: Arc<OrderViews>,
    pub follower: Follower,
    pub cluster: Cluster,
}

/// An error answer.
#[derive(Debug, Serialize)]
struct ErrorBody {
    error: String,
    details: Vec<FieldError>,
}

fn error(status: StatusCode, message: impl Into<String>, details: Vec<FieldError>) -> Response {
    let body = ErrorBody {
        error: message.into(),
        details,
    };
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// All routes, with JSON answers for every rejection.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone + Send + Sync + 'static {
    let with_state = {
        let state = Arc::clone(&state);
        warp::any().map(move || Arc::clone(&state))
    };
    let correlation = warp::header::optional::<String>(CORRELATION_HEADER).map(correlation_id);

    let create = warp::path!("api" / "v1" / "orders")
        .and(warp::post())
        .and(with_state.clone())
        .and(correlation)
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .then(|state, id: String, content_type, body| {
            with_correlation_id(id.clone(), async move {
                tag(create_order(state, &id, content_type, body).await, &id)
            })
        });

    let get = warp::path!("api" / "v1" / "orders" / String)
        .and(warp::get())
        .and(with_state.clone())
        .and(correlation)
        .map(|id: String, state: Arc<AppState>, corr: String| tag(get_order(&state, &id), &corr));

    let ready = warp::path!("ready")
        .and(warp::get())
        .and(with_state)
        .then(|state: Arc<AppState>| async move { ready(&state).await });

    create
        .or(get)
        .unify()
        .or(ops::health_route())
        .unify()
        .or(ops::metrics_route())
        .unify()
        .or(ready)
        .unify()
        .recover(rejection)
        .unify()
        .with(warp::log::custom(ops::record))
}

/// The client's correlation id if it is sane, else a new one.
fn correlation_id(given: Option<String>) -> String {
    given
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn tag(mut response: Response, correlation_id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(correlation_id) {
        response.headers_mut().insert(CORRELATION_HEADER, v);
    }
    response
}

fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|ct| ct.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

async fn create_order(
    state: Arc<AppState>,
    correlation_id: &str,
    content_type: Option<String>,
    body: Bytes,
) -> Response {
    if !is_json(content_type.as_deref()) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the request body must be JSON",
            vec![FieldError {
                field: "Content-Type".into(),
                message: "must be application/json".into(),
            }],
        );
    }
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "the request body is not valid JSON",
                vec![FieldError {
                    field: "body".into(),
                    message: e.to_string(),
                }],
            );
        }
    };
    let order = match NewOrder::parse(&value) {
        Ok(order) => order,
        Err(details) => {
            return error(StatusCode::BAD_REQUEST, "the order is invalid", details);
        }
    };

    let created = OrderCreated {
        order_id: OrderId::new(),
        total: total(&order.items),
        customer_id: order.customer_id,
        items: order.items,
        created_at: events::now(),
    };
    let event = Envelope::new(created, correlation_id);
    // The producer's delivery timeout (APP_ORDER_PUBLISH_TIMEOUT_MS) bounds the wait.
    match state.producer.send(event.to_record()).await {
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
            let view = state.views.get(&event.payload.order_id);
            let mut response =
                warp::reply::with_status(warp::reply::json(&view), StatusCode::CREATED)
                    .into_response();
            if let Ok(location) =
                HeaderValue::from_str(&format!("/api/v1/orders/{}", event.payload.order_id))
            {
                response.headers_mut().insert("location", location);
            }
            response
        }
        Err(e) => {
            log::error!("order not accepted, the broker did not acknowledge it: {e}");
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the order could not be stored because the event broker is unavailable; nothing was created, retry later",
                Vec::new(),
            );
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("5"));
            response
        }
    }
}

fn get_order(state: &AppState, id: &str) -> Response {
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
    match state.views.get(&order_id) {
        Some(view) => warp::reply::json(&view).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("order {order_id} not found"),
            Vec::new(),
        ),
    }
}

async fn ready(state: &AppState) -> Response {
    let broker = ops::broker_check(&state.cluster).await;
    let caught_up = state.follower.is_caught_up();
    match (broker, caught_up) {
        (Ok(()), true) => warp::reply::json(&json!({
            "status": "ready",
            "orders": state.views.len(),
        }))
        .into_response(),
        (broker, caught_up) => warp::reply::with_status(
            warp::reply::json(&json!({
                "status": "not ready",
                "broker": broker.err().unwrap_or_else(|| "ok".to_owned()),
                "order_view": if caught_up { "caught up" } else { "catching up" },
            })),
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .into_response(),
    }
}

async fn rejection(err: Rejection) -> Result<Response, Infallible> {
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
