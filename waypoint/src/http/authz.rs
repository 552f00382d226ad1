//! AuthorizationPolicy at the waypoint, on every request before it is
//! routed, as Envoy's RBAC filter runs before its router: the decision is
//! `ambit_config::policy::authorize_request`'s, made over the model in
//! force now (a policy change applies to the next request, on connections
//! already open too); a denial is answered 403 `RBAC: access denied`.

use std::sync::Arc;

use ambit_config::model::{Key, Labels};
use ambit_config::policy::{authorize_request, Caller, HttpRequest, Verdict, WaypointTarget};
use http::request::Parts;

use super::service::StreamContext;
use crate::tables::MeshInForce;

pub struct Authz {
    pub mesh: Arc<dyn MeshInForce>,
    /// The proxy's own Gateway (a waypoint's, or an ingress gateway's
    /// Deployment).
    pub waypoint: Key,
    pub root_namespace: String,
}

impl Authz {
    /// Whether the request may go on; why not, if not.
    pub fn check(
        &self,
        context: &StreamContext,
        request: &Parts,
        path: &str,
    ) -> Result<(), String> {
        let Some(mesh) = self.mesh.mesh() else {
            return Ok(());
        };
        let mesh = mesh.as_ref();
        if mesh.authorization_policies.is_empty() {
            return Ok(());
        }
        let no_labels = Labels::new();
        let waypoint_labels = mesh
            .workload_by_ip(context.local_ip)
            .map_or(&no_labels, |(_, workload)| &workload.labels);
        let target = WaypointTarget {
            waypoint: &self.waypoint,
            waypoint_labels,
            service: &context.table.service,
        };
        let principal = context.caller.as_ref().map(|caller| caller.principal());
        let caller = Caller {
            ip: context.source_ip.unwrap_or(context.local_ip),
            principal: principal.as_deref(),
            destination_ip: context.target.ip(),
            destination_port: context.target.port(),
        };
        let header = |name: &str| {
            let values: Vec<&str> = request
                .headers
                .get_all(name)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .collect();
            (!values.is_empty()).then(|| values.join(","))
        };
        let http = HttpRequest {
            method: request.method.as_str(),
            host: ambit_route::matching::authority(request),
            path,
            header: &header,
        };
        let decision = authorize_request(mesh, &self.root_namespace, target, &caller, &http);
        if !decision.audited.is_empty() {
            tracing::info!(target: "audit", principal = principal.as_deref().unwrap_or("-"), method = http.method, path, policies = ?decision.audited, "AUDIT policies matched");
        }
        match decision.verdict {
            Verdict::Allow => Ok(()),
            Verdict::Deny(denial) => Err(denial.to_string()),
        }
    }
}
