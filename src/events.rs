//! The events the services exchange, and their topics.
//!
//! Every event is a JSON [`Envelope`]: `event_id` (UUID v4), `event_type`,
//! `version`, `occurred_at` (RFC 3339, UTC), `correlation_id`, and the `payload`.
//! Records are keyed by `order_id`, so all events of one order stay in order on one
//! partition of each topic. The headers repeat `event_type`, `correlation_id` and
//! `event_id`, so that other Kafka tools can route without parsing JSON, and
//! carry the CloudEvents attributes in the Kafka protocol binding's binary mode
//! (`ce_id`, `ce_type`, `ce_source`, `ce_specversion`, `ce_time`, `ce_subject`,
//! `content-type`): a CloudEvents SDK reads each record as an event whose data
//! is the envelope, and readers of the envelope see no change. Events produced
//! while a trace is in scope ([`crate::trace`]) carry its W3C `traceparent`
//! (and `tracestate`, when the trace came with one), so tracing tools follow
//! an order across the services.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{NewOrder, OrderId, OrderItem, id_problem};
use crate::kafka::consume::Poison;
use crate::kafka::group::offsets::{DEFAULT_OFFSETS_TOPIC, offsets_topic_spec};
use crate::kafka::middleware::dead_letter;
use crate::kafka::{Message, ProduceError, ProducerRecord, TopicSpec};

/// Topic names, as in the Go original.
pub mod topics {
    /// Orders accepted by the API.
    pub const ORDER_CREATED: &str = "order.created";
    /// Orders whose every item was reserved.
    pub const INVENTORY_RESERVED: &str = "inventory.reserved";
    /// Orders that could not be reserved, with what was short.
    pub const INVENTORY_FAILED: &str = "inventory.failed";
    /// Outcomes the customer was notified of.
    pub const NOTIFICATION_SENT: &str = "notification.sent";
    /// The inventory's single-partition ledger of stock and reservation requests.
    pub const INVENTORY_LEDGER: &str = "inventory.ledger";

    /// Every event topic.
    pub const ALL: [&str; 4] = [
        ORDER_CREATED,
        INVENTORY_RESERVED,
        INVENTORY_FAILED,
        NOTIFICATION_SENT,
    ];
}

/// Header names set on every event record.
pub mod headers {
    /// The envelope's `event_type`, for routing without parsing JSON.
    pub const EVENT_TYPE: &str = "event_type";
    /// The envelope's `event_id`.
    pub const EVENT_ID: &str = "event_id";
    /// The envelope's `correlation_id`: the order's whole journey shares it.
    pub const CORRELATION_ID: &str = "correlation_id";

    /// CloudEvents `specversion`: always `1.0`.
    pub const CE_SPECVERSION: &str = "ce_specversion";
    /// CloudEvents `id`: the envelope's `event_id`.
    pub const CE_ID: &str = "ce_id";
    /// CloudEvents `type`: the envelope's `event_type`, one name everywhere.
    pub const CE_TYPE: &str = "ce_type";
    /// CloudEvents `source`: the service that sent the event.
    pub const CE_SOURCE: &str = "ce_source";
    /// CloudEvents `time`: the envelope's `occurred_at`.
    pub const CE_TIME: &str = "ce_time";
    /// CloudEvents `subject`: the order, as the record key.
    pub const CE_SUBJECT: &str = "ce_subject";
    /// The binding's `datacontenttype`: the value is JSON.
    pub const CONTENT_TYPE: &str = "content-type";

    /// W3C trace context: the span that produced the event. Set on every event
    /// produced in a trace, which the services' events always are.
    pub const TRACEPARENT: &str = crate::trace::TRACEPARENT;
    /// W3C trace state, passed along when the trace came with one.
    pub const TRACESTATE: &str = crate::trace::TRACESTATE;

    /// Every header an event record carries (besides the trace context).
    pub const ALL: [&str; 10] = [
        EVENT_TYPE,
        EVENT_ID,
        CORRELATION_ID,
        CE_SPECVERSION,
        CE_ID,
        CE_TYPE,
        CE_SOURCE,
        CE_TIME,
        CE_SUBJECT,
        CONTENT_TYPE,
    ];
}

/// The correlation id of a record: its `correlation_id` header, or for a record
/// written without one (by another client), the envelope's field.
pub fn correlation_id(message: &Message) -> Option<String> {
    if let Some(id) = message.header_str(headers::CORRELATION_ID) {
        return Some(id.to_owned());
    }
    #[derive(Deserialize)]
    struct Only {
        correlation_id: String,
    }
    let value = message.value.as_deref()?;
    serde_json::from_slice::<Only>(value)
        .ok()
        .map(|o| o.correlation_id)
}

/// The topics of the system: the event topics with `partitions` partitions each,
/// the compacted consumer offsets topic, and a dead-letter topic for each consumed one. Events are the system of record
/// (the services rebuild their state from them), so they are kept forever
/// (`retention.ms=-1`) rather than for Kafka's default seven days.
pub fn topic_specs(partitions: i32, replication_factor: i16) -> Vec<TopicSpec> {
    let mut specs: Vec<TopicSpec> = topics::ALL
        .iter()
        .map(|t| {
            TopicSpec::new(*t, partitions)
                .replication_factor(replication_factor)
                .config("retention.ms", "-1")
        })
        .collect();
    // One partition: its log order decides which reservation gets the last unit.
    specs.push(
        TopicSpec::new(topics::INVENTORY_LEDGER, 1)
            .replication_factor(replication_factor)
            .config("retention.ms", "-1"),
    );
    specs.push(offsets_topic_spec(DEFAULT_OFFSETS_TOPIC).replication_factor(replication_factor));
    for consumed in [
        topics::ORDER_CREATED,
        topics::INVENTORY_RESERVED,
        topics::INVENTORY_FAILED,
    ] {
        specs.push(
            TopicSpec::new(dead_letter::topic_for(consumed), 1)
                .replication_factor(replication_factor)
                .config("retention.ms", "-1"),
        );
    }
    specs
}

/// A payload type: its event type, topic and schema version.
pub trait Payload: Serialize + DeserializeOwned {
    /// The envelope's `event_type` for this payload.
    const EVENT_TYPE: &'static str;
    /// The topic events of this type go to.
    const TOPIC: &'static str;
    /// The CloudEvents `source` of events of this type: the service that
    /// sends them, as a URI reference.
    const SOURCE: &'static str;
    /// The schema version this build writes and reads.
    const VERSION: u32 = 1;

    /// The order the event is about: its record key.
    fn order_id(&self) -> OrderId;

    /// Whether the payload keeps the rules its producer keeps. Anyone who can
    /// write to a topic can put any well-typed JSON there, so a reader checks
    /// again what it relies on; a payload that breaks them is [`Poison`].
    fn validate(&self) -> Result<(), Poison> {
        Ok(())
    }
}

/// The common wrapper of every event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<P> {
    /// Unique per event; consumers deduplicate on it.
    pub event_id: Uuid,
    /// The payload's type, such as `order.created`.
    pub event_type: String,
    /// The payload's schema version.
    pub version: u32,
    /// When the event happened (RFC 3339, UTC, milliseconds).
    pub occurred_at: String,
    /// Shared by every event and log line of one order.
    pub correlation_id: String,
    /// The event itself.
    pub payload: P,
}

/// The time now, as events write it.
pub use crate::clock::now;

impl<P: Payload> Envelope<P> {
    /// A new event with a fresh id, stamped now.
    pub fn new(payload: P, correlation_id: impl Into<String>) -> Self {
        Self::with_id(Uuid::new_v4(), payload, correlation_id)
    }

    /// An event with a given id, for an event decided earlier and published now
    /// (again): consumers deduplicate by `event_id`.
    pub fn with_id(event_id: Uuid, payload: P, correlation_id: impl Into<String>) -> Self {
        Self {
            event_id,
            event_type: P::EVENT_TYPE.to_owned(),
            version: P::VERSION,
            occurred_at: now(),
            correlation_id: correlation_id.into(),
            payload,
        }
    }

    /// The record that carries this event.
    pub fn to_record(&self) -> Result<ProducerRecord, ProduceError> {
        let order_id = self.payload.order_id().to_string();
        let event_id = self.event_id.to_string();
        let record = ProducerRecord::new(P::TOPIC)
            .key(order_id.clone())
            .json(self)?
            .header(headers::EVENT_TYPE, P::EVENT_TYPE)
            .header(headers::EVENT_ID, event_id.clone())
            .header(headers::CORRELATION_ID, self.correlation_id.clone())
            .header(headers::CE_SPECVERSION, "1.0")
            .header(headers::CE_ID, event_id)
            .header(headers::CE_TYPE, P::EVENT_TYPE)
            .header(headers::CE_SOURCE, P::SOURCE)
            .header(headers::CE_TIME, self.occurred_at.clone())
            .header(headers::CE_SUBJECT, order_id)
            .header(headers::CONTENT_TYPE, "application/json");
        Ok(match crate::trace::current() {
            Some(span) => {
                let record = record.header(headers::TRACEPARENT, span.to_string());
                match span.state() {
                    Some(state) => record.header(headers::TRACESTATE, state),
                    None => record,
                }
            }
            None => record,
        })
    }

    /// Reads an event of type `P` from a record. A record that is not one is
    /// [`Poison`]: retrying cannot fix it.
    pub fn decode(message: &Message) -> Result<Self, Poison> {
        let value = message
            .value
            .as_deref()
            .ok_or_else(|| Poison::new("record has no value"))?;
        let envelope: Envelope<serde_json::Value> = serde_json::from_slice(value)
            .map_err(|e| Poison::new(format!("not a JSON event envelope: {e}")))?;
        if envelope.event_type != P::EVENT_TYPE {
            return Err(Poison::new(format!(
                "event_type {:?} where {:?} was expected",
                envelope.event_type,
                P::EVENT_TYPE
            )));
        }
        if envelope.version != P::VERSION {
            return Err(Poison::new(format!(
                "{} version {} is not supported (this build reads version {})",
                P::EVENT_TYPE,
                envelope.version,
                P::VERSION
            )));
        }
        let payload: P = serde_json::from_value(envelope.payload)
            .map_err(|e| Poison::new(format!("invalid {} payload: {e}", P::EVENT_TYPE)))?;
        payload.validate()?;
        Ok(Self {
            event_id: envelope.event_id,
            event_type: envelope.event_type,
            version: envelope.version,
            occurred_at: envelope.occurred_at,
            correlation_id: envelope.correlation_id,
            payload,
        })
    }
}

/// `order.created`: the order service accepted an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderCreated {
    /// The order.
    pub order_id: OrderId,
    /// Who ordered.
    pub customer_id: String,
    /// What was ordered.
    pub items: Vec<OrderItem>,
    /// The sum of quantity × price.
    pub total: f64,
    /// When the order was accepted (RFC 3339).
    pub created_at: String,
}

impl Payload for OrderCreated {
    const EVENT_TYPE: &'static str = "order.created";
    const TOPIC: &'static str = topics::ORDER_CREATED;
    const SOURCE: &'static str = "/rust-eda/order-service";

    fn order_id(&self) -> OrderId {
        self.order_id
    }

    /// The rules of `POST /api/v1/orders`: ids as the API writes them, 1 to
    /// 100 items, each quantity 1 to 1,000,000 (so that no sum of them wraps),
    /// prices 0 to 10¹².
    fn validate(&self) -> Result<(), Poison> {
        let request = serde_json::json!({"customer_id": self.customer_id, "items": self.items});
        NewOrder::parse(&request).map_err(|errors| {
            let errors: Vec<String> = errors
                .iter()
                .map(|e| format!("{} {}", e.field, e.message))
                .collect();
            Poison::new(format!(
                "order.created breaks the order rules: {}",
                errors.join("; ")
            ))
        })?;
        // The API writes ids trimmed, and parsing trims: one with white space
        // around it would be another spelling of a customer or a product.
        let ids =
            std::iter::once(&self.customer_id).chain(self.items.iter().map(|i| &i.product_id));
        if let Some(problem) = ids.filter_map(|id| id_problem(id)).next() {
            return Err(Poison::new(format!(
                "order.created names a customer or product that {problem}"
            )));
        }
        Ok(())
    }
}

/// A quantity of one product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductQuantity {
    /// The product.
    pub product_id: String,
    /// Units reserved (or asked for).
    pub quantity: u64,
}

/// `inventory.reserved`: every item of the order is reserved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InventoryReserved {
    /// The order.
    pub order_id: OrderId,
    /// Who ordered.
    pub customer_id: String,
    /// The reserved quantity per product (items of one product summed).
    pub items: Vec<ProductQuantity>,
}

impl Payload for InventoryReserved {
    const EVENT_TYPE: &'static str = "inventory.reserved";
    const TOPIC: &'static str = topics::INVENTORY_RESERVED;
    const SOURCE: &'static str = "/rust-eda/inventory-service";

    fn order_id(&self) -> OrderId {
        self.order_id
    }
}

/// A product the order asked more of than is in stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortage {
    /// The product.
    pub product_id: String,
    /// Units the order asked for.
    pub requested: u64,
    /// Units left when it was decided.
    pub available: u64,
}

/// `inventory.failed`: nothing was reserved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InventoryFailed {
    /// The order.
    pub order_id: OrderId,
    /// Who ordered.
    pub customer_id: String,
    /// Why, in words, for the customer.
    pub reason: String,
    /// The products that are short.
    pub missing: Vec<Shortage>,
}

impl Payload for InventoryFailed {
    const EVENT_TYPE: &'static str = "inventory.failed";
    const TOPIC: &'static str = topics::INVENTORY_FAILED;
    const SOURCE: &'static str = "/rust-eda/inventory-service";

    fn order_id(&self) -> OrderId {
        self.order_id
    }
}

/// What the customer was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every item was reserved.
    Reserved,
    /// Not enough stock; nothing was reserved.
    Rejected,
}

/// `notification.sent`: the customer was notified of an outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationSent {
    /// The order.
    pub order_id: OrderId,
    /// Who was notified.
    pub customer_id: String,
    /// What they were told.
    pub outcome: Outcome,
    /// The `event_id` of the inventory event this notification is about.
    pub source_event_id: Uuid,
    /// Where it was sent: always `log`, plus `webhook` when one is configured.
    pub channels: Vec<String>,
}

impl Payload for NotificationSent {
    const EVENT_TYPE: &'static str = "notification.sent";
    const TOPIC: &'static str = topics::NOTIFICATION_SENT;
    const SOURCE: &'static str = "/rust-eda/notification-service";

    fn order_id(&self) -> OrderId {
        self.order_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn message(record: ProducerRecord) -> Message {
        Message {
            topic: record.topic.into(),
            partition: 0,
            offset: 0,
            key: record.key.map(Into::into),
            value: record.value.map(Into::into),
            headers: record.headers,
            timestamp: rskafka::chrono::DateTime::from_timestamp_millis(0).unwrap(),
            attempt: 1,
            outbox: None,
        }
    }

    fn created() -> OrderCreated {
        OrderCreated {
            order_id: OrderId::new(),
            customer_id: "c".into(),
            items: vec![OrderItem {
                product_id: "p".into(),
                quantity: 2,
                price: 1.5,
            }],
            total: 3.0,
            created_at: now(),
        }
    }

    #[test]
    fn records_are_keyed_by_order_and_carry_routing_headers() {
        let event = Envelope::new(created(), "corr-1");
        let record = event.to_record().unwrap();
        assert_eq!(record.topic, "order.created");
        assert_eq!(
            record.key,
            Some(event.payload.order_id.to_string().into_bytes())
        );
        assert_eq!(record.headers["event_type"], b"order.created");
        assert_eq!(record.headers["correlation_id"], b"corr-1");
        let header = |name: &str| String::from_utf8(record.headers[name].clone()).unwrap();
        let names: Vec<&str> = record.headers.keys().map(String::as_str).collect();
        assert_eq!(names.len(), headers::ALL.len());
        assert!(headers::ALL.iter().all(|h| names.contains(h)), "{names:?}");
        assert_eq!(header("ce_specversion"), "1.0");
        assert_eq!(header("ce_id"), event.event_id.to_string());
        assert_eq!(header("ce_type"), "order.created");
        assert_eq!(header("ce_source"), "/rust-eda/order-service");
        assert_eq!(header("ce_time"), event.occurred_at);
        assert_eq!(header("ce_subject"), event.payload.order_id.to_string());
        assert_eq!(header("content-type"), "application/json");
        let back = Envelope::<OrderCreated>::decode(&message(record)).unwrap();
        assert_eq!(back, event);
    }

    #[tokio::test]
    async fn records_made_in_a_trace_carry_its_span() {
        let outside = Envelope::new(created(), "c").to_record().unwrap();
        assert!(!outside.headers.contains_key("traceparent"));
        let span = crate::trace::TraceContext::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Some("vendor=x"),
        )
        .unwrap();
        let inside = crate::trace::scope(span.clone(), async {
            Envelope::new(created(), "c").to_record().unwrap()
        })
        .await;
        assert_eq!(inside.headers["traceparent"], span.to_string().as_bytes());
        assert_eq!(inside.headers["tracestate"], b"vendor=x");
    }

    #[test]
    fn the_envelope_has_the_documented_fields() {
        let record = Envelope::new(created(), "corr").to_record().unwrap();
        let json: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(record.value.as_deref().unwrap()).unwrap();
        let keys: Vec<&str> = json.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "correlation_id",
                "event_id",
                "event_type",
                "occurred_at",
                "payload",
                "version"
            ]
        );
        assert!(json["occurred_at"].as_str().unwrap().ends_with('Z'));
    }

    /// An `order.created` another client wrote, breaking the API's rules, is
    /// poison: a quantity that would wrap the sums, none at all, a customer
    /// with another spelling.
    #[test]
    fn orders_that_break_the_rules_are_poison() {
        let bad = |edit: fn(&mut OrderCreated)| {
            let mut order = created();
            edit(&mut order);
            let record = Envelope::new(order, "c").to_record().unwrap();
            Envelope::<OrderCreated>::decode(&message(record)).unwrap_err()
        };
        let wraps = bad(|o| {
            o.items[0].quantity = u64::MAX;
            o.items.push(o.items[0].clone());
        });
        assert!(wraps.to_string().contains("items[0].quantity"), "{wraps}");
        assert!(bad(|o| o.items.clear()).to_string().contains("items"));
        assert!(
            bad(|o| o.customer_id = "alice ".into())
                .to_string()
                .contains("white space")
        );
        assert!(
            bad(|o| o.items[0].price = -1.0)
                .to_string()
                .contains("price")
        );
        let fine = Envelope::new(created(), "c").to_record().unwrap();
        assert!(Envelope::<OrderCreated>::decode(&message(fine)).is_ok());
    }

    #[test]
    fn foreign_records_are_poison() {
        let mut record = Envelope::new(created(), "c").to_record().unwrap();
        record.value = Some(b"{not json".to_vec());
        assert!(Envelope::<OrderCreated>::decode(&message(record.clone())).is_err());
        let reserved = Envelope::new(
            InventoryReserved {
                order_id: OrderId::new(),
                customer_id: "c".into(),
                items: vec![],
            },
            "c",
        )
        .to_record()
        .unwrap();
        let err = Envelope::<OrderCreated>::decode(&message(reserved)).unwrap_err();
        assert!(err.to_string().contains("inventory.reserved"), "{err}");
    }
}
