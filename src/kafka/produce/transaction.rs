//! The transactional producer: records written to any partitions between
//! [`begin`](TransactionalProducer::begin) and
//! [`commit`](TransactionalProducer::commit) become visible to `read_committed`
//! readers together, or, after [`abort`](TransactionalProducer::abort), never.
//!
//! It speaks Kafka's transaction protocol (KIP-98) to the coordinator of its
//! transactional id: `InitProducerId` once, which hands out the id's producer id
//! with a new epoch, fences every older producer of the same transactional id
//! and aborts (or finishes committing) a transaction one of them left open;
//! `AddPartitionsToTxn` before a partition's first record in a transaction; and
//! `EndTxn` to commit or abort, after which the coordinator writes the markers
//! into every partition of the transaction. The batches themselves go through
//! the ordinary [`Producer`] with the transactional id, producer id, epoch and
//! sequence numbers, so they are idempotent too.
//!
//! Kafka 4 brokers also offer a second version of the protocol
//! (`transaction.version=2`, KIP-890), where a produce request adds its
//! partition and the epoch grows with every transaction. The broker keeps
//! serving the first version to clients that ask for it, which is what this
//! producer does: `AddPartitionsToTxn` at most v3 and `EndTxn` at most v4. The
//! version the cluster has finalized is read at start and logged.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, ApiVersionsRequest, EndTxnRequest, ProducerId, TopicName,
    TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use tokio::time::Instant;

use super::delivery::DeliveryFuture;
use super::producer::{Producer, ProducerConfig};
use super::producer_id::{
    Identity, ProducerIdError, ProducerIdentity, init_producer_id_on, is_retriable,
};
use super::record::{Delivery, ProduceError, ProducerRecord};
use crate::kafka::backoff::{Backoff, BackoffConfig};
use crate::kafka::conn::Cluster;
use crate::kafka::conn::wire::{Connection, CoordinatorKind, WireError};

/// The highest `AddPartitionsToTxn` version a client sends: v4 and later are
/// the brokers' own (KIP-890).
const ADD_PARTITIONS_MAX_VERSION: i16 = 3;
/// The highest `EndTxn` version of the first transaction protocol: v5 asks for
/// the second, where each transaction ends with a new epoch.
const END_TXN_MAX_VERSION: i16 = 4;

/// Settings of a transactional producer.
#[derive(Debug, Clone)]
pub struct TransactionConfig {
    /// Names the producer across restarts: a new producer with the same id
    /// fences the old one (Java: `transactional.id`).
    pub transactional_id: String,
    /// A transaction open this long is aborted by its coordinator (Java:
    /// `transaction.timeout.ms` = 60 s); at most the broker's
    /// `transaction.max.timeout.ms` (15 min by default).
    pub transaction_timeout: Duration,
    /// The producer the records go through; idempotence is always on.
    pub producer: ProducerConfig,
}

impl TransactionConfig {
    /// Settings for `transactional_id`, every other value at its default.
    pub fn new(transactional_id: impl Into<String>) -> Self {
        Self {
            transactional_id: transactional_id.into(),
            transaction_timeout: Duration::from_secs(60),
            producer: ProducerConfig::default(),
        }
    }
}

/// Why a transaction step failed.
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    /// No producer id could be had from the transaction coordinator.
    #[error("transactional id {id:?}: no producer id: {source}")]
    ProducerId {
        /// The transactional id.
        id: String,
        /// Why.
        #[source]
        source: ProducerIdError,
    },
    /// A newer producer with the same transactional id started, or the
    /// coordinator aborted this producer's transaction after its timeout.
    /// Nothing more can be written with this producer; make a new one.
    #[error(
        "transactional id {id:?} is fenced: a newer producer with the same id started, or the transaction ran past its timeout; this producer can write no more"
    )]
    Fenced {
        /// The transactional id.
        id: String,
    },
    /// The transaction coordinator could not be reached in time.
    #[error("{request} for transactional id {id:?} failed: {source}")]
    Wire {
        /// The request.
        request: &'static str,
        /// The transactional id.
        id: String,
        /// Why.
        #[source]
        source: Box<WireError>,
    },
    /// The coordinator refused a request for a reason retrying cannot fix.
    #[error("{request} for transactional id {id:?} answered {error:?}")]
    Refused {
        /// The request.
        request: &'static str,
        /// The transactional id.
        id: String,
        /// The coordinator's error.
        error: ResponseError,
    },
    /// A record of the open transaction was not written: it cannot commit
    /// and must be aborted.
    #[error("a record of the transaction of {id:?} was not written; abort the transaction")]
    MustAbort {
        /// The transactional id.
        id: String,
    },
    /// A record could not be accepted.
    #[error(transparent)]
    Produce(#[from] ProduceError),
    /// `send`, `commit` or `abort` without an open transaction.
    #[error("no transaction is open; call begin first")]
    NotOpen,
    /// `begin` while a transaction is open.
    #[error("a transaction is already open; commit or abort it first")]
    AlreadyOpen,
}

impl TransactionError {
    /// Whether the producer can go on: after an error that is not `Fenced`,
    /// aborting the transaction and beginning a new one may succeed.
    pub fn is_fenced(&self) -> bool {
        matches!(self, Self::Fenced { .. })
    }
}

/// What one transaction has touched so far.
#[derive(Debug, Default)]
struct Open {
    /// Partitions the coordinator knows are in the transaction.
    partitions: BTreeSet<(String, i32)>,
    /// Partitions to add with the next `AddPartitionsToTxn` (see
    /// [`TransactionalProducer::prepare`]).
    prepared: BTreeSet<(String, i32)>,
}

struct State {
    /// The coordinator connection, kept between requests.
    coordinator: Option<Connection>,
    open: Option<Open>,
    fenced: bool,
}

/// A producer whose records are written in transactions.
pub struct TransactionalProducer {
    producer: Producer,
    identity: Arc<Identity>,
    config: TransactionConfig,
    cluster: Cluster,
    /// Held across a request to the coordinator: one at a time, in order.
    state: tokio::sync::Mutex<State>,
}

impl std::fmt::Debug for TransactionalProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionalProducer")
            .field("transactional_id", &self.config.transactional_id)
            .finish_non_exhaustive()
    }
}

impl TransactionalProducer {
    /// Takes `config`'s transactional id and lets it go, without producing:
    /// the coordinator aborts the transaction its last holder left open, and
    /// that holder can neither write nor commit any more.
    pub async fn fence(
        cluster: &Cluster,
        config: &TransactionConfig,
    ) -> Result<(), TransactionError> {
        init(cluster, config, &mut None).await.map(drop)
    }

    /// Takes the transactional id's producer id from its coordinator, which
    /// fences every older producer with this transactional id and ends the
    /// transaction it left open (aborted, unless its commit had begun).
    /// Returns once that transaction is over.
    pub async fn new(
        cluster: Cluster,
        config: TransactionConfig,
    ) -> Result<Self, TransactionError> {
        // Kept for the transactions' requests: the coordinator is the same.
        let mut coordinator = None;
        let id = init(&cluster, &config, &mut coordinator).await?;
        log::info!(
            "transactional id {:?}: producer id {} epoch {}",
            config.transactional_id,
            id.id,
            id.epoch
        );
        let identity = Arc::new(Identity::transactional(
            cluster.config().clone(),
            config.transactional_id.clone(),
            id,
        ));
        let producer_config = ProducerConfig {
            idempotence: true,
            ..config.producer.clone()
        };
        let producer =
            Producer::with_identity(cluster.clone(), producer_config, Arc::clone(&identity));
        if log::log_enabled!(log::Level::Debug) {
            log_transaction_version(&config.transactional_id, &mut coordinator).await;
        }
        Ok(Self {
            producer,
            identity,
            config,
            cluster,
            state: tokio::sync::Mutex::new(State {
                coordinator,
                open: None,
                fenced: false,
            }),
        })
    }

    /// The transactional id.
    pub fn transactional_id(&self) -> &str {
        &self.config.transactional_id
    }

    /// Opens a transaction. Local only: the coordinator hears of it with its
    /// first partition.
    pub async fn begin(&self) -> Result<(), TransactionError> {
        let mut state = self.state.lock().await;
        if state.fenced {
            return Err(self.fenced());
        }
        if state.open.is_some() {
            return Err(TransactionError::AlreadyOpen);
        }
        state.open = Some(Open::default());
        Ok(())
    }

    /// Names a partition the open transaction will write to, so that it is
    /// added with the next partition the transaction adds, in the same
    /// `AddPartitionsToTxn`, rather than on its own later: a consumer's
    /// offset commit saves a round trip to the coordinator per transaction so.
    pub async fn prepare(&self, topic: &str, partition: i32) -> Result<(), TransactionError> {
        let mut state = self.state.lock().await;
        let Some(open) = &mut state.open else {
            return Err(TransactionError::NotOpen);
        };
        let key = (topic.to_owned(), partition);
        if !open.partitions.contains(&key) {
            open.prepared.insert(key);
        }
        Ok(())
    }

    /// Whether a transaction is open.
    pub async fn is_open(&self) -> bool {
        self.state.lock().await.open.is_some()
    }

    /// Accepts `record` into the open transaction and returns its delivery,
    /// as [`Producer::enqueue`] does. The partition is added to the
    /// transaction first, if it is new to it.
    pub async fn send(
        &self,
        mut record: ProducerRecord,
    ) -> Result<DeliveryFuture, TransactionError> {
        let partition = self
            .producer
            .choose_partition(&record, record.size())
            .await?;
        record.partition = Some(partition);
        {
            let mut state = self.state.lock().await;
            if state.fenced {
                return Err(self.fenced());
            }
            let Some(open) = &state.open else {
                return Err(TransactionError::NotOpen);
            };
            let key = (record.topic.clone(), partition);
            if !open.partitions.contains(&key) {
                let mut adding = open.prepared.clone();
                adding.insert(key);
                self.add_partitions(&mut state, &adding).await?;
                if let Some(open) = &mut state.open {
                    open.prepared.clear();
                    open.partitions.extend(adding);
                }
            }
        }
        Ok(self.producer.enqueue(record).await?)
    }

    /// Waits for every record of the transaction, then commits it: all of them
    /// become visible to `read_committed` readers. On `MustAbort` the
    /// transaction stays open for [`Self::abort`].
    pub async fn commit(&self) -> Result<(), TransactionError> {
        self.end_open(true).await
    }

    /// Waits for the records already sent, then aborts the transaction: none
    /// of its records become visible to `read_committed` readers. After a
    /// failed record the producer takes a new epoch from the coordinator, so
    /// that its sequence numbers can start again.
    pub async fn abort(&self) -> Result<(), TransactionError> {
        self.end_open(false).await?;
        if self.identity.is_retired() {
            // Also fences the epoch the failed batch was written with.
            let mut state = self.state.lock().await;
            let id = init(&self.cluster, &self.config, &mut state.coordinator).await?;
            log::info!(
                "transactional id {:?}: producer id {} epoch {} after an aborted transaction",
                self.config.transactional_id,
                id.id,
                id.epoch
            );
            self.identity.renew(id);
        }
        Ok(())
    }

    /// Delivers what was accepted and stops the producer; an open transaction
    /// is left to its coordinator, which aborts it after its timeout or when
    /// the next producer of the same transactional id starts.
    pub async fn close(&self) {
        self.producer.close().await;
    }

    /// Waits for the records sent, then ends the open transaction; the
    /// coordinator hears of it only if a partition was added. A failed
    /// record leaves a transaction that may only be aborted.
    async fn end_open(&self, commit: bool) -> Result<(), TransactionError> {
        self.producer.flush().await;
        let mut state = self.state.lock().await;
        if state.fenced {
            return Err(self.fenced());
        }
        let Some(open) = &state.open else {
            return Err(TransactionError::NotOpen);
        };
        if commit && self.identity.is_retired() {
            return Err(TransactionError::MustAbort {
                id: self.config.transactional_id.clone(),
            });
        }
        if !open.partitions.is_empty() {
            self.end(&mut state, commit).await?;
        }
        state.open = None;
        Ok(())
    }

    fn fenced(&self) -> TransactionError {
        TransactionError::Fenced {
            id: self.config.transactional_id.clone(),
        }
    }

    async fn add_partitions(
        &self,
        state: &mut State,
        partitions: &BTreeSet<(String, i32)>,
    ) -> Result<(), TransactionError> {
        let id = self.current_id()?;
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (topic, partition) in partitions {
            by_topic.entry(topic).or_default().push(*partition);
        }
        let topics = by_topic
            .into_iter()
            .map(|(topic, partitions)| {
                AddPartitionsToTxnTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_partitions(partitions)
            })
            .collect();
        let request = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(self.txn_id())
            .with_v3_and_below_producer_id(ProducerId(id.id))
            .with_v3_and_below_producer_epoch(id.epoch)
            .with_v3_and_below_topics(topics);
        self.call(state, &CoordinatorRequest::AddPartitions(request))
            .await
    }

    async fn end(&self, state: &mut State, commit: bool) -> Result<(), TransactionError> {
        let id = self.current_id()?;
        let request = EndTxnRequest::default()
            .with_transactional_id(self.txn_id())
            .with_producer_id(ProducerId(id.id))
            .with_producer_epoch(id.epoch)
            .with_committed(commit);
        self.call(state, &CoordinatorRequest::End(request)).await
    }

    /// The id the open transaction writes with. A batch that failed retired
    /// it; the transaction's requests still carry the epoch it had.
    fn current_id(&self) -> Result<ProducerIdentity, TransactionError> {
        self.identity
            .last()
            .ok_or_else(|| TransactionError::MustAbort {
                id: self.config.transactional_id.clone(),
            })
    }

    fn txn_id(&self) -> TransactionalId {
        TransactionalId(StrBytes::from_string(self.config.transactional_id.clone()))
    }

    /// Sends a request to the coordinator until it is answered without a
    /// retriable error, for `COORDINATOR_PATIENCE` (or the request timeout if
    /// longer): the coordinator may be
    /// loading, moving, or still finishing the previous transaction
    /// (`CONCURRENT_TRANSACTIONS`).
    async fn call(
        &self,
        state: &mut State,
        call: &CoordinatorRequest,
    ) -> Result<(), TransactionError> {
        let request = call.name();
        let id = &self.config.transactional_id;
        let patience = self
            .cluster
            .config()
            .request_timeout
            .max(super::producer_id::COORDINATOR_PATIENCE);
        let deadline = Instant::now() + patience;
        let mut backoff = Backoff::new(BackoffConfig {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(500),
        });
        loop {
            // Out of its slot while in use and back once answered, as in
            // `init_producer_id_on`: a caller that stops waiting drops a
            // connection that may never be answered.
            let conn = match state.coordinator.take() {
                Some(conn) => Ok(conn),
                None => {
                    Connection::coordinator(self.cluster.config(), CoordinatorKind::Transaction, id)
                        .await
                }
            };
            let outcome = match conn {
                Ok(mut conn) => {
                    let answer = call.send(&mut conn).await.map(ResponseError::try_from_code);
                    if answer.is_ok() {
                        state.coordinator = Some(conn);
                    }
                    answer
                }
                Err(e) => Err(e),
            };
            let retry = match outcome {
                Ok(None) => return Ok(()),
                Ok(Some(
                    ResponseError::ProducerFenced
                    | ResponseError::InvalidProducerEpoch
                    | ResponseError::InvalidProducerIdMapping,
                )) => {
                    state.fenced = true;
                    return Err(self.fenced());
                }
                Ok(Some(error)) if is_retriable(error) => {
                    if matches!(
                        error,
                        ResponseError::NotCoordinator | ResponseError::CoordinatorNotAvailable
                    ) {
                        state.coordinator = None;
                    }
                    Ok(format!("{error:?}"))
                }
                Ok(Some(error)) => {
                    return Err(TransactionError::Refused {
                        request,
                        id: id.clone(),
                        error,
                    });
                }
                Err(e @ WireError::Unsupported { .. }) => {
                    return Err(TransactionError::Wire {
                        request,
                        id: id.clone(),
                        source: Box::new(e),
                    });
                }
                Err(e) => {
                    state.coordinator = None;
                    Err(e)
                }
            };
            let delay = backoff.next_delay();
            if Instant::now() + delay >= deadline {
                // The last connection error, or what the coordinator last said.
                let source = match retry {
                    Err(e) => e,
                    Ok(answer) => WireError::Timeout {
                        addr: format!("the coordinator of {id:?} (last answer: {answer})"),
                        timeout: patience,
                    },
                };
                return Err(TransactionError::Wire {
                    request,
                    id: id.clone(),
                    source: Box::new(source),
                });
            }
            let why = match &retry {
                Err(e) => e.to_string(),
                Ok(answer) => answer.clone(),
            };
            log::debug!("{request} for {id:?}: {why}; again in {delay:?}");
            tokio::time::sleep(delay).await;
        }
    }
}

/// Logs the `transaction.version` the cluster finalized (Kafka 3.8 and later
/// advertise it in `ApiVersions` v3), over the coordinator connection
/// `InitProducerId` left. Every partition's producer would log it: it is
/// asked only at debug level.
async fn log_transaction_version(id: &str, coordinator: &mut Option<Connection>) {
    let version = async {
        let conn = coordinator.as_mut()?;
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("rust-eda"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let response = conn.request_capped(&request, 3).await.ok()?;
        Some(
            response
                .finalized_features
                .iter()
                .find(|f| f.name.as_str() == "transaction.version")
                .map_or(0, |f| f.max_version_level),
        )
    };
    match version.await {
        Some(level) => log::debug!(
            "transactional id {id:?}: the cluster's transaction.version is {level}; this producer speaks version 1 of the transaction protocol, which every Kafka since 0.11 serves"
        ),
        None => {
            log::debug!("transactional id {id:?}: the cluster's transaction.version is unknown");
        }
    }
}

/// Whether the cluster's brokers speak the transaction protocol (Kafka 0.11
/// and later do; some Kafka-compatible services do not).
pub async fn transactions_supported(
    config: &crate::kafka::conn::ClusterConfig,
) -> Result<bool, WireError> {
    let conn = Connection::bootstrap(config).await?;
    let speaks = |result: Result<i16, WireError>| match result {
        Ok(_) => Ok(true),
        Err(WireError::Unsupported { .. }) => Ok(false),
        Err(e) => Err(e),
    };
    Ok(speaks(conn.version::<EndTxnRequest>())?
        && speaks(conn.version::<AddPartitionsToTxnRequest>())?)
}

/// A request to the transaction coordinator.
enum CoordinatorRequest {
    AddPartitions(AddPartitionsToTxnRequest),
    End(EndTxnRequest),
}

impl CoordinatorRequest {
    fn name(&self) -> &'static str {
        match self {
            Self::AddPartitions(_) => "AddPartitionsToTxn",
            Self::End(_) => "EndTxn",
        }
    }

    /// Sends it over `conn`; the error code of the answer (0 for none).
    async fn send(&self, conn: &mut Connection) -> Result<i16, WireError> {
        match self {
            Self::AddPartitions(request) => {
                let response = conn
                    .request_capped(request, ADD_PARTITIONS_MAX_VERSION)
                    .await?;
                Ok(response
                    .results_by_topic_v3_and_below
                    .iter()
                    .flat_map(|t| &t.results_by_partition)
                    .map(|p| p.partition_error_code)
                    .find(|&c| c != 0)
                    .unwrap_or(response.error_code))
            }
            Self::End(request) => Ok(conn
                .request_capped(request, END_TXN_MAX_VERSION)
                .await?
                .error_code),
        }
    }
}

/// `InitProducerId` for the transactional id, as [`TransactionalProducer::new`]
/// describes.
async fn init(
    cluster: &Cluster,
    config: &TransactionConfig,
    coordinator: &mut Option<Connection>,
) -> Result<ProducerIdentity, TransactionError> {
    init_producer_id_on(
        coordinator,
        cluster.config(),
        Some(&config.transactional_id),
        config.transaction_timeout,
    )
    .await
    .map_err(|source| match source {
        ProducerIdError::Refused {
            error: ResponseError::ProducerFenced | ResponseError::InvalidProducerEpoch,
        } => TransactionError::Fenced {
            id: config.transactional_id.clone(),
        },
        source => TransactionError::ProducerId {
            id: config.transactional_id.clone(),
            source,
        },
    })
}

impl From<TransactionError> for ProduceError {
    fn from(error: TransactionError) -> Self {
        match error {
            TransactionError::Produce(e) => e,
            other => Self::Transaction {
                reason: other.to_string(),
            },
        }
    }
}

/// A boxed future of the [`Transactional`] seam.
pub(crate) type TxnFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the exactly-once runner does with a partition's transactional
/// producer: [`TransactionalProducer`] over Kafka, or a simulated broker in
/// the runner's deterministic simulation.
pub(crate) trait Transactional: Send + Sync + 'static {
    /// [`TransactionalProducer::begin`].
    fn begin(&self) -> TxnFuture<'_, Result<(), TransactionError>>;
    /// [`TransactionalProducer::prepare`].
    fn prepare<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
    ) -> TxnFuture<'a, Result<(), TransactionError>>;
    /// [`TransactionalProducer::send`], and the wait for its delivery. A
    /// [`TransactionError`], so that the runner still sees a fence as one.
    fn send_and_wait(
        &self,
        record: ProducerRecord,
    ) -> TxnFuture<'_, Result<Delivery, TransactionError>>;
    /// [`TransactionalProducer::commit`].
    fn commit(&self) -> TxnFuture<'_, Result<(), TransactionError>>;
    /// [`TransactionalProducer::abort`].
    fn abort(&self) -> TxnFuture<'_, Result<(), TransactionError>>;
    /// [`TransactionalProducer::close`].
    fn close(&self) -> TxnFuture<'_, ()>;
}

impl Transactional for TransactionalProducer {
    fn begin(&self) -> TxnFuture<'_, Result<(), TransactionError>> {
        Box::pin(Self::begin(self))
    }

    fn prepare<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
    ) -> TxnFuture<'a, Result<(), TransactionError>> {
        Box::pin(Self::prepare(self, topic, partition))
    }

    fn send_and_wait(
        &self,
        record: ProducerRecord,
    ) -> TxnFuture<'_, Result<Delivery, TransactionError>> {
        Box::pin(async move { Ok(Self::send(self, record).await?.await?) })
    }

    fn commit(&self) -> TxnFuture<'_, Result<(), TransactionError>> {
        Box::pin(Self::commit(self))
    }

    fn abort(&self) -> TxnFuture<'_, Result<(), TransactionError>> {
        Box::pin(Self::abort(self))
    }

    fn close(&self) -> TxnFuture<'_, ()> {
        Box::pin(Self::close(self))
    }
}

/// The open transaction a consumed record is handled in, as its handler sees
/// it: output records go in, and the consumer commits them with the record's
/// offset, or aborts them.
#[derive(Clone)]
pub struct Outbox(Arc<dyn Transactional>);

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Outbox")
            .field(&Arc::as_ptr(&self.0).cast::<()>())
            .finish()
    }
}

/// Two are equal when they are the same transactional producer's.
impl PartialEq for Outbox {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.0), Arc::as_ptr(&other.0))
    }
}

impl Eq for Outbox {}

impl Outbox {
    /// The transaction of `producer`, for the consumer to hand its handler.
    pub(crate) fn new(producer: Arc<dyn Transactional>) -> Self {
        Self(producer)
    }

    /// Sends `record` in the transaction and waits until the broker has it;
    /// it becomes visible to `read_committed` readers when the transaction
    /// commits.
    pub async fn send(&self, record: ProducerRecord) -> Result<Delivery, ProduceError> {
        self.0
            .send_and_wait(record)
            .await
            .map_err(ProduceError::from)
    }
}
