//! A loopback SOCKS5 endpoint that wraps each broker connection in TLS.
//!
//! rskafka 0.6 encrypts only through its `transport-tls` feature, which needs
//! ring, a crate that compiles C. Its SOCKS5 support is pure Rust, so the cluster
//! points rskafka at this tunnel instead: rskafka asks for `broker:port`, the tunnel
//! connects, runs the TLS handshake with the same rustls setup the admin
//! connections use, and then copies bytes both ways. SASL still happens inside,
//! between rskafka and the broker, so the tunnel never sees a credential.
//!
//! The tunnel listens on 127.0.0.1 only, on a port the OS picks, lives as long as
//! its [`Cluster`](super::Cluster), and connects only to the configured brokers
//! and hosts in their domain (a cluster advertises its brokers by names such as
//! `b0-pkc-x.region.cloud` for a bootstrap `pkc-x.region.cloud`). Anything else
//! is refused: it is not a general-purpose proxy.

use crate::kafka::fix::Fix;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::kafka::conn::security::{SecurityError, Tls};
use crate::kafka::conn::wire::split_host_port;

/// How long a local client may take to say where it wants to go.
const GREETING_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the tunnel.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot open the TLS tunnel's loopback listener: {0}")]
    Listen(#[source] std::io::Error),
    #[error("SOCKS5 request from the Kafka client is malformed: {0}")]
    Socks(String),
    #[error("the tunnel only connects to the configured brokers' hosts; {0} is not one of them")]
    NotAllowed(String),
    #[error("cannot connect to Kafka broker {broker}: {source}")]
    Connect {
        broker: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to Kafka broker {0} timed out")]
    ConnectTimeout(String),
    #[error(transparent)]
    Tls(#[from] SecurityError),
    #[error("I/O on the tunnel: {0}")]
    Io(#[from] std::io::Error),
}

impl TunnelError {
    /// What would clear this error, if the failure says.
    pub fn fix(&self) -> Option<Fix> {
        match self {
            Self::NotAllowed(_) => Some(Fix::Brokers),
            Self::Connect { .. } | Self::ConnectTimeout(_) => Some(Fix::BrokerRunning),
            Self::Tls(e) => e.fix(),
            _ => None,
        }
    }
}

/// A running tunnel; stops, with every connection it carries, when dropped.
pub(crate) struct TlsTunnel {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsTunnel {
    /// Starts a tunnel to the hosts of `brokers` (`host:port` each).
    pub(crate) async fn start(
        tls: Tls,
        brokers: &[String],
        connect_timeout: Duration,
    ) -> Result<Self, TunnelError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(TunnelError::Listen)?;
        let addr = listener.local_addr().map_err(TunnelError::Listen)?;
        let context = Arc::new(Context {
            tls,
            allowed: Allowlist::new(brokers),
            connect_timeout,
        });
        let task = tokio::spawn(accept_loop(listener, context));
        Ok(Self { addr, task })
    }

    /// The address to give rskafka as its SOCKS5 proxy.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TlsTunnel {
    fn drop(&mut self) {
        // The accept loop owns the connection tasks; aborting it ends them all.
        self.task.abort();
    }
}

struct Context {
    tls: Tls,
    allowed: Allowlist,
    connect_timeout: Duration,
}

async fn accept_loop(listener: TcpListener, context: Arc<Context>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let context = Arc::clone(&context);
                    connections.spawn(async move {
                        if let Err(e) = carry(stream, &context).await {
                            log::warn!("TLS tunnel: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors, typically: back off instead of spinning.
                    log::warn!("TLS tunnel: accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One connection: SOCKS5 handshake, connect, TLS handshake, then bytes both ways.
async fn carry(mut local: TcpStream, context: &Context) -> Result<(), TunnelError> {
    let (host, port) = match tokio::time::timeout(GREETING_TIMEOUT, read_request(&mut local)).await
    {
        Ok(Ok(target)) => target,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(TunnelError::Socks("no request within 10 s".to_owned())),
    };
    let broker = format!("{host}:{port}");
    if !context.allowed.allows(&host) {
        reply(&mut local, Reply::NotAllowed).await?;
        return Err(TunnelError::NotAllowed(broker));
    }
    let tcp = match tokio::time::timeout(
        context.connect_timeout,
        TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(source)) => {
            reply(&mut local, Reply::Refused).await?;
            return Err(TunnelError::Connect { broker, source });
        }
        Err(_) => {
            reply(&mut local, Reply::HostUnreachable).await?;
            return Err(TunnelError::ConnectTimeout(broker));
        }
    };
    let _ = tcp.set_nodelay(true);
    let mut remote = match context
        .tls
        .handshake(&host, port, tcp, context.connect_timeout)
        .await
    {
        Ok(stream) => stream,
        Err(e) => {
            reply(&mut local, Reply::Failure).await?;
            return Err(e.into());
        }
    };
    reply(&mut local, Reply::Succeeded).await?;
    let _ = local.set_nodelay(true);
    match tokio::io::copy_bidirectional(&mut local, &mut remote).await {
        Ok(_) => Ok(()),
        // A side closing mid-stream is how Kafka connections usually end.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// SOCKS5 (RFC 1928) greeting and CONNECT request, without authentication: the
/// listener is on loopback and only reaches TLS endpoints of the cluster.
async fn read_request(stream: &mut TcpStream) -> Result<(String, u16), TunnelError> {
    const VERSION: u8 = 5;
    const NO_AUTH: u8 = 0;
    const NO_ACCEPTABLE_METHOD: u8 = 0xff;
    const CONNECT: u8 = 1;

    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(TunnelError::Socks(format!("version {} is not 5", head[0])));
    }
    let mut methods = vec![0u8; usize::from(head[1])];
    stream.read_exact(&mut methods).await?;
    if !methods.contains(&NO_AUTH) {
        stream.write_all(&[VERSION, NO_ACCEPTABLE_METHOD]).await?;
        return Err(TunnelError::Socks(
            "the client offers no method without authentication".to_owned(),
        ));
    }
    stream.write_all(&[VERSION, NO_AUTH]).await?;

    let mut request = [0u8; 4];
    stream.read_exact(&mut request).await?;
    if request[0] != VERSION {
        return Err(TunnelError::Socks(format!(
            "request version {} is not 5",
            request[0]
        )));
    }
    if request[1] != CONNECT {
        reply(stream, Reply::CommandNotSupported).await?;
        return Err(TunnelError::Socks(format!(
            "command {} is not CONNECT",
            request[1]
        )));
    }
    let host = match request[3] {
        1 => {
            let mut ip = [0u8; 4];
            stream.read_exact(&mut ip).await?;
            Ipv4Addr::from(ip).to_string()
        }
        3 => {
            let len = stream.read_u8().await?;
            let mut name = vec![0u8; usize::from(len)];
            stream.read_exact(&mut name).await?;
            String::from_utf8(name)
                .map_err(|_| TunnelError::Socks("host name is not UTF-8".to_owned()))?
        }
        4 => {
            let mut ip = [0u8; 16];
            stream.read_exact(&mut ip).await?;
            Ipv6Addr::from(ip).to_string()
        }
        other => {
            reply(stream, Reply::AddressNotSupported).await?;
            return Err(TunnelError::Socks(format!("address type {other}")));
        }
    };
    let port = stream.read_u16().await?;
    Ok((host, port))
}

#[derive(Clone, Copy)]
enum Reply {
    Succeeded = 0,
    Failure = 1,
    NotAllowed = 2,
    HostUnreachable = 4,
    Refused = 5,
    CommandNotSupported = 7,
    AddressNotSupported = 8,
}

async fn reply(stream: &mut TcpStream, reply: Reply) -> Result<(), TunnelError> {
    // Bound address 0.0.0.0:0: rskafka does not use it.
    stream
        .write_all(&[5, reply as u8, 0, 1, 0, 0, 0, 0, 0, 0])
        .await?;
    Ok(())
}

/// The hosts the tunnel may connect to: each bootstrap host, and the hosts of its
/// domain (everything after its first label, when that still has two labels).
#[derive(Debug)]
struct Allowlist {
    hosts: Vec<String>,
    domains: Vec<String>,
}

impl Allowlist {
    fn new(brokers: &[String]) -> Self {
        let mut hosts = Vec::new();
        let mut domains = Vec::new();
        for broker in brokers {
            let host = split_host_port(broker).0.to_ascii_lowercase();
            let is_ip = host.parse::<std::net::IpAddr>().is_ok();
            if !is_ip
                && let Some((_, parent)) = host.split_once('.')
                && parent.contains('.')
            {
                domains.push(format!(".{parent}"));
            }
            hosts.push(host);
        }
        Self { hosts, domains }
    }

    fn allows(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.hosts.contains(&host) || self.domains.iter().any(|d| host.ends_with(d.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowlist_takes_bootstrap_hosts_and_their_domain() {
        let list = Allowlist::new(&[
            "pkc-12345.us-east-1.aws.confluent.cloud:9092".to_owned(),
            "127.0.0.1:9093".to_owned(),
            "localhost:9094".to_owned(),
        ]);
        assert!(list.allows("pkc-12345.us-east-1.aws.confluent.cloud"));
        assert!(list.allows("b3-pkc-12345.us-east-1.aws.confluent.cloud"));
        assert!(list.allows("LOCALHOST"));
        assert!(list.allows("127.0.0.1"));
        assert!(!list.allows("127.0.0.2"));
        assert!(!list.allows("evil.example.com"));
        assert!(!list.allows("aws.confluent.cloud"));
        // A single-label parent would admit a whole top-level domain.
        let bare = Allowlist::new(&["kafka.local:9092".to_owned()]);
        assert!(!bare.allows("other.local"));
    }

    #[test]
    fn hosts_are_split_from_ports() {
        assert_eq!(split_host_port("a.b:9092").0, "a.b");
        assert_eq!(split_host_port("[::1]:9092").0, "::1");
        assert_eq!(split_host_port("kafka").0, "kafka");
    }

    /// The SOCKS5 exchange as rskafka's client library performs it, against a
    /// target outside the allowlist: refused with reply code 2.
    #[tokio::test]
    async fn a_target_outside_the_allowlist_is_refused() {
        let tls = Tls::new(None).unwrap();
        let tunnel = TlsTunnel::start(tls, &["127.0.0.1:1".to_owned()], Duration::from_secs(1))
            .await
            .unwrap();
        let mut s = TcpStream::connect(tunnel.addr()).await.unwrap();
        s.write_all(&[5, 1, 0]).await.unwrap();
        let mut method = [0u8; 2];
        s.read_exact(&mut method).await.unwrap();
        assert_eq!(method, [5, 0]);
        let name = b"example.com";
        let mut request = vec![5, 1, 0, 3, name.len() as u8];
        request.extend_from_slice(name);
        request.extend_from_slice(&443u16.to_be_bytes());
        s.write_all(&request).await.unwrap();
        let mut answer = [0u8; 10];
        s.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer[1], Reply::NotAllowed as u8);
    }
}
