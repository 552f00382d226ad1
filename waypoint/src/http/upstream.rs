//! Requests to endpoints: over HBONE to the endpoint's agent when it is in
//! the mesh (as the waypoint's own identity), in plain TCP when it is not.
//! HTTP/1.1 connections are kept alive per endpoint and reused once their
//! last answer is read; HTTP/2 shares one connection per endpoint. This
//! layer also keeps what load balancing counts: turns and requests in
//! flight.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ambit_config::model::{Mesh, WaypointRef};
use ambit_dns::Resolver;
use ambit_hbone::Caller;
use ambit_identity::Identity;
use ambit_mesh_tls::certificates::{meshed_identity_at, workload_identity};
use ambit_mesh_tls::hbone::{MeshTls, Party};
use ambit_route::compile::Origination;
use ambit_route::lb::Draw;
use ambit_route::limits::{Keepalive, Limits};
use ambit_route::outlier::HostResult;
use ambit_route::retry::Outcome;
use ambit_route::{Backend, Names, Resolve};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::destinations::{Breaker, ByCluster, Outliers};
use super::origination::Originations;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Bodies as the waypoint passes them on: streamed, never buffered whole.
pub type Body = BoxBody<Bytes, BoxError>;

/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 64;

pub struct Upstream {
    mesh_tls: Arc<MeshTls>,
    /// The waypoint's own identity, which upstream agents see.
    identity: Identity,
    http1: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    /// HTTP/2 connections per endpoint, with when each was opened: one,
    /// or as many as `maxConcurrentStreams` asks for the requests in flight.
    http2: Mutex<HashMap<PoolKey, Vec<Option<Http2Connection>>>>,
    /// Requests in flight per endpoint, for least request.
    active: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    /// Choices made per backend, for round robin.
    turns: Mutex<HashMap<String, usize>>,
    /// Circuit breakers of the backends that have limits.
    pub breakers: ByCluster<Breaker>,
    /// Outlier detection of the backends that have it.
    outliers: ByCluster<Outliers>,
    /// TLS started toward the endpoints of backends that ask for it.
    originations: Originations,
    /// Finds the endpoints of backends that are names (ServiceEntries
    /// resolved by DNS).
    resolver: Resolver,
}

/// Why a backend's endpoints could not be found for a request.
pub enum Unresolved {
    /// The request's host is none the backend reaches (DYNAMIC_DNS).
    NotTaken(String),
    /// DNS gave no address.
    Failed(String),
}

/// Connections are kept per endpoint and per the TLS started on them: one
/// whose server was checked for one name (or that shows one client
/// certificate) never carries a request meant for another.
type PoolKey = (SocketAddr, Option<Arc<Origination>>);

/// A shared HTTP/2 connection and when it was opened.
type Http2Connection = (http2::SendRequest<Body>, Instant);

/// A kept HTTP/1.1 connection between requests.
struct Idle {
    sender: http1::SendRequest<Body>,
    /// Requests it has carried.
    served: u32,
    since: Instant,
    opened: Instant,
}

/// Counts a request in flight to its endpoint until dropped.
pub struct InFlight {
    active: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    endpoint: SocketAddr,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut active = lock(&self.active);
        if let Some(count) = active.get_mut(&self.endpoint) {
            *count -= 1;
            if *count == 0 {
                active.remove(&self.endpoint);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Upstream {
    pub fn new(mesh_tls: Arc<MeshTls>, identity: Identity, resolver: Resolver) -> Self {
        Self {
            mesh_tls,
            identity,
            http1: Mutex::default(),
            http2: Mutex::default(),
            active: Arc::default(),
            turns: Mutex::default(),
            breakers: ByCluster::default(),
            outliers: ByCluster::default(),
            originations: Originations::default(),
            resolver,
        }
    }

    /// `backend` with the endpoints DNS gives now for a request to
    /// `authority`, when its endpoints are names (`backend.resolve`).
    pub async fn resolved(
        &self,
        backend: &Backend,
        resolve: &Resolve,
        authority: &str,
    ) -> Result<Backend, Unresolved> {
        let names = resolve.names_for(authority).map_err(Unresolved::NotTaken)?;
        let mut endpoints = Vec::new();
        let mut failures = Vec::new();
        for &(name, port) in &names {
            if let Ok(ip) = name.parse::<IpAddr>() {
                endpoints.push(SocketAddr::new(ip, port));
                continue;
            }
            match self.resolver.addresses(name).await {
                Ok(addresses) => {
                    let taken = match resolve.every_address {
                        true => addresses.len(),
                        false => 1,
                    };
                    let found = addresses.iter().take(taken);
                    endpoints.extend(found.map(|ip| SocketAddr::new(IpAddr::V4(*ip), port)));
                }
                Err(error) => failures.push(error),
            }
        }
        if endpoints.is_empty() {
            let names: Vec<&str> = names.iter().map(|(name, _)| *name).collect();
            return Err(Unresolved::Failed(match failures.is_empty() {
                true => format!("{} has no IPv4 address", names.join(", ")),
                false => failures.join("; "),
            }));
        }
        let host = match resolve.names {
            Names::OfRequest { .. } => names.first().map(|(host, _)| *host),
            Names::Listed(_) => None,
        };
        Ok(backend.resolved(endpoints, host))
    }

    /// The waypoint's own identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The endpoint of `backend` its load balancer picks now (by `hash`
    /// for consistent hashing) among those outlier detection has not
    /// ejected, counted in flight until the guard is dropped.
    pub fn pick(&self, backend: &Backend, hash: Option<u64>) -> Option<(SocketAddr, InFlight)> {
        let eligible = backend.outlier_detection.as_ref().and_then(|policy| {
            let outliers = self.outliers.of(&backend.cluster, policy);
            let mut detector = lock(&outliers.0);
            detector.eligible(&backend.endpoints, Instant::now())
        });
        let turn = {
            let mut turns = lock(&self.turns);
            // Looked up by the name compiled in; a key is made once per backend.
            let turn = match turns.get_mut(&backend.cluster) {
                Some(turn) => turn,
                None => turns.entry(backend.cluster.clone()).or_default(),
            };
            *turn = turn.wrapping_add(1);
            *turn - 1
        };
        let draw = Draw {
            turn,
            random: [fastrand::u64(..), fastrand::u64(..)],
            hash,
        };
        let mut active = lock(&self.active);
        let in_flight = |endpoint: &SocketAddr| active.get(endpoint).copied().unwrap_or(0);
        let endpoints = &backend.endpoints;
        let index = match &eligible {
            None => backend
                .load_balancer
                .pick(endpoints.len(), draw, |i| in_flight(&endpoints[i]))?,
            Some(healthy) => {
                let i = backend
                    .load_balancer
                    .pick(healthy.len(), draw, |i| in_flight(&endpoints[healthy[i]]))?;
                healthy[i]
            }
        };
        let endpoint = endpoints[index];
        *active.entry(endpoint).or_default() += 1;
        Some((
            endpoint,
            InFlight {
                active: self.active.clone(),
                endpoint,
            },
        ))
    }

    /// Records how an attempt at `endpoint` of `backend` ended, for its
    /// outlier detection if it has any.
    pub fn record(&self, backend: &Backend, endpoint: SocketAddr, result: HostResult) {
        let Some(policy) = &backend.outlier_detection else {
            return;
        };
        let outliers = self.outliers.of(&backend.cluster, policy);
        let mut detector = lock(&outliers.0);
        let pool = backend.endpoints.len();
        if detector.record(endpoint, result, pool, Instant::now()) {
            tracing::info!(%endpoint, cluster = %backend.cluster, "endpoint ejected by outlier detection");
        }
    }

    /// Sends `request` to `endpoint` of a backend with `limits`, from the
    /// waypoint at `from`.
    pub async fn send(
        &self,
        mesh: &Mesh,
        from: IpAddr,
        endpoint: SocketAddr,
        (http2, backend): (bool, &Backend),
        request: Request<Body>,
    ) -> Result<Response<Incoming>, Failure> {
        let connect = Failure::Connect;
        let limits = &backend.limits;
        let pool = (endpoint, backend.tls.clone());
        if http2 {
            let in_flight = lock(&self.active).get(&endpoint).copied().unwrap_or(1);
            let slot = limits.http2_connection(in_flight);
            let mut sender = match self.shared_http2(&pool, slot, limits) {
                Some(sender) => sender,
                None => {
                    let io = self
                        .stream(mesh, from, endpoint, (backend, Some(b"h2")))
                        .await
                        .map_err(boxed(connect))?;
                    let mut builder = http2::Builder::new(TokioExecutor::new());
                    if let Some((interval, timeout)) = limits.http2_keepalive {
                        builder
                            .timer(TokioTimer::new())
                            .keep_alive_interval(interval);
                        if let Some(timeout) = timeout {
                            builder.keep_alive_timeout(timeout);
                        }
                    }
                    let (sender, connection) = builder
                        .handshake(TokioIo::new(io))
                        .await
                        .map_err(boxed(connect))?;
                    tokio::spawn(connection);
                    let mut shared = lock(&self.http2);
                    let slots = shared.entry(pool).or_default();
                    if slots.len() <= slot {
                        slots.resize_with(slot + 1, || None);
                    }
                    slots[slot] = Some((sender.clone(), Instant::now()));
                    sender
                }
            };
            sender.ready().await.map_err(boxed(connect))?;
            return sender.send_request(request).await.map_err(sent_but_failed);
        }
        let (mut sender, served, opened) = match self.idle_http1(&pool, limits) {
            Some(idle) => (idle.sender, idle.served, idle.opened),
            None => {
                let io = self
                    .stream(mesh, from, endpoint, (backend, Some(b"http/1.1")))
                    .await
                    .map_err(boxed(connect))?;
                let (sender, connection) = http1::handshake(TokioIo::new(io))
                    .await
                    .map_err(boxed(connect))?;
                tokio::spawn(connection.with_upgrades());
                (sender, 0, Instant::now())
            }
        };
        let response = sender.send_request(request);
        let response = response.await.map_err(sent_but_failed)?;
        // Kept for the next request once this one's answer is read, unless
        // it has carried all it may (dropped, it closes once done).
        let served = served + 1;
        if limits
            .max_requests_per_connection
            .is_some_and(|max| served >= max)
        {
            return Ok(response);
        }
        let mut idle = lock(&self.http1);
        let idle = idle.entry(pool).or_default();
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push(Idle {
                sender,
                served,
                since: Instant::now(),
                opened,
            });
        }
        Ok(response)
    }

    /// The `slot`-th HTTP/2 connection of `pool`, unless it closed or
    /// is older than the destination's `maxConnectionDuration` (then it
    /// finishes what it carries, and a new one takes new requests).
    fn shared_http2(
        &self,
        pool: &PoolKey,
        slot: usize,
        limits: &Limits,
    ) -> Option<http2::SendRequest<Body>> {
        let mut shared = lock(&self.http2);
        let young = |opened: &Instant| {
            limits
                .max_connection_duration
                .is_none_or(|most| opened.elapsed() < most)
        };
        let kept = shared.get_mut(pool)?.get_mut(slot)?;
        match kept {
            Some((sender, opened)) if !sender.is_closed() && young(opened) => Some(sender.clone()),
            _ => {
                *kept = None;
                None
            }
        }
    }

    /// A kept connection of `pool` that can take a request now, idle
    /// for less than the idle timeout and opened for less than the
    /// `maxConnectionDuration` (others are closed).
    fn idle_http1(&self, pool: &PoolKey, limits: &Limits) -> Option<Idle> {
        let mut idle = lock(&self.http1);
        let kept = idle.get_mut(pool)?;
        kept.retain(|idle| {
            !idle.sender.is_closed()
                && idle.since.elapsed() < limits.idle_timeout
                && limits
                    .max_connection_duration
                    .is_none_or(|most| idle.opened.elapsed() < most)
        });
        let ready = kept.iter().position(|idle| idle.sender.is_ready())?;
        Some(kept.swap_remove(ready))
    }

    /// A byte stream to `endpoint` of `backend`: an HBONE stream to its
    /// agent when it is a pod of the mesh, else a TCP connection, in TLS
    /// (offering `alpn`) when the backend's DestinationRule asks; given up
    /// after the destination's connect timeout, its TCP keepalive set.
    pub async fn stream(
        &self,
        mesh: &Mesh,
        from: IpAddr,
        endpoint: SocketAddr,
        (backend, alpn): (&Backend, Option<&'static [u8]>),
    ) -> std::io::Result<Box<dyn Stream>> {
        let limits = &backend.limits;
        let connect_timeout = limits.connect_timeout;
        let connected = async {
            let through = backend.through.as_ref();
            let stream = self
                .connect(mesh, from, endpoint, (through, limits.tcp_keepalive))
                .await?;
            match &backend.tls {
                Some(tls) => self.originations.start(tls, alpn, stream).await,
                None => Ok(stream),
            }
        };
        tokio::time::timeout(connect_timeout, connected)
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {connect_timeout:?}"),
                )
            })?
    }

    /// A byte stream to `endpoint`: through the waypoint `through` (to
    /// one of its pods, asking for the endpoint), else over HBONE to the
    /// endpoint's agent when it is a pod of the mesh, else in plain TCP.
    async fn connect(
        &self,
        mesh: &Mesh,
        from: IpAddr,
        endpoint: SocketAddr,
        (through, keepalive): (Option<&WaypointRef>, Option<Keepalive>),
    ) -> std::io::Result<Box<dyn Stream>> {
        let dial = |address: SocketAddr| async move {
            let tcp = tokio::net::TcpStream::connect(address).await?;
            let _ = tcp.set_nodelay(true);
            if let Some(keepalive) = keepalive {
                set_keepalive(&tcp, keepalive)?;
            }
            Ok(tcp)
        };
        let trust_domain = &self.identity.trust_domain;
        let (peer, peer_ip) = match through {
            Some(waypoint) => waypoint_pod(trust_domain, mesh, waypoint, endpoint.ip())?,
            None => match meshed_identity_at(trust_domain, mesh, endpoint.ip()) {
                Some(peer) => (peer, endpoint.ip()),
                None => return Ok(Box::new(dial(endpoint).await?)),
            },
        };
        let peer = Party {
            identity: &peer,
            ip: peer_ip,
        };
        // No Service named: a kept connection to an endpoint may carry
        // requests for any of the Services it backs.
        let caller = (&self.identity, Caller::from(from));
        let tunnel = self.mesh_tls.open(caller, peer, endpoint, dial).await?;
        Ok(Box::new(tunnel))
    }
}

/// A ready pod of `waypoint`, with its identity: any, of `target`'s family
/// where it has one.
fn waypoint_pod(
    trust_domain: &str,
    mesh: &Mesh,
    waypoint: &WaypointRef,
    target: IpAddr,
) -> std::io::Result<(Identity, IpAddr)> {
    let pods: Vec<IpAddr> = mesh
        .services
        .get(&waypoint.0)
        .map(|service| service.ready_preferring(target))
        .unwrap_or_default();
    if pods.is_empty() {
        let why = format!("the waypoint {} has no ready pod", waypoint.0);
        return Err(std::io::Error::other(why));
    }
    let pod = pods[fastrand::usize(..pods.len())];
    let (key, workload) = mesh
        .workload_by_ip(pod)
        .ok_or_else(|| std::io::Error::other(format!("the waypoint pod {pod} is unknown")))?;
    Ok((workload_identity(trust_domain, key, workload), pod))
}

/// TCP keepalive as a DestinationRule's `tcpKeepalive` asks, on a new
/// connection (to a plain endpoint, or carrying HBONE to a meshed one).
fn set_keepalive(tcp: &tokio::net::TcpStream, keepalive: Keepalive) -> std::io::Result<()> {
    let mut settings = socket2::TcpKeepalive::new();
    if let Some(time) = keepalive.time {
        settings = settings.with_time(time);
    }
    if let Some(interval) = keepalive.interval {
        settings = settings.with_interval(interval);
    }
    if let Some(probes) = keepalive.probes {
        settings = settings.with_retries(probes);
    }
    socket2::SockRef::from(tcp).set_tcp_keepalive(&settings)
}

/// Why an attempt got no answer: as Envoy tells them apart for retries
/// and response flags.
#[derive(Debug)]
pub enum Failure {
    /// No connection (or none able to take the request).
    Connect(BoxError),
    /// HTTP/2 refused the stream before handling it.
    Refused(BoxError),
    /// The connection or stream ended before the answer's headers.
    Reset(BoxError),
}

impl Failure {
    pub fn error(&self) -> &BoxError {
        match self {
            Self::Connect(error) | Self::Refused(error) | Self::Reset(error) => error,
        }
    }

    /// How the attempt ended, for its retry policy.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Connect(_) => Outcome::ConnectFailure,
            Self::Refused(_) => Outcome::RefusedStream,
            Self::Reset(_) => Outcome::Reset,
        }
    }
}

fn boxed<E: Into<BoxError>>(kind: fn(BoxError) -> Failure) -> impl FnOnce(E) -> Failure {
    move |error| kind(error.into())
}

/// A request that was sent and got no answer: refused by HTTP/2, or reset.
fn sent_but_failed(error: hyper::Error) -> Failure {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(current) = cause {
        if let Some(h2) = current.downcast_ref::<h2::Error>() {
            if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return Failure::Refused(error.into());
            }
        }
        cause = current.source();
    }
    Failure::Reset(error.into())
}

/// What an upstream connection runs over.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}
