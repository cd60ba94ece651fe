//! One connection to a Kafka cluster, shared by producers, consumers and the offset store.
//!
//! It wraps rskafka's `Client` and adds what rskafka 0.6 leaves to its users:
//! a deadline on every request (rskafka has no connect or request timeout, and its
//! default backoff retries forever), partition counts for the partitioner, and a
//! way to drop a cached partition leader. rskafka never invalidates a leader it
//! cached when leadership moves without the old connection failing, so callers that
//! retry call [`Cluster::reset_partition`], which refreshes the metadata with
//! `list_topics()` and rebuilds the partition client on the next use.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{Isolation, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};

use crate::kafka::codec::{self, BufferPool, Fetched, RecordsError};
use crate::kafka::conn::security::Security;
use crate::kafka::conn::tunnel::{TlsTunnel, TunnelError};
use crate::kafka::conn::wire::{Connection, WireError};
use crate::kafka::fix::Fix;

/// What a partition connection is used for. A broker answers the requests of one
/// connection strictly in order, so a produce queued behind a fetch that waits for
/// data (up to `fetch_max_wait`) would wait just as long; reads and writes of the
/// same partition therefore never share a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Fetches and offset look-ups.
    Read,
    /// Produce requests.
    Write,
}

/// How to reach the cluster. Defaults follow the Java client where it has one.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Bootstrap brokers, `host:port` each.
    pub brokers: Vec<String>,
    /// Sent to the broker with every request; shows up in broker logs and quotas.
    pub client_id: String,
    /// How long establishing a connection may take (TCP, version handshake,
    /// SASL), and a metadata request: past it, another broker is asked. Also
    /// the whole of [`Cluster::connect`].
    pub connect_timeout: Duration,
    /// How long one request (produce, fetch, metadata) may take before it is
    /// abandoned and retried: what a broker that hangs (paused, cut off by the
    /// network) costs before the partition's new leader is asked. 10 s, against
    /// Java's `request.timeout.ms` = 30 s: on a three-node cluster with one node
    /// paused or cut off for 20 s, the pipeline delivered again after 10.6 and
    /// 11.3 s with 10 s, and after 22 and 28 s with 30 s
    /// (`tests/cluster_chaos.rs`, `docs/operations.md`).
    pub request_timeout: Duration,
    /// How old cached partition counts may get before they are refreshed
    /// (Java: `metadata.max.age.ms` = 5 min).
    pub metadata_max_age: Duration,
    /// TLS and SASL (Java: `security.protocol` and `sasl.*`); plaintext by default.
    pub security: Security,
}

impl ClusterConfig {
    /// Settings for `brokers` with every other value at its default.
    pub fn new(brokers: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            brokers: brokers.into_iter().map(Into::into).collect(),
            client_id: "rust-eda".to_owned(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            metadata_max_age: Duration::from_secs(300),
            security: Security::default(),
        }
    }

    /// Parses a comma-separated broker list, as in `APP_KAFKA_BROKERS`.
    pub fn from_broker_list(list: &str) -> Self {
        Self::new(
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        )
    }

    /// The brokers joined for messages.
    pub fn broker_list(&self) -> String {
        self.brokers.join(",")
    }
}

/// Errors talking to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// TLS or SASL failed in a way retrying cannot fix: an untrusted certificate,
    /// refused credentials, a mechanism the broker does not offer.
    #[error("{0}")]
    Security(#[source] Box<WireError>),
    /// The TLS tunnel could not start.
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
    /// No broker was configured at all.
    #[error("no Kafka broker configured")]
    NoBrokers,
    /// The bootstrap brokers could not be reached.
    #[error("cannot reach Kafka at {brokers} within {timeout:?}: {reason}")]
    Unreachable {
        /// The bootstrap brokers.
        brokers: String,
        /// How long it tried.
        timeout: Duration,
        /// The last error.
        reason: String,
    },
    /// The topic is not known to the cluster.
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    /// The partition does not exist in the topic.
    #[error("topic {topic:?} has {partitions} partitions; partition {partition} does not exist")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: i32,
        /// The partitions it has.
        partitions: i32,
    },
    /// A request did not complete in time.
    #[error("Kafka {operation} timed out after {timeout:?}")]
    Timeout {
        /// What was asked.
        operation: &'static str,
        /// How long it waited.
        timeout: Duration,
    },
    /// Fetched record batches could not be decoded. Fetching them again returns
    /// the same bytes: the partition stays at this offset until they can be read.
    #[error("cannot read the records fetched from {topic}/{partition}: {source}")]
    Records {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// What is wrong with them.
        #[source]
        source: RecordsError,
    },
    /// The broker or the connection reported an error.
    #[error("Kafka {operation} failed: {source}")]
    Kafka {
        /// What was asked.
        operation: &'static str,
        // Boxed: rskafka's error is large, and every error above embeds this one.
        /// rskafka's error.
        #[source]
        source: Box<KafkaError>,
    },
}

impl ClusterError {
    /// What would clear this error, if the failure says.
    pub fn fix(&self) -> Option<Fix> {
        match self {
            Self::Security(e) => e.fix(),
            Self::Tunnel(e) => e.fix(),
            Self::NoBrokers => Some(Fix::Brokers),
            Self::Unreachable { .. } => Some(Fix::BrokerRunning),
            Self::UnknownTopic(_) => Some(Fix::CreateTopics),
            _ => None,
        }
    }

    pub(crate) fn kafka(operation: &'static str, source: KafkaError) -> Self {
        Self::Kafka {
            operation,
            source: Box::new(source),
        }
    }

    /// Whether trying again later may succeed: the connection broke, a leader moved,
    /// the broker is busy. Bad input and missing permissions are not retriable.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::NoBrokers
            | Self::UnknownPartition { .. }
            | Self::Security(_)
            | Self::Tunnel(_)
            | Self::Records { .. } => false,
            // A topic that was just created may not be in every broker's metadata yet.
            Self::UnknownTopic(_) | Self::Timeout { .. } | Self::Unreachable { .. } => true,
            Self::Kafka { source, .. } => is_retriable(source),
        }
    }

    /// The broker's error code, where the broker sent one.
    pub fn protocol_error(&self) -> Option<ProtocolError> {
        match self {
            Self::Kafka { source, .. } => match source.as_ref() {
                KafkaError::ServerError { protocol_error, .. } => Some(*protocol_error),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Opens one secured connection before rskafka does, so that a certificate or
/// credential problem ends the start with a message naming the setting to fix,
/// instead of surfacing as rskafka retrying until its deadline.
async fn preflight(config: &ClusterConfig) -> Result<(), ClusterError> {
    match Connection::connect_any(
        &config.brokers,
        &config.client_id,
        config.connect_timeout,
        &config.security,
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(WireError::Unreachable { tried }) => Err(ClusterError::Unreachable {
            brokers: config.broker_list(),
            timeout: config.connect_timeout,
            reason: tried,
        }),
        Err(e) => Err(ClusterError::Security(Box::new(e))),
    }
}

/// Classifies rskafka's errors as Kafka's `RetriableException`s do.
pub(crate) fn is_retriable(error: &KafkaError) -> bool {
    match error {
        KafkaError::Connection(_)
        | KafkaError::Request(_)
        | KafkaError::RetryFailed(_)
        | KafkaError::Timeout => true,
        KafkaError::InvalidResponse(_) => false,
        KafkaError::ServerError { protocol_error, .. } => matches!(
            protocol_error,
            ProtocolError::UnknownTopicOrPartition
                | ProtocolError::LeaderNotAvailable
                | ProtocolError::NotLeaderOrFollower
                | ProtocolError::RequestTimedOut
                | ProtocolError::BrokerNotAvailable
                | ProtocolError::ReplicaNotAvailable
                | ProtocolError::NetworkException
                | ProtocolError::NotEnoughReplicas
                | ProtocolError::NotEnoughReplicasAfterAppend
                | ProtocolError::KafkaStorageError
                | ProtocolError::FencedLeaderEpoch
                | ProtocolError::UnknownLeaderEpoch
                | ProtocolError::OffsetNotAvailable
                | ProtocolError::PreferredLeaderNotAvailable
                | ProtocolError::UnknownServerError
                | ProtocolError::CorruptMessage
                | ProtocolError::ThrottlingQuotaExceeded
        ),
        _ => false,
    }
}

/// A shared, cheaply cloned handle to the cluster.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClusterConfig,
    client: Client,
    // Carries rskafka's connections when TLS is on; it stops when the cluster is dropped.
    _tunnel: Option<TlsTunnel>,
    partition_clients: Mutex<HashMap<(String, i32, Lane), Arc<PartitionClient>>>,
    topics: Mutex<TopicCache>,
    decompressed: BufferPool,
}

#[derive(Default)]
struct TopicCache {
    partitions: HashMap<String, i32>,
    fetched_at: Option<Instant>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("brokers", &self.inner.config.brokers)
            .finish_non_exhaustive()
    }
}

/// How long a topic the metadata does not name is looked for again before it
/// counts as missing ([`Cluster::partition_count`]).
const UNKNOWN_TOPIC_PATIENCE: Duration = Duration::from_secs(3);

impl Cluster {
    /// Connects to the bootstrap brokers and loads the cluster metadata.
    pub async fn connect(config: ClusterConfig) -> Result<Self, ClusterError> {
        if config.brokers.is_empty() {
            return Err(ClusterError::NoBrokers);
        }
        // rskafka retries internally with this backoff; without a deadline it would
        // retry an unreachable broker forever.
        let backoff = rskafka::BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            base: 2.,
            deadline: Some(config.request_timeout),
        };
        if let (None, Some(sasl)) = (&config.security.tls, &config.security.sasl)
            && sasl.mechanism == crate::kafka::conn::security::SaslMechanism::Plain
        {
            log::warn!(
                "SASL PLAIN without TLS sends the password unencrypted; use SASL_SSL outside a trusted network"
            );
        }
        if config.security.tls.is_some() || config.security.sasl.is_some() {
            preflight(&config).await?;
        }
        // A broker that takes TCP connections but never answers (paused) or one
        // cut off holds a connection attempt or a metadata request until this
        // runs out; then another broker is asked (vendor/README.md, change 7).
        // Under half the request timeout, so that a leader lookup the request
        // timeout bounds still gets to ask a second broker.
        let mut builder = ClientBuilder::new(config.brokers.clone())
            .client_id(config.client_id.clone())
            .timeout(config.connect_timeout.min(config.request_timeout / 2))
            .backoff_config(backoff);
        let tunnel = match &config.security.tls {
            Some(tls) => {
                let tunnel =
                    TlsTunnel::start(tls.clone(), &config.brokers, config.connect_timeout).await?;
                builder = builder.socks5_proxy(tunnel.addr().to_string());
                Some(tunnel)
            }
            None => None,
        };
        if let Some(sasl) = &config.security.sasl {
            builder = builder.sasl_config(sasl.to_rskafka());
        }
        let unreachable = |reason: String| ClusterError::Unreachable {
            brokers: config.broker_list(),
            timeout: config.connect_timeout,
            reason,
        };
        let client = match tokio::time::timeout(config.connect_timeout, builder.build()).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable("no answer".to_owned())),
        };
        let cluster = Self {
            inner: Arc::new(Inner {
                config,
                client,
                _tunnel: tunnel,
                partition_clients: Mutex::new(HashMap::new()),
                topics: Mutex::new(TopicCache::default()),
                decompressed: BufferPool::default(),
            }),
        };
        cluster.refresh_metadata().await?;
        Ok(cluster)
    }

    /// The settings this cluster was connected with.
    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// Runs `fut` under the request timeout.
    pub(crate) async fn timed<T>(
        &self,
        operation: &'static str,
        fut: impl Future<Output = Result<T, KafkaError>>,
    ) -> Result<T, ClusterError> {
        let timeout = self.inner.config.request_timeout;
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r.map_err(|e| ClusterError::kafka(operation, e)),
            Err(_) => Err(ClusterError::Timeout { operation, timeout }),
        }
    }

    /// Reloads topic metadata from the cluster. This also refreshes rskafka's
    /// metadata cache, which is how a moved partition leader gets noticed.
    pub async fn refresh_metadata(&self) -> Result<(), ClusterError> {
        let topics = self
            .timed("metadata", self.inner.client.list_topics())
            .await?;
        let mut cache = self.inner.topics.lock();
        cache.partitions = topics
            .into_iter()
            .map(|t| (t.name, t.partitions.len() as i32))
            .collect();
        cache.fetched_at = Some(Instant::now());
        Ok(())
    }

    /// The number of partitions of `topic`, from metadata at most
    /// `metadata_max_age` old; an unknown topic triggers one refresh first.
    pub async fn partition_count(&self, topic: &str) -> Result<i32, ClusterError> {
        {
            let cache = self.inner.topics.lock();
            let fresh = cache
                .fetched_at
                .is_some_and(|at| at.elapsed() < self.inner.config.metadata_max_age);
            if let (true, Some(&n)) = (fresh, cache.partitions.get(topic)) {
                return Ok(n);
            }
        }
        // In a cluster, a topic just created reaches each broker's metadata a
        // moment apart, and the broker asked may not know it yet: a few looks
        // before the topic counts as missing.
        let mut delay = Duration::from_millis(50);
        let give_up =
            Instant::now() + UNKNOWN_TOPIC_PATIENCE.min(self.inner.config.request_timeout);
        loop {
            self.refresh_metadata().await?;
            if let Some(&n) = self.inner.topics.lock().partitions.get(topic)
                && n > 0
            {
                return Ok(n);
            }
            if Instant::now() + delay > give_up {
                return Err(ClusterError::UnknownTopic(topic.to_owned()));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    /// A client bound to the leader of one partition, cached between calls; each
    /// [`Lane`] has a connection of its own.
    pub async fn partition_client(
        &self,
        topic: &str,
        partition: i32,
        lane: Lane,
    ) -> Result<Arc<PartitionClient>, ClusterError> {
        let key = (topic.to_owned(), partition, lane);
        if let Some(client) = self.inner.partition_clients.lock().get(&key) {
            return Ok(Arc::clone(client));
        }
        let client = self
            .timed(
                "leader lookup",
                self.inner
                    .client
                    .partition_client(topic, partition, UnknownTopicHandling::Error),
            )
            .await
            .map_err(|e| match e.protocol_error() {
                Some(ProtocolError::UnknownTopicOrPartition) => {
                    ClusterError::UnknownTopic(topic.to_owned())
                }
                _ => e,
            })?;
        let client = Arc::new(client);
        self.inner
            .partition_clients
            .lock()
            .insert(key, Arc::clone(&client));
        Ok(client)
    }

    /// Fetches and decodes what `partition` holds from `offset` on: at most about
    /// `max_bytes` (Java: `max.partition.fetch.bytes`), waiting up to `max_wait`
    /// for the first byte. Returns the records and the partition's high watermark.
    /// With [`Isolation::ReadCommitted`] (what every consumer reads with) the
    /// records of aborted transactions are dropped and the markers stepped over;
    /// with `ReadUncommitted` they come tagged (see [`codec::decode_uncommitted`]).
    pub async fn fetch(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: i32,
        max_wait: Duration,
        isolation: Isolation,
    ) -> Result<(Fetched, i64), ClusterError> {
        let client = self.partition_client(topic, partition, Lane::Read).await?;
        let wait_ms = max_wait.as_millis().min(i32::MAX as u128) as i32;
        let (raw, high_watermark) = self
            .timed(
                "fetch",
                client.fetch_raw_records(offset, 1..max_bytes, wait_ms, isolation),
            )
            .await?;
        let data = Bytes::from(raw.frame).slice(raw.range);
        let decoded = match isolation {
            Isolation::ReadCommitted => codec::decode(
                data,
                offset,
                &raw.aborted_transactions,
                &self.inner.decompressed,
            ),
            Isolation::ReadUncommitted => {
                codec::decode_uncommitted(data, offset, &self.inner.decompressed)
            }
        };
        let fetched = decoded.map_err(|source| ClusterError::Records {
            topic: topic.to_owned(),
            partition,
            source,
        })?;
        if fetched.records.is_empty() {
            self.inner.decompressed.release_if_idle(codec::POOL_IDLE);
        }
        Ok((fetched, high_watermark))
    }

    /// Forgets the cached leader of a partition after an error, and refreshes the
    /// metadata so the next [`Self::partition_client`] finds the current leader.
    pub async fn reset_partition(&self, topic: &str, partition: i32) {
        self.inner
            .partition_clients
            .lock()
            .retain(|(t, p, _), _| !(t == topic && *p == partition));
        if let Err(e) = self.refresh_metadata().await {
            log::debug!("metadata refresh after an error on {topic}/{partition} failed: {e}");
        }
    }
}
