//! The stock ledger's rules, with no Kafka in them: the records of
//! `inventory.ledger`, and the stock and decisions they lead to when replayed in
//! log order. The first request of an order decides it, all items or none,
//! against the stock left at that point of the log; later requests for the same
//! order, and stock records after the first, change nothing. Every instance that
//! replays the same log reaches the same decisions.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::OrderId;
use crate::events::{OrderCreated, ProductQuantity, Shortage};

/// A record of `inventory.ledger`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LedgerRecord {
    /// The initial stock; only the first one counts.
    Stock {
        /// Units per product.
        quantities: BTreeMap<String, u64>,
    },
    /// A request to reserve for an order; only the first one per order counts.
    Reserve {
        /// The order.
        order_id: OrderId,
        /// Who ordered.
        customer_id: String,
        /// What to reserve, one line per product.
        items: Vec<ProductQuantity>,
        /// The id of the outcome event this request leads to.
        event_id: Uuid,
        /// The order's correlation id.
        correlation_id: String,
    },
}

/// How the ledger decided an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every item was reserved: these quantities.
    Reserved(Vec<ProductQuantity>),
    /// Not enough stock: what was short.
    Rejected(Vec<Shortage>),
}

/// A decided order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The order.
    pub order_id: OrderId,
    /// Who ordered.
    pub customer_id: String,
    /// The id of the outcome event.
    pub event_id: Uuid,
    /// The order's correlation id.
    pub correlation_id: String,
    /// How it was decided.
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
    /// The stock the ledger started with, once its first stock record is read.
    pub fn initial_stock(&self) -> Option<&BTreeMap<String, u64>> {
        self.initial.as_ref()
    }

    /// How many orders are decided.
    pub fn decided(&self) -> usize {
        self.decisions.len()
    }

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

    /// Whether the initial stock was read.
    pub fn is_seeded(&self) -> bool {
        self.initial.is_some()
    }

    /// How `order` was decided, if it was.
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
                        // Saturating: a ledger record is input too, and a
                        // wrapped sum would show stock that was given away.
                        let reserved = self.reserved.entry(item.product_id.clone()).or_default();
                        *reserved = reserved.saturating_add(item.quantity);
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

    /// Whether the outcome event `event_id` was published already.
    pub fn is_published(&self, event_id: &Uuid) -> bool {
        self.published.contains(event_id)
    }
}

/// The quantities an order asks for, one entry per product (items summed).
pub fn wanted(order: &OrderCreated) -> Vec<ProductQuantity> {
    let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
    for item in &order.items {
        // Saturating: a wrapped sum would ask for less than was ordered.
        let sum = sums.entry(item.product_id.as_str()).or_default();
        *sum = sum.saturating_add(item.quantity);
    }
    sums.into_iter()
        .map(|(product_id, quantity)| ProductQuantity {
            product_id: product_id.to_owned(),
            quantity,
        })
        .collect()
}

/// Records for the tests of this module and of the Kafka adapter.
#[cfg(test)]
pub(super) mod testing {
    use super::*;

    pub(crate) fn request(order: OrderId, items: &[(&str, u64)]) -> LedgerRecord {
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
}

#[cfg(test)]
mod tests {
    use super::testing::request;
    use super::*;
    use crate::domain::OrderItem;

    fn seeded() -> Ledger {
        let mut l = Ledger::default();
        l.apply(LedgerRecord::Stock {
            quantities: BTreeMap::from([("a".into(), 5), ("b".into(), 1)]),
        });
        l
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
