//! notification-service: tells the customer the outcome of each order and
//! publishes `notification.sent`.
//!
//! For every `inventory.reserved` and `inventory.failed` it writes one structured
//! log line and, when `APP_NOTIFICATION_WEBHOOK_URL` is set, POSTs the outcome to
//! that URL, retrying with backoff. The ids of inventory events already notified
//! are followed from `notification.sent` (read back at start, then kept current),
//! so a redelivered event is not notified twice, even when its partition moved
//! from another instance that notified it. (A crash between the webhook call and
//! publishing `notification.sent` can repeat that one webhook call; it carries the
//! event id in `Idempotency-Key`, so the receiver can drop the repeat.) The call
//! also carries the order's `X-Correlation-ID` and the W3C `traceparent` of the
//! span handling the outcome, so a receiver that traces continues the order's
//! trace.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::json;
use uuid::Uuid;

use super::{ConsumerLoop, Service, ServiceError, connect, producer};
use crate::config::{Config, NotificationConfig};
use crate::domain::OrderId;
use crate::events::{
    Envelope, InventoryFailed, InventoryReserved, NotificationSent, Outcome, topics,
};
use crate::http::ops::OpsServer;
use crate::http_client::{self, HttpError, HttpUrl};
use crate::kafka::backoff::{Backoff, BackoffConfig};
use crate::kafka::{Consumer, Follower, Handler, HandlerError, Message, Poison, Producer};
use crate::shutdown::Shutdown;

/// The default consumer group.
pub const DEFAULT_GROUP: &str = "notification-service";

/// Errors of the webhook.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The webhook answered with an error status.
    #[error("webhook {url} answered {status}")]
    Status {
        /// The webhook.
        url: String,
        /// The status it answered.
        status: u16,
    },
    /// The request failed.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// Every attempt failed.
    #[error("webhook failed {attempts} times; last error: {last}")]
    GaveUp {
        /// How many attempts were made.
        attempts: u32,
        /// The last error.
        last: String,
    },
}

/// Where outcomes are `POSTed`.
#[derive(Debug, Clone)]
pub struct Webhook {
    url: HttpUrl,
    timeout: Duration,
    retries: u32,
    backoff: BackoffConfig,
}

impl Webhook {
    /// A webhook at `url`, with the timeouts and retries `config` sets.
    pub fn new(url: HttpUrl, config: &NotificationConfig) -> Self {
        Self {
            url,
            timeout: config.webhook_timeout,
            retries: config.webhook_retries,
            backoff: NotificationConfig::WEBHOOK_BACKOFF,
        }
    }

    /// POSTs `body`, retrying failures and 5xx/429 answers with backoff.
    pub async fn post(
        &self,
        body: &serde_json::Value,
        idempotency_key: &str,
        correlation_id: &str,
    ) -> Result<(), WebhookError> {
        let body = Bytes::from(body.to_string());
        let mut backoff = Backoff::new(self.backoff);
        let mut attempts = 0;
        loop {
            attempts += 1;
            // The receiver continues the outcome's trace, if it traces.
            let traceparent = crate::trace::current().map(|span| span.to_string());
            let mut headers = vec![
                ("content-type", "application/json"),
                ("idempotency-key", idempotency_key),
                ("x-correlation-id", correlation_id),
            ];
            if let Some(traceparent) = &traceparent {
                headers.push((crate::trace::TRACEPARENT, traceparent));
            }
            let result = http_client::request(
                http::Method::POST,
                &self.url,
                &headers,
                body.clone(),
                self.timeout,
            )
            .await;
            let error = match result {
                Ok(r) if (200..300).contains(&r.status) => return Ok(()),
                // A 4xx other than 429 will not change on retry.
                Ok(r) if r.status != 429 && (400..500).contains(&r.status) => {
                    return Err(WebhookError::Status {
                        url: self.url.to_string(),
                        status: r.status,
                    });
                }
                Ok(r) => WebhookError::Status {
                    url: self.url.to_string(),
                    status: r.status,
                },
                Err(e) => WebhookError::Http(e),
            };
            if attempts > self.retries {
                return Err(WebhookError::GaveUp {
                    attempts,
                    last: error.to_string(),
                });
            }
            let delay = backoff.next_delay();
            log::warn!("webhook attempt {attempts} failed, retrying in {delay:?}: {error}");
            tokio::time::sleep(delay).await;
        }
    }
}

/// Handles the inventory outcomes.
#[derive(Clone)]
pub struct Notify {
    notified: Arc<Mutex<HashSet<Uuid>>>,
    webhook: Option<Webhook>,
    producer: Producer,
}

/// One outcome, whichever topic it came from.
struct Notice {
    event_id: Uuid,
    correlation_id: String,
    order_id: OrderId,
    customer_id: String,
    outcome: Outcome,
    details: serde_json::Value,
    occurred_at: String,
}

impl Handler for Notify {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        let outcome = match &*message.topic {
            topics::INVENTORY_RESERVED => {
                let e = Envelope::<InventoryReserved>::decode(message)?;
                Notice {
                    event_id: e.event_id,
                    correlation_id: e.correlation_id,
                    order_id: e.payload.order_id,
                    customer_id: e.payload.customer_id,
                    outcome: Outcome::Reserved,
                    details: json!({ "items": e.payload.items }),
                    occurred_at: e.occurred_at,
                }
            }
            topics::INVENTORY_FAILED => {
                let e = Envelope::<InventoryFailed>::decode(message)?;
                Notice {
                    event_id: e.event_id,
                    correlation_id: e.correlation_id,
                    order_id: e.payload.order_id,
                    customer_id: e.payload.customer_id,
                    outcome: Outcome::Rejected,
                    details: json!({ "reason": e.payload.reason, "missing": e.payload.missing }),
                    occurred_at: e.occurred_at,
                }
            }
            other => return Err(Poison::new(format!("unexpected topic {other}")).into()),
        };
        self.notify(message, outcome).await
    }
}

impl Notify {
    async fn notify(&self, input: &Message, o: Notice) -> Result<(), HandlerError> {
        if self.notified.lock().contains(&o.event_id) {
            log::info!(
                "order {}: outcome {} was notified before; skipping",
                o.order_id,
                o.event_id
            );
            return Ok(());
        }
        let mut channels = vec!["log".to_owned()];
        let verb = match o.outcome {
            Outcome::Reserved => "is confirmed",
            Outcome::Rejected => "could not be fulfilled",
        };
        log::info!(
            "notify customer {}: order {} {verb} ({})",
            o.customer_id,
            o.order_id,
            o.details
        );
        if let Some(webhook) = &self.webhook {
            let body = json!({
                "event_id": o.event_id,
                "order_id": o.order_id,
                "customer_id": o.customer_id,
                "outcome": o.outcome,
                "details": o.details,
                "occurred_at": o.occurred_at,
                "correlation_id": o.correlation_id,
            });
            webhook
                .post(&body, &o.event_id.to_string(), &o.correlation_id)
                .await?;
            channels.push("webhook".to_owned());
        }
        let sent = Envelope::new(
            NotificationSent {
                order_id: o.order_id,
                customer_id: o.customer_id,
                outcome: o.outcome,
                source_event_id: o.event_id,
                channels,
            },
            o.correlation_id,
        );
        input.send_output(&self.producer, sent.to_record()?).await?;
        // In a transaction, notified once it commits: following
        // notification.sent (read_committed) marks it then.
        if input.outbox().is_none() {
            self.notified.lock().insert(o.event_id);
        }
        Ok(())
    }
}

/// The built service.
pub struct NotificationService {
    work: ConsumerLoop<Notify>,
    /// Keeps following until the service is dropped.
    _follower: Follower,
}

/// Default of `APP_METRICS_PORT` for this service.
pub const METRICS_PORT: u16 = 9102;

impl Service for NotificationService {
    const NAME: &'static str = "notification-service";

    async fn build(config: Config) -> Result<Self, ServiceError> {
        let ops = OpsServer::bind(&config, METRICS_PORT).await?;
        let webhook = match &config.notification.webhook_url {
            Some(url) => Some(Webhook::new(url.clone(), &config.notification)),
            None => None,
        };
        let cluster = connect(&config, Self::NAME).await?;
        let notified: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
        let follower = {
            let notified = Arc::clone(&notified);
            Follower::start(
                &cluster,
                &[topics::NOTIFICATION_SENT],
                config.kafka.view_max_wait,
                move |m| {
                    if let Ok(e) = Envelope::<NotificationSent>::decode(&m) {
                        notified.lock().insert(e.payload.source_event_id);
                    }
                },
            )
            .await?
        };
        follower.caught_up().await;
        log::info!("{} outcomes were notified before", notified.lock().len());

        let producer = producer(&config, &cluster);
        let consumer = Consumer::new(
            cluster,
            config.consumer(
                DEFAULT_GROUP,
                &[topics::INVENTORY_RESERVED, topics::INVENTORY_FAILED],
            ),
        )
        .await?;
        let handler = Notify {
            notified,
            webhook,
            producer: producer.clone(),
        };
        Ok(Self {
            work: ConsumerLoop::new(consumer, handler, producer, ops, config.kafka.max_attempts),
            _follower: follower,
        })
    }

    async fn run_until_stopped(self, shutdown: Shutdown) -> Result<(), ServiceError> {
        self.work.run(shutdown).await?;
        log::info!("notification-service stopped");
        Ok(())
    }
}
