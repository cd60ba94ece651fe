//! Producing: the [`Producer`] (batching per partition, `acks=all`,
//! compression, retries, idempotence, a delivery future per record), the
//! [`TransactionalProducer`] over it, and the Java-compatible [`partitioner`]
//! that picks a record's partition.

mod accumulator;
mod delivery;
pub mod partitioner;
mod producer;
mod producer_id;
mod record;
mod transaction;
mod window;
#[cfg(test)]
mod window_sim;
mod worker;

pub use self::delivery::DeliveryFuture;
pub use self::producer::{Producer, ProducerConfig};
pub use self::producer_id::init_producer_id;
pub use self::producer_id::{ProducerIdError, ProducerIdentity};
pub use self::record::{Compression, Delivery, ProduceError, ProducerRecord};
pub use self::transaction::{
    Outbox, TransactionConfig, TransactionError, TransactionalProducer, transactions_supported,
};
pub(crate) use self::transaction::{Transactional, TxnFuture};
