//! The Kubernetes manifests in `deploy/` agree with the binaries: every
//! container's arguments are accepted by that binary's flags, and the names
//! the agent and the CA share (the root certificate's ConfigMap, the token
//! audience) are the ones the code uses.

#![allow(clippy::unwrap_used)]

use clap::Parser;
use serde_json::Value;

fn documents(file: &str) -> Vec<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_saphyr::from_multiple(&text).unwrap()
}

/// The pod template of the workload of `kind` in `file`.
fn pod_spec(file: &str, kind: &str) -> Value {
    documents(file)
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("{file} has no {kind}"))["spec"]["template"]["spec"]
        .clone()
}

/// The arguments of `container`, as its binary would be run.
fn args(spec: &Value, container: &str, binary: &str) -> Vec<String> {
    let container = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == container)
        .unwrap();
    let args = container["args"].as_array().unwrap();
    std::iter::once(binary.to_string())
        .chain(args.iter().map(|a| a.as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn the_node_agents_arguments_and_shared_names_match_the_code() {
    let spec = pod_spec("node-agent.yaml", "DaemonSet");
    let args = args(&spec, "node-agent", "ambit-node-agent");
    let parsed = ambit_node_agent::Args::try_parse_from(&args).unwrap();
    assert_eq!(
        parsed.ca.ca_addr.as_deref(),
        Some("ambit-ca.ambit-system.svc:15012")
    );
    let volumes = spec["volumes"].as_array().unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap().clone();
    assert_eq!(
        volume("ca-root")["configMap"]["name"],
        ambit_ca::root::ROOT_CERT_CONFIG_MAP
    );
    assert!(parsed
        .ca
        .ca_root
        .unwrap()
        .ends_with(ambit_ca::root::ROOT_CERT_KEY));
    let token = &volume("ca-token")["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], ambit_ca::authenticate::TOKEN_AUDIENCE);
    assert_eq!(
        spec["hostNetwork"], true,
        "probes come from the node's addresses"
    );
    // The surge pod of an upgrade is not held back by host ports, and its
    // probes reach it alone, through the socket its flags name.
    let container = &spec["containers"][0];
    assert!(container.get("ports").is_none(), "{container}");
    let socket = parsed.admin.probe_socket.clone().unwrap();
    let probe_volume = &volume("probe");
    assert!(probe_volume.get("emptyDir").is_some(), "{probe_volume}");
    for (probe, what) in [("readinessProbe", "ready"), ("livenessProbe", "live")] {
        let command = &container[probe]["exec"]["command"];
        assert_eq!(command[0], "/usr/bin/ambit-node-agent");
        assert_eq!(command[1], "probe");
        assert_eq!(command[2], socket.display().to_string());
        assert_eq!(command[3], what);
    }
    // It installs its CNI plugin into the node's directories it mounts.
    assert!(parsed.cni_conf_dir.is_some() && parsed.cni_bin_dir.is_some());
}

#[test]
fn the_cas_arguments_match_the_code() {
    let spec = pod_spec("ca.yaml", "Deployment");
    let args = args(&spec, "ca", "ambit-ca");
    let parsed = ambit_ca::Args::try_parse_from(&args).unwrap();
    // In the pod, the source is the in-cluster API: the root is kept in a
    // Secret and agents authenticate with the node agent's tokens.
    assert_eq!(parsed.node_tokens, None);
    assert_eq!(parsed.node_agent_service_account, "ambit-node-agent");
    let service_account = &documents("node-agent.yaml")
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .unwrap()["spec"]["template"]["spec"]["serviceAccountName"];
    assert_eq!(service_account, "ambit-node-agent");
}

#[test]
fn the_waypoint_template_arguments_match_the_code() {
    let spec = pod_spec("waypoint.yaml", "Deployment");
    let container = spec["containers"][0]["name"].as_str().unwrap().to_string();
    let mut args = args(&spec, &container, "ambit-waypoint");
    // The namespace comes from the downward API, as POD_NAMESPACE.
    let env = spec["containers"][0]["env"].as_array().unwrap();
    let namespace = env.iter().find(|e| e["name"] == "POD_NAMESPACE").unwrap();
    assert_eq!(
        namespace["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    args.push("--namespace=shop".into());
    ambit_waypoint::Args::try_parse_from(&args).unwrap();
}

#[test]
fn the_gateway_template_arguments_match_the_code() {
    let spec = pod_spec("gateway.yaml", "Deployment");
    let mut args = args(&spec, "gateway", "ambit-waypoint");
    let env = spec["containers"][0]["env"].as_array().unwrap();
    let from_pod = |name: &str| {
        env.iter().find(|e| e["name"] == name).unwrap()["valueFrom"]["fieldRef"]["fieldPath"]
            .clone()
    };
    assert_eq!(from_pod("POD_NAMESPACE"), "metadata.namespace");
    assert_eq!(from_pod("POD_NAME"), "metadata.name");
    args.extend([
        "--namespace=istio-system".into(),
        "--pod-name=ingressgateway-1".into(),
    ]);
    let parsed = ambit_waypoint::Args::try_parse_from(&args).unwrap();
    assert_eq!(parsed.mode, ambit_waypoint::Mode::Gateway);
    // Istio's Gateways select it by Istio's label.
    let documents = documents("gateway.yaml");
    let deployment = documents
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"]["istio"],
        "ingressgateway"
    );
}
