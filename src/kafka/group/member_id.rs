//! A member's id in its group, checked once where it is made: it names the
//! member in every coordination record, in logs and in Kafka's tools.

use std::fmt;
use std::str::FromStr;

/// A member's id: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId(String);

/// Why a text is not a member id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("member id {0:?} must be 1 to 255 visible ASCII characters")]
pub struct InvalidMemberId(pub String);

impl MemberId {
    /// `<host>-<pid>-<random>`: says where a member runs, and never repeats.
    pub fn generate() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        let host: String = host.chars().filter(char::is_ascii_graphic).collect();
        let host = if host.is_empty() {
            "host".to_owned()
        } else {
            host
        };
        let random = uuid::Uuid::new_v4().simple().to_string();
        let mut id = format!("{host}-{}-{}", std::process::id(), &random[..8]);
        // A very long host name still leaves an id within the limit.
        if id.len() > 255 {
            id.drain(..id.len() - 255);
        }
        Self(id)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for MemberId {
    type Err = InvalidMemberId;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        if (1..=255).contains(&id.len()) && id.chars().all(|c| c.is_ascii_graphic()) {
            Ok(Self(id.to_owned()))
        } else {
            Err(InvalidMemberId(id.to_owned()))
        }
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_visible_ascii_of_bounded_length() {
        assert_eq!("a-1".parse::<MemberId>().unwrap().as_str(), "a-1");
        for bad in ["", "a b", "tab\t", "é", &"x".repeat(256)] {
            assert!(bad.parse::<MemberId>().is_err(), "{bad:?}");
        }
        let made = MemberId::generate();
        assert_eq!(made.as_str().parse::<MemberId>(), Ok(made.clone()));
        assert_ne!(made, MemberId::generate());
    }
}
