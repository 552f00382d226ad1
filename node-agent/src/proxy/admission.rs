//! Whether an enrolled pod takes an inbound connection: PeerAuthentication
//! decides whether plaintext may reach the port, AuthorizationPolicy who may
//! connect at all. Read from the snapshot of each connection, so a policy
//! change applies to the next connection without a restart.

use std::net::{IpAddr, SocketAddr};

use ambit_cni::protocol::PodRef;
use ambit_config::model::{Key, Labels, Mesh, Workload};
use ambit_config::policy::{authorize, mtls_mode, Caller, PeerMode, Target, Verdict};
use ambit_ebpf_common::AGENT_PORTS;

/// What inbound policy needs beyond the mesh.
#[derive(Debug, Clone)]
pub struct PolicySettings {
    /// The namespace whose policies apply to the whole mesh.
    pub root_namespace: String,
    /// The node's own addresses: the kubelet's health probes come from
    /// them (see `inbound::opened_by_node`).
    pub node_ips: Vec<IpAddr>,
}

/// What an inbound connection proved of its caller.
pub(super) enum Proof<'a> {
    /// Mutual TLS: the caller's identity as policies write it
    /// (`Identity::principal`).
    Principal(&'a str),
    /// Plaintext that the node itself opened (`inbound::opened_by_node`),
    /// as the kubelet's health probes are: it passes whatever the policies
    /// say, as in Istio's ambient mode.
    Node,
    /// Any other plaintext.
    Plaintext,
}

/// `Ok` to carry the connection, or the reason it is refused.
pub(super) fn admit(
    settings: &PolicySettings,
    mesh: &Mesh,
    pod: (&PodRef, Option<&Workload>),
    source: IpAddr,
    proof: Proof<'_>,
    target: SocketAddr,
) -> Result<(), String> {
    static NO_LABELS: Labels = Labels::new();
    // Inside the pod these ports are the agent's own listeners: carrying a
    // connection there would connect the agent to itself, again and again.
    if AGENT_PORTS.contains(&target.port()) {
        return Err(format!(
            "port {} is the mesh agent's own, never a destination inside a pod",
            target.port()
        ));
    }
    let (pod, own) = pod;
    let workload = Target {
        namespace: &pod.namespace,
        labels: own.map_or(&NO_LABELS, |workload| &workload.labels),
    };
    let root = &settings.root_namespace;
    let principal = match proof {
        Proof::Principal(principal) => Some(principal),
        Proof::Node => return Ok(()),
        Proof::Plaintext => {
            if mtls_mode(mesh, root, workload, target.port()) == PeerMode::Strict {
                return Err("plaintext refused: PeerAuthentication is STRICT on this port".into());
            }
            None
        }
    };
    let caller = Caller {
        ip: source,
        principal,
        destination_ip: target.ip(),
        destination_port: target.port(),
    };
    let decision = authorize(mesh, root, workload, &caller);
    if !decision.audited.is_empty() {
        let policies: Vec<String> = decision.audited.iter().map(Key::to_string).collect();
        tracing::info!(target: "audit", %pod, %source, ?principal, %target, ?policies, "AUDIT policies matched");
    }
    match decision.verdict {
        Verdict::Allow => Ok(()),
        Verdict::Deny(denial) => Err(denial.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn the_agents_own_ports_are_refused_whoever_calls() {
        let settings = PolicySettings {
            root_namespace: "istio-system".into(),
            node_ips: vec![],
        };
        let pod = PodRef {
            namespace: "default".into(),
            name: "server".into(),
            uid: "1".into(),
        };
        let pod_ip = Ipv4Addr::new(10, 244, 2, 2);
        let caller = IpAddr::V4(Ipv4Addr::new(10, 244, 1, 2));
        let mesh = Mesh::default();
        let ports = AGENT_PORTS.iter().map(|&port| (port, false));
        for (port, admitted) in ports.chain([(8080, true), (15007, true)]) {
            let target = SocketAddr::from((pod_ip, port));
            for proof in [
                Proof::Node,
                Proof::Plaintext,
                Proof::Principal("cluster.local/ns/default/sa/client"),
            ] {
                let outcome = admit(&settings, &mesh, (&pod, None), caller, proof, target);
                assert_eq!(outcome.is_ok(), admitted, "port {port}: {outcome:?}");
            }
        }
    }
}
