//! The mesh on a test cluster: the real node agents, one per node, fed pods
//! by the real CNI plugin, and the mesh configuration file they watch.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use nix::sys::signal::Signal;

pub use crate::manifests::{service, MeshConfig, PodConfig, ServiceConfig};
use crate::{Cluster, Node, Pod, Process};

const ADMIN_PORT: u16 = 15000;
const READINESS_PORT: u16 = 15021;
const METRICS_PORT: u16 = 15020;
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Short, so a test that stops an agent does not wait long for the drain.
const DRAIN_SECONDS: &str = "5";

/// Writes `config` as the Kubernetes manifests (Pods, Services,
/// EndpointSlices) that every agent of the cluster watches.
pub fn write_config(cluster: &Cluster, config: &MeshConfig) -> anyhow::Result<()> {
    let dir = config_dir(cluster);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("mesh.yaml");
    // Written beside (under a name agents skip) and renamed, so an agent
    // never reads half a file.
    let temporary = dir.join("mesh.yaml.tmp");
    std::fs::write(&temporary, config.manifests()?)?;
    std::fs::rename(&temporary, &path).context("writing the mesh config")
}

/// A mesh config that enrolls exactly `enrolled` (each by its own label) and
/// knows `services`; every pod of the cluster is in it, as in Kubernetes.
pub fn enrolling(cluster: &Cluster, enrolled: &[&Pod], services: Vec<ServiceConfig>) -> MeshConfig {
    let pods = cluster
        .pods()
        .iter()
        .map(|pod| PodConfig::of(pod, enrolled.iter().any(|e| e.uid == pod.uid)))
        .collect();
    MeshConfig {
        pods,
        services,
        istio: vec![],
    }
}

/// The directory every agent (and the CA) reads the mesh from.
pub fn config_dir(cluster: &Cluster) -> PathBuf {
    cluster.work_dir().join("config")
}

/// Starts an agent on every node, in node order, and hands each its node's
/// pods over CNI, as a kubelet would. The mesh config must have been written.
pub fn start_agents(cluster: &Cluster) -> anyhow::Result<Vec<NodeAgent>> {
    start_agents_from(cluster, &Source::Directory)
}

/// Writes a mesh in which `enrolled` are enrolled, with no services, and
/// starts the agents, without identities.
pub fn start_enrolling(cluster: &Cluster, enrolled: &[&Pod]) -> anyhow::Result<Vec<NodeAgent>> {
    write_config(cluster, &enrolling(cluster, enrolled, vec![]))?;
    start_agents(cluster)
}

/// [`start_agents`], the agents reading the mesh from `source`.
pub fn start_agents_from(cluster: &Cluster, source: &Source) -> anyhow::Result<Vec<NodeAgent>> {
    start_agents_with(cluster, source, None)
}

/// [`start_agents_from`], the agents holding workload identities from `ca`.
pub fn start_agents_with(
    cluster: &Cluster,
    source: &Source,
    ca: Option<&crate::ca::TestCa>,
) -> anyhow::Result<Vec<NodeAgent>> {
    start_agents_with_args(cluster, source, |node| match ca {
        Some(ca) => ca.agent_args(node),
        None => Ok(Vec::new()),
    })
}

/// [`start_agents_from`], each agent also given `args(its node)`.
pub fn start_agents_with_args(
    cluster: &Cluster,
    source: &Source,
    args: impl Fn(&Node) -> anyhow::Result<Vec<std::ffi::OsString>>,
) -> anyhow::Result<Vec<NodeAgent>> {
    let agents = cluster
        .nodes()
        .iter()
        .map(|node| NodeAgent::start_with(cluster, node, source.clone(), args(node)?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for pod in cluster.pods() {
        let agent = agents
            .iter()
            .find(|agent| agent.node == pod.node)
            .context("every pod's node has an agent")?;
        agent.add_pod(cluster, pod)?;
    }
    Ok(agents)
}

/// Writes `config`, starts a CA whose certificates live `ttl_seconds`, and
/// agents holding identities from it; returns once every agent holds a
/// certificate for each service account of its node's enrolled pods.
pub fn start_secured(
    cluster: &Cluster,
    config: &MeshConfig,
    ttl_seconds: u64,
) -> anyhow::Result<(crate::ca::TestCa, Vec<NodeAgent>)> {
    start_secured_with_args(cluster, config, ttl_seconds, &[])
}

/// [`start_secured`], every agent also given `args`.
pub fn start_secured_with_args(
    cluster: &Cluster,
    config: &MeshConfig,
    ttl_seconds: u64,
    args: &[&str],
) -> anyhow::Result<(crate::ca::TestCa, Vec<NodeAgent>)> {
    start_secured_from(cluster, config, ttl_seconds, (&Source::Directory, args))
}

/// [`start_secured_with_args`] with the agents reading `source` (the CA
/// reads the manifests, written here; an API server given as `source`
/// must hold `config` too).
pub fn start_secured_from(
    cluster: &Cluster,
    config: &MeshConfig,
    ttl_seconds: u64,
    (source, args): (&Source, &[&str]),
) -> anyhow::Result<(crate::ca::TestCa, Vec<NodeAgent>)> {
    write_config(cluster, config)?;
    let ca = crate::ca::TestCa::start(cluster, ttl_seconds)?;
    let agents = start_agents_with_args(cluster, source, |node| {
        let mut all = ca.agent_args(node)?;
        all.extend(args.iter().map(std::ffi::OsString::from));
        Ok(all)
    })?;
    for agent in &agents {
        // Test pods run as their own service account: one identity each.
        let identities = config
            .pods
            .iter()
            .filter(|pod| pod.enrolled && pod.node == agent.node)
            .count();
        agent.wait_for_certificates(cluster, identities)?;
    }
    Ok((ca, agents))
}

/// Waits for `load` (an [`crate::testapp::HttpLoad::churn`]) to finish and
/// checks every one of its `requests` got 200, with the agents' output
/// when some did not.
pub fn expect_no_failed_request(
    load: &mut crate::Process,
    requests: usize,
    agents: &[NodeAgent],
) -> anyhow::Result<()> {
    load.wait_exit(Duration::from_secs(60))?;
    let summary: crate::testapp::HttpSummary = crate::testapp::last_json(&load.output())?;
    if summary.status(200) != requests {
        let outputs: Vec<String> = agents.iter().map(NodeAgent::output).collect();
        bail!(
            "{} of {requests} requests got 200: {summary:?}\n{}",
            summary.status(200),
            outputs.join("\n")
        );
    }
    Ok(())
}

/// The agent's HTTP ports a test can reach.
#[derive(Clone, Copy, Debug)]
pub enum AgentPort {
    /// 15000 on the node's loopback: config dump, metrics, readiness.
    Admin,
    /// 15020 on the node's address: metrics (and readiness).
    Metrics,
    /// 15021 on the node's address: readiness, for the kubelet's probe.
    Readiness,
}

/// A node's agent, as the test bed runs it.
pub struct NodeAgent {
    node: String,
    process: Process,
    /// Incremented on every restart. Every generation binds the same admin
    /// ports, as agent pods on the node's network do at an upgrade; each
    /// answers its own probes on its own socket.
    generation: u16,
    dir: PathBuf,
    source: Source,
    /// Further flags, e.g. access to a CA.
    extra_args: Vec<std::ffi::OsString>,
}

/// Where agents read the mesh from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The cluster's manifest directory ([`write_config`]).
    Directory,
    /// A Kubernetes API server, through this kubeconfig.
    Kubeconfig(PathBuf),
    /// For a waypoint or gateway: the mesh view its node's agent serves in
    /// its pod (the agent reading a Kubernetes API server, the pod
    /// labelled for the view).
    AgentView,
}

impl Source {
    /// The flags that give a proxy this source.
    pub fn flags(&self, cluster: &Cluster) -> [std::ffi::OsString; 2] {
        match self {
            Source::Directory => ["--config-dir".into(), config_dir(cluster).into()],
            Source::Kubeconfig(path) => ["--kubeconfig".into(), path.into()],
            Source::AgentView => [
                "--mesh-view".into(),
                format!("127.0.0.1:{}", ambit_mesh_source::view::VIEW_PORT).into(),
            ],
        }
    }
}

impl NodeAgent {
    /// Starts `ambit-node-agent` on `node`, capturing its pods' cgroup, and
    /// waits until it is ready. The mesh config must have been written.
    pub fn start(cluster: &Cluster, node: &Node) -> anyhow::Result<Self> {
        Self::start_from(cluster, node, Source::Directory)
    }

    /// Starts an agent that reads the mesh from `source`.
    pub fn start_from(cluster: &Cluster, node: &Node, source: Source) -> anyhow::Result<Self> {
        Self::start_with(cluster, node, source, Vec::new())
    }

    /// Starts an agent with further flags.
    pub fn start_with(
        cluster: &Cluster,
        node: &Node,
        source: Source,
        extra_args: Vec<std::ffi::OsString>,
    ) -> anyhow::Result<Self> {
        let dir = cluster.work_dir().join(&node.name);
        std::fs::create_dir_all(&dir)?;
        let process = spawn_agent(cluster, node, &dir, &source, &extra_args, 0)?;
        Ok(Self {
            node: node.name.clone(),
            process,
            generation: 0,
            dir,
            source,
            extra_args,
        })
    }

    /// Starts a new agent beside the running one, waits until it is ready,
    /// then stops the old one with SIGTERM and waits for it to drain.
    pub fn restart(&mut self, cluster: &Cluster) -> anyhow::Result<()> {
        let mut old = self.start_next(cluster)?;
        stop(&mut old, &self.node)
    }

    /// Kills the agent outright (SIGKILL), as a crash or the OOM killer would.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.process.signal(Signal::SIGKILL)?;
        self.process.wait_exit(Duration::from_secs(10))?;
        Ok(())
    }

    /// Starts a new agent after [`NodeAgent::kill`], as Kubernetes restarts
    /// a crashed pod, and waits until it is ready.
    pub fn start_again(&mut self, cluster: &Cluster) -> anyhow::Result<()> {
        self.start_next(cluster).map(drop)
    }

    /// Starts the next generation of the agent and waits until it is ready;
    /// returns the previous one's process.
    fn start_next(&mut self, cluster: &Cluster) -> anyhow::Result<Process> {
        let node = cluster.node(&self.node)?;
        let next = spawn_agent(
            cluster,
            node,
            &self.dir,
            &self.source,
            &self.extra_args,
            self.generation + 1,
        )?;
        self.generation += 1;
        Ok(std::mem::replace(&mut self.process, next))
    }

    /// The agent's directory: its CNI socket, state, and the record the
    /// plugin reads while the agent is down.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Stops the agent with SIGTERM and waits for it to drain and exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        stop(&mut self.process, &self.node)
    }

    pub fn output(&self) -> String {
        self.process.output()
    }

    /// The agent's CPU time so far and resident memory now.
    pub fn usage(&self) -> anyhow::Result<crate::Usage> {
        self.process.usage()
    }

    /// GET `path` on the agent's admin port (loopback of its node), or on
    /// its metrics port (reachable from the network).
    pub fn get(
        &self,
        cluster: &Cluster,
        port: AgentPort,
        path: &str,
    ) -> anyhow::Result<(u16, String)> {
        let node = cluster.node(&self.node)?;
        node.place().http_get(self.addr(cluster, port)?, path)
    }

    /// Where the agent serves `port`.
    pub fn addr(&self, cluster: &Cluster, port: AgentPort) -> anyhow::Result<SocketAddr> {
        let node = cluster.node(&self.node)?;
        let on_node = |port| SocketAddr::from((node.bridge_ip, port));
        Ok(match port {
            AgentPort::Admin => SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT)),
            AgentPort::Metrics => on_node(METRICS_PORT),
            AgentPort::Readiness => on_node(READINESS_PORT),
        })
    }

    /// Lowers (or raises) how many files the running agent may open.
    pub fn limit_open_files(&self, limit: u64) -> anyhow::Result<()> {
        self.process.limit_open_files(limit)
    }

    /// The agent's Prometheus metrics, as scraped from its node.
    /// The certificates the agent holds, as its config dump shows them:
    /// identity and expiry (Unix seconds).
    pub fn certificates(&self, cluster: &Cluster) -> anyhow::Result<Vec<(String, u64)>> {
        let (status, body) = self.get(cluster, AgentPort::Admin, "/config_dump")?;
        anyhow::ensure!(status == 200, "config dump: HTTP {status}");
        let dump: serde_json::Value = serde_json::from_str(&body)?;
        let held = dump["certificates"].as_array().cloned().unwrap_or_default();
        Ok(held
            .iter()
            .map(|c| {
                let identity = c["identity"].as_str().unwrap_or_default().to_string();
                (identity, c["notAfter"].as_u64().unwrap_or(0))
            })
            .collect())
    }

    /// Waits until the agent holds `count` certificates.
    pub fn wait_for_certificates(&self, cluster: &Cluster, count: usize) -> anyhow::Result<()> {
        let what = format!("{count} certificates on {}", self.node);
        crate::wait_for(&what, Duration::from_secs(20), || {
            Ok(self.certificates(cluster)?.len() == count)
        })
    }

    pub fn metrics(&self, cluster: &Cluster) -> anyhow::Result<String> {
        let (status, body) = self.get(cluster, AgentPort::Metrics, "/metrics")?;
        if status != 200 {
            bail!("metrics of the agent on {}: HTTP {status}", self.node);
        }
        Ok(body)
    }

    /// Connections the agent opened for its pods (`reporter="source"`):
    /// those it captured.
    pub fn opened_as_source(&self, cluster: &Cluster) -> anyhow::Result<f64> {
        Ok(sample(
            &self.metrics(cluster)?,
            "istio_tcp_connections_opened_total",
            &[("reporter", "source")],
        ))
    }

    /// Runs the real `ambit-cni` for `pod` as a container runtime would:
    /// CNI variables in the environment, the chained configuration with the
    /// previous plugin's result on stdin.
    pub fn cni(&self, cluster: &Cluster, command: &str, pod: &Pod) -> anyhow::Result<Output> {
        let sandbox = format!("{}-sandbox", pod.uid);
        self.cni_for_sandbox(cluster, command, pod, &pod.place().netns_path(), &sandbox)
    }

    /// [`NodeAgent::cni`] with the sandbox's namespace file and container
    /// ID as given, as a broken or hostile runtime might give them.
    pub fn cni_for_sandbox(
        &self,
        cluster: &Cluster,
        command: &str,
        pod: &Pod,
        netns: &std::path::Path,
        container_id: &str,
    ) -> anyhow::Result<Output> {
        // The pod's addresses, of both families, as its network plugin set
        // them up (for a namespace already gone, its IPv4 address).
        let addresses = (pod.interface_addresses()).unwrap_or_else(|_| vec![(pod.ip.into(), 24)]);
        let ips: Vec<serde_json::Value> = (addresses.iter())
            .map(|(ip, prefix)| serde_json::json!({ "address": format!("{ip}/{prefix}"), "interface": 0 }))
            .collect();
        let config = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "type": "ambit-cni",
            "agentSocket": self.dir.join("cni.sock"),
            "prevResult": {
                "cniVersion": "1.0.0",
                "interfaces": [{ "name": "eth0", "sandbox": netns }],
                "ips": ips,
            },
        });
        let env = [
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", container_id.to_string()),
            ("CNI_NETNS", netns.display().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            (
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={}",
                    pod.namespace, pod.name, pod.uid
                ),
            ),
            ("CNI_PATH", "/opt/cni/bin".to_string()),
        ];
        run_cni(cluster, &env, config.to_string().as_bytes())
    }

    /// `cni` for ADD, which must succeed.
    pub fn add_pod(&self, cluster: &Cluster, pod: &Pod) -> anyhow::Result<()> {
        let output = self.cni(cluster, "ADD", pod)?;
        if !output.status.success() {
            bail!(
                "CNI ADD of {} failed: {}{}",
                pod.name,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

/// Runs `ambit-cni` with exactly these CNI variables and this stdin.
pub fn run_cni(cluster: &Cluster, env: &[(&str, String)], stdin: &[u8]) -> anyhow::Result<Output> {
    let binary = cluster.binaries().get("ambit-cni")?;
    let mut command = Command::new(binary);
    command
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().context("starting ambit-cni")?;
    child.stdin.take().context("stdin")?.write_all(stdin)?;
    Ok(child.wait_with_output()?)
}

fn stop(agent: &mut Process, node: &str) -> anyhow::Result<()> {
    agent.signal(Signal::SIGTERM)?;
    let status = agent.wait_exit(Duration::from_secs(30))?;
    if !status.success() {
        bail!(
            "the agent on {node} exited with {status}:\n{}",
            agent.output()
        );
    }
    Ok(())
}

fn spawn_agent(
    cluster: &Cluster,
    node: &Node,
    dir: &std::path::Path,
    source: &Source,
    extra_args: &[std::ffi::OsString],
    generation: u16,
) -> anyhow::Result<Process> {
    let binary = cluster.binaries().get("ambit-node-agent")?;
    let bpf_object = cluster.binaries().bpf_object()?;
    let pins = PathBuf::from("/sys/fs/bpf").join(format!("{}-{}", cluster.run_name(), node.name));
    let readiness = SocketAddr::from((node.bridge_ip, READINESS_PORT));
    let probe_socket = dir.join(format!("probe-{generation}.sock"));
    let [source_flag, source_value] = source.flags(cluster);
    let args: Vec<std::ffi::OsString> = [
        "--capture-cgroup".into(),
        node.pods_cgroup().into(),
        "--bpf-object".into(),
        bpf_object.into(),
        "--bpf-pin-dir".into(),
        pins.into(),
        "--cni-socket".into(),
        dir.join("cni.sock").into(),
        "--state-dir".into(),
        dir.join("state").into(),
        source_flag,
        source_value,
        "--admin-addr".into(),
        SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT))
            .to_string()
            .into(),
        "--readiness-addr".into(),
        readiness.to_string().into(),
        "--metrics-addr".into(),
        SocketAddr::from((node.bridge_ip, METRICS_PORT))
            .to_string()
            .into(),
        "--probe-socket".into(),
        probe_socket.clone().into(),
        "--drain-seconds".into(),
        DRAIN_SECONDS.into(),
    ]
    .into_iter()
    .chain(extra_args.iter().cloned())
    .collect();
    let mut agent = cluster.spawn(
        node.place(),
        &format!("node-agent-{generation}"),
        &binary,
        args,
    )?;
    // Its own probe socket: the readiness port may answer for the agent
    // it replaces.
    let what = format!("the agent on {}", node.name);
    let deadline = Instant::now() + START_TIMEOUT;
    while let Err(why) = ambit_admin::probe::ask(&probe_socket, ambit_admin::READY_PATH) {
        agent.check_running()?;
        if Instant::now() > deadline {
            bail!(
                "{what} was not ready after {START_TIMEOUT:?} ({why}):\n{}",
                agent.output()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Serving its ports too (beside the old one's, if any).
    let node_place = node.place();
    ensure!(
        matches!(
            node_place.http_get(readiness, ambit_admin::READY_PATH),
            Ok((200, _))
        ),
        "{what} is ready but its readiness port {readiness} does not say so"
    );
    Ok(agent)
}

/// Waits until `process` answers its readiness probe at `addr` from `place`.
pub(crate) fn wait_ready(
    process: &mut Process,
    place: &crate::Place,
    addr: SocketAddr,
    what: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        process.check_running()?;
        if let Ok((200, _)) = place.http_get(addr, "/healthz/ready") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{what} was not ready after {START_TIMEOUT:?}:\n{}",
                process.output()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of one sample in Prometheus text, found by metric name and a
/// set of `label="value"` pairs it must carry; 0 when absent.
pub fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |total, value| total + value)
}

/// Every sample of the metric `name` in Prometheus text: its labels, in
/// order, and its value.
pub fn samples(metrics: &str, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix('{')?;
            let (mut labels_text, value) = rest.rsplit_once("} ")?;
            let mut labels = Vec::new();
            while let Some((key, after)) = labels_text.split_once("=\"") {
                let (value, after) = after.split_once('"')?;
                labels.push((key.to_string(), value.to_string()));
                labels_text = after.strip_prefix(',').unwrap_or(after);
            }
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_with_their_labels() {
        let metrics = "# TYPE istio_tcp_connections_opened counter\n\
                       istio_tcp_connections_opened_total{reporter=\"source\",source_principal=\"spiffe://td/ns/a/sa/b\"} 2\n\
                       istio_tcp_connections_closed_total{reporter=\"source\"} 1\n";
        let read = samples(metrics, "istio_tcp_connections_opened_total");
        let labels = vec![
            ("reporter".to_string(), "source".to_string()),
            (
                "source_principal".to_string(),
                "spiffe://td/ns/a/sa/b".to_string(),
            ),
        ];
        assert_eq!(read, vec![(labels, 2.0)]);
    }

    #[test]
    fn samples_are_summed_over_matching_label_sets() {
        let metrics = "istio_tcp_connections_opened_total{reporter=\"source\",destination_service=\"a\"} 2\n\
                       istio_tcp_connections_opened_total{reporter=\"source\",destination_service=\"b\"} 3\n\
                       istio_tcp_connections_opened_total{reporter=\"destination\",destination_service=\"a\"} 5\n";
        let name = "istio_tcp_connections_opened_total";
        assert_eq!(sample(metrics, name, &[("reporter", "source")]), 5.0);
        assert_eq!(sample(metrics, name, &[("destination_service", "a")]), 7.0);
        assert_eq!(sample(metrics, name, &[("reporter", "nobody")]), 0.0);
        assert_eq!(sample(metrics, "istio_tcp", &[]), 0.0);
    }
}
