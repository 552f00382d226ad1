//! Which identities a node agent may be certified as: those of service
//! accounts with a pod on its node (node authorization), in the CA's trust
//! domain. A compromised node cannot obtain identities it does not run.

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
}

/// Whether the agent of `node` may hold `identity`.
pub fn authorize(
    mesh: &Mesh,
    trust_domain: &str,
    node: &str,
    identity: &Identity,
) -> Result<(), Denied> {
    if identity.trust_domain != trust_domain {
        return Err(Denied::TrustDomain {
            identity: identity.to_string(),
            trust_domain: trust_domain.into(),
        });
    }
    let namespace = &identity.namespace;
    let runs_here = in_namespace(&mesh.workloads, namespace).any(|(_, workload)| {
        workload.service_account == identity.service_account
            && workload.node.as_deref() == Some(node)
            && !workload.host_network
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
"#,
        );
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        let mesh = Mesh::from_resources(parsed.resources);
        let id = |ns: &str, sa: &str| Identity::new("cluster.local", ns, sa);
        let may =
            |node: &str, identity: &Identity| authorize(&mesh, "cluster.local", node, identity);
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
    }
}
