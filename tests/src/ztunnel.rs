//! ztunnel, Istio ambient's node proxy, on the test cluster: the peer the
//! benchmarks put beside Ambit's agents (`cargo xtask bench --ztunnel
//! PATH`). The suite never builds nor fetches it: the caller gives a binary
//! built from istio/ztunnel.
//!
//! Each ztunnel runs in dedicated mode inside the one pod it proxies for,
//! as Istio runs it without its CNI: its workloads from a local file (no
//! istiod), its certificate from `ambit-ca` over Istio's gRPC API with the
//! node's bootstrap token (the CA checks the pod runs on that node), and
//! the pod's outbound TCP sent to it by an nftables redirect in the pod's
//! own network namespace, which is how Istio captures for ztunnel.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use crate::ca::TestCa;
use crate::{Cluster, Pod, Process, Usage};

const HBONE_PORT: u16 = 15008;
const OUTBOUND_PORT: u16 = 15001;
const READINESS: u16 = 15021;
const METRICS: u16 = 15020;
const CA_PORT: u16 = 15012;
const START_TIMEOUT: Duration = Duration::from_secs(30);
const TABLE: &str = "ambit_test_ztunnel";

pub struct Ztunnel {
    process: Process,
}

impl Ztunnel {
    /// Starts `binary` in `pod` as its proxy, knowing `workloads` (pods
    /// of the run, each reached over HBONE at its own proxy: a ztunnel or
    /// Ambit's agent), its identity from `ca`, `settings` added to its
    /// environment; returns once ztunnel is ready and the pod's outbound
    /// connections go to it.
    pub fn start(
        cluster: &Cluster,
        binary: &Path,
        pod: &Pod,
        ca: &TestCa,
        workloads: &[&Pod],
        settings: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let dir = cluster.work_dir().join(format!("ztunnel-{}", pod.name));
        std::fs::create_dir_all(&dir)?;
        let local_config = dir.join("workloads.yaml");
        std::fs::write(&local_config, serde_json::to_vec(&local_xds(workloads))?)?;
        let token = dir.join("token");
        std::fs::write(&token, ca.token(&pod.node))?;
        // Test pods run as the service account named after them.
        let env = [
            ("PROXY_MODE", "dedicated".into()),
            (
                "PROXY_WORKLOAD_INFO",
                format!("{}/{}/{}", pod.namespace, pod.name, pod.name).into(),
            ),
            ("NODE_NAME", pod.node.clone().into()),
            ("LOCAL_XDS_PATH", local_config.into_os_string()),
            ("XDS_ADDRESS", OsString::new()),
            ("CA_ADDRESS", format!("https://{}", ca.addr).into()),
            ("CA_ROOT_CA", ca.root_pem_file().into_os_string()),
            // Dialled by address, the CA is checked by its Service's name.
            ("ALT_CA_HOSTNAME", "ambit-ca.ambit-system.svc".into()),
            ("AUTH_TOKEN", token.into_os_string()),
            ("ENABLE_ORIG_SRC", "false".into()),
            ("RUST_LOG", "warn".into()),
        ];
        let settings = settings
            .iter()
            .map(|&(name, value)| (name, OsString::from(value)));
        let args = env
            .into_iter()
            .chain(settings)
            .map(|(name, value)| {
                let mut arg = OsString::from(format!("{name}="));
                arg.push(value);
                arg
            })
            .chain([binary.as_os_str().to_owned()]);
        let mut process = cluster.spawn(pod.place(), "ztunnel", Path::new("/usr/bin/env"), args)?;
        let deadline = Instant::now() + START_TIMEOUT;
        let readiness = SocketAddr::from(([127, 0, 0, 1], READINESS));
        while !matches!(
            pod.place().http_get(readiness, "/healthz/ready"),
            Ok((200, _))
        ) {
            process.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "ztunnel in {} was not ready after {START_TIMEOUT:?}:\n{}",
                    pod.name,
                    process.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        capture_outbound(pod)?;
        Ok(Self { process })
    }

    pub fn usage(&self) -> anyhow::Result<Usage> {
        self.process.usage()
    }

    pub fn output(&self) -> String {
        self.process.output()
    }

    /// Its metrics (Istio's), from inside `pod`, the one it proxies for.
    pub fn metrics(&self, pod: &Pod) -> anyhow::Result<String> {
        let (status, body) = pod
            .place()
            .http_get(SocketAddr::from(([127, 0, 0, 1], METRICS)), "/metrics")?;
        anyhow::ensure!(status == 200, "ztunnel's metrics: {status} {body}");
        Ok(body)
    }
}

/// ztunnel's local configuration: each pod a workload that speaks HBONE.
fn local_xds(workloads: &[&Pod]) -> serde_json::Value {
    let workloads: Vec<_> = workloads
        .iter()
        .map(|pod| {
            json!({
                "uid": format!("Kubernetes//Pod/{}/{}", pod.namespace, pod.name),
                "name": pod.name,
                "namespace": pod.namespace,
                "serviceAccount": pod.name,
                "trustDomain": "cluster.local",
                "workloadIps": [pod.ip.to_string()],
                "protocol": "HBONE",
                "node": pod.node,
                "network": "",
                "services": {},
            })
        })
        .collect();
    json!({ "workloads": workloads, "policies": [], "services": [] })
}

/// Sends the pod's outbound TCP to ztunnel, but for the pod's own
/// addresses and ztunnel's own connections: HBONE to other pods and its
/// calls to the CA.
fn capture_outbound(pod: &Pod) -> anyhow::Result<()> {
    let rules = format!(
        "table ip {TABLE} {{\n\
         chain output {{\n\
         type nat hook output priority -100;\n\
         fib daddr type local return\n\
         tcp dport {{ {HBONE_PORT}, {CA_PORT} }} return\n\
         meta l4proto tcp redirect to :{OUTBOUND_PORT}\n\
         }}\n\
         }}\n"
    );
    pod.place()
        .nft(&["-f", "-"], Some(&rules))
        .context("redirecting the pod's outbound TCP to ztunnel")
}
