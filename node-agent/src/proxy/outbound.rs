//! Outbound: a connection from an enrolled pod, redirected by `connect4`.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use ambit_ebpf_common::AGENT_MARK;
use tokio::net::TcpStream;

use ambit_mesh_tls::hbone::Party;

use super::{agent_socket, carry_plain, connect, PodContext, ProxyInputs, Report};
use crate::metrics::{self, Reporter, ResponseFlags, SecurityPolicy, TcpLabels};
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
        /// The Service the connection was for, when known.
        service: Option<String>,
    },
}

fn decide(original: Option<SocketAddrV4>, route: impl FnOnce(SocketAddrV4) -> Route) -> Decision {
    let Some(original) = original else {
        return Decision::Refuse {
            reason: "its original destination is unknown".into(),
            service: None,
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
            service: Some(service),
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
    let own = pod.workload(&snapshot);
    let (target, service) = match decide(original, |dst| snapshot.route(dst)) {
        Decision::Forward { target, service } => (target, service),
        Decision::Refuse { reason, service } => {
            let labels = TcpLabels::new(
                Reporter::Source,
                metrics::Party {
                    workload: own,
                    principal: None,
                },
                metrics::Party {
                    workload: None,
                    principal: None,
                },
                service.as_deref(),
                SecurityPolicy::None,
            );
            drop(snapshot);
            let target = original.map_or(SocketAddr::from(([0, 0, 0, 0], 0)), SocketAddr::V4);
            // Dropping the client closes it: the caller sees a reset/EOF.
            return Report::new(&inputs, &pod, labels, peer, target)
                .refused(ResponseFlags::ConnectFailed, &reason);
        }
    };
    let target_ip = IpAddr::V4(*target.ip());
    // To a pod of the mesh, over HBONE when the agent holds identities.
    let identities = inputs.mesh_tls.as_ref().and_then(|mesh_tls| {
        let destination = super::hbone::identity_at(mesh_tls, &snapshot, target_ip)?;
        let source =
            mesh_tls
                .certificates()
                .identity_of(&snapshot, &pod.key.namespace, &pod.key.name);
        Some((mesh_tls, source, destination))
    });
    // The pod's own address: the accepted connection shows only loopback,
    // where `connect4` sent it.
    let pod_ip = own.and_then(|(_, workload)| workload.ips.iter().copied().find(IpAddr::is_ipv4));
    let labels = TcpLabels::new(
        Reporter::Source,
        metrics::Party {
            workload: own,
            principal: identities
                .as_ref()
                .and_then(|(_, source, _)| source.as_ref()),
        },
        metrics::Party {
            workload: snapshot.workload_by_ip(target_ip),
            principal: identities.as_ref().map(|(_, _, destination)| destination),
        },
        service.as_deref(),
        match identities {
            Some(_) => SecurityPolicy::MutualTls,
            None => SecurityPolicy::None,
        },
    );
    drop(snapshot);
    let target = SocketAddr::V4(target);
    let caller = SocketAddr::new(pod_ip.unwrap_or(peer.ip()), peer.port());
    let report = Report::new(&inputs, &pod, labels, caller, target);
    if let Some((mesh_tls, source, destination)) = identities {
        let upstream = match (source, pod_ip) {
            (Some(source), Some(pod_ip)) => {
                let caller = Party {
                    identity: &source,
                    ip: pod_ip,
                };
                super::hbone::open(mesh_tls, &pod, caller, &destination, target).await
            }
            _ => Err(std::io::Error::other(
                "the pod's identity or address is unknown",
            )),
        };
        let tunnel = match upstream {
            Ok(tunnel) => tunnel,
            Err(error) => return report.refused(ResponseFlags::ConnectFailed, &error),
        };
        let carry = async move {
            let mut client = client;
            let _ = client.set_nodelay(true);
            tunnel.relay(&mut client).await
        };
        return report.relay(carry).await;
    }
    let upstream = match agent_socket(&pod.netns, AGENT_MARK, None) {
        Ok(socket) => connect(socket, target).await,
        Err(error) => Err(error),
    };
    match upstream {
        Ok(upstream) => {
            report
                .relay(carry_plain(client, upstream, &inputs, &pod))
                .await
        }
        Err(error) => report.refused(ResponseFlags::ConnectFailed, &error),
    }
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
        assert!(matches!(
            no_endpoint,
            Decision::Refuse { reason, service: Some(service) }
                if reason.contains("web.default") && service == "web.default"
        ));
        assert!(matches!(
            decide(None, Route::Direct),
            Decision::Refuse { .. }
        ));
    }
}
