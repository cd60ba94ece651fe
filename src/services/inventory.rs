//! inventory-service: reserves stock for every `order.created`, all items or none,
//! and publishes `inventory.reserved` or `inventory.failed`.
//!
//! Stock is a ledger: the initial quantities come from a JSON file
//! (`APP_INVENTORY_STOCK_FILE`, e.g. `{"product-001": 100}`), and every reservation
//! ever made is in `inventory.reserved`. At start the service reads its two
//! decision topics back, so current stock and the set of decided orders survive
//! restarts without any local storage. An order decided before (a redelivery after
//! a crash, at-least-once) is skipped, so nothing is ever reserved twice.
//!
//! Deciding, publishing the decision and applying it to the ledger happen under one
//! lock, so two orders for the same product arriving on different partitions can
//! never both take the last unit.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use tokio::sync::Mutex;

use super::{Service, ServiceError, connect, producer};
use crate::config::Config;
use crate::domain::OrderId;
use crate::events::{
    Envelope, InventoryFailed, InventoryReserved, OrderCreated, ProductQuantity, Shortage, topics,
};
use crate::kafka::{
    Consumer, ConsumerConfig, DeadLetter, Handler, HandlerError, Message, Producer, read_topic,
};
use crate::logging::with_correlation_id;
use crate::shutdown::Shutdown;

/// The default consumer group.
pub const DEFAULT_GROUP: &str = "inventory-service";

/// Stock and decisions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ledger {
    initial: HashMap<String, u64>,
    reserved: HashMap<String, u64>,
    decided: HashSet<OrderId>,
}

/// What to do with an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Reserve(Vec<ProductQuantity>),
    Reject(Vec<Shortage>),
}

impl Ledger {
    /// A ledger with `initial` stock and nothing reserved.
    pub fn new(initial: HashMap<String, u64>) -> Self {
        Self {
            initial,
            ..Self::default()
        }
    }

    /// Reads initial stock from a JSON object of product id → quantity.
    pub fn from_file(path: &Path) -> Result<Self, ServiceError> {
        let error = |reason: String| ServiceError::StockFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let stock: HashMap<String, u64> = serde_json::from_str(&text).map_err(|e| {
            error(format!(
                "expected a JSON object of product id to whole quantity: {e}"
            ))
        })?;
        Ok(Self::new(stock))
    }

    /// Units of `product` still available.
    pub fn available(&self, product: &str) -> u64 {
        let initial = self.initial.get(product).copied().unwrap_or(0);
        initial.saturating_sub(self.reserved.get(product).copied().unwrap_or(0))
    }

    /// Whether the order was decided already.
    pub fn is_decided(&self, order: &OrderId) -> bool {
        self.decided.contains(order)
    }

    /// All or nothing: reserve if every product has enough units.
    pub fn decide(&self, order: &OrderCreated) -> Decision {
        let mut wanted: BTreeMap<&str, u64> = BTreeMap::new();
        for item in &order.items {
            *wanted.entry(item.product_id.as_str()).or_default() += item.quantity;
        }
        let missing: Vec<Shortage> = wanted
            .iter()
            .filter(|(product, quantity)| self.available(product) < **quantity)
            .map(|(product, quantity)| Shortage {
                product_id: (*product).to_owned(),
                requested: *quantity,
                available: self.available(product),
            })
            .collect();
        if missing.is_empty() {
            Decision::Reserve(
                wanted
                    .into_iter()
                    .map(|(product_id, quantity)| ProductQuantity {
                        product_id: product_id.to_owned(),
                        quantity,
                    })
                    .collect(),
            )
        } else {
            Decision::Reject(missing)
        }
    }

    /// Applies a reservation; a second one for the same order changes nothing.
    pub fn apply_reserved(&mut self, event: &InventoryReserved) {
        if self.decided.insert(event.order_id) {
            for item in &event.items {
                *self.reserved.entry(item.product_id.clone()).or_default() += item.quantity;
            }
        }
    }

    /// Applies a rejection.
    pub fn apply_failed(&mut self, event: &InventoryFailed) {
        self.decided.insert(event.order_id);
    }

    /// Replays the decision topics.
    fn replay(&mut self, messages: &[Message]) {
        for m in messages {
            let result = match m.topic.as_str() {
                topics::INVENTORY_RESERVED => Envelope::<InventoryReserved>::decode(m)
                    .map(|e| self.apply_reserved(&e.payload)),
                topics::INVENTORY_FAILED => {
                    Envelope::<InventoryFailed>::decode(m).map(|e| self.apply_failed(&e.payload))
                }
                _ => Ok(()),
            };
            if let Err(e) = result {
                log::warn!(
                    "ledger replay skips {}/{}@{}: {e}",
                    m.topic,
                    m.partition,
                    m.offset
                );
            }
        }
    }
}

/// Handles `order.created`.
#[derive(Clone)]
pub struct ReserveStock {
    ledger: Arc<Mutex<Ledger>>,
    producer: Producer,
}

impl Handler for ReserveStock {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        let event = Envelope::<OrderCreated>::decode(message)?;
        with_correlation_id(event.correlation_id.clone(), self.reserve(event)).await
    }
}

impl ReserveStock {
    async fn reserve(&self, event: Envelope<OrderCreated>) -> Result<(), HandlerError> {
        let order = &event.payload;
        let mut ledger = self.ledger.lock().await;
        if ledger.is_decided(&order.order_id) {
            log::info!(
                "order {} was decided before; not deciding again",
                order.order_id
            );
            return Ok(());
        }
        match ledger.decide(order) {
            Decision::Reserve(items) => {
                let reserved = Envelope::new(
                    InventoryReserved {
                        order_id: order.order_id,
                        customer_id: order.customer_id.clone(),
                        items,
                    },
                    event.correlation_id.clone(),
                );
                self.producer.send(reserved.to_record()).await?;
                ledger.apply_reserved(&reserved.payload);
                log::info!("order {} reserved", order.order_id);
            }
            Decision::Reject(missing) => {
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
                let failed = Envelope::new(
                    InventoryFailed {
                        order_id: order.order_id,
                        customer_id: order.customer_id.clone(),
                        reason: reason.clone(),
                        missing,
                    },
                    event.correlation_id.clone(),
                );
                self.producer.send(failed.to_record()).await?;
                ledger.apply_failed(&failed.payload);
                log::info!("order {} rejected: {reason}", order.order_id);
            }
        }
        Ok(())
    }
}

/// The built service.
pub struct InventoryService {
    consumer: Consumer,
    handler: DeadLetter<ReserveStock>,
    producer: Producer,
}

impl Service for InventoryService {
    const NAME: &'static str = "inventory-service";

    async fn build(config: Config) -> Result<Self, ServiceError> {
        let mut ledger = Ledger::from_file(&config.inventory.stock_file)?;
        let cluster = connect(&config, Self::NAME).await?;
        let mut decisions = read_topic(&cluster, topics::INVENTORY_RESERVED).await?;
        decisions.extend(read_topic(&cluster, topics::INVENTORY_FAILED).await?);
        ledger.replay(&decisions);
        log::info!(
            "stock ledger rebuilt from {} decisions ({} orders decided)",
            decisions.len(),
            ledger.decided.len()
        );

        let producer = producer(&config, &cluster);
        let group = config
            .kafka
            .group_id
            .clone()
            .unwrap_or_else(|| DEFAULT_GROUP.to_owned());
        let consumer =
            Consumer::new(cluster, ConsumerConfig::new(group, [topics::ORDER_CREATED])).await?;
        let handler = DeadLetter::new(
            ReserveStock {
                ledger: Arc::new(Mutex::new(ledger)),
                producer: producer.clone(),
            },
            producer.clone(),
        );
        Ok(Self {
            consumer,
            handler,
            producer,
        })
    }

    async fn run_until_stopped(self, shutdown: Shutdown) -> Result<(), ServiceError> {
        self.consumer.run(self.handler, shutdown).await?;
        self.producer.close().await;
        log::info!("inventory-service stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OrderItem;

    fn order(items: &[(&str, u64)]) -> OrderCreated {
        OrderCreated {
            order_id: OrderId::new(),
            customer_id: "c".into(),
            items: items
                .iter()
                .map(|(p, q)| OrderItem {
                    product_id: (*p).into(),
                    quantity: *q,
                    price: 1.0,
                })
                .collect(),
            total: 0.0,
            created_at: String::new(),
        }
    }

    fn ledger() -> Ledger {
        Ledger::new(HashMap::from([("a".into(), 5), ("b".into(), 1)]))
    }

    #[test]
    fn all_or_nothing() {
        let l = ledger();
        assert!(matches!(
            l.decide(&order(&[("a", 5), ("b", 1)])),
            Decision::Reserve(_)
        ));
        let Decision::Reject(missing) = l.decide(&order(&[("a", 1), ("b", 2), ("z", 1)])) else {
            panic!("expected a rejection");
        };
        let short: Vec<_> = missing
            .iter()
            .map(|s| (s.product_id.as_str(), s.available))
            .collect();
        assert_eq!(short, [("b", 1), ("z", 0)]);
    }

    #[test]
    fn items_of_one_product_are_summed() {
        assert!(matches!(
            ledger().decide(&order(&[("a", 3), ("a", 3)])),
            Decision::Reject(_)
        ));
    }

    #[test]
    fn a_reservation_applies_once() {
        let mut l = ledger();
        let o = order(&[("a", 2)]);
        let Decision::Reserve(items) = l.decide(&o) else {
            panic!()
        };
        let event = InventoryReserved {
            order_id: o.order_id,
            customer_id: "c".into(),
            items,
        };
        l.apply_reserved(&event);
        l.apply_reserved(&event);
        assert_eq!(l.available("a"), 3);
        assert!(l.is_decided(&o.order_id));
    }
}
