//! Static API keys from a file, for the simplest setups: one line per key,
//! `customer-id key`, where the key is written plain (16 characters or more)
//! or as `sha256:<hex>` of the key, so that the file need not hold the keys
//! themselves. Blank lines and `#` comments are skipped.
//!
//! Keys are kept only as SHA-256 digests and looked up by digest, so a lookup
//! takes the same path whatever part of a key an attacker got right.

use std::collections::HashMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{AuthError, Principal};
use crate::config::ConfigError;

/// Shortest plain key accepted.
pub const MIN_KEY_LEN: usize = 16;

/// The known keys, by digest.
pub struct ApiKeys {
    customers: HashMap<[u8; 32], Principal>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.customers.len())
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn hex_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl ApiKeys {
    /// Reads the keys file; a malformed line is named by its number, never by
    /// its key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        const VARIABLE: &str = "APP_AUTH_API_KEYS_FILE";
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
            variable: VARIABLE,
            value: path.display().to_string(),
            expected: format!("a readable file of `customer-id key` lines ({e})"),
        })?;
        Self::parse(&text).map_err(|expected| ConfigError::Invalid {
            variable: VARIABLE,
            value: path.display().to_string(),
            expected,
        })
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut customers = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = n + 1;
            let mut fields = line.split_whitespace();
            let (Some(customer), Some(key), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(format!("`customer-id key` on each line; line {at} is not"));
            };
            let principal = Principal::customer(customer)
                .ok_or_else(|| format!("customer ids of 1 to 128 bytes, without control characters or surrounding white space; line {at}"))?;
            let digest = match key.strip_prefix("sha256:") {
                Some(hex) => hex_digest(hex)
                    .ok_or_else(|| format!("64 hex digits after sha256:; line {at}"))?,
                None if key.len() >= MIN_KEY_LEN => digest(key),
                None => {
                    return Err(format!(
                        "keys of at least {MIN_KEY_LEN} characters (or sha256:<hex>); line {at}"
                    ));
                }
            };
            if customers.insert(digest, principal).is_some() {
                return Err(format!("each key once; line {at} repeats an earlier key"));
            }
        }
        if customers.is_empty() {
            return Err("at least one `customer-id key` line".to_owned());
        }
        Ok(Self { customers })
    }

    /// The customer `key` belongs to.
    pub fn verify(&self, key: &str) -> Result<Principal, AuthError> {
        self.customers
            .get(&digest(key))
            .cloned()
            .ok_or(AuthError::UnknownKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_plain_or_hashed_name_their_customer() {
        let hashed: String =
            digest("hashed-key-0123456789")
                .iter()
                .fold(String::new(), |mut hex, b| {
                    use std::fmt::Write;
                    let _ = write!(hex, "{b:02x}");
                    hex
                });
        let keys = ApiKeys::parse(&format!(
            "# customer  key\n\ncustomer-a  plain-key-0123456789\ncustomer-b sha256:{hashed}\n"
        ))
        .unwrap();
        assert_eq!(
            keys.verify("plain-key-0123456789").unwrap().customer_id,
            "customer-a"
        );
        assert_eq!(
            keys.verify("hashed-key-0123456789").unwrap().customer_id,
            "customer-b"
        );
        assert_eq!(
            keys.verify("plain-key-012345678"),
            Err(AuthError::UnknownKey)
        );
        assert_eq!(
            keys.verify(&format!("sha256:{hashed}")),
            Err(AuthError::UnknownKey)
        );
        assert_eq!(format!("{keys:?}"), "ApiKeys(2 keys)");
    }

    #[test]
    fn a_bad_line_is_named_by_number_and_never_shows_its_key() {
        for (text, wanted) in [
            ("c short-key\n", "line 1"),
            ("c\n", "line 1"),
            ("# c\nc k-0123456789abcdef extra\n", "line 2"),
            ("c sha256:abc\n", "line 1"),
            ("a k-0123456789abcdef\nb k-0123456789abcdef\n", "repeats"),
            ("", "at least one"),
        ] {
            let e = ApiKeys::parse(text).unwrap_err();
            assert!(e.contains(wanted), "{text:?}: {e}");
            assert!(
                !e.contains("0123456789abcdef") && !e.contains("short-key"),
                "{e}"
            );
        }
    }
}
