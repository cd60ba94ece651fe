//! A producer's identity at the broker: the producer id and epoch that
//! `InitProducerId` hands out, which idempotent and transactional batches carry
//! so that the broker can drop a batch it already wrote and fence an older
//! instance of the same producer.

use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, ProducerId, TransactionalId};
use kafka_protocol::protocol::StrBytes;

use tokio::time::Instant;

use crate::kafka::backoff::{Backoff, BackoffConfig};
use crate::kafka::conn::ClusterConfig;
use crate::kafka::conn::wire::{Connection, CoordinatorKind, WireError};

/// A producer id and the epoch it is used in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIdentity {
    /// Assigned by the broker; unique in the cluster.
    pub id: i64,
    /// Grows each time the same transactional id asks again, fencing the
    /// instance before it.
    pub epoch: i16,
}

/// Why no producer id was handed out.
#[derive(Debug, thiserror::Error)]
pub enum ProducerIdError {
    /// The connection to a broker failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The broker answered with an error.
    #[error("InitProducerId answered {error:?}")]
    Refused {
        /// The broker's error.
        error: ResponseError,
    },
    /// A batch of the open transaction failed: nothing more can be written in
    /// it, and it must be aborted.
    #[error("a batch of this transaction failed; the transaction must be aborted")]
    TransactionFailed,
}

impl ProducerIdError {
    /// Whether asking again later may succeed (the coordinator is loading or
    /// moving).
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Wire(WireError::Unsupported { .. }) => false,
            Self::Wire(_) => true,
            Self::Refused { error } => is_retriable(*error),
            Self::TransactionFailed => false,
        }
    }
}

/// Whether a transaction or producer id request answered `error` may succeed
/// when sent again. As in the Java client, `CONCURRENT_TRANSACTIONS` is one:
/// the coordinator is still finishing the previous transaction of the id.
pub(super) fn is_retriable(error: ResponseError) -> bool {
    error.is_retriable() || error == ResponseError::ConcurrentTransactions
}

/// How long a call to a coordinator is tried again while it moves or loads:
/// a coordinator moves once Kafka fences its broker (`broker.session.timeout.ms`,
/// 9 s by default) and then loads its log, which outlasts a request timeout.
pub(super) const COORDINATOR_PATIENCE: Duration = Duration::from_secs(30);

/// Asks the cluster for a producer id, again with backoff while the broker
/// says it cannot yet (a fresh cluster answers `COORDINATOR_LOAD_IN_PROGRESS`
/// while it creates its transaction log), for [`COORDINATOR_PATIENCE`] or the
/// request timeout, whichever is longer.
/// Without a transactional id any broker answers; with one, its transaction
/// coordinator, found first.
pub async fn init_producer_id(
    config: &ClusterConfig,
    transactional_id: Option<&str>,
    transaction_timeout: Duration,
) -> Result<ProducerIdentity, ProducerIdError> {
    init_producer_id_on(&mut None, config, transactional_id, transaction_timeout).await
}

/// [`init_producer_id`] over `connection`, which it opens when `None` and
/// keeps for the caller's next request; it is opened again after a broken
/// connection or a coordinator that moved, not for every retry.
pub(super) async fn init_producer_id_on(
    connection: &mut Option<Connection>,
    config: &ClusterConfig,
    transactional_id: Option<&str>,
    transaction_timeout: Duration,
) -> Result<ProducerIdentity, ProducerIdError> {
    let deadline = Instant::now() + config.request_timeout.max(COORDINATOR_PATIENCE);
    let mut backoff = Backoff::new(BackoffConfig {
        initial: Duration::from_millis(50),
        max: Duration::from_secs(1),
    });
    loop {
        let outcome = ask(connection, config, transactional_id, transaction_timeout).await;
        if matches!(
            outcome,
            Err(ProducerIdError::Wire(_)
                | ProducerIdError::Refused {
                    error: ResponseError::NotCoordinator | ResponseError::CoordinatorNotAvailable,
                })
        ) {
            *connection = None;
        }
        match outcome {
            Err(e) if e.is_retriable() => {
                let delay = backoff.next_delay();
                if Instant::now() + delay >= deadline {
                    return Err(e);
                }
                log::debug!("InitProducerId failed, asking again in {delay:?}: {e}");
                tokio::time::sleep(delay).await;
            }
            outcome => return outcome,
        }
    }
}

async fn ask(
    connection: &mut Option<Connection>,
    config: &ClusterConfig,
    transactional_id: Option<&str>,
    transaction_timeout: Duration,
) -> Result<ProducerIdentity, ProducerIdError> {
    // Out of its slot while in use, and back only once answered: a caller
    // that gives up waiting (a record's delivery timeout) drops this future,
    // and with it a connection to a broker that may never answer (paused, cut
    // off), instead of asking that broker again next time.
    let mut conn = match connection.take() {
        Some(conn) => conn,
        None => match transactional_id {
            None => Connection::bootstrap(config).await?,
            Some(id) => Connection::coordinator(config, CoordinatorKind::Transaction, id).await?,
        },
    };
    let request = InitProducerIdRequest::default()
        .with_transactional_id(
            transactional_id.map(|id| TransactionalId(StrBytes::from_string(id.to_owned()))),
        )
        .with_transaction_timeout_ms(
            i32::try_from(transaction_timeout.as_millis()).unwrap_or(i32::MAX),
        )
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let response = conn.request(&request).await?;
    *connection = Some(conn);
    if let Some(error) = ResponseError::try_from_code(response.error_code) {
        return Err(ProducerIdError::Refused { error });
    }
    Ok(ProducerIdentity {
        id: response.producer_id.0,
        epoch: response.producer_epoch,
    })
}

/// The producer id its batches carry, shared by its partitions' workers, and
/// a generation that moves each time a new id is taken: a worker that sees
/// the generation move starts its partition's sequence numbers at 0 again.
#[derive(Debug)]
pub(super) struct Identity {
    cluster: ClusterConfig,
    /// Set for a transactional producer, whose id comes from its transaction
    /// coordinator and is never taken anew behind its back: a failed batch
    /// fails the transaction instead (see [`Self::retire`]).
    transactional_id: Option<String>,
    state: parking_lot::Mutex<IdentityState>,
    /// One `InitProducerId` at a time, whichever worker asks.
    asking: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct IdentityState {
    /// The id in use and its generation; `None` before the first and after
    /// one was retired.
    current: Option<(ProducerIdentity, u64)>,
    /// The generation the next id taken gets.
    next_generation: u64,
    /// The cluster refused idempotent writes: batches go without an id.
    disabled: bool,
    /// The id given last, retired or not.
    last: Option<ProducerIdentity>,
}

impl Identity {
    pub(super) fn new(cluster: ClusterConfig) -> Self {
        Self {
            cluster,
            transactional_id: None,
            state: parking_lot::Mutex::new(IdentityState::default()),
            asking: tokio::sync::Mutex::new(()),
        }
    }

    /// The identity of transactional producer `transactional_id`, which its
    /// coordinator gave `id`.
    pub(super) fn transactional(
        cluster: ClusterConfig,
        transactional_id: String,
        id: ProducerIdentity,
    ) -> Self {
        Self {
            cluster,
            transactional_id: Some(transactional_id),
            state: parking_lot::Mutex::new(IdentityState {
                current: Some((id, 0)),
                next_generation: 1,
                disabled: false,
                last: Some(id),
            }),
            asking: tokio::sync::Mutex::new(()),
        }
    }

    /// The transactional id its batches carry, if it has one.
    pub(super) fn transactional_id(&self) -> Option<&str> {
        self.transactional_id.as_deref()
    }

    /// A transactional producer's new id or epoch, after aborting a failed
    /// transaction: sequence numbers start again.
    pub(super) fn renew(&self, id: ProducerIdentity) {
        let mut state = self.state.lock();
        let current = (id, state.next_generation);
        state.next_generation += 1;
        state.current = Some(current);
        state.last = Some(id);
    }

    /// The id given last, also after it was retired.
    pub(super) fn last(&self) -> Option<ProducerIdentity> {
        self.state.lock().last
    }

    /// Whether a batch failed since the id was last given (a transactional
    /// producer's open transaction cannot commit then).
    pub(super) fn is_retired(&self) -> bool {
        let state = self.state.lock();
        state.current.is_none() && !state.disabled
    }

    /// The id to write with, and its generation; asks the cluster when there
    /// is none. `None` when the cluster does not let this client write
    /// idempotently (no `IdempotentWrite` permission, or a broker without
    /// `InitProducerId`): batches then go without, as the Java client does when
    /// idempotence was not asked for explicitly (KIP-679).
    pub(super) async fn get(&self) -> Result<Option<(ProducerIdentity, u64)>, ProducerIdError> {
        if let Some(known) = self.known() {
            return Ok(known);
        }
        if self.transactional_id.is_some() {
            return Err(ProducerIdError::TransactionFailed);
        }
        let _asking = self.asking.lock().await;
        if let Some(known) = self.known() {
            return Ok(known);
        }
        match init_producer_id(&self.cluster, None, Duration::from_secs(60)).await {
            Ok(id) => {
                let mut state = self.state.lock();
                let current = (id, state.next_generation);
                state.next_generation += 1;
                state.current = Some(current);
                state.last = Some(id);
                if current.1 > 0 {
                    crate::metrics::counter(
                        "eda_producer_id_renewals_total",
                        "Producer ids taken anew because a batch's sequence could not go on (a batch of unknown outcome, or a broker that lost the id).",
                        &[],
                    )
                    .inc();
                    log::info!(
                        "producer id {} epoch {} (generation {}): sequence numbers start again",
                        id.id,
                        id.epoch,
                        current.1
                    );
                }
                Ok(Some(current))
            }
            Err(
                e @ (ProducerIdError::Refused {
                    error: ResponseError::ClusterAuthorizationFailed,
                }
                | ProducerIdError::Wire(WireError::Unsupported { .. })),
            ) => {
                log::warn!(
                    "the cluster does not let this client write idempotently ({e}); producing without idempotence, so a retried batch may be written twice"
                );
                self.state.lock().disabled = true;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// What is known without asking: `Some(None)` when disabled.
    pub(super) fn known(&self) -> Option<Option<(ProducerIdentity, u64)>> {
        let state = self.state.lock();
        if state.disabled {
            return Some(None);
        }
        state.current.map(Some)
    }

    /// Generation `seen` cannot go on: a batch of unknown outcome left a gap in
    /// its partition's sequence (sending the next batch under it could have the
    /// broker take it for that one and drop it), or the broker no longer knows
    /// the id. The next [`Self::get`] takes a new id.
    pub(super) fn retire(&self, seen: u64) {
        let mut state = self.state.lock();
        if state
            .current
            .is_some_and(|(_, generation)| generation == seen)
        {
            state.current = None;
        }
    }
}
