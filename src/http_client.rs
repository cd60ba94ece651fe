//! A minimal HTTP/1.1 client for plain `http://` URLs, over the hyper that warp
//! already brings in: one connection per request, a deadline on the whole exchange.
//! It serves the notification webhook and the end-to-end tests.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Errors of one request.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Not an `http://` URL.
    #[error("{0:?} is not an http:// URL with a host")]
    Url(String),
    /// The TCP connection failed.
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        /// The host and port.
        authority: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("no complete answer from {authority} within {timeout:?}")]
    Timeout {
        /// The host and port.
        authority: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// The server's answer was not HTTP/1.1 as expected.
    #[error("HTTP exchange with {authority} failed: {reason}")]
    Protocol {
        /// The host and port.
        authority: String,
        /// What was wrong.
        reason: String,
    },
}

/// A parsed `http://host[:port][/path]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `host:port` as given, for the Host header.
    pub authority: String,
    /// The host, without brackets for IPv6.
    pub host: String,
    /// The port, 80 when not given.
    pub port: u16,
    /// The path and query, from `/`.
    pub path: String,
}

impl std::str::FromStr for HttpUrl {
    type Err = HttpError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let bad = || HttpError::Url(redacted(url));
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if after.is_empty() => 80,
                None => return Err(bad()),
            };
            (h.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad())?),
                None => (authority.to_owned(), 80),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        Ok(Self {
            authority: authority.to_owned(),
            host,
            port,
            path,
        })
    }
}

/// Shown without its path and query, where a webhook's token usually is: a URL
/// reaches logs and error messages, and those reach headers (`dlq.error`) and
/// whoever reads them.
impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rest = if self.path == "/" { "" } else { "/…" };
        write!(f, "http://{}{rest}", self.authority)
    }
}

/// `url` as it may be shown: its scheme and host, without the path, query or
/// user info that may hold a secret, even when it does not parse.
pub fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let more = if end < rest.len() || host.len() < authority.len() {
        "…"
    } else {
        ""
    };
    match scheme {
        "" => format!("{host}{more}"),
        _ => format!("{scheme}://{host}{more}"),
    }
}

/// The most of an answer's body that is read: a server that sends more is
/// answered with an error, not with memory.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;

/// An answer.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: http::HeaderMap,
    /// The body, whole.
    pub body: Bytes,
}

impl HttpResponse {
    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request and reads the whole answer, all within `timeout`.
pub async fn request(
    method: http::Method,
    url: &HttpUrl,
    headers: &[(&str, &str)],
    body: Bytes,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    let exchange = async {
        let stream = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|source| HttpError::Connect {
                authority: url.authority.clone(),
                source,
            })?;
        let protocol = |e: &dyn std::fmt::Display| HttpError::Protocol {
            authority: url.authority.clone(),
            reason: e.to_string(),
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| protocol(&e))?;
        let connection = tokio::spawn(connection);

        let mut builder = http::Request::builder()
            .method(method)
            .uri(url.path.as_str())
            .header(http::header::HOST, url.authority.as_str());
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(body)).map_err(|e| protocol(&e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| protocol(&e))?;
        let status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        let body = http_body_util::Limited::new(body, MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| {
                protocol(&format!(
                    "{e} (answers are read up to {MAX_ANSWER_BYTES} bytes)"
                ))
            })?
            .to_bytes();
        connection.abort();
        Ok(HttpResponse {
            status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(HttpError::Timeout {
                authority: url.authority.clone(),
                timeout,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let u: HttpUrl = "http://localhost:8080/hooks/orders?x=1".parse().unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("localhost", 8080, "/hooks/orders?x=1")
        );
        let u: HttpUrl = "http://example.com".parse().unwrap();
        assert_eq!(
            (u.port, u.path.as_str(), u.authority.as_str()),
            (80, "/", "example.com")
        );
        let u: HttpUrl = "http://[::1]:9000/h".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9000));
        for bad in [
            "https://x",
            "http://",
            "http://:80/",
            "http://h:port/",
            "ftp://x",
        ] {
            assert!(bad.parse::<HttpUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_are_shown_without_what_may_be_secret() {
        let u: HttpUrl = "http://hooks.example:8080/t/s3cr3t?key=s3cr3t"
            .parse()
            .unwrap();
        assert_eq!(u.to_string(), "http://hooks.example:8080/…");
        let bare: HttpUrl = "http://hooks.example".parse().unwrap();
        assert_eq!(bare.to_string(), "http://hooks.example");
        assert_eq!(redacted("http://u:s3cr3t@h:1/p?k=s3cr3t"), "http://h:1…");
        assert_eq!(redacted("https://h/s3cr3t"), "https://h…");
        assert_eq!(redacted("h:port/s3cr3t"), "h:port…");
        let refused = "http://h:port/s3cr3t".parse::<HttpUrl>().unwrap_err();
        assert!(!refused.to_string().contains("s3cr3t"), "{refused}");
    }

    #[tokio::test]
    async fn an_answer_is_read_up_to_its_limit() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = [0; 1024];
            let _ = conn.read(&mut request).await;
            let big = MAX_ANSWER_BYTES + 1;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {big}\r\n\r\n");
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(&vec![b'x'; big]).await;
        });
        let url: HttpUrl = format!("http://127.0.0.1:{port}/").parse().unwrap();
        let answer = request(
            http::Method::GET,
            &url,
            &[],
            Bytes::new(),
            Duration::from_secs(10),
        )
        .await;
        assert!(
            matches!(&answer, Err(HttpError::Protocol { reason, .. }) if reason.contains("read up to")),
            "{answer:?}"
        );
    }
}
