//! The credentials every test service runs with: an HS256 secret and an
//! idempotency secret of the tests' own, and tokens minted with them, so that
//! the tests call the API the way a client with a token does.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

/// The HS256 secret of the test services.
pub const JWT_SECRET: &str = "tests-only-hs256-secret-0123456789abcdef";
/// The idempotency secret of the test services.
pub const ID_SECRET: &str = "tests-only-idempotency-secret-0123456789";

/// The settings that give a service the test credentials, with the request
/// rate limit and the connections per client off: the tests' load comes from
/// one address (tests that check them set their own).
pub fn env() -> [(&'static str, &'static str); 4] {
    [
        ("APP_AUTH_JWT_HS256_SECRET", JWT_SECRET),
        ("APP_ORDER_IDEMPOTENCY_SECRET", ID_SECRET),
        ("APP_SERVER_RATE_LIMIT_PER_SECOND", "0"),
        ("APP_SERVER_MAX_CONNECTIONS_PER_CLIENT", "0"),
    ]
}

/// Seconds since the epoch, as JWT claims count time.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token of `claims`, signed with `secret`.
pub fn token_of(secret: &str, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// An HS256 token for `customer` valid for an hour, signed with `secret`.
pub fn token_signed_with(secret: &str, customer: &str) -> String {
    token_of(
        secret,
        &json!({"sub": customer, "iat": now(), "exp": now() + 3600}),
    )
}

/// A valid token for `customer`.
pub fn token(customer: &str) -> String {
    token_signed_with(JWT_SECRET, customer)
}

/// `Bearer <token>` for `customer`.
pub fn bearer(customer: &str) -> String {
    format!("Bearer {}", token(customer))
}
