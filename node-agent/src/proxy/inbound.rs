//! Inbound: a connection to an enrolled pod's port, steered by
//! `inbound_lookup`. The agent connects to the app from the caller's own
//! address, so the app sees who really called.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_ebpf_common::{AGENT_MARK, INBOUND_MARK_BIT};
use tokio::net::TcpStream;

use super::{agent_socket, connect, relay, PodContext, ProxyInputs};
use crate::metrics::{Reporter, SecurityPolicy, TcpLabels};

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
    let _ = client.set_nodelay(true);
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
    };
    let upstream = match upstream.await {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::warn!(pod = %pod.pod, %target, %error, "inbound connect to the app failed");
            return;
        }
    };
    let labels = TcpLabels {
        reporter: Reporter::Destination,
        destination_service: "unknown".into(),
        connection_security_policy: SecurityPolicy::None,
    };
    match relay(&inputs, labels, client, upstream).await {
        Ok((received, sent)) => {
            tracing::debug!(target: "access", pod = %pod.pod, %peer, %target, sent, received, "inbound connection closed")
        }
        Err(error) => {
            tracing::debug!(target: "access", pod = %pod.pod, %peer, %target, %error, "inbound connection failed")
        }
    }
}
