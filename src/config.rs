//! Service configuration from `APP_*` variables, parsed once at start.
//!
//! The sources and their priority are the Go original's: the environment, then the
//! first env file found of `--config FILE`, `./config.env` and
//! `./configs/config.env`, then the defaults. Every value is parsed into its type
//! here, so a bad value stops the service at start with a message naming the
//! variable and what it accepts, and the rest of the code never re-checks a string.
//! Secrets are wrapped in [`Secret`], whose `Debug` and `Display` print `***`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::kafka::{
    ClusterConfig, Compression, ConsumerConfig, Fix, ProducerConfig, Sasl, Security, Tls,
};
pub use crate::secret::Secret;

/// The env files tried, in order, when no `--config FILE` is given.
pub const DEFAULT_FILES: [&str; 2] = ["config.env", "configs/config.env"];

/// A configuration error, naming the variable or file at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{variable}={value:?} is invalid: expected {expected}")]
    Invalid {
        variable: &'static str,
        value: String,
        expected: String,
    },
    #[error("{variable} is required: {why}")]
    Missing {
        variable: &'static str,
        why: &'static str,
    },
    #[error("{variable}={value:?} does not apply here: {why}")]
    Inapplicable {
        variable: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("{variable}={value:?} is not supported by this build: {why}")]
    Unsupported {
        variable: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("unknown argument {0:?}: expected --config FILE")]
    Argument(String),
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogEncoding {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines, for a terminal.
    Console,
}

/// Everything the three services can be configured with.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub kafka: KafkaConfig,
    pub logger: LoggerConfig,
    pub order: OrderConfig,
    pub inventory: InventoryConfig,
    pub notification: NotificationConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `APP_SERVER_HOST`, default `0.0.0.0`.
    pub host: String,
    /// `APP_SERVER_PORT`, default 8080; 0 picks a free port.
    pub port: u16,
    /// `APP_METRICS_PORT`: where the consumer services serve `/health`, `/ready`
    /// and `/metrics` (the order service serves them on its API port). Unset, each
    /// service has its own default, so that all three fit on one host.
    pub metrics_port: Option<u16>,
    /// `APP_SERVER_MAX_IN_FLIGHT`, default 1024: requests served at once; more are
    /// answered `503` with `Retry-After` rather than queued without bound.
    pub max_in_flight: usize,
    /// `APP_SERVER_REQUEST_TIMEOUT_MS`, default 15000: the longest a request may
    /// take; must exceed `APP_ORDER_PUBLISH_TIMEOUT_MS`.
    pub request_timeout: Duration,
    /// `APP_SERVER_HEADER_TIMEOUT_MS`, default 5000: how long a client may take to
    /// send a request's headers before the connection is closed.
    pub header_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `APP_KAFKA_BROKERS`, default `localhost:9092`.
    pub brokers: Vec<String>,
    /// `APP_KAFKA_GROUP_ID`; each service has its own default.
    pub group_id: Option<String>,
    /// `APP_KAFKA_CLIENT_ID`; defaults to the service name.
    pub client_id: Option<String>,
    /// `APP_KAFKA_TOPIC_PARTITIONS`, default 6: partitions of topics the services create.
    pub topic_partitions: i32,
    /// `APP_KAFKA_REPLICATION_FACTOR`, default -1 (the broker's default).
    pub replication_factor: i16,
    /// `APP_KAFKA_CREATE_TOPICS`, default true: services create missing topics at start.
    pub create_topics: bool,
    /// `APP_KAFKA_COMPRESSION`, default none: none, gzip or snappy.
    pub compression: Compression,
    /// `APP_KAFKA_SECURITY_PROTOCOL` with `APP_KAFKA_SSL_CA_LOCATION` and
    /// `APP_KAFKA_SASL_MECHANISM`, `_USERNAME`, `_PASSWORD`.
    pub security: Security,
    /// `APP_KAFKA_SESSION_TIMEOUT_MS`, default 10000: a member silent this long is dead.
    pub session_timeout: Duration,
    /// `APP_KAFKA_HEARTBEAT_INTERVAL_MS`, default 1000.
    pub heartbeat_interval: Duration,
    /// `APP_KAFKA_REBALANCE_GRACE_MS`, default 1000: wait before taking over a dead
    /// member's partitions.
    pub rebalance_grace: Duration,
    /// `APP_KAFKA_FETCH_MAX_WAIT_MS`, default 500: how long the broker may hold a
    /// fetch on an order's path open waiting for data. Kafka answers as soon as data
    /// arrives; nisshi looks again only at half the remaining wait, so local setups
    /// use a short one.
    pub fetch_max_wait: Duration,
    /// `APP_KAFKA_VIEW_MAX_WAIT_MS`, default 500: the same for the readers that only
    /// keep a view up to date (order status; what was already published or
    /// notified), which are off an order's path. Kafka answers them as soon as data
    /// arrives whatever the wait; on nisshi this bounds how stale a view gets.
    pub view_max_wait: Duration,
    /// `APP_KAFKA_MAX_ATTEMPTS`, default 10: a consumed record that failed this many
    /// times (with backoff between attempts) is parked in its dead-letter topic.
    pub max_attempts: u32,
    /// `APP_KAFKA_LINGER_MS`, default 0: how long a record may wait for others to
    /// join its batch. Every event a service sends is awaited before it goes on (a
    /// handler commits only once its events are written), so a linger adds its whole
    /// length to each hop; batches still form while a request is in flight.
    pub linger: Duration,
}

#[derive(Debug, Clone)]
pub struct LoggerConfig {
    /// `APP_LOGGER_LEVEL`, default info.
    pub level: log::LevelFilter,
    /// `APP_LOGGER_ENCODING`, default json.
    pub encoding: LogEncoding,
}

#[derive(Debug, Clone)]
pub struct OrderConfig {
    /// `APP_ORDER_PUBLISH_TIMEOUT_MS`, default 5000: how long `POST` waits for the
    /// broker's acknowledgement before answering 503.
    pub publish_timeout: Duration,
    /// `APP_ORDER_IDEMPOTENCY_RETENTION_HOURS`, default 24: how long an
    /// `Idempotency-Key` keeps answering with the order it created.
    pub idempotency_retention: Duration,
}

#[derive(Debug, Clone)]
pub struct InventoryConfig {
    /// `APP_INVENTORY_STOCK_FILE`, default `configs/stock.json`.
    pub stock_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct NotificationConfig {
    /// `APP_NOTIFICATION_WEBHOOK_URL`: where outcomes are POSTed; unset means log only.
    pub webhook_url: Option<String>,
    /// `APP_NOTIFICATION_WEBHOOK_TIMEOUT_MS`, default 5000: per attempt.
    pub webhook_timeout: Duration,
    /// `APP_NOTIFICATION_WEBHOOK_RETRIES`, default 5: attempts after the first.
    pub webhook_retries: u32,
}

/// The setting or command that applies `fix`, as an operator of these
/// services reads it.
pub fn remedy(fix: Fix) -> &'static str {
    match fix {
        Fix::Brokers => "set APP_KAFKA_BROKERS to host:port[,host:port...]",
        Fix::BrokerRunning => {
            "check APP_KAFKA_BROKERS and that the broker runs (scripts/broker.sh status)"
        }
        Fix::CreateTopics => {
            "create it first (scripts/create-topics.sh, or the service binary's create-topics command)"
        }
        Fix::SecurityProtocol => "check APP_KAFKA_SECURITY_PROTOCOL against the broker's listener",
        Fix::CaLocation => {
            "set APP_KAFKA_SSL_CA_LOCATION to the CA file that signed the broker's certificate"
        }
        Fix::SaslMechanism => "set APP_KAFKA_SASL_MECHANISM to one the broker offers",
        Fix::SaslCredentials => "check APP_KAFKA_SASL_USERNAME and APP_KAFKA_SASL_PASSWORD",
        Fix::GroupId => "set APP_KAFKA_GROUP_ID",
    }
}

/// `; <remedy>` for an error that has a fix, nothing otherwise: the tail of an
/// error message for the operator.
pub fn hint(fix: Option<Fix>) -> String {
    fix.map(|f| format!("; {}", remedy(f))).unwrap_or_default()
}

impl Config {
    /// The configuration of this process: its arguments, env files and environment.
    pub fn load() -> Result<Self, ConfigError> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let file = config_file_argument(&args)?;
        Self::from_sources(file.as_deref(), Path::new("."), std::env::vars())
    }

    /// The configuration from an explicit file (or the default files under `dir`)
    /// and `env`, which wins over the file.
    pub fn from_sources(
        file: Option<&Path>,
        dir: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut values = match file {
            Some(path) => read_env_file(path)?,
            None => DEFAULT_FILES
                .iter()
                .map(|f| dir.join(f))
                .find(|p| p.is_file())
                .map(|p| read_env_file(&p))
                .transpose()?
                .unwrap_or_default(),
        };
        values.extend(env.into_iter().filter(|(k, _)| k.starts_with("APP_")));
        let raw: Raw = envy::prefixed("APP_")
            .from_iter(values)
            .map_err(|e| ConfigError::File {
                path: PathBuf::from("(environment)"),
                reason: e.to_string(),
            })?;
        raw.parse()
    }

    /// Consumer settings for `group` (unless `APP_KAFKA_GROUP_ID` overrides it)
    /// consuming `topics`.
    pub fn consumer(&self, default_group: &str, topics: &[&str]) -> ConsumerConfig {
        let group = self
            .kafka
            .group_id
            .clone()
            .unwrap_or_else(|| default_group.to_owned());
        let mut consumer = ConsumerConfig::new(group, topics.iter().copied());
        consumer.session_timeout = self.kafka.session_timeout;
        consumer.heartbeat_interval = self.kafka.heartbeat_interval;
        consumer.rebalance_grace = self.kafka.rebalance_grace;
        consumer.fetch_max_wait = self.kafka.fetch_max_wait;
        consumer
    }

    /// Producer settings for a service's events.
    pub fn producer(&self) -> ProducerConfig {
        ProducerConfig {
            compression: self.kafka.compression,
            linger: self.kafka.linger,
            ..ProducerConfig::default()
        }
    }

    /// The cluster settings for a service named `service`.
    pub fn cluster(&self, service: &str) -> ClusterConfig {
        let mut cluster = ClusterConfig::new(self.kafka.brokers.clone());
        cluster.client_id = self
            .kafka
            .client_id
            .clone()
            .unwrap_or_else(|| service.to_owned());
        cluster.security = self.kafka.security.clone();
        cluster
    }
}

/// `--config FILE` or `--config=FILE`, if given.
pub fn config_file_argument(args: &[String]) -> Result<Option<PathBuf>, ConfigError> {
    let mut file = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--config" {
            match it.next() {
                Some(path) => file = Some(PathBuf::from(path)),
                None => return Err(ConfigError::Argument("--config needs a FILE".to_owned())),
            }
        } else if let Some(path) = arg.strip_prefix("--config=") {
            file = Some(PathBuf::from(path));
        }
    }
    Ok(file)
}

/// Reads `KEY=VALUE` lines; `#` comments, blank lines, `export ` and quotes allowed.
fn read_env_file(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let mut values = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(ConfigError::File {
                path: path.to_owned(),
                reason: format!("line {}: expected KEY=VALUE", n + 1),
            });
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        values.insert(key.trim().to_owned(), value.to_owned());
    }
    Ok(values)
}

/// The variables as text, before parsing.
#[derive(Debug, Default, Deserialize)]
struct Raw {
    server_host: Option<String>,
    server_port: Option<String>,
    metrics_port: Option<String>,
    server_max_in_flight: Option<String>,
    server_request_timeout_ms: Option<String>,
    server_header_timeout_ms: Option<String>,
    kafka_max_attempts: Option<String>,
    order_idempotency_retention_hours: Option<String>,
    kafka_brokers: Option<String>,
    kafka_security_protocol: Option<String>,
    kafka_sasl_mechanism: Option<String>,
    kafka_sasl_username: Option<String>,
    kafka_sasl_password: Option<Secret>,
    kafka_ssl_ca_location: Option<String>,
    kafka_group_id: Option<String>,
    kafka_client_id: Option<String>,
    kafka_topic_partitions: Option<String>,
    kafka_replication_factor: Option<String>,
    kafka_create_topics: Option<String>,
    kafka_compression: Option<String>,
    kafka_session_timeout_ms: Option<String>,
    kafka_heartbeat_interval_ms: Option<String>,
    kafka_rebalance_grace_ms: Option<String>,
    kafka_fetch_max_wait_ms: Option<String>,
    kafka_linger_ms: Option<String>,
    kafka_view_max_wait_ms: Option<String>,
    logger_level: Option<String>,
    logger_encoding: Option<String>,
    order_publish_timeout_ms: Option<String>,
    inventory_stock_file: Option<String>,
    notification_webhook_url: Option<String>,
    notification_webhook_timeout_ms: Option<String>,
    notification_webhook_retries: Option<String>,
}

fn invalid(variable: &'static str, value: &str, expected: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        variable,
        value: value.to_owned(),
        expected: expected.into(),
    }
}

/// A present, non-blank value.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
    variable: &'static str,
    value: &Option<String>,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError> {
    let Some(text) = given(value) else {
        return Ok(default);
    };
    match text.parse::<T>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(invalid(
            variable,
            text,
            format!("a whole number from {} to {}", range.start(), range.end()),
        )),
    }
}

fn millis(
    variable: &'static str,
    value: &Option<String>,
    default_ms: u64,
) -> Result<Duration, ConfigError> {
    number(variable, value, default_ms, 1..=3_600_000).map(Duration::from_millis)
}

impl Raw {
    /// `APP_KAFKA_SECURITY_PROTOCOL` and the TLS and SASL settings it calls for.
    fn security(&self) -> Result<Security, ConfigError> {
        const PROTOCOL: &str = "APP_KAFKA_SECURITY_PROTOCOL";
        let protocol = given(&self.kafka_security_protocol)
            .unwrap_or("PLAINTEXT")
            .to_ascii_uppercase();
        let (tls, sasl) = match protocol.as_str() {
            "PLAINTEXT" => (false, false),
            "SSL" => (true, false),
            "SASL_PLAINTEXT" => (false, true),
            "SASL_SSL" => (true, true),
            _ => {
                return Err(invalid(
                    PROTOCOL,
                    &protocol,
                    "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
                ));
            }
        };
        let ca = given(&self.kafka_ssl_ca_location);
        if ca.is_some() && !tls {
            return Err(ConfigError::Inapplicable {
                variable: "APP_KAFKA_SSL_CA_LOCATION",
                value: ca.unwrap_or_default().to_owned(),
                why: "it only applies with TLS; set APP_KAFKA_SECURITY_PROTOCOL to SSL or SASL_SSL",
            });
        }
        let tls = if tls {
            Some(
                Tls::new(ca.map(Path::new)).map_err(|e| ConfigError::Invalid {
                    variable: if ca.is_some() {
                        "APP_KAFKA_SSL_CA_LOCATION"
                    } else {
                        PROTOCOL
                    },
                    value: ca.map_or_else(|| protocol.clone(), str::to_owned),
                    expected: e.to_string(),
                })?,
            )
        } else {
            None
        };

        let mechanism = given(&self.kafka_sasl_mechanism);
        let sasl = match (sasl, mechanism) {
            (false, None) => None,
            (false, Some(m)) => {
                return Err(ConfigError::Inapplicable {
                    variable: "APP_KAFKA_SASL_MECHANISM",
                    value: m.to_owned(),
                    why: "SASL needs APP_KAFKA_SECURITY_PROTOCOL=SASL_SSL (or SASL_PLAINTEXT)",
                });
            }
            (true, None) => {
                return Err(ConfigError::Missing {
                    variable: "APP_KAFKA_SASL_MECHANISM",
                    why: "APP_KAFKA_SECURITY_PROTOCOL uses SASL; set PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                });
            }
            (true, Some(m)) => Some(Sasl {
                mechanism: m.parse().map_err(|_| {
                    invalid(
                        "APP_KAFKA_SASL_MECHANISM",
                        m,
                        "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                    )
                })?,
                username: given(&self.kafka_sasl_username)
                    .ok_or(ConfigError::Missing {
                        variable: "APP_KAFKA_SASL_USERNAME",
                        why: "APP_KAFKA_SECURITY_PROTOCOL uses SASL",
                    })?
                    .to_owned(),
                password: self
                    .kafka_sasl_password
                    .clone()
                    .filter(|p| !p.expose().is_empty())
                    .ok_or(ConfigError::Missing {
                        variable: "APP_KAFKA_SASL_PASSWORD",
                        why: "APP_KAFKA_SECURITY_PROTOCOL uses SASL",
                    })?,
            }),
        };
        Ok(Security { tls, sasl })
    }

    fn parse(self) -> Result<Config, ConfigError> {
        let brokers: Vec<String> = given(&self.kafka_brokers)
            .unwrap_or("localhost:9092")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        for b in &brokers {
            let port_ok = b
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(invalid(
                    "APP_KAFKA_BROKERS",
                    given(&self.kafka_brokers).unwrap_or_default(),
                    "a comma-separated list of host:port",
                ));
            }
        }
        if brokers.is_empty() {
            return Err(invalid(
                "APP_KAFKA_BROKERS",
                "",
                "a comma-separated list of host:port",
            ));
        }

        let security = self.security()?;

        let compression = match given(&self.kafka_compression) {
            None => Compression::None,
            Some(c) => c
                .parse()
                .map_err(|_| invalid("APP_KAFKA_COMPRESSION", c, "none, gzip or snappy"))?,
        };
        let create_topics = match given(&self.kafka_create_topics).map(str::to_ascii_lowercase) {
            None => true,
            Some(v) if ["true", "1", "yes"].contains(&v.as_str()) => true,
            Some(v) if ["false", "0", "no"].contains(&v.as_str()) => false,
            Some(v) => return Err(invalid("APP_KAFKA_CREATE_TOPICS", &v, "true or false")),
        };

        let level = match given(&self.logger_level) {
            None => log::LevelFilter::Info,
            Some(l) => match l.to_ascii_lowercase().as_str() {
                "trace" => log::LevelFilter::Trace,
                "debug" => log::LevelFilter::Debug,
                "info" => log::LevelFilter::Info,
                "warn" | "warning" => log::LevelFilter::Warn,
                "error" => log::LevelFilter::Error,
                "off" => log::LevelFilter::Off,
                _ => {
                    return Err(invalid(
                        "APP_LOGGER_LEVEL",
                        l,
                        "trace, debug, info, warn, error or off",
                    ));
                }
            },
        };
        let encoding = match given(&self.logger_encoding).map(str::to_ascii_lowercase) {
            None => LogEncoding::Json,
            Some(e) if e == "json" => LogEncoding::Json,
            Some(e) if e == "console" => LogEncoding::Console,
            Some(e) => return Err(invalid("APP_LOGGER_ENCODING", &e, "json or console")),
        };

        let webhook_url = match given(&self.notification_webhook_url) {
            None => None,
            Some(url) if url.starts_with("http://") && url.len() > "http://".len() => {
                Some(url.to_owned())
            }
            Some(url) if url.starts_with("https://") => {
                return Err(ConfigError::Unsupported {
                    variable: "APP_NOTIFICATION_WEBHOOK_URL",
                    value: url.to_owned(),
                    why: "https webhooks need TLS, which is not built in yet; use an http:// URL",
                });
            }
            Some(url) => {
                return Err(invalid(
                    "APP_NOTIFICATION_WEBHOOK_URL",
                    url,
                    "an http:// URL",
                ));
            }
        };

        let session_timeout = millis(
            "APP_KAFKA_SESSION_TIMEOUT_MS",
            &self.kafka_session_timeout_ms,
            10_000,
        )?;
        let heartbeat_interval = millis(
            "APP_KAFKA_HEARTBEAT_INTERVAL_MS",
            &self.kafka_heartbeat_interval_ms,
            1_000,
        )?;
        // The lease (two thirds of the session) must outlive a few heartbeats.
        if heartbeat_interval * 3 > session_timeout {
            return Err(invalid(
                "APP_KAFKA_HEARTBEAT_INTERVAL_MS",
                &heartbeat_interval.as_millis().to_string(),
                format!(
                    "at most a third of APP_KAFKA_SESSION_TIMEOUT_MS ({} ms)",
                    session_timeout.as_millis()
                ),
            ));
        }

        let publish_timeout = millis(
            "APP_ORDER_PUBLISH_TIMEOUT_MS",
            &self.order_publish_timeout_ms,
            5_000,
        )?;
        let request_timeout = millis(
            "APP_SERVER_REQUEST_TIMEOUT_MS",
            &self.server_request_timeout_ms,
            15_000,
        )?;
        if request_timeout <= publish_timeout {
            return Err(invalid(
                "APP_SERVER_REQUEST_TIMEOUT_MS",
                &request_timeout.as_millis().to_string(),
                format!(
                    "more than APP_ORDER_PUBLISH_TIMEOUT_MS ({} ms), so that a POST can wait for the broker",
                    publish_timeout.as_millis()
                ),
            ));
        }

        Ok(Config {
            server: ServerConfig {
                host: given(&self.server_host).unwrap_or("0.0.0.0").to_owned(),
                port: number("APP_SERVER_PORT", &self.server_port, 8080u16, 0..=65535)?,
                metrics_port: match given(&self.metrics_port) {
                    None => None,
                    Some(_) => Some(number(
                        "APP_METRICS_PORT",
                        &self.metrics_port,
                        0u16,
                        0..=65535,
                    )?),
                },
                max_in_flight: number(
                    "APP_SERVER_MAX_IN_FLIGHT",
                    &self.server_max_in_flight,
                    1024usize,
                    1..=1_000_000,
                )?,
                request_timeout,
                header_timeout: millis(
                    "APP_SERVER_HEADER_TIMEOUT_MS",
                    &self.server_header_timeout_ms,
                    5_000,
                )?,
            },
            kafka: KafkaConfig {
                brokers,
                group_id: given(&self.kafka_group_id).map(str::to_owned),
                client_id: given(&self.kafka_client_id).map(str::to_owned),
                topic_partitions: number(
                    "APP_KAFKA_TOPIC_PARTITIONS",
                    &self.kafka_topic_partitions,
                    6,
                    1..=10_000,
                )?,
                replication_factor: number(
                    "APP_KAFKA_REPLICATION_FACTOR",
                    &self.kafka_replication_factor,
                    -1i16,
                    -1..=32,
                )
                .and_then(|rf| {
                    if rf == 0 {
                        Err(invalid(
                            "APP_KAFKA_REPLICATION_FACTOR",
                            "0",
                            "-1 (broker default) or 1 to 32",
                        ))
                    } else {
                        Ok(rf)
                    }
                })?,
                create_topics,
                compression,
                security,
                session_timeout,
                heartbeat_interval,
                rebalance_grace: millis(
                    "APP_KAFKA_REBALANCE_GRACE_MS",
                    &self.kafka_rebalance_grace_ms,
                    1_000,
                )?,
                fetch_max_wait: millis(
                    "APP_KAFKA_FETCH_MAX_WAIT_MS",
                    &self.kafka_fetch_max_wait_ms,
                    500,
                )?,
                view_max_wait: millis(
                    "APP_KAFKA_VIEW_MAX_WAIT_MS",
                    &self.kafka_view_max_wait_ms,
                    500,
                )?,
                max_attempts: number(
                    "APP_KAFKA_MAX_ATTEMPTS",
                    &self.kafka_max_attempts,
                    crate::kafka::middleware::dead_letter::DEFAULT_MAX_ATTEMPTS,
                    1..=1000,
                )?,
                linger: number("APP_KAFKA_LINGER_MS", &self.kafka_linger_ms, 0, 0..=60_000)
                    .map(Duration::from_millis)?,
            },
            logger: LoggerConfig { level, encoding },
            order: OrderConfig {
                publish_timeout,
                idempotency_retention: Duration::from_secs(
                    3600 * number(
                        "APP_ORDER_IDEMPOTENCY_RETENTION_HOURS",
                        &self.order_idempotency_retention_hours,
                        24u64,
                        1..=24 * 365,
                    )?,
                ),
            },
            inventory: InventoryConfig {
                stock_file: PathBuf::from(
                    given(&self.inventory_stock_file).unwrap_or("configs/stock.json"),
                ),
            },
            notification: NotificationConfig {
                webhook_url,
                webhook_timeout: millis(
                    "APP_NOTIFICATION_WEBHOOK_TIMEOUT_MS",
                    &self.notification_webhook_timeout_ms,
                    5_000,
                )?,
                webhook_retries: number(
                    "APP_NOTIFICATION_WEBHOOK_RETRIES",
                    &self.notification_webhook_retries,
                    5u32,
                    0..=100,
                )?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::SaslMechanism;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_sources(None, Path::new("/nonexistent"), env(pairs))
    }

    #[test]
    fn defaults_match_the_go_original() {
        let c = load(&[]).unwrap();
        assert_eq!(c.server.host, "0.0.0.0");
        assert_eq!(c.server.port, 8080);
        assert_eq!(c.kafka.brokers, vec!["localhost:9092"]);
        assert_eq!(c.logger.level, log::LevelFilter::Info);
        assert_eq!(c.logger.encoding, LogEncoding::Json);
        assert!(c.notification.webhook_url.is_none());
    }

    #[test]
    fn services_send_without_linger_and_views_wait_like_kafka_by_default() {
        let c = load(&[]).unwrap();
        assert_eq!(c.producer().linger, Duration::ZERO);
        assert_eq!(c.kafka.view_max_wait, Duration::from_millis(500));
        let c = load(&[
            ("APP_KAFKA_LINGER_MS", "5"),
            ("APP_KAFKA_VIEW_MAX_WAIT_MS", "100"),
        ])
        .unwrap();
        assert_eq!(c.producer().linger, Duration::from_millis(5));
        assert_eq!(c.kafka.view_max_wait, Duration::from_millis(100));
        let e = load(&[("APP_KAFKA_LINGER_MS", "-1")]).unwrap_err();
        assert!(e.to_string().starts_with("APP_KAFKA_LINGER_MS"), "{e}");
    }

    #[test]
    fn a_bad_value_names_the_variable_and_what_it_accepts() {
        let e = load(&[("APP_SERVER_PORT", "eighty")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "APP_SERVER_PORT=\"eighty\" is invalid: expected a whole number from 0 to 65535"
        );
        let e = load(&[("APP_LOGGER_ENCODING", "xml")]).unwrap_err();
        assert!(e.to_string().contains("APP_LOGGER_ENCODING"), "{e}");
        assert!(e.to_string().contains("json or console"), "{e}");
        let e = load(&[("APP_KAFKA_BROKERS", "localhost")]).unwrap_err();
        assert!(e.to_string().contains("host:port"), "{e}");
        let e = load(&[("APP_KAFKA_SECURITY_PROTOCOL", "TLS")]).unwrap_err();
        assert!(
            e.to_string().starts_with("APP_KAFKA_SECURITY_PROTOCOL"),
            "{e}"
        );
        let e = load(&[
            ("APP_KAFKA_SESSION_TIMEOUT_MS", "3000"),
            ("APP_KAFKA_HEARTBEAT_INTERVAL_MS", "2000"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("at most a third"), "{e}");
        let e = load(&[("APP_NOTIFICATION_WEBHOOK_URL", "ftp://x")]).unwrap_err();
        assert!(
            e.to_string().contains("APP_NOTIFICATION_WEBHOOK_URL"),
            "{e}"
        );
    }

    #[test]
    fn environment_wins_over_the_file_and_the_file_over_defaults() {
        let dir = std::env::temp_dir().join(format!("eda-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("configs")).unwrap();
        std::fs::write(
            dir.join("configs/config.env"),
            "# comment\nAPP_SERVER_PORT=9000\nexport APP_LOGGER_LEVEL=\"debug\"\n",
        )
        .unwrap();
        let c = Config::from_sources(None, &dir, env(&[("APP_SERVER_PORT", "9100")])).unwrap();
        assert_eq!(c.server.port, 9100, "environment first");
        assert_eq!(c.logger.level, log::LevelFilter::Debug, "then the file");

        // ./config.env is found before ./configs/config.env, and only one file is read.
        std::fs::write(dir.join("config.env"), "APP_SERVER_PORT=9200\n").unwrap();
        let c = Config::from_sources(None, &dir, env(&[])).unwrap();
        assert_eq!(c.server.port, 9200);
        assert_eq!(c.logger.level, log::LevelFilter::Info);

        // --config FILE beats both.
        let explicit = dir.join("mine.env");
        std::fs::write(&explicit, "APP_SERVER_PORT=9300\n").unwrap();
        let c = Config::from_sources(Some(&explicit), &dir, env(&[])).unwrap();
        assert_eq!(c.server.port, 9300);

        let missing = Config::from_sources(Some(&dir.join("nope.env")), &dir, env(&[]));
        assert!(matches!(missing, Err(ConfigError::File { .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn config_argument_forms() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            config_file_argument(&args(&["--config", "a.env"])).unwrap(),
            Some(PathBuf::from("a.env"))
        );
        assert_eq!(
            config_file_argument(&args(&["--config=b.env"])).unwrap(),
            Some(PathBuf::from("b.env"))
        );
        assert!(config_file_argument(&args(&["--config"])).is_err());
    }

    #[test]
    fn sasl_needs_credentials_and_hides_the_password() {
        let e = load(&[("APP_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("APP_KAFKA_SASL_MECHANISM is required"),
            "{e}"
        );
        let e = load(&[
            ("APP_KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("APP_KAFKA_SASL_MECHANISM", "PLAIN"),
        ])
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("APP_KAFKA_SASL_USERNAME is required"),
            "{e}"
        );
        let e = load(&[("APP_KAFKA_SASL_MECHANISM", "PLAIN")]).unwrap_err();
        assert!(e.to_string().contains("SASL_SSL"), "{e}");
        let c = load(&[
            ("APP_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
            ("APP_KAFKA_SASL_MECHANISM", "scram-sha-256"),
            ("APP_KAFKA_SASL_USERNAME", "svc"),
            ("APP_KAFKA_SASL_PASSWORD", "hunter2"),
        ])
        .unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        let sasl = c.kafka.security.sasl.unwrap();
        assert_eq!(sasl.mechanism, SaslMechanism::ScramSha256);
        assert!(c.kafka.security.tls.is_none());
    }

    #[test]
    fn tls_takes_a_ca_file_or_the_built_in_roots() {
        let c = load(&[("APP_KAFKA_SECURITY_PROTOCOL", "SSL")]).unwrap();
        assert_eq!(c.kafka.security.protocol(), "SSL");
        assert_eq!(c.cluster("svc").security.protocol(), "SSL");
        let e = load(&[
            ("APP_KAFKA_SECURITY_PROTOCOL", "SSL"),
            ("APP_KAFKA_SSL_CA_LOCATION", "/nonexistent/ca.pem"),
        ])
        .unwrap_err();
        assert!(
            e.to_string().starts_with("APP_KAFKA_SSL_CA_LOCATION"),
            "{e}"
        );
        let e = load(&[("APP_KAFKA_SSL_CA_LOCATION", "/etc/ca.pem")]).unwrap_err();
        assert!(e.to_string().contains("SSL or SASL_SSL"), "{e}");
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }
}
