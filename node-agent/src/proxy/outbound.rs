//! Outbound: a connection from an enrolled pod, redirected by `connect4`.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;

use ambit_ebpf_common::AGENT_MARK;
use tokio::net::TcpStream;

use super::{agent_socket, connect, relay, PodContext, ProxyInputs};
use crate::metrics::Reporter;
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
    drop(snapshot);
    let upstream = match agent_socket(&pod.netns, AGENT_MARK, None) {
        Ok(socket) => connect(socket, target.into()).await,
        Err(error) => Err(error),
    };
    let service = service.unwrap_or_else(|| "unknown".into());
    relay(
        &inputs,
        &pod,
        Reporter::Source,
        service,
        client,
        upstream,
        target.into(),
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
