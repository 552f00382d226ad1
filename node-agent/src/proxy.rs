//! The agent's L4 proxy. Every enrolled pod gets two listeners inside its
//! own network namespace: outbound (15001), where `connect4` sends the pod's
//! connections, and inbound (15006), where `inbound_lookup` steers
//! connections to the pod. Handlers decide with the mesh snapshot, then do
//! the socket work.

pub mod admission;
mod dns_proxy;
pub mod hbone;
mod inbound;
mod kernel_relay;
mod meter;
pub mod outbound;
mod source_ports;
mod splice;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_admin::accept::Acceptor;
use ambit_cni::protocol::PodRef;
use ambit_config::model::{Key, Mesh, Workload};
use ambit_hbone::TraceParent;
use socket2::{Domain, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::AbortHandle;
use tokio_util::task::TaskTracker;

use crate::capture::ConnectionMaps;
use crate::metrics::{Metrics, Refusal, Relay, Reporter, ResponseFlags, TcpLabels};
use crate::netns::Netns;
use ambit_mesh_source::MeshHandle;

/// Where `connect4` sends a pod's outbound connections, in its namespace.
pub const OUTBOUND_LISTENER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15001);
/// Inbound listener, on loopback: `sk_lookup` hands it connections to the
/// pod's address by socket, whatever it is bound to, and nothing else from
/// outside the pod reaches it (a caller dialling the pod's 15006 is refused).
pub const INBOUND_LISTENER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15006);
const LISTEN_BACKLOG: i32 = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections a pod's plaintext listeners of one port (its own outbound
/// ones, its callers' inbound ones; IPv4 and IPv6 together) hold at once:
/// far more than an app makes, while bounding what one pod, or its callers,
/// can take of the agent's descriptors (two to four a connection).
const MAX_POD_CONNECTIONS: usize = 16384;
/// Mutual-TLS connections from other agents a pod's 15008 listeners (IPv4
/// and IPv6 together) hold at once, and from any one source pod: ztunnel
/// and Ambit open one per source pod and 100 streams, so 256 carry 25,600
/// streams from one pod, while a hostile pod's idle or half-open
/// connections (each closed after the handshake timeout) never take the
/// places of the others.
const MAX_POD_HBONE_CONNECTIONS: usize = 4096;
const MAX_POD_HBONE_CONNECTIONS_PER_SOURCE: usize = 256;

/// What every connection handler reads.
pub struct ProxyInputs {
    pub maps: ConnectionMaps,
    pub mesh: Arc<MeshHandle>,
    pub metrics: Metrics,
    /// Every proxied connection, so a stopping agent can drain them.
    pub connections: TaskTracker,
    /// With a CA: the identities and connections for HBONE between agents.
    pub mesh_tls: Option<ambit_mesh_tls::hbone::MeshTls>,
    /// What inbound policy needs beyond the mesh.
    pub policy: admission::PolicySettings,
    /// Told when a listener cannot accept.
    pub readiness: ambit_admin::Readiness,
    /// Round-robin positions of the Services pods connect to.
    pub turns: outbound::Turns,
    /// For ServiceEntries of `resolution: DNS`.
    pub resolver: ambit_dns::Resolver,
}

/// An enrolled pod as the data path sees it.
pub struct PodContext {
    pub pod: PodRef,
    /// The pod's key in the mesh model, made once rather than per connection.
    pub key: Key,
    pub netns: Arc<Netns>,
    /// For the agent's connections to the pod's apps.
    source_ports: source_ports::SourcePorts,
}

impl PodContext {
    pub fn new(pod: PodRef, netns: Arc<Netns>) -> Self {
        let key = Key::new(&pod.namespace, &pod.name);
        Self {
            pod,
            key,
            netns,
            source_ports: Default::default(),
        }
    }

    /// The pod as the mesh knows it, if it does yet.
    fn workload<'m>(&self, mesh: &'m Mesh) -> Option<(&'m Key, &'m Workload)> {
        mesh.workloads.get_key_value(&self.key)
    }
}

/// A pod's listeners, bound inside its namespace.
pub struct PodListeners {
    /// The pod's own connections, as capture sends them: over IPv4, and
    /// over IPv6 where the namespace has it.
    pub outbound: Vec<TcpListener>,
    /// Callers' plaintext connections, as capture steers them: the same.
    pub inbound: Vec<TcpListener>,
    /// HBONE from other agents, when the agent holds identities: over IPv4,
    /// and over IPv6 where the pod's namespace has it (a dual-stack pod).
    pub hbone: Vec<TcpListener>,
    /// The DNS proxy, over UDP and TCP: on IPv4, and on IPv6 where the
    /// namespace has it.
    pub dns: Vec<(tokio::net::UdpSocket, TcpListener)>,
}

impl PodListeners {
    /// Binds the listeners in the pod's namespace. SO_REUSEPORT lets a
    /// restarting agent bind beside the old one and take over.
    pub fn bind(netns: &Netns, with_hbone: bool) -> std::io::Result<Self> {
        let hbone_any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, ambit_hbone::HBONE_PORT));
        let hbone6_any = SocketAddr::from((Ipv6Addr::UNSPECIFIED, ambit_hbone::HBONE_PORT));
        let outbound6 = SocketAddr::from((Ipv6Addr::LOCALHOST, OUTBOUND_LISTENER.port()));
        let inbound6 = SocketAddr::from((Ipv6Addr::LOCALHOST, INBOUND_LISTENER.port()));
        let dns = SocketAddr::V4(dns_proxy::address());
        let dns6 = SocketAddr::from((Ipv6Addr::LOCALHOST, dns.port()));
        let (outbound, inbound, hbone, dns) = netns.run(|| {
            let hbone = match with_hbone {
                true => [
                    Some(listener(hbone_any, false)?),
                    ipv6_listener(hbone6_any, false)?,
                ],
                false => [None, None],
            };
            let outbound = [
                Some(listener(OUTBOUND_LISTENER.into(), true)?),
                ipv6_listener(outbound6, true)?,
            ];
            let inbound = [
                Some(listener(INBOUND_LISTENER.into(), false)?),
                ipv6_listener(inbound6, false)?,
            ];
            let dns = [
                Some((udp_socket(dns)?, listener(dns, false)?)),
                match ipv6_listener(dns6, false)? {
                    Some(tcp) => Some((udp_socket(dns6)?, tcp)),
                    None => None,
                },
            ];
            std::io::Result::Ok((outbound, inbound, hbone, dns))
        })??;
        let tokio = |socket: Socket| TcpListener::from_std(socket.into());
        let all = |sockets: [Option<Socket>; 2]| -> std::io::Result<Vec<TcpListener>> {
            sockets.into_iter().flatten().map(tokio).collect()
        };
        Ok(Self {
            outbound: all(outbound)?,
            inbound: all(inbound)?,
            hbone: all(hbone)?,
            dns: (dns.into_iter().flatten())
                .map(|(udp, tcp)| {
                    let udp = tokio::net::UdpSocket::from_std(udp.into())?;
                    Ok((udp, tokio(tcp)?))
                })
                .collect::<std::io::Result<_>>()?,
        })
    }
}

/// A listening socket at `addr` (an IPv6 one for IPv6 only); `local_leg`
/// when its connections come from the pod's own apps (see
/// [`without_pacing`]).
pub(crate) fn listener(addr: SocketAddr, local_leg: bool) -> std::io::Result<Socket> {
    let socket = bound(addr, Type::STREAM)?;
    if local_leg {
        // Accepted connections take the listener's congestion control.
        without_pacing(SockRef::from(&socket));
    }
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket)
}

/// A UDP socket bound at `addr` (see [`bound`]).
fn udp_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    bound(addr, Type::DGRAM)
}

/// A socket of `kind` bound at `addr` (an IPv6 one for IPv6 only), beside
/// a restarting agent's (SO_REUSEPORT).
fn bound(addr: SocketAddr, kind: Type) -> std::io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        kind.nonblocking().cloexec(),
        None,
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// [`listener`] at an IPv6 `addr`, or none where the namespace has no IPv6
/// (the kernel's or the pod's own choice): then no IPv6 peer can reach the
/// pod either.
fn ipv6_listener(addr: SocketAddr, local_leg: bool) -> std::io::Result<Option<Socket>> {
    match listener(addr, local_leg) {
        Ok(socket) => Ok(Some(socket)),
        Err(error)
            if matches!(
                error.raw_os_error(),
                Some(nix::libc::EAFNOSUPPORT | nix::libc::EADDRNOTAVAIL)
            ) =>
        {
            tracing::debug!(%error, %addr, "no IPv6 in the pod's namespace: IPv4 only");
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// Congestion control for the agent's legs to and from the pod's own apps,
/// which never leave the host: reno, which every kernel has. The node's
/// default may pace: BBR does, with TCP's own timers wherever the device
/// has no fq qdisc, as loopback never has. On a leg with no network, pacing
/// only costs CPU (6-10% of the throughput through the agents here).
const LOCAL_LEG_CONGESTION_CONTROL: &[u8] = b"reno";

/// Sets [`LOCAL_LEG_CONGESTION_CONTROL`]; a refusal keeps the node's
/// default, which only costs speed.
fn without_pacing(socket: SockRef<'_>) {
    if let Err(error) = socket.set_tcp_congestion(LOCAL_LEG_CONGESTION_CONTROL) {
        tracing::debug!(%error, "keeping the node's congestion control on a local leg");
    }
}

/// A pod's running accept loops; dropping it stops them (and closes the
/// listeners), while connections already accepted carry on.
pub struct PodProxy {
    accept_loops: Vec<AbortHandle>,
}

impl PodProxy {
    /// Keeps accepting for `grace`, then stops.
    pub fn close_after(self, grace: Duration) {
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            drop(self);
        });
    }
}

impl Drop for PodProxy {
    fn drop(&mut self) {
        for task in &self.accept_loops {
            task.abort();
        }
    }
}

/// Starts serving a pod's listeners.
pub fn start(pod: Arc<PodContext>, listeners: PodListeners, inputs: Arc<ProxyInputs>) -> PodProxy {
    let tracker = inputs.connections.clone();
    let acceptor = |listener, what, max_open| {
        Acceptor::new(listener, what, max_open).reporting_to(inputs.readiness.clone())
    };
    let mut accept_loops = Vec::new();
    // The pod's DNS limits hold for its proxy's sockets of both families.
    let dns_limits = dns_proxy::Limits::default();
    for (udp, tcp) in listeners.dns {
        let (pod, inputs) = (pod.clone(), inputs.clone());
        let udp = dns_proxy::serve_udp(udp, dns_limits.clone(), pod.clone(), inputs.clone());
        let tcp = dns_proxy::serve_tcp(tcp, dns_limits.clone(), pod, inputs);
        accept_loops.extend([
            tokio::spawn(udp).abort_handle(),
            tokio::spawn(tcp).abort_handle(),
        ]);
    }
    let inbound = sharing_limits(listeners.inbound, |listener| {
        acceptor(listener, "pod inbound", MAX_POD_CONNECTIONS)
    });
    accept_loops.extend(serve_each(inbound, &tracker, {
        let (pod, inputs) = (pod.clone(), inputs.clone());
        move |stream, peer| inbound::handle(stream, peer, pod.clone(), inputs.clone())
    }));
    let outbound = sharing_limits(listeners.outbound, |listener| {
        acceptor(listener, "pod outbound", MAX_POD_CONNECTIONS)
    });
    accept_loops.extend(serve_each(outbound, &tracker, {
        let (pod, inputs) = (pod.clone(), inputs.clone());
        move |stream, peer| outbound::handle(stream, peer, pod.clone(), inputs.clone())
    }));
    let hbone = sharing_limits(listeners.hbone, |listener| {
        let over_share = (inputs.metrics).refusals(Reporter::Destination, Refusal::OverSourceLimit);
        acceptor(listener, "pod HBONE", MAX_POD_HBONE_CONNECTIONS)
            .per_source(MAX_POD_HBONE_CONNECTIONS_PER_SOURCE)
            .counting_refusals(over_share)
    });
    accept_loops.extend(serve_each(hbone, &tracker, {
        let (pod, inputs) = (pod.clone(), inputs.clone());
        move |stream, peer| hbone::serve(stream, peer, pod.clone(), inputs.clone())
    }));
    PodProxy { accept_loops }
}

/// An accept loop per acceptor, each handing its connections to `handler`.
fn serve_each<F, Fut>(
    acceptors: Vec<Acceptor>,
    connections: &TaskTracker,
    handler: F,
) -> Vec<tokio::task::AbortHandle>
where
    F: Fn(TcpStream, SocketAddr) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    (acceptors.into_iter())
        .map(|acceptor| {
            let accepting = accept_loop(acceptor, connections.clone(), handler.clone());
            tokio::spawn(accepting).abort_handle()
        })
        .collect()
}

/// Acceptors of one port's listeners (one per address family) under one
/// set of limits, `first`'s: they bound the pod, not each family.
fn sharing_limits(
    listeners: Vec<TcpListener>,
    first: impl FnOnce(TcpListener) -> Acceptor,
) -> Vec<Acceptor> {
    let mut listeners = listeners.into_iter();
    let Some(first) = listeners.next().map(first) else {
        return Vec::new();
    };
    let others: Vec<Acceptor> = listeners.map(|listener| first.beside(listener)).collect();
    std::iter::once(first).chain(others).collect()
}

async fn accept_loop<F, Fut>(mut acceptor: Acceptor, connections: TaskTracker, handler: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = acceptor.accept().await;
        let handled = handler(accepted.stream, accepted.peer);
        let place = accepted.place;
        connections.spawn(async move {
            handled.await;
            drop(place);
        });
    }
}

/// A socket of the agent's inside `netns` to connect to `to` (of its
/// family), marked so capture never takes it; with `transparent_source`, it
/// sends from that (foreign) address and a port the pod's
/// [`source_ports::SourcePorts`] pick.
fn agent_socket(
    netns: &Netns,
    mark: u32,
    to: IpAddr,
    transparent_source: Option<(IpAddr, &source_ports::SourcePorts)>,
) -> std::io::Result<TcpSocket> {
    let domain = Domain::for_address(SocketAddr::new(to, 0));
    let socket = netns.run(|| {
        let socket = Socket::new(domain, Type::STREAM.nonblocking().cloexec(), None)?;
        socket.set_mark(mark)?;
        if let Some((source, ports)) = transparent_source {
            match source {
                IpAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
                IpAddr::V6(_) => socket.set_ip_transparent_v6(true)?,
            }
            ports.bind(&socket, source)?;
        }
        std::io::Result::Ok(socket)
    })??;
    Ok(TcpSocket::from_std_stream(socket.into()))
}

async fn connect(socket: TcpSocket, target: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(target))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One connection as telemetry sees it: counted under its labels, and one
/// access-log line when it ends.
struct Report<'a> {
    inputs: &'a ProxyInputs,
    pod: &'a PodContext,
    labels: TcpLabels,
    peer: SocketAddr,
    target: SocketAddr,
    started: Instant,
    /// The connection's id: its own, or the one its HBONE stream brought.
    trace: TraceParent,
}

impl<'a> Report<'a> {
    fn new(
        inputs: &'a ProxyInputs,
        pod: &'a PodContext,
        labels: TcpLabels,
        peer: SocketAddr,
        target: SocketAddr,
    ) -> Self {
        Self {
            inputs,
            pod,
            labels,
            peer,
            target,
            started: Instant::now(),
            trace: TraceParent::random(),
        }
    }

    /// Logged under the id the caller's proxy gave the connection, if it
    /// gave one.
    fn continuing(self, trace: Option<TraceParent>) -> Self {
        Self {
            trace: trace.unwrap_or(self.trace),
            ..self
        }
    }

    /// The connection ends before carrying anything, for `reason`.
    fn refused(mut self, flags: ResponseFlags, reason: &dyn std::fmt::Display) {
        self.labels.response_flags = flags;
        self.inputs.metrics.tcp.refused(&self.labels);
        if let Some(reason) = Refusal::of(flags) {
            self.inputs.metrics.refused(self.labels.reporter, reason);
        }
        self.log(0, 0, Some(reason));
    }

    /// With the upstream connected, `carry` copies both ways until both
    /// sides are done (a half-close is passed on). Its bytes are reported
    /// every reporting interval, as `meter` (one of its sockets) counts
    /// them, and the rest at its end.
    async fn relay(
        self,
        meter: Option<meter::Meter>,
        carry: impl std::future::Future<Output = std::io::Result<(u64, u64)>>,
    ) {
        let metrics = &self.inputs.metrics;
        metrics.tcp.opened(&self.labels);
        let _open = metrics.open(self.labels.reporter);
        let every = metrics.tcp_reporting;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Bytes each way reported so far.
        let mut reported = (0, 0);
        tokio::pin!(carry);
        let outcome = loop {
            tokio::select! {
                biased;
                outcome = &mut carry => break outcome,
                // Without a meter, the timer is never even armed.
                _ = ticks.tick(), if meter.is_some() => {
                    // The meter's socket lives as long as `carry` runs.
                    let Some((from_caller, to_caller)) = meter.as_ref().and_then(meter::Meter::read) else {
                        continue;
                    };
                    let (from_caller, to_caller) = (from_caller.max(reported.0), to_caller.max(reported.1));
                    metrics.tcp.carried(&self.labels, from_caller - reported.0, to_caller - reported.1);
                    reported = (from_caller, to_caller);
                }
            }
        };
        let (from_caller, to_caller, error) = match outcome {
            Ok((from_caller, to_caller)) => (from_caller, to_caller, None),
            Err(error) => (0, 0, Some(error)),
        };
        metrics.tcp.closed(
            &self.labels,
            from_caller.saturating_sub(reported.0),
            to_caller.saturating_sub(reported.1),
        );
        self.log(
            from_caller,
            to_caller,
            error.as_ref().map(|e| e as &dyn std::fmt::Display),
        );
    }

    fn log(&self, from_caller: u64, to_caller: u64, error: Option<&dyn std::fmt::Display>) {
        let l = &self.labels;
        let workload = |namespace: &str, name: &str| format!("{namespace}/{name}");
        tracing::info!(
            target: "access",
            pod = %self.pod.pod,
            reporter = ?l.reporter,
            trace_id = %self.trace.trace_id_hex(),
            src.addr = %self.peer,
            src.workload = %workload(&l.parties.source_workload_namespace, &l.parties.source_workload),
            src.identity = %l.parties.source_principal,
            dst.addr = %self.target,
            dst.workload = %workload(&l.parties.destination_workload_namespace, &l.parties.destination_workload),
            dst.identity = %l.parties.destination_principal,
            dst.service = %l.destination_service,
            security = ?l.connection_security_policy,
            bytes_sent = to_caller,
            bytes_recv = from_caller,
            duration_ms = self.started.elapsed().as_millis(),
            error = error.map(tracing::field::display),
            "connection complete"
        );
    }
}

/// Plain TCP both ways: forwarded inside the kernel while the relay maps
/// have room, else copied (and spliced where it pays) by the agent.
async fn carry_plain(
    client: TcpStream,
    upstream: TcpStream,
    inputs: &ProxyInputs,
    pod: &PodContext,
) -> std::io::Result<(u64, u64)> {
    let _ = client.set_nodelay(true);
    let relay = &inputs.maps.relay;
    let metrics = &inputs.metrics;
    match relay.reserve() {
        Some(slot) => {
            kernel_relay::bidirectional(client, upstream, relay, slot, &pod.netns, metrics).await
        }
        None => {
            metrics.relayed(Relay::UserSpace);
            splice::bidirectional(client, upstream).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `ss -ti` would show for a connection's congestion control.
    fn congestion_control(socket: SockRef<'_>) -> String {
        let name = socket.tcp_congestion().expect("TCP_CONGESTION");
        String::from_utf8_lossy(&name)
            .trim_end_matches('\0')
            .to_string()
    }

    #[test]
    fn connections_of_local_legs_do_not_pace_and_others_keep_the_default() {
        let default = congestion_control(SockRef::from(
            &Socket::new(Domain::IPV4, Type::STREAM, None).unwrap(),
        ));
        for (local_leg, expected) in [(true, "reno"), (false, default.as_str())] {
            let listening =
                listener(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0).into(), local_leg).unwrap();
            let port = listening.local_addr().unwrap().as_socket().unwrap().port();
            let _client =
                std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
            listening.set_nonblocking(false).unwrap();
            let (accepted, _) = listening.accept().unwrap();
            assert_eq!(
                congestion_control(SockRef::from(&accepted)),
                expected,
                "local leg: {local_leg}"
            );
        }
    }
}
