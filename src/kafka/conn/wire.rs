//! A plain request/response connection for the Kafka requests rskafka does not
//! expose (`CreateTopics` with configs, Metadata with the controller id), encoded
//! with the `kafka-protocol` crate.
//!
//! Versions are negotiated with `ApiVersions` on connect: each request goes out at
//! the highest version both sides speak. The byte stream sits behind a private
//! [`Transport`] trait, a TCP socket or a TLS stream over one; SASL, when
//! configured, runs right after `ApiVersions`, as Kafka's own clients do it.
//!
//! Every cluster connection opens one of these first, so a wrong password or an
//! untrusted certificate stops a service at start with a message naming the fix,
//! rather than as retries inside rskafka.

use crate::kafka::fix::Fix;
use std::collections::HashMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, FindCoordinatorRequest, RequestHeader, ResponseHeader,
    SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::{
    Decodable, HeaderVersion, Message, Request, StrBytes, encode_request_header_into_buffer,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::kafka::conn::ClusterConfig;
use crate::kafka::conn::security::{Sasl, Security, SecurityError};

/// Largest response accepted; metadata of very large clusters stays far below.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Errors of one connection.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("cannot connect to Kafka broker {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no Kafka broker answered ({tried})")]
    Unreachable { tried: String },
    #[error("Kafka broker {addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("connection to Kafka broker {addr} failed: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Kafka broker {addr} sent a malformed response: {reason}")]
    Protocol { addr: String, reason: String },
    #[error(transparent)]
    Tls(#[from] SecurityError),
    #[error("Kafka broker {addr} does not offer SASL mechanism {wanted}; it offers [{offered}]")]
    SaslMechanism {
        addr: String,
        wanted: &'static str,
        offered: String,
    },
    #[error(
        "Kafka broker {addr} refused the credentials of user {user:?} ({mechanism}): {message}"
    )]
    Authentication {
        addr: String,
        user: String,
        mechanism: &'static str,
        message: String,
    },
    #[error("SASL {mechanism} with Kafka broker {addr} failed: {reason}")]
    Sasl {
        addr: String,
        mechanism: &'static str,
        reason: String,
    },
    #[error(
        "Kafka broker {addr} does not support {api:?} in a version we speak ({ours}); upgrade the broker"
    )]
    Unsupported {
        addr: String,
        api: ApiKey,
        ours: String,
    },
    #[error("FindCoordinator for {kind} {key:?} answered {error:?}")]
    Coordinator {
        kind: CoordinatorKind,
        key: String,
        error: kafka_protocol::ResponseError,
    },
}

/// Which coordinator `FindCoordinator` looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoordinatorKind {
    /// A consumer group's (key type 0).
    Group,
    /// A transactional id's (key type 1).
    Transaction,
}

impl std::fmt::Display for CoordinatorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Group => "group",
            Self::Transaction => "transactional id",
        })
    }
}

impl WireError {
    /// What would clear this error, if the failure says.
    pub fn fix(&self) -> Option<Fix> {
        match self {
            Self::Connect { .. } | Self::Unreachable { .. } => Some(Fix::BrokerRunning),
            Self::Tls(e) => e.fix(),
            Self::SaslMechanism { .. } => Some(Fix::SaslMechanism),
            Self::Authentication { .. } => Some(Fix::SaslCredentials),
            _ => None,
        }
    }
}

/// The byte stream under a connection.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// One connection to one broker.
pub(crate) struct Connection {
    addr: String,
    stream: Box<dyn Transport>,
    client_id: StrBytes,
    correlation_id: i32,
    timeout: Duration,
    versions: HashMap<i16, (i16, i16)>,
}

impl Connection {
    /// Connects to `addr` (`host:port`), secures the connection as `security`
    /// says, and negotiates API versions.
    pub(crate) async fn connect(
        addr: &str,
        client_id: &str,
        timeout: Duration,
        security: &Security,
    ) -> Result<Self, WireError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(WireError::Connect {
                    addr: addr.to_owned(),
                    source,
                });
            }
            Err(_) => {
                return Err(WireError::Timeout {
                    addr: addr.to_owned(),
                    timeout,
                });
            }
        };
        // Small requests, answered one at a time: do not wait to coalesce packets.
        let _ = stream.set_nodelay(true);
        let stream: Box<dyn Transport> = match &security.tls {
            None => Box::new(stream),
            Some(tls) => {
                let (host, port) = split_host_port(addr);
                Box::new(tls.handshake(host, port, stream, timeout).await?)
            }
        };
        let mut conn = Self {
            addr: addr.to_owned(),
            stream,
            client_id: StrBytes::from_string(client_id.to_owned()),
            correlation_id: 0,
            timeout,
            versions: HashMap::new(),
        };
        // v0 is understood by every broker since 0.10; its answer lists the rest.
        let response = conn.request_at(&ApiVersionsRequest::default(), 0).await?;
        if response.error_code != 0 {
            return Err(conn.protocol(format!(
                "ApiVersions answered error code {}",
                response.error_code
            )));
        }
        conn.versions = response
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        if let Some(sasl) = &security.sasl {
            conn.authenticate(sasl).await?;
        }
        Ok(conn)
    }

    /// `SaslHandshake`, then `SaslAuthenticate` rounds until the mechanism is done.
    async fn authenticate(&mut self, sasl: &Sasl) -> Result<(), WireError> {
        use rsasl::prelude::{Mechname, SASLClient, SASLConfig};

        let mechanism = sasl.mechanism.name();
        let addr = self.addr.clone();
        let failed = |reason: String| WireError::Sasl {
            addr: addr.clone(),
            mechanism,
            reason,
        };
        let handshake =
            SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism));
        let response = self.request(&handshake).await?;
        if response.error_code != 0 {
            return Err(WireError::SaslMechanism {
                addr: self.addr.clone(),
                wanted: mechanism,
                offered: response
                    .mechanisms
                    .iter()
                    .map(kafka_protocol::protocol::StrBytes::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }

        let config = SASLConfig::with_credentials(
            None,
            sasl.username.clone(),
            sasl.password.expose().to_owned(),
        )
        .map_err(|e| failed(e.to_string()))?;
        let name = Mechname::parse(mechanism.as_bytes()).map_err(|e| failed(e.to_string()))?;
        let mut session = SASLClient::new(config)
            .start_suggested(&[name])
            .map_err(|e| failed(e.to_string()))?;
        let mut received: Option<Bytes> = None;
        loop {
            let mut out = Vec::new();
            let state = match session.step(received.as_deref(), &mut out) {
                Ok(state) => state,
                // SCRAM brokers answer a wrong password with an error inside the
                // mechanism ("invalid proof"), not with an error code.
                Err(e) if received.is_some() => {
                    return Err(WireError::Authentication {
                        addr: self.addr.clone(),
                        user: sasl.username.clone(),
                        mechanism,
                        message: e.to_string(),
                    });
                }
                Err(e) => return Err(failed(e.to_string())),
            };
            if state.has_sent_message() {
                let request = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(out));
                let response = self.request(&request).await?;
                if response.error_code != 0 {
                    return Err(WireError::Authentication {
                        addr: self.addr.clone(),
                        user: sasl.username.clone(),
                        mechanism,
                        message: response.error_message.map_or_else(
                            || format!("error code {}", response.error_code),
                            |m| m.to_string(),
                        ),
                    });
                }
                received = Some(response.auth_bytes);
            }
            if state.is_finished() {
                return Ok(());
            }
        }
    }

    /// Connects to the first of `brokers` that answers, starting with the one
    /// that answered last time and trying the next one beside it after a
    /// quarter of a second (or at once when one fails), with the vendored
    /// rskafka's search ([`rskafka::first_connected`]): a broker that hangs
    /// (paused, cut off) costs that quarter, not its whole timeout. Each attempt
    /// moves the next search's start past its broker, so that a caller who gives
    /// up waiting (and drops this future) does not send the next one to the same
    /// broker. A certificate or credential problem is the same with every
    /// broker, so it ends the search at once; only unreachable brokers make it
    /// try the next one.
    pub(crate) async fn connect_any(
        brokers: &[String],
        client_id: &str,
        timeout: Duration,
        security: &Security,
    ) -> Result<Self, WireError> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        /// Where the last search ended, in whatever list it had.
        static ANSWERED: AtomicUsize = AtomicUsize::new(0);
        let n = brokers.len();
        let start = ANSWERED.load(Ordering::Relaxed);
        let attempts = (0..n).map(|i| {
            let at = (start + i) % n;
            ANSWERED.store((at + 1) % n, Ordering::Relaxed);
            async move {
                let conn = Self::connect(&brokers[at], client_id, timeout, security).await?;
                Ok((at, conn))
            }
        });
        let unreachable = |e: &WireError| {
            matches!(
                e,
                WireError::Connect { .. } | WireError::Timeout { .. } | WireError::Io { .. }
            )
        };
        match rskafka::first_connected(attempts, rskafka::CONNECTION_STAGGER, |e| !unreachable(e))
            .await
        {
            Ok((at, conn)) => {
                ANSWERED.store(at, Ordering::Relaxed);
                Ok(conn)
            }
            Err(mut errors) => match errors.pop() {
                Some(e) if !unreachable(&e) => Err(e),
                last => Err(WireError::Unreachable {
                    tried: errors
                        .iter()
                        .chain(&last)
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                }),
            },
        }
    }

    /// Connects to the first broker of `config` that answers, within its
    /// request timeout: the connection admin requests, group offsets and
    /// producer ids start from.
    pub(crate) async fn bootstrap(config: &ClusterConfig) -> Result<Self, WireError> {
        Self::connect_any(
            &config.brokers,
            &config.client_id,
            config.request_timeout,
            &config.security,
        )
        .await
    }

    /// A connection to the coordinator of `key` (a group or a transactional
    /// id), found through any bootstrap broker.
    pub(crate) async fn coordinator(
        config: &ClusterConfig,
        kind: CoordinatorKind,
        key: &str,
    ) -> Result<Self, WireError> {
        let mut bootstrap = Self::bootstrap(config).await?;
        let name = StrBytes::from_string(key.to_owned());
        let key_type = match kind {
            CoordinatorKind::Group => 0,
            CoordinatorKind::Transaction => 1,
        };
        // Versions 0-3 name one key, 4 and later a list.
        let request = if bootstrap.version::<FindCoordinatorRequest>()? < 4 {
            FindCoordinatorRequest::default().with_key(name)
        } else {
            FindCoordinatorRequest::default().with_coordinator_keys(vec![name])
        }
        .with_key_type(key_type);
        let response = bootstrap.request(&request).await?;
        let (code, host, port) = match response.coordinators.first() {
            Some(c) => (c.error_code, c.host.to_string(), c.port),
            None => (
                response.error_code,
                response.host.to_string(),
                response.port,
            ),
        };
        if let Some(error) = kafka_protocol::ResponseError::try_from_code(code) {
            return Err(WireError::Coordinator {
                kind,
                key: key.to_owned(),
                error,
            });
        }
        let addr = format!("{host}:{port}");
        if addr == bootstrap.addr() {
            return Ok(bootstrap);
        }
        Self::connect(
            &addr,
            &config.client_id,
            config.request_timeout,
            &config.security,
        )
        .await
    }

    /// The broker address.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `request` at the highest version both sides support.
    pub(crate) async fn request<R: Request>(
        &mut self,
        request: &R,
    ) -> Result<R::Response, WireError> {
        let version = self.version::<R>()?;
        self.request_at(request, version).await
    }

    /// Sends `request` at the highest version both sides support up to `cap`:
    /// for requests whose later versions are meant for brokers, or change what
    /// the request means.
    pub(crate) async fn request_capped<R: Request>(
        &mut self,
        request: &R,
        cap: i16,
    ) -> Result<R::Response, WireError> {
        let version = self.version_capped::<R>(cap)?;
        self.request_at(request, version).await
    }

    /// The version [`Self::request`] sends `R` at, for requests whose fields
    /// differ between versions.
    pub(crate) fn version<R: Request>(&self) -> Result<i16, WireError> {
        self.version_capped::<R>(i16::MAX)
    }

    fn version_capped<R: Request>(&self, cap: i16) -> Result<i16, WireError> {
        let api = ApiKey::try_from(R::KEY)
            .map_err(|()| self.protocol(format!("unknown API key {}", R::KEY)))?;
        let ours = <R as Message>::VERSIONS;
        let (min, max) = self.versions.get(&R::KEY).copied().unwrap_or((-1, -1));
        let version = max.min(ours.max).min(cap);
        if version < min.max(ours.min) {
            return Err(WireError::Unsupported {
                addr: self.addr.clone(),
                api,
                ours: ours.to_string(),
            });
        }
        Ok(version)
    }

    async fn request_at<R: Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<R::Response, WireError> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(self.client_id.clone()));

        let mut body = BytesMut::new();
        encode_request_header_into_buffer(&mut body, &header)
            .map_err(|e| self.protocol(format!("encoding the request header: {e}")))?;
        request
            .encode(&mut body, version)
            .map_err(|e| self.protocol(format!("encoding the request: {e}")))?;
        let mut frame = BytesMut::with_capacity(body.len() + 4);
        frame.put_i32(body.len() as i32);
        frame.put(body);

        let timeout = self.timeout;
        let mut response = match tokio::time::timeout(timeout, self.round_trip(&frame)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(WireError::Timeout {
                    addr: self.addr.clone(),
                    timeout,
                });
            }
        };

        let header_version = R::Response::header_version(version);
        let header = ResponseHeader::decode(&mut response, header_version)
            .map_err(|e| self.protocol(format!("decoding the response header: {e}")))?;
        if header.correlation_id != self.correlation_id {
            return Err(self.protocol(format!(
                "response correlation id {} does not match request {}",
                header.correlation_id, self.correlation_id
            )));
        }
        R::Response::decode(&mut response, version)
            .map_err(|e| self.protocol(format!("decoding the response: {e}")))
    }

    async fn round_trip(&mut self, frame: &[u8]) -> Result<Bytes, WireError> {
        let addr = self.addr.clone();
        let io = |source| WireError::Io {
            addr: addr.clone(),
            source,
        };
        self.stream.write_all(frame).await.map_err(io)?;
        self.stream.flush().await.map_err(io)?;
        let len = self.stream.read_i32().await.map_err(io)?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > MAX_RESPONSE_BYTES {
            return Err(self.protocol(format!("response of {len} bytes is too large")));
        }
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf).await.map_err(io)?;
        if buf.len() < 4 {
            return Err(self.protocol("truncated response".to_owned()));
        }
        Ok(Bytes::from(buf))
    }

    fn protocol(&self, reason: String) -> WireError {
        WireError::Protocol {
            addr: self.addr.clone(),
            reason,
        }
    }
}

/// `host:port` split for the TLS server name; a missing port means Kafka's 9092.
pub(crate) fn split_host_port(addr: &str) -> (&str, u16) {
    if let Some(rest) = addr.strip_prefix('[')
        && let Some((host, port)) = rest.split_once("]:")
    {
        return (host, port.parse().unwrap_or(9092));
    }
    match addr.rsplit_once(':') {
        Some((host, port)) => match port.parse() {
            Ok(port) => (host, port),
            Err(_) => (addr, 9092),
        },
        None => (addr, 9092),
    }
}
