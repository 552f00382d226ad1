//! PeerAuthentication: whether a workload's port accepts plaintext.
//!
//! Istio's precedence, most specific first: the port-level setting of the
//! workload's own policy, that policy's mode, the namespace's policy (no
//! selector), the mesh's (no selector, in the root namespace); `UNSET`
//! defers to the next one, and with nothing set the mode is PERMISSIVE.
//! Two policies on one level: the first by name wins (Istio takes the
//! oldest; names make it deterministic without timestamps). A policy that
//! cannot be read makes its namespace STRICT, over every other there.

use serde::Serialize;

use super::{selects, Target};
use crate::api::security::{MtlsMode, PeerAuthenticationSpec};
use crate::model::{in_namespace, Mesh, PeerAuthentication};

/// The mode in effect on a port.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PeerMode {
    /// Only mutual TLS (HBONE from another agent) is accepted.
    Strict,
    /// Mutual TLS and plaintext are both accepted.
    Permissive,
    /// Plaintext is accepted. Agents still send HBONE to each other: in
    /// ambient mode DISABLE only stops the workload from requiring it.
    Disable,
}

/// The mode for connections to `port` of the workload `target`.
pub fn mtls_mode(mesh: &Mesh, root_namespace: &str, target: Target<'_>, port: u16) -> PeerMode {
    // An unreadable policy may have been this workload's own: fail closed.
    if unreadable_in(mesh, target.namespace) {
        return PeerMode::Strict;
    }
    let workload = policies_in(mesh, target.namespace).find(|spec| {
        spec.selector
            .as_ref()
            .is_some_and(|selector| selects(selector, target.labels))
    });
    let namespace_wide = |namespace: &str| {
        if unreadable_in(mesh, namespace) {
            return Some(MtlsMode::Strict);
        }
        policies_in(mesh, namespace)
            .find(|spec| spec.selector.is_none())
            .and_then(|spec| spec.mtls)
            .map(|mtls| mtls.mode)
    };
    let port_level = workload.and_then(|spec| {
        spec.port_level_mtls
            .iter()
            .find(|(key, _)| key.0.parse() == Ok(port))
            .map(|(_, mtls)| mtls.mode)
    });
    let chain = [
        port_level,
        workload.and_then(|spec| spec.mtls).map(|mtls| mtls.mode),
        namespace_wide(target.namespace),
        namespace_wide(root_namespace),
    ];
    match chain
        .into_iter()
        .flatten()
        .find(|mode| *mode != MtlsMode::Unset)
    {
        Some(MtlsMode::Strict) => PeerMode::Strict,
        Some(MtlsMode::Disable) => PeerMode::Disable,
        Some(MtlsMode::Permissive | MtlsMode::Unset) | None => PeerMode::Permissive,
    }
}

/// The readable PeerAuthentications of one namespace, by name.
fn policies_in<'a>(
    mesh: &'a Mesh,
    namespace: &'a str,
) -> impl Iterator<Item = &'a PeerAuthenticationSpec> + 'a {
    in_namespace(&mesh.peer_authentications, namespace).filter_map(|(_, policy)| match policy {
        PeerAuthentication::Valid(config) => Some(&config.spec),
        PeerAuthentication::Invalid { .. } => None,
    })
}

/// Whether `namespace` holds a PeerAuthentication that could not be read.
fn unreadable_in(mesh: &Mesh, namespace: &str) -> bool {
    in_namespace(&mesh.peer_authentications, namespace)
        .any(|(_, policy)| matches!(policy, PeerAuthentication::Invalid { .. }))
}
