//! Distributed tracing as Istio's proxies take part in it: the trace
//! context a request arrives with (W3C `traceparent`, Zipkin's B3 in its
//! multi-header and single-header forms), the proxy's own span as its
//! child, the headers that carry that span on to the upstream, and spans
//! in OTLP's JSON encoding. Pure: the waypoint times requests and sends.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// Which propagation formats a request carried: the same ones are written
/// on, so an app instrumented for one keeps reading it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Formats {
    pub w3c: bool,
    pub b3_multi: bool,
    pub b3_single: bool,
}

impl Formats {
    fn of(headers: &HeaderMap) -> Self {
        Self {
            w3c: headers.contains_key(TRACEPARENT),
            b3_multi: headers.contains_key(B3_TRACE_ID),
            b3_single: headers.contains_key(B3),
        }
    }
}

/// The caller's span, as the request's headers name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace: u128,
    pub span: u64,
    /// The caller's sampling decision, when it made one.
    pub sampled: Option<bool>,
}

/// What a request arrived with: its caller's span (W3C first, then B3's
/// headers, then B3's single header; a malformed one counts as absent, as
/// the W3C recommendation asks) and the formats present.
pub fn arrived(headers: &HeaderMap) -> (Option<Parent>, Formats) {
    let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let parent = text(&TRACEPARENT)
        .and_then(traceparent)
        .or_else(|| b3_multi(text))
        .or_else(|| text(&B3).and_then(b3_single));
    (parent, Formats::of(headers))
}

/// `VERSION-TRACEID-PARENTID-FLAGS`, in lower-case hex; a later version
/// may append fields after another `-`.
fn traceparent(value: &str) -> Option<Parent> {
    let (version, rest) = value.split_once('-')?;
    if version.len() != 2 || !is_lower_hex(version) || version == "ff" {
        return None;
    }
    let mut fields = rest.splitn(4, '-');
    let trace = hex_id(fields.next()?, 32)?;
    let span = hex_id(fields.next()?, 16)?;
    let flags = fields.next()?;
    if flags.len() != 2 || !is_lower_hex(flags) || (version == "00" && fields.next().is_some()) {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Parent {
        trace,
        span: u64::try_from(span).ok()?,
        sampled: Some(flags & 1 == 1),
    })
}

/// `X-B3-TraceId` (64 or 128 bits), `X-B3-SpanId`, `X-B3-Sampled`, and
/// `X-B3-Flags: 1` (debug, which means sampled).
fn b3_multi<'a>(text: impl Fn(&HeaderName) -> Option<&'a str>) -> Option<Parent> {
    let trace = b3_trace_id(text(&B3_TRACE_ID)?)?;
    let span = u64::try_from(hex_id(text(&B3_SPAN_ID)?, 16)?).ok()?;
    let debug = text(&B3_FLAGS) == Some("1");
    let sampled = match text(&B3_SAMPLED) {
        _ if debug => Some(true),
        Some("1" | "true") => Some(true),
        Some("0" | "false") => Some(false),
        _ => None,
    };
    Some(Parent {
        trace,
        span,
        sampled,
    })
}

/// `b3: TRACEID-SPANID[-SAMPLING[-PARENTSPANID]]`; a lone decision (`0`,
/// `1`, `d`) names no span.
fn b3_single(value: &str) -> Option<Parent> {
    let mut fields = value.split('-');
    let trace = b3_trace_id(fields.next()?)?;
    let span = u64::try_from(hex_id(fields.next()?, 16)?).ok()?;
    let sampled = match fields.next() {
        None => None,
        Some("1" | "d") => Some(true),
        Some("0") => Some(false),
        Some(_) => return None,
    };
    Some(Parent {
        trace,
        span,
        sampled,
    })
}

fn b3_trace_id(text: &str) -> Option<u128> {
    match text.len() {
        16 => hex_id(text, 16),
        _ => hex_id(text, 32),
    }
}

/// A non-zero id of exactly `digits` lower-case hex digits.
fn hex_id(text: &str, digits: usize) -> Option<u128> {
    if text.len() != digits || !is_lower_hex(text) {
        return None;
    }
    u128::from_str_radix(text, 16).ok().filter(|id| *id != 0)
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The proxy's span for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace: u128,
    pub span: u64,
    pub parent: Option<u64>,
    pub sampled: bool,
}

impl SpanContext {
    /// A child of the caller's span, or the root of a new trace. The
    /// caller's sampling decision holds; without one, `roll` (uniform in
    /// 0..100) under `percent` samples, as Envoy's random sampling does.
    /// `ids` are fresh random ids: a new trace's and this span's.
    pub fn start(parent: Option<&Parent>, ids: (u128, u64), percent: f64, roll: f64) -> Self {
        let by_chance = roll < percent;
        // An id of zero is invalid in both formats.
        let (new_trace, span) = (ids.0.max(1), ids.1.max(1));
        match parent {
            Some(parent) => Self {
                trace: parent.trace,
                span,
                parent: Some(parent.span),
                sampled: parent.sampled.unwrap_or(by_chance),
            },
            None => Self {
                trace: new_trace,
                span,
                parent: None,
                sampled: by_chance,
            },
        }
    }

    /// Names this span as the upstream's parent: `traceparent` always
    /// (W3C is OpenTelemetry's format), B3's headers when they came in or
    /// nothing did (the form Istio's samples forward), B3's single header
    /// when it came in. `tracestate` passes on unchanged.
    pub fn propagate(&self, came: Formats, headers: &mut HeaderMap) {
        let flags = if self.sampled { "01" } else { "00" };
        let sampled = if self.sampled { "1" } else { "0" };
        let set = |headers: &mut HeaderMap, name: HeaderName, value: String| {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        };
        set(
            headers,
            TRACEPARENT,
            format!("00-{:032x}-{:016x}-{flags}", self.trace, self.span),
        );
        if came.b3_multi || came == Formats::default() {
            set(headers, B3_TRACE_ID, format!("{:032x}", self.trace));
            set(headers, B3_SPAN_ID, format!("{:016x}", self.span));
            set(headers, B3_SAMPLED, sampled.to_string());
            match self.parent {
                Some(parent) => set(headers, B3_PARENT_SPAN_ID, format!("{parent:016x}")),
                None => {
                    headers.remove(B3_PARENT_SPAN_ID);
                }
            }
        }
        if came.b3_single {
            set(
                headers,
                B3,
                format!("{:032x}-{:016x}-{sampled}", self.trace, self.span),
            );
        }
    }
}

/// OTLP's span kinds, by their numbers in its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// The proxy answers for the service it stands in front of (a
    /// waypoint: Envoy's inbound direction).
    Server = 2,
    /// The proxy calls out on its client's behalf (an ingress gateway:
    /// Istio's gateways trace as outbound).
    Client = 3,
}

/// One finished span, as exported.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub context: SpanContext,
    /// Istio's operation name: `HOST:PORT/*`.
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// Envoy's tags as Istio sets them (`http.method`, `http.status_code`,
    /// `upstream_cluster`, `guid:x-request-id`, …), all strings as Envoy's are.
    pub attributes: Vec<(&'static str, String)>,
    /// A 5xx answer or no answer: OTLP's error status, as Envoy sets it.
    pub error: bool,
}

/// The body of an OTLP/HTTP export (`POST /v1/traces`) in OTLP's JSON
/// encoding: ids in hex, nanosecond times as decimal strings, one resource
/// (the proxy) with its `resource` attributes.
pub fn otlp_json(resource: &[(&str, String)], spans: &[Span]) -> Value {
    let attributes = |pairs: &mut dyn Iterator<Item = (&str, &str)>| -> Vec<Value> {
        pairs
            .map(|(key, value)| json!({"key": key, "value": {"stringValue": value}}))
            .collect()
    };
    let spans: Vec<Value> = spans
        .iter()
        .map(|span| {
            let context = &span.context;
            let mut encoded = json!({
                "traceId": format!("{:032x}", context.trace),
                "spanId": format!("{:016x}", context.span),
                "name": span.name,
                "kind": span.kind as u8,
                "startTimeUnixNano": span.start_unix_nanos.to_string(),
                "endTimeUnixNano": span.end_unix_nanos.to_string(),
                "attributes": attributes(&mut span.attributes.iter().map(|(k, v)| (*k, v.as_str()))),
                "status": {"code": if span.error { 2 } else { 0 }},
            });
            if let Some(parent) = context.parent {
                encoded["parentSpanId"] = json!(format!("{parent:016x}"));
            }
            encoded
        })
        .collect();
    json!({"resourceSpans": [{
        "resource": {"attributes": attributes(&mut resource.iter().map(|(k, v)| (*k, v.as_str())))},
        "scopeSpans": [{"scope": {"name": "ambit"}, "spans": spans}],
    }]})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    HeaderName::from_static(name),
                    HeaderValue::from_str(value).unwrap(),
                )
            })
            .collect()
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn the_callers_span_is_read_from_w3c_then_b3_and_malformed_context_is_ignored() {
        let trace = u128::from_str_radix(TRACE, 16).unwrap();
        let parent = |span: u64, sampled| {
            Some(Parent {
                trace,
                span,
                sampled,
            })
        };
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<Parent>);
        let cases: [Case; 14] = [
            (&[], None),
            (
                &[(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )],
                parent(0x00f0_67aa_0ba9_02b7, Some(true)),
            ),
            (
                &[(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                )],
                parent(0x00f0_67aa_0ba9_02b7, Some(false)),
            ),
            // A later version may carry more after the four fields.
            (
                &[(
                    "traceparent",
                    "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz",
                )],
                parent(0x00f0_67aa_0ba9_02b7, Some(true)),
            ),
            // Upper case, zero ids, version ff, a short id: not a context.
            (
                &[(
                    "traceparent",
                    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                )],
                None,
            ),
            (
                &[(
                    "traceparent",
                    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                )],
                None,
            ),
            (
                &[(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                )],
                None,
            ),
            (
                &[(
                    "traceparent",
                    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )],
                None,
            ),
            (
                &[(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902-01",
                )],
                None,
            ),
            // B3's headers, where W3C's is malformed or absent.
            (
                &[
                    ("traceparent", "garbage"),
                    ("x-b3-traceid", TRACE),
                    ("x-b3-spanid", "0000000000000007"),
                    ("x-b3-sampled", "0"),
                ],
                parent(7, Some(false)),
            ),
            // A 64-bit B3 trace id; debug means sampled.
            (
                &[
                    ("x-b3-traceid", "a3ce929d0e0e4736"),
                    ("x-b3-spanid", "0000000000000007"),
                    ("x-b3-flags", "1"),
                ],
                Some(Parent {
                    trace: 0xa3ce_929d_0e0e_4736,
                    span: 7,
                    sampled: Some(true),
                }),
            ),
            (
                &[(
                    "b3",
                    "4bf92f3577b34da6a3ce929d0e0e4736-0000000000000009-1-0000000000000001",
                )],
                parent(9, Some(true)),
            ),
            (
                &[("b3", "4bf92f3577b34da6a3ce929d0e0e4736-0000000000000009")],
                parent(9, None),
            ),
            // A lone sampling decision names no span.
            (&[("b3", "0")], None),
        ];
        for (given, expected) in cases {
            assert_eq!(arrived(&headers(given)).0, expected, "{given:?}");
        }
    }

    #[test]
    fn the_proxys_span_is_a_child_of_the_callers_and_its_decision_holds() {
        let parent = Parent {
            trace: 5,
            span: 6,
            sampled: Some(false),
        };
        // A roll that would sample, overruled by the caller's "no".
        let child = SpanContext::start(Some(&parent), (1, 2), 100.0, 0.0);
        assert_eq!(
            child,
            SpanContext {
                trace: 5,
                span: 2,
                parent: Some(6),
                sampled: false
            }
        );
        let undecided = Parent {
            sampled: None,
            ..parent
        };
        assert!(SpanContext::start(Some(&undecided), (1, 2), 1.0, 0.5).sampled);
        assert!(!SpanContext::start(Some(&undecided), (1, 2), 1.0, 1.5).sampled);
        let root = SpanContext::start(None, (1, 2), 1.0, 99.0);
        assert_eq!((root.trace, root.parent, root.sampled), (1, None, false));
        // Never an id of zero.
        let root = SpanContext::start(None, (0, 0), 100.0, 0.0);
        assert_eq!((root.trace, root.span, root.sampled), (1, 1, true));
    }

    #[test]
    fn the_upstream_gets_the_proxys_span_in_the_formats_that_came_in() {
        let span = SpanContext {
            trace: u128::from_str_radix(TRACE, 16).unwrap(),
            span: 0xa,
            parent: Some(0xb),
            sampled: true,
        };
        let value = |headers: &HeaderMap, name: &str| {
            headers.get(name).map(|v| v.to_str().unwrap().to_string())
        };
        // W3C alone: W3C alone, tracestate untouched.
        let mut w3c = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-000000000000000b-01",
            ),
            ("tracestate", "vendor=opaque"),
        ]);
        span.propagate(Formats::of(&w3c), &mut w3c);
        assert_eq!(
            value(&w3c, "traceparent").as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-000000000000000a-01")
        );
        assert_eq!(value(&w3c, "tracestate").as_deref(), Some("vendor=opaque"));
        assert_eq!(value(&w3c, "x-b3-spanid"), None);
        // Nothing came: both.
        let mut fresh = HeaderMap::new();
        span.propagate(Formats::default(), &mut fresh);
        assert_eq!(value(&fresh, "x-b3-traceid").as_deref(), Some(TRACE));
        assert_eq!(
            value(&fresh, "x-b3-spanid").as_deref(),
            Some("000000000000000a")
        );
        assert_eq!(
            value(&fresh, "x-b3-parentspanid").as_deref(),
            Some("000000000000000b")
        );
        assert_eq!(value(&fresh, "x-b3-sampled").as_deref(), Some("1"));
        assert!(fresh.contains_key("traceparent"));
        // B3's single header is rewritten in its own form.
        let mut single = headers(&[("b3", "4bf92f3577b34da6a3ce929d0e0e4736-000000000000000b")]);
        span.propagate(Formats::of(&single), &mut single);
        assert_eq!(
            value(&single, "b3").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736-000000000000000a-1")
        );
        assert_eq!(value(&single, "x-b3-traceid"), None);
    }

    #[test]
    fn spans_are_encoded_as_otlps_json_asks() {
        let span = Span {
            context: SpanContext {
                trace: 1,
                span: 2,
                parent: Some(3),
                sampled: true,
            },
            name: "reviews.default.svc.cluster.local:9080/*".into(),
            kind: SpanKind::Server,
            start_unix_nanos: 10,
            end_unix_nanos: 20,
            attributes: vec![("http.status_code", "503".into())],
            error: true,
        };
        let body = otlp_json(&[("service.name", "waypoint.default".into())], &[span]);
        let resource = &body["resourceSpans"][0];
        assert_eq!(
            resource["resource"]["attributes"][0],
            json!({"key": "service.name", "value": {"stringValue": "waypoint.default"}})
        );
        let encoded = &resource["scopeSpans"][0]["spans"][0];
        assert_eq!(encoded["traceId"], "00000000000000000000000000000001");
        assert_eq!(encoded["spanId"], "0000000000000002");
        assert_eq!(encoded["parentSpanId"], "0000000000000003");
        assert_eq!(encoded["kind"], 2);
        assert_eq!(encoded["startTimeUnixNano"], "10");
        assert_eq!(encoded["status"]["code"], 2);
        assert_eq!(encoded["attributes"][0]["value"]["stringValue"], "503");
    }
}
