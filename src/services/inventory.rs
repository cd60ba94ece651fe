//! inventory-service: reserves stock for every `order.created`, all items or none,
//! and publishes `inventory.reserved` or `inventory.failed`.
//!
//! Several instances can run in one consumer group, each owning different
//! `order.created` partitions, while stock is shared. Which order gets the last
//! unit is decided by a single-partition topic, `inventory.ledger`: an instance
//! appends a reservation *request* for an order, and every instance replays the
//! ledger in log order through the same deterministic rules. The first request of
//! an order decides it, against the stock left at that point of the log; later
//! requests for the same order are ignored. So all instances agree on every
//! decision, whichever of them handles an order, and no product is ever
//! reserved beyond its stock, across restarts and rebalances.
//!
//! The ledger starts with the initial stock (from `APP_INVENTORY_STOCK_FILE`),
//! written by the first instance that finds the ledger empty; later stock records
//! are ignored. Each request carries the `event_id` of its outcome event, so
//! publishing an outcome again after a crash repeats the same event, which
//! consumers deduplicate. The outcome topics are followed too, so an outcome
//! already published is not published again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use super::{ConsumerLoop, Service, ServiceError, connect, producer};
use crate::config::Config;
use crate::domain::OrderId;
use crate::events::{
    Envelope, InventoryFailed, InventoryReserved, OrderCreated, ProductQuantity, Shortage, headers,
    topics,
};
use crate::health;
use crate::http::ops::OpsServer;
use crate::kafka::{
    Consumer, Follower, Handler, HandlerError, LogCursor, Message, ProduceError, Producer,
    ProducerRecord, Read,
};
use crate::shutdown::Shutdown;

/// The default consumer group.
pub const DEFAULT_GROUP: &str = "inventory-service";

/// How long a handler waits for its own ledger request to be read back.
const LEDGER_WAIT: Duration = Duration::from_secs(30);

/// A record of `inventory.ledger`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LedgerRecord {
    /// The initial stock; only the first one counts.
    Stock { quantities: BTreeMap<String, u64> },
    /// A request to reserve for an order; only the first one per order counts.
    Reserve {
        order_id: OrderId,
        customer_id: String,
        items: Vec<ProductQuantity>,
        /// The id of the outcome event this request leads to.
        event_id: Uuid,
        correlation_id: String,
    },
}

impl LedgerRecord {
    fn to_record(&self) -> Result<ProducerRecord, ProduceError> {
        let key = match self {
            Self::Stock { .. } => "stock".to_owned(),
            Self::Reserve { order_id, .. } => order_id.to_string(),
        };
        ProducerRecord::new(topics::INVENTORY_LEDGER)
            .partition(0)
            .key(key)
            .json(self)
    }
}

/// How the ledger decided an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Reserved(Vec<ProductQuantity>),
    Rejected(Vec<Shortage>),
}

/// A decided order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub order_id: OrderId,
    pub customer_id: String,
    pub event_id: Uuid,
    pub correlation_id: String,
    pub outcome: Outcome,
}

/// Stock and decisions, replayed from the ledger in log order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ledger {
    initial: Option<BTreeMap<String, u64>>,
    reserved: HashMap<String, u64>,
    decisions: HashMap<OrderId, Decision>,
    published: HashSet<Uuid>,
}

impl Ledger {
    /// Units of `product` still available.
    pub fn available(&self, product: &str) -> u64 {
        let initial = self
            .initial
            .as_ref()
            .and_then(|s| s.get(product))
            .copied()
            .unwrap_or(0);
        initial.saturating_sub(self.reserved.get(product).copied().unwrap_or(0))
    }

    pub fn is_seeded(&self) -> bool {
        self.initial.is_some()
    }

    pub fn decision(&self, order: &OrderId) -> Option<&Decision> {
        self.decisions.get(order)
    }

    /// Applies one ledger record, as every instance does, in log order.
    pub fn apply(&mut self, record: LedgerRecord) {
        match record {
            LedgerRecord::Stock { quantities } => {
                if self.initial.is_none() {
                    self.initial = Some(quantities);
                }
            }
            LedgerRecord::Reserve {
                order_id,
                customer_id,
                items,
                event_id,
                correlation_id,
            } => {
                if self.decisions.contains_key(&order_id) {
                    return;
                }
                let outcome = self.evaluate(&items);
                if let Outcome::Reserved(items) = &outcome {
                    for item in items {
                        *self.reserved.entry(item.product_id.clone()).or_default() += item.quantity;
                    }
                }
                self.decisions.insert(
                    order_id,
                    Decision {
                        order_id,
                        customer_id,
                        event_id,
                        correlation_id,
                        outcome,
                    },
                );
            }
        }
    }

    /// All or nothing, against the stock left now.
    fn evaluate(&self, items: &[ProductQuantity]) -> Outcome {
        let missing: Vec<Shortage> = items
            .iter()
            .filter(|i| self.available(&i.product_id) < i.quantity)
            .map(|i| Shortage {
                product_id: i.product_id.clone(),
                requested: i.quantity,
                available: self.available(&i.product_id),
            })
            .collect();
        if missing.is_empty() {
            Outcome::Reserved(items.to_vec())
        } else {
            Outcome::Rejected(missing)
        }
    }

    /// Notes an outcome event seen in `inventory.reserved` or `inventory.failed`.
    pub fn mark_published(&mut self, event_id: Uuid) {
        self.published.insert(event_id);
    }

    pub fn is_published(&self, event_id: &Uuid) -> bool {
        self.published.contains(event_id)
    }
}

/// The quantities an order asks for, one entry per product (items summed).
pub fn wanted(order: &OrderCreated) -> Vec<ProductQuantity> {
    let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
    for item in &order.items {
        *sums.entry(item.product_id.as_str()).or_default() += item.quantity;
    }
    sums.into_iter()
        .map(|(product_id, quantity)| ProductQuantity {
            product_id: product_id.to_owned(),
            quantity,
        })
        .collect()
}

/// Reads initial stock from a JSON object of product id → quantity.
pub fn read_stock_file(path: &Path) -> Result<BTreeMap<String, u64>, ServiceError> {
    let error = |reason: String| ServiceError::StockFile {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| {
        error(format!(
            "expected a JSON object of product id to whole quantity: {e}"
        ))
    })
}

/// The ledger as this instance has read it, and how far.
#[derive(Clone)]
struct SharedLedger {
    ledger: Arc<Mutex<Ledger>>,
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
    fn new() -> Self {
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
    fn apply(&self, message: &Message) {
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
    async fn wait_applied(&self, offset: i64) -> Result<(), HandlerError> {
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
pub struct ReserveStock {
    shared: SharedLedger,
    producer: Producer,
}

impl Handler for ReserveStock {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        let event = Envelope::<OrderCreated>::decode(message)?;
        self.reserve(event).await
    }
}

impl ReserveStock {
    async fn reserve(&self, event: Envelope<OrderCreated>) -> Result<(), HandlerError> {
        if let Some(reason) = self.shared.divergence() {
            return Err(reason.into());
        }
        let order = &event.payload;
        let known = self.shared.ledger.lock().decision(&order.order_id).cloned();
        let decision = match known {
            Some(decision) => decision,
            None => {
                let request = LedgerRecord::Reserve {
                    order_id: order.order_id,
                    customer_id: order.customer_id.clone(),
                    items: wanted(order),
                    event_id: Uuid::new_v4(),
                    correlation_id: event.correlation_id.clone(),
                };
                let delivery = self.producer.send(request.to_record()?).await?;
                if !self.shared.apply_own(delivery.offset, request) {
                    self.shared.wait_applied(delivery.offset + 1).await?;
                }
                self.shared
                    .ledger
                    .lock()
                    .decision(&order.order_id)
                    .cloned()
                    .ok_or("the ledger holds no decision after applying the request")?
            }
        };
        if self.shared.ledger.lock().is_published(&decision.event_id) {
            log::info!("order {} was decided and published before", order.order_id);
            return Ok(());
        }
        self.publish(&decision).await?;
        self.shared.ledger.lock().mark_published(decision.event_id);
        Ok(())
    }

    async fn publish(&self, d: &Decision) -> Result<(), HandlerError> {
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
        self.producer.send(record?).await?;
        Ok(())
    }
}

/// The built service.
pub struct InventoryService {
    work: ConsumerLoop<ReserveStock>,
    /// Keeps following until the service is dropped.
    _followers: [Follower; 2],
}

/// Default of `APP_METRICS_PORT` for this service.
pub const METRICS_PORT: u16 = 9101;

impl Service for InventoryService {
    const NAME: &'static str = "inventory-service";

    async fn build(config: Config) -> Result<Self, ServiceError> {
        let ops = OpsServer::bind(&config, METRICS_PORT).await?;
        let stock = read_stock_file(&config.inventory.stock_file)?;
        let cluster = connect(&config, Self::NAME).await?;
        let producer = producer(&config, &cluster);

        let shared = SharedLedger::new();
        // Another instance's requests must be read before this one's can be
        // decided, so the ledger is read with the pipeline's wait; the outcomes
        // only mark what was published.
        let follow = |topics: &'static [&'static str], wait| {
            let shared = shared.clone();
            Follower::start(&cluster, topics, wait, move |m| shared.apply(&m))
        };
        let followers = [
            follow(&[topics::INVENTORY_LEDGER], config.kafka.fetch_max_wait).await?,
            follow(
                &[topics::INVENTORY_RESERVED, topics::INVENTORY_FAILED],
                config.kafka.view_max_wait,
            )
            .await?,
        ];
        for follower in &followers {
            follower.caught_up().await;
        }

        if !shared.ledger.lock().is_seeded() {
            let seed = LedgerRecord::Stock {
                quantities: stock.clone(),
            };
            let delivery = producer.send(seed.to_record()?).await?;
            shared
                .wait_applied(delivery.offset + 1)
                .await
                .map_err(|e| ServiceError::Ledger(e.to_string()))?;
            log::info!(
                "seeded the stock ledger from {}",
                config.inventory.stock_file.display()
            );
        }
        {
            let ledger = shared.ledger.lock();
            if ledger.initial.as_ref() != Some(&stock) {
                log::warn!(
                    "{} differs from the initial stock in the ledger; the ledger's stock applies",
                    config.inventory.stock_file.display()
                );
            }
            log::info!(
                "stock ledger replayed: {} orders decided",
                ledger.decisions.len()
            );
        }

        let consumer = Consumer::new(
            cluster,
            config.consumer(DEFAULT_GROUP, &[topics::ORDER_CREATED]),
        )
        .await?;
        let handler = ReserveStock {
            shared,
            producer: producer.clone(),
        };
        Ok(Self {
            work: ConsumerLoop::new(consumer, handler, producer, ops, config.kafka.max_attempts),
            _followers: followers,
        })
    }

    async fn run_until_stopped(self, shutdown: Shutdown) -> Result<(), ServiceError> {
        self.work.run(shutdown).await?;
        log::info!("inventory-service stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OrderItem;

    fn seeded() -> Ledger {
        let mut l = Ledger::default();
        l.apply(LedgerRecord::Stock {
            quantities: BTreeMap::from([("a".into(), 5), ("b".into(), 1)]),
        });
        l
    }

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

    fn request(order: OrderId, items: &[(&str, u64)]) -> LedgerRecord {
        LedgerRecord::Reserve {
            order_id: order,
            customer_id: "c".into(),
            items: items
                .iter()
                .map(|(p, q)| ProductQuantity {
                    product_id: (*p).into(),
                    quantity: *q,
                })
                .collect(),
            event_id: Uuid::new_v4(),
            correlation_id: "x".into(),
        }
    }

    #[test]
    fn all_or_nothing_in_log_order() {
        let mut l = seeded();
        let (first, second) = (OrderId::new(), OrderId::new());
        l.apply(request(first, &[("a", 4), ("b", 1)]));
        l.apply(request(second, &[("a", 2)]));
        assert!(matches!(
            l.decision(&first).unwrap().outcome,
            Outcome::Reserved(_)
        ));
        let Outcome::Rejected(missing) = &l.decision(&second).unwrap().outcome else {
            panic!("the second order must lose");
        };
        assert_eq!(missing[0].available, 1);
        assert_eq!(l.available("a"), 1, "a rejected order reserves nothing");
    }

    #[test]
    fn the_first_request_of_an_order_decides() {
        let mut l = seeded();
        let order = OrderId::new();
        let first = request(order, &[("a", 1)]);
        l.apply(first.clone());
        let decided = l.decision(&order).cloned().unwrap();
        l.apply(request(order, &[("a", 1)]));
        assert_eq!(
            l.decision(&order),
            Some(&decided),
            "a repeated request changes nothing"
        );
        assert_eq!(l.available("a"), 4);
    }

    #[test]
    fn only_the_first_stock_record_counts() {
        let mut l = seeded();
        l.apply(LedgerRecord::Stock {
            quantities: BTreeMap::from([("a".into(), 100)]),
        });
        assert_eq!(l.available("a"), 5);
        assert_eq!(Ledger::default().available("a"), 0);
    }

    #[test]
    fn items_of_one_product_are_summed() {
        let order = OrderCreated {
            order_id: OrderId::new(),
            customer_id: "c".into(),
            items: ["a", "b", "a"]
                .iter()
                .map(|p| OrderItem {
                    product_id: (*p).into(),
                    quantity: 2,
                    price: 1.0,
                })
                .collect(),
            total: 0.0,
            created_at: String::new(),
        };
        let w = wanted(&order);
        assert_eq!(
            w.iter()
                .map(|i| (i.product_id.as_str(), i.quantity))
                .collect::<Vec<_>>(),
            [("a", 4), ("b", 2)]
        );
    }
}
