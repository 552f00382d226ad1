//! Which identities a node agent may be certified as: those of service
//! accounts with a pod on its node (node authorization), in the CA's trust
//! domain. A compromised node cannot obtain identities it does not run,
//! and no node obtains the CA's own identity (which agents trust the CA
//! by) nor that of a pod beside the CA that is not in the mesh.

use ambit_config::model::{in_namespace, Mesh};
use ambit_identity::Identity;

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
}

/// Whether the agent of `node` may hold `identity`, asked of the CA that
/// runs as `own`.
pub fn authorize(
    mesh: &Mesh,
    own: &Identity,
    node: &str,
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
        let may = |node: &str, identity: &Identity| authorize(&mesh, &own, node, identity);
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
    }
}
