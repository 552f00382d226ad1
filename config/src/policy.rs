//! The security decisions the proxies make for a connection to a workload,
//! from the model alone: which PeerAuthentication mode holds on a port, and
//! what the AuthorizationPolicies say about a caller. Pure functions, so
//! every rule of Istio's semantics is tested without a socket.

mod authorization;
mod peer_authentication;
#[cfg(test)]
mod tests;

pub use authorization::{
    authorize, authorize_request, Caller, Decision, Denial, HttpRequest, Verdict, WaypointTarget,
};
pub use peer_authentication::{mtls_mode, PeerMode};

/// Istio's default root namespace: its policies apply to the whole mesh.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

use crate::api::meta::WorkloadSelector;
use crate::model::Labels;

/// A workload a policy is being looked up for.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub namespace: &'a str,
    pub labels: &'a Labels,
}

/// Whether `selector` picks a workload with `labels`: every label it names,
/// with the same value.
fn selects(selector: &WorkloadSelector, labels: &Labels) -> bool {
    selector
        .match_labels
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}
