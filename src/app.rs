//! What every service binary does around its own work: read the broker address,
//! start logging, connect, and run until SIGINT or SIGTERM.

use std::process::ExitCode;

use crate::kafka::{Cluster, ClusterConfig};
use crate::shutdown::{self, ShutdownTrigger};

/// Connects to the brokers in `APP_KAFKA_BROKERS` (default `localhost:9092`) and
/// waits for a stop signal. Returns the process exit code.
pub async fn run(name: &str) -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let brokers = std::env::var("APP_KAFKA_BROKERS").unwrap_or_else(|_| "localhost:9092".into());
    let mut config = ClusterConfig::from_broker_list(&brokers);
    config.client_id = name.to_owned();

    let cluster = match Cluster::connect(config).await {
        Ok(c) => c,
        Err(e) => {
            log::error!("{name}: {e}");
            return ExitCode::FAILURE;
        }
    };
    log::info!("{name} connected to Kafka at {brokers}: {cluster:?}");

    let (trigger, _shutdown) = ShutdownTrigger::new();
    match shutdown::signal().await {
        Ok(signal) => log::info!("{name}: {signal} received, stopping"),
        Err(e) => log::error!("{name}: cannot listen for signals: {e}"),
    }
    trigger.trigger();
    ExitCode::SUCCESS
}
