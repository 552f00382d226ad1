//! Between agents over HBONE, once the agent holds workload identities:
//! an outbound connection to a pod of the mesh becomes a CONNECT stream,
//! in mutual TLS as the calling pod's identity, to port 15008 of the
//! destination pod, whose identity is checked; the destination pod's 15008
//! listener terminates it and connects to the app from the caller's
//! address. Plain TCP remains for peers outside the mesh.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use ambit_admin::accept::at_most;
use ambit_config::model::Mesh;
use ambit_ebpf_common::AGENT_MARK;
use ambit_hbone::client::Connection;
use ambit_hbone::pool::Pool;
use ambit_hbone::server::{ConnectRequest, Refusal, Responder};
use ambit_hbone::{ReadBuffered, TunnelStream};
use ambit_identity::tls::{client_config, peer_identity, server_config};
use ambit_identity::{Identity, TrustBundle, WorkloadCertificate};
use rustls::pki_types::ServerName;
use rustls::ServerConfig;
use tokio::net::TcpStream;

use super::admission::{admit, Proof};
use super::inbound::connect_app;
use super::{agent_socket, connect, PodContext, ProxyInputs, Report};
use crate::certificates::Certificates;
use crate::metrics::{Party, Reporter, ResponseFlags, SecurityPolicy, TcpLabels};

/// Connections are pooled per calling pod (its identity and address),
/// destination identity and destination address: a connection is dialled
/// from its caller's namespace and speaks for that pod alone.
type PoolKey = (Identity, IpAddr, Identity, IpAddr);

/// A pooled connection to another agent that carries no stream and has
/// opened none for this long is closed, so a node does not keep a TLS
/// connection to every pod its pods ever called.
const IDLE_CONNECTION: std::time::Duration = std::time::Duration::from_secs(300);

/// How long a connection waits for its pod's first certificate.
const CERTIFICATE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Encrypted bytes rustls may hold for the socket (its default is 64 KiB):
/// in bulk, each write then carries sixteen records rather than four.
const TLS_WRITE_BUFFER: usize = 256 * 1024;

pub struct MeshTls {
    certificates: Arc<Certificates>,
    bundle: TrustBundle,
    /// Tagged with the expiry of the certificate each connection proved.
    pool: Arc<Pool<PoolKey, std::time::SystemTime>>,
    /// The 15008 listeners' TLS configuration per identity, made once per
    /// certificate rather than once per connection.
    server_configs: Mutex<HashMap<Identity, (std::time::SystemTime, Arc<ServerConfig>)>>,
}

impl MeshTls {
    pub fn new(certificates: Arc<Certificates>, bundle: TrustBundle) -> Self {
        Self {
            certificates,
            bundle,
            pool: Arc::default(),
            server_configs: Mutex::default(),
        }
    }

    /// The server configuration proving `certificate`, made on first use.
    fn server_config(
        &self,
        certificate: &WorkloadCertificate,
    ) -> Result<Arc<ServerConfig>, ambit_identity::tls::TlsError> {
        let mut configs = self
            .server_configs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((made_for, config)) = configs.get(&certificate.identity) {
            if *made_for == certificate.not_after {
                return Ok(config.clone());
            }
        }
        let config = Arc::new(server_config(certificate, &self.bundle)?);
        // Rare (a new certificate): forget identities no longer held.
        configs.retain(|identity, _| self.certificates.get(identity).is_some());
        configs.insert(
            certificate.identity.clone(),
            (certificate.not_after, config.clone()),
        );
        Ok(config)
    }

    pub fn certificates(&self) -> &Certificates {
        &self.certificates
    }

    /// The task that closes idle pooled connections, checking every tenth
    /// of the idle time.
    pub fn release_idle_connections(&self) -> impl std::future::Future<Output = ()> + 'static {
        let pool = self.pool.clone();
        async move {
            let mut ticks = tokio::time::interval(IDLE_CONNECTION / 10);
            loop {
                ticks.tick().await;
                pool.release_idle(IDLE_CONNECTION);
            }
        }
    }

    /// The identity of the enrolled pod at `ip`, if there is one: only
    /// such a pod has an agent answering HBONE.
    pub(super) fn identity_at(&self, mesh: &Mesh, ip: IpAddr) -> Option<Identity> {
        let (key, workload) = mesh.workload_by_ip(ip)?;
        if workload.host_network || !mesh.is_enrolled(&key.namespace, &key.name) {
            return None;
        }
        self.certificates
            .identity_of(mesh, &key.namespace, &key.name)
    }

    /// A stream to `target`, the pod `destination`, for `pod`'s client at
    /// `source`, on a pooled connection or a new one.
    pub(super) async fn open(
        &self,
        pod: &PodContext,
        source_identity: &Identity,
        destination: &Identity,
        source: IpAddr,
        target: SocketAddr,
    ) -> std::io::Result<TunnelStream> {
        let certificate = self
            .certificates
            .obtain(source_identity, CERTIFICATE_WAIT)
            .await
            .ok_or_else(|| {
                std::io::Error::other(format!("no certificate for {source_identity}"))
            })?;
        let dial = || async {
            let peer = SocketAddr::new(target.ip(), ambit_hbone::HBONE_PORT);
            let socket = agent_socket(&pod.netns, AGENT_MARK, None)?;
            let tcp = connect(socket, peer).await?;
            let config = client_config(&certificate, &self.bundle, destination)
                .map_err(std::io::Error::other)?;
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(
                    ServerName::IpAddress(peer.ip().into()),
                    ReadBuffered::new(tcp),
                )
                .await?;
            tls.get_mut().1.set_buffer_limit(Some(TLS_WRITE_BUFFER));
            Connection::handshake(tls).await
        };
        let key = (
            source_identity.clone(),
            source,
            destination.clone(),
            target.ip(),
        );
        self.pool
            .open(&key, &certificate.not_after, target, source, dial)
            .await
            .map_err(std::io::Error::other)
    }
}

/// Serves one connection on a pod's 15008 listener: mutual TLS as the pod's
/// identity, then each CONNECT stream to the pod is carried to its app.
pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    pod: Arc<PodContext>,
    inputs: Arc<ProxyInputs>,
) {
    let Some(mesh_tls) = &inputs.mesh_tls else {
        return;
    };
    let (identity, pod_ips) = {
        let snapshot = inputs.mesh.snapshot();
        let ips = pod.workload(&snapshot).map(|(_, w)| w.ips.clone());
        let identity =
            mesh_tls
                .certificates
                .identity_of(&snapshot, &pod.key.namespace, &pod.key.name);
        (identity, ips.unwrap_or_default())
    };
    let certificate = match &identity {
        Some(identity) => {
            mesh_tls
                .certificates
                .obtain(identity, CERTIFICATE_WAIT)
                .await
        }
        None => None,
    };
    let (Some(certificate), Some(identity)) = (certificate, identity) else {
        tracing::warn!(pod = %pod.pod, %peer, "HBONE connection refused: no certificate for the pod");
        return;
    };
    // Small frames (an HTTP request, its answer) leave at once.
    let _ = stream.set_nodelay(true);
    let config = match mesh_tls.server_config(&certificate) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(pod = %pod.pod, %error, "TLS configuration");
            return;
        }
    };
    let accepted = tokio_rustls::TlsAcceptor::from(config).accept(ReadBuffered::new(stream));
    let mut tls = match at_most(ambit_hbone::server::HANDSHAKE_TIMEOUT, accepted).await {
        Some(Ok(tls)) => tls,
        Some(Err(error)) => {
            tracing::warn!(pod = %pod.pod, %peer, %error, "HBONE handshake refused");
            return;
        }
        None => {
            tracing::debug!(pod = %pod.pod, %peer, "HBONE handshake not completed in time");
            return;
        }
    };
    tls.get_mut().1.set_buffer_limit(Some(TLS_WRITE_BUFFER));
    // What every stream of the connection shares, read once.
    let (Some(caller), IpAddr::V4(source)) = (peer_identity(tls.get_ref().1), peer.ip()) else {
        tracing::warn!(pod = %pod.pod, %peer, "HBONE connection refused: no workload identity, or not IPv4");
        return;
    };
    let peer_facts = Arc::new(TlsPeer {
        addr: peer,
        source,
        principal: caller.principal(),
        caller,
        own_identity: identity,
        pod_ips,
    });
    let served = ambit_hbone::server::serve(tls, move |request, responder| {
        let (pod, inputs, peer) = (pod.clone(), inputs.clone(), peer_facts.clone());
        async move { carry(request, responder, &peer, &pod, &inputs).await }
    })
    .await;
    if let Err(error) = served {
        tracing::debug!(%peer, %error, "HBONE connection ended with an error");
    }
}

/// What the TLS connection tells of each stream it carries.
struct TlsPeer {
    addr: SocketAddr,
    /// The calling pod's address: the peer agent dials from it.
    source: Ipv4Addr,
    caller: Identity,
    /// The caller's identity as policies name it.
    principal: String,
    own_identity: Identity,
    pod_ips: Vec<IpAddr>,
}

/// One CONNECT stream to the pod: admitted by policy, then connected to the
/// app from the caller's address.
async fn carry(
    request: ConnectRequest,
    responder: Responder,
    peer: &TlsPeer,
    pod: &PodContext,
    inputs: &ProxyInputs,
) {
    let target = request.target;
    if !peer.pod_ips.contains(&target.ip()) {
        tracing::warn!(pod = %pod.pod, %target, "HBONE stream for another address refused");
        return responder.refuse(Refusal::Denied);
    }
    let (labels, admitted) = {
        let mesh = inputs.mesh.snapshot();
        let own = pod.workload(&mesh);
        let labels = TcpLabels::new(
            Reporter::Destination,
            Party {
                workload: mesh.workload_by_ip(peer.addr.ip()),
                principal: Some(&peer.caller),
            },
            Party {
                workload: own,
                principal: Some(&peer.own_identity),
            },
            None,
            SecurityPolicy::MutualTls,
        );
        let admitted = admit(
            &inputs.policy,
            &mesh,
            (&pod.pod, own.map(|(_, workload)| workload)),
            peer.addr.ip(),
            Proof::Principal(&peer.principal),
            target,
        );
        (labels, admitted)
    };
    let report = Report::new(inputs, pod, labels, peer.addr, target);
    if let Err(reason) = admitted {
        responder.refuse(Refusal::Denied);
        return report.refused(ResponseFlags::Denied, &reason);
    }
    let mut upstream = match connect_app(inputs, pod, peer.source, target).await {
        Ok(upstream) => upstream,
        Err(error) => {
            responder.refuse(Refusal::Unreachable);
            return report.refused(ResponseFlags::ConnectFailed, &error);
        }
    };
    let Ok(tunnel) = responder.accept() else {
        return;
    };
    report
        .relay(async move {
            // From the caller (through the tunnel) to the app, and back.
            let (to_caller, from_caller) = tunnel.relay(&mut upstream).await?;
            Ok((from_caller, to_caller))
        })
        .await;
}
