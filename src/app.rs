//! What every service binary does around its own work: load the configuration,
//! start logging, build the service, run it until SIGINT or SIGTERM.
//!
//! Every binary also understands commands that do their work and exit, so a
//! server with only the static binaries can run them:
//! - `create-topics` creates the system's topics (`scripts/create-topics.sh`);
//! - `replay-dlq <topic>.dlq [--to TOPIC] [--dry-run]` puts dead-lettered records
//!   back on their topic (`scripts/replay-dlq.sh`);
//! - `list-dlq <topic>.dlq` prints the records parked there, one JSON line each,
//!   with their `dlq.*` headers (why, from where, after how many attempts).
//!
//! A service may add its own (`Service::command`): the order service's
//! `mint-token --subject ID` prints a bearer token for customer `ID`.

use std::process::ExitCode;

use crate::config::{Config, hint, without_config_argument};
use crate::events::topic_specs;
use crate::kafka::middleware::replay::replay;
use crate::kafka::{
    Admin, Cluster, DEFAULT_OFFSETS_TOPIC, OffsetStore, Producer, ProducerConfig, TopicOutcome,
};
use crate::logging;
use crate::services::{Service, ServiceError};
use crate::shutdown::{self, ShutdownTrigger};

/// Exit code for a configuration error, as `sysexits.h`'s `EX_CONFIG`.
const EXIT_CONFIG: u8 = 78;
/// Exit code for a wrong command line, as `sysexits.h`'s `EX_USAGE`.
const EXIT_USAGE: u8 = 64;

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
    for name in &config.unknown {
        log::warn!(
            "{name} is not a setting of these services (a typo?); docs/configuration.md lists them"
        );
    }
    crate::metrics::init();

    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("create-topics") => return create_topics(&config, S::NAME).await,
        Some("replay-dlq") => return replay_dlq(&config, S::NAME, &args[1..]).await,
        Some("list-dlq") => return list_dlq(&config, S::NAME, &args[1..]).await,
        Some(name) if !name.starts_with('-') => {
            if let Some(code) = S::command(&config, name, &args[1..]) {
                return code;
            }
        }
        _ => {}
    }

    let service = match S::build(config).await {
        Ok(s) => s,
        Err(e) => {
            log::error!("{} cannot start: {e}", S::NAME);
            return match e {
                ServiceError::Config(_) => ExitCode::from(EXIT_CONFIG),
                _ => ExitCode::FAILURE,
            };
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
                        println!("exists  {topic} (partitions: {partitions})");
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("creating topics failed: {e}{}", hint(e.fix()));
            ExitCode::FAILURE
        }
    }
}

const LIST_DLQ_USAGE: &str = "usage: list-dlq <topic>.dlq";

/// `list-dlq`: every record of a dead-letter topic as a JSON line, its headers
/// (the `dlq.*` ones say why and from where) and key and value as text.
async fn list_dlq(config: &Config, service: &str, args: &[String]) -> ExitCode {
    let [topic] = without_config_argument(args)[..] else {
        eprintln!("{LIST_DLQ_USAGE}");
        return ExitCode::from(EXIT_USAGE);
    };
    if !topic.ends_with(".dlq") {
        eprintln!("{topic} is not a dead-letter topic (they end in .dlq)\n{LIST_DLQ_USAGE}");
        return ExitCode::from(EXIT_USAGE);
    }
    let cluster = match Cluster::connect(config.cluster(service)).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("listing {topic} failed: {e}{}", hint(e.fix()));
            return ExitCode::FAILURE;
        }
    };
    let parked = match crate::kafka::read_topic(&cluster, topic).await {
        Ok(parked) => parked,
        Err(e) => {
            eprintln!("listing {topic} failed: {e}{}", hint(e.fix()));
            return ExitCode::FAILURE;
        }
    };
    let text = |bytes: Option<&[u8]>| bytes.map(|b| String::from_utf8_lossy(b).into_owned());
    for m in &parked {
        let headers: serde_json::Map<String, serde_json::Value> = m
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned().into()))
            .collect();
        let line = serde_json::json!({
            "partition": m.partition,
            "offset": m.offset,
            "timestamp": m.timestamp.to_rfc3339_opts(rskafka::chrono::SecondsFormat::Millis, true),
            "key": text(m.key.as_deref()),
            "headers": headers,
            "value": text(m.value.as_deref()),
        });
        println!("{line}");
    }
    ExitCode::SUCCESS
}

/// The arguments of `replay-dlq`.
#[derive(Debug, PartialEq, Eq)]
struct ReplayArgs {
    dlq_topic: String,
    to: Option<String>,
    dry_run: bool,
}

const REPLAY_USAGE: &str = "usage: replay-dlq <topic>.dlq [--to TOPIC] [--dry-run]";

impl ReplayArgs {
    /// Parses the arguments after `replay-dlq`, leaving out `--config FILE`.
    fn parse(args: &[String]) -> Result<Self, String> {
        let (mut dlq_topic, mut to, mut dry_run) = (None, None, false);
        let args = without_config_argument(args);
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            match arg {
                "--dry-run" => dry_run = true,
                "--to" => to = Some(it.next().ok_or("--to needs a TOPIC")?.to_owned()),
                a if a.starts_with('-') => return Err(format!("unknown option {a}")),
                a if dlq_topic.is_none() => dlq_topic = Some(a.to_owned()),
                a => return Err(format!("unexpected argument {a}")),
            }
        }
        Ok(Self {
            dlq_topic: dlq_topic.ok_or("which dead-letter topic? e.g. order.created.dlq")?,
            to,
            dry_run,
        })
    }
}

async fn replay_dlq(config: &Config, service: &str, args: &[String]) -> ExitCode {
    let args = match ReplayArgs::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}\n{REPLAY_USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let cluster = match Cluster::connect(config.cluster(service)).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("replaying failed: {e}{}", hint(e.fix()));
            return ExitCode::FAILURE;
        }
    };
    let producer = Producer::new(cluster, ProducerConfig::default());
    let offsets = OffsetStore::new(producer.clone(), DEFAULT_OFFSETS_TOPIC);
    let result = replay(
        &producer,
        &offsets,
        &args.dlq_topic,
        args.to.as_deref(),
        args.dry_run,
    )
    .await;
    producer.close().await;
    match result {
        Ok(report) => {
            let verb = if args.dry_run {
                "would replay"
            } else {
                "replayed"
            };
            for (topic, n) in &report.replayed {
                println!("{verb} {n} records of {} to {topic}", args.dlq_topic);
            }
            println!(
                "{verb} {} in all; {} replayed before",
                report.total(),
                report.already_replayed
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("replaying {} failed: {e}{}", args.dlq_topic, hint(e.fix()));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn replay_arguments() {
        assert_eq!(
            ReplayArgs::parse(&args(&[
                "order.created.dlq",
                "--config",
                "x.env",
                "--dry-run"
            ])),
            Ok(ReplayArgs {
                dlq_topic: "order.created.dlq".into(),
                to: None,
                dry_run: true
            })
        );
        assert_eq!(
            ReplayArgs::parse(&args(&["--to", "t", "a.dlq"]))
                .unwrap()
                .to,
            Some("t".into())
        );
        assert!(ReplayArgs::parse(&args(&[])).is_err());
        assert!(ReplayArgs::parse(&args(&["a", "b"])).is_err());
        assert!(ReplayArgs::parse(&args(&["a", "--force"])).is_err());
        assert!(ReplayArgs::parse(&args(&["a", "--to"])).is_err());
    }
}
