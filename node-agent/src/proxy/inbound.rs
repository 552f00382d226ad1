//! Inbound: a connection to an enrolled pod's port, steered by
//! `inbound_lookup`. The agent connects to the app from the caller's own
//! address, so the app sees who really called.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_ebpf_common::{AGENT_MARK, INBOUND_MARK_BIT};
use tokio::net::TcpStream;

use super::{agent_socket, connect, relay, PodContext, ProxyInputs};
use crate::metrics::Reporter;

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
    let IpAddr::V4(source) = peer.ip() else {
        tracing::warn!(pod = %pod.pod, %peer, "inbound IPv6 connections are not proxied yet");
        return;
    };
    let upstream = async {
        let socket = agent_socket(&pod.netns, AGENT_MARK | INBOUND_MARK_BIT, Some(source))?;
        let SocketAddr::V4(bound) = socket.local_addr()? else {
            return Err(std::io::Error::other(
                "an IPv4 socket bound to an IPv6 address",
            ));
        };
        // Until the app has accepted, inbound capture must not take this
        // connection for another caller's.
        let _own = inputs
            .maps
            .agent_source(bound)
            .map_err(std::io::Error::other)?;
        connect(socket, target).await
    }
    .await;
    let service = "unknown".to_string();
    relay(
        &inputs,
        &pod,
        Reporter::Destination,
        service,
        client,
        upstream,
        target,
    )
    .await;
}
