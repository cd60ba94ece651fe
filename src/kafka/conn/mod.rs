//! Connections to the brokers: the shared [`Cluster`] every producer, fetcher
//! and group member talks through, how those connections are secured
//! ([`security`]: TLS, SASL), the loopback tunnel that encrypts rskafka's
//! connections, and a small protocol connection (`wire`) for the requests
//! rskafka does not make (topic configs, group offsets, SASL on admin requests).

mod cluster;
pub mod security;
mod tunnel;
pub(crate) mod wire;

pub use self::cluster::{Cluster, ClusterConfig, ClusterError, Lane};
pub use rskafka::client::partition::Isolation;
