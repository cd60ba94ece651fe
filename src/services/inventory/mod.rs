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

mod ledger;
mod reserve;

use std::collections::BTreeMap;
use std::path::Path;

use super::{ConsumerLoop, Service, ServiceError, connect, producer};
use crate::config::Config;
use crate::events::topics;
use crate::http::ops::OpsServer;
use crate::kafka::{Consumer, Follower};
use crate::shutdown::Shutdown;

pub use self::ledger::{Decision, Ledger, LedgerRecord, Outcome, wanted};
use self::reserve::{ReserveStock, SharedLedger, ledger_record};

/// The default consumer group.
pub const DEFAULT_GROUP: &str = "inventory-service";

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
            let delivery = producer.send(ledger_record(&seed)?).await?;
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
            if ledger.initial_stock() != Some(&stock) {
                log::warn!(
                    "{} differs from the initial stock in the ledger; the ledger's stock applies",
                    config.inventory.stock_file.display()
                );
            }
            log::info!("stock ledger replayed: {} orders decided", ledger.decided());
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
