//! Istio's HTTP metrics, as its waypoint reports them: requests by response
//! code and flags, their duration, and the sizes of their bodies.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::labels::{Parties, Party, Reporter, SecurityPolicy, UNKNOWN};

/// Istio's buckets for `istio_request_duration_milliseconds`.
pub const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Istio's buckets for body sizes: powers of ten from 1 byte to 1 GB.
pub const SIZE_BUCKETS: [f64; 10] = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// The labels Istio gives its HTTP metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: Reporter,
    #[prometheus(flatten)]
    pub parties: Parties,
    /// The host called, fully qualified (`reviews.bookinfo.svc.cluster.local`).
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    /// `http` or `grpc`.
    pub request_protocol: String,
    pub response_code: String,
    /// Envoy's flags for a local answer (`NR`, `UH`, `UF`), else `-`.
    pub response_flags: String,
    pub connection_security_policy: SecurityPolicy,
}

/// The Service a request was for.
#[derive(Clone, Copy, Debug)]
pub struct ServiceName<'a> {
    pub host: &'a str,
    pub name: &'a str,
    pub namespace: &'a str,
}

impl RequestLabels {
    pub fn new(
        reporter: Reporter,
        source: Party<'_>,
        destination: Party<'_>,
        service: Option<ServiceName<'_>>,
        grpc: bool,
    ) -> Self {
        let service_label =
            |field: fn(ServiceName<'_>) -> &str| service.map_or(UNKNOWN, field).to_string();
        Self {
            reporter,
            parties: Parties::new(source, destination),
            destination_service: service_label(|s| s.host),
            destination_service_name: service_label(|s| s.name),
            destination_service_namespace: service_label(|s| s.namespace),
            request_protocol: if grpc { "grpc" } else { "http" }.to_string(),
            response_code: "0".to_string(),
            response_flags: "-".to_string(),
            connection_security_policy: SecurityPolicy::MutualTls,
        }
    }
}

/// The four HTTP families.
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram>,
    request_bytes: Family<RequestLabels, Histogram>,
    response_bytes: Family<RequestLabels, Histogram>,
}

/// One request, as it is recorded once its answer has been sent.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub duration: std::time::Duration,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

impl HttpMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
            request_bytes: Family::new_with_constructor(|| Histogram::new(SIZE_BUCKETS)),
            response_bytes: Family::new_with_constructor(|| Histogram::new(SIZE_BUCKETS)),
        };
        registry.register("istio_requests", "Total requests", metrics.requests.clone());
        registry.register(
            "istio_request_duration_milliseconds",
            "Time from the request's start to the end of its answer",
            metrics.duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Sizes of request bodies",
            metrics.request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Sizes of response bodies",
            metrics.response_bytes.clone(),
        );
        metrics
    }

    /// The four series of one label set. Looking them up hashes every
    /// label, so whoever records many requests with the same labels keeps
    /// them: they share their values with the families.
    pub fn series(&self, labels: &RequestLabels) -> Series {
        Series {
            requests: self.requests.get_or_create(labels).clone(),
            duration: self.duration.get_or_create(labels).clone(),
            request_bytes: self.request_bytes.get_or_create(labels).clone(),
            response_bytes: self.response_bytes.get_or_create(labels).clone(),
        }
    }
}

/// One label set's series in the four families.
#[derive(Clone)]
pub struct Series {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl Series {
    pub fn record(&self, request: Request) {
        self.requests.inc();
        self.duration
            .observe(request.duration.as_secs_f64() * 1000.0);
        self.request_bytes.observe(request.request_bytes as f64);
        self.response_bytes.observe(request.response_bytes as f64);
    }
}
