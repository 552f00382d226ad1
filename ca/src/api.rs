//! The CA's answer to its one request (`ambit_mesh_tls::ca_protocol`),
//! decided apart from the HTTP server ([`Issuer::answer`]).

use std::sync::Arc;
use std::time::Duration;

use ambit_identity::{CertificateAuthority, Identity};
use ambit_mesh_source::MeshHandle;
use ambit_mesh_tls::ca_protocol::{CertificateRequest, CertificateResponse};
use hyper::StatusCode;
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

    /// Counts a request answered with `status`.
    pub fn count(&self, status: StatusCode) {
        let outcome = match status {
            StatusCode::OK => "issued",
            StatusCode::UNAUTHORIZED => "unauthenticated",
            StatusCode::FORBIDDEN => "forbidden",
            _ => "invalid",
        };
        self.requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

impl Issuer {
    /// The status and JSON body for a request with `bearer` and `body`.
    pub async fn answer(
        &self,
        bearer: Option<&str>,
        body: &[u8],
    ) -> (StatusCode, serde_json::Value) {
        let error = |status, message: String| (status, serde_json::json!({ "error": message }));
        let Some(bearer) = bearer else {
            tracing::warn!("refused a certificate request without credentials");
            return error(StatusCode::UNAUTHORIZED, "no bearer token".into());
        };
        let mesh = self.mesh.snapshot();
        let requester = match self.authenticator.requester(bearer, &mesh).await {
            Ok(requester) => requester,
            Err(reason) => {
                tracing::warn!("refused a certificate request: {reason}");
                return error(StatusCode::UNAUTHORIZED, reason);
            }
        };
        let request: CertificateRequest = match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("unreadable request: {e}")),
        };
        let identity: Identity = match request.identity.parse() {
            Ok(identity) => identity,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        };
        if let Err(denied) = authorize(&mesh, &self.own_identity, &requester, &identity) {
            tracing::warn!(%requester, %identity, "refused a certificate: {denied}");
            return error(StatusCode::FORBIDDEN, denied.to_string());
        }
        match self.ca.issue(&request.csr, &identity, self.ttl) {
            Ok(chain) => {
                tracing::info!(%requester, %identity, ttl = ?self.ttl, "issued a certificate");
                let response = CertificateResponse {
                    certificate_chain: chain,
                    trust_bundle: self.ca.root_pem().to_string(),
                };
                (
                    StatusCode::OK,
                    serde_json::to_value(response).unwrap_or_default(),
                )
            }
            Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }
}
