//! The CA's one request: certify a key as a workload identity. JSON over
//! HTTPS, the caller authenticated by its bearer token. Deciding the answer
//! is kept apart from the HTTP server ([`Issuer::answer`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ambit_identity::{CertificateAuthority, Identity};
use ambit_mesh_source::MeshHandle;
use anyhow::Context;
use hyper::StatusCode;
use serde::{Deserialize, Serialize};

use crate::authorize::authorize;

pub const CERTIFICATE_PATH: &str = "/v1/certificate";

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateRequest {
    /// The SPIFFE ID asked for.
    pub identity: String,
    /// A PKCS#10 request for the caller's own key, PEM.
    pub csr: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct CertificateResponse {
    /// The leaf first, PEM.
    pub certificate_chain: String,
    /// The roots to verify peers with, PEM.
    pub trust_bundle: String,
}

/// Bootstrap credentials of node agents in standalone mode: one secret
/// token per node, from a file of `NODE TOKEN` lines (`#` comments).
#[derive(Debug, Default)]
pub struct NodeTokens(BTreeMap<String, String>);

impl NodeTokens {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the node tokens {}", path.display()))?;
        let mut tokens = BTreeMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                [node, token] if token.len() >= 16 => {
                    tokens.insert(node.to_string(), token.to_string());
                }
                _ => anyhow::bail!(
                    "{}:{}: expected `NODE TOKEN` with a token of at least 16 characters",
                    path.display(),
                    number + 1
                ),
            }
        }
        Ok(Self(tokens))
    }

    /// The node whose token `presented` is. Every token is compared in
    /// full, so timing does not tell how much of a guess was right.
    fn node_of(&self, presented: &str) -> Option<&str> {
        let mut found = None;
        for (node, token) in &self.0 {
            if constant_time_eq(token.as_bytes(), presented.as_bytes()) {
                found = Some(node.as_str());
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Everything the CA answers from.
pub struct Issuer {
    pub ca: CertificateAuthority,
    pub nodes: NodeTokens,
    pub mesh: Arc<MeshHandle>,
    pub ttl: Duration,
}

impl Issuer {
    /// The status and JSON body for a request with `bearer` and `body`.
    pub fn answer(&self, bearer: Option<&str>, body: &[u8]) -> (StatusCode, serde_json::Value) {
        let error = |status, message: String| (status, serde_json::json!({ "error": message }));
        let Some(node) = bearer.and_then(|token| self.nodes.node_of(token)) else {
            tracing::warn!("refused a certificate request without a known bootstrap token");
            return error(
                StatusCode::UNAUTHORIZED,
                "unknown or missing bootstrap token".into(),
            );
        };
        let request: CertificateRequest = match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("unreadable request: {e}")),
        };
        let identity: Identity = match request.identity.parse() {
            Ok(identity) => identity,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        };
        if let Err(denied) = authorize(
            &self.mesh.snapshot(),
            self.ca.trust_domain(),
            node,
            &identity,
        ) {
            tracing::warn!(%node, %identity, "refused a certificate: {denied}");
            return error(StatusCode::FORBIDDEN, denied.to_string());
        }
        match self.ca.issue(&request.csr, &identity, self.ttl) {
            Ok(chain) => {
                tracing::info!(%node, %identity, ttl = ?self.ttl, "issued a certificate");
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
