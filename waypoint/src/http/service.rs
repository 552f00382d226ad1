//! One HTTP request through the waypoint: route, pick, forward, record.
//! Local answers are Envoy's: 404 when no route matches (`NR`), 503 when
//! the destination has no endpoint (`UH`) or cannot be reached (`UF`).
//! Each request is counted in Istio's metrics and logged once its answer
//! has been sent.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ambit_config::model::{Key, Mesh};
use ambit_identity::Identity;
use ambit_mesh_tls::certificates::meshed_identity_at;
use ambit_route::actions::{Respond, Rewrite};
use ambit_route::cors::CorsVerdict;
use ambit_route::fault::{Abort, Fault};
use ambit_route::hash::RequestKey;
use ambit_route::lb::{pick_weighted, LoadBalancer};
use ambit_route::outlier::HostResult;
use ambit_route::retry::{Outcome, RetryPolicy};
use ambit_route::{Backend, Caller, PortTable};
use ambit_telemetry::baggage::Baggage;
use ambit_telemetry::http::{HttpMetrics, RequestLabels, Series, ServiceName};
use ambit_telemetry::labels::{Party, Reporter};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::authz::Authz;
use super::destinations::{Admitted, Breaker};
use super::mirror::Shadowing;
use super::replay::Replayable;
use super::spans::{Ending, Traced, Tracer};
use super::upstream::{Body, BoxError, Failure, InFlight, Unresolved, Upstream};

/// Which front a request came in by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// HBONE from the mesh: the waypoint reports the request.
    Waypoint,
    /// From outside the mesh, at an ingress gateway: it reports the
    /// request as its source, to the Service it routed to.
    Gateway,
}

/// What every request of one stream shares.
pub struct StreamContext {
    pub table: Arc<PortTable>,
    pub mesh: Arc<Mesh>,
    pub role: Role,
    /// `http` or `https`, as the request arrived.
    pub scheme: &'static str,
    /// The identity the calling agent proved for its pod; none from
    /// outside the mesh.
    pub caller: Option<Arc<Identity>>,
    /// The calling pod, when its address and identity agree (at a
    /// gateway: the gateway's own pod).
    pub source: Option<Key>,
    /// What a caller the mesh does not know told of itself (its stream's
    /// `baggage`), for its metrics' labels only.
    pub claimed: Option<Baggage>,
    /// The caller's address, as its agent forwarded it.
    pub source_ip: Option<IpAddr>,
    /// The waypoint's own address, which upstream connections come from.
    pub local_ip: IpAddr,
    /// The address the caller's agent asked for: a Service's VIP and port
    /// (or a pod's).
    pub target: SocketAddr,
    pub authz: Arc<Authz>,
    pub upstream: Arc<Upstream>,
    pub metrics: Arc<HttpMetrics>,
    /// Spans, when the proxy exports them.
    pub tracer: Option<Arc<Tracer>>,
    /// The metric series this stream's requests were counted in.
    pub series: Mutex<HashMap<SeriesKey, Series>>,
}

/// One request on its way: what its metrics and its log line need, recorded
/// when dropped, which is when its answer has been passed on.
struct Exchange {
    context: Arc<StreamContext>,
    started: Instant,
    method: http::Method,
    path: String,
    grpc: bool,
    /// The answer's code; 0 until there is one, as Envoy reports a request
    /// whose caller went away first.
    status: u16,
    flags: &'static str,
    upstream: Option<SocketAddr>,
    /// The destination the request was routed to.
    backend: Option<Arc<Backend>>,
    /// The route's name as Istio gives it to Envoy, when it has one.
    route_name: Option<String>,
    /// Counts the request against its endpoint (least request) until the
    /// answer has been passed on.
    in_flight: Option<InFlight>,
    /// Its place under the destination's circuit breakers, likewise.
    admitted: Option<Admitted>,
    /// CORS headers its answer gets, whoever gives it.
    cors: Option<HeaderMap>,
    request_bytes: Arc<AtomicU64>,
    response_bytes: u64,
    /// Its span, when the proxy traces.
    trace: Option<Traced>,
}

/// What tells one request's metric series from another's on the same
/// stream: the endpoint, the answer's code and flags, the protocol, and
/// the destination (by address: the table holds it while the stream lasts).
pub type SeriesKey = (Option<SocketAddr>, u16, &'static str, bool, usize);

impl Exchange {
    /// The series this request is counted in: looked up once per stream
    /// and key, since building and hashing Istio's labels costs more than
    /// the rest of recording.
    fn series(&self) -> Series {
        let backend = self.backend.as_ref().map_or(0, |b| Arc::as_ptr(b) as usize);
        let key = (self.upstream, self.status, self.flags, self.grpc, backend);
        let context = &self.context;
        let mut kept = context.series.lock().unwrap_or_else(|p| p.into_inner());
        kept.entry(key)
            .or_insert_with(|| context.metrics.series(&self.labels()))
            .clone()
    }

    fn labels(&self) -> RequestLabels {
        let context = &self.context;
        let mesh = &context.mesh;
        let source = context
            .source
            .as_ref()
            .and_then(|key| mesh.workloads.get_key_value(key));
        let destination_ip = self.upstream.map(|endpoint| endpoint.ip());
        let destination = destination_ip.and_then(|ip| mesh.workload_by_ip(ip));
        let destination_identity = destination_ip
            .and_then(|ip| meshed_identity_at(&context.upstream.identity().trust_domain, mesh, ip));
        let table = &context.table;
        let (reporter, principal, service) = match context.role {
            Role::Waypoint => (
                Reporter::Waypoint,
                context.caller.as_deref(),
                Some((&table.host, &table.service)),
            ),
            Role::Gateway => (
                Reporter::Source,
                Some(context.upstream.identity()),
                self.backend.as_ref().map(|b| (&b.host, &b.service)),
            ),
        };
        let mut labels = RequestLabels::new(
            reporter,
            Party {
                workload: source,
                principal,
                claimed: context.claimed.as_ref(),
            },
            Party::known(destination, destination_identity.as_ref()),
            service.map(|(host, service)| ServiceName {
                host,
                name: &service.name,
                namespace: &service.namespace,
            }),
            self.grpc,
        );
        labels.response_code = self.status.to_string();
        labels.response_flags = self.flags.to_string();
        labels
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if self.status == 0 {
            // Dropped unanswered: the caller reset the stream or closed the
            // connection (Envoy's DC), never a success.
            self.flags = match self.flags {
                "DI" => "DI,DC",
                _ => "DC",
            };
        }
        let request = ambit_telemetry::http::Request {
            duration: self.started.elapsed(),
            request_bytes: self.request_bytes.load(Ordering::Relaxed),
            response_bytes: self.response_bytes,
        };
        self.series().record(request);
        let context = &self.context;
        if let (Some(tracer), Some(traced)) = (&context.tracer, &self.trace) {
            let backend = self.backend.as_deref();
            let (host, port) = backend.map_or((&context.table.host, context.table.port), |b| {
                (&b.host, b.port)
            });
            tracer.finish(
                traced,
                Ending {
                    name: format!("{host}:{port}/*"),
                    status: self.status,
                    flags: self.flags,
                    cluster: backend.map(|b| b.cluster.as_str()),
                    peer: context.source_ip,
                    request_bytes: request.request_bytes,
                    response_bytes: request.response_bytes,
                },
            );
        }
        tracing::info!(
            target: "access",
            method = %self.method,
            path = %self.path,
            status = self.status,
            flags = self.flags,
            host = %context.table.host,
            upstream = ?self.upstream,
            route = self.route_name.as_deref().unwrap_or("-"),
            source = %Sender(context),
            duration_ms = request.duration.as_secs_f64() * 1000.0,
            request_bytes = request.request_bytes,
            response_bytes = request.response_bytes,
            "request"
        );
    }
}

/// Who sent a request, as its log line names them: the identity the
/// caller proved, else its address.
struct Sender<'a>(&'a StreamContext);

impl std::fmt::Display for Sender<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.0.caller, self.0.source_ip) {
            (Some(identity), _) => identity.fmt(f),
            (None, Some(ip)) => ip.fmt(f),
            (None, None) => f.write_str("-"),
        }
    }
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
];

pub async fn handle(
    request: Request<Incoming>,
    context: Arc<StreamContext>,
) -> Result<Response<Body>, Infallible> {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    let mut exchange = Exchange {
        context: context.clone(),
        started: Instant::now(),
        method: request.method().clone(),
        path: request.uri().path().to_string(),
        grpc,
        status: 0,
        flags: "-",
        upstream: None,
        backend: None,
        route_name: None,
        in_flight: None,
        admitted: None,
        cors: None,
        request_bytes: Arc::default(),
        response_bytes: 0,
        trace: context
            .tracer
            .as_ref()
            .map(|tracer| tracer.begin(&request, context.scheme)),
    };
    let mut response = match forward(request, &context, &mut exchange).await {
        Ok(response) => response,
        Err((status, flag, message)) => {
            exchange.flags = flag;
            local(status, message)
        }
    };
    if let Some(cors) = exchange.cors.take() {
        response.headers_mut().extend(cors);
    }
    exchange.status = response.status().as_u16();
    // Counted and recorded as the answer's body passes.
    let (parts, body) = response.into_parts();
    let body = body
        .map_frame(move |frame| {
            // The whole exchange moves into the body, recorded when it drops.
            let exchange = &mut exchange;
            if let Some(data) = frame.data_ref() {
                exchange.response_bytes += data.len() as u64;
            }
            frame
        })
        .boxed();
    Ok(Response::from_parts(parts, body))
}

type Refusal = (StatusCode, &'static str, String);

async fn forward(
    request: Request<Incoming>,
    context: &StreamContext,
    exchange: &mut Exchange,
) -> Result<Response<Body>, Refusal> {
    let mut request = request;
    // An HTTP/1.1 upgrade (WebSocket): passed on, then both upgraded
    // connections are joined.
    let upgrade = upgrade_asked(request.headers())
        .map(|protocol| (protocol, hyper::upgrade::on(&mut request)));
    let (mut parts, body) = request.into_parts();
    normalize_path(&mut parts);
    if let Err(why) = context.authz.check(context, &parts, parts.uri.path()) {
        tracing::debug!(caller = ?context.caller, path = parts.uri.path(), %why, "request denied");
        return Err((
            StatusCode::FORBIDDEN,
            "-",
            "RBAC: access denied".to_string(),
        ));
    }
    let workload = context
        .source
        .as_ref()
        .and_then(|key| Some((key, context.mesh.workloads.get(key)?)));
    let caller = Caller {
        namespace: workload.map(|(key, _)| key.namespace.as_str()),
        labels: workload.map(|(_, workload)| &workload.labels),
    };
    let routed = context.table.route(&parts, context.scheme, caller).ok_or((
        StatusCode::NOT_FOUND,
        "NR",
        "no route".to_string(),
    ))?;
    exchange.route_name = routed.name();
    let route = routed.route;
    let actions = &route.actions;
    // Envoy's CORS filter runs before its fault filter.
    if let Some(cors) = &actions.cors {
        match cors.verdict(&parts) {
            CorsVerdict::PassOn => {}
            CorsVerdict::Answer(headers) => {
                let mut response = answer(StatusCode::OK, Bytes::new());
                response.headers_mut().extend(headers);
                return Ok(response);
            }
            CorsVerdict::Annotate(headers) => exchange.cors = Some(headers),
        }
    }
    if let Some(fault) = &actions.fault {
        if let Some(aborted) = inject(fault, exchange).await {
            return Ok(aborted);
        }
    }
    if let Some(respond) = &actions.respond {
        let arrived = (context.scheme, context.table.port);
        let mut response = respond_with(respond, &parts, arrived, routed.matched);
        actions.response_headers.apply(response.headers_mut());
        return Ok(response);
    }
    if let Some(rewrite) = &actions.rewrite {
        rewrite_request(&mut parts, rewrite, routed.matched);
    }
    let chosen = pick_weighted(
        route.destinations.iter().map(|d| d.weight),
        fastrand::u64(..),
    )
    .ok_or((
        StatusCode::SERVICE_UNAVAILABLE,
        "NR",
        "no weighted destination".to_string(),
    ))?;
    let destination = &route.destinations[chosen];
    let backend = &destination.backend;
    exchange.backend = Some(backend.clone());
    // Endpoints that are names (a ServiceEntry resolved by DNS): found now.
    let resolved;
    let backend: &Backend = match &backend.resolve {
        None => backend,
        Some(resolve) => {
            let authority = ambit_route::matching::authority(&parts);
            resolved = context
                .upstream
                .resolved(backend, resolve, authority)
                .await
                .map_err(|unresolved| match unresolved {
                    Unresolved::NotTaken(why) => (StatusCode::NOT_FOUND, "NR", why),
                    Unresolved::Failed(why) => (StatusCode::SERVICE_UNAVAILABLE, "DF", why),
                })?;
            &resolved
        }
    };
    // Consistent hashing: the request's key, or a cookie to give it one.
    let (hash, new_cookie) = match &backend.load_balancer {
        LoadBalancer::ConsistentHash(policy) => {
            match policy.key_of(&parts, context.source_ip, fastrand::u64(..)) {
                RequestKey::Hash(hash) => (Some(hash), None),
                RequestKey::NewCookie(value) => (
                    Some(ambit_route::hash::hash(value.as_bytes())),
                    policy.set_cookie(&value),
                ),
                RequestKey::None => (None, None),
            }
        }
        _ => (None, None),
    };
    // An upgrade is HTTP/1.1's to ask for: it goes on in HTTP/1.1.
    let http2 = upgrade.is_none() && backend.upstream.http2_for(parts.version);
    prepare(&mut parts, http2);
    if let Some(traced) = &mut exchange.trace {
        traced.propagate(&mut parts.headers);
    }
    // The destination's edits, then the route's, as Envoy orders them.
    destination.request_headers.apply(&mut parts.headers);
    actions.request_headers.apply(&mut parts.headers);
    if let (Some((protocol, _)), false) = (&upgrade, http2) {
        parts.headers.insert(header::UPGRADE, protocol.clone());
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let counted = exchange.request_bytes.clone();
    let body = body
        .map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                counted.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            frame
        })
        .map_err(BoxError::from)
        .boxed();
    // An upgraded connection is neither copied nor tried again.
    let body = match (&upgrade, route.mirrors.is_empty()) {
        (None, false) => Shadowing {
            upstream: context.upstream.clone(),
            mesh: context.mesh.clone(),
            local_ip: context.local_ip,
            timeout: actions.timeout,
        }
        .copy(&route.mirrors, &parts, body),
        _ => body,
    };
    let retry = actions.retry.as_ref().filter(|_| upgrade.is_none());
    let attempts = Attempts {
        context,
        backend,
        hash,
        http2,
        retry,
    };
    let sent = attempts.send(parts, body, exchange);
    // The route's timeout runs until the answer's headers, retries included.
    let response = match actions.timeout {
        Some(timeout) => tokio::time::timeout(timeout, sent).await.map_err(|_| {
            (
                StatusCode::GATEWAY_TIMEOUT,
                "UT",
                "upstream request timeout".to_string(),
            )
        })?,
        None => sent.await,
    }?;
    let mut response = response;
    let switched = match upgrade {
        Some((protocol, client)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
            let upstream = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                if let (Ok(client), Ok(upstream)) = (client.await, upstream.await) {
                    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
            Some(protocol)
        }
        _ => None,
    };
    let (mut parts, body) = response.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    destination.response_headers.apply(&mut parts.headers);
    actions.response_headers.apply(&mut parts.headers);
    if let Some(protocol) = switched {
        parts.headers.insert(header::UPGRADE, protocol);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if let Some(cookie) = new_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        parts.headers.append(header::SET_COOKIE, cookie);
    }
    Ok(Response::from_parts(
        parts,
        body.map_err(BoxError::from).boxed(),
    ))
}

/// Tries after the first one of a host not tried yet, as Envoy's
/// `previous_hosts` predicate asks of the load balancer (Istio sets 5).
const HOST_SELECTION_ATTEMPTS: usize = 5;

/// One request's attempts at its destination.
struct Attempts<'a> {
    context: &'a StreamContext,
    backend: &'a Backend,
    /// The request's consistent-hash key, if its destination hashes.
    hash: Option<u64>,
    http2: bool,
    retry: Option<&'a RetryPolicy>,
}

/// Where a retried request's body comes from for each attempt.
enum Bodies {
    /// Nothing to send, however often.
    Empty,
    Replay(Replayable),
}

impl Bodies {
    fn next(&self) -> Option<Body> {
        match self {
            Self::Empty => Some(empty()),
            Self::Replay(replayable) => replayable.attempt().map(BodyExt::boxed),
        }
    }
}

impl Attempts<'_> {
    /// Sends the request to an endpoint, and again (to another where there
    /// is one) while the retry policy retries how it ended and its body can
    /// be sent again; the last answer or failure is the request's.
    async fn send(
        &self,
        parts: http::request::Parts,
        body: Body,
        exchange: &mut Exchange,
    ) -> Result<Response<Incoming>, Refusal> {
        let limits = &self.backend.limits;
        let breaker = limits.breaks().then(|| {
            self.context
                .upstream
                .breakers
                .of(&self.backend.cluster, limits)
        });
        let Some(policy) = self.retry else {
            self.admit(breaker.as_deref(), exchange).await?;
            let endpoint = self.pick(&[], exchange)?;
            let sent = self
                .attempt(endpoint, Request::from_parts(parts, body))
                .await;
            self.record(endpoint, sent.as_ref().ok());
            return sent.map_err(|failure| failed(&failure, false));
        };
        let bodies = match hyper::body::Body::is_end_stream(&body) {
            true => Bodies::Empty,
            false => Bodies::Replay(Replayable::new(body)),
        };
        // Consistent hashing keeps its endpoint, as Istio leaves the
        // predicate out then.
        let other_hosts = policy.other_hosts && self.hash.is_none();
        let mut tried = Vec::new();
        let mut body = bodies.next();
        // A retry's place under maxRetries, held while it is in flight.
        let mut _retrying = None;
        let mut retries = 0;
        loop {
            self.admit(breaker.as_deref(), exchange).await?;
            let avoid = if other_hosts { &tried[..] } else { &[] };
            let endpoint = self.pick(avoid, exchange)?;
            tried.push(endpoint);
            let request = attempt_request(&parts, body.take().unwrap_or_else(empty));
            let sent = self.attempt(endpoint, request);
            let ended = match policy.per_try_timeout {
                Some(limit) => tokio::time::timeout(limit, sent).await.ok(),
                None => Some(sent.await),
            };
            self.record(endpoint, ended.as_ref().and_then(|sent| sent.as_ref().ok()));
            let outcome = match &ended {
                None => Outcome::Timeout,
                Some(Ok(response)) => Outcome::Answered {
                    status: response.status().as_u16(),
                    grpc: grpc_status(response.headers()),
                },
                Some(Err(failure)) => failure.outcome(),
            };
            let retried = policy.retries(outcome);
            if retried && retries < policy.attempts {
                // Within maxRetries (Some), holding a place when counted.
                let allowed = match &breaker {
                    Some(breaker) => breaker.retry().map(Some),
                    None => Some(None),
                };
                body = allowed.is_some().then(|| bodies.next()).flatten();
                _retrying = allowed.flatten();
                if body.is_some() {
                    retries += 1;
                    tokio::time::sleep(policy.wait(retries, fastrand::u64(..))).await;
                    continue;
                }
            }
            return match ended {
                Some(Ok(response)) => {
                    if retried {
                        exchange.flags = "URX";
                    }
                    Ok(response)
                }
                Some(Err(failure)) => Err(failed(&failure, retried)),
                None => Err((
                    StatusCode::GATEWAY_TIMEOUT,
                    if retried { "UT,URX" } else { "UT" },
                    "upstream request timeout".to_string(),
                )),
            };
        }
    }

    /// One attempt: `request` to `endpoint`.
    async fn attempt(
        &self,
        endpoint: SocketAddr,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, Failure> {
        let context = self.context;
        let how = (self.http2, self.backend);
        let sent = context
            .upstream
            .send(&context.mesh, context.local_ip, endpoint, how, request);
        sent.await
    }

    /// How an attempt at `endpoint` ended (its answer, or none), for the
    /// destination's outlier detection.
    fn record(&self, endpoint: SocketAddr, answer: Option<&Response<Incoming>>) {
        let result = match answer {
            Some(response) => HostResult::Answered(response.status().as_u16()),
            None => HostResult::Failed,
        };
        self.context.upstream.record(self.backend, endpoint, result);
    }

    /// A place for the next attempt under the destination's circuit
    /// breakers, if it has any (the last attempt's given back first).
    async fn admit(
        &self,
        breaker: Option<&Breaker>,
        exchange: &mut Exchange,
    ) -> Result<(), Refusal> {
        let Some(breaker) = breaker else {
            return Ok(());
        };
        exchange.admitted = None;
        exchange.admitted = Some(
            breaker.admit(self.http2).await.ok_or((
                StatusCode::SERVICE_UNAVAILABLE,
                "UO",
                "upstream connect error or disconnect/reset before headers. reset reason: overflow"
                    .to_string(),
            ))?,
        );
        Ok(())
    }

    /// An endpoint for the next attempt, avoiding those in `avoid` where
    /// the load balancer offers another; counted in flight.
    fn pick(&self, avoid: &[SocketAddr], exchange: &mut Exchange) -> Result<SocketAddr, Refusal> {
        let no_endpoint = || {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "UH",
                "no healthy upstream".to_string(),
            )
        };
        let upstream = &self.context.upstream;
        let mut chosen = upstream
            .pick(self.backend, self.hash)
            .ok_or_else(no_endpoint)?;
        for _ in 0..HOST_SELECTION_ATTEMPTS {
            if !avoid.contains(&chosen.0) {
                break;
            }
            chosen = upstream
                .pick(self.backend, self.hash)
                .ok_or_else(no_endpoint)?;
        }
        let (endpoint, in_flight) = chosen;
        exchange.upstream = Some(endpoint);
        exchange.in_flight = Some(in_flight);
        Ok(endpoint)
    }
}

pub(super) fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// One attempt's request (or a mirror's copy): the same head each time.
pub(super) fn attempt_request(parts: &http::request::Parts, body: Body) -> Request<Body> {
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request
}

/// The `grpc-status` of a trailers-only answer.
fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The waypoint's answer when no attempt got one, flagged as Envoy flags
/// it (`URX` when retries ran out).
fn failed(failure: &Failure, retried: bool) -> Refusal {
    let flags = match (failure, retried) {
        (Failure::Connect(_), false) => "UF",
        (Failure::Connect(_), true) => "UF,URX",
        (Failure::Refused(_), false) => "UR",
        (Failure::Refused(_), true) => "UR,URX",
        (Failure::Reset(_), false) => "UC",
        (Failure::Reset(_), true) => "UC,URX",
    };
    let error = failure.error();
    tracing::debug!(%error, flags, "upstream request failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        flags,
        format!("upstream connect error or disconnect/reset before headers: {error}"),
    )
}

/// A request id as Envoy makes one: a random (version 4) UUID.
fn request_id(random: u128) -> String {
    let id = (random & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let hex = format!("{id:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The request as the upstream connection carries it: HTTP/1.1 in origin
/// form with `Host`, HTTP/2 in absolute form; hop-by-hop headers dropped;
/// a request id and the forwarded protocol added when absent, as Envoy does.
pub(super) fn prepare(parts: &mut http::request::Parts, http2: bool) {
    let authority = ambit_route::matching::authority(parts).to_string();
    remove_hop_by_hop(&mut parts.headers);
    let headers = &mut parts.headers;
    if !headers.contains_key("x-request-id") {
        if let Ok(id) = HeaderValue::from_str(&request_id(fastrand::u128(..))) {
            headers.insert("x-request-id", id);
        }
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if http2 {
        parts.version = http::Version::HTTP_2;
        if let Ok(uri) = Uri::builder()
            .scheme("http")
            .authority(authority.as_str())
            .path_and_query(path)
            .build()
        {
            parts.uri = uri;
        }
        parts.headers.remove(header::HOST);
    } else {
        parts.version = http::Version::HTTP_11;
        if let Ok(uri) = path.parse() {
            parts.uri = uri;
        }
        if let Ok(host) = HeaderValue::from_str(&authority) {
            parts.headers.insert(header::HOST, host);
        }
    }
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection:
/// upgrade` with `Upgrade: PROTOCOL`).
fn upgrade_asked(headers: &HeaderMap) -> Option<HeaderValue> {
    connection_tokens(headers)
        .any(|token| token.eq_ignore_ascii_case("upgrade"))
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// The options the `Connection` headers list.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
}

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
    // `te: trailers` is the one value HTTP/2 (gRPC) keeps.
    if headers
        .get(header::TE)
        .is_some_and(|te| te.as_bytes() != b"trailers")
    {
        headers.remove(header::TE);
    }
}

/// The request's path with its dot segments resolved, as it is routed,
/// authorized and passed on.
fn normalize_path(parts: &mut http::request::Parts) {
    let path = parts.uri.path();
    let normalized = ambit_route::matching::normalized_path(path);
    if normalized == path {
        return;
    }
    if let Some(uri) = with_path(&parts.uri, &normalized, None) {
        parts.uri = uri;
    }
}

/// `uri` with `path` in place of its own (its query kept) and, when it
/// names one, `authority` in place of its authority.
fn with_path(uri: &Uri, path: &str, authority: Option<&str>) -> Option<Uri> {
    let mut rebuilt = Uri::builder();
    if let Some(scheme) = uri.scheme() {
        rebuilt = rebuilt.scheme(scheme.clone());
    }
    match (authority, uri.authority()) {
        (Some(new), Some(_)) => rebuilt = rebuilt.authority(new),
        (None, Some(old)) => rebuilt = rebuilt.authority(old.clone()),
        _ => {}
    }
    let path_and_query = ambit_route::actions::with_query(path, uri.query());
    rebuilt.path_and_query(path_and_query).build().ok()
}

/// The answer a route gives by itself: its direct response, or a
/// redirect from where the request was going.
fn respond_with(
    respond: &Respond,
    parts: &http::request::Parts,
    (scheme, port): (&str, u16),
    matched: Option<&ambit_route::matching::RequestMatch>,
) -> Response<Body> {
    match respond {
        Respond::Direct { status, body } => answer(status_or_ok(*status), body.clone().into()),
        Respond::Redirect(redirect) => {
            let authority = ambit_route::matching::authority(parts);
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let matched_uri = matched.and_then(|m| m.uri.as_ref());
            let location = redirect.location(scheme, authority, path, port, matched_uri);
            let mut response = answer(status_or_ok(redirect.status), Bytes::new());
            if let Ok(location) = HeaderValue::try_from(location) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
    }
}

/// A status compiled from a route (always valid), as a `StatusCode`.
fn status_or_ok(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
}

/// An answer of the waypoint's own, with `body` whole.
fn answer(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response
}

/// The route's `rewrite`: the path (what the match matched, or by regex)
/// and the authority the upstream sees.
fn rewrite_request(
    parts: &mut http::request::Parts,
    rewrite: &Rewrite,
    matched: Option<&ambit_route::matching::RequestMatch>,
) {
    let uri = &parts.uri;
    let path = rewrite.path(uri.path(), matched.and_then(|m| m.uri.as_ref()));
    let authority = rewrite.authority.as_deref();
    if let Some(uri) = with_path(uri, path.as_deref().unwrap_or(uri.path()), authority) {
        parts.uri = uri;
    }
    if let Some(host) = authority.and_then(|a| HeaderValue::try_from(a).ok()) {
        parts.headers.insert(header::HOST, host);
    }
}

/// The route's fault, as Envoy's fault filter injects it: the delay, then
/// the abort, each for its share of requests. The answer when aborted.
async fn inject(fault: &Fault, exchange: &mut Exchange) -> Option<Response<Body>> {
    if let Some(delay) = fault
        .delay
        .as_ref()
        .and_then(|d| d.for_draw(fastrand::f64()))
    {
        exchange.flags = "DI";
        tokio::time::sleep(*delay).await;
    }
    let abort = fault
        .abort
        .as_ref()
        .and_then(|a| a.for_draw(fastrand::f64()))?;
    exchange.flags = match exchange.flags {
        "DI" => "DI,FI",
        _ => "FI",
    };
    Some(match *abort {
        Abort::Http(status) => local(status_or_ok(status), "fault filter abort".to_string()),
        // gRPC's trailers-only answer: the status in the headers.
        Abort::Grpc(code) => {
            let mut response = local(StatusCode::OK, String::new());
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            headers.insert("grpc-status", HeaderValue::from(code));
            headers.insert(
                "grpc-message",
                HeaderValue::from_static("fault filter abort"),
            );
            response
        }
    })
}

/// An answer the waypoint makes itself, in plain text.
fn local(status: StatusCode, message: String) -> Response<Body> {
    let mut response = answer(status, Bytes::from(message));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

#[cfg(test)]
mod tests {
    use super::request_id;

    #[test]
    fn request_ids_are_version_4_uuids_as_envoys_are() {
        assert_eq!(request_id(0), "00000000-0000-4000-8000-000000000000");
        assert_eq!(
            request_id(u128::MAX),
            "ffffffff-ffff-4fff-bfff-ffffffffffff"
        );
        let id = request_id(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(id, "01234567-89ab-4def-8123-456789abcdef");
    }
}
