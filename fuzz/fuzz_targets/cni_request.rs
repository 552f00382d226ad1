//! What reaches the CNI plugin (its configuration on stdin) and what reaches
//! the agent's CNI socket (one JSON request line).
#![no_main]

use ambit_cni::protocol::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = serde_json::from_slice::<Request>(bytes);
    let env = |name: &str| {
        let value = match name {
            "CNI_COMMAND" => "ADD",
            "CNI_CONTAINERID" => "fuzz",
            "CNI_NETNS" => "/run/netns/fuzz",
            "CNI_IFNAME" => "eth0",
            "CNI_ARGS" => "K8S_POD_NAMESPACE=default;K8S_POD_NAME=fuzz;K8S_POD_UID=1",
            _ => return None,
        };
        Some(value.to_string())
    };
    if let Ok(invocation) = ambit_cni::spec::parse(env, bytes) {
        let _ = invocation.pod_ips();
    }
});
