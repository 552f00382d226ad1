//! The mesh model at production scale, run by `cargo xtask bench`: its
//! memory at 10,000 pods and 1,000 services, and how long a change takes to
//! reach the snapshot the data path reads (`MeshHandle::snapshot`), through
//! the Kubernetes source (the fake API server over HTTP on loopback) and
//! through the manifest directory. Figures are reported, not asserted.
//!
//! `cargo bench -p ambit-mesh-source --bench scale [-- --save DIR]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_config::document::parse_object;
use ambit_config::model::{Key, Mesh};
use ambit_fake_apiserver::FakeApiServer;
use ambit_mesh_source::{MeshHandle, Source};
use anyhow::{bail, Context};
use serde_json::{json, Value};

const PODS: usize = 10_000;
const SERVICES: usize = 1_000;
const NAMESPACES: usize = 50;
const NODES: usize = 100;
/// VirtualServices and DestinationRules, each.
const ROUTED_SERVICES: usize = 100;
const TRIALS: usize = 100;
/// How long one change may take before the bench gives up on it.
const GIVE_UP: Duration = Duration::from_secs(10);
const PROPAGATION_GOAL_MS: f64 = 100.0;
const MEMORY_GOAL_MB: f64 = 50.0;

/// Counts the bytes the process holds, so the model's share can be measured.
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds `dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() -> anyhow::Result<()> {
    let save = std::env::args()
        .skip_while(|arg| arg != "--save")
        .nth(1)
        .map(PathBuf::from);
    let objects = cluster_objects();
    println!(
        "bench: {} objects ({PODS} pods, {SERVICES} services with their EndpointSlices, \
         {NAMESPACES} namespaces, {ROUTED_SERVICES} VirtualServices and DestinationRules)",
        objects.len()
    );
    let memory_mb = model_memory(&objects)? as f64 / 1e6;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let work_dir = std::env::temp_dir().join(format!("ambit-bench-model-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)?;
    let results = runtime.block_on(async {
        let kubernetes = through_kubernetes(&objects, &work_dir).await?;
        let directory = through_directory(&objects, &work_dir).await?;
        anyhow::Ok([
            ("Kubernetes API", kubernetes),
            ("manifest directory", directory),
        ])
    });
    let _ = std::fs::remove_dir_all(&work_dir);
    let results = results?;

    let mut report = format!(
        "| model at {PODS} pods, {SERVICES} services | value | goal |\n|---|---|---|\n\
         | memory of the model | {memory_mb:.1} MB | < {MEMORY_GOAL_MB} MB ({}) |\n",
        verdict(memory_mb < MEMORY_GOAL_MB)
    );
    for (source, run) in &results {
        let [p50, p99, max] = [0.5, 0.99, 1.0].map(|q| quantile_ms(&run.propagation, q));
        report += &format!(
            "| {source}: first full read | {:.0} ms | |\n\
             | {source}: change to snapshot, p50 / p99 / max of {TRIALS} | {p50:.1} / {p99:.1} / {max:.1} ms | p99 < {PROPAGATION_GOAL_MS} ms ({}) |\n",
            run.initial.as_secs_f64() * 1e3,
            verdict(p99 < PROPAGATION_GOAL_MS)
        );
    }
    println!("\n{report}");
    if let Some(dir) = save {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("model.md"), &report)?;
        println!("Saved to {}/model.md", dir.display());
    }
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "not met"
    }
}

/// Bytes the model holds once built from `objects`, read as a source reads
/// them, after everything else used on the way is freed.
fn model_memory(objects: &[Value]) -> anyhow::Result<usize> {
    let before = ALLOCATED.load(Ordering::Relaxed);
    let mut mesh = Mesh::default();
    for object in objects {
        match parse_object(object.clone()) {
            Ok(Some(resource)) => mesh.apply(resource),
            other => bail!("bench object unreadable: {other:?}"),
        }
    }
    let held = ALLOCATED.load(Ordering::Relaxed).saturating_sub(before);
    if mesh.workloads.len() != PODS || mesh.services.len() != SERVICES {
        bail!("the model holds {:?}", mesh.counts());
    }
    drop(mesh);
    Ok(held)
}

struct Run {
    initial: Duration,
    propagation: Vec<Duration>,
}

async fn through_kubernetes(objects: &[Value], work_dir: &Path) -> anyhow::Result<Run> {
    let server = Arc::new(FakeApiServer::default());
    for object in objects {
        server
            .create(object.clone())
            .map_err(|refusal| anyhow::anyhow!("{}", refusal.message))?;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let serving = tokio::spawn(server.clone().serve(listener));
    let kubeconfig = work_dir.join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig(&url))?;
    let source = Source::Kubernetes {
        kubeconfig: Some(kubeconfig),
    };
    let run = measure(&source, |trial, pod| {
        let made = Instant::now();
        server
            .apply(pod)
            .map_err(|refusal| anyhow::anyhow!("trial {trial}: {}", refusal.message))?;
        Ok(made)
    })
    .await;
    serving.abort();
    run
}

async fn through_directory(objects: &[Value], work_dir: &Path) -> anyhow::Result<Run> {
    let dir = work_dir.join("manifests");
    std::fs::create_dir_all(&dir)?;
    // One file per namespace, as a team might keep them.
    let mut files: Vec<Vec<&Value>> = vec![Vec::new(); NAMESPACES + 1];
    for object in objects {
        files[file_of(object)].push(object);
    }
    for (index, file) in files.iter().enumerate() {
        write_manifest(&dir, index, file.iter().copied())?;
    }
    let source = Source::Directory(dir.clone());
    measure(&source, |_, pod| {
        let index = file_of(&pod);
        let name = &pod["metadata"]["name"];
        let objects =
            files[index]
                .iter()
                .map(|&object| match object["metadata"]["name"] == *name {
                    true => &pod,
                    false => object,
                });
        write_manifest(&dir, index, objects)
    })
    .await
}

/// Index of the manifest file an object is kept in: its namespace's, or 0
/// for cluster-scoped objects.
fn file_of(object: &Value) -> usize {
    object["metadata"]["namespace"]
        .as_str()
        .and_then(|ns| ns.strip_prefix("ns-"))
        .and_then(|n| n.parse::<usize>().ok())
        .map_or(0, |n| n + 1)
}

/// Writes beside and renames, as editors and ConfigMap mounts do, so the
/// source never reads half a file; returns when the writing began.
fn write_manifest<'a>(
    dir: &Path,
    index: usize,
    objects: impl Iterator<Item = &'a Value>,
) -> anyhow::Result<Instant> {
    let mut text = String::new();
    for object in objects {
        text += "---\n";
        text += &serde_json::to_string(object)?;
        text += "\n";
    }
    let path = dir.join(format!("{index:02}.yaml"));
    let temporary = dir.join(format!(".{index:02}.yaml.tmp"));
    let made = Instant::now();
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, &path).context("writing a manifest")?;
    Ok(made)
}

/// Starts `source`, then changes one pod's labels per trial with `change`
/// (which returns when it made the change) and times how long the new
/// labels take to show in the snapshot.
async fn measure(
    source: &Source,
    mut change: impl FnMut(usize, Value) -> anyhow::Result<Instant>,
) -> anyhow::Result<Run> {
    let handle = Arc::new(MeshHandle::default());
    let start = Instant::now();
    let task = ambit_mesh_source::start(source, handle.clone()).await?;
    let initial = start.elapsed();
    if handle.snapshot().workloads.len() != PODS {
        bail!(
            "{source:?}: the first read holds {:?}",
            handle.snapshot().counts()
        );
    }
    let mut changes = handle.subscribe();
    let mut propagation = Vec::new();
    for trial in 0..TRIALS {
        let index = trial * 97 % PODS;
        let mut object = pod(index);
        let version = format!("trial-{trial}");
        object["metadata"]["labels"]["version"] = version.clone().into();
        let key = Key::new(namespace_of(index), format!("pod-{index:05}"));
        let seen = |mesh: &Mesh| {
            mesh.workloads
                .get(&key)
                .and_then(|workload| workload.labels.get("version"))
                == Some(&version)
        };
        changes.borrow_and_update();
        let start = change(trial, object)?;
        while !seen(&changes.borrow_and_update()) {
            tokio::time::timeout(GIVE_UP, changes.changed())
                .await
                .with_context(|| format!("{source:?}: trial {trial} was never seen"))??;
        }
        propagation.push(start.elapsed());
    }
    task.abort();
    Ok(Run {
        initial,
        propagation,
    })
}

fn quantile_ms(samples: &[Duration], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(index).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn namespace_of(pod: usize) -> String {
    format!("ns-{:02}", pod % NAMESPACES)
}

/// The cluster: namespaces, pods as the API server returns them (full
/// specs and statuses), Services with their EndpointSlices, and some
/// routing. Pod `i` backs Service `i % SERVICES`, in the same namespace.
fn cluster_objects() -> Vec<Value> {
    let mut objects: Vec<Value> = (0..NAMESPACES)
        .map(|n| {
            json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": { "name": format!("ns-{n:02}"), "labels": {
                    "istio.io/dataplane-mode": "ambient",
                    "kubernetes.io/metadata.name": format!("ns-{n:02}"),
                }},
            })
        })
        .collect();
    objects.extend((0..PODS).map(pod));
    for service in 0..SERVICES {
        let namespace = namespace_of(service);
        let name = format!("svc-{service:04}");
        let vip = format!("10.96.{}.{}", service / 250, service % 250 + 1);
        objects.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": name, "namespace": namespace, "labels": { "app": name } },
            "spec": {
                "type": "ClusterIP", "clusterIP": vip, "clusterIPs": [vip],
                "selector": { "app": name },
                "ports": [
                    { "name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP" },
                    { "name": "grpc", "port": 9090, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc" },
                ],
            },
        }));
        let endpoints: Vec<Value> = (service..PODS)
            .step_by(SERVICES)
            .map(|pod| {
                json!({
                    "addresses": [pod_ip(pod)],
                    "conditions": { "ready": true, "serving": true, "terminating": false },
                    "nodeName": node_of(pod),
                    "targetRef": { "kind": "Pod", "namespace": namespace, "name": format!("pod-{pod:05}") },
                })
            })
            .collect();
        objects.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{name}-abcde"), "namespace": namespace,
                "labels": { "kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io" },
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [
                { "name": "http", "port": 8080, "protocol": "TCP" },
                { "name": "grpc", "port": 9090, "protocol": "TCP", "appProtocol": "grpc" },
            ],
        }));
    }
    for service in 0..ROUTED_SERVICES {
        let namespace = namespace_of(service);
        let host = format!("svc-{service:04}");
        objects.push(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": { "name": host, "namespace": namespace },
            "spec": { "hosts": [host], "http": [
                { "match": [{ "headers": { "end-user": { "exact": "jason" } } }],
                  "route": [{ "destination": { "host": host, "subset": "v2" } }] },
                { "route": [
                    { "destination": { "host": host, "subset": "v1" }, "weight": 90 },
                    { "destination": { "host": host, "subset": "v2" }, "weight": 10 },
                ], "timeout": "2s", "retries": { "attempts": 3, "perTryTimeout": "500ms" } },
            ]},
        }));
        objects.push(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": { "name": host, "namespace": namespace },
            "spec": { "host": host, "subsets": [
                { "name": "v1", "labels": { "version": "v1" } },
                { "name": "v2", "labels": { "version": "v2" } },
            ]},
        }));
    }
    objects
}

fn pod_ip(pod: usize) -> String {
    format!(
        "10.{}.{}.{}",
        1 + pod / 62_500,
        pod / 250 % 250,
        pod % 250 + 2
    )
}

fn node_of(pod: usize) -> String {
    format!("node-{:03}", pod % NODES)
}

/// A pod as the API server returns it: what the model keeps, and the
/// rest of a real pod that it must skip.
fn pod(index: usize) -> Value {
    let service = format!("svc-{:04}", index % SERVICES);
    let name = format!("pod-{index:05}");
    let ip = pod_ip(index);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": namespace_of(index),
            "uid": format!("00000000-0000-4000-8000-{index:012}"),
            "labels": { "app": service, "version": "v1", "pod-template-hash": "6d4f8c7b9" },
            "annotations": { "kubectl.kubernetes.io/default-container": "app", "prometheus.io/scrape": "true" },
            "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{service}-6d4f8c7b9"),
                                  "uid": "11111111-2222-4333-8444-555555555555", "controller": true }],
        },
        "spec": {
            "nodeName": node_of(index),
            "serviceAccountName": service,
            "containers": [{
                "name": "app", "image": format!("registry.example.com/{service}:1.4.2"),
                "ports": [{ "name": "http", "containerPort": 8080 }, { "name": "grpc", "containerPort": 9090 }],
                "env": [{ "name": "LOG_LEVEL", "value": "info" }, { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }],
                "resources": { "requests": { "cpu": "100m", "memory": "128Mi" }, "limits": { "memory": "256Mi" } },
                "readinessProbe": { "httpGet": { "path": "/ready", "port": 8080 }, "periodSeconds": 5 },
                "volumeMounts": [{ "name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true }],
            }],
            "volumes": [{ "name": "kube-api-access", "projected": { "sources": [{ "serviceAccountToken": { "path": "token", "expirationSeconds": 3607 } }] } }],
        },
        "status": {
            "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }], "hostIP": "172.18.0.2",
            "conditions": [
                { "type": "Initialized", "status": "True" }, { "type": "Ready", "status": "True" },
                { "type": "ContainersReady", "status": "True" }, { "type": "PodScheduled", "status": "True" },
            ],
            "containerStatuses": [{ "name": "app", "ready": true, "restartCount": 0, "started": true,
                                    "image": format!("registry.example.com/{service}:1.4.2"),
                                    "state": { "running": { "startedAt": "2026-11-01T10:00:00Z" } } }],
        },
    })
}
