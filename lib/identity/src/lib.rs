//! Workload identity for Ambit's proxies: SPIFFE IDs, the certificate
//! authority's signing, workload keys and certificates, and the mutual TLS
//! configurations (TLS 1.3, both sides verifying the other's SPIFFE ID)
//! that HBONE runs over. Pure of I/O: callers move the PEM around.

pub mod ca;
pub mod certificate;
pub mod spiffe;
pub mod tls;

pub use ca::CertificateAuthority;
pub use certificate::{certificate_request, WorkloadCertificate};
pub use spiffe::Identity;
pub use tls::TrustBundle;
