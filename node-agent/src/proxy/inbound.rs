//! Inbound: a connection to an enrolled pod's port, steered by
//! `inbound_lookup`. The agent connects to the app from the caller's own
//! address, so the app sees who really called.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_ebpf_common::{AGENT_MARK, INBOUND_MARK_BIT};
use socket2::SockRef;
use tokio::net::TcpStream;

use super::admission::{admit, PolicySettings, Proof};
use super::hbone::destination_service;
use super::meter::Meter;
use super::{agent_socket, carry_plain, connect, without_pacing, PodContext, ProxyInputs, Report};
use crate::metrics::{Party, Reporter, ResponseFlags, SecurityPolicy, TcpLabels};

pub(super) async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    pod: Arc<PodContext>,
    inputs: Arc<ProxyInputs>,
) {
    // sk_lookup keeps the address the caller dialled as the local address.
    let target = match client.local_addr() {
        Ok(target) => target,
        Err(error) => {
            tracing::warn!(pod = %pod.pod, %error, "inbound connection without a local address");
            return;
        }
    };
    let (labels, admitted) = {
        let mesh = inputs.mesh.snapshot();
        let caller = Party::known(mesh.workload_by_ip(peer.ip()), None);
        let own = pod.workload(&mesh);
        let labels = TcpLabels::new(
            Reporter::Destination,
            caller,
            Party::known(own, None),
            destination_service(&mesh, &pod.key.namespace, target, None).as_ref(),
            SecurityPolicy::None,
        );
        let own = own.map(|(_, workload)| workload);
        let proof = match opened_by_node(&inputs.policy, peer, target) {
            true => Proof::Node,
            false => Proof::Plaintext,
        };
        let admitted = admit(
            &inputs.policy,
            &mesh,
            (&pod.pod, own),
            peer.ip(),
            proof,
            target,
        );
        (labels, admitted)
    };
    let report = Report::new(&inputs, &pod, labels, peer, target);
    if let Err(reason) = admitted {
        // A reset, so the caller learns at once rather than at its first read.
        let _ = socket2::SockRef::from(&client).set_linger(Some(std::time::Duration::ZERO));
        return report.refused(ResponseFlags::Denied, &reason);
    }
    match connect_app(&inputs, &pod, peer.ip(), target).await {
        Ok(upstream) => {
            let meter = Meter::caller(&client);
            report
                .relay(meter, carry_plain(client, upstream, &inputs, &pod))
                .await
        }
        Err(error) => report.refused(ResponseFlags::ConnectFailed, &error),
    }
}

/// Whether the node itself opened the plaintext connection from `peer` to
/// `target`: `peer` is one of the node's addresses, and a socket of the
/// node's is at that end. Traffic the node only forwards can carry its
/// address too (a NodePort's, masqueraded) but has no socket there: such
/// traffic meets the policies like any other caller's. Istio likewise
/// exempts only what host processes open. A failed lookup counts as "not
/// the node", so policy applies.
fn opened_by_node(settings: &PolicySettings, peer: SocketAddr, target: SocketAddr) -> bool {
    if !settings.node_ips.contains(&peer.ip()) {
        return false;
    }
    crate::netns::holds_tcp_connection(peer, target).unwrap_or_else(|error| {
        tracing::warn!(%peer, %target, %error, "could not tell whether the node opened a connection; policy applies to it");
        false
    })
}

/// Connects to the app at `target` from the caller's own address `source`
/// (of the same family).
pub(super) async fn connect_app(
    inputs: &ProxyInputs,
    pod: &PodContext,
    source: IpAddr,
    target: SocketAddr,
) -> std::io::Result<TcpStream> {
    let socket = agent_socket(
        &pod.netns,
        AGENT_MARK | INBOUND_MARK_BIT,
        target.ip(),
        Some((source, &pod.source_ports)),
    )?;
    without_pacing(SockRef::from(&socket));
    // Until the app has accepted, inbound capture must not take this
    // connection for another caller's.
    let _own = inputs
        .maps
        .agent_source(socket.local_addr()?)
        .map_err(std::io::Error::other)?;
    connect(socket, target).await
}
