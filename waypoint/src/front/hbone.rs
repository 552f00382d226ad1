//! HBONE from the node agents on 15008: mutual TLS as the waypoint's own
//! identity. Each CONNECT stream names the address its caller dialled (a
//! Service VIP and port); that port's table says whether the stream is
//! HTTP, routed per request, or TCP, carried whole to one endpoint.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use ambit_admin::accept::Acceptor;
use ambit_admin::Readiness;
use ambit_config::model::{Key, Mesh};
use ambit_hbone::server::{ConnectRequest, Refusal, Responder};
use ambit_hbone::Target;
use ambit_identity::Identity;
use ambit_mesh_tls::hbone::MeshTls;
use ambit_route::{Protocol, RouteTables};
use ambit_telemetry::baggage::Baggage;
use ambit_telemetry::http::HttpMetrics;
use tokio::net::TcpListener;

use crate::http::authz::Authz;
use crate::http::service::{Role, StreamContext};
use crate::http::spans::Tracer;
use crate::http::upstream::Upstream;
use crate::tables::Tables;

/// Connections from agents held at once, and from any one source pod (an
/// agent opens one per calling pod, 100 streams each).
const MAX_CONNECTIONS: usize = 4096;
const MAX_CONNECTIONS_PER_SOURCE: usize = 256;

/// What every connection reads.
pub struct Shared {
    pub mesh_tls: Arc<MeshTls>,
    pub identity: Identity,
    pub tables: Arc<Tables<RouteTables>>,
    pub upstream: Arc<Upstream>,
    pub metrics: Arc<HttpMetrics>,
    pub tracer: Option<Arc<Tracer>>,
    pub authz: Arc<Authz>,
}

/// Accepts and serves connections until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, readiness: Readiness) {
    let mut acceptor = Acceptor::new(listener, "waypoint HBONE", MAX_CONNECTIONS)
        .per_source(MAX_CONNECTIONS_PER_SOURCE)
        .reporting_to(readiness);
    loop {
        let accepted = acceptor.accept().await;
        let shared = shared.clone();
        tokio::spawn(async move {
            let _place = accepted.place;
            connection(accepted.stream, accepted.peer, shared).await;
        });
    }
}

async fn connection(stream: tokio::net::TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let local_ip = match stream.local_addr() {
        // IPv4 on a listener of both families shows as IPv4-mapped IPv6.
        Ok(local) => local.ip().to_canonical(),
        Err(_) => return,
    };
    let tls = match shared
        .mesh_tls
        .accept(
            &shared.identity,
            stream,
            ambit_hbone::server::HANDSHAKE_TIMEOUT,
        )
        .await
    {
        Ok(tls) => tls,
        // A peer that never finishes its handshake is not worth a warning
        // each (a hostile pod can open many).
        Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {
            tracing::debug!(%peer, %error, "HBONE handshake not completed");
            return;
        }
        Err(error) => {
            tracing::warn!(%peer, %error, "HBONE handshake refused");
            return;
        }
    };
    let Some(caller) = tls.peer_identity().cloned() else {
        tracing::warn!(%peer, "HBONE connection without a workload identity refused");
        return;
    };
    let caller = Arc::new(caller);
    let served = ambit_hbone::server::serve(tls, move |request, responder| {
        let (shared, caller) = (shared.clone(), caller.clone());
        async move { carry(request, responder, peer, local_ip, &caller, &shared).await }
    })
    .await;
    if let Err(error) = served {
        tracing::debug!(%peer, %error, "HBONE connection ended with an error");
    }
}

/// One CONNECT stream: to the table of the port it names.
async fn carry(
    request: ConnectRequest,
    responder: Responder,
    peer: SocketAddr,
    local_ip: IpAddr,
    caller: &Arc<Identity>,
    shared: &Shared,
) {
    let Some(current) = shared.tables.current() else {
        return responder.refuse(Refusal::Unreachable);
    };
    let target = match &request.target {
        Target::Address(target) => Some(*target),
        Target::Host { name, port } => service_address(&current.mesh, name, *port),
    };
    let Some((target, table)) =
        target.and_then(|target| Some((target, current.tables.table(target)?)))
    else {
        tracing::warn!(target = %request.target, %caller, "HBONE stream for a Service this waypoint does not serve");
        return responder.refuse(Refusal::Unreachable);
    };
    let source_ip = request.source.unwrap_or(peer.ip());
    let source = calling_pod(&current.mesh, source_ip, caller);
    // A caller the mesh does not know is named as it names itself.
    let claimed = request
        .baggage
        .filter(|_| source.is_none())
        .and_then(|baggage| Baggage::claimed(&baggage, caller));
    let context = Arc::new(StreamContext {
        table,
        mesh: current.mesh.clone(),
        role: Role::Waypoint,
        scheme: "http",
        caller: Some(caller.clone()),
        source,
        claimed,
        source_ip: Some(source_ip),
        local_ip,
        target,
        authz: shared.authz.clone(),
        upstream: shared.upstream.clone(),
        metrics: shared.metrics.clone(),
        tracer: shared.tracer.clone(),
        series: Mutex::default(),
    });
    if context.table.protocol == Protocol::Tcp {
        return carry_tcp(responder, &context).await;
    }
    let Ok(stream) = responder.accept() else {
        return;
    };
    crate::http::serve(stream, context).await;
}

/// A Service named by host (`host:port`): its address, whose table serves
/// it (its IPv4 VIP, or its IPv6 one if it has only that).
fn service_address(mesh: &Mesh, name: &str, port: u16) -> Option<SocketAddr> {
    let (_, service) = mesh.service_named(name)?;
    let vip = (service.vips.iter().find(|vip| vip.is_ipv4())).or(service.vips.first())?;
    Some(SocketAddr::new(*vip, port))
}

/// The pod the stream is from: the one at its source address, when it runs
/// as the identity the caller proved (else its labels cannot be trusted
/// for `sourceLabels`).
fn calling_pod(mesh: &Mesh, source: IpAddr, caller: &Identity) -> Option<Key> {
    let (key, workload) = mesh.workload_by_ip(source)?;
    (key.namespace == caller.namespace && workload.service_account == caller.service_account)
        .then(|| key.clone())
}

/// A TCP port: the stream to one endpoint of its route, bytes both ways.
async fn carry_tcp(responder: Responder, context: &StreamContext) {
    let destinations = context
        .table
        .tcp
        .first()
        .map_or(&[][..], |route| &route.destinations);
    let connected = crate::tcp::connect(
        &context.upstream,
        &context.mesh,
        context.local_ip,
        context.source_ip,
        destinations,
    )
    .await;
    let (mut upstream, _in_flight) = match connected {
        Ok(connected) => connected,
        Err(error) => {
            tracing::debug!(%error, "TCP upstream unreachable");
            return responder.refuse(Refusal::Unreachable);
        }
    };
    let Ok(mut stream) = responder.accept() else {
        return;
    };
    crate::tcp::join(&mut stream, &mut upstream).await;
}
