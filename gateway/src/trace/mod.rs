//! Request IDs and W3C trace context: what ties a request's access-log
//! line, its alerts, the upstream's logs and a tracing system together.
//!
//! * `X-Request-Id`: kept when the request comes from a trusted proxy
//!   (`trusted_proxies`) with a well-formed one, otherwise a new random
//!   UUID (v4) replaces whatever the client sent (a client must not pick
//!   the id an operator searches the logs by). It goes upstream, back to
//!   the client, into the access log and into alerts, and plugins read it
//!   as a request header.
//! * `traceparent` ([W3C Trace Context](https://www.w3.org/TR/trace-context/)):
//!   a valid one keeps its trace id and flags and gets a new span id for
//!   this hop (the incoming span id is this hop's parent). An invalid one
//!   is dropped with its `tracestate`. With `[tracing] start_traces`, a
//!   request without a valid one starts a new trace, and any orphan
//!   `tracestate` is dropped, as the spec's processing model says;
//!   without it, such a request passes through untouched (the gateway
//!   then forwards trace headers and takes no part in the trace).

pub mod otlp;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// The request-id header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The W3C trace parent header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The W3C trace state header.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The longest request id kept from a trusted proxy.
const MAX_REQUEST_ID: usize = 200;

/// Each byte's two lowercase hex digits: one lookup a byte.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
        i += 1;
    }
    pairs
};

fn hex_into(out: &mut [u8], bytes: &[u8]) {
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*byte)]);
    }
}

/// The length of a request id we make: a UUID's 36 characters.
const UUID_LEN: usize = 36;
/// How many request ids share one allocation.
const IDS_PER_CHUNK: usize = 112;

thread_local! {
    /// Where this thread writes its request ids. Each id is a view into
    /// a shared chunk, so making one neither allocates nor copies, and
    /// cloning it (the upstream request, the response, a retry's replay)
    /// only counts a reference. A chunk is freed when the last id in it
    /// is dropped: at most one chunk per thread outlives its requests.
    static ID_CHUNK: std::cell::RefCell<Option<bytes::BytesMut>> =
        const { std::cell::RefCell::new(None) };
}

/// A new random request id: a version 4 UUID.
pub fn new_request_id() -> HeaderValue {
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut text = [b'-'; UUID_LEN];
    hex_into(&mut text[0..8], &bytes[0..4]);
    hex_into(&mut text[9..13], &bytes[4..6]);
    hex_into(&mut text[14..18], &bytes[6..8]);
    hex_into(&mut text[19..23], &bytes[8..10]);
    hex_into(&mut text[24..36], &bytes[10..16]);
    let shared = ID_CHUNK.with_borrow_mut(|chunk| {
        let chunk = match chunk {
            Some(chunk) if chunk.capacity() >= UUID_LEN => chunk,
            _ => chunk.insert(bytes::BytesMut::with_capacity(UUID_LEN * IDS_PER_CHUNK)),
        };
        chunk.extend_from_slice(&text);
        chunk.split().freeze()
    });
    // Only hex digits and dashes: always a valid header value.
    HeaderValue::from_maybe_shared(shared).unwrap_or(HeaderValue::from_static("-"))
}

/// Whether `value` is a request id worth keeping: 1 to 200 visible ASCII
/// characters (no space or control character that could forge log fields).
fn valid_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID
        && bytes.iter().all(|b| b.is_ascii_graphic() && *b != b'"')
}

/// Sets the request's id: the trusted proxy's when `trusted` and it is
/// well formed, else a new one. Returns it.
pub fn request_id(headers: &mut HeaderMap, trusted: bool) -> HeaderValue {
    if trusted {
        let mut sent = headers.get_all(&REQUEST_ID).iter();
        if let (Some(id), None) = (sent.next(), sent.next())
            && valid_request_id(id)
        {
            return id.clone();
        }
    }
    // One lookup: `insert` replaces whatever the client sent.
    let id = new_request_id();
    headers.insert(REQUEST_ID, id.clone());
    id
}

/// The trace context of this hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace, from the caller or new.
    pub trace_id: [u8; 16],
    /// The caller's span, if the request came with a valid `traceparent`.
    pub parent_id: Option<[u8; 8]>,
    /// This hop's span.
    pub span_id: [u8; 8],
    /// The trace flags (`01`: sampled): the caller's, or for a trace
    /// started here `01` when drawn by `sample_ratio`, else `00`.
    pub flags: u8,
}

impl TraceContext {
    /// Continues the trace of `headers`, or starts one when `start`
    /// (sampled with probability `sample_ratio`), and writes this hop's
    /// `traceparent` into them. `None`: no trace (no valid `traceparent`
    /// came, and `start` is off).
    pub fn propagate(headers: &mut HeaderMap, start: bool, sample_ratio: f64) -> Option<Self> {
        // One lookup for reading and then writing `traceparent`.
        let entry = headers.entry(TRACEPARENT);
        let parsed = match &entry {
            http::header::Entry::Occupied(found) => {
                let mut all = found.iter();
                match (all.next(), all.next()) {
                    (Some(value), None) => parse_traceparent(value.as_bytes()),
                    _ => None,
                }
            }
            http::header::Entry::Vacant(_) => None,
        };
        if parsed.is_none() && !start && matches!(entry, http::header::Entry::Vacant(_)) {
            // No trace, and none to start: the gateway takes no part in
            // tracing and forwards what came, as the spec asks of a
            // forwarder; a lone `tracestate` is the next tracer's to
            // discard. (Removing it cost 150 instructions a request.)
            return None;
        }
        let context = match parsed {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                parent_id: Some(parent),
                span_id: new_span_id(),
                flags,
            },
            None if start => TraceContext {
                trace_id: new_trace_id(),
                parent_id: None,
                span_id: new_span_id(),
                flags: u8::from(sample_ratio > 0.0 && fastrand::f64() < sample_ratio),
            },
            None => {
                // An invalid (or repeated) parent: it is not passed on,
                // and its tracestate has nothing left to belong to.
                if let http::header::Entry::Occupied(invalid) = entry {
                    invalid.remove();
                }
                headers.remove(&TRACESTATE);
                return None;
            }
        };
        let value = context.traceparent();
        match entry {
            http::header::Entry::Occupied(mut found) => {
                found.insert(value);
            }
            http::header::Entry::Vacant(empty) => {
                empty.insert(value);
            }
        }
        if context.parent_id.is_none() {
            headers.remove(&TRACESTATE);
        }
        Some(context)
    }

    /// Whether the trace is sampled (flag `01`): its spans are recorded.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// This hop's `traceparent`: `00-<trace id>-<span id>-<flags>`.
    pub fn traceparent(&self) -> HeaderValue {
        let mut text = [b'-'; 55];
        text[0] = b'0';
        text[1] = b'0';
        hex_into(&mut text[3..35], &self.trace_id);
        hex_into(&mut text[36..52], &self.span_id);
        hex_into(&mut text[53..55], &[self.flags]);
        HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("-"))
    }

    /// The trace id in hex, as the access log shows it.
    pub fn trace_id_hex(&self) -> String {
        let mut text = [0u8; 32];
        hex_into(&mut text, &self.trace_id);
        String::from_utf8_lossy(&text).into_owned()
    }
}

fn new_trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..).to_be_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

fn new_span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..).to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

fn unhex(byte: u8) -> Option<u8> {
    // Lowercase only: the spec makes uppercase invalid.
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        _ => None,
    }
}

fn parse_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (unhex(pair[0])? << 4) | unhex(pair[1])?;
    }
    Some(out)
}

/// Parses a `traceparent` value: trace id, parent id, flags. Version
/// `00` must be exactly 55 characters; a later version may append fields
/// after a dash, which are ignored (the spec's forward compatibility);
/// version `ff`, all-zero ids and uppercase hex are invalid.
fn parse_traceparent(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if value.len() < 55 {
        return None;
    }
    let version = parse_hex::<1>(value.get(0..2)?)?[0];
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    if version != 0 && value.len() > 55 && value[55] != b'-' {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = parse_hex::<16>(&value[3..35])?;
    let parent = parse_hex::<8>(&value[36..52])?;
    let flags = parse_hex::<1>(&value[53..55])?[0];
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace_id, parent, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_v4_uuids_and_differ() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        let text = a.to_str().expect("ascii");
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "4");
        assert!(matches!(&text[19..20], "8" | "9" | "a" | "b"));
        assert_eq!(text.matches('-').count(), 4);
    }

    #[test]
    fn request_ids_from_shared_chunks_stay_intact_and_unique() {
        // More ids than a chunk holds, kept alive together: a new chunk
        // must never overwrite an id still in use.
        let ids: Vec<HeaderValue> = (0..IDS_PER_CHUNK * 3 + 7)
            .map(|_| new_request_id())
            .collect();
        let texts: std::collections::HashSet<String> = ids
            .iter()
            .map(|id| id.to_str().expect("ascii").to_owned())
            .collect();
        assert_eq!(texts.len(), ids.len());
        for text in &texts {
            assert_eq!(text.len(), UUID_LEN, "{text}");
            assert_eq!(&text[14..15], "4", "{text}");
            assert!(
                text.bytes()
                    .all(|b| b == b'-' || b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "{text}"
            );
        }
    }

    #[test]
    fn a_request_id_is_kept_only_from_a_trusted_proxy() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&mut headers.clone(), true), "abc-123");
        let replaced = request_id(&mut headers, false);
        assert_ne!(replaced, "abc-123");
        assert_eq!(headers.get(REQUEST_ID), Some(&replaced));
        // Two ids, or one with a space: not kept even from a trusted proxy.
        let mut two = HeaderMap::new();
        two.append(REQUEST_ID, HeaderValue::from_static("a"));
        two.append(REQUEST_ID, HeaderValue::from_static("b"));
        assert_ne!(request_id(&mut two, true), "a");
        assert_eq!(two.get_all(REQUEST_ID).iter().count(), 1);
        let mut spaced = HeaderMap::new();
        spaced.insert(REQUEST_ID, HeaderValue::from_static("a b"));
        assert_ne!(request_id(&mut spaced, true), "a b");
    }

    #[test]
    fn a_valid_traceparent_keeps_its_trace_and_gets_a_new_span() {
        let mut headers = HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        headers.insert(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        let context = TraceContext::propagate(&mut headers, false, 0.0).expect("continued");
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            context.parent_id,
            Some(0x00f0_67aa_0ba9_02b7_u64.to_be_bytes())
        );
        assert_eq!(context.flags, 1);
        let sent = headers[TRACEPARENT].to_str().expect("ascii").to_owned();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(sent.ends_with("-01"));
        assert!(!sent.contains("00f067aa0ba902b7"), "a new span id: {sent}");
        assert_eq!(headers[TRACESTATE], "congo=t61rcWkgMzE");
    }

    #[test]
    fn without_a_traceparent_nothing_changes_unless_traces_start_here() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        assert_eq!(TraceContext::propagate(&mut headers, false, 0.0), None);
        assert_eq!(headers[TRACESTATE], "congo=t61rcWkgMzE");
        assert!(headers.get(TRACEPARENT).is_none());
        let context = TraceContext::propagate(&mut headers, true, 0.0).expect("started");
        assert_eq!(context.parent_id, None);
        assert!(headers.get(TRACESTATE).is_none(), "an orphan is dropped");
        assert!(headers.get(TRACEPARENT).is_some());
        // Started traces are sampled at the ratio asked: all, or none.
        for _ in 0..20 {
            let all = TraceContext::propagate(&mut HeaderMap::new(), true, 1.0).expect("started");
            assert!(all.sampled() && all.traceparent().as_bytes().ends_with(b"-01"));
            let none = TraceContext::propagate(&mut HeaderMap::new(), true, 0.0).expect("started");
            assert!(!none.sampled() && none.traceparent().as_bytes().ends_with(b"-00"));
        }
    }

    #[test]
    fn an_invalid_traceparent_starts_a_new_trace_when_asked_and_drops_tracestate() {
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "garbage",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(TRACEPARENT, HeaderValue::from_static(bad));
            headers.insert(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
            // Not asked to start one: no trace, and nothing invalid passed on.
            let mut kept = headers.clone();
            assert_eq!(
                TraceContext::propagate(&mut kept, false, 0.0),
                None,
                "{bad}"
            );
            assert!(kept.get(TRACEPARENT).is_none() && kept.get(TRACESTATE).is_none());
            let context = TraceContext::propagate(&mut headers, true, 0.0).expect("started");
            assert_eq!(context.parent_id, None, "{bad}");
            assert_ne!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert!(headers.get(TRACESTATE).is_none(), "{bad}");
            let sent = headers[TRACEPARENT].to_str().expect("ascii");
            assert_eq!(
                parse_traceparent(sent.as_bytes()).map(|p| p.0),
                Some(context.trace_id)
            );
        }
        // A later version with an extra field is understood.
        let later = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        assert!(parse_traceparent(later).is_some());
    }
}
