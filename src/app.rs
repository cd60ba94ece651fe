//! What every service binary does around its own work: load the configuration,
//! start logging, build the service, run it until SIGINT or SIGTERM.
//!
//! Every binary also understands `create-topics`, which creates the system's
//! topics and exits; `scripts/create-topics.sh` calls it, so a server with only the
//! static binaries can prepare a cluster.

use std::process::ExitCode;

use crate::config::Config;
use crate::events::topic_specs;
use crate::kafka::{Admin, TopicOutcome};
use crate::logging;
use crate::services::Service;
use crate::shutdown::{self, ShutdownTrigger};

/// Exit code for a configuration error, as `sysexits.h`'s `EX_CONFIG`.
const EXIT_CONFIG: u8 = 78;

/// Runs service `S` as the process's main. Returns the exit code.
pub async fn main<S: Service>() -> ExitCode {
    let config = match Config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{}: configuration error: {e}", S::NAME);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(S::NAME, &config.logger);
    crate::metrics::init();

    if std::env::args().nth(1).as_deref() == Some("create-topics") {
        return create_topics(&config, S::NAME).await;
    }

    let service = match S::build(config).await {
        Ok(s) => s,
        Err(e) => {
            log::error!("{} cannot start: {e}", S::NAME);
            return ExitCode::FAILURE;
        }
    };

    let (trigger, shutdown) = ShutdownTrigger::new();
    tokio::spawn(async move {
        match shutdown::signal().await {
            Ok(signal) => log::info!("{signal} received: finishing in-flight work"),
            Err(e) => log::error!("cannot listen for stop signals: {e}"),
        }
        trigger.trigger();
    });
    match service.run_until_stopped(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{} failed: {e}", S::NAME);
            ExitCode::FAILURE
        }
    }
}

async fn create_topics(config: &Config, service: &str) -> ExitCode {
    let specs = topic_specs(
        config.kafka.topic_partitions,
        config.kafka.replication_factor,
    );
    match Admin::new(config.cluster(service))
        .ensure_topics(&specs)
        .await
    {
        Ok(outcomes) => {
            for (topic, outcome) in outcomes {
                match outcome {
                    TopicOutcome::Created => println!("created {topic}"),
                    TopicOutcome::Existed { partitions } => {
                        println!("exists  {topic} (partitions: {partitions})")
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("creating topics failed: {e}");
            ExitCode::FAILURE
        }
    }
}
