//! order-service: takes orders over HTTP, publishes `order.created`, and shows each
//! order's current status from a view built from the event topics.

pub mod http;
pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use self::http::AppState;
use self::view::OrderViews;
use super::{Service, ServiceError, connect};
use crate::config::Config;
use crate::events::topics;
use crate::http::server::{self, Limits};
use crate::kafka::{Follower, Producer, ProducerConfig};
use crate::shutdown::Shutdown;

/// The built service, listening but not yet serving.
pub struct OrderService {
    listener: TcpListener,
    state: Arc<AppState>,
    limits: Limits,
}

impl OrderService {
    /// Where the API listens (useful with `APP_SERVER_PORT=0`).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl Service for OrderService {
    const NAME: &'static str = "order-service";

    async fn build(config: Config) -> Result<Self, ServiceError> {
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

        Ok(Self {
            listener,
            state: Arc::new(AppState {
                producer,
                views,
                follower,
                cluster,
                in_flight: Default::default(),
                idempotency_retention: config.order.idempotency_retention,
            }),
            limits: Limits::from_config(&config.server),
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
        log::info!("order-service stopped");
        Ok(())
    }
}
