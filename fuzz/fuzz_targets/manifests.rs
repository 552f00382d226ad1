//! Manifests as users write them: a YAML stream of Kubernetes and Istio
//! objects, as the agents read them from a directory and `ambit analyze`
//! from a file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = ambit_config::document::parse_manifests(text);
    }
});
