//! The Helm chart in `deploy/charts/ambit` agrees with the binaries: every
//! container's arguments are accepted by that binary's flags, and the names
//! the agent and the CA share (the root certificate's ConfigMap, the token
//! audience) are the ones the code uses; and it lints, renders and
//! validates as Kubernetes would take it.

#![allow(clippy::unwrap_used)]

use ambit_mesh_source::view::{VIEW_LABEL, VIEW_PORT};
use ambit_waypoint::http::spans::TracingConfig;
use clap::Parser;
use serde_json::Value;

/// The chart's objects with every part on (`full` in xtask/chart.py),
/// rendered by Helm itself.
fn documents() -> Vec<Value> {
    // Rendered once for the tests that read it (Helm takes a while).
    static FULL: std::sync::OnceLock<Vec<Value>> = std::sync::OnceLock::new();
    FULL.get_or_init(|| documents_of("full")).clone()
}

/// The chart's objects for the value set `set` of xtask/chart.py.
fn documents_of(set: &str) -> Vec<Value> {
    ambit_testbed::chart::render(set).unwrap()
}

/// The pod template of the workload `name` of `kind`.
fn pod_spec(kind: &str, name: &str) -> Value {
    documents()
        .into_iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the chart renders no {kind} {name}"))["spec"]["template"]["spec"]
        .clone()
}

/// The L7 proxy of the Deployment `name` (running as the service account
/// of that name in `namespace`) reads the mesh through its node's agent:
/// its pods are labelled for the view, it is told where the view is, and no
/// binding gives its account any Kubernetes access beyond its namespace.
fn reads_the_mesh_through_its_agent(name: &str, namespace: &str, parsed: &ambit_waypoint::Args) {
    let view = std::net::SocketAddr::from(([127, 0, 0, 1], VIEW_PORT));
    assert_eq!(parsed.mesh_view, Some(view), "{name}");
    // Its node's agent serves the view to its account.
    let agent = pod_spec("DaemonSet", "ambit-node-agent");
    let agent =
        ambit_node_agent::Args::try_parse_from(args(&agent, "node-agent", "ambit-node-agent"))
            .unwrap();
    assert!(
        agent.mesh_view_for.contains(&format!("{namespace}/{name}")),
        "{:?}",
        agent.mesh_view_for
    );
    let documents = documents();
    let deployment = documents
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == name)
        .unwrap();
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"][VIEW_LABEL],
        name
    );
    let is_proxy = |subject: &Value| {
        subject["kind"] == "ServiceAccount"
            && subject["name"] == name
            && subject["namespace"] == namespace
    };
    for binding in documents
        .iter()
        .filter(|d| d["kind"] == "ClusterRoleBinding")
    {
        let subjects = binding["subjects"].as_array().unwrap();
        assert!(
            !subjects.iter().any(is_proxy),
            "{name} is bound cluster-wide by {}",
            binding["metadata"]["name"]
        );
    }
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
    let spec = pod_spec("DaemonSet", "ambit-node-agent");
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
    let spec = pod_spec("Deployment", "ambit-ca");
    let args = args(&spec, "ca", "ambit-ca");
    let parsed = ambit_ca::Args::try_parse_from(&args).unwrap();
    // In the pod, the source is the in-cluster API: the root is kept in a
    // Secret and agents authenticate with the node agent's tokens.
    assert_eq!(parsed.node_tokens, None);
    assert_eq!(parsed.node_agent_service_account, "ambit-node-agent");
    let service_account = &pod_spec("DaemonSet", "ambit-node-agent")["serviceAccountName"];
    assert_eq!(service_account, "ambit-node-agent");
}

#[test]
fn the_waypoint_template_arguments_match_the_code() {
    let spec = pod_spec("Deployment", "waypoint");
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
    let parsed = ambit_waypoint::Args::try_parse_from(&args).unwrap();
    reads_the_mesh_through_its_agent("waypoint", "shop", &parsed);
    // The chart's tracing settings reach the proxy as it reads them.
    let endpoint = parsed.otlp_endpoint.as_deref().unwrap();
    let tracing = TracingConfig::new(endpoint, parsed.trace_sampling).unwrap();
    assert_eq!(
        (tracing.endpoint.as_str(), tracing.sampling),
        ("http://otel-collector.observability:4318/v1/traces", 10.0)
    );
}

#[test]
fn the_gateway_template_arguments_match_the_code() {
    let spec = pod_spec("Deployment", "ingressgateway");
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
    reads_the_mesh_through_its_agent("ingressgateway", "ambit-system", &parsed);
    // Istio's Gateways select it by Istio's label.
    let documents = documents();
    let deployment = documents
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "ingressgateway")
        .unwrap();
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"]["istio"],
        "ingressgateway"
    );
}

#[test]
fn the_chart_lints_renders_and_validates_for_the_oldest_and_newest_kubernetes() {
    // Helm 4 (as a library) lints and renders the chart with each value set
    // (default, gke, k3s, openshift, everything on); every object validates
    // in strict mode against Kubernetes 1.25's and 1.37's own schemas; the
    // plain manifests are what the chart renders and apply in one pass.
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../xtask/chart.py");
    let output = std::process::Command::new("python3")
        .arg(&script)
        .arg("check")
        .output()
        .expect("python3 runs xtask/chart.py");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "xtask/chart.py check printed no report (`cargo xtask setup` installs its libraries): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(report["problems"], serde_json::json!([]), "{report:#}");
    assert!(output.status.success());
    // A revision's release shares no object with the stable one.
    assert_eq!(
        report["revisionShares"],
        serde_json::json!([]),
        "{report:#}"
    );
    for set in ["default", "gke", "k3s", "openshift", "canary", "full"] {
        assert!(
            report["valueSets"][set]["objects"].as_u64() > Some(10),
            "{report:#}"
        );
    }
    // The CRDs generated from Ambit's types: valid, structural, and every
    // Istio sample the suite carries valid under them, nothing pruned.
    assert_eq!(report["crds"]["crds"], 6, "{report:#}");
    assert!(
        report["crds"]["samplesValidated"].as_u64() >= Some(20),
        "{report:#}"
    );
    let kinds = &report["valueSets"]["full"]["kinds"];
    for kind in [
        "Namespace",
        "DaemonSet",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "PodMonitor",
    ] {
        assert!(
            kinds.as_array().unwrap().iter().any(|k| k == kind),
            "{kinds}"
        );
    }
}

#[test]
fn a_revisions_agents_ca_and_names_point_at_each_other() {
    let documents = documents_of("canary");
    let find = |kind: &str| {
        documents
            .iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
            .clone()
    };
    let daemonset = find("DaemonSet");
    let agent = &daemonset["spec"]["template"]["spec"];
    let parsed =
        ambit_node_agent::Args::try_parse_from(args(agent, "node-agent", "ambit-node-agent"))
            .unwrap();
    assert_eq!(
        parsed.daemonset.as_deref(),
        Some(
            format!(
                "ambit-system/{}",
                daemonset["metadata"]["name"].as_str().unwrap()
            )
            .as_str()
        )
    );
    assert_eq!(daemonset["metadata"]["name"], "ambit-node-agent-canary");
    let ca = find("Deployment");
    let ca_args =
        ambit_ca::Args::try_parse_from(args(&ca["spec"]["template"]["spec"], "ca", "ambit-ca"))
            .unwrap();
    assert_eq!(
        ca_args.node_agent_service_account,
        agent["serviceAccountName"].as_str().unwrap()
    );
    let service = documents
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == ca["metadata"]["name"])
        .unwrap();
    assert_eq!(
        parsed.ca.ca_addr.as_deref(),
        Some(
            format!(
                "{}.ambit-system.svc:15012",
                service["metadata"]["name"].as_str().unwrap()
            )
            .as_str()
        )
    );
    assert_eq!(agent["nodeSelector"]["ambit.dev/rev"], "canary");
}
