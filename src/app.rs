//! What every service binary does around its own work: load the configuration,
//! start logging, build the service, run it until SIGINT or SIGTERM.
//!
//! Every binary also understands commands that do their work and exit, so a
//! server with only the static binaries can run them:
//! - `create-topics` creates the system's topics (`scripts/create-topics.sh`);
//! - `replay-dlq <topic>.dlq [--to TOPIC] [--execute]` puts dead-lettered records
//!   back on their topic, one of the system's event topics
//!   (`scripts/replay-dlq.sh`); without `--execute` it only says what it would
//!   copy;
//! - `list-dlq <topic>.dlq` prints the records parked there, one JSON line each,
//!   with their `dlq.*` headers (why, from where, after how many attempts);
//! - `describe-group <group> [--json]` shows an emulated consumer group's
//!   members, partition owners, committed offsets and lag;
//! - `reset-offsets <group> (--topic T... | --all-topics) (--to-earliest |
//!   --to-latest | --to-datetime TIME) [--execute]` moves a stopped group's
//!   committed offsets; without `--execute` it only prints the plan.
//!
//! A service may add its own (`Service::command`): the order service's
//! `mint-token --subject ID` prints a bearer token for customer `ID`.

use std::process::ExitCode;

use crate::config::{Config, hint, without_config_argument};
use crate::events::{topic_specs, topics};
use crate::kafka::group::operator::{self, ResetTo};
use crate::kafka::middleware::replay::{Replay, replay};
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
        Some("describe-group") => return describe_group(&config, S::NAME, &args[1..]).await,
        Some("reset-offsets") => return reset_offsets(&config, S::NAME, &args[1..]).await,
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

/// The cluster a command works on; on failure, says what failed to `doing`
/// and how to fix it, and gives the exit code.
async fn connect(config: &Config, service: &str, doing: &str) -> Result<Cluster, ExitCode> {
    Cluster::connect(config.cluster(service))
        .await
        .map_err(|e| {
            eprintln!("{doing} failed: {e}{}", hint(e.fix()));
            ExitCode::FAILURE
        })
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
    let cluster = match connect(config, service, &format!("listing {topic}")).await {
        Ok(c) => c,
        Err(code) => return code,
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

const DESCRIBE_USAGE: &str = "usage: describe-group <group> [--json]";

/// `describe-group`: members, owners, committed offsets and lag of a group.
async fn describe_group(config: &Config, service: &str, args: &[String]) -> ExitCode {
    let args = without_config_argument(args);
    let (group, json) = match args[..] {
        [group] if !group.starts_with('-') => (group, false),
        [group, "--json"] | ["--json", group] => (group, true),
        _ => {
            eprintln!("{DESCRIBE_USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let cluster = match connect(config, service, &format!("describing group {group}")).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let now_ms = crate::clock::now_millis();
    let d = match operator::describe(&cluster, DEFAULT_OFFSETS_TOPIC, group, now_ms).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("describing group {group} failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        match serde_json::to_string_pretty(&d) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("describing group {group} failed: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    let active = d.members.iter().filter(|m| m.state == "active").count();
    println!(
        "group {}: {active} active member(s) of {} known, total lag {}",
        d.group,
        d.members.len(),
        d.total_lag()
    );
    if d.members.is_empty() && d.partitions.is_empty() {
        println!("(the coordination log names no member, owner or offset of this group)");
        return ExitCode::SUCCESS;
    }
    let cell = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let mut rows = vec![vec![
        "MEMBER".to_owned(),
        "STATE".into(),
        "LAST-SEEN".into(),
        "PARTITIONS".into(),
        "TOPICS".into(),
    ]];
    rows.extend(d.members.iter().map(|m| {
        vec![
            m.member.clone(),
            m.state.to_owned(),
            m.last_seen.clone(),
            m.partitions.to_string(),
            m.topics.join(","),
        ]
    }));
    print_table(&rows);
    println!();
    let mut rows = vec![vec![
        "TOPIC".to_owned(),
        "PARTITION".into(),
        "OWNER".into(),
        "EPOCH".into(),
        "COMMITTED".into(),
        "LOG-END".into(),
        "LAG".into(),
    ]];
    rows.extend(d.partitions.iter().map(|p| {
        vec![
            p.topic.clone(),
            p.partition.to_string(),
            p.owner.clone().unwrap_or_else(|| "-".into()),
            cell(p.epoch),
            cell(p.committed),
            cell(p.log_end),
            cell(p.lag),
        ]
    }));
    print_table(&rows);
    ExitCode::SUCCESS
}

/// Prints `rows` as columns padded to their widest cell.
fn print_table(rows: &[Vec<String>]) {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// The arguments of `reset-offsets`.
#[derive(Debug, PartialEq, Eq)]
struct ResetArgs {
    group: String,
    /// Empty for `--all-topics`.
    topics: Vec<String>,
    to: ResetTo,
    execute: bool,
}

const RESET_USAGE: &str = "usage: reset-offsets <group> (--topic TOPIC ... | --all-topics) (--to-earliest | --to-latest | --to-datetime 2026-12-01T00:00:00Z) [--execute]";

impl ResetArgs {
    /// Parses the arguments after `reset-offsets`, leaving out `--config FILE`.
    fn parse(args: &[String]) -> Result<Self, String> {
        let (mut group, mut topics, mut all, mut to, mut execute) =
            (None, Vec::new(), false, None, false);
        let args = without_config_argument(args);
        let mut it = args.into_iter();
        let set_to = |to: &mut Option<ResetTo>, new: ResetTo| {
            if to.replace(new).is_some() {
                return Err("give one of --to-earliest, --to-latest, --to-datetime".to_owned());
            }
            Ok(())
        };
        while let Some(arg) = it.next() {
            match arg {
                "--topic" => topics.push(it.next().ok_or("--topic needs a TOPIC")?.to_owned()),
                "--all-topics" => all = true,
                "--to-earliest" => set_to(&mut to, ResetTo::Earliest)?,
                "--to-latest" => set_to(&mut to, ResetTo::Latest)?,
                "--to-datetime" => {
                    let text = it.next().ok_or("--to-datetime needs a time")?;
                    let time = rskafka::chrono::DateTime::parse_from_rfc3339(text)
                        .map_err(|e| {
                            format!("--to-datetime {text:?} is not an RFC 3339 time ({e}), such as 2026-12-01T00:00:00Z")
                        })?
                        .to_utc();
                    set_to(&mut to, ResetTo::Timestamp(time))?;
                }
                "--execute" => execute = true,
                "--dry-run" => execute = false,
                a if a.starts_with('-') => return Err(format!("unknown option {a}")),
                a if group.is_none() => group = Some(a.to_owned()),
                a => return Err(format!("unexpected argument {a}")),
            }
        }
        if all != topics.is_empty() {
            return Err("give the topics: --topic TOPIC (repeatable) or --all-topics".into());
        }
        Ok(Self {
            group: group.ok_or("which group? e.g. inventory-service")?,
            topics,
            to: to.ok_or("where to? --to-earliest, --to-latest or --to-datetime TIME")?,
            execute,
        })
    }
}

/// `reset-offsets`: moves a stopped group's committed offsets.
async fn reset_offsets(config: &Config, service: &str, args: &[String]) -> ExitCode {
    let args = match ResetArgs::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}\n{RESET_USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let cluster = match connect(config, service, &format!("resetting group {}", args.group)).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = operator::reset_offsets(
        &cluster,
        DEFAULT_OFFSETS_TOPIC,
        &args.group,
        &args.topics,
        args.to,
        args.execute,
        crate::clock::now_millis(),
    )
    .await;
    match result {
        Ok(plan) => {
            let verb = if args.execute { "reset" } else { "would reset" };
            for p in &plan {
                let from = p.from.map_or_else(|| "none".to_owned(), |o| o.to_string());
                println!(
                    "{verb} {} {}/{} from {from} to {}",
                    args.group, p.topic, p.partition, p.to
                );
            }
            if !args.execute {
                println!("dry run: nothing was changed; add --execute to apply");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("resetting group {} failed: {e}", args.group);
            ExitCode::FAILURE
        }
    }
}

/// The arguments of `replay-dlq`.
#[derive(Debug, PartialEq, Eq)]
struct ReplayArgs {
    dlq_topic: String,
    to: Option<String>,
    execute: bool,
}

const REPLAY_USAGE: &str = "usage: replay-dlq <topic>.dlq [--to TOPIC] [--execute]";

impl ReplayArgs {
    /// Parses the arguments after `replay-dlq`, leaving out `--config FILE`.
    /// Like `reset-offsets`, it is a dry run unless `--execute` is given.
    fn parse(args: &[String]) -> Result<Self, String> {
        let (mut dlq_topic, mut to, mut execute) = (None, None, false);
        let args = without_config_argument(args);
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            match arg {
                "--execute" => execute = true,
                "--dry-run" => execute = false,
                "--to" => to = Some(it.next().ok_or("--to needs a TOPIC")?.to_owned()),
                a if a.starts_with('-') => return Err(format!("unknown option {a}")),
                a if dlq_topic.is_none() => dlq_topic = Some(a.to_owned()),
                a => return Err(format!("unexpected argument {a}")),
            }
        }
        let dlq_topic: String =
            dlq_topic.ok_or("which dead-letter topic? e.g. order.created.dlq")?;
        if !dlq_topic.ends_with(".dlq") {
            return Err(format!(
                "{dlq_topic} is not a dead-letter topic: replay-dlq reads <topic>.dlq, e.g. order.created.dlq"
            ));
        }
        if let Some(to) = &to
            && !topics::ALL.contains(&to.as_str())
        {
            return Err(format!(
                "--to {to}: a replay writes only to the system's event topics ({})",
                topics::ALL.join(", ")
            ));
        }
        Ok(Self {
            dlq_topic,
            to,
            execute,
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
    let cluster = match connect(config, service, "replaying").await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let producer = Producer::new(cluster, ProducerConfig::default());
    let offsets = OffsetStore::new(producer.clone(), DEFAULT_OFFSETS_TOPIC);
    let result = replay(
        &producer,
        &offsets,
        Replay {
            dlq_topic: &args.dlq_topic,
            to: args.to.as_deref(),
            dry_run: !args.execute,
            targets: Some(&topics::ALL),
        },
    )
    .await;
    producer.close().await;
    match result {
        Ok(report) => {
            let verb = if args.execute {
                "replayed"
            } else {
                "would replay"
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
    fn reset_arguments() {
        let parsed = ResetArgs::parse(&args(&[
            "inventory-service",
            "--topic",
            "order.created",
            "--to-datetime",
            "2026-12-01T10:00:00+01:00",
            "--execute",
        ]))
        .unwrap();
        assert_eq!(parsed.group, "inventory-service");
        assert_eq!(parsed.topics, ["order.created"]);
        assert!(parsed.execute);
        let ResetTo::Timestamp(t) = parsed.to else {
            panic!("{parsed:?}")
        };
        assert_eq!(t.to_rfc3339(), "2026-12-01T09:00:00+00:00");
        let dry = ResetArgs::parse(&args(&["g", "--all-topics", "--to-earliest"])).unwrap();
        assert_eq!(
            (dry.topics.len(), dry.to, dry.execute),
            (0, ResetTo::Earliest, false)
        );
        for bad in [
            &["g", "--to-latest"][..],
            &["g", "--all-topics"],
            &["g", "--all-topics", "--topic", "t", "--to-latest"],
            &["g", "--all-topics", "--to-latest", "--to-earliest"],
            &["g", "--all-topics", "--to-datetime", "yesterday"],
            &["--all-topics", "--to-latest"],
            &["g", "h", "--all-topics", "--to-latest"],
        ] {
            assert!(ResetArgs::parse(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn replay_arguments() {
        assert_eq!(
            ReplayArgs::parse(&args(&["order.created.dlq", "--config", "x.env"])),
            Ok(ReplayArgs {
                dlq_topic: "order.created.dlq".into(),
                to: None,
                execute: false
            }),
            "a dry run unless --execute"
        );
        let executed =
            ReplayArgs::parse(&args(&["--to", "inventory.reserved", "a.dlq", "--execute"]))
                .unwrap();
        assert_eq!(executed.to.as_deref(), Some("inventory.reserved"));
        assert!(executed.execute);
        for bad in [
            &[][..],
            &["a.dlq", "b.dlq"],
            &["a.dlq", "--force"],
            &["a.dlq", "--to"],
            // Not a dead-letter topic, or a target the system does not own.
            &["order.created"],
            &["a.dlq", "--to", "__consumer_offsets"],
            &["a.dlq", "--to", "inventory.ledger"],
        ] {
            assert!(ReplayArgs::parse(&args(bad)).is_err(), "{bad:?}");
        }
    }
}
