//! The namespace cluster: nodes joined by an underlay, pods on each node.
//!
//! ```text
//!  underlay netns: bridge br0, 172.18.0.0/24
//!    ├─ node-1 netns: eth0 172.18.0.11, bridge cbr0 10.244.1.1/24, forwarding
//!    │     ├─ pod netns: eth0 10.244.1.2, default via 10.244.1.1
//!    │     └─ …
//!    └─ node-2 netns: eth0 172.18.0.12, bridge cbr0 10.244.2.1/24
//! ```
//!
//! A test may make it dual-stack ([`Cluster::add_ipv6`]): the same shape in
//! IPv6, `fd00:18::/64` on the underlay and `fd00:244:N::/64` on node N.
//!
//! cgroups: `<cgroup2>/<run>/<node>/system` holds what runs on a node,
//! `<cgroup2>/<run>/<node>/pods/<pod>` what runs in a pod, so a program
//! attached to `<node>/pods` sees exactly that node's pods.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use nix::sched::{setns, CloneFlags};

use crate::host::{self, run as sh};
use crate::process::{Binaries, Process};

/// Runs of this process still standing, torn down on Ctrl-C or SIGTERM.
static LIVE_RUNS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
static NEXT_RUN: AtomicU32 = AtomicU32::new(0);
static SIGNAL_TEARDOWN: Once = Once::new();

/// Exit status of a run interrupted by a signal (128 + SIGINT).
const INTERRUPTED: i32 = 130;

/// A network namespace plus a cgroup: where a process runs.
#[derive(Clone, Debug)]
pub struct Place {
    name: String,
    netns: String,
    cgroup: PathBuf,
}

impl Place {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's file, e.g. for `setns` or for reading its cookie.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// A command that runs `program` in this place: the child joins the
    /// cgroup and enters the network namespace before it execs.
    pub fn command(&self, program: impl AsRef<OsStr>) -> anyhow::Result<Command> {
        let netns = File::open(self.netns_path())
            .with_context(|| format!("opening the network namespace of {}", self.name))?;
        let mut procs = OpenOptions::new()
            .write(true)
            .open(self.cgroup.join("cgroup.procs"))
            .with_context(|| format!("opening the cgroup of {}", self.name))?;
        let mut command = Command::new(program);
        // SAFETY: between fork and exec the closure only makes two system
        // calls (write, setns) on descriptors opened beforehand; it neither
        // allocates nor takes locks.
        unsafe {
            command.pre_exec(move || {
                // "0" moves the writing process, i.e. the child itself.
                procs.write_all(b"0")?;
                setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)?;
                Ok(())
            });
        }
        Ok(command)
    }

    /// Runs `nft` in this place's network namespace, `input` on its
    /// standard input.
    pub fn nft(&self, args: &[&str], input: Option<&str>) -> anyhow::Result<()> {
        let mut child = self
            .command("nft")?
            .args(args)
            .stdin(Stdio::piped())
            .spawn()
            .context("running nft (Debian package nftables; `cargo xtask setup` installs it)")?;
        let mut stdin = child.stdin.take().context("nft's standard input")?;
        stdin.write_all(input.unwrap_or_default().as_bytes())?;
        drop(stdin);
        let status = child.wait()?;
        anyhow::ensure!(status.success(), "nft {args:?} in {}: {status}", self.name);
        Ok(())
    }

    /// Runs `f` on a thread inside this place's network namespace.
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let netns = File::open(self.netns_path())
            .with_context(|| format!("opening the network namespace of {}", self.name))?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    setns(netns.as_fd(), CloneFlags::CLONE_NEWNET).with_context(|| {
                        format!("entering the network namespace of {}", self.name)
                    })?;
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("a thread in {} panicked", self.name))?
        })
    }

    /// Opens `count` TCP connections to `addr` from this place and sends
    /// nothing: the ones that connected, as a careless or hostile client
    /// holds them.
    pub fn idle_connections(
        &self,
        addr: SocketAddr,
        count: usize,
    ) -> anyhow::Result<Vec<TcpStream>> {
        self.in_netns(|| {
            (0..count)
                .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
                .collect()
        })
    }

    /// A plain HTTP/1.0 GET from this place: the status code and the body.
    pub fn http_get(&self, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
        let response = self
            .in_netns(|| -> std::io::Result<String> {
                use std::io::Read;
                let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
                let mut response = String::new();
                stream.read_to_string(&mut response)?;
                Ok(response)
            })?
            .with_context(|| format!("GET http://{addr}{path} from {}", self.name))?;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("GET http://{addr}{path}: no status in {head:?}"))?;
        Ok((status, body.to_string()))
    }

    /// Waits until something accepts TCP connections at `addr` as seen from
    /// this place.
    pub fn wait_for_listener(&self, addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        self.in_netns(|| loop {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(_) => return Ok(()),
                Err(error) if Instant::now() > deadline => {
                    return Err(anyhow::anyhow!(
                        "nothing listens at {addr} as seen from {} after {timeout:?}: {error}",
                        self.name
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        })?
    }
}

/// A node: a namespace on the underlay that routes for its pods.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    /// The node's address on its pods' bridge (their gateway).
    pub bridge_ip: Ipv4Addr,
    /// Number of this node, from 1.
    index: u8,
    place: Place,
    pods_cgroup: PathBuf,
}

impl Node {
    /// Where node-level processes (the node agent) run.
    pub fn place(&self) -> &Place {
        &self.place
    }

    /// The cgroup that holds this node's pods, and only them.
    pub fn pods_cgroup(&self) -> &Path {
        &self.pods_cgroup
    }

    fn pod_ip(&self, slot: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.index, slot + 2)
    }

    /// Once [`Cluster::add_ipv6`] has run: the node's IPv6 address on its
    /// pods' bridge (their gateway).
    pub fn bridge_ipv6(&self) -> Ipv6Addr {
        ipv6_twin(self.bridge_ip)
    }
}

/// The IPv6 address of a dual-stack cluster that stands beside the IPv4
/// address `10.244.N.x` (of a pod or a node's bridge): `fd00:244:N::x`.
pub(crate) fn ipv6_twin(ip: Ipv4Addr) -> Ipv6Addr {
    let [_, _, node, host] = ip.octets();
    Ipv6Addr::new(0xfd00, 0x244, node.into(), 0, 0, 0, 0, host.into())
}

/// A node's IPv6 address on the underlay, beside its `172.18.0.x`.
fn underlay_ipv6(node: &Node) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfd00,
        0x18,
        0,
        0,
        0,
        0,
        0,
        node.underlay_ip.octets()[3].into(),
    )
}

/// A pod: its own namespace with one address, and its own cgroup.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    /// Its Kubernetes namespace: `default` unless the builder said otherwise.
    pub namespace: String,
    /// Its Kubernetes UID, unique to the run.
    pub uid: String,
    pub node: String,
    pub ip: Ipv4Addr,
    place: Place,
}

impl Pod {
    pub fn place(&self) -> &Place {
        &self.place
    }

    /// Once [`Cluster::add_ipv6`] has run: the pod's IPv6 address.
    pub fn ipv6(&self) -> Ipv6Addr {
        ipv6_twin(self.ip)
    }

    /// The addresses its interface has now, with their prefix lengths, as
    /// a CNI result lists them (link-local ones left out).
    pub fn interface_addresses(&self) -> anyhow::Result<Vec<(IpAddr, u8)>> {
        let netns = &self.place.netns;
        let output = Command::new("ip")
            .args(["-n", netns, "-j", "addr", "show", "dev", "eth0"])
            .output()
            .context("running ip")?;
        ensure!(output.status.success(), "`ip addr show` in {netns} failed");
        let links: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        let addresses = links[0]["addr_info"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(addresses
            .iter()
            .filter(|address| address["scope"] == "global")
            .filter_map(|address| {
                let ip = address["local"].as_str()?.parse().ok()?;
                Some((ip, u8::try_from(address["prefixlen"].as_u64()?).ok()?))
            })
            .collect())
    }
}

/// Describes a cluster before it is built.
#[derive(Default)]
pub struct ClusterBuilder {
    nodes: Vec<Vec<String>>,
    binaries: Option<Binaries>,
    /// Pods in a Kubernetes namespace other than `default`, by name.
    namespaces: BTreeMap<String, String>,
}

impl ClusterBuilder {
    /// Runs these binaries instead of those beside the running executable.
    pub fn binaries(mut self, binaries: Binaries) -> Self {
        self.binaries = Some(binaries);
        self
    }

    /// Adds a node with the named pods.
    pub fn node(mut self, pods: &[&str]) -> Self {
        self.nodes
            .push(pods.iter().map(|pod| pod.to_string()).collect());
        self
    }

    /// Puts the pod `pod` in the Kubernetes namespace `namespace`.
    pub fn namespace(mut self, pod: &str, namespace: &str) -> Self {
        self.namespaces.insert(pod.into(), namespace.into());
        self
    }

    pub fn build(self) -> anyhow::Result<Cluster> {
        self.validate()?;
        host::require_root()?;
        SIGNAL_TEARDOWN.call_once(install_signal_teardown);
        host::sweep_leftovers().context("removing leftovers of earlier runs")?;

        let run = format!(
            "{}{}-{}",
            host::PREFIX,
            std::process::id(),
            NEXT_RUN.fetch_add(1, Ordering::Relaxed)
        );
        live_runs().insert(run.clone());
        // From here on, dropping `cluster` (also on an error) tears down.
        let mut cluster = Cluster {
            cgroup: host::cgroup2_root()?.join(&run),
            logs: std::env::temp_dir().join(&run),
            binaries: match self.binaries {
                Some(binaries) => binaries,
                None => Binaries::locate()?,
            },
            run,
            nodes: Vec::new(),
            pods: Vec::new(),
        };
        std::fs::create_dir_all(&cluster.logs).context("creating the log directory")?;
        cluster.build_underlay()?;
        for (i, pods) in self.nodes.iter().enumerate() {
            let index = u8::try_from(i + 1)?;
            cluster.add_node(index)?;
            for (slot, pod) in pods.iter().enumerate() {
                let namespace = self.namespaces.get(pod).map_or("default", String::as_str);
                cluster.add_pod(index, u8::try_from(slot)?, pod, namespace)?;
            }
        }
        cluster.route_between_nodes()?;
        Ok(cluster)
    }

    fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            (1..=250).contains(&self.nodes.len()),
            "a cluster has 1 to 250 nodes, not {}",
            self.nodes.len()
        );
        let mut seen = BTreeSet::new();
        for pod in self.nodes.iter().flatten() {
            ensure!(
                !pod.is_empty()
                    && pod.len() <= 40
                    && pod
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !pod.starts_with("node-")
                    && pod != "underlay",
                "pod name {pod:?}: use 1 to 40 of a-z, 0-9 and '-', not starting with \"node-\""
            );
            ensure!(seen.insert(pod), "pod name {pod:?} is used twice");
        }
        for pod in self.namespaces.keys() {
            ensure!(
                seen.contains(pod),
                "a namespace is given for {pod:?}, which no node has"
            );
        }
        ensure!(
            self.nodes.iter().all(|pods| pods.len() <= 250),
            "a node has at most 250 pods"
        );
        Ok(())
    }
}

fn live_runs() -> std::sync::MutexGuard<'static, BTreeSet<String>> {
    LIVE_RUNS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn install_signal_teardown() {
    let installed = ctrlc::set_handler(|| {
        for run in std::mem::take(&mut *live_runs()) {
            if let Err(error) = host::remove_run(&run) {
                eprintln!("tearing down {run}: {error:#}");
            }
        }
        std::process::exit(INTERRUPTED);
    });
    if let Err(error) = installed {
        // Another handler owns the signals; the start-up sweep still cleans up.
        eprintln!("test bed: no teardown on Ctrl-C: {error}");
    }
}

/// A running cluster. Dropping it kills every process in it and removes its
/// namespaces and cgroups.
pub struct Cluster {
    run: String,
    cgroup: PathBuf,
    logs: PathBuf,
    binaries: Binaries,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Two nodes with the named pods: most tests call from one node to the
    /// other.
    pub fn two_nodes(first: &[&str], second: &[&str]) -> anyhow::Result<Cluster> {
        Self::builder().node(first).node(second).build()
    }

    /// This run's name; every namespace of it starts with it.
    pub fn run_name(&self) -> &str {
        &self.run
    }

    /// A directory of this run's own (logs, sockets, state); removed with it.
    pub fn work_dir(&self) -> &Path {
        &self.logs
    }

    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Makes the cluster dual-stack: every node and pod gets an IPv6 address
    /// beside its IPv4 one ([`Pod::ipv6`], [`Node::bridge_ipv6`]), routed as
    /// IPv4 is. Before the pods join the mesh, as a CNI sets addresses up
    /// (an agent reads a pod's IPv6 addresses when it enrolls it, and its
    /// node's when it starts).
    pub fn add_ipv6(&self) -> anyhow::Result<()> {
        let add = |netns: &str, address: Ipv6Addr, device: &str| {
            let address = format!("{address}/64");
            ip(
                netns,
                &["-6", "addr", "add", &address, "dev", device, "nodad"],
            )
        };
        for node in &self.nodes {
            let netns = &node.place.netns;
            add(netns, node.bridge_ipv6(), "cbr0")?;
            add(netns, underlay_ipv6(node), "eth0")?;
            for other in self.nodes.iter().filter(|other| other.index != node.index) {
                let pods = format!("{}/64", ipv6_twin(Ipv4Addr::new(10, 244, other.index, 0)));
                let via = underlay_ipv6(other).to_string();
                ip(netns, &["-6", "route", "add", &pods, "via", &via])?;
            }
            sh(
                "ip",
                &[
                    "netns",
                    "exec",
                    netns,
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.forwarding=1",
                ],
            )?;
        }
        for pod in &self.pods {
            let node = self.node(&pod.node)?;
            add(&pod.place.netns, pod.ipv6(), "eth0")?;
            let gateway = node.bridge_ipv6().to_string();
            ip(
                &pod.place.netns,
                &["-6", "route", "add", "default", "via", &gateway],
            )?;
        }
        Ok(())
    }

    /// The node named `name` (`node-1`, `node-2`, …).
    pub fn node(&self, name: &str) -> anyhow::Result<&Node> {
        self.nodes
            .iter()
            .find(|node| node.name == name)
            .with_context(|| format!("no node {name} in the cluster"))
    }

    pub fn pod(&self, name: &str) -> anyhow::Result<&Pod> {
        self.pods
            .iter()
            .find(|pod| pod.name == name)
            .with_context(|| format!("no pod {name} in the cluster"))
    }

    /// The pods named `names`, in that order.
    pub fn pods_named<const N: usize>(&self, names: [&str; N]) -> anyhow::Result<[&Pod; N]> {
        let pods = names
            .iter()
            .map(|name| self.pod(name))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(pods.try_into().expect("one pod per name"))
    }

    /// Starts a long-running process in `place`; it is killed when the
    /// returned handle or the cluster is dropped.
    pub fn spawn<I, S>(
        &self,
        place: &Place,
        label: &str,
        program: &Path,
        args: I,
    ) -> anyhow::Result<Process>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = place.command(program)?;
        command.args(args);
        let name = format!("{}/{label}", place.name);
        // A log of its own, also when the same program runs twice at once.
        let log = (0..)
            .map(|n| match n {
                0 => self.logs.join(format!("{}-{label}.log", place.name)),
                n => self.logs.join(format!("{}-{label}-{n}.log", place.name)),
            })
            .find(|path| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .is_ok()
            })
            .context("a log file")?;
        Process::spawn(&name, command, &log)
    }

    /// Runs a command in `place` to completion and returns its output; fails
    /// if it runs longer than `timeout`.
    pub fn run<I, S>(
        &self,
        place: &Place,
        program: &Path,
        args: I,
        timeout: Duration,
    ) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = place.command(program)?;
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown = format!("{command:?} in {}", place.name);
        let child = command
            .spawn()
            .with_context(|| format!("starting {shown}"))?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        let (done, outcome) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(child.wait_with_output()));
        match outcome.recv_timeout(timeout) {
            Ok(output) => output.with_context(|| format!("waiting for {shown}")),
            Err(_) => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                bail!("{shown} did not finish within {timeout:?}")
            }
        }
    }

    /// Starts capturing every frame on the underlay, between the nodes.
    pub fn sniff_underlay(&self) -> anyhow::Result<crate::sniff::Sniffer> {
        let underlay = Place {
            name: "underlay".into(),
            netns: self.netns_name("underlay"),
            cgroup: PathBuf::new(),
        };
        crate::sniff::Sniffer::start(&underlay)
    }

    fn netns_name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.run)
    }

    fn build_underlay(&self) -> anyhow::Result<()> {
        let underlay = self.netns_name("underlay");
        sh("ip", &["netns", "add", &underlay])?;
        ip(&underlay, &["link", "set", "lo", "up"])?;
        ip(&underlay, &["link", "add", "br0", "type", "bridge"])?;
        ip(&underlay, &["link", "set", "br0", "up"])
    }

    fn add_node(&mut self, index: u8) -> anyhow::Result<()> {
        let name = format!("node-{index}");
        let netns = self.netns_name(&name);
        let underlay = self.netns_name("underlay");
        let underlay_ip = Ipv4Addr::new(172, 18, 0, 10 + index);
        let bridge_ip = Ipv4Addr::new(10, 244, index, 1);

        sh("ip", &["netns", "add", &netns])?;
        ip(&netns, &["link", "set", "lo", "up"])?;
        ip(
            &underlay,
            &[
                "link", "add", &name, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ],
        )?;
        ip(&underlay, &["link", "set", &name, "master", "br0", "up"])?;
        ip(
            &netns,
            &["addr", "add", &format!("{underlay_ip}/24"), "dev", "eth0"],
        )?;
        ip(&netns, &["link", "set", "eth0", "up"])?;
        ip(&netns, &["link", "add", "cbr0", "type", "bridge"])?;
        ip(
            &netns,
            &["addr", "add", &format!("{bridge_ip}/24"), "dev", "cbr0"],
        )?;
        ip(&netns, &["link", "set", "cbr0", "up"])?;
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &netns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )?;

        let cgroup = self.cgroup.join(&name);
        let system = cgroup.join("system");
        let pods_cgroup = cgroup.join("pods");
        for dir in [&system, &pods_cgroup] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating cgroup {}", dir.display()))?;
        }
        self.nodes.push(Node {
            place: Place {
                name: name.clone(),
                netns,
                cgroup: system,
            },
            name,
            underlay_ip,
            bridge_ip,
            index,
            pods_cgroup,
        });
        Ok(())
    }

    fn add_pod(
        &mut self,
        node_index: u8,
        slot: u8,
        name: &str,
        namespace: &str,
    ) -> anyhow::Result<()> {
        let node = &self.nodes[usize::from(node_index - 1)];
        let netns = self.netns_name(name);
        let pod_ip = node.pod_ip(slot);
        let veth = format!("veth{slot}");

        sh("ip", &["netns", "add", &netns])?;
        ip(&netns, &["link", "set", "lo", "up"])?;
        ip(
            &node.place.netns,
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ],
        )?;
        ip(
            &node.place.netns,
            &["link", "set", &veth, "master", "cbr0", "up"],
        )?;
        ip(
            &netns,
            &["addr", "add", &format!("{pod_ip}/24"), "dev", "eth0"],
        )?;
        ip(&netns, &["link", "set", "eth0", "up"])?;
        ip(
            &netns,
            &[
                "route",
                "add",
                "default",
                "via",
                &node.bridge_ip.to_string(),
            ],
        )?;

        let cgroup = node.pods_cgroup.join(name);
        std::fs::create_dir_all(&cgroup)
            .with_context(|| format!("creating cgroup {}", cgroup.display()))?;
        let pod = Pod {
            name: name.to_string(),
            namespace: namespace.to_string(),
            uid: format!("{}-{name}", self.run),
            node: node.name.clone(),
            ip: pod_ip,
            place: Place {
                name: name.to_string(),
                netns,
                cgroup,
            },
        };
        self.pods.push(pod);
        Ok(())
    }

    fn route_between_nodes(&self) -> anyhow::Result<()> {
        for node in &self.nodes {
            for other in self.nodes.iter().filter(|other| other.index != node.index) {
                let cidr = format!("10.244.{}.0/24", other.index);
                ip(
                    &node.place.netns,
                    &["route", "add", &cidr, "via", &other.underlay_ip.to_string()],
                )?;
            }
        }
        Ok(())
    }
}

/// Warnings and errors shown per log when a test fails.
const LOG_LINES_ON_FAILURE: usize = 20;

impl Cluster {
    /// The last warnings and errors of each process's log, for a failed
    /// test's output: the logs go with the cluster.
    fn print_log_warnings(&self) {
        let Ok(entries) = std::fs::read_dir(&self.logs) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(log) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let warnings: Vec<&str> = log
                .lines()
                .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
                .collect();
            if warnings.is_empty() {
                continue;
            }
            let shown = &warnings[warnings.len().saturating_sub(LOG_LINES_ON_FAILURE)..];
            eprintln!(
                "--- {}: the last {} of {} warnings and errors",
                entry.file_name().to_string_lossy(),
                shown.len(),
                warnings.len()
            );
            for line in shown {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_log_warnings();
        }
        live_runs().remove(&self.run);
        if let Err(error) = host::remove_run(&self.run) {
            eprintln!("tearing down {}: {error:#}", self.run);
        }
    }
}

/// `ip -n NETNS ARGS…`
fn ip(netns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["-n", netns];
    full.extend_from_slice(args);
    sh("ip", &full)
}
