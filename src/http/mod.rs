//! HTTP infrastructure every service shares: the server with the limits a public
//! endpoint needs ([`server`]), and the operator routes (`/health`, `/ready`,
//! `/metrics`) with per-request metrics and access log ([`ops`]), and the
//! per-client request rate limit ([`rate_limit`]). The services' own routes build
//! on it.

pub mod ops;
pub mod rate_limit;
pub mod server;
