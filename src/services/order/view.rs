//! The order view: each order's current status, built from the event topics.
//!
//! The view lives in memory but is rebuilt from Kafka at every start (a
//! [`Follower`](crate::kafka::Follower) reads the four event topics from their
//! first record), so nothing lives only here. Events of one order come from
//! different topics, read concurrently, so they can arrive in any order: the view
//! merges them, and a status only moves forward (`pending` → `reserved` or
//! `rejected`), whatever arrives late.

use std::collections::HashMap;

use parking_lot::RwLock;
use serde::Serialize;

use crate::domain::{OrderId, OrderItem};
use crate::events::{
    Envelope, InventoryFailed, InventoryReserved, NotificationSent, OrderCreated, Shortage, topics,
};
use crate::kafka::Message;

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Accepted, not decided yet.
    Pending,
    /// Every item was reserved.
    Reserved,
    /// Not enough stock.
    Rejected,
}

/// An order as `GET /api/v1/orders/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderView {
    /// The order.
    pub order_id: OrderId,
    /// Who ordered.
    pub customer_id: String,
    /// What was ordered.
    pub items: Vec<OrderItem>,
    /// The sum of quantity × price.
    pub total: f64,
    /// Where it stands.
    pub status: Status,
    /// Why the order was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The products that were short, for a rejected order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<Shortage>,
    /// When it was accepted (RFC 3339).
    pub created_at: String,
    /// When the inventory decided.
    pub decided_at: Option<String>,
    /// When the customer was notified of the outcome.
    pub notified_at: Option<String>,
}

#[derive(Debug, Default)]
struct Entry {
    created: Option<OrderCreated>,
    decision: Option<Decision>,
    notified_at: Option<String>,
}

#[derive(Debug)]
struct Decision {
    status: Status,
    reason: Option<String>,
    missing: Vec<Shortage>,
    at: String,
}

/// All orders known to this instance.
#[derive(Debug, Default)]
pub struct OrderViews {
    orders: RwLock<HashMap<OrderId, Entry>>,
}

impl OrderViews {
    /// No order yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The order, once its `order.created` event is known.
    pub fn get(&self, id: &OrderId) -> Option<OrderView> {
        let orders = self.orders.read();
        let entry = orders.get(id)?;
        let created = entry.created.as_ref()?;
        let decision = entry.decision.as_ref();
        Some(OrderView {
            order_id: created.order_id,
            customer_id: created.customer_id.clone(),
            items: created.items.clone(),
            total: created.total,
            status: decision.map_or(Status::Pending, |d| d.status),
            reason: decision.and_then(|d| d.reason.clone()),
            missing: decision.map(|d| d.missing.clone()).unwrap_or_default(),
            created_at: created.created_at.clone(),
            decided_at: decision.map(|d| d.at.clone()),
            notified_at: entry.notified_at.clone(),
        })
    }

    /// How many orders are known.
    pub fn len(&self) -> usize {
        self.orders
            .read()
            .values()
            .filter(|e| e.created.is_some())
            .count()
    }

    /// Whether no order is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records an order this instance just published.
    pub fn created(&self, order: &OrderCreated) {
        let mut orders = self.orders.write();
        let entry = orders.entry(order.order_id).or_default();
        if entry.created.is_none() {
            entry.created = Some(order.clone());
        }
    }

    /// Applies one record of the event topics. Records that are not events of the
    /// expected type are skipped: the view is a reader, not the judge of events.
    pub fn apply(&self, message: &Message) {
        let applied = match &*message.topic {
            topics::ORDER_CREATED => Envelope::<OrderCreated>::decode(message).map(|e| {
                self.created(&e.payload);
            }),
            topics::INVENTORY_RESERVED => Envelope::<InventoryReserved>::decode(message).map(|e| {
                self.decide(
                    e.payload.order_id,
                    Decision {
                        status: Status::Reserved,
                        reason: None,
                        missing: Vec::new(),
                        at: e.occurred_at,
                    },
                );
            }),
            topics::INVENTORY_FAILED => Envelope::<InventoryFailed>::decode(message).map(|e| {
                self.decide(
                    e.payload.order_id,
                    Decision {
                        status: Status::Rejected,
                        reason: Some(e.payload.reason),
                        missing: e.payload.missing,
                        at: e.occurred_at,
                    },
                );
            }),
            topics::NOTIFICATION_SENT => Envelope::<NotificationSent>::decode(message).map(|e| {
                let mut orders = self.orders.write();
                let entry = orders.entry(e.payload.order_id).or_default();
                entry.notified_at.get_or_insert(e.occurred_at);
            }),
            _ => Ok(()),
        };
        if let Err(e) = applied {
            log::warn!(
                "order view skips {}/{}@{}: {e}",
                message.topic,
                message.partition,
                message.offset
            );
        }
    }

    fn decide(&self, id: OrderId, decision: Decision) {
        let mut orders = self.orders.write();
        let entry = orders.entry(id).or_default();
        // The first decision stands; a duplicate (redelivered) event changes nothing.
        if entry.decision.is_none() {
            entry.decision = Some(decision);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ProductQuantity;

    fn message<P: crate::events::Payload>(event: &Envelope<P>) -> Message {
        let r = event.to_record().unwrap();
        Message {
            topic: r.topic.into(),
            partition: 0,
            offset: 0,
            key: r.key.map(Into::into),
            value: r.value.map(Into::into),
            headers: r.headers,
            timestamp: rskafka::chrono::DateTime::from_timestamp_millis(0).unwrap(),
            attempt: 1,
            outbox: None,
        }
    }

    fn order() -> OrderCreated {
        OrderCreated {
            order_id: OrderId::new(),
            customer_id: "c".into(),
            items: vec![crate::domain::OrderItem {
                product_id: "p".into(),
                quantity: 1,
                price: 1.0,
            }],
            total: 1.0,
            created_at: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    #[test]
    fn events_in_any_order_give_the_same_view() {
        let created = Envelope::new(order(), "x");
        let id = created.payload.order_id;
        let reserved = Envelope::new(
            InventoryReserved {
                order_id: id,
                customer_id: "c".into(),
                items: vec![ProductQuantity {
                    product_id: "p".into(),
                    quantity: 1,
                }],
            },
            "x",
        );
        let views = OrderViews::new();
        views.apply(&message(&reserved));
        assert!(
            views.get(&id).is_none(),
            "unknown until order.created arrives"
        );
        views.apply(&message(&created));
        let view = views.get(&id).unwrap();
        assert_eq!(view.status, Status::Reserved);

        // A late, contradicting event does not move the status back or sideways.
        let failed = Envelope::new(
            InventoryFailed {
                order_id: id,
                customer_id: "c".into(),
                reason: "out of stock".into(),
                missing: vec![],
            },
            "x",
        );
        views.apply(&message(&failed));
        assert_eq!(views.get(&id).unwrap().status, Status::Reserved);
        assert_eq!(views.len(), 1);
    }

    #[test]
    fn a_new_order_is_pending() {
        let views = OrderViews::new();
        let o = order();
        views.created(&o);
        let v = views.get(&o.order_id).unwrap();
        assert_eq!(v.status, Status::Pending);
        assert_eq!(v.notified_at, None);
    }
}
