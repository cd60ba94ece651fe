//! Who is calling the order API: bearer credentials checked against the keys the
//! operator configured, turned into the [`Principal`] (the customer) a request
//! acts for.
//!
//! Three modes (`APP_AUTH_MODE`): `jwt` verifies JSON Web Tokens signed with
//! HS256, RS256 or ES256 ([`jwt`]); `api_keys` looks bearer keys up in a file
//! ([`api_keys`]); `off` lets anyone in and is for local development only. The
//! keys are loaded once at start by [`Authenticator::load`], so a missing or
//! malformed one stops the order service with an error naming its variable;
//! secrets never reach a log line or an error message.

pub mod api_keys;
pub mod jwt;

use crate::config::{AuthConfig, AuthMode, ConfigError};
use crate::domain::id_problem;

pub use self::api_keys::ApiKeys;
pub use self::jwt::JwtVerifier;

/// The customer a request acts for, as its credentials prove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The customer id: the token's subject (or configured claim), or the
    /// customer an API key belongs to.
    pub customer_id: String,
}

impl Principal {
    /// A principal for `customer_id`, if it is a customer id exactly as an
    /// order's `customer_id` is once parsed ([`crate::domain::id_problem`]):
    /// `"alice "` or `"alice\u{a0}"` would otherwise act as `alice`, whose
    /// orders a body's trimmed id names.
    pub fn customer(customer_id: &str) -> Option<Self> {
        id_problem(customer_id).is_none().then(|| Self {
            customer_id: customer_id.to_owned(),
        })
    }
}

/// Why a request's credentials were refused: answered `401` with this text, so
/// it says what to fix without revealing anything about the keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("authentication required: send Authorization: Bearer <token>")]
    Missing,
    /// An `Authorization` header that is not `Bearer <credentials>`.
    #[error("the Authorization header must be Bearer <token>")]
    NotBearer,
    /// A token past its `exp`.
    #[error("the token has expired; get a new one")]
    Expired,
    /// A token before its `nbf`.
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// A token that is not well formed, or signed with an algorithm or key this
    /// service does not take.
    #[error("the token is not accepted: {0}")]
    Invalid(String),
    /// A token whose signature does not verify.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// A token for another issuer or audience.
    #[error("the token is not for this service: {0}")]
    WrongParty(&'static str),
    /// A valid token without a usable customer claim.
    #[error(
        "the token has no {0} claim naming a customer (1 to 128 bytes, no control characters, no surrounding white space)"
    )]
    NoCustomer(String),
    /// An API key that is not in the keys file.
    #[error("the API key is not known")]
    UnknownKey,
}

/// How this service checks callers.
#[derive(Debug)]
pub enum Authenticator {
    /// Bearer JWTs.
    Jwt(Box<JwtVerifier>),
    /// Bearer API keys.
    ApiKeys(ApiKeys),
    /// Everyone is let in.
    Off,
}

impl std::fmt::Display for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Jwt(v) => write!(
                f,
                "bearer JWTs ({:?}; the customer is claim `{}`)",
                v.algorithms(),
                v.customer_claim()
            ),
            Self::ApiKeys(keys) => write!(f, "bearer API keys ({keys:?})"),
            Self::Off => f.write_str("nothing: authentication is off"),
        }
    }
}

impl Authenticator {
    /// Loads the keys `config` names, checking that its mode has what it needs
    /// and nothing it would ignore.
    pub fn load(config: &AuthConfig) -> Result<Self, ConfigError> {
        let jwt_settings: [(&'static str, bool); 3] = [
            (
                config
                    .hs256_secret
                    .as_ref()
                    .map_or("APP_AUTH_JWT_HS256_SECRET", |s| s.variable()),
                config.hs256_secret.is_some(),
            ),
            (
                "APP_AUTH_JWT_PUBLIC_KEY_FILE",
                config.public_key_file.is_some(),
            ),
            ("APP_AUTH_JWKS_FILE", config.jwks_file.is_some()),
        ];
        let inapplicable = |variable: &'static str, why: &'static str| ConfigError::Inapplicable {
            variable,
            value: "(set)".to_owned(),
            why,
        };
        match config.mode {
            AuthMode::Jwt => {
                if config.api_keys_file.is_some() {
                    return Err(inapplicable(
                        "APP_AUTH_API_KEYS_FILE",
                        "API keys are read with APP_AUTH_MODE=api_keys; this service runs with jwt",
                    ));
                }
                JwtVerifier::load(config).map(|v| Self::Jwt(Box::new(v)))
            }
            AuthMode::ApiKeys => {
                if let Some((variable, _)) = jwt_settings.iter().find(|(_, set)| *set) {
                    return Err(inapplicable(
                        variable,
                        "JWT keys are read with APP_AUTH_MODE=jwt; this service runs with api_keys",
                    ));
                }
                let path = config
                    .api_keys_file
                    .as_deref()
                    .ok_or(ConfigError::Missing {
                        variable: "APP_AUTH_API_KEYS_FILE",
                        why: "APP_AUTH_MODE=api_keys reads the keys from it",
                    })?;
                ApiKeys::load(path).map(Self::ApiKeys)
            }
            AuthMode::Off => Ok(Self::Off),
        }
    }

    /// Whether callers are checked at all.
    pub fn is_on(&self) -> bool {
        !matches!(self, Self::Off)
    }

    /// The principal of a request with this `Authorization` header; `None` when
    /// authentication is off.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
    ) -> Result<Option<Principal>, AuthError> {
        if let Self::Off = self {
            return Ok(None);
        }
        let credentials = bearer(authorization)?;
        match self {
            Self::Jwt(verifier) => verifier.verify(credentials).map(Some),
            Self::ApiKeys(keys) => keys.verify(credentials).map(Some),
            Self::Off => Ok(None),
        }
    }
}

/// The credentials of `Authorization: Bearer <credentials>` (RFC 6750; the
/// scheme is case-insensitive).
fn bearer(authorization: Option<&str>) -> Result<&str, AuthError> {
    let header = authorization.ok_or(AuthError::Missing)?;
    let (scheme, credentials) = header.trim().split_once(' ').ok_or(AuthError::NotBearer)?;
    let credentials = credentials.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || credentials.is_empty() {
        return Err(AuthError::NotBearer);
    }
    Ok(credentials)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_credentials_are_taken_from_the_header() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Ok("abc"));
        assert_eq!(bearer(None), Err(AuthError::Missing));
        assert_eq!(
            bearer(Some("Basic dXNlcjpwdw==")),
            Err(AuthError::NotBearer)
        );
        assert_eq!(bearer(Some("Bearer ")), Err(AuthError::NotBearer));
        assert_eq!(bearer(Some("abc")), Err(AuthError::NotBearer));
    }

    #[test]
    fn principals_are_valid_customer_ids() {
        assert!(Principal::customer("").is_none());
        assert!(Principal::customer(&"c".repeat(129)).is_none());
        assert_eq!(Principal::customer("c-1").unwrap().customer_id, "c-1");
        // One customer, one spelling: no surrounding white space, Unicode's
        // included, and no control characters.
        for other in [
            "alice ",
            " alice",
            "alice\u{a0}",
            "\u{2003}alice",
            "al\u{7}ice",
            "alice\n",
        ] {
            assert!(Principal::customer(other).is_none(), "{other:?}");
        }
        assert!(Principal::customer("alice smith").is_some());
    }
}
