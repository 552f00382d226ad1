//! Kubernetes' own kinds, read for the mesh model: typed fields come through,
//! the rest of each object is ignored, bad values are named.

use ambit_config::api::core::IntOrString;
use ambit_config::document::{parse_manifests, Resource};

#[test]
fn namespaces_pods_services_and_endpoint_slices_are_read() {
    let path = format!("{}/tests/fixtures/cluster.yaml", env!("CARGO_MANIFEST_DIR"));
    let parsed = parse_manifests(&std::fs::read_to_string(path).expect("fixture"));
    assert_eq!(parsed.problems, vec![]);
    let [Resource::Namespace(ns), Resource::Pod(pod), Resource::Service(svc), Resource::EndpointSlice(slice)] =
        &parsed.resources[..]
    else {
        panic!("four objects in order: {:?}", parsed.resources);
    };
    assert_eq!(ns.metadata.labels["istio.io/dataplane-mode"], "ambient");
    assert_eq!(pod.namespace(), "shop");
    assert_eq!(pod.metadata.labels["version"], "v1");
    assert_eq!(pod.spec.spec.node_name.as_deref(), Some("node-1"));
    assert_eq!(pod.spec.spec.service_account_name.as_deref(), Some("cart"));
    assert_eq!(pod.spec.status.pod_ip.as_deref(), Some("10.244.1.7"));
    assert_eq!(svc.spec.spec.cluster_ip.as_deref(), Some("10.96.0.42"));
    let targets: Vec<Option<IntOrString>> = svc
        .spec
        .spec
        .ports
        .iter()
        .map(|p| p.target_port.clone())
        .collect();
    assert_eq!(
        targets,
        [
            Some(IntOrString::String("http".into())),
            Some(IntOrString::Int(9090))
        ]
    );
    assert_eq!(slice.metadata.labels["kubernetes.io/service-name"], "cart");
    let ready: Vec<bool> = slice
        .spec
        .endpoints
        .iter()
        .map(|e| e.conditions.is_ready())
        .collect();
    assert_eq!(ready, [true, false]);
    assert_eq!(slice.spec.ports[0].port, Some(8080));
}

#[test]
fn bad_kubernetes_values_are_named_by_path() {
    let text = r#"apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.300
  ports: [{port: 70000}]
  somethingNew: ignored
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop}
addressType: IPv5
endpoints: [{addresses: [10.244.1.x]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop}
status: {podIP: 10.244.1.7, phase: Running, podIPs: "not a list"}
"#;
    let found: Vec<String> = parse_manifests(text)
        .problems
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        found,
        [
            "error: Service shop/web: spec.clusterIP: \"10.96.0.300\" is not an IP address or None",
            "error: Service shop/web: spec.ports[0].port: port 70000 is not a number from 1 to 65535",
            "error: EndpointSlice shop/web-1: addressType: \"IPv5\" is not IPv4, IPv6 or FQDN",
            "error: EndpointSlice shop/web-1: endpoints[0].addresses[0]: \"10.244.1.x\" is not an IP address",
            "error: Pod shop/web-0: status.podIPs: invalid type: string \"not a list\", expected a sequence",
        ]
    );
}
