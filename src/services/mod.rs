//! The three services, each built in two steps: `build` connects, prepares topics
//! and rebuilds state from Kafka (so a bad setup fails before any work is taken);
//! `run_until_stopped` works until the shutdown signal, then finishes what is in
//! flight, flushes the producer and commits.

pub mod inventory;
pub mod notification;
pub mod order;

use crate::config::{Config, hint};
use crate::events::{self, topic_specs};
use crate::http::ops::{BindError, BrokerProbe, OpsServer, ReadyDetails};
use crate::kafka::middleware::Correlated;
use crate::kafka::{
    Admin, AdminError, Cluster, ClusterError, Consumer, ConsumerError, DeadLetter, Handler,
    ProduceError, Producer, ReadError,
};
use crate::shutdown::Shutdown;

/// Errors that stop a service from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The cluster could not be reached, or a topic is missing.
    #[error("{0}{hint}", hint = hint(.0.fix()))]
    Cluster(#[from] ClusterError),
    /// The topics could not be created.
    #[error("preparing topics failed: {0}{hint}", hint = hint(.0.fix()))]
    Admin(#[from] AdminError),
    /// The consumer stopped.
    #[error("{0}{hint}", hint = hint(.0.fix()))]
    Consumer(#[from] ConsumerError),
    /// State could not be rebuilt from the topics.
    #[error("rebuilding state from Kafka failed: {0}{hint}", hint = hint(.0.fix()))]
    Rebuild(#[from] ReadError),
    /// An event could not be published.
    #[error("{0}{hint}", hint = hint(.0.fix()))]
    Produce(#[from] ProduceError),
    /// The API port could not be bound.
    #[error("cannot listen on {addr}: {source}; set APP_SERVER_HOST/APP_SERVER_PORT")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The operations port could not be bound.
    #[error("{0}; set APP_METRICS_PORT")]
    MetricsBind(#[from] BindError),
    /// A setting the service needs is missing or malformed.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// The stock ledger cannot be used.
    #[error("the stock ledger: {0}")]
    Ledger(String),
    /// The stock file cannot be read.
    #[error("stock file {path}: {reason}; set APP_INVENTORY_STOCK_FILE")]
    StockFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A service the binaries can run.
pub trait Service: Sized + Send {
    /// The service name, for logs and the client id.
    const NAME: &'static str;

    /// Runs the service's own command `name` with `args` (those after the
    /// name), if it has one by that name, and gives its exit code.
    fn command(_config: &Config, _name: &str, _args: &[String]) -> Option<std::process::ExitCode> {
        None
    }

    /// Connects and prepares everything; fails early on a bad setup.
    fn build(config: Config) -> impl Future<Output = Result<Self, ServiceError>> + Send;

    /// Works until `shutdown` fires, then stops gracefully.
    fn run_until_stopped(
        self,
        shutdown: Shutdown,
    ) -> impl Future<Output = Result<(), ServiceError>> + Send;
}

/// Connects to the cluster and, unless `APP_KAFKA_CREATE_TOPICS=false`, creates the
/// system's topics that are missing.
pub async fn connect(config: &Config, service: &str) -> Result<Cluster, ServiceError> {
    let cluster_config = config.cluster(service);
    if config.kafka.create_topics {
        Admin::new(cluster_config.clone())
            .ensure_topics(&topic_specs(
                config.kafka.topic_partitions,
                config.kafka.replication_factor,
            ))
            .await?;
    }
    let cluster = Cluster::connect(cluster_config).await?;
    log::info!(
        "{service} connected to Kafka at {} ({})",
        config.kafka.brokers,
        config.kafka.security.protocol()
    );
    Ok(cluster)
}

/// How a consumer service's handler is wrapped: inside its record's
/// correlation id, with poison records, and records that failed every attempt,
/// dead-lettered.
type Wrapped<H> = Correlated<DeadLetter<H>, fn(&crate::kafka::Message) -> Option<String>>;

/// A consumer service's loop: its consumer, its wrapped handler, and the
/// producer both write with.
pub struct ConsumerLoop<H> {
    consumer: Consumer,
    handler: Wrapped<H>,
    producer: Producer,
    ops: OpsServer,
}

impl<H: Handler> ConsumerLoop<H> {
    /// `max_attempts`: how often a failing record is offered before it is parked.
    pub fn new(
        consumer: Consumer,
        handler: H,
        producer: Producer,
        ops: OpsServer,
        max_attempts: u32,
    ) -> Self {
        Self {
            consumer,
            handler: Correlated::new(
                DeadLetter::new(handler, producer.clone()).max_attempts(max_attempts),
                events::correlation_id,
            ),
            producer,
            ops,
        }
    }

    /// Consumes until `shutdown`, then flushes everything the handler produced.
    /// Health and metrics are served until the end, so a scrape sees the shutdown.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), ServiceError> {
        let (ops_stop, ops_shutdown) = crate::shutdown::ShutdownTrigger::new();
        let ops = tokio::spawn(self.ops.serve(
            BrokerProbe::new(self.producer.cluster().clone()),
            ReadyDetails::default,
            ops_shutdown,
        ));
        let result = self.consumer.run(self.handler, shutdown).await;
        self.producer.close().await;
        ops_stop.trigger();
        let _ = ops.await;
        result?;
        Ok(())
    }
}

/// The producer of a service's events.
pub fn producer(config: &Config, cluster: &Cluster) -> Producer {
    Producer::new(cluster.clone(), config.producer())
}
