//! Between agents over HBONE, once the agent holds workload identities:
//! an outbound connection to a pod of the mesh becomes a CONNECT stream,
//! in mutual TLS as the calling pod's identity, to port 15008 of the
//! destination pod, whose identity is checked; the destination pod's 15008
//! listener terminates it and connects to the app from the caller's
//! address. Plain TCP remains for peers outside the mesh.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_config::model::{Mesh, ServicePort};
use ambit_hbone::server::{ConnectRequest, Refusal, Responder};
use ambit_hbone::Target;
use ambit_identity::Identity;
use ambit_telemetry::baggage::Baggage;
use tokio::net::TcpStream;

use super::admission::{admit, Proof};
use super::inbound::connect_app;
use super::meter::Meter;
use super::{PodContext, ProxyInputs, Report};
use crate::metrics::{
    self, DestinationService, Reporter, ResponseFlags, SecurityPolicy, TcpLabels,
};

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
                .certificates()
                .identity_of(&snapshot, &pod.key.namespace, &pod.key.name);
        (identity, ips.unwrap_or_default())
    };
    let Some(identity) = identity else {
        tracing::warn!(pod = %pod.pod, %peer, "HBONE connection refused: the pod's identity is unknown");
        return;
    };
    let tls = match mesh_tls
        .accept(&identity, stream, ambit_hbone::server::HANDSHAKE_TIMEOUT)
        .await
    {
        Ok(tls) => tls,
        // A peer that never finishes its handshake is not worth a warning
        // each (a hostile pod can open many).
        Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {
            tracing::debug!(pod = %pod.pod, %peer, %error, "HBONE handshake not completed");
            return;
        }
        Err(error) => {
            tracing::warn!(pod = %pod.pod, %peer, %error, "HBONE handshake refused");
            inputs
                .metrics
                .refused(Reporter::Destination, metrics::Refusal::HandshakeFailed);
            return;
        }
    };
    // What every stream of the connection shares, read once.
    let Some(caller) = tls.peer_identity().cloned() else {
        tracing::warn!(pod = %pod.pod, %peer, "HBONE connection refused: no workload identity");
        return;
    };
    let peer_facts = Arc::new(TlsPeer {
        addr: peer,
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
    /// The calling pod's address (the peer agent dials from it) and port.
    addr: SocketAddr,
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
    let ConnectRequest {
        target,
        service,
        baggage,
        traceparent,
        ..
    } = request;
    // The Service the caller called: named as the target, else claimed
    // by its `Forwarded: host=`.
    let called = match &target {
        Target::Host { name, .. } => Some(name.clone()),
        Target::Address(_) => service,
    };
    let mesh = inputs.mesh.snapshot();
    let target = match target {
        Target::Address(target) => target,
        Target::Host { name, port } => match service_target(&mesh, &name, port, &peer.pod_ips) {
            Ok(target) => target,
            Err(reason) => {
                tracing::warn!(pod = %pod.pod, %reason, "HBONE stream for a Service by name refused");
                (inputs.metrics).refused(Reporter::Destination, metrics::Refusal::NoRoute);
                return responder.refuse(Refusal::Unreachable);
            }
        },
    };
    if !peer.pod_ips.contains(&target.ip()) {
        tracing::warn!(pod = %pod.pod, %target, "HBONE stream for another address refused");
        (inputs.metrics).refused(Reporter::Destination, metrics::Refusal::NotThisPod);
        return responder.refuse(Refusal::Denied);
    }
    let (labels, admitted) = {
        let own = pod.workload(&mesh);
        let caller = mesh.workload_by_ip(peer.addr.ip());
        // A caller the mesh does not know is named as it names itself.
        let claimed = baggage
            .filter(|_| caller.is_none())
            .and_then(|baggage| Baggage::claimed(&baggage, &peer.caller));
        let labels = TcpLabels::new(
            Reporter::Destination,
            metrics::Party {
                workload: caller,
                principal: Some(&peer.caller),
                claimed: claimed.as_ref(),
            },
            metrics::Party::known(own, Some(&peer.own_identity)),
            destination_service(&mesh, &pod.key.namespace, target, called.as_deref()).as_ref(),
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
    // Not held for the connection's life: a config change frees it.
    drop(mesh);
    let report = Report::new(inputs, pod, labels, peer.addr, target).continuing(traceparent);
    if let Err(reason) = admitted {
        responder.refuse(Refusal::Denied);
        return report.refused(ResponseFlags::Denied, &reason);
    }
    if peer.addr.is_ipv4() != target.is_ipv4() {
        // The app is reached from the caller's own address, which must be
        // of the target's family (a dual-stack caller dials each family's).
        responder.refuse(Refusal::Unreachable);
        let reason = format!(
            "the caller {} and the target are of different IP families",
            peer.addr.ip()
        );
        return report.refused(ResponseFlags::ConnectFailed, &reason);
    }
    let mut upstream = match connect_app(inputs, pod, peer.addr.ip(), target).await {
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
        .relay(Meter::callee(&upstream), async move {
            // From the caller (through the tunnel) to the app, and back.
            let (to_caller, from_caller) = tunnel.relay(&mut upstream).await?;
            Ok((from_caller, to_caller))
        })
        .await;
}

/// The Service a connection to `target` on a pod of `namespace` was for,
/// as metrics name it, as ztunnel tells: the one the caller named (`host`),
/// if the pod backs it (a claim names no other); else the first the pod
/// backs with a port whose target is `target`'s.
pub(super) fn destination_service(
    mesh: &Mesh,
    namespace: &str,
    target: SocketAddr,
    host: Option<&str>,
) -> Option<DestinationService> {
    let named = host
        .and_then(|host| mesh.service_named(host))
        .filter(|(_, service)| service.has_endpoint(target.ip()));
    // Ports first: of a namespace's Services, few target the port called,
    // and only their endpoints are searched.
    let targets = |port: &ServicePort| port.target_port == target.port() && port.protocol == "TCP";
    let found = named.or_else(|| {
        mesh.services_in(namespace).find(|(_, service)| {
            service.ports.iter().any(targets) && service.has_endpoint(target.ip())
        })
    });
    found.map(|(key, _)| DestinationService::service(&key.name, &key.namespace))
}

/// Where on this pod a stream naming a Service by host (`host:port`) goes,
/// as ztunnel resolves it: the pod's address among the Service's
/// endpoints, at the target port of the Service port named.
fn service_target(
    mesh: &Mesh,
    name: &str,
    port: u16,
    pod_ips: &[IpAddr],
) -> Result<SocketAddr, String> {
    let (key, service) = mesh
        .service_named(name)
        .ok_or_else(|| format!("no Service is named {name}"))?;
    let ip = pod_ips
        .iter()
        .copied()
        .find(|ip| service.has_endpoint(*ip))
        .ok_or_else(|| format!("the pod is not an endpoint of the Service {key}"))?;
    let target_port = service
        .ports
        .iter()
        .find(|declared| declared.port == port && declared.protocol == "TCP")
        .map(|declared| declared.target_port)
        .ok_or_else(|| format!("the Service {key} has no TCP port {port}"))?;
    Ok(SocketAddr::new(ip, target_port))
}

#[cfg(test)]
mod tests {
    use ambit_config::document::parse_manifests;

    use super::*;

    #[test]
    fn a_service_named_by_host_is_this_pods_address_at_the_target_port_and_its_metrics_name() {
        let parsed = parse_manifests(
            r#"
{apiVersion: v1, kind: Service, metadata: {name: cart, namespace: shop}, spec: {clusterIP: 10.96.0.42, ports: [{name: http, port: 80, targetPort: web}]}}
---
{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: cart-1, namespace: shop, labels: {kubernetes.io/service-name: cart}}, addressType: IPv4, endpoints: [{addresses: [10.244.1.7]}, {addresses: [10.244.2.8]}], ports: [{name: http, port: 8080}]}
"#,
        );
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        let mesh = Mesh::from_resources(parsed.resources);
        let pod: &[IpAddr] = &["10.244.2.8".parse().unwrap()];
        let resolve = |name, port| service_target(&mesh, name, port, pod);
        assert_eq!(
            resolve("cart.shop.svc.cluster.local", 80),
            Ok("10.244.2.8:8080".parse().unwrap())
        );
        assert_eq!(
            resolve("cart.shop.svc.cluster.local", 81),
            Err("the Service shop/cart has no TCP port 81".into())
        );
        assert_eq!(
            resolve("pay.shop.svc.cluster.local", 80),
            Err("no Service is named pay.shop.svc.cluster.local".into())
        );
        // Metrics name the Service the caller named where the pod backs
        // it, else the one whose port targets the port called.
        let cart = Some(DestinationService::service("cart", "shop"));
        let at: SocketAddr = "10.244.2.8:8080".parse().unwrap();
        let named = |host| destination_service(&mesh, "shop", at, host);
        assert_eq!(named(Some("cart.shop.svc.cluster.local")), cart);
        assert_eq!(named(Some("pay.shop.svc.cluster.local")), cart);
        assert_eq!(named(None), cart);
        let other_port = "10.244.2.8:9999".parse().unwrap();
        assert_eq!(destination_service(&mesh, "shop", other_port, None), None);
        let other_pod = "10.244.3.3:8080".parse().unwrap();
        let claimed = Some("cart.shop.svc.cluster.local");
        assert_eq!(destination_service(&mesh, "shop", other_pod, claimed), None);
        let elsewhere: &[IpAddr] = &["10.244.3.3".parse().unwrap()];
        assert_eq!(
            service_target(&mesh, "cart.shop.svc.cluster.local", 80, elsewhere),
            Err("the pod is not an endpoint of the Service shop/cart".into())
        );
    }
}
