#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test
//! The Kubernetes source against the fake API server, in process: the model
//! it keeps equals the server's state after churn, forced 410s and dropped
//! watch streams, and equals the model the manifest directory builds from
//! the same objects.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambit_config::document::{parse_object, rejections};
use ambit_config::model::Mesh;
use ambit_fake_apiserver::FakeApiServer;
use ambit_mesh_source::{directory, kubernetes};
use proptest::prelude::*;
use serde_json::{json, Value};

/// The model built from scratch from what the server holds.
fn expected(server: &FakeApiServer) -> Mesh {
    let mut mesh = Mesh::default();
    for (_, kind, _) in ambit_config::document::KINDS {
        for object in server.objects(kind) {
            match parse_object(object) {
                Ok(Some(resource)) => mesh.apply(resource),
                Ok(None) => {}
                Err(problems) => {
                    for (object, errors) in rejections(&problems) {
                        mesh.reject(&object, errors);
                    }
                }
            }
        }
    }
    mesh
}

/// Starts the watch; the returned cell holds the latest published model.
async fn watch(server: &Arc<FakeApiServer>) -> Arc<Mutex<Mesh>> {
    first_list(server).await.unwrap()
}

/// Starts the watch and waits for its first full list, or its refusal.
async fn first_list(server: &Arc<FakeApiServer>) -> anyhow::Result<Arc<Mutex<Mesh>>> {
    let client = kube::Client::new(server.service(), "default");
    let latest = Arc::new(Mutex::new(Mesh::default()));
    let (synced, initial) = tokio::sync::oneshot::channel();
    let published = latest.clone();
    tokio::spawn(kubernetes::watch(
        client,
        Mesh::default(),
        move |mesh| *published.lock().unwrap() = mesh.clone(),
        synced,
    ));
    let initial = tokio::time::timeout(Duration::from_secs(20), initial)
        .await
        .expect("the first list finishes")
        .expect("the watch runs")?;
    *latest.lock().unwrap() = initial;
    Ok(latest)
}

/// Waits until the watched model equals the server's state.
async fn converges(server: &FakeApiServer, latest: &Mutex<Mesh>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let want = expected(server);
        if *latest.lock().unwrap() == want {
            return;
        }
        if Instant::now() > deadline {
            let have = latest.lock().unwrap().clone();
            panic!(
                "the model did not converge:\nhave {}\nwant {}",
                serde_json::to_string(&have).unwrap(),
                serde_json::to_string(&want).unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One of a small set of objects, in one of a few versions; version 3 of an
/// AuthorizationPolicy is invalid (an unknown field) and must be kept as a
/// denial.
fn object(kind: u8, name: u8, version: u8) -> Value {
    let name = format!("o{name}");
    let namespace = if version.is_multiple_of(2) {
        "default"
    } else {
        "shop"
    };
    let namespace = if kind == 0 { "" } else { namespace };
    let metadata =
        json!({ "name": name, "namespace": namespace, "labels": { "v": version.to_string() } });
    match kind {
        0 => json!({ "apiVersion": "v1", "kind": "Namespace",
            "metadata": { "name": name, "labels": { "istio.io/dataplane-mode": if version.is_multiple_of(2) { "ambient" } else { "none" } } } }),
        1 => json!({ "apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": { "nodeName": format!("node-{version}") },
            "status": { "podIP": format!("10.244.0.{}", version + 2) } }),
        2 => json!({ "apiVersion": "v1", "kind": "Service", "metadata": metadata,
            "spec": { "clusterIP": format!("10.96.0.{}", version + 2), "ports": [{ "name": "http", "port": 80 + version as u16, "targetPort": "http" }] } }),
        3 => json!({ "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": name, "namespace": namespace, "labels": { "kubernetes.io/service-name": format!("o{}", version % 3) } },
            "addressType": "IPv4", "ports": [{ "name": "http", "port": 8080 + version as u16 }],
            "endpoints": [{ "addresses": [format!("10.244.1.{}", version + 2)], "conditions": { "ready": version != 1 } }] }),
        4 => {
            json!({ "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService", "metadata": metadata,
            "spec": { "hosts": [format!("o{}", version % 3)], "http": [{ "route": [{ "destination": { "host": "o0" } }] }] } })
        }
        _ => {
            let spec = if version == 3 {
                json!({ "action": "ALLOW", "rules": [{ "from": [{ "source": { "principal": ["x"] } }] }] })
            } else {
                json!({ "action": if version == 1 { "DENY" } else { "ALLOW" }, "rules": [{}] })
            };
            json!({ "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": metadata, "spec": spec })
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    Apply {
        kind: u8,
        name: u8,
        version: u8,
    },
    Delete {
        kind: u8,
        name: u8,
    },
    /// History compacted and streams ended: every watcher gets 410 and relists.
    Expire,
    DropStreams,
    /// Lets the watchers catch up, so faults land mid-stream too.
    Pause,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..6u8, 0..4u8, 0..4u8).prop_map(|(kind, name, version)| Step::Apply { kind, name, version }),
        2 => (0..6u8, 0..4u8).prop_map(|(kind, name)| Step::Delete { kind, name }),
        1 => Just(Step::Expire),
        1 => Just(Step::DropStreams),
        1 => Just(Step::Pause),
    ]
}

fn delete(server: &FakeApiServer, kind: u8, name: u8) {
    // Deleting what may be in either namespace: delete both, ignore 404s.
    let object = object(kind, name, 0);
    let kind = object["kind"].as_str().unwrap();
    for namespace in ["default", "shop", ""] {
        let _ = server.delete(kind, namespace, &format!("o{name}"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn the_model_equals_the_servers_state_after_churn_and_faults(
        before in proptest::collection::vec(step(), 0..10),
        during in proptest::collection::vec(step(), 1..40),
    ) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let server = Arc::new(FakeApiServer::default());
            let run = |steps: &[Step]| {
                let server = server.clone();
                let steps = steps.to_vec();
                async move {
                    for step in steps {
                        match step {
                            Step::Apply { kind, name, version } => {
                                // The same name in the other namespace goes first,
                                // so each name is one object.
                                delete(&server, kind, name);
                                server.apply(object(kind, name, version)).unwrap();
                            }
                            Step::Delete { kind, name } => delete(&server, kind, name),
                            Step::Expire => server.expire_watches(),
                            Step::DropStreams => server.drop_watches(),
                            Step::Pause => tokio::time::sleep(Duration::from_millis(30)).await,
                        }
                    }
                }
            };
            run(&before).await;
            let latest = watch(&server).await;
            converges(&server, &latest).await;
            run(&during).await;
            converges(&server, &latest).await;
        });
    }
}

/// The same objects, as manifests in a directory and through the API
/// server, give the same model.
#[tokio::test]
async fn both_sources_build_the_same_model() {
    let objects: Vec<Value> = (0..6u8)
        .flat_map(|kind| (0..3u8).map(move |name| object(kind, name, name)))
        .collect();
    let server = Arc::new(FakeApiServer::default());
    for object in &objects {
        server.create(object.clone()).unwrap();
    }
    let dir = std::env::temp_dir().join(format!("ambit-sources-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifests: Vec<String> = objects.iter().map(Value::to_string).collect();
    std::fs::write(dir.join("mesh.yaml"), manifests.join("\n---\n")).unwrap();
    let mut from_directory = Mesh::default();
    directory::Directory::new(dir.clone())
        .load(&mut from_directory)
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let from_kubernetes = watch(&server).await.lock().unwrap().clone();
    // What the API server assigns (uids, creation times) is the only
    // difference.
    let strip = |mesh: &Mesh| {
        let mut value = serde_json::to_value(mesh).unwrap();
        for workload in value["workloads"].as_object_mut().unwrap().values_mut() {
            workload["uid"] = Value::Null;
        }
        for config in value["virtualServices"]
            .as_object_mut()
            .unwrap()
            .values_mut()
        {
            config.as_object_mut().unwrap().remove("created");
        }
        for policy in value["authorizationPolicies"]
            .as_object_mut()
            .unwrap()
            .values_mut()
        {
            policy["valid"]
                .as_object_mut()
                .map(|config| config.remove("created"));
        }
        value
    };
    assert_eq!(from_directory.counts(), from_kubernetes.counts());
    assert_eq!(strip(&from_directory), strip(&from_kubernetes));
    assert!(
        from_kubernetes.authorization_policies.len() == 3,
        "the invalid AuthorizationPolicy is held as a denial by both"
    );
}

#[tokio::test]
async fn a_kind_the_server_does_not_serve_is_empty_until_its_crd_is_installed() {
    let server = Arc::new(FakeApiServer::default());
    server.uninstall("virtualservices");
    server.create(object(2, 0, 0)).unwrap();
    let latest = watch(&server).await;
    let counts = latest.lock().unwrap().counts();
    assert_eq!((counts["Service"], counts["VirtualService"]), (1, 0));

    server.install("virtualservices");
    server.create(object(4, 0, 0)).unwrap();
    converges(&server, &latest).await;
    assert_eq!(latest.lock().unwrap().counts()["VirtualService"], 1);
}

#[tokio::test]
async fn a_kind_the_proxy_may_not_list_stops_its_start_naming_the_kind() {
    let server = Arc::new(FakeApiServer::default());
    server.forbid("authorizationpolicies");
    let error = format!("{:#}", first_list(&server).await.unwrap_err());
    assert!(
        error.contains("refuses to list authorizationpolicies.security.istio.io (403 Forbidden)"),
        "{error}"
    );
    assert!(error.contains("ambit-mesh-reader"), "{error}");
}
