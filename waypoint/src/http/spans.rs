//! Spans of the requests the proxy carries, sent to an OpenTelemetry
//! collector over OTLP/HTTP in batches, as Envoy's OpenTelemetry tracer
//! sends them: never on a request's path, and dropped (and said so in the
//! log) rather than held when the collector is slow or away.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ambit_telemetry::trace::{self, Formats, Span, SpanContext, SpanKind};
use anyhow::{bail, Context};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Uri, Version};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const REQUEST_ID: &str = "x-request-id";

/// Spans waiting for the exporter at most; more are dropped.
const QUEUE: usize = 8192;
/// Spans in one export at most.
const BATCH: usize = 512;
/// How long a span waits for others to share its export.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// One export, from connecting to the collector's answer.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where spans go and which new traces make them.
#[derive(serde::Serialize, Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP traces URL.
    pub endpoint: String,
    /// The share of new traces sampled, in percent.
    pub sampling: f64,
}

impl TracingConfig {
    /// From `--otlp-endpoint` (`http://HOST[:PORT][/PATH]`: port 4318 and
    /// path `/v1/traces` unless given, as OTLP's exporters default) and
    /// `--trace-sampling`.
    pub fn new(endpoint: &str, sampling: f64) -> anyhow::Result<Self> {
        if !(0.0..=100.0).contains(&sampling) {
            bail!("--trace-sampling {sampling}: a percentage, from 0 to 100");
        }
        let uri: Uri = endpoint
            .parse()
            .with_context(|| format!("--otlp-endpoint {endpoint:?}: not a URL"))?;
        if uri.scheme_str() != Some("http") {
            bail!("--otlp-endpoint {endpoint:?}: only http:// (OTLP/HTTP, in plaintext to a collector beside the mesh) is spoken");
        }
        let host = uri
            .host()
            .with_context(|| format!("--otlp-endpoint {endpoint:?}: no host"))?;
        let port = uri.port_u16().unwrap_or(4318);
        let path = match uri.path() {
            "" | "/" => "/v1/traces",
            path => path,
        };
        Ok(Self {
            endpoint: format!("http://{host}:{port}{path}"),
            sampling,
        })
    }
}

/// Starts spans for requests and hands the finished ones to the exporter.
pub struct Tracer {
    sampling: f64,
    kind: SpanKind,
    queue: mpsc::Sender<Span>,
    dropped: AtomicU64,
}

/// A request's span while the request is under way.
pub struct Traced {
    context: SpanContext,
    came: Formats,
    started: SystemTime,
    method: Method,
    url: String,
    protocol: Version,
    user_agent: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
}

impl Traced {
    /// Names the proxy's span as the upstream request's parent, and
    /// keeps the request id it goes out with.
    pub fn propagate(&mut self, headers: &mut HeaderMap) {
        self.context.propagate(self.came, headers);
        self.request_id = headers.get(REQUEST_ID).cloned();
    }
}

/// How a request ended, as its span tells.
pub struct Ending<'a> {
    /// Istio's operation name: `HOST:PORT/*`.
    pub name: String,
    /// The answer's code, 0 for none.
    pub status: u16,
    pub flags: &'a str,
    /// The Envoy cluster it went to, if routed.
    pub cluster: Option<&'a str>,
    pub peer: Option<IpAddr>,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

impl Tracer {
    /// A tracer whose spans an exporter task sends to `config.endpoint`,
    /// as the proxy `resource` (OTLP's resource attributes).
    pub fn start(
        config: &TracingConfig,
        kind: SpanKind,
        resource: Vec<(&'static str, String)>,
    ) -> anyhow::Result<(Arc<Self>, JoinHandle<()>)> {
        let endpoint: Uri = config.endpoint.parse()?;
        let (queue, spans) = mpsc::channel(QUEUE);
        let tracer = Arc::new(Self {
            sampling: config.sampling,
            kind,
            queue,
            dropped: AtomicU64::new(0),
        });
        let exporter = tokio::spawn(export(endpoint, resource, spans, tracer.clone()));
        Ok((tracer, exporter))
    }

    /// The span of a request as it arrived (`scheme` as it came): a child
    /// of its caller's span, or a new trace's root.
    pub fn begin<B>(&self, request: &Request<B>, scheme: &str) -> Traced {
        let headers = request.headers();
        let (parent, came) = trace::arrived(headers);
        let ids = (fastrand::u128(..), fastrand::u64(..));
        let roll = fastrand::f64() * 100.0;
        let context = SpanContext::start(parent.as_ref(), ids, self.sampling, roll);
        // Only a sampled span is sent: the others need no URL.
        let url = match context.sampled {
            true => {
                let authority = ambit_route::matching::authority_of(request.uri(), headers);
                let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
                format!("{scheme}://{authority}{path}")
            }
            false => String::new(),
        };
        Traced {
            context,
            came,
            started: SystemTime::now(),
            method: request.method().clone(),
            url,
            protocol: request.version(),
            user_agent: headers.get(header::USER_AGENT).cloned(),
            request_id: headers.get(REQUEST_ID).cloned(),
        }
    }

    /// Sends a finished span, if its trace is sampled, with the tags
    /// Envoy gives a request's span in Istio.
    pub fn finish(&self, traced: &Traced, ending: Ending) {
        if !traced.context.sampled {
            return;
        }
        let text = |value: &Option<HeaderValue>| {
            value
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        let attributes = vec![
            ("http.url", traced.url.clone()),
            ("http.method", traced.method.to_string()),
            ("http.protocol", format!("{:?}", traced.protocol)),
            ("http.status_code", ending.status.to_string()),
            ("response_flags", ending.flags.to_string()),
            (
                "upstream_cluster",
                ending.cluster.unwrap_or("-").to_string(),
            ),
            (
                "upstream_cluster.name",
                ending.cluster.unwrap_or("-").to_string(),
            ),
            ("guid:x-request-id", text(&traced.request_id)),
            ("user_agent", text(&traced.user_agent)),
            (
                "peer.address",
                ending
                    .peer
                    .map_or_else(|| "-".to_string(), |ip| ip.to_string()),
            ),
            ("request_size", ending.request_bytes.to_string()),
            ("response_size", ending.response_bytes.to_string()),
        ];
        let span = Span {
            context: traced.context,
            name: ending.name,
            kind: self.kind,
            start_unix_nanos: unix_nanos(traced.started),
            end_unix_nanos: unix_nanos(SystemTime::now()),
            attributes,
            // As Envoy's: a server error, or no answer at all.
            error: ending.status == 0 || ending.status >= 500,
        };
        if self.queue.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Sends spans as they come, gathered for up to a second or a batch.
async fn export(
    endpoint: Uri,
    resource: Vec<(&'static str, String)>,
    mut spans: mpsc::Receiver<Span>,
    tracer: Arc<Tracer>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = spans.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH_INTERVAL;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let body = trace::otlp_json(&resource, &batch).to_string();
        let sent = tokio::time::timeout(EXPORT_TIMEOUT, post(&endpoint, body)).await;
        let failure = match sent {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(format!("{error:#}")),
            Err(_) => Some(format!("no answer within {EXPORT_TIMEOUT:?}")),
        };
        let dropped = tracer.dropped.swap(0, Ordering::Relaxed);
        if let Some(error) = failure {
            tracing::warn!(endpoint = %endpoint, spans = batch.len(), %error, "spans not exported");
        }
        if dropped > 0 {
            tracing::warn!(dropped, "spans dropped: the exporter fell behind");
        }
        batch.clear();
    }
}

/// One OTLP/HTTP export, on a connection of its own.
async fn post(endpoint: &Uri, body: String) -> anyhow::Result<()> {
    let authority = endpoint.authority().context("the endpoint has a host")?;
    let stream = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 to the collector")?;
    tokio::spawn(connection);
    let request = Request::post(endpoint.path())
        .header(header::HOST, authority.as_str())
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    if !response.status().is_success() {
        bail!("the collector answered {}", response.status());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_gets_otlps_port_and_path_unless_given_and_bad_flags_are_named() {
        for (given, expected) in [
            ("http://collector", "http://collector:4318/v1/traces"),
            ("http://collector:4318/", "http://collector:4318/v1/traces"),
            (
                "http://10.0.0.1:9000/otlp/traces",
                "http://10.0.0.1:9000/otlp/traces",
            ),
        ] {
            assert_eq!(TracingConfig::new(given, 1.0).unwrap().endpoint, expected);
        }
        for (endpoint, sampling, named) in [
            ("https://collector", 1.0, "only http://"),
            ("collector:4318", 1.0, "only http://"),
            ("http://collector", 101.0, "--trace-sampling 101"),
            ("http://collector", -1.0, "--trace-sampling -1"),
        ] {
            let error = TracingConfig::new(endpoint, sampling).unwrap_err();
            assert!(error.to_string().contains(named), "{endpoint}: {error}");
        }
    }
}
