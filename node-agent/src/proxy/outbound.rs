//! Outbound: a connection from an enrolled pod, redirected by `connect4`.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use ambit_ebpf_common::AGENT_MARK;
use tokio::net::TcpStream;

use super::hbone::carry_tunnel;
use super::{agent_socket, carry_plain, connect, connected, relay, PodContext, ProxyInputs};
use crate::metrics::{Reporter, SecurityPolicy, TcpLabels};
use ambit_config::model::Route;

/// Where an accepted outbound connection goes: the original destination,
/// or for a Service address one of its endpoints.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Forward {
        target: SocketAddrV4,
        service: Option<String>,
    },
    Refuse {
        reason: String,
    },
}

fn decide(original: Option<SocketAddrV4>, route: impl FnOnce(SocketAddrV4) -> Route) -> Decision {
    let Some(original) = original else {
        return Decision::Refuse {
            reason: "its original destination is unknown".into(),
        };
    };
    match route(original) {
        Route::Direct(target) => Decision::Forward {
            target,
            service: None,
        },
        Route::Service { service, endpoint } => Decision::Forward {
            target: endpoint,
            service: Some(service),
        },
        Route::NoReadyEndpoint { service } => Decision::Refuse {
            reason: format!("service {service} has no ready endpoint"),
        },
    }
}

pub(super) async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    pod: Arc<PodContext>,
    inputs: Arc<ProxyInputs>,
) {
    let original = inputs
        .maps
        .take_original_dst(pod.netns.cookie(), peer.port());
    let snapshot = inputs.mesh.snapshot();
    let (target, service) = match decide(original, |dst| snapshot.route(dst)) {
        Decision::Forward { target, service } => (target, service),
        Decision::Refuse { reason } => {
            // Dropping the client closes it: the caller sees a reset/EOF.
            tracing::warn!(pod = %pod.pod, ?original, "outbound connection refused: {reason}");
            return;
        }
    };
    let service = service.unwrap_or_else(|| "unknown".into());
    let client_ip = peer.ip();
    // To a pod of the mesh, over HBONE when the agent holds identities.
    let tunnel = inputs.mesh_tls.as_ref().and_then(|mesh_tls| {
        let destination = mesh_tls.identity_at(&snapshot, IpAddr::V4(*target.ip()))?;
        let source =
            mesh_tls
                .certificates()
                .identity_of(&snapshot, &pod.pod.namespace, &pod.pod.name);
        Some((mesh_tls, source, destination))
    });
    drop(snapshot);
    let target = SocketAddr::V4(target);
    if let Some((mesh_tls, source, destination)) = tunnel {
        let upstream = match source {
            Some(source) => {
                mesh_tls
                    .open(&pod, &source, &destination, client_ip, target)
                    .await
            }
            None => Err(std::io::Error::other("the pod's identity is unknown")),
        };
        let Some(mut upstream) = connected(&pod, Reporter::Source, target, upstream) else {
            return;
        };
        let labels = TcpLabels {
            reporter: Reporter::Source,
            destination_service: service,
            connection_security_policy: SecurityPolicy::MutualTls,
        };
        let carry = async move {
            let mut client = client;
            let _ = client.set_nodelay(true);
            carry_tunnel(&mut client, &mut upstream).await
        };
        relay(&inputs, &pod, labels, Some(peer), target, carry).await;
        return;
    }
    let upstream = match agent_socket(&pod.netns, AGENT_MARK, None) {
        Ok(socket) => connect(socket, target).await,
        Err(error) => Err(error),
    };
    let Some(upstream) = connected(&pod, Reporter::Source, target, upstream) else {
        return;
    };
    let labels = TcpLabels {
        reporter: Reporter::Source,
        destination_service: service,
        connection_security_policy: SecurityPolicy::None,
    };
    relay(
        &inputs,
        &pod,
        labels,
        Some(peer),
        target,
        carry_plain(client, upstream),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn addr(last: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, last), port)
    }

    #[test]
    fn decisions() {
        let direct = decide(Some(addr(2, 80)), Route::Direct);
        assert_eq!(
            direct,
            Decision::Forward {
                target: addr(2, 80),
                service: None
            }
        );

        let to_service = decide(Some(addr(200, 80)), |_| Route::Service {
            service: "web.default".into(),
            endpoint: addr(3, 8080),
        });
        assert_eq!(
            to_service,
            Decision::Forward {
                target: addr(3, 8080),
                service: Some("web.default".into())
            }
        );

        let no_endpoint = decide(Some(addr(200, 80)), |_| Route::NoReadyEndpoint {
            service: "web.default".into(),
        });
        assert!(
            matches!(no_endpoint, Decision::Refuse { reason } if reason.contains("web.default"))
        );
        assert!(matches!(
            decide(None, Route::Direct),
            Decision::Refuse { .. }
        ));
    }
}
