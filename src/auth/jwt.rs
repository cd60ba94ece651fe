//! Bearer JWTs (RFC 7519), verified with the keys the operator configured: an
//! HS256 shared secret, a PEM public key (RS256 for RSA, ES256 for P-256), and
//! the keys of a JWKS file, any of them at once (a key rotation runs old and
//! new side by side).
//!
//! The key decides the algorithm, never the token: a token is checked only with
//! keys of the algorithm its header names (and of its `kid`, when both carry
//! one), so an RS256 public key can never be used as an HS256 secret, and `none`
//! is never accepted. `exp` is required; `nbf`, `iss` and `aud` are checked as
//! configured, with `APP_AUTH_JWT_LEEWAY_SECONDS` of clock skew.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use super::{AuthError, Principal};
use crate::config::{AuthConfig, ConfigError};
use crate::secret::Secret;

/// `APP_AUTH_JWT_AUDIENCE` that takes tokens of any audience: the explicit
/// opt-out a public key or a JWKS needs to go without one.
pub const ANY_AUDIENCE: &str = "*";

/// Shortest HS256 secret accepted, in bytes (RFC 7518 §3.2: at least the
/// hash's size).
pub const MIN_HS256_SECRET_LEN: usize = 32;

/// One key tokens may be signed with.
struct VerifyingKey {
    algorithm: Algorithm,
    kid: Option<String>,
    key: DecodingKey,
}

/// Checks bearer JWTs.
pub struct JwtVerifier {
    keys: Vec<VerifyingKey>,
    /// The checks of every token, whatever its algorithm.
    validation: Validation,
    /// Those checks pinned to each configured algorithm, made once at start
    /// rather than per request.
    validations: Vec<(Algorithm, Validation)>,
    customer_claim: String,
    /// The HS256 secret, for [`JwtVerifier::mint`].
    hs256: Option<Secret>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.algorithms())
            .field("customer_claim", &self.customer_claim)
            .finish_non_exhaustive()
    }
}

fn invalid(
    variable: &'static str,
    value: impl Into<String>,
    expected: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        variable,
        value: value.into(),
        expected: expected.into(),
    }
}

impl JwtVerifier {
    /// The verifier `config` describes; at least one key source must be set.
    pub fn load(config: &AuthConfig) -> Result<Self, ConfigError> {
        let mut keys = Vec::new();
        let mut hs256 = None;
        if let Some(source) = &config.hs256_secret {
            let secret = source.load()?;
            if secret.expose().len() < MIN_HS256_SECRET_LEN {
                return Err(invalid(
                    source.variable(),
                    "***",
                    format!(
                        "a secret of at least {MIN_HS256_SECRET_LEN} bytes (this one has {}); make one with `openssl rand -hex 32`",
                        secret.expose().len()
                    ),
                ));
            }
            keys.push(VerifyingKey {
                algorithm: Algorithm::HS256,
                kid: None,
                key: DecodingKey::from_secret(secret.expose().as_bytes()),
            });
            hs256 = Some(secret);
        }
        if let Some(path) = &config.public_key_file {
            keys.push(public_key(path)?);
        }
        if let Some(path) = &config.jwks_file {
            keys.extend(jwks(path)?);
        }
        if keys.is_empty() {
            return Err(ConfigError::Missing {
                variable: "APP_AUTH_JWT_HS256_SECRET_FILE",
                why: "APP_AUTH_MODE=jwt needs a key to verify tokens: set APP_AUTH_JWT_HS256_SECRET(_FILE), APP_AUTH_JWT_PUBLIC_KEY_FILE or APP_AUTH_JWKS_FILE (or APP_AUTH_MODE=off for local development)",
            });
        }
        // An identity provider signs tokens for every application it serves:
        // without an audience, a token it made for any of them would pass here.
        if (config.public_key_file.is_some() || config.jwks_file.is_some())
            && config.audience.is_none()
        {
            return Err(ConfigError::Missing {
                variable: "APP_AUTH_JWT_AUDIENCE",
                why: "tokens checked with an identity provider's keys (APP_AUTH_JWT_PUBLIC_KEY_FILE, APP_AUTH_JWKS_FILE) must be meant for this service: set the `aud` your provider gives it, or `*` to take any audience",
            });
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp"]);
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        match config.audience.as_deref() {
            // No audience with a shared secret (the operator's own tokens), or
            // any audience asked for by name: a token's `aud` is not judged.
            None | Some(ANY_AUDIENCE) => validation.validate_aud = false,
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
        }
        let mut verifier = Self {
            keys,
            validation,
            validations: Vec::new(),
            customer_claim: config.customer_claim.clone(),
            hs256,
        };
        verifier.validations = verifier
            .algorithms()
            .into_iter()
            .map(|algorithm| {
                let mut pinned = verifier.validation.clone();
                pinned.algorithms = vec![algorithm];
                (algorithm, pinned)
            })
            .collect();
        Ok(verifier)
    }

    /// The claim that names the customer.
    pub fn customer_claim(&self) -> &str {
        &self.customer_claim
    }

    /// The algorithms tokens may use, one per key kind configured.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        let mut algorithms: Vec<Algorithm> = Vec::new();
        for key in &self.keys {
            if !algorithms.contains(&key.algorithm) {
                algorithms.push(key.algorithm);
            }
        }
        algorithms
    }

    /// The customer `token` was issued for, if it verifies.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            AuthError::Invalid("it is not a JWT (header.claims.signature)".to_owned())
        })?;
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            let accepted: Vec<String> =
                self.algorithms().iter().map(|a| format!("{a:?}")).collect();
            return Err(AuthError::Invalid(format!(
                "alg {:?} is not accepted here (this service takes {})",
                header.alg,
                accepted.join(", ")
            )));
        };
        let candidates: Vec<&VerifyingKey> = self
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(wanted), Some(kid)) => wanted == kid,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(AuthError::Invalid("no key has the token's kid".to_owned()));
        }
        let mut refused = AuthError::BadSignature;
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => return self.principal(&data.claims),
                Err(e) => match refusal(e.kind()) {
                    // Another key of the same algorithm may have signed it.
                    AuthError::BadSignature => refused = AuthError::BadSignature,
                    other => return Err(other),
                },
            }
        }
        Err(refused)
    }

    fn principal(&self, claims: &Map<String, Value>) -> Result<Principal, AuthError> {
        claims
            .get(&self.customer_claim)
            .and_then(Value::as_str)
            .and_then(Principal::customer)
            .ok_or_else(|| AuthError::NoCustomer(self.customer_claim.clone()))
    }

    /// An HS256 token for `customer`, valid for `ttl`, with the configured
    /// issuer and audience: for local development and for operators who issue
    /// their own tokens (`order-service mint-token`).
    pub fn mint(&self, customer: &str, ttl: Duration) -> Result<String, String> {
        let secret = self.hs256.as_ref().ok_or(
            "minting needs the HS256 secret: set APP_AUTH_JWT_HS256_SECRET or APP_AUTH_JWT_HS256_SECRET_FILE",
        )?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        let mut claims = Map::new();
        claims.insert(self.customer_claim.clone(), customer.into());
        claims.insert("iat".to_owned(), now.into());
        claims.insert("exp".to_owned(), (now + ttl.as_secs()).into());
        if let Some(issuer) = self.validation.iss.as_ref().and_then(|i| i.iter().next()) {
            claims.insert("iss".to_owned(), issuer.clone().into());
        }
        if let Some(audience) = self.validation.aud.as_ref().and_then(|a| a.iter().next()) {
            claims.insert("aud".to_owned(), audience.clone().into());
        }
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.expose().as_bytes()),
        )
        .map_err(|e| e.to_string())
    }
}

/// What a refusal from the JWT library tells the client.
fn refusal(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidIssuer => AuthError::WrongParty("its iss is not the configured issuer"),
        ErrorKind::InvalidAudience => {
            AuthError::WrongParty("its aud is not the configured audience")
        }
        ErrorKind::MissingRequiredClaim(claim) => {
            AuthError::Invalid(format!("it has no {claim} claim"))
        }
        ErrorKind::InvalidAlgorithm => {
            AuthError::Invalid("its alg does not match the key".to_owned())
        }
        _ => AuthError::Invalid("it is not a well-formed JWT".to_owned()),
    }
}

/// The key of a PEM file: RSA for RS256, EC (P-256) for ES256.
fn public_key(path: &Path) -> Result<VerifyingKey, ConfigError> {
    const VARIABLE: &str = "APP_AUTH_JWT_PUBLIC_KEY_FILE";
    let pem = std::fs::read(path).map_err(|e| {
        invalid(
            VARIABLE,
            path.display().to_string(),
            format!("a readable PEM file ({e})"),
        )
    })?;
    let (algorithm, key) = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        (Algorithm::RS256, key)
    } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        (Algorithm::ES256, key)
    } else {
        return Err(invalid(
            VARIABLE,
            path.display().to_string(),
            "a PEM public key, RSA (RS256) or EC P-256 (ES256): -----BEGIN PUBLIC KEY-----",
        ));
    };
    Ok(VerifyingKey {
        algorithm,
        kid: None,
        key,
    })
}

/// The signing keys of a JWKS file; keys marked for encryption are skipped.
fn jwks(path: &Path) -> Result<Vec<VerifyingKey>, ConfigError> {
    const VARIABLE: &str = "APP_AUTH_JWKS_FILE";
    let at = || path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(VARIABLE, at(), format!("a readable JWKS file ({e})")))?;
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|e| invalid(VARIABLE, at(), format!("a JSON Web Key Set ({e})")))?;
    let mut keys = Vec::new();
    for (n, jwk) in set.keys.iter().enumerate() {
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            continue;
        }
        let algorithm = match (jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(KeyAlgorithm::HS256), AlgorithmParameters::OctetKey(oct)) => {
                // As short a secret as APP_AUTH_JWT_HS256_SECRET refuses would
                // be as guessable here. Base64url: six bits a character.
                let bytes = oct.value.trim_end_matches('=').len() * 6 / 8;
                if bytes < MIN_HS256_SECRET_LEN {
                    return Err(invalid(
                        VARIABLE,
                        at(),
                        format!(
                            "HS256 keys of at least {MIN_HS256_SECRET_LEN} bytes, as for APP_AUTH_JWT_HS256_SECRET; key {n} has {bytes}"
                        ),
                    ));
                }
                Algorithm::HS256
            }
            (Some(KeyAlgorithm::RS256) | None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
            (Some(KeyAlgorithm::ES256) | None, AlgorithmParameters::EllipticCurve(ec))
                if ec.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            (alg, _) => {
                return Err(invalid(
                    VARIABLE,
                    at(),
                    format!(
                        "keys for HS256, RS256 or ES256; key {n} is {}",
                        alg.map_or_else(|| "of another kind".to_owned(), |a| a.to_string())
                    ),
                ));
            }
        };
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| invalid(VARIABLE, at(), format!("usable keys; key {n}: {e}")))?;
        keys.push(VerifyingKey {
            algorithm,
            kid: jwk.common.key_id.clone(),
            key,
        });
    }
    if keys.is_empty() {
        return Err(invalid(
            VARIABLE,
            at(),
            "a JWKS with at least one signing key",
        ));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use jsonwebtoken::jwk::Jwk;
    use serde_json::json;

    use super::*;
    use crate::config::{AuthMode, SecretSource};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/auth")
            .join(name)
    }

    fn config() -> AuthConfig {
        AuthConfig {
            mode: AuthMode::Jwt,
            hs256_secret: None,
            public_key_file: None,
            jwks_file: None,
            issuer: None,
            audience: None,
            customer_claim: "sub".to_owned(),
            leeway: Duration::from_secs(30),
            api_keys_file: None,
        }
    }

    /// No key yet, and any audience: for tests of public keys and JWKS files.
    fn any_audience() -> AuthConfig {
        AuthConfig {
            audience: Some(ANY_AUDIENCE.to_owned()),
            ..config()
        }
    }

    #[test]
    fn an_identity_providers_keys_need_an_audience() {
        let without = AuthConfig {
            public_key_file: Some(fixture("rsa-public.pem")),
            ..config()
        };
        let Err(e) = JwtVerifier::load(&without) else {
            panic!("a public key without an audience was taken");
        };
        assert!(e.to_string().contains("APP_AUTH_JWT_AUDIENCE"), "{e}");
        let key = pem_key(Algorithm::RS256, "rsa-private.pem");
        let for_app = |aud: &str| {
            let claims = json!({"sub": "c-1", "exp": now() + 60, "aud": aud});
            sign(Algorithm::RS256, None, &key, claims)
        };
        // Named: a token for another application of the same provider fails.
        let named = JwtVerifier::load(&AuthConfig {
            audience: Some("orders".to_owned()),
            ..without.clone()
        })
        .unwrap();
        assert!(named.verify(&for_app("orders")).is_ok());
        assert!(named.verify(&for_app("payroll")).is_err());
        // `*`, asked for by name, takes any.
        let any = JwtVerifier::load(&AuthConfig {
            public_key_file: Some(fixture("rsa-public.pem")),
            ..any_audience()
        })
        .unwrap();
        assert!(any.verify(&for_app("payroll")).is_ok());
    }

    fn hs256() -> AuthConfig {
        AuthConfig {
            hs256_secret: Some(SecretSource::Value {
                variable: "APP_AUTH_JWT_HS256_SECRET",
                secret: Secret::new(SECRET),
            }),
            ..config()
        }
    }

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }

    fn pem_key(alg: Algorithm, file: &str) -> EncodingKey {
        let pem = std::fs::read(fixture(file)).unwrap();
        match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
            _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
        }
    }

    fn claims(sub: &str, exp_in: i64) -> Value {
        json!({"sub": sub, "exp": now() + exp_in})
    }

    #[test]
    fn hs256_tokens_verify_and_name_their_customer() {
        let v = JwtVerifier::load(&hs256()).unwrap();
        let token = v.mint("customer-1", Duration::from_secs(60)).unwrap();
        assert_eq!(v.verify(&token).unwrap().customer_id, "customer-1");
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let expired = sign(Algorithm::HS256, None, &key, claims("c", -120));
        assert_eq!(v.verify(&expired), Err(AuthError::Expired));
        // Within the leeway an expired token still passes: clocks drift.
        let just = sign(Algorithm::HS256, None, &key, claims("c", -10));
        assert!(v.verify(&just).is_ok());
        let early = sign(
            Algorithm::HS256,
            None,
            &key,
            json!({"sub": "c", "exp": now() + 600, "nbf": now() + 300}),
        );
        assert_eq!(v.verify(&early), Err(AuthError::NotYetValid));
        let no_exp = sign(Algorithm::HS256, None, &key, json!({"sub": "c"}));
        assert!(matches!(v.verify(&no_exp), Err(AuthError::Invalid(m)) if m.contains("exp")));
        let no_sub = sign(Algorithm::HS256, None, &key, json!({"exp": now() + 60}));
        assert_eq!(
            v.verify(&no_sub),
            Err(AuthError::NoCustomer("sub".to_owned()))
        );
        let long_sub = sign(Algorithm::HS256, None, &key, claims(&"c".repeat(200), 60));
        assert!(matches!(v.verify(&long_sub), Err(AuthError::NoCustomer(_))));
    }

    #[test]
    fn forged_and_malformed_tokens_are_refused() {
        let v = JwtVerifier::load(&hs256()).unwrap();
        let other = EncodingKey::from_secret(b"another secret, just as long as ours");
        let forged = sign(Algorithm::HS256, None, &other, claims("c", 60));
        assert_eq!(v.verify(&forged), Err(AuthError::BadSignature));
        // A token whose claims were changed after signing.
        let token = v.mint("customer-1", Duration::from_secs(60)).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims_b64 = parts[1].to_owned();
        claims_b64.replace_range(2..3, if &claims_b64[2..3] == "A" { "B" } else { "A" });
        let tampered = format!("{}.{claims_b64}.{}", parts[0], parts[2]);
        assert!(v.verify(&tampered).is_err());
        // alg none: header {"alg":"none","typ":"JWT"}, no signature.
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
        assert!(matches!(v.verify(&none), Err(AuthError::Invalid(_))));
        assert!(matches!(v.verify("not.a.jwt"), Err(AuthError::Invalid(_))));
        assert!(matches!(v.verify("garbage"), Err(AuthError::Invalid(_))));
        // RS256 is not taken by a verifier with only an HS256 secret.
        let rs = sign(
            Algorithm::RS256,
            None,
            &pem_key(Algorithm::RS256, "rsa-private.pem"),
            claims("c", 60),
        );
        assert!(matches!(v.verify(&rs), Err(AuthError::Invalid(m)) if m.contains("RS256")));
    }

    #[test]
    fn rs256_and_es256_tokens_verify_with_their_public_keys() {
        for (alg, private, public) in [
            (Algorithm::RS256, "rsa-private.pem", "rsa-public.pem"),
            (Algorithm::ES256, "ec-private.pem", "ec-public.pem"),
        ] {
            let v = JwtVerifier::load(&AuthConfig {
                public_key_file: Some(fixture(public)),
                ..any_audience()
            })
            .unwrap();
            assert_eq!(v.algorithms(), [alg]);
            let token = sign(alg, None, &pem_key(alg, private), claims("c-9", 60));
            assert_eq!(v.verify(&token).unwrap().customer_id, "c-9");
            // The public key used as an HMAC secret: the classic algorithm confusion.
            let pem = std::fs::read(fixture(public)).unwrap();
            let confused = sign(
                Algorithm::HS256,
                None,
                &EncodingKey::from_secret(&pem),
                claims("c", 60),
            );
            assert!(
                matches!(v.verify(&confused), Err(AuthError::Invalid(_))),
                "{alg:?}"
            );
            assert!(
                v.mint("c", Duration::from_secs(1)).is_err(),
                "no secret, no minting"
            );
        }
        let v = JwtVerifier::load(&AuthConfig {
            public_key_file: Some(fixture("rsa-public.pem")),
            ..any_audience()
        })
        .unwrap();
        let stranger = sign(
            Algorithm::RS256,
            None,
            &pem_key(Algorithm::RS256, "other-rsa-private.pem"),
            claims("c", 60),
        );
        assert_eq!(v.verify(&stranger), Err(AuthError::BadSignature));
    }

    #[test]
    fn a_jwks_file_picks_the_key_by_kid() {
        let rsa = pem_key(Algorithm::RS256, "rsa-private.pem");
        let ec = pem_key(Algorithm::ES256, "ec-private.pem");
        let mut rsa_jwk = Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap();
        rsa_jwk.common.key_id = Some("rsa-1".to_owned());
        let mut ec_jwk = Jwk::from_encoding_key(&ec, Algorithm::ES256).unwrap();
        ec_jwk.common.key_id = Some("ec-1".to_owned());
        let path = std::env::temp_dir().join(format!("eda-jwks-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(
            &path,
            serde_json::to_string(&json!({"keys": [rsa_jwk, ec_jwk]})).unwrap(),
        )
        .unwrap();
        let v = JwtVerifier::load(&AuthConfig {
            jwks_file: Some(path.clone()),
            issuer: Some("https://issuer.example".to_owned()),
            audience: Some("orders".to_owned()),
            ..config()
        })
        .unwrap();
        let full = |sub: &str| json!({"sub": sub, "exp": now() + 60, "iss": "https://issuer.example", "aud": "orders"});
        let token = sign(Algorithm::RS256, Some("rsa-1"), &rsa, full("a"));
        assert_eq!(v.verify(&token).unwrap().customer_id, "a");
        let token = sign(Algorithm::ES256, Some("ec-1"), &ec, full("b"));
        assert_eq!(v.verify(&token).unwrap().customer_id, "b");
        let token = sign(Algorithm::RS256, Some("rsa-2"), &rsa, full("a"));
        assert!(matches!(v.verify(&token), Err(AuthError::Invalid(m)) if m.contains("kid")));
        let mut wrong_iss = full("a");
        wrong_iss["iss"] = "https://elsewhere.example".into();
        let token = sign(Algorithm::RS256, Some("rsa-1"), &rsa, wrong_iss);
        assert!(matches!(v.verify(&token), Err(AuthError::WrongParty(_))));
        let mut wrong_aud = full("a");
        wrong_aud["aud"] = "billing".into();
        let token = sign(Algorithm::RS256, Some("rsa-1"), &rsa, wrong_aud);
        assert!(matches!(v.verify(&token), Err(AuthError::WrongParty(_))));
        let token = sign(Algorithm::RS256, Some("rsa-1"), &rsa, claims("a", 60));
        assert!(
            v.verify(&token).is_err(),
            "iss and aud are required once configured"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn short_hs256_keys_in_a_jwks_are_refused() {
        let path = std::env::temp_dir().join(format!("eda-jwks-short-{}.json", std::process::id()));
        let set = |k: &str| format!(r#"{{"keys":[{{"kty":"oct","alg":"HS256","k":"{k}"}}]}}"#);
        // "short", base64url.
        std::fs::write(&path, set("c2hvcnQ")).unwrap();
        let Err(e) = jwks(&path) else {
            panic!("a 5-byte HS256 key was taken");
        };
        let e = e.to_string();
        assert!(
            e.starts_with("APP_AUTH_JWKS_FILE=")
                && e.contains("at least 32 bytes")
                && e.contains("key 0 has 5"),
            "{e}"
        );
        // 43 characters are 32 bytes.
        std::fs::write(&path, set(&"A".repeat(43))).unwrap();
        assert_eq!(jwks(&path).unwrap().len(), 1);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn bad_key_settings_name_their_variable() {
        let e = JwtVerifier::load(&config()).unwrap_err();
        assert!(
            e.to_string().contains("APP_AUTH_MODE=jwt needs a key"),
            "{e}"
        );
        let short = AuthConfig {
            hs256_secret: Some(SecretSource::Value {
                variable: "APP_AUTH_JWT_HS256_SECRET",
                secret: Secret::new("short"),
            }),
            ..config()
        };
        let e = JwtVerifier::load(&short).unwrap_err().to_string();
        assert!(e.starts_with("APP_AUTH_JWT_HS256_SECRET="), "{e}");
        assert!(
            e.contains("at least 32 bytes") && !e.contains("short\""),
            "{e}"
        );
        let missing = AuthConfig {
            hs256_secret: Some(SecretSource::File {
                variable: "APP_AUTH_JWT_HS256_SECRET_FILE",
                path: PathBuf::from("/nonexistent/secret"),
            }),
            ..config()
        };
        let e = JwtVerifier::load(&missing).unwrap_err().to_string();
        assert!(e.starts_with("APP_AUTH_JWT_HS256_SECRET_FILE="), "{e}");
        let not_a_key = AuthConfig {
            public_key_file: Some(fixture("README.md")),
            ..config()
        };
        let e = JwtVerifier::load(&not_a_key).unwrap_err().to_string();
        assert!(e.starts_with("APP_AUTH_JWT_PUBLIC_KEY_FILE="), "{e}");
        let not_jwks = AuthConfig {
            jwks_file: Some(fixture("rsa-public.pem")),
            ..config()
        };
        let e = JwtVerifier::load(&not_jwks).unwrap_err().to_string();
        assert!(e.starts_with("APP_AUTH_JWKS_FILE="), "{e}");
    }
}
