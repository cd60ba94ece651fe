//! W3C trace context: the `traceparent` (and `tracestate`) that follows an
//! order from the HTTP request through every event it causes.
//!
//! The order service continues the caller's `traceparent` or starts a trace;
//! every event record carries it in a header; each service handling a record
//! continues it with a span id of its own, so one trace id names the whole
//! journey and each hop is a span of it. Like the correlation id, the context
//! of the work in progress is a task-local ([`scope`], [`current`]) that the
//! log format and the event records read. Spans are not exported: the ids are
//! for logs and for whatever tracing the callers and readers of the topics run.

use std::fmt;
use std::future::Future;

/// The header (HTTP and Kafka) that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";
/// The header that carries vendors' trace state along with it.
pub const TRACESTATE: &str = "tracestate";
/// The HTTP response header that tells a caller the trace and span of its request
/// (Trace Context Level 2).
pub const TRACERESPONSE: &str = "traceresponse";

/// The longest `tracestate` passed on: the specification lets a hop cut it at 512.
const MAX_TRACESTATE: usize = 512;

/// One span's trace context, as a `traceparent` header says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
    state: Option<String>,
}

impl TraceContext {
    /// A new trace, sampled, for work that came with none.
    pub fn root() -> Self {
        let trace_id = loop {
            let id = *uuid::Uuid::new_v4().as_bytes();
            if id != [0; 16] {
                break id;
            }
        };
        Self {
            trace_id,
            span_id: new_span_id(),
            flags: 0x01,
            state: None,
        }
    }

    /// The context of a `traceparent` header, if it is valid; `tracestate` rides
    /// along when it is sane. An invalid one is ignored, as the specification
    /// asks: the work then starts a trace of its own.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let s = traceparent.trim();
        if !s.is_ascii() {
            return None;
        }
        let version = u8::from_str_radix(s.get(0..2)?, 16).ok()?;
        if !is_lower_hex(&s[0..2]) || version == 0xff {
            return None;
        }
        // Version 00 is exactly 55 characters; a later version may append
        // fields after a dash, which this version does not read.
        match (version, s.len()) {
            (0, 55) => {}
            (v, n) if v > 0 && (n == 55 || (n > 55 && s.as_bytes()[55] == b'-')) => {}
            _ => return None,
        }
        let bytes = s.as_bytes();
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let trace_id: [u8; 16] = hex_bytes(&s[3..35])?;
        let span_id: [u8; 8] = hex_bytes(&s[36..52])?;
        let [flags] = hex_bytes::<1>(&s[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        let state = tracestate
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= MAX_TRACESTATE && t.is_ascii())
            .map(str::to_owned);
        Some(Self {
            trace_id,
            span_id,
            flags,
            state,
        })
    }

    /// The context of work done on behalf of this span: the same trace, a new
    /// span id (whose parent this one is), the same flags and state.
    pub fn child(&self) -> Self {
        Self {
            span_id: new_span_id(),
            ..self.clone()
        }
    }

    /// The continuation of `incoming` if there is a valid one, else a new trace.
    pub fn continue_or_start(traceparent: Option<&str>, tracestate: Option<&str>) -> Self {
        traceparent
            .and_then(|t| Self::parse(t, tracestate))
            .map_or_else(Self::root, |parent| parent.child())
    }

    /// The trace id, as 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id, as 16 lowercase hex digits.
    pub fn span_id(&self) -> String {
        hex(&self.span_id)
    }

    /// The `tracestate` passed along with it, if any.
    pub fn state(&self) -> Option<&str> {
        self.state.as_deref()
    }
}

/// The `traceparent` header's value: `00-<trace id>-<span id>-<flags>`.
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }
}

fn new_span_id() -> [u8; 8] {
    loop {
        let bytes = uuid::Uuid::new_v4().into_bytes();
        let mut id = [0; 8];
        id.copy_from_slice(&bytes[..8]);
        if id != [0; 8] {
            return id;
        }
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !is_lower_hex(s) {
        return None;
    }
    let mut out = [0; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

tokio::task_local! {
    static TRACE: TraceContext;
}

/// Runs `fut` as the span `context`.
pub async fn scope<F: Future>(context: TraceContext, fut: F) -> F::Output {
    TRACE.scope(context, fut).await
}

/// The trace context of the work in progress, if any.
pub fn current() -> Option<TraceContext> {
    TRACE.try_with(Clone::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specifications_example_round_trips() {
        let context = TraceContext::parse(EXAMPLE, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id(), "00f067aa0ba902b7");
        assert_eq!(context.to_string(), EXAMPLE);
        assert_eq!(context.state(), Some("congo=t61rcWkgMzE"));
    }

    #[test]
    fn a_child_keeps_the_trace_and_gets_its_own_span() {
        let parent = TraceContext::parse(EXAMPLE, None).unwrap();
        let child = parent.child();
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_ne!(child.span_id(), parent.span_id());
        assert!(child.to_string().ends_with("-01"));
        let again = TraceContext::parse(&child.to_string(), None).unwrap();
        assert_eq!(again, child);
    }

    #[test]
    fn invalid_headers_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473é-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad, None), None, "{bad:?}");
        }
        let started = TraceContext::continue_or_start(Some("garbage"), None);
        assert_ne!(started.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn a_later_version_is_read_for_what_version_00_knows() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes";
        let context = TraceContext::parse(later, None).unwrap();
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        // Passed on as the version this build speaks.
        assert!(context.child().to_string().starts_with("00-4bf92f35"));
    }

    #[test]
    fn roots_are_new_sampled_traces() {
        let (a, b) = (TraceContext::root(), TraceContext::root());
        assert_ne!(a.trace_id(), b.trace_id());
        assert!(a.to_string().ends_with("-01"));
        assert_eq!(TraceContext::parse(&a.to_string(), None), Some(a));
    }

    #[tokio::test]
    async fn the_context_is_scoped_to_the_work() {
        assert_eq!(current(), None);
        let context = TraceContext::root();
        let inner = scope(context.clone(), async { current() }).await;
        assert_eq!(inner, Some(context));
        assert_eq!(current(), None);
    }
}
