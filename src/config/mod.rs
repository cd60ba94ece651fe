//! Service configuration from `APP_*` variables, parsed once at start.
//!
//! The sources and their priority are the Go original's: the environment, then the
//! first env file found of `--config FILE`, `./config.env` and
//! `./configs/config.env`, then the defaults. Every value is parsed into its type
//! here, so a bad value stops the service at start with a message naming the
//! variable and what it accepts, and the rest of the code never re-checks a string.
//! Secrets are wrapped in [`Secret`], whose `Debug` and `Display` print `***`.
//!
//! [`VARIABLES`] lists every variable with its default and meaning: the parser
//! takes its defaults from there, and `docs/configuration.md` is generated from
//! it (a test keeps the two equal).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::http_client::HttpUrl;
use crate::kafka::backoff::BackoffConfig;
use crate::kafka::{
    ClusterConfig, Compression, ConsumerConfig, Fix, ProcessingGuarantee, ProducerConfig, Security,
};
pub use crate::secret::Secret;

mod parse;
mod variables;

use self::parse::Values;
pub use self::variables::{Default, VARIABLES, Variable, reference_table};

/// The env files tried, in order, when no `--config FILE` is given.
pub const DEFAULT_FILES: [&str; 2] = ["config.env", "configs/config.env"];

/// A configuration error, naming the variable or file at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A value that does not parse, or is out of range.
    #[error("{variable}={value:?} is invalid: expected {expected}")]
    Invalid {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What it accepts.
        expected: String,
    },
    /// A variable another setting needs is not set.
    #[error("{variable} is required: {why}")]
    Missing {
        /// The variable.
        variable: &'static str,
        /// Which setting needs it, and what to set.
        why: &'static str,
    },
    /// A variable set where it has no effect.
    #[error("{variable}={value:?} does not apply here: {why}")]
    Inapplicable {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// Why it does not apply, and what would make it.
        why: &'static str,
    },
    /// A value this build cannot serve.
    #[error("{variable}={value:?} is not supported by this build: {why}")]
    Unsupported {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// Why, and what to use instead.
        why: &'static str,
    },
    /// An env file that cannot be read or parsed.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A command-line argument that is not `--config FILE`.
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
    /// The HTTP servers.
    pub server: ServerConfig,
    /// The Kafka connection, topics and groups.
    pub kafka: KafkaConfig,
    /// Logging.
    pub logger: LoggerConfig,
    /// The order service.
    pub order: OrderConfig,
    /// The inventory service.
    pub inventory: InventoryConfig,
    /// The notification service.
    pub notification: NotificationConfig,
    /// `APP_*` variables given that no service reads: a typo, most likely.
    pub unknown: Vec<String>,
}

/// Bootstrap brokers: a non-empty list of `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Brokers(Vec<String>);

impl Brokers {
    /// The brokers, in the order given.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl std::str::FromStr for Brokers {
    type Err = ();

    fn from_str(list: &str) -> Result<Self, ()> {
        let brokers: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let valid = |b: &String| {
            b.rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        };
        if brokers.is_empty() || !brokers.iter().all(valid) {
            return Err(());
        }
        Ok(Self(brokers))
    }
}

impl std::fmt::Display for Brokers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// How the HTTP servers listen.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `APP_SERVER_HOST`: the address the HTTP servers bind to.
    pub host: String,
    /// `APP_SERVER_PORT`; 0 picks a free port.
    pub port: u16,
    /// `APP_METRICS_PORT`: where each service serves `/metrics`, `/health` and
    /// `/ready` for the internal network. Unset, each service has its own
    /// default, so that all three fit on one host.
    pub metrics_port: Option<u16>,
    /// `APP_SERVER_RATE_LIMIT_PER_SECOND` and `_BURST`: requests per client.
    pub rate_limit: RateLimit,
    /// `APP_SERVER_MAX_IN_FLIGHT`: requests served at once; more are
    /// answered `503` with `Retry-After` rather than queued without bound.
    pub max_in_flight: usize,
    /// `APP_SERVER_MAX_CONNECTIONS_PER_CLIENT`: connections one client
    /// address may hold (an IPv6 address by its /64); 0 is no limit.
    pub max_connections_per_client: usize,
    /// `APP_SERVER_REQUEST_TIMEOUT_MS`: the longest a request may
    /// take; must exceed `APP_ORDER_PUBLISH_TIMEOUT_MS`.
    pub request_timeout: Duration,
    /// `APP_SERVER_HEADER_TIMEOUT_MS`: how long a client may take to
    /// send a request's headers before the connection is closed.
    pub header_timeout: Duration,
}

/// How many API requests one client may make: a token bucket of `burst`
/// requests refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second; 0 is no limit.
    pub per_second: f64,
    /// Requests at once above the rate.
    pub burst: f64,
}

/// A secret given in a variable or in a file a variable names; files are read
/// only by the service that needs the secret ([`SecretSource::load`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The value of `variable`.
    Value {
        /// The variable that held it.
        variable: &'static str,
        /// The secret.
        secret: Secret,
    },
    /// The contents of `path`, named by `variable`.
    File {
        /// The `*_FILE` variable.
        variable: &'static str,
        /// The file.
        path: PathBuf,
    },
}

impl SecretSource {
    /// The variable that gives the secret.
    pub fn variable(&self) -> &'static str {
        match self {
            Self::Value { variable, .. } | Self::File { variable, .. } => variable,
        }
    }

    /// The secret, read from its file if it is in one (without a final newline).
    /// An unreadable or empty file names its variable.
    pub fn load(&self) -> Result<Secret, ConfigError> {
        match self {
            Self::Value { secret, .. } => Ok(secret.clone()),
            Self::File { variable, path } => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                    variable,
                    value: path.display().to_string(),
                    expected: format!("a readable file with the secret ({e})"),
                })?;
                let secret = text.strip_suffix('\n').unwrap_or(&text);
                let secret = secret.strip_suffix('\r').unwrap_or(secret);
                if secret.is_empty() {
                    return Err(ConfigError::Invalid {
                        variable,
                        value: path.display().to_string(),
                        expected: "a file holding the secret; this one is empty".to_owned(),
                    });
                }
                Ok(Secret::new(secret))
            }
        }
    }
}

/// How the services reach Kafka and use it.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `APP_KAFKA_BROKERS`.
    pub brokers: Brokers,
    /// `APP_KAFKA_GROUP_ID`; each service has its own default.
    pub group_id: Option<String>,
    /// `APP_KAFKA_CLIENT_ID`; defaults to the service name.
    pub client_id: Option<String>,
    /// `APP_KAFKA_TOPIC_PARTITIONS`: partitions of topics the services create.
    pub topic_partitions: i32,
    /// `APP_KAFKA_REPLICATION_FACTOR`; -1 is the broker's default.
    pub replication_factor: i16,
    /// `APP_KAFKA_CREATE_TOPICS`: services create missing topics at start.
    pub create_topics: bool,
    /// `APP_KAFKA_COMPRESSION`: none, gzip or snappy.
    pub compression: Compression,
    /// `APP_KAFKA_SECURITY_PROTOCOL` with `APP_KAFKA_SSL_CA_LOCATION` and
    /// `APP_KAFKA_SASL_MECHANISM`, `_USERNAME`, `_PASSWORD`.
    pub security: Security,
    /// `APP_KAFKA_REQUEST_TIMEOUT_MS`: how long a broker may leave a request
    /// unanswered before it is sent again.
    pub request_timeout: Duration,
    /// `APP_KAFKA_SESSION_TIMEOUT_MS`: a member silent this long is dead.
    pub session_timeout: Duration,
    /// `APP_KAFKA_HEARTBEAT_INTERVAL_MS`.
    pub heartbeat_interval: Duration,
    /// `APP_KAFKA_REBALANCE_GRACE_MS`: wait before taking over a dead
    /// member's partitions.
    pub rebalance_grace: Duration,
    /// `APP_KAFKA_FETCH_MAX_WAIT_MS`: how long the broker may hold a
    /// fetch on an order's path open waiting for data. Kafka answers as soon as data
    /// arrives; nisshi looks again only at half the remaining wait, so local setups
    /// use a short one.
    pub fetch_max_wait: Duration,
    /// `APP_KAFKA_VIEW_MAX_WAIT_MS`: the same for the readers that only
    /// keep a view up to date (order status; what was already published or
    /// notified), which are off an order's path. Kafka answers them as soon as data
    /// arrives whatever the wait; on nisshi this bounds how stale a view gets.
    pub view_max_wait: Duration,
    /// `APP_KAFKA_MAX_ATTEMPTS`: a consumed record that failed this many
    /// times (with backoff between attempts) is parked in its dead-letter topic.
    pub max_attempts: u32,
    /// `APP_KAFKA_LINGER_MS`: how long a record may wait for others to
    /// join its batch. Every event a service sends is awaited before it goes on (a
    /// handler commits only once its events are written), so a linger adds its whole
    /// length to each hop; batches still form while a request is in flight.
    pub linger: Duration,
    /// `APP_KAFKA_IDEMPOTENCE`: producers carry producer ids and sequence
    /// numbers, so that a retried batch is written once.
    pub idempotence: bool,
    /// `APP_KAFKA_MAX_IN_FLIGHT`: produce requests on their way per
    /// partition at once, with idempotence.
    pub max_in_flight: usize,
    /// `APP_KAFKA_PROCESSING_GUARANTEE`: whether the consuming services
    /// process in transactions.
    pub processing_guarantee: ProcessingGuarantee,
    /// `APP_KAFKA_TRANSACTION_TIMEOUT_MS`: under exactly-once, how long a
    /// transaction may stay open before its coordinator aborts it. Each
    /// handler call gets its transaction's deadline less a fifth, for the
    /// commit ([`crate::kafka::handler_budget`]).
    pub transaction_timeout: Duration,
    /// `APP_KAFKA_FENCE_LEGACY_TRANSACTIONAL_IDS`: under exactly-once, also
    /// fence the transactional ids of earlier versions on taking a partition.
    pub fence_legacy_transactional_ids: bool,
}

/// What is logged, and how.
#[derive(Debug, Clone)]
pub struct LoggerConfig {
    /// `APP_LOGGER_LEVEL`.
    pub level: log::LevelFilter,
    /// `APP_LOGGER_ENCODING`.
    pub encoding: LogEncoding,
}

/// The order service's own settings.
#[derive(Debug, Clone)]
pub struct OrderConfig {
    /// `APP_ORDER_PUBLISH_TIMEOUT_MS`: how long `POST` waits for the
    /// broker's acknowledgement before answering 503.
    pub publish_timeout: Duration,
    /// `APP_ORDER_IDEMPOTENCY_RETENTION_HOURS`: how long an
    /// `Idempotency-Key` keeps answering with the order it created.
    pub idempotency_retention: Duration,
    /// `APP_ORDER_IDEMPOTENCY_SECRET` or `_FILE`: the key of order ids made
    /// from idempotency keys; the order service refuses to start without it.
    pub idempotency_secret: Option<SecretSource>,
    /// `APP_AUTH_*`: who may call the API.
    pub auth: AuthConfig,
}

/// `APP_AUTH_MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Bearer JWTs.
    Jwt,
    /// Bearer API keys from a file.
    ApiKeys,
    /// No authentication: local development only.
    Off,
}

/// The order API's authentication settings, as given; the order service loads
/// the keys they name when it starts, so the other services need none.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `APP_AUTH_MODE`.
    pub mode: AuthMode,
    /// `APP_AUTH_JWT_HS256_SECRET` or `_FILE`.
    pub hs256_secret: Option<SecretSource>,
    /// `APP_AUTH_JWT_PUBLIC_KEY_FILE`.
    pub public_key_file: Option<PathBuf>,
    /// `APP_AUTH_JWKS_FILE`.
    pub jwks_file: Option<PathBuf>,
    /// `APP_AUTH_JWT_ISSUER`.
    pub issuer: Option<String>,
    /// `APP_AUTH_JWT_AUDIENCE`.
    pub audience: Option<String>,
    /// `APP_AUTH_CUSTOMER_CLAIM`.
    pub customer_claim: String,
    /// `APP_AUTH_JWT_LEEWAY_SECONDS`.
    pub leeway: Duration,
    /// `APP_AUTH_API_KEYS_FILE`.
    pub api_keys_file: Option<PathBuf>,
}

/// The inventory service's own settings.
#[derive(Debug, Clone)]
pub struct InventoryConfig {
    /// `APP_INVENTORY_STOCK_FILE`: the initial stock.
    pub stock_file: PathBuf,
}

/// The notification service's own settings.
#[derive(Debug, Clone)]
pub struct NotificationConfig {
    /// `APP_NOTIFICATION_WEBHOOK_URL`: where outcomes are `POSTed`; unset means log only.
    pub webhook_url: Option<HttpUrl>,
    /// `APP_NOTIFICATION_WEBHOOK_TIMEOUT_MS`: per attempt.
    pub webhook_timeout: Duration,
    /// `APP_NOTIFICATION_WEBHOOK_RETRIES`: attempts after the first.
    pub webhook_retries: u32,
}

impl NotificationConfig {
    /// The waits between webhook attempts: from 200 ms, doubling, at most 5 s.
    pub const WEBHOOK_BACKOFF: BackoffConfig = BackoffConfig {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(5),
    };

    /// The longest one notification's webhook call can take: every attempt
    /// timing out, and the longest wait between each.
    pub fn webhook_budget(&self) -> Duration {
        let attempts = self.webhook_retries.saturating_add(1);
        let waits = Self::WEBHOOK_BACKOFF.longest(self.webhook_retries);
        self.webhook_timeout
            .saturating_mul(attempts)
            .saturating_add(waits)
    }
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
        Fix::LogAppendTime => {
            "set it on the topic: kafka-configs.sh --bootstrap-server BROKER --alter --entity-type topics --entity-name TOPIC --add-config message.timestamp.type=LogAppendTime (scripts/kafka-tool.sh configs … locally)"
        }
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
        values.retain(|k, _| k.starts_with("APP_"));
        Values { given: values }.parse()
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
        consumer.processing_guarantee = self.kafka.processing_guarantee;
        consumer.transaction_timeout = self.kafka.transaction_timeout;
        consumer.fence_legacy_transactional_ids = self.kafka.fence_legacy_transactional_ids;
        consumer.transaction_producer = self.producer();
        consumer
    }

    /// Producer settings for a service's events.
    pub fn producer(&self) -> ProducerConfig {
        ProducerConfig {
            compression: self.kafka.compression,
            linger: self.kafka.linger,
            idempotence: self.kafka.idempotence,
            max_in_flight: self.kafka.max_in_flight,
            ..ProducerConfig::default()
        }
    }

    /// The cluster settings for a service named `service`.
    pub fn cluster(&self, service: &str) -> ClusterConfig {
        let mut cluster = ClusterConfig::new(self.kafka.brokers.as_slice().to_vec());
        cluster.client_id = self
            .kafka
            .client_id
            .clone()
            .unwrap_or_else(|| service.to_owned());
        cluster.security = self.kafka.security.clone();
        cluster.request_timeout = self.kafka.request_timeout;
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

/// `args` without `--config FILE` and `--config=FILE`, for a command that reads
/// its own arguments after [`Config::load`] read that one.
pub fn without_config_argument(args: &[String]) -> Vec<&str> {
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--config" {
            it.next();
        } else if !arg.starts_with("--config=") {
            rest.push(arg.as_str());
        }
    }
    rest
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::SaslMechanism;

    /// `docs/configuration.md` holds the table `reference_table` makes; run with
    /// `EDA_WRITE_DOCS=1` to rewrite it after changing `VARIABLES`.
    #[test]
    fn the_configuration_reference_is_generated_from_the_variables() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let (begin, end) = ("<!-- variables: begin -->\n", "<!-- variables: end -->");
        let start = doc.find(begin).expect("the begin marker") + begin.len();
        let stop = doc.find(end).expect("the end marker");
        let table = reference_table();
        if doc[start..stop] != table {
            if std::env::var_os("EDA_WRITE_DOCS").is_some() {
                std::fs::write(&path, format!("{}{table}{}", &doc[..start], &doc[stop..])).unwrap();
            } else {
                panic!(
                    "docs/configuration.md is not the table of VARIABLES; rewrite it with EDA_WRITE_DOCS=1 cargo test --lib config"
                );
            }
        }
    }

    #[test]
    fn every_variable_has_a_default_that_parses_and_the_kafka_layers_agree() {
        let c = load(&[]).unwrap();
        let consumer = ConsumerConfig::new("g", ["t"]);
        assert_eq!(c.kafka.session_timeout, consumer.session_timeout);
        assert_eq!(c.kafka.heartbeat_interval, consumer.heartbeat_interval);
        assert_eq!(c.kafka.rebalance_grace, consumer.rebalance_grace);
        assert_eq!(c.kafka.fetch_max_wait, consumer.fetch_max_wait);
        assert_eq!(
            c.kafka.max_attempts,
            crate::kafka::middleware::dead_letter::DEFAULT_MAX_ATTEMPTS
        );
        let names: std::collections::HashSet<&str> = VARIABLES.iter().map(|v| v.name).collect();
        assert_eq!(names.len(), VARIABLES.len(), "a variable is listed twice");
    }

    #[test]
    fn unknown_variables_are_reported_not_ignored() {
        let c = load(&[("APP_SERVER_PROT", "9000"), ("APP_SERVER_PORT", "9001")]).unwrap();
        assert_eq!(c.unknown, ["APP_SERVER_PROT"]);
        assert_eq!(c.server.port, 9001);
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_sources(None, Path::new("/nonexistent"), env(pairs))
    }

    /// Under exactly-once a webhook call must fit in a handler call's share of
    /// the transaction timeout, or it would be cut off on every attempt.
    #[test]
    fn the_transaction_timeout_must_hold_a_whole_webhook_call() {
        let hook = ("APP_NOTIFICATION_WEBHOOK_URL", "http://127.0.0.1:9/hook");
        let c = load(&[hook]).unwrap();
        assert_eq!(c.kafka.transaction_timeout, Duration::from_secs(60));
        // 6 attempts of 5 s and waits of 0.2 + 0.4 + 0.8 + 1.6 + 3.2 s.
        assert_eq!(
            c.notification.webhook_budget(),
            Duration::from_millis(36_200)
        );
        assert_eq!(
            c.consumer("g", &["t"]).transaction_timeout,
            Duration::from_secs(60)
        );
        let e = load(&[hook, ("APP_KAFKA_TRANSACTION_TIMEOUT_MS", "10000")]).unwrap_err();
        let message = e.to_string();
        assert!(
            message.contains("APP_KAFKA_TRANSACTION_TIMEOUT_MS"),
            "{message}"
        );
        assert!(message.contains("at least 45251 ms"), "{message}");
        // Fewer retries fit; so does at-least-once, which has no deadline.
        load(&[
            hook,
            ("APP_KAFKA_TRANSACTION_TIMEOUT_MS", "10000"),
            ("APP_NOTIFICATION_WEBHOOK_RETRIES", "0"),
        ])
        .unwrap();
        load(&[
            hook,
            ("APP_KAFKA_TRANSACTION_TIMEOUT_MS", "10000"),
            ("APP_KAFKA_PROCESSING_GUARANTEE", "at_least_once"),
        ])
        .unwrap();
    }

    #[test]
    fn defaults_match_the_go_original() {
        let c = load(&[]).unwrap();
        assert_eq!(c.server.host, "0.0.0.0");
        assert_eq!(c.server.port, 8080);
        assert_eq!(c.kafka.brokers.as_slice(), ["localhost:9092"]);
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
