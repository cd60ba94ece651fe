//! From the `APP_*` texts to typed settings: one function per section, each
//! value parsed once, with an error that names the variable and what it
//! accepts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::variables::{Default, VARIABLES, Variable};
use super::{
    AuthConfig, AuthMode, Config, ConfigError, InventoryConfig, KafkaConfig, LogEncoding,
    LoggerConfig, NotificationConfig, OrderConfig, RateLimit, SecretSource, ServerConfig,
};
use crate::http_client::HttpUrl;
use crate::kafka::ProcessingGuarantee;
use crate::kafka::{Sasl, Security, Tls};
use crate::secret::Secret;

/// The `APP_*` values given, before parsing, with the defaults behind them.
#[derive(Debug, Default)]
pub(super) struct Values {
    pub(super) given: HashMap<String, String>,
}

fn invalid(variable: &'static str, value: &str, expected: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        variable,
        value: value.to_owned(),
        expected: expected.into(),
    }
}

impl Values {
    fn variable(name: &'static str) -> &'static Variable {
        VARIABLES
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| unreachable!("{name} is not in VARIABLES"))
    }

    /// A present, non-blank value.
    fn given(&self, name: &'static str) -> Option<&str> {
        self.given
            .get(name)
            .map(|v| v.trim())
            .filter(|s| !s.is_empty())
    }

    /// The value given, or the default when it has one.
    fn get(&self, name: &'static str) -> Option<&str> {
        self.given(name).or(match Self::variable(name).default {
            Default::Value(d) => Some(d),
            Default::Unset | Default::PerService(_) => None,
        })
    }

    /// The value given, or the default; for variables that have one.
    fn text(&self, name: &'static str) -> &str {
        self.get(name).unwrap_or_default()
    }

    /// A whole number in `range`.
    fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
        &self,
        name: &'static str,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError> {
        let text = self.text(name);
        match text.parse::<T>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(invalid(
                name,
                text,
                format!("a whole number from {} to {}", range.start(), range.end()),
            )),
        }
    }

    /// A number given, if one is.
    fn optional_number<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
        &self,
        name: &'static str,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<Option<T>, ConfigError> {
        match self.given(name) {
            None => Ok(None),
            Some(_) => self.number(name, range).map(Some),
        }
    }

    /// Milliseconds, from 1 ms to an hour.
    fn millis(&self, name: &'static str) -> Result<Duration, ConfigError> {
        self.number(name, 1..=3_600_000).map(Duration::from_millis)
    }

    /// One of `choices` (matched without case), each with its value.
    fn choice<T: Copy>(
        &self,
        name: &'static str,
        choices: &[(&str, T)],
        expected: &str,
    ) -> Result<T, ConfigError> {
        let text = self.text(name);
        choices
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case(text))
            .map(|(_, v)| *v)
            .ok_or_else(|| invalid(name, text, expected))
    }

    /// A yes-or-no setting: `true`, `1`, `yes`, `false`, `0` or `no`.
    fn flag(&self, name: &'static str) -> Result<bool, ConfigError> {
        self.choice(
            name,
            &[
                ("true", true),
                ("1", true),
                ("yes", true),
                ("false", false),
                ("0", false),
                ("no", false),
            ],
            "true or false",
        )
    }

    /// A secret in `name` or in the file `name_file` names; not both.
    fn secret(
        &self,
        name: &'static str,
        name_file: &'static str,
    ) -> Result<Option<SecretSource>, ConfigError> {
        let value = self.given.get(name).filter(|v| !v.is_empty());
        match (value, self.given(name_file)) {
            (Some(_), Some(path)) => Err(ConfigError::Inapplicable {
                variable: name_file,
                value: path.to_owned(),
                why: "the secret is given twice; set either the variable or its _FILE, not both",
            }),
            (Some(secret), None) => Ok(Some(SecretSource::Value {
                variable: name,
                secret: Secret::new(secret.clone()),
            })),
            (None, Some(path)) => Ok(Some(SecretSource::File {
                variable: name_file,
                path: PathBuf::from(path),
            })),
            (None, None) => Ok(None),
        }
    }

    /// `APP_KAFKA_SECURITY_PROTOCOL` and the TLS and SASL settings it calls for.
    fn security(&self) -> Result<Security, ConfigError> {
        const PROTOCOL: &str = "APP_KAFKA_SECURITY_PROTOCOL";
        let (tls, sasl) = self.choice(
            PROTOCOL,
            &[
                ("PLAINTEXT", (false, false)),
                ("SSL", (true, false)),
                ("SASL_PLAINTEXT", (false, true)),
                ("SASL_SSL", (true, true)),
            ],
            "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
        )?;
        let protocol = self.text(PROTOCOL).to_ascii_uppercase();
        let ca = self.given("APP_KAFKA_SSL_CA_LOCATION");
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

        let mechanism = self.given("APP_KAFKA_SASL_MECHANISM");
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
                username: self
                    .given("APP_KAFKA_SASL_USERNAME")
                    .ok_or(ConfigError::Missing {
                        variable: "APP_KAFKA_SASL_USERNAME",
                        why: "APP_KAFKA_SECURITY_PROTOCOL uses SASL",
                    })?
                    .to_owned(),
                password: self
                    .secret("APP_KAFKA_SASL_PASSWORD", "APP_KAFKA_SASL_PASSWORD_FILE")?
                    .ok_or(ConfigError::Missing {
                        variable: "APP_KAFKA_SASL_PASSWORD",
                        why: "APP_KAFKA_SECURITY_PROTOCOL uses SASL (or set APP_KAFKA_SASL_PASSWORD_FILE)",
                    })?
                    .load()?,
            }),
        };
        Ok(Security { tls, sasl })
    }

    fn server(&self) -> Result<ServerConfig, ConfigError> {
        Ok(ServerConfig {
            host: self.text("APP_SERVER_HOST").to_owned(),
            port: self.number("APP_SERVER_PORT", 0..=65535)?,
            metrics_port: self.optional_number("APP_METRICS_PORT", 0..=65535)?,
            rate_limit: RateLimit {
                per_second: f64::from(
                    self.number("APP_SERVER_RATE_LIMIT_PER_SECOND", 0u32..=1_000_000)?,
                ),
                burst: f64::from(self.number("APP_SERVER_RATE_LIMIT_BURST", 1u32..=1_000_000)?),
            },
            max_in_flight: self.number("APP_SERVER_MAX_IN_FLIGHT", 1..=1_000_000)?,
            max_connections_per_client: self
                .number("APP_SERVER_MAX_CONNECTIONS_PER_CLIENT", 0..=1_000_000)?,
            request_timeout: self.millis("APP_SERVER_REQUEST_TIMEOUT_MS")?,
            header_timeout: self.millis("APP_SERVER_HEADER_TIMEOUT_MS")?,
        })
    }

    fn kafka(&self) -> Result<KafkaConfig, ConfigError> {
        let session_timeout = self.millis("APP_KAFKA_SESSION_TIMEOUT_MS")?;
        let heartbeat_interval = self.millis("APP_KAFKA_HEARTBEAT_INTERVAL_MS")?;
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
        let request_timeout = self.millis("APP_KAFKA_REQUEST_TIMEOUT_MS")?;
        // A fetch the broker holds for its whole wait must still be answered in time.
        let longest_wait = self
            .millis("APP_KAFKA_FETCH_MAX_WAIT_MS")?
            .max(self.millis("APP_KAFKA_VIEW_MAX_WAIT_MS")?);
        if request_timeout < longest_wait + Duration::from_secs(1) {
            return Err(invalid(
                "APP_KAFKA_REQUEST_TIMEOUT_MS",
                &request_timeout.as_millis().to_string(),
                format!(
                    "at least a second more than the longest fetch wait (APP_KAFKA_FETCH_MAX_WAIT_MS or APP_KAFKA_VIEW_MAX_WAIT_MS, {} ms)",
                    longest_wait.as_millis()
                ),
            ));
        }
        let replication_factor = self.number("APP_KAFKA_REPLICATION_FACTOR", -1i16..=32)?;
        if replication_factor == 0 {
            return Err(invalid(
                "APP_KAFKA_REPLICATION_FACTOR",
                "0",
                "-1 (broker default) or 1 to 32",
            ));
        }
        Ok(KafkaConfig {
            brokers: self.text("APP_KAFKA_BROKERS").parse().map_err(|()| {
                invalid(
                    "APP_KAFKA_BROKERS",
                    self.text("APP_KAFKA_BROKERS"),
                    "a comma-separated list of host:port",
                )
            })?,
            group_id: self.given("APP_KAFKA_GROUP_ID").map(str::to_owned),
            client_id: self.given("APP_KAFKA_CLIENT_ID").map(str::to_owned),
            topic_partitions: self.number("APP_KAFKA_TOPIC_PARTITIONS", 1..=10_000)?,
            replication_factor,
            create_topics: self.flag("APP_KAFKA_CREATE_TOPICS")?,
            compression: self.text("APP_KAFKA_COMPRESSION").parse().map_err(|_| {
                invalid(
                    "APP_KAFKA_COMPRESSION",
                    self.text("APP_KAFKA_COMPRESSION"),
                    "none, gzip or snappy",
                )
            })?,
            security: self.security()?,
            request_timeout,
            session_timeout,
            heartbeat_interval,
            rebalance_grace: self.millis("APP_KAFKA_REBALANCE_GRACE_MS")?,
            fetch_max_wait: self.millis("APP_KAFKA_FETCH_MAX_WAIT_MS")?,
            view_max_wait: self.millis("APP_KAFKA_VIEW_MAX_WAIT_MS")?,
            max_attempts: self.number("APP_KAFKA_MAX_ATTEMPTS", 1..=1000)?,
            linger: self
                .number("APP_KAFKA_LINGER_MS", 0..=60_000)
                .map(Duration::from_millis)?,
            idempotence: self.flag("APP_KAFKA_IDEMPOTENCE")?,
            max_in_flight: self.number("APP_KAFKA_MAX_IN_FLIGHT", 1..=5)?,
            processing_guarantee: self.choice(
                "APP_KAFKA_PROCESSING_GUARANTEE",
                &[
                    ("exactly_once", ProcessingGuarantee::ExactlyOnce),
                    ("at_least_once", ProcessingGuarantee::AtLeastOnce),
                ],
                "exactly_once or at_least_once",
            )?,
            transaction_timeout: self
                .number("APP_KAFKA_TRANSACTION_TIMEOUT_MS", 1_000..=900_000)
                .map(Duration::from_millis)?,
            fence_legacy_transactional_ids: self
                .flag("APP_KAFKA_FENCE_LEGACY_TRANSACTIONAL_IDS")?,
        })
    }

    fn logger(&self) -> Result<LoggerConfig, ConfigError> {
        use log::LevelFilter;
        Ok(LoggerConfig {
            level: self.choice(
                "APP_LOGGER_LEVEL",
                &[
                    ("trace", LevelFilter::Trace),
                    ("debug", LevelFilter::Debug),
                    ("info", LevelFilter::Info),
                    ("warn", LevelFilter::Warn),
                    ("warning", LevelFilter::Warn),
                    ("error", LevelFilter::Error),
                    ("off", LevelFilter::Off),
                ],
                "trace, debug, info, warn, error or off",
            )?,
            encoding: self.choice(
                "APP_LOGGER_ENCODING",
                &[
                    ("json", LogEncoding::Json),
                    ("console", LogEncoding::Console),
                ],
                "json or console",
            )?,
        })
    }

    fn order(&self, server: &ServerConfig) -> Result<OrderConfig, ConfigError> {
        let publish_timeout = self.millis("APP_ORDER_PUBLISH_TIMEOUT_MS")?;
        if server.request_timeout <= publish_timeout {
            return Err(invalid(
                "APP_SERVER_REQUEST_TIMEOUT_MS",
                &server.request_timeout.as_millis().to_string(),
                format!(
                    "more than APP_ORDER_PUBLISH_TIMEOUT_MS ({} ms), so that a POST can wait for the broker",
                    publish_timeout.as_millis()
                ),
            ));
        }
        Ok(OrderConfig {
            publish_timeout,
            idempotency_retention: Duration::from_secs(
                3600 * self.number("APP_ORDER_IDEMPOTENCY_RETENTION_HOURS", 1u64..=24 * 365)?,
            ),
            idempotency_secret: self.secret(
                "APP_ORDER_IDEMPOTENCY_SECRET",
                "APP_ORDER_IDEMPOTENCY_SECRET_FILE",
            )?,
            auth: self.auth()?,
        })
    }

    /// The `APP_AUTH_*` settings, each parsed; which combination a mode needs is
    /// checked when the order service loads the keys (`crate::auth`).
    fn auth(&self) -> Result<AuthConfig, ConfigError> {
        let path = |name| self.given(name).map(PathBuf::from);
        Ok(AuthConfig {
            mode: self.choice(
                "APP_AUTH_MODE",
                &[
                    ("jwt", AuthMode::Jwt),
                    ("api_keys", AuthMode::ApiKeys),
                    ("api-keys", AuthMode::ApiKeys),
                    ("off", AuthMode::Off),
                ],
                "jwt, api_keys or off",
            )?,
            hs256_secret: self.secret(
                "APP_AUTH_JWT_HS256_SECRET",
                "APP_AUTH_JWT_HS256_SECRET_FILE",
            )?,
            public_key_file: path("APP_AUTH_JWT_PUBLIC_KEY_FILE"),
            jwks_file: path("APP_AUTH_JWKS_FILE"),
            issuer: self.given("APP_AUTH_JWT_ISSUER").map(str::to_owned),
            audience: self.given("APP_AUTH_JWT_AUDIENCE").map(str::to_owned),
            customer_claim: self.text("APP_AUTH_CUSTOMER_CLAIM").to_owned(),
            leeway: Duration::from_secs(self.number("APP_AUTH_JWT_LEEWAY_SECONDS", 0u64..=3600)?),
            api_keys_file: path("APP_AUTH_API_KEYS_FILE"),
        })
    }

    fn notification(&self) -> Result<NotificationConfig, ConfigError> {
        const URL: &str = "APP_NOTIFICATION_WEBHOOK_URL";
        let webhook_url = match self.given(URL) {
            None => None,
            Some(url) if url.starts_with("https://") => {
                return Err(ConfigError::Unsupported {
                    variable: URL,
                    value: crate::http_client::redacted(url),
                    why: "https webhooks need TLS, which is not built in yet; use an http:// URL",
                });
            }
            // Shown without its path and query, where a webhook's token is.
            Some(url) => {
                Some(url.parse::<HttpUrl>().map_err(|_| {
                    invalid(URL, &crate::http_client::redacted(url), "an http:// URL")
                })?)
            }
        };
        Ok(NotificationConfig {
            webhook_url,
            webhook_timeout: self.millis("APP_NOTIFICATION_WEBHOOK_TIMEOUT_MS")?,
            webhook_retries: self.number("APP_NOTIFICATION_WEBHOOK_RETRIES", 0..=100)?,
        })
    }

    pub(super) fn parse(self) -> Result<Config, ConfigError> {
        let server = self.server()?;
        let kafka = self.kafka()?;
        let notification = self.notification()?;
        // Under exactly-once a handler call is cut off at its transaction's
        // deadline: a webhook that may take longer would be cut off on every
        // attempt and never deliver.
        let budget = crate::kafka::handler_budget(kafka.transaction_timeout);
        if kafka.processing_guarantee == ProcessingGuarantee::ExactlyOnce
            && notification.webhook_url.is_some()
            && notification.webhook_budget() > budget
        {
            return Err(invalid(
                "APP_KAFKA_TRANSACTION_TIMEOUT_MS",
                &kafka.transaction_timeout.as_millis().to_string(),
                format!(
                    "at least {} ms under exactly-once: a handler call gets four fifths of it, and a webhook call may take {} ms (APP_NOTIFICATION_WEBHOOK_TIMEOUT_MS × (APP_NOTIFICATION_WEBHOOK_RETRIES + 1), plus the waits between); or lower those",
                    (notification.webhook_budget() * 5 / 4).as_millis() + 1,
                    notification.webhook_budget().as_millis()
                ),
            ));
        }
        Ok(Config {
            kafka,
            logger: self.logger()?,
            order: self.order(&server)?,
            inventory: InventoryConfig {
                stock_file: PathBuf::from(self.text("APP_INVENTORY_STOCK_FILE")),
            },
            notification,
            unknown: self
                .given
                .keys()
                .filter(|k| VARIABLES.iter().all(|v| v.name != k.as_str()))
                .cloned()
                .collect(),
            server,
        })
    }
}
