//! order-service: takes orders over HTTP, publishes `order.created`, and shows each
//! order's current status from a view built from the event topics.
//!
//! Besides serving, the binary mints HS256 tokens for local development and for
//! operators who issue their own (`order-service mint-token --subject ID`).

pub mod http;
pub mod view;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use self::http::AppState;
use self::view::OrderViews;
use super::{Service, ServiceError, connect};
use crate::auth::Authenticator;
use crate::config::{Config, ConfigError, OrderConfig};
use crate::domain::OrderIdKey;
use crate::events::topics;
use crate::http::ops::{BrokerProbe, OpsServer};
use crate::http::rate_limit::RateLimiter;
use crate::http::server::{self, Limits};
use crate::kafka::{Follower, Producer, ProducerConfig};
use crate::shutdown::{Shutdown, ShutdownTrigger};

/// Where `/metrics`, `/health` and `/ready` are served unless
/// `APP_METRICS_PORT` says otherwise (9100 is `node_exporter`'s).
pub const METRICS_PORT: u16 = 9103;

/// The built service, listening but not yet serving.
pub struct OrderService {
    listener: TcpListener,
    state: Arc<AppState>,
    limits: Limits,
    ops: OpsServer,
}

/// The secrets the API needs, loaded before anything connects, so that a
/// missing or malformed one stops the service at once, naming its variable.
fn load_secrets(config: &OrderConfig) -> Result<(Authenticator, OrderIdKey), ConfigError> {
    let auth = Authenticator::load(&config.auth)?;
    let source = config
        .idempotency_secret
        .as_ref()
        .ok_or(ConfigError::Missing {
            variable: "APP_ORDER_IDEMPOTENCY_SECRET",
            why: "order ids made from Idempotency-Keys are keyed with it; give every instance the same one, at least 32 bytes (or set APP_ORDER_IDEMPOTENCY_SECRET_FILE)",
        })?;
    let secret = source.load()?;
    let order_ids =
        OrderIdKey::new(secret.expose().as_bytes()).map_err(|expected| ConfigError::Invalid {
            variable: source.variable(),
            value: "***".to_owned(),
            expected,
        })?;
    Ok((auth, order_ids))
}

/// The longest life `mint-token` gives a token: a year and a day. Tokens are
/// not revocable, so a longer one is a key in all but name.
const MAX_TOKEN_TTL_SECS: u64 = 366 * 24 * 3600;

/// `mint-token --subject ID [--ttl SECONDS]`: prints an HS256 token for the
/// customer `ID`, valid for `SECONDS` (3600 by default).
fn mint_token(config: &Config, args: &[String]) -> ExitCode {
    const USAGE: &str = "usage: order-service mint-token --subject CUSTOMER_ID [--ttl SECONDS]";
    let mut subject = None;
    let mut ttl = Duration::from_secs(3600);
    let args = crate::config::without_config_argument(args);
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match (arg, it.next()) {
            ("--subject", Some(s)) => subject = Some(s.to_owned()),
            ("--ttl", Some(t)) => {
                let Some(secs) = t
                    .parse()
                    .ok()
                    .filter(|s| (1..=MAX_TOKEN_TTL_SECS).contains(s))
                else {
                    eprintln!(
                        "--ttl takes whole seconds from 1 to {MAX_TOKEN_TTL_SECS} (366 days)\n{USAGE}"
                    );
                    return ExitCode::from(64);
                };
                ttl = Duration::from_secs(secs);
            }
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(64);
            }
        }
    }
    let Some(subject) = subject.filter(|s| crate::auth::Principal::customer(s).is_some()) else {
        eprintln!(
            "--subject takes a customer id: 1 to 128 bytes, no control characters, no surrounding white space\n{USAGE}"
        );
        return ExitCode::from(64);
    };
    let minted = match Authenticator::load(&config.order.auth) {
        Ok(Authenticator::Jwt(verifier)) => verifier.mint(&subject, ttl),
        Ok(_) => Err("tokens are minted with APP_AUTH_MODE=jwt and an HS256 secret".to_owned()),
        Err(e) => Err(e.to_string()),
    };
    match minted {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("order-service mint-token: {e}");
            ExitCode::from(78)
        }
    }
}

impl OrderService {
    /// Where the API listens (useful with `APP_SERVER_PORT=0`).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where `/metrics` is served (useful with `APP_METRICS_PORT=0`).
    pub fn metrics_addr(&self) -> std::io::Result<SocketAddr> {
        self.ops.local_addr()
    }
}

impl Service for OrderService {
    const NAME: &'static str = "order-service";

    fn command(config: &Config, name: &str, args: &[String]) -> Option<ExitCode> {
        (name == "mint-token").then(|| mint_token(config, args))
    }

    async fn build(config: Config) -> Result<Self, ServiceError> {
        let (auth, order_ids) = load_secrets(&config.order)?;
        if auth.is_on() {
            log::info!("order API: callers authenticate with {auth}");
        } else {
            log::warn!(
                "APP_AUTH_MODE=off: the order API lets anyone create and read any customer's orders; use it for local development only"
            );
        }
        let cluster = connect(&config, Self::NAME).await?;
        let producer = Producer::new(
            cluster.clone(),
            ProducerConfig {
                // A POST waits for the acknowledgement; this bounds the wait.
                delivery_timeout: config.order.publish_timeout,
                ..config.producer()
            },
        );

        let views = Arc::new(OrderViews::new());
        let follower = {
            let views = Arc::clone(&views);
            Follower::start(
                &cluster,
                &topics::ALL,
                config.kafka.view_max_wait,
                move |message| views.apply(&message),
            )
            .await?
        };

        let addr = format!("{}:{}", config.server.host, config.server.port);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| ServiceError::Bind { addr, source })?;
        log::info!(
            "order-service listening on http://{}",
            listener.local_addr().map_err(|source| ServiceError::Bind {
                addr: config.server.host.clone(),
                source
            })?
        );

        let ops = OpsServer::bind(&config, METRICS_PORT).await?;

        Ok(Self {
            listener,
            state: Arc::new(AppState {
                producer,
                views,
                follower,
                probe: BrokerProbe::new(cluster),
                in_flight: Default::default(),
                idempotency_retention: config.order.idempotency_retention,
                order_ids,
                auth,
                limiter: RateLimiter::new(config.server.rate_limit),
            }),
            limits: Limits::from_config(&config.server),
            ops,
        })
    }

    async fn run_until_stopped(self, shutdown: Shutdown) -> Result<(), ServiceError> {
        let state = Arc::clone(&self.state);
        tokio::spawn({
            let state = Arc::clone(&state);
            async move {
                state.follower.caught_up().await;
                log::info!("order view caught up: {} orders", state.views.len());
            }
        });
        // Scrapes see the shutdown: the operations port closes last.
        let (ops_stop, ops_shutdown) = ShutdownTrigger::new();
        let details = {
            let state = Arc::clone(&state);
            move || http::ready_details(&state)
        };
        let ops = tokio::spawn(self.ops.serve(state.probe.clone(), details, ops_shutdown));
        // In-flight requests finish before `run` returns.
        server::serve(
            self.listener,
            warp::service(http::routes(Arc::clone(&state))),
            self.limits,
            shutdown,
        )
        .await;
        state.producer.close().await;
        state.follower.stop();
        ops_stop.trigger();
        let _ = ops.await;
        log::info!("order-service stopped");
        Ok(())
    }
}
