//! The mesh view: what a node agent serves to the waypoints and gateways
//! of its node, so that they read the mesh without Kubernetes RBAC of
//! their own. It is the API server's list and watch of exactly the kinds
//! the model is read from (cluster-wide collections, read-only), which the
//! agent forwards with its own credentials, with pods reduced to the fields
//! the model reads (never their containers' environment or anything else
//! of their spec). The agent serves it on loopback inside each such pod's
//! network namespace, so only that pod reaches it; the proxy reads it as
//! it would read the API server (`Source::AgentView`).
//!
//! This module decides; the agent does the I/O.

use std::collections::{BTreeMap, BTreeSet};

use ambit_config::api::core::PodBody;
use ambit_config::api::meta::ObjectMeta;
use ambit_config::document::{field_selector, plural, KINDS};
use ambit_config::model::{Key, Workload};
use serde_json::Value;

/// Where the view is served, inside the pod (Istio's port for
/// configuration served to proxies in plain text).
pub const VIEW_PORT: u16 = 15010;

/// The pod label that makes the agent serve a pod the view: Istio's label
/// on its waypoints' and gateways' pods (the Gateway they run).
pub const VIEW_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// Whether the pod `key` (as the model holds it) is served the view:
/// labelled for it ([`VIEW_LABEL`]), off the node's own network (where
/// every process of the node would reach it), and running as one of the
/// `allowed` service accounts, the operator's list of its waypoints and
/// gateways. A label alone never is enough: whoever may create a pod may
/// set it, and the view reads with the agent's rights.
pub fn serves(key: &Key, workload: &Workload, allowed: &BTreeSet<Key>) -> bool {
    workload.labels.contains_key(VIEW_LABEL)
        && !workload.host_network
        && allowed.contains(&Key::new(&key.namespace, &workload.service_account))
}

/// What a request that passes reads, for the agent to pass on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passed {
    /// Discovery or the server's version: passed on as it is.
    Discovery,
    /// Objects of a kind the model reads, passed on as they are.
    Objects,
    /// Pods: each reduced with [`reduce_pod`]; `watch` when the answer is
    /// a stream of events, one JSON document a line, else one list.
    Pods { watch: bool },
}

/// Whether the view passes `method` on `path` with `query` (its raw query
/// string) to the API server; if not, why, to be answered 403.
pub fn admit(method: &str, path: &str, query: Option<&str>) -> Result<Passed, String> {
    if method != "GET" {
        return Err(format!("the mesh view is read-only: {method} is refused"));
    }
    if matches!(path, "/version" | "/api" | "/apis") {
        return Ok(Passed::Discovery);
    }
    let params = parameters(query.unwrap_or_default())?;
    let kind = KINDS.iter().find_map(|(group, kind, versions)| {
        let at = versions.iter().any(|version| {
            let collection = match *group {
                "" => format!("/api/{version}/{}", plural(kind)),
                group => format!("/apis/{group}/{version}/{}", plural(kind)),
            };
            path == collection
        });
        at.then_some(*kind)
    });
    let Some(kind) = kind else {
        return Err(format!(
            "{path} is not in the mesh view (it serves the cluster-wide lists of the kinds the mesh is read from)"
        ));
    };
    // Of some kinds the model reads only some objects: the view gives no
    // more (of ConfigMaps, Istio's mesh config alone).
    if let Some(selector) = field_selector(kind) {
        if params.get("fieldSelector") != Some(&selector) {
            return Err(format!(
                "{path} is served only with fieldSelector={selector}"
            ));
        }
    }
    Ok(match kind {
        "Pod" => Passed::Pods {
            watch: params
                .get("watch")
                .is_some_and(|watch| watch == "true" || watch == "1"),
        },
        _ => Passed::Objects,
    })
}

/// A query string's parameters, decoded (`%XX` and `+`). A name given
/// twice is refused: the API server reads the first, and a check of one
/// would not be a check of what is served.
fn parameters(query: &str) -> Result<BTreeMap<String, String>, String> {
    let mut parameters = BTreeMap::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(name);
        if parameters.insert(name.clone(), decode(value)).is_some() {
            return Err(format!("the query names {name} more than once"));
        }
    }
    Ok(parameters)
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| {
            bytes
                .get(at)
                .and_then(|byte| char::from(*byte).to_digit(16))
        };
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                decoded.push((high * 16 + low) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                decoded.push(b' ');
                i += 1;
            }
            (byte, _, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// A pod as the view passes it on: its type, its metadata as the model
/// reads it, and of its spec and status only what the model reads
/// ([`PodBody`]). A pod that cannot be read keeps its type and name only
/// (the proxy rejects it, as it would have).
pub fn reduce_pod(pod: &Value) -> Value {
    let mut reduced = serde_json::Map::new();
    for field in ["apiVersion", "kind"] {
        if let Some(value) = pod.get(field) {
            reduced.insert(field.into(), value.clone());
        }
    }
    let metadata = pod
        .get("metadata")
        .and_then(|metadata| serde_json::from_value::<ObjectMeta>(metadata.clone()).ok());
    let body = serde_json::from_value::<PodBody>(pod.clone()).ok();
    match (
        metadata,
        body.and_then(|body| serde_json::to_value(body).ok()),
    ) {
        (Some(metadata), Some(Value::Object(body))) => {
            reduced.insert("metadata".into(), serde_json::json!(metadata));
            reduced.extend(body);
        }
        _ => {
            let name = |field: &str| pod.get("metadata")?.get(field).cloned();
            reduced.insert(
                "metadata".into(),
                serde_json::json!({ "name": name("name"), "namespace": name("namespace") }),
            );
        }
    }
    Value::Object(reduced)
}

/// A list of pods (`PodList`) with each item reduced.
pub fn reduce_pod_list(mut list: Value) -> Value {
    if let Some(Value::Array(items)) = list.get_mut("items") {
        for item in items.iter_mut() {
            *item = reduce_pod(item);
        }
    }
    list
}

/// One watch event (`{"type": …, "object": …}`) with its pod reduced; an
/// `ERROR` event's object is a Status, passed on as it is.
pub fn reduce_pod_event(mut event: Value) -> Value {
    if event.get("type").and_then(Value::as_str) != Some("ERROR") {
        if let Some(object) = event.get_mut("object") {
            *object = reduce_pod(object);
        }
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_reads_of_the_kinds_the_mesh_is_read_from_pass() {
        let pods = admit("GET", "/api/v1/pods", Some("limit=500")).unwrap();
        assert_eq!(pods, Passed::Pods { watch: false });
        let watch = "watch=true&resourceVersion=12&timeoutSeconds=290&allowWatchBookmarks=true";
        assert_eq!(
            admit("GET", "/api/v1/pods", Some(watch)).unwrap(),
            Passed::Pods { watch: true }
        );
        for path in [
            "/api/v1/namespaces",
            "/api/v1/services",
            "/apis/discovery.k8s.io/v1/endpointslices",
            "/apis/networking.istio.io/v1/virtualservices",
            "/apis/networking.istio.io/v1alpha3/destinationrules",
            "/apis/security.istio.io/v1beta1/authorizationpolicies",
        ] {
            assert_eq!(admit("GET", path, None), Ok(Passed::Objects), "{path}");
        }
        for path in ["/version", "/apis", "/api"] {
            assert_eq!(admit("GET", path, None), Ok(Passed::Discovery), "{path}");
        }
        // Istio's mesh config alone of the ConfigMaps, as kube-rs encodes it.
        let istio = Some("fieldSelector=metadata.name%3Distio&watch=1");
        assert_eq!(
            admit("GET", "/api/v1/configmaps", istio),
            Ok(Passed::Objects)
        );
        let other = Some("fieldSelector=metadata.name%3Dother");
        let twice = Some("fieldSelector=metadata.name%3Dother&fieldSelector=metadata.name%3Distio");
        let refused_reads = [
            ("/api/v1/configmaps", None),
            ("/api/v1/configmaps", other),
            ("/api/v1/configmaps", twice),
            ("/api/v1/pods/../secrets", None),
            ("/api/v1/pod%73", None),
            ("/api/v1/secrets", None),
            ("/api/v1/namespaces/default/secrets/tls", None),
            ("/api/v1/namespaces/default/pods", None),
            ("/api/v1/namespaces/default/pods/app-1", None),
            ("/api/v1/pods/app-1/log", None),
            ("/apis/networking.istio.io/v2/virtualservices", None),
            ("/apis/apps/v1/deployments", None),
        ];
        for (path, query) in refused_reads {
            assert!(
                admit("GET", path, query).is_err(),
                "GET {path}?{query:?} must be refused"
            );
        }
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            assert!(admit(method, "/api/v1/pods", None).is_err(), "{method}");
        }
        assert!(admit("POST", "/api/v1/pods", None)
            .unwrap_err()
            .contains("read-only"));
    }

    #[test]
    fn only_a_labelled_pod_of_an_allowed_account_off_the_node_network_is_served() {
        let allowed = BTreeSet::from([Key::new("shop", "waypoint")]);
        let pod = |labelled: bool, account: &str, host_network: bool| Workload {
            uid: None,
            node: Some("node-1".into()),
            service_account: account.into(),
            labels: match labelled {
                true => [(VIEW_LABEL.to_string(), "waypoint".to_string())].into(),
                false => Default::default(),
            },
            ips: vec![],
            host_network,
            istio_sidecar: false,
        };
        let key = Key::new("shop", "waypoint-7f9c");
        assert!(serves(&key, &pod(true, "waypoint", false), &allowed));
        assert!(!serves(&key, &pod(false, "waypoint", false), &allowed));
        assert!(
            !serves(&key, &pod(true, "cart", false), &allowed),
            "a labelled pod of another account"
        );
        assert!(
            !serves(&key, &pod(true, "waypoint", true), &allowed),
            "on the node's network"
        );
        let elsewhere = Key::new("other", "waypoint-1");
        assert!(
            !serves(&elsewhere, &pod(true, "waypoint", false), &allowed),
            "the same account name in another namespace"
        );
        assert!(
            !serves(&key, &pod(true, "waypoint", false), &BTreeSet::new()),
            "none allowed"
        );
    }

    #[test]
    fn a_pod_keeps_only_what_the_model_reads() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "reviews-v1-1", "namespace": "shop",
                "labels": { "app": "reviews" },
                "managedFields": [{ "manager": "kubectl" }],
            },
            "spec": {
                "nodeName": "node-1", "serviceAccountName": "reviews",
                "containers": [{
                    "name": "app", "image": "reviews:1",
                    "env": [{ "name": "DB_PASSWORD", "value": "hunter2" }],
                    "command": ["serve", "--token=secret"],
                }],
                "volumes": [{ "name": "creds", "secret": { "secretName": "db" } }],
            },
            "status": { "podIP": "10.0.0.7", "podIPs": [{ "ip": "10.0.0.7" }], "phase": "Running" },
        });
        let reduced = reduce_pod(&pod);
        let text = reduced.to_string();
        for absent in [
            "hunter2",
            "DB_PASSWORD",
            "secret",
            "reviews:1",
            "managedFields",
        ] {
            assert!(!text.contains(absent), "{absent} is passed on: {text}");
        }
        // What the model reads of it is the same either way.
        let read = |value: &Value| ambit_config::document::parse_object(value.clone()).unwrap();
        assert_eq!(read(&reduced), read(&pod));
        assert_eq!(reduced["spec"]["containers"], json!([{ "name": "app" }]));

        let list = reduce_pod_list(json!({ "kind": "PodList", "metadata": {}, "items": [pod] }));
        assert!(!list.to_string().contains("hunter2"));
        let event = reduce_pod_event(json!({ "type": "ADDED", "object": pod }));
        assert!(!event.to_string().contains("hunter2"));
        let error = json!({ "type": "ERROR", "object": { "kind": "Status", "code": 410 } });
        assert_eq!(reduce_pod_event(error.clone()), error);
    }
}
