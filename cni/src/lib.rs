//! Ambit's CNI plugin, chained after the cluster's own CNI: it hands every
//! new pod's network namespace and identity to the node agent, which decides
//! whether the pod is in the mesh.
//!
//! [`spec`] reads an invocation as the CNI specification defines it (pure);
//! [`protocol`] is what the plugin and the agent say over the agent's Unix
//! socket; [`policy`] decides a pod's fate while the agent is unreachable;
//! [`conflist`] is Ambit's entry in the node's CNI configuration.

pub mod conflist;
pub mod policy;
pub mod protocol;
pub mod spec;
