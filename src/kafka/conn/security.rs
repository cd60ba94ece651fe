//! How connections to the brokers are secured: TLS (`SSL`), SASL, or both
//! (`SASL_SSL`), as Kafka's `security.protocol` names them.
//!
//! TLS is rustls with Graviola's cryptography, which is pure Rust (rskafka's own TLS
//! feature needs ring, which compiles C). Graviola needs a CPU of roughly 2013 or
//! later; [`Tls::new`] checks for it first, so an old CPU gets an error that says so
//! instead of an abort inside the first handshake. Server certificates are checked
//! against a CA file when one is given, otherwise against Mozilla's roots compiled
//! into the binary, so a `FROM scratch` image can reach managed Kafka.
//!
//! SASL runs inside the (possibly encrypted) connection: rskafka does it for the
//! producer and consumer connections, and `wire` for the admin ones.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use std::time::Duration;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::kafka::fix::Fix;
use crate::secret::Secret;

/// Errors setting up TLS or SASL.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// This CPU lacks instructions the TLS implementation needs.
    #[error(
        "TLS needs a CPU with {required}; this one lacks {missing}. Run on a newer CPU, or connect without TLS"
    )]
    CpuUnsupported {
        /// What the implementation needs, in words.
        required: &'static str,
        /// The features this CPU lacks.
        missing: String,
    },
    /// The CA file cannot be read or holds no certificate.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// TLS could not be set up.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// A SASL mechanism this build does not know.
    #[error("unknown SASL mechanism {0:?}: expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")]
    Mechanism(String),
    /// A broker host that cannot be a TLS server name.
    #[error("broker name {0:?} is not a valid TLS server name")]
    ServerName(String),
    /// The TLS handshake failed.
    #[error("TLS handshake with Kafka broker {broker} failed: {reason}")]
    Handshake {
        /// The broker, `host:port`.
        broker: String,
        /// Why, in words that say what to change.
        reason: String,
        /// What would clear it, when the failure says (an untrusted
        /// certificate, a listener that does not speak TLS).
        fix: Option<Fix>,
    },
    /// The TLS handshake did not finish in time.
    #[error("TLS handshake with Kafka broker {broker} did not finish within {timeout:?}")]
    HandshakeTimeout {
        /// The broker, `host:port`.
        broker: String,
        /// How long it waited.
        timeout: std::time::Duration,
    },
}

impl SecurityError {
    /// What would clear this error, if the failure says.
    pub fn fix(&self) -> Option<Fix> {
        match self {
            Self::Handshake { fix, .. } => *fix,
            Self::CaFile { .. } => Some(Fix::CaLocation),
            Self::Mechanism(_) => Some(Fix::SaslMechanism),
            _ => None,
        }
    }
}

/// How connections are secured; the default is plaintext without authentication.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Encrypts every broker connection when set.
    pub tls: Option<Tls>,
    /// Authenticates every broker connection when set.
    pub sasl: Option<Sasl>,
}

impl Security {
    /// Kafka's name for this combination (`security.protocol`).
    pub fn protocol(&self) -> &'static str {
        match (&self.tls, &self.sasl) {
            (None, None) => "PLAINTEXT",
            (Some(_), None) => "SSL",
            (None, Some(_)) => "SASL_PLAINTEXT",
            (Some(_), Some(_)) => "SASL_SSL",
        }
    }
}

/// TLS settings: the client configuration every broker connection uses.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    roots: RootsSource,
}

#[derive(Clone, Debug)]
enum RootsSource {
    Builtin,
    File(PathBuf),
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("roots", &self.roots).finish()
    }
}

impl Tls {
    /// TLS that trusts the CA certificates in `ca_file` (PEM), or Mozilla's roots
    /// when no file is given.
    pub fn new(ca_file: Option<&Path>) -> Result<Self, SecurityError> {
        check_cpu(detected)?;
        let (roots, source) = match ca_file {
            None => (
                RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
                RootsSource::Builtin,
            ),
            Some(path) => (load_ca_file(path)?, RootsSource::File(path.to_owned())),
        };
        let provider = Arc::new(rustls_graviola::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| SecurityError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
            roots: source,
        })
    }

    /// The rustls configuration for broker connections.
    pub(crate) fn client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }

    /// Runs the TLS handshake over `tcp`, checking that the certificate is valid
    /// for `host` and signed by a trusted CA.
    pub(crate) async fn handshake(
        &self,
        host: &str,
        port: u16,
        tcp: TcpStream,
        timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, SecurityError> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| SecurityError::ServerName(host.to_owned()))?;
        let connector = TlsConnector::from(self.client_config());
        let broker = format!("{host}:{port}");
        match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => {
                let (reason, fix) = self.explain(&e);
                Err(SecurityError::Handshake {
                    broker,
                    reason,
                    fix,
                })
            }
            Err(_) => Err(SecurityError::HandshakeTimeout { broker, timeout }),
        }
    }

    /// A handshake failure in words that say what to change.
    fn explain(&self, e: &std::io::Error) -> (String, Option<Fix>) {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::InvalidCertificate(why)) => (
                format!(
                    "its certificate is not trusted ({why:?}); it was checked against {}",
                    self.trust_hint()
                ),
                Some(Fix::CaLocation),
            ),
            Some(other) => (other.to_string(), None),
            None if e.kind() == std::io::ErrorKind::UnexpectedEof => (
                "the broker closed the connection; does it speak TLS on this port?".to_owned(),
                Some(Fix::SecurityProtocol),
            ),
            None => (e.to_string(), None),
        }
    }

    /// What the server certificate is checked against, for error messages.
    pub(crate) fn trust_hint(&self) -> String {
        match &self.roots {
            RootsSource::Builtin => "the built-in Mozilla roots".to_owned(),
            RootsSource::File(p) => format!("the CA file {}", p.display()),
        }
    }
}

fn load_ca_file(path: &Path) -> Result<RootCertStore, SecurityError> {
    let error = |reason: String| SecurityError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if certs.is_empty() {
        return Err(error("holds no PEM certificate".to_owned()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| error(format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The CPU features Graviola cannot work without, per architecture.
#[cfg(target_arch = "x86_64")]
const REQUIRED: &[&str] = &["aes", "pclmulqdq", "bmi1", "adx", "avx", "avx2"];
#[cfg(target_arch = "aarch64")]
const REQUIRED: &[&str] = &["neon", "aes", "pmull", "sha2"];

#[cfg(target_arch = "x86_64")]
fn detected(feature: &str) -> bool {
    match feature {
        "aes" => std::arch::is_x86_feature_detected!("aes"),
        "pclmulqdq" => std::arch::is_x86_feature_detected!("pclmulqdq"),
        "bmi1" => std::arch::is_x86_feature_detected!("bmi1"),
        "adx" => std::arch::is_x86_feature_detected!("adx"),
        "avx" => std::arch::is_x86_feature_detected!("avx"),
        "avx2" => std::arch::is_x86_feature_detected!("avx2"),
        _ => false,
    }
}

#[cfg(target_arch = "aarch64")]
fn detected(feature: &str) -> bool {
    match feature {
        "neon" => std::arch::is_aarch64_feature_detected!("neon"),
        "aes" => std::arch::is_aarch64_feature_detected!("aes"),
        "pmull" => std::arch::is_aarch64_feature_detected!("pmull"),
        "sha2" => std::arch::is_aarch64_feature_detected!("sha2"),
        _ => false,
    }
}

/// Fails when the CPU lacks a feature Graviola asserts on at its first use.
fn check_cpu(detected: impl Fn(&str) -> bool) -> Result<(), SecurityError> {
    let missing: Vec<&str> = REQUIRED.iter().copied().filter(|f| !detected(f)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(SecurityError::CpuUnsupported {
        required: if cfg!(target_arch = "x86_64") {
            "aes, pclmulqdq, bmi1, adx, avx and avx2 (x86-64, Intel Broadwell or AMD Zen and later)"
        } else {
            "neon, aes, pmull and sha2 (ARMv8 Cryptography Extensions)"
        },
        missing: missing.join(", "),
    })
}

/// A SASL mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// The password travels as is: only ever use it over TLS.
    Plain,
    /// SCRAM with SHA-256 (RFC 7677).
    ScramSha256,
    /// SCRAM with SHA-512.
    ScramSha512,
}

impl SaslMechanism {
    /// The mechanism's registered name, as sent in `SaslHandshake`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl FromStr for SaslMechanism {
    type Err = SecurityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "PLAIN" => Ok(Self::Plain),
            "SCRAM-SHA-256" => Ok(Self::ScramSha256),
            "SCRAM-SHA-512" => Ok(Self::ScramSha512),
            _ => Err(SecurityError::Mechanism(s.to_owned())),
        }
    }
}

impl fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// SASL credentials; the password prints as `***`.
#[derive(Debug, Clone)]
pub struct Sasl {
    /// How the client proves who it is.
    pub mechanism: SaslMechanism,
    /// The user.
    pub username: String,
    /// The password, which no log line or dump shows.
    pub password: Secret,
}

impl Sasl {
    /// The same credentials in rskafka's terms, for the producer and consumer connections.
    pub(crate) fn to_rskafka(&self) -> rskafka::client::SaslConfig {
        use rskafka::client::{Credentials, SaslConfig};
        let credentials =
            Credentials::new(self.username.clone(), self.password.expose().to_owned());
        match self.mechanism {
            SaslMechanism::Plain => SaslConfig::Plain(credentials),
            SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
            SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_without_a_required_feature_gets_an_error_naming_it() {
        let lacking = REQUIRED[1];
        let e = check_cpu(|f| f != lacking).unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&format!("lacks {lacking}")), "{text}");
        assert!(check_cpu(|_| true).is_ok());
    }

    #[test]
    fn this_machine_can_do_tls() {
        Tls::new(None).expect("TLS with the built-in roots");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_with_its_path() {
        let path = std::env::temp_dir().join(format!("eda-empty-{}.pem", uuid::Uuid::new_v4()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let e = Tls::new(Some(&path)).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(e.contains(&path.display().to_string()), "{e}");
        let missing = Tls::new(Some(Path::new("/nonexistent/ca.pem")))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("/nonexistent/ca.pem"), "{missing}");
    }

    #[test]
    fn mechanisms_parse_case_insensitively_and_debug_hides_the_password() {
        assert_eq!(
            "scram-sha-512".parse::<SaslMechanism>().unwrap(),
            SaslMechanism::ScramSha512
        );
        assert!("GSSAPI".parse::<SaslMechanism>().is_err());
        let sasl = Sasl {
            mechanism: SaslMechanism::Plain,
            username: "u".into(),
            password: Secret::new("hunter2"),
        };
        assert!(!format!("{sasl:?}").contains("hunter2"));
    }
}
