//! Which identities a node agent may be certified as: those of service
//! accounts with a pod on its node (node authorization), in the CA's trust
//! domain. A compromised node cannot obtain identities it does not run,
//! and no node obtains the CA's own identity (which agents trust the CA
//! by) nor that of a pod beside the CA that is not in the mesh.

use ambit_config::model::{in_namespace, Mesh};
use ambit_identity::Identity;

use crate::authenticate::Requester;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("{identity} is not in the trust domain {trust_domain}")]
    TrustDomain {
        identity: String,
        trust_domain: String,
    },
    #[error("no pod on node {node} runs as {identity}")]
    NoPodOnNode { node: String, identity: String },
    #[error("{identity} is the CA's own identity")]
    CaIdentity { identity: String },
    #[error("{requester} may hold only its own identity, not {identity}")]
    NotOwnIdentity { requester: String, identity: String },
}

/// Whether `requester` may hold `identity`, asked of the CA that runs as
/// `own`.
pub fn authorize(
    mesh: &Mesh,
    own: &Identity,
    requester: &Requester,
    identity: &Identity,
) -> Result<(), Denied> {
    if identity.trust_domain != own.trust_domain {
        return Err(Denied::TrustDomain {
            identity: identity.to_string(),
            trust_domain: own.trust_domain.clone(),
        });
    }
    if identity == own {
        return Err(Denied::CaIdentity {
            identity: identity.to_string(),
        });
    }
    let node = match requester {
        Requester::Node(node) => node,
        Requester::Workload {
            pod,
            service_account,
        } => {
            // A pod of the mesh model, running as that account, asking for
            // that account's identity.
            let own_pod = mesh.workloads.get(pod).is_some_and(|workload| {
                workload.service_account == *service_account && !workload.host_network
            });
            let its_own =
                identity.namespace == pod.namespace && identity.service_account == *service_account;
            return match own_pod && its_own {
                true => Ok(()),
                false => Err(Denied::NotOwnIdentity {
                    requester: requester.to_string(),
                    identity: identity.to_string(),
                }),
            };
        }
    };
    let namespace = &identity.namespace;
    // In the CA's own namespace only pods of the mesh count: the CA's
    // neighbours (the CA itself under another name, its tooling) are not
    // workloads an agent proxies for.
    let beside_the_ca = *namespace == own.namespace;
    let runs_here = in_namespace(&mesh.workloads, namespace).any(|(key, workload)| {
        workload.service_account == identity.service_account
            && workload.node.as_deref() == Some(node)
            && !workload.host_network
            && (!beside_the_ca || mesh.is_enrolled(&key.namespace, &key.name))
    });
    if runs_here {
        Ok(())
    } else {
        Err(Denied::NoPodOnNode {
            node: node.into(),
            identity: identity.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambit_config::document::parse_manifests;
    use ambit_config::model::Key;

    #[test]
    fn an_agent_gets_only_the_identities_of_its_own_nodes_pods() {
        let parsed = parse_manifests(
            r#"
{apiVersion: v1, kind: Pod, metadata: {name: cart-1, namespace: shop}, spec: {nodeName: node-1, serviceAccountName: cart}}
---
{apiVersion: v1, kind: Pod, metadata: {name: pay-1, namespace: shop}, spec: {nodeName: node-2, serviceAccountName: pay}}
---
{apiVersion: v1, kind: Pod, metadata: {name: cart-1, namespace: other}, spec: {nodeName: node-2, serviceAccountName: cart}}
---
{apiVersion: v1, kind: Pod, metadata: {name: ambit-ca-1, namespace: ambit-system}, spec: {nodeName: node-1, serviceAccountName: ambit-ca}}
---
{apiVersion: v1, kind: Pod, metadata: {name: tool-1, namespace: ambit-system}, spec: {nodeName: node-1, serviceAccountName: tool}}
---
{apiVersion: v1, kind: Pod, metadata: {name: meshed-1, namespace: ambit-system, labels: {istio.io/dataplane-mode: ambient}}, spec: {nodeName: node-1, serviceAccountName: meshed}}
"#,
        );
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        let mesh = Mesh::from_resources(parsed.resources);
        let id = |ns: &str, sa: &str| Identity::new("cluster.local", ns, sa);
        let own = id("ambit-system", "ambit-ca");
        let may = |node: &str, identity: &Identity| {
            authorize(&mesh, &own, &Requester::Node(node.into()), identity)
        };
        assert_eq!(may("node-1", &id("shop", "cart")), Ok(()));
        assert_eq!(may("node-2", &id("shop", "pay")), Ok(()));
        assert_eq!(
            may("node-1", &id("shop", "pay")).unwrap_err().to_string(),
            "no pod on node node-1 runs as spiffe://cluster.local/ns/shop/sa/pay"
        );
        assert!(
            may("node-1", &id("other", "cart")).is_err(),
            "same name, other namespace"
        );
        assert!(may("node-2", &id("shop", "cart")).is_err());
        assert!(matches!(
            may("node-1", &Identity::new("evil.example", "shop", "cart")),
            Err(Denied::TrustDomain { .. })
        ));
        // Beside the CA: never its own identity, nor one of a pod outside
        // the mesh; a pod of the mesh there is like any other.
        assert_eq!(
            may("node-1", &own).unwrap_err().to_string(),
            "spiffe://cluster.local/ns/ambit-system/sa/ambit-ca is the CA's own identity"
        );
        assert!(matches!(
            may("node-1", &id("ambit-system", "tool")),
            Err(Denied::NoPodOnNode { .. })
        ));
        assert_eq!(may("node-1", &id("ambit-system", "meshed")), Ok(()));

        // A pod's own token: that pod's identity, nothing else.
        let pod = |namespace: &str, name: &str, service_account: &str| Requester::Workload {
            pod: Key::new(namespace, name),
            service_account: service_account.into(),
        };
        let asks = |requester: Requester, identity: &Identity| {
            authorize(&mesh, &own, &requester, identity)
        };
        assert_eq!(
            asks(pod("shop", "cart-1", "cart"), &id("shop", "cart")),
            Ok(())
        );
        assert_eq!(
            asks(pod("shop", "cart-1", "cart"), &id("shop", "pay")).unwrap_err().to_string(),
            "the pod shop/cart-1 may hold only its own identity, not spiffe://cluster.local/ns/shop/sa/pay"
        );
        assert!(
            asks(pod("shop", "cart-1", "pay"), &id("shop", "pay")).is_err(),
            "not its account"
        );
        assert!(
            asks(pod("shop", "gone-1", "cart"), &id("shop", "cart")).is_err(),
            "no such pod"
        );
        assert!(asks(pod("ambit-system", "ambit-ca-1", "ambit-ca"), &own).is_err());
    }
}
