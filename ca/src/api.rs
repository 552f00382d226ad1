//! The CA's answer to its one request (`ambit_mesh_tls::ca_protocol`),
//! decided apart from the HTTP server ([`Issuer::answer`]).

use std::sync::Arc;
use std::time::Duration;

use ambit_identity::ca::identity_requested;
use ambit_identity::{CertificateAuthority, Identity};
use ambit_mesh_source::MeshHandle;
use ambit_mesh_tls::ca_protocol::{
    CertificateRequest, CertificateResponse, GrpcCode, IMPERSONATED_IDENTITY,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::authenticate::Authenticator;
use crate::authorize::authorize;

/// Everything the CA answers from.
pub struct Issuer {
    pub ca: CertificateAuthority,
    /// What the CA itself proves to agents: never issued to one.
    pub own_identity: Identity,
    pub authenticator: Authenticator,
    pub mesh: Arc<MeshHandle>,
    pub ttl: Duration,
    /// `ambit_ca_certificate_requests_total`, by outcome.
    pub requests: Family<OutcomeLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    outcome: &'static str,
}

impl Issuer {
    /// Registers the CA's request counts in `registry`.
    pub fn register(registry: &mut Registry) -> Family<OutcomeLabels, Counter> {
        let requests = Family::default();
        registry.register(
            "ambit_ca_certificate_requests",
            "Certificate requests by outcome: issued, unauthenticated (no or a \
             bad token), forbidden (an identity the requester may not hold) or \
             invalid",
            requests.clone(),
        );
        requests
    }

    /// Counts a request answered with `code`.
    pub fn count(&self, code: GrpcCode) {
        let outcome = match code {
            GrpcCode::Ok => "issued",
            GrpcCode::Unauthenticated => "unauthenticated",
            GrpcCode::PermissionDenied => "forbidden",
            _ => "invalid",
        };
        self.requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

impl Issuer {
    /// The answer to `request` from the caller with `bearer`: the
    /// certificate chain (leaf, intermediates, root), or why not.
    pub async fn answer(
        &self,
        bearer: Option<&str>,
        request: &CertificateRequest,
    ) -> Result<CertificateResponse, (GrpcCode, String)> {
        let Some(bearer) = bearer else {
            tracing::warn!("refused a certificate request without credentials");
            return Err((GrpcCode::Unauthenticated, "no bearer token".into()));
        };
        let mesh = self.mesh.snapshot();
        let requester = match self.authenticator.requester(bearer, &mesh).await {
            Ok(requester) => requester,
            Err(reason) => {
                tracing::warn!("refused a certificate request: {reason}");
                return Err((GrpcCode::Unauthenticated, reason));
            }
        };
        // Node proxies (agents, ztunnels) name the pod's identity they ask
        // for in the metadata; a proxy for one workload (a sidecar, a
        // dedicated ztunnel) only in its request. Either is authorized alike.
        let identity = match &request.impersonated_identity {
            Some(asked) => asked.parse::<Identity>().map_err(|e| {
                (
                    GrpcCode::InvalidArgument,
                    format!("{IMPERSONATED_IDENTITY}: {e}"),
                )
            })?,
            None => identity_requested(&request.csr)
                .map_err(|e| (GrpcCode::InvalidArgument, e.to_string()))?,
        };
        if let Err(denied) = authorize(&mesh, &self.own_identity, &requester, &identity) {
            tracing::warn!(%requester, %identity, "refused a certificate: {denied}");
            return Err((GrpcCode::PermissionDenied, denied.to_string()));
        }
        // As asked, within the CA's own limit.
        let ttl = u64::try_from(request.validity_seconds)
            .ok()
            .filter(|seconds| *seconds > 0)
            .map_or(self.ttl, |seconds| {
                self.ttl.min(Duration::from_secs(seconds))
            });
        let chain = self
            .ca
            .issue(&request.csr, &identity, ttl)
            .map_err(|e| (GrpcCode::InvalidArgument, e.to_string()))?;
        tracing::info!(%requester, %identity, ?ttl, "issued a certificate");
        let mut cert_chain = pem_blocks(&chain);
        cert_chain.push(self.ca.root_pem().to_string());
        Ok(CertificateResponse { cert_chain })
    }
}

/// Each PEM block of `pem`, on its own.
fn pem_blocks(pem: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    pem.split_inclusive(END)
        .map(str::trim)
        .filter(|block| block.ends_with(END))
        .map(|block| format!("{block}\n"))
        .collect()
}
