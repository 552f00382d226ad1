//! What a node agent sends the CA: a JSON request naming an identity, with
//! a PEM certificate signing request the CA parses and signs.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use ambit_mesh_tls::ca_protocol::CertificateRequest;
use ambit_identity::{CertificateAuthority, Identity};
use libfuzzer_sys::fuzz_target;

fn authority() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate("cluster.local").expect("a CA"))
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(request) = serde_json::from_slice::<CertificateRequest>(bytes) else {
        return;
    };
    let Ok(identity) = request.identity.parse::<Identity>() else {
        return;
    };
    let _ = authority().issue(&request.csr, &identity, Duration::from_secs(3600));
});
