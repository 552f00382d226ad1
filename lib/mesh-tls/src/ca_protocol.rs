//! The CA's one request, as both sides speak it: certify a key as a
//! workload identity. JSON over HTTPS, the caller authenticated by its
//! bearer token.

use serde::{Deserialize, Serialize};

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
