//! The ledger over Kafka, and the handler of `order.created`. Each instance
//! follows `inventory.ledger` into its [`Ledger`]; a handler appends a request
//! for its order, applies it as soon as the log before it is read (its own
//! acknowledgement says where it landed), and publishes the decision. A ledger
//! whose topic no longer holds what it was built from decides nothing more.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use uuid::Uuid;

use super::ledger::{Decision, Ledger, LedgerRecord, Outcome, wanted};
use crate::events::{Envelope, InventoryFailed, InventoryReserved, OrderCreated, headers, topics};
use crate::health;
use crate::kafka::{
    Handler, HandlerError, LogCursor, Message, ProduceError, Producer, ProducerRecord, Read,
};

/// How long a handler waits for its own ledger request to be read back.
const LEDGER_WAIT: Duration = Duration::from_secs(30);

/// The record that appends `record` to the ledger.
pub(super) fn ledger_record(record: &LedgerRecord) -> Result<ProducerRecord, ProduceError> {
    let key = match record {
        LedgerRecord::Stock { .. } => "stock".to_owned(),
        LedgerRecord::Reserve { order_id, .. } => order_id.to_string(),
    };
    ProducerRecord::new(topics::INVENTORY_LEDGER)
        .partition(0)
        .key(key)
        .json(record)
}

/// The ledger as this instance has read it, and how far.
#[derive(Clone)]
pub(super) struct SharedLedger {
    pub(super) ledger: Arc<Mutex<Ledger>>,
    /// Where the ledger stands in its topic, with this instance's own requests
    /// acknowledged ahead of it. Locked after `ledger`, never before it.
    cursor: Arc<Mutex<LogCursor<LedgerRecord>>>,
    /// The cursor's next offset, for handlers waiting for the ledger to get there.
    applied: watch::Sender<i64>,
    /// Set once the ledger topic no longer holds what the ledger was built from
    /// (truncated after a failover, or recreated): from then on no order is
    /// decided, since a ledger that is no function of its log could oversell,
    /// and `/ready` says so until the instance is restarted and reads it again.
    diverged: Arc<health::Condition>,
}

impl SharedLedger {
    pub(super) fn new() -> Self {
        Self {
            ledger: Arc::default(),
            cursor: Arc::new(Mutex::new(LogCursor::at(0))),
            applied: watch::channel(0).0,
            diverged: Arc::new(health::Condition::new("inventory ledger")),
        }
    }

    /// Why no order may be decided, if the ledger diverged from its topic.
    fn divergence(&self) -> Option<String> {
        self.diverged.reason()
    }

    /// Applies the acknowledged requests that now follow the ledger, and
    /// publishes the new position.
    fn advance(&self, ledger: &mut Ledger, cursor: &mut LogCursor<LedgerRecord>) {
        for (_, record) in cursor.ready() {
            ledger.apply(record);
        }
        self.applied.send_replace(cursor.next());
    }

    /// Applies a record of the ledger or of an outcome topic.
    pub(super) fn apply(&self, message: &Message) {
        match &*message.topic {
            topics::INVENTORY_LEDGER => {
                let mut ledger = self.ledger.lock();
                let mut cursor = self.cursor.lock();
                let decoded = message
                    .value
                    .as_deref()
                    .map(serde_json::from_slice::<LedgerRecord>);
                let same = |own: &LedgerRecord| matches!(&decoded, Some(Ok(r)) if r == own);
                match cursor.read(message.offset, same) {
                    Read::Fresh => {}
                    // This instance wrote it and applied it on acknowledgement.
                    Read::Applied => return,
                    Read::Diverged => {
                        let reason = format!(
                            "{}@{} is not what the ledger was built from (the topic was truncated after a failover, or recreated); no order is decided until this instance restarts and reads the ledger again",
                            message.topic, message.offset
                        );
                        log::error!("inventory ledger: {reason}");
                        self.diverged.set(Some(reason));
                        return;
                    }
                }
                match decoded {
                    Some(Ok(record)) => ledger.apply(record),
                    other => log::warn!(
                        "ledger record {}@{} skipped: {:?}",
                        message.topic,
                        message.offset,
                        other.map(|r| r.map(|_| ()))
                    ),
                }
                self.advance(&mut ledger, &mut cursor);
            }
            _ => {
                if let Some(id) = message
                    .header_str(headers::EVENT_ID)
                    .and_then(|id| id.parse().ok())
                {
                    self.ledger.lock().mark_published(id);
                }
            }
        }
    }

    /// Applies this instance's own `record`, acknowledged at `offset`, as soon as
    /// every record before it is applied: nothing else can come between, so
    /// reading it back would only add a fetch's wait. The records before it may
    /// be this instance's too, acknowledged in the same batch but not yet handed
    /// over; those fill the gap when they are. Says whether it is applied now;
    /// otherwise [`Self::wait_applied`] says when.
    fn apply_own(&self, offset: i64, record: LedgerRecord) -> bool {
        let mut ledger = self.ledger.lock();
        let mut cursor = self.cursor.lock();
        cursor.acknowledged(offset, record);
        self.advance(&mut ledger, &mut cursor);
        cursor.next() > offset
    }

    /// Waits until the ledger was applied up to (excluding) `offset`.
    pub(super) async fn wait_applied(&self, offset: i64) -> Result<(), HandlerError> {
        let mut applied = self.applied.subscribe();
        match tokio::time::timeout(LEDGER_WAIT, applied.wait_for(|a| *a >= offset)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(format!(
                "the ledger was not read up to offset {offset} within {LEDGER_WAIT:?}"
            )
            .into()),
        }
    }
}

/// Handles `order.created`.
#[derive(Clone)]
pub(super) struct ReserveStock {
    pub(super) shared: SharedLedger,
    pub(super) producer: Producer,
}

impl Handler for ReserveStock {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        let event = Envelope::<OrderCreated>::decode(message)?;
        self.reserve(message, event).await
    }
}

impl ReserveStock {
    async fn reserve(
        &self,
        message: &Message,
        event: Envelope<OrderCreated>,
    ) -> Result<(), HandlerError> {
        if let Some(reason) = self.shared.divergence() {
            return Err(reason.into());
        }
        let order = &event.payload;
        let known = self.shared.ledger.lock().decision(&order.order_id).cloned();
        let decision = if let Some(decision) = known {
            decision
        } else {
            let request = LedgerRecord::Reserve {
                order_id: order.order_id,
                customer_id: order.customer_id.clone(),
                items: wanted(order),
                event_id: Uuid::new_v4(),
                correlation_id: event.correlation_id.clone(),
            };
            let delivery = self.producer.send(ledger_record(&request)?).await?;
            if !self.shared.apply_own(delivery.offset, request) {
                self.shared.wait_applied(delivery.offset + 1).await?;
            }
            self.shared
                .ledger
                .lock()
                .decision(&order.order_id)
                .cloned()
                .ok_or("the ledger holds no decision after applying the request")?
        };
        if self.shared.ledger.lock().is_published(&decision.event_id) {
            log::info!("order {} was decided and published before", order.order_id);
            return Ok(());
        }
        self.publish(message, &decision).await?;
        // In a transaction the outcome is published once it commits, which
        // following the outcome topics (read_committed) tells; marked now,
        // an aborted transaction would leave the order without an outcome.
        if message.outbox().is_none() {
            self.shared.ledger.lock().mark_published(decision.event_id);
        }
        Ok(())
    }

    async fn publish(&self, input: &Message, d: &Decision) -> Result<(), HandlerError> {
        let record = match &d.outcome {
            Outcome::Reserved(items) => {
                log::info!("order {} reserved", d.order_id);
                Envelope::with_id(
                    d.event_id,
                    InventoryReserved {
                        order_id: d.order_id,
                        customer_id: d.customer_id.clone(),
                        items: items.clone(),
                    },
                    d.correlation_id.clone(),
                )
                .to_record()
            }
            Outcome::Rejected(missing) => {
                let reason = format!(
                    "insufficient stock for {}",
                    missing
                        .iter()
                        .map(|s| format!(
                            "{} ({} requested, {} available)",
                            s.product_id, s.requested, s.available
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                log::info!("order {} rejected: {reason}", d.order_id);
                Envelope::with_id(
                    d.event_id,
                    InventoryFailed {
                        order_id: d.order_id,
                        customer_id: d.customer_id.clone(),
                        reason,
                        missing: missing.clone(),
                    },
                    d.correlation_id.clone(),
                )
                .to_record()
            }
        };
        input.send_output(&self.producer, record?).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::ledger::testing::request;
    use super::*;
    use crate::domain::OrderId;
    use std::collections::BTreeMap;

    fn ledger_message(offset: i64, record: &LedgerRecord) -> Message {
        Message {
            topic: topics::INVENTORY_LEDGER.into(),
            partition: 0,
            offset,
            key: None,
            value: Some(serde_json::to_vec(record).unwrap().into()),
            headers: BTreeMap::new(),
            timestamp: crate::clock::now().parse().unwrap(),
            attempt: 1,
            outbox: None,
        }
    }

    /// A shared ledger that has read the stock record `a` × `quantity` at offset 0.
    fn stocked_with_a(quantity: u64) -> SharedLedger {
        let shared = SharedLedger::new();
        let stock = LedgerRecord::Stock {
            quantities: BTreeMap::from([("a".into(), quantity)]),
        };
        shared.apply(&ledger_message(0, &stock));
        shared
    }

    #[test]
    fn an_own_request_is_applied_on_acknowledgement_once_the_records_before_it_are() {
        let shared = stocked_with_a(1);
        let (first, second) = (OrderId::new(), OrderId::new());

        // Offset 1 follows what was read: applied at once.
        let own_first = request(first, &[("a", 1)]);
        assert!(shared.apply_own(1, own_first.clone()));
        assert!(shared.ledger.lock().decision(&first).is_some());
        // Reading it back later changes nothing.
        shared.apply(&ledger_message(1, &own_first));
        assert_eq!(*shared.applied.borrow(), 2);
        assert_eq!(shared.ledger.lock().available("a"), 0);

        // Offset 3 with offset 2 unread: the request must wait for the log.
        let own_second = request(second, &[("a", 1)]);
        assert!(!shared.apply_own(3, own_second.clone()));
        assert!(shared.ledger.lock().decision(&second).is_none());
        assert_eq!(*shared.applied.borrow(), 2);

        // Reading offset 2 (another instance's) lets the waiting one follow.
        let third = OrderId::new();
        shared.apply(&ledger_message(2, &request(third, &[("a", 1)])));
        assert_eq!(*shared.applied.borrow(), 4);
        assert!(shared.ledger.lock().decision(&second).is_some());
        // Reading offset 3 back changes nothing.
        shared.apply(&ledger_message(3, &own_second));
        assert_eq!(*shared.applied.borrow(), 4);
        assert_eq!(shared.cursor.lock().waiting(), 0);
        assert_eq!(shared.divergence(), None);
    }

    #[test]
    fn a_ledger_whose_topic_lost_an_own_request_decides_nothing_more() {
        let shared = stocked_with_a(1);
        let (first, other) = (OrderId::new(), OrderId::new());
        assert!(shared.apply_own(1, request(first, &[("a", 1)])));
        // After an unclean failover, offset 1 holds another instance's request.
        shared.apply(&ledger_message(1, &request(other, &[("a", 1)])));
        let reason = shared.divergence().expect("diverged");
        assert!(reason.contains("inventory.ledger@1"), "{reason}");
        assert!(
            crate::health::problems()
                .iter()
                .any(|p| p.starts_with("inventory ledger: ")),
            "/ready names it"
        );
    }

    #[test]
    fn own_requests_acknowledged_together_apply_in_log_order_whoever_comes_first() {
        let shared = stocked_with_a(1);
        let (first, second) = (OrderId::new(), OrderId::new());
        // Offsets 1 and 2 came back in one batch; the handler of 2 runs first.
        assert!(!shared.apply_own(2, request(second, &[("a", 1)])));
        assert!(shared.apply_own(1, request(first, &[("a", 1)])));
        assert_eq!(*shared.applied.borrow(), 3);
        let ledger = shared.ledger.lock();
        assert!(matches!(
            ledger.decision(&first).unwrap().outcome,
            Outcome::Reserved(_)
        ));
        assert!(matches!(
            ledger.decision(&second).unwrap().outcome,
            Outcome::Rejected(_)
        ));
    }

    #[test]
    fn an_acknowledgement_the_log_delivered_first_is_not_applied_twice() {
        let shared = stocked_with_a(2);
        let first = OrderId::new();
        let own = request(first, &[("a", 1)]);
        shared.apply(&ledger_message(1, &own));
        assert!(shared.apply_own(1, own));
        assert_eq!(*shared.applied.borrow(), 2);
        assert_eq!(shared.ledger.lock().available("a"), 1);
        assert_eq!(shared.cursor.lock().waiting(), 0);
    }
}
