//! `cargo xtask bench`: the mesh model at scale (memory, change propagation;
//! `lib/mesh-source/benches/scale.rs`), then the data path's cost, measured
//! on the namespace cluster with release builds, next to the same traffic
//! with no mesh, and an agent's memory with many enrolled pods. Figures are
//! reported, not asserted.

use std::fmt::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use ambit_testbed::bare_relay;
use ambit_testbed::ca::TestCa;
use ambit_testbed::envoy::{self, EnvoyWaypoint};
use ambit_testbed::mesh::{self, sample, NodeAgent};
use ambit_testbed::testapp::{
    self, ClientTls, Connections, HttpLoad, LatencySummary, Server, TransferSummary,
};
use ambit_testbed::waypoint::Waypoint;
use ambit_testbed::ztunnel::Ztunnel;
use ambit_testbed::{machine_busy_seconds, Binaries, Cluster, Pod, Usage};
use anyhow::{ensure, Context};
use serde::Serialize;

use crate::Workspace;

/// Bytes moved for the single-stream throughput figure.
const TRANSFER_BYTES: u64 = 2 << 30;
const GIB: f64 = (1u64 << 30) as f64;
const RATE: u32 = 1000;
const SECONDS: u32 = 10;
const CONNECTIONS: u32 = 8;
/// Requests per second when each opens a new connection.
const NEW_CONNECTION_RATE: u32 = 500;
const RESPONSE_BYTES: usize = 1024;
/// Pods on one agent for the memory figure.
const ENROLLED_PODS: usize = 100;
/// Requests per second asked for the saturation figure: more than any
/// path here carries, so the connections send back to back.
const SATURATING_RATE: u32 = 40_000;
const SATURATION_SECONDS: u32 = 1;
/// The Services bound to the waypoint: HTTP to the server, and its sink.
const WAYPOINT_HTTP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
const WAYPOINT_SINK_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 51);
const WAYPOINT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 52);
/// The same two Services again, bound to Envoy as their waypoint.
const ENVOY_HTTP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);
const ENVOY_SINK_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 54);
const ENVOY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 55);
const L4_PATH: &str = "agents, mTLS over HBONE";
const WAYPOINT_PATH: &str = "agents and waypoint, mTLS over HBONE, HTTP routed";
const ENVOY_PATH: &str =
    "agents and Envoy as the waypoint (Istio's data plane), mTLS over HBONE, HTTP routed";
const ZTUNNEL_PATH: &str = "ztunnels (Istio ambient's node proxy), mTLS over HBONE";

/// A path's figures: medians of its rounds, beside each round's own.
#[derive(Serialize)]
struct PathReport {
    median: Scenario,
    /// Against no mesh in the same round (the machine's speed drifts
    /// between rounds, so a path is compared with the baseline measured
    /// just before it), the median over the rounds.
    against_no_mesh: AgainstNoMesh,
    rounds: Vec<Scenario>,
}

#[derive(Serialize)]
struct AgainstNoMesh {
    throughput_percent: f64,
    kept_alive_p50_added_us: i64,
    kept_alive_p99_added_us: i64,
    new_connections_p99_added_us: i64,
}

#[derive(Serialize)]
struct Scenario {
    name: &'static str,
    throughput_gbit_per_s: f64,
    /// The whole machine's busy CPU time per GiB of the single stream: what
    /// the path costs per byte, steadier than the throughput, which also
    /// depends on how the scheduler overlaps the stages on few cores.
    transfer_machine_cpu_seconds_per_gib: f64,
    /// Each node proxy's own CPU time per GiB of the single stream, the
    /// sending side's first, where they are in the path.
    transfer_proxy_cpu_seconds_per_gib: Option<Vec<f64>>,
    /// Requests on kept-alive connections.
    kept_alive: Timed,
    /// A new connection per request: its setup is in the latency.
    new_connections: Timed,
    /// Requests per second over kept-alive connections, sent back to back.
    saturation_requests_per_s: f64,
}

/// One latency run.
#[derive(Serialize)]
struct Timed {
    latency: LatencySummary,
    /// The whole machine's busy CPU time per 1000 requests of the run:
    /// client, server, agents and the kernel's work for them (softirqs,
    /// kernel threads), which the agents' own CPU time does not show.
    machine_cpu_seconds_per_1000_requests: f64,
    /// The agents' own cost, where they are in the path.
    agents: Option<AgentCost>,
    /// The waypoint's own cost, where it is in the path.
    waypoint: Option<AgentCost>,
}

/// A proxy's cost: the agents' (each) or the waypoint's.
#[derive(Serialize, Clone, Copy, Default)]
struct AgentCost {
    /// CPU time per 1000 requests of the run, per process (mean).
    cpu_seconds_per_1000_requests: f64,
    /// Largest resident memory of a process after the run.
    max_rss_mib: f64,
}

/// Where a path's traffic goes: the server's HTTP port and its sink, by
/// pod address or by a Service's.
#[derive(Clone, Copy)]
struct Target {
    http: SocketAddr,
    sink: SocketAddr,
}

impl Target {
    fn pod(server: &Pod) -> Self {
        Self {
            http: SocketAddr::from((server.ip, 8080)),
            sink: SocketAddr::from((server.ip, 9100)),
        }
    }
}

/// The proxies a path goes through, whose cost is measured.
#[derive(Clone, Copy)]
struct OnPath<'a> {
    agents: Option<NodeProxies<'a>>,
    waypoint: Option<&'a dyn L7Proxy>,
}

/// The L4 proxies at either end of a path: Ambit's agents, or ztunnels.
#[derive(Clone, Copy)]
enum NodeProxies<'a> {
    Ambit(&'a [NodeAgent]),
    Ztunnel(&'a [Ztunnel]),
}

impl NodeProxies<'_> {
    fn usage(self) -> anyhow::Result<Vec<Usage>> {
        match self {
            Self::Ambit(agents) => agents.iter().map(NodeAgent::usage).collect(),
            Self::Ztunnel(ztunnels) => ztunnels.iter().map(Ztunnel::usage).collect(),
        }
    }
}

/// A waypoint whose CPU and memory the bench reads: Ambit's, or Envoy.
trait L7Proxy {
    fn usage(&self) -> anyhow::Result<Usage>;
    /// What it logged, for a failure's message.
    fn output(&self) -> String;
}

impl L7Proxy for Waypoint {
    fn usage(&self) -> anyhow::Result<Usage> {
        Waypoint::usage(self)
    }
    fn output(&self) -> String {
        Waypoint::output(self)
    }
}

impl L7Proxy for EnvoyWaypoint {
    fn usage(&self) -> anyhow::Result<Usage> {
        EnvoyWaypoint::usage(self)
    }
    fn output(&self) -> String {
        EnvoyWaypoint::output(self)
    }
}

/// The parts of the bench, each of which can be run alone.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The mesh model at scale.
    Scale,
    /// The data paths, the waypoint beside Envoy's.
    DataPath,
    /// The ingress gateway beside Envoy.
    Ingress,
    /// An agent's memory with many enrolled pods.
    Memory,
}

/// What `cargo xtask bench` is asked for.
pub struct Bench<'a> {
    pub rounds: usize,
    pub only: Option<Part>,
    pub ztunnel: Option<&'a Path>,
    /// The images' static builds in place of the release builds.
    pub image_binaries: bool,
}

pub fn run(workspace: &Workspace, bench: &Bench) -> anyhow::Result<()> {
    let &Bench {
        rounds,
        only,
        ztunnel,
        image_binaries,
    } = bench;
    let wanted = |part: Part| only.is_none_or(|only| only == part);
    let dir = workspace.target.join("bench");
    if wanted(Part::Scale) {
        crate::run(
            workspace
                .cargo()
                .args([
                    "bench",
                    "-p",
                    "ambit-mesh-source",
                    "--bench",
                    "scale",
                    "--",
                    "--save",
                ])
                .arg(&dir),
        )?;
    }
    crate::run(
        workspace
            .cargo()
            .args(["build", "--release", "--workspace", "--bins"]),
    )?;
    let (binaries, builds) = if image_binaries {
        let dir = crate::images::for_the_test_bed(workspace)?;
        let builds = "the images' static builds (musl, jemalloc)";
        (Binaries::in_dir(&dir)?, builds)
    } else {
        let builds = "release builds for this machine (glibc)";
        (Binaries::in_dir(&workspace.target.join("release"))?, builds)
    };
    let mut report = vec![format!("Ambit's agent, waypoint and CA: {builds}.\n")];
    let mut json = serde_json::Map::new();
    json.insert("builds".into(), builds.into());
    if wanted(Part::DataPath) {
        let paths = data_path(&binaries, rounds, ztunnel)?;
        report.push(markdown(&paths, rounds) + &kernel_tls());
        json.insert("paths".into(), serde_json::to_value(&paths)?);
    }
    if wanted(Part::Ingress) {
        let ingress = ingress::run(&binaries, rounds)?;
        report.push(ingress.markdown());
        json.insert("ingress".into(), serde_json::to_value(&ingress)?);
    }
    if wanted(Part::Memory) {
        let memory = memory_with_enrolled_pods(&binaries)?;
        report.push(memory.markdown());
        json.insert("memory".into(), serde_json::to_value(&memory)?);
    }
    let report = report.join("\n");
    println!("\n{report}");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("data-path.json"),
        serde_json::to_vec_pretty(&json)?,
    )?;
    std::fs::write(dir.join("data-path.md"), report)?;
    println!("Saved to {}/data-path.json and data-path.md", dir.display());
    Ok(())
}

mod ingress;

/// Each path's throughput, latency and proxy cost, round by round, as
/// medians, and against no mesh.
fn data_path(
    binaries: &Binaries,
    rounds: usize,
    ztunnel: Option<&Path>,
) -> anyhow::Result<Vec<PathReport>> {
    // Five client/server pairs side by side: no mesh, agents in plain TCP
    // relayed in the kernel (nodes 1 and 2), agents with identities from a
    // CA, in mTLS over HBONE (nodes 3 and 4), agents in plain TCP that move
    // the bytes themselves (nodes 5 and 6), and two bare relays between
    // client and server (nodes 7 and 8: the floor of any relaying proxy,
    // `bare_relay`), so the paths are measured in turns under the same
    // conditions. The waypoint path is the mTLS
    // pair again, addressed by a Service bound to the waypoint on node 3:
    // client, agent, waypoint, agent, server; and the same with Envoy, the
    // proxy Istio's waypoints run, as the waypoint beside it. Given a
    // ztunnel, a pair of pods each proxied by one (nodes 9 and 10).
    let mut builder = Cluster::builder()
        .binaries(binaries.clone())
        .node(&["client", "mesh-client"])
        .node(&["server", "mesh-server"])
        .node(&["tls-client", "waypoint", "envoy"])
        .node(&["tls-server"])
        .node(&["splice-client"])
        .node(&["splice-server"])
        .node(&["relayed-client"])
        .node(&["relayed-server"]);
    if ztunnel.is_some() {
        builder = builder.node(&["zt-client"]).node(&["zt-server"]);
    }
    let cluster = builder.build()?;
    let [client, server, mesh_client, mesh_server, tls_client, tls_server, splice_client, splice_server, waypoint_pod, envoy_pod, relayed_client, relayed_server] =
        cluster.pods_named([
            "client",
            "server",
            "mesh-client",
            "mesh-server",
            "tls-client",
            "tls-server",
            "splice-client",
            "splice-server",
            "waypoint",
            "envoy",
            "relayed-client",
            "relayed-server",
        ])?;
    let bound = |name: &str, waypoint: &str, vip, port, port_name: &str| mesh::ServiceConfig {
        waypoint: Some(waypoint.into()),
        port_name: port_name.into(),
        ..mesh::service(name, vip, port, port, &[tls_server])
    };
    mesh::write_config(
        &cluster,
        &mesh::enrolling(
            &cluster,
            &[
                mesh_client,
                mesh_server,
                tls_client,
                tls_server,
                splice_client,
                splice_server,
            ],
            vec![
                bound("bench-http", "waypoint", WAYPOINT_HTTP_VIP, 8080, "http"),
                bound("bench-sink", "waypoint", WAYPOINT_SINK_VIP, 9100, "tcp"),
                mesh::service("waypoint", WAYPOINT_VIP, 15008, 15008, &[waypoint_pod]),
                bound("bench-http-envoy", "envoy", ENVOY_HTTP_VIP, 8080, "http"),
                bound("bench-sink-envoy", "envoy", ENVOY_SINK_VIP, 9100, "tcp"),
                mesh::service("envoy", ENVOY_VIP, 15008, 15008, &[envoy_pod]),
            ],
        ),
    )?;
    let ca = TestCa::start(&cluster, 24 * 3600)?;
    let agents = mesh::start_agents_with_args(&cluster, &mesh::Source::Directory, |node| {
        let index = cluster.nodes().iter().position(|n| n.name == node.name);
        Ok(match index.context("a node of the cluster")? {
            0 | 1 => Vec::new(),
            2 | 3 => ca.agent_args(node)?,
            _ => vec!["--kernel-relay=false".into()],
        })
    })?;
    let waypoint = Waypoint::start(
        &cluster,
        waypoint_pod,
        "waypoint",
        &mesh::Source::Directory,
        Some(&ca),
    )?;
    let zt_pods = match ztunnel {
        Some(_) => Some(cluster.pods_named(["zt-client", "zt-server"])?),
        None => None,
    };
    let _servers = [
        server,
        mesh_server,
        tls_server,
        splice_server,
        relayed_server,
    ]
    .into_iter()
    .chain(zt_pods.iter().map(|pods| pods[1]))
    .map(|pod| {
        Server::new(&pod.name, "v1")
            .http(8080)
            .sink(9100)
            .start(&cluster, pod)
    })
    .collect::<anyhow::Result<Vec<_>>>()?;
    let ztunnels = match (ztunnel, zt_pods) {
        (Some(binary), Some(pods)) => start_ztunnels(&cluster, binary, &ca, pods)?,
        _ => Vec::new(),
    };
    wait_for_capture(&cluster, &agents[0], mesh_client, mesh_server)?;
    wait_for_capture(&cluster, &agents[2], tls_client, tls_server)?;
    wait_for_capture(&cluster, &agents[4], splice_client, splice_server)?;
    let through_waypoint = Target {
        http: SocketAddr::from((WAYPOINT_HTTP_VIP, 8080)),
        sink: SocketAddr::from((WAYPOINT_SINK_VIP, 9100)),
    };
    let through_envoy = Target {
        http: SocketAddr::from((ENVOY_HTTP_VIP, 8080)),
        sink: SocketAddr::from((ENVOY_SINK_VIP, 9100)),
    };
    let to_server = Target::pod(tls_server);
    let envoy = EnvoyWaypoint::start(
        &cluster,
        envoy_pod,
        &ca,
        &[
            envoy::Route {
                service: through_envoy.http,
                endpoint: to_server.http,
                http: true,
            },
            envoy::Route {
                service: through_envoy.sink,
                endpoint: to_server.sink,
                http: false,
            },
        ],
    )?;
    for (through, pod, output) in [
        (through_waypoint, waypoint_pod, waypoint.output()),
        (through_envoy, envoy_pod, envoy.output()),
    ] {
        let answered = HttpLoad::new(20).run(
            &cluster,
            tls_client.place(),
            &format!("http://{}/", through.http),
        )?;
        ensure!(
            answered.status(200) == 20 && answered.peers.contains_key(&pod.ip.to_string()),
            "the path through {} does not carry requests: {answered:?}\n{output}",
            pod.name
        );
    }

    let _relays = bare_relay::pair(relayed_client, relayed_server, &[8080, 9100])?;
    let relayed = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port + bare_relay::PORT_OFFSET));
    let through_relays = Target {
        http: relayed(8080),
        sink: relayed(9100),
    };
    let agents_only = |agents| OnPath {
        agents: Some(NodeProxies::Ambit(agents)),
        waypoint: None,
    };
    let mut paths = vec![
        (
            "no mesh",
            client,
            Target::pod(server),
            OnPath {
                agents: None,
                waypoint: None,
            },
        ),
        (
            "two bare relays (accept, connect, copy: nothing else), plaintext L4",
            relayed_client,
            through_relays,
            OnPath {
                agents: None,
                waypoint: None,
            },
        ),
        (
            "agents, plaintext L4",
            mesh_client,
            Target::pod(mesh_server),
            agents_only(&agents[0..2]),
        ),
        (
            "agents, plaintext L4, relayed in user space",
            splice_client,
            Target::pod(splice_server),
            agents_only(&agents[4..6]),
        ),
        (L4_PATH, tls_client, to_server, agents_only(&agents[2..4])),
        (
            WAYPOINT_PATH,
            tls_client,
            through_waypoint,
            OnPath {
                agents: Some(NodeProxies::Ambit(&agents[2..4])),
                waypoint: Some(&waypoint),
            },
        ),
        (
            ENVOY_PATH,
            tls_client,
            through_envoy,
            OnPath {
                agents: Some(NodeProxies::Ambit(&agents[2..4])),
                waypoint: Some(&envoy),
            },
        ),
    ];
    if let Some([zt_client, zt_server]) = zt_pods {
        paths.push((
            ZTUNNEL_PATH,
            zt_client,
            Target::pod(zt_server),
            OnPath {
                agents: Some(NodeProxies::Ztunnel(&ztunnels)),
                waypoint: None,
            },
        ));
    }
    let mut measured: Vec<Vec<Scenario>> = paths.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        // No mesh first, the baseline of the round; the other paths take
        // turns at going first, so that none always follows the same one.
        let mut order: Vec<usize> = (1..paths.len()).collect();
        order.rotate_left(round % (paths.len() - 1));
        for index in std::iter::once(0).chain(order) {
            let (name, from, target, on_path) = paths[index];
            println!("bench: round {}/{rounds}: {name}", round + 1);
            measured[index].push(measure(&cluster, name, from, target, on_path)?);
        }
    }
    let against: Vec<AgainstNoMesh> = measured
        .iter()
        .map(|path| against_no_mesh(path, &measured[0]))
        .collect();
    Ok(measured
        .into_iter()
        .zip(against)
        .map(|(path_rounds, against_no_mesh)| PathReport {
            median: median(&path_rounds),
            against_no_mesh,
            rounds: path_rounds,
        })
        .collect())
}

/// A ztunnel in each of `pods` (client, server), checked to carry the
/// client's requests: the server's ztunnel counts them as inbound.
fn start_ztunnels(
    cluster: &Cluster,
    binary: &Path,
    ca: &TestCa,
    [client, server]: [&Pod; 2],
) -> anyhow::Result<Vec<Ztunnel>> {
    let ztunnels = [client, server]
        .map(|pod| Ztunnel::start(cluster, binary, pod, ca, &[client, server], &[]))
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let answered = HttpLoad::new(20).run(
        cluster,
        client.place(),
        &format!("http://{}:8080/", server.ip),
    )?;
    let inbound = sample(
        &ztunnels[1].metrics(server)?,
        "istio_tcp_connections_opened_total",
        &[("reporter", "destination")],
    );
    ensure!(
        answered.status(200) == 20 && inbound > 0.0,
        "the ztunnels do not carry requests ({answered:?}, {inbound} inbound connections):\n{}\n{}",
        ztunnels[0].output(),
        ztunnels[1].output()
    );
    Ok(ztunnels)
}

/// Each round's figures against no mesh's in the same round, the median
/// over the rounds.
fn against_no_mesh(path: &[Scenario], baseline: &[Scenario]) -> AgainstNoMesh {
    let pairs = || path.iter().zip(baseline);
    let added = |figure: fn(&Scenario) -> u64| {
        mid(pairs().map(|(run, base)| figure(run) as i64 - figure(base) as i64))
    };
    AgainstNoMesh {
        throughput_percent: mid(pairs()
            .map(|(run, base)| 100.0 * run.throughput_gbit_per_s / base.throughput_gbit_per_s)),
        kept_alive_p50_added_us: added(|s| s.kept_alive.latency.p50_us),
        kept_alive_p99_added_us: added(|s| s.kept_alive.latency.p99_us),
        new_connections_p99_added_us: added(|s| s.new_connections.latency.p99_us),
    }
}

/// An agent's resident memory with many enrolled pods, each its own
/// service account (so a certificate each), idle and after traffic.
#[derive(Serialize)]
struct MemoryWithPods {
    enrolled_pods: usize,
    idle_mib: f64,
    after_traffic_mib: f64,
}

impl MemoryWithPods {
    fn markdown(&self) -> String {
        format!(
            "| agent with {} enrolled pods, mTLS | resident memory (MiB) |\n|---|---:|\n\
             | idle, every certificate held | {:.1} |\n\
             | after {RATE} req/s for {SECONDS} s and a {} GiB transfer | {:.1} |\n",
            self.enrolled_pods,
            self.idle_mib,
            TRANSFER_BYTES >> 30,
            self.after_traffic_mib
        )
    }
}

fn memory_with_enrolled_pods(binaries: &Binaries) -> anyhow::Result<MemoryWithPods> {
    println!("bench: an agent with {ENROLLED_PODS} enrolled pods");
    let names: Vec<String> = (0..ENROLLED_PODS).map(|i| format!("pod-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let cluster = Cluster::builder()
        .binaries(binaries.clone())
        .node(&names)
        .node(&["server"])
        .build()?;
    let pods: Vec<&Pod> = cluster.pods().iter().collect();
    let (_ca, agents) = mesh::start_secured(
        &cluster,
        &mesh::enrolling(&cluster, &pods, vec![]),
        24 * 3600,
    )?;
    let (client, server) = (cluster.pod("pod-0")?, cluster.pod("server")?);
    let _server = Server::new("server", "v1")
        .http(8080)
        .sink(9100)
        .start(&cluster, server)?;
    let mib = |agent: &NodeAgent| agent.usage().map(|usage| mib(&usage));
    let idle_mib = mib(&agents[0])?;
    let url = format!("http://{}:8080/bytes/{RESPONSE_BYTES}", server.ip);
    let latency = testapp::latency(
        &cluster,
        client.place(),
        &url,
        RATE,
        SECONDS,
        Connections::KeptAlive(CONNECTIONS),
    )?;
    ensure!(latency.errors == 0, "requests failed: {latency:?}");
    transfer_intact(&cluster, client, Target::pod(server).sink)?;
    Ok(MemoryWithPods {
        enrolled_pods: ENROLLED_PODS,
        idle_mib,
        after_traffic_mib: mib(&agents[0])?,
    })
}

/// The median of each figure over the rounds.
fn median(rounds: &[Scenario]) -> Scenario {
    Scenario {
        name: rounds[0].name,
        throughput_gbit_per_s: mid(rounds.iter().map(|r| r.throughput_gbit_per_s)),
        transfer_machine_cpu_seconds_per_gib: mid(rounds
            .iter()
            .map(|r| r.transfer_machine_cpu_seconds_per_gib)),
        transfer_proxy_cpu_seconds_per_gib: rounds[0]
            .transfer_proxy_cpu_seconds_per_gib
            .as_ref()
            .map(|proxies| {
                (0..proxies.len())
                    .map(|i| {
                        mid(rounds.iter().filter_map(|r| {
                            r.transfer_proxy_cpu_seconds_per_gib.as_ref().map(|p| p[i])
                        }))
                    })
                    .collect()
            }),
        kept_alive: median_timed(rounds.iter().map(|r| &r.kept_alive)),
        new_connections: median_timed(rounds.iter().map(|r| &r.new_connections)),
        saturation_requests_per_s: mid(rounds.iter().map(|r| r.saturation_requests_per_s)),
    }
}

fn median_timed<'a>(runs: impl Iterator<Item = &'a Timed> + Clone) -> Timed {
    let latency = LatencySummary {
        requests: runs.clone().map(|r| r.latency.requests).sum(),
        errors: runs.clone().map(|r| r.latency.errors).sum(),
        p50_us: mid(runs.clone().map(|r| r.latency.p50_us)),
        p90_us: mid(runs.clone().map(|r| r.latency.p90_us)),
        p99_us: mid(runs.clone().map(|r| r.latency.p99_us)),
        max_us: runs.clone().map(|r| r.latency.max_us).max().unwrap_or(0),
        elapsed_us: mid(runs.clone().map(|r| r.latency.elapsed_us)),
    };
    Timed {
        latency,
        machine_cpu_seconds_per_1000_requests: mid(runs
            .clone()
            .map(|r| r.machine_cpu_seconds_per_1000_requests)),
        agents: median_cost(runs.clone().map(|r| r.agents)),
        waypoint: median_cost(runs.map(|r| r.waypoint)),
    }
}

/// The median CPU and the largest memory over the runs.
fn median_cost(costs: impl Iterator<Item = Option<AgentCost>>) -> Option<AgentCost> {
    let costs = costs.collect::<Option<Vec<AgentCost>>>()?;
    Some(AgentCost {
        cpu_seconds_per_1000_requests: mid(costs.iter().map(|c| c.cpu_seconds_per_1000_requests)),
        max_rss_mib: costs.iter().map(|c| c.max_rss_mib).fold(0.0, f64::max),
    })
}

fn mid<T: Copy + PartialOrd>(values: impl Iterator<Item = T>) -> T {
    let mut values: Vec<T> = values.collect();
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values[values.len() / 2]
}

fn measure(
    cluster: &Cluster,
    name: &'static str,
    client: &Pod,
    target: Target,
    on_path: OnPath,
) -> anyhow::Result<Scenario> {
    let proxies_before = on_path.agents.map(NodeProxies::usage).transpose()?;
    let (transfer, transfer_cpu) =
        with_machine_cpu(|| transfer_intact(cluster, client, target.sink))?;
    let gib = transfer.bytes_sent as f64 / GIB;
    let transfer_proxy_cpu_seconds_per_gib = match (on_path.agents, proxies_before) {
        (Some(proxies), Some(before)) => Some(
            (proxies.usage()?.iter().zip(&before))
                .map(|(after, before)| (after.cpu_seconds - before.cpu_seconds) / gib)
                .collect(),
        ),
        _ => None,
    };
    let url = format!("http://{}/bytes/{RESPONSE_BYTES}", target.http);
    let timed = |rate, connections, seconds| {
        timed(
            cluster,
            client,
            &url,
            (rate, seconds),
            connections,
            on_path,
            None,
        )
    };
    let saturated = timed(
        SATURATING_RATE,
        Connections::KeptAlive(CONNECTIONS),
        SATURATION_SECONDS,
    )?;
    Ok(Scenario {
        name,
        throughput_gbit_per_s: transfer.bytes_sent as f64 * 8.0 / transfer.seconds / 1e9,
        transfer_machine_cpu_seconds_per_gib: transfer_cpu / gib,
        transfer_proxy_cpu_seconds_per_gib,
        kept_alive: timed(RATE, Connections::KeptAlive(CONNECTIONS), SECONDS)?,
        new_connections: timed(
            NEW_CONNECTION_RATE,
            Connections::PerRequest(CONNECTIONS),
            SECONDS,
        )?,
        saturation_requests_per_s: saturated.latency.requests as f64
            / (saturated.latency.elapsed_us as f64 / 1e6),
    })
}

/// A latency run at `(rate, seconds)`, with the proxies' CPU time during
/// it; connecting `via` an address (and TLS) when given.
fn timed(
    cluster: &Cluster,
    client: &Pod,
    url: &str,
    (rate, seconds): (u32, u32),
    connections: Connections,
    on_path: OnPath,
    via: Option<(SocketAddr, Option<&ClientTls>)>,
) -> anyhow::Result<Timed> {
    let agent_usage = NodeProxies::usage;
    let waypoint_usage = |waypoint: &dyn L7Proxy| waypoint.usage().map(|usage| vec![usage]);
    let agents_before = on_path.agents.map(agent_usage).transpose()?;
    let waypoint_before = on_path.waypoint.map(waypoint_usage).transpose()?;
    let (latency, machine_cpu) = with_machine_cpu(|| {
        let place = client.place();
        testapp::latency_via(cluster, place, url, (rate, seconds), connections, via)
    })?;
    let machine_cpu_seconds_per_1000_requests = machine_cpu / (latency.requests as f64 / 1000.0);
    ensure!(latency.errors == 0, "requests failed: {latency:?}");
    let cost = |before: &[Usage], after: &[Usage]| {
        let cpu: f64 = after
            .iter()
            .zip(before)
            .map(|(a, b)| a.cpu_seconds - b.cpu_seconds)
            .sum();
        AgentCost {
            cpu_seconds_per_1000_requests: cpu
                / after.len() as f64
                / (latency.requests as f64 / 1000.0),
            max_rss_mib: after.iter().map(mib).fold(0.0, f64::max),
        }
    };
    let agents = match (on_path.agents, agents_before) {
        (Some(agents), Some(before)) => Some(cost(&before, &agent_usage(agents)?)),
        _ => None,
    };
    let waypoint = match (on_path.waypoint, waypoint_before) {
        (Some(waypoint), Some(before)) => Some(cost(&before, &waypoint_usage(waypoint)?)),
        _ => None,
    };
    Ok(Timed {
        latency,
        machine_cpu_seconds_per_1000_requests,
        agents,
        waypoint,
    })
}

/// What `run` returns, with the whole machine's busy CPU seconds meanwhile.
fn with_machine_cpu<T>(run: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, f64)> {
    let before = machine_busy_seconds()?;
    let result = run()?;
    Ok((result, machine_busy_seconds()? - before))
}

/// A process's resident memory in MiB.
pub(crate) fn mib(usage: &Usage) -> f64 {
    usage.rss_bytes as f64 / (1 << 20) as f64
}

/// Sends the single-stream transfer to the server's sink and checks that
/// it arrived intact.
fn transfer_intact(
    cluster: &Cluster,
    client: &Pod,
    sink: SocketAddr,
) -> anyhow::Result<TransferSummary> {
    let transfer = testapp::send(cluster, client.place(), sink, TRANSFER_BYTES)?;
    ensure!(
        transfer.crc_received_by_server == transfer.crc_sent,
        "the transfer arrived corrupted: {transfer:?}"
    );
    Ok(transfer)
}

/// Waits until the agents carry the client's new connections.
fn wait_for_capture(
    cluster: &Cluster,
    agent: &NodeAgent,
    client: &Pod,
    server: &Pod,
) -> anyhow::Result<()> {
    let url = format!("http://{}:8080/", server.ip);
    for _ in 0..100 {
        HttpLoad::new(1).run(cluster, client.place(), &url)?;
        if sample(
            &agent.metrics(cluster)?,
            "istio_tcp_connections_opened_total",
            &[],
        ) > 0.0
        {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(anyhow::anyhow!(
        "the client was not captured after enrolling it"
    ))
    .context("bench")
}

/// What this machine's kernel offers of TLS, read and never loaded: the
/// mTLS paths are measured encrypting in user space either way.
fn kernel_tls() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let listed = |file: &str| {
        std::fs::read_to_string(format!("/lib/modules/{}/{file}", release.trim()))
            .is_ok_and(|modules| modules.contains("net/tls/tls.ko"))
    };
    let offered = if Path::new("/proc/net/tls_stat").exists() {
        "loaded in this kernel, not used by the agents yet"
    } else if listed("modules.dep") || listed("modules.builtin") {
        "available to this kernel as a module, not loaded"
    } else {
        "not in this kernel (no `tls` module, built in or to load)"
    };
    format!("\nKernel TLS: {offered}; every mTLS path above encrypts in user space.\n")
}

fn markdown(paths: &[PathReport], rounds: usize) -> String {
    let mut table = format!(
        "Single stream ({} GiB) and HTTP/1.1 at {RATE} req/s for {SECONDS} s ({CONNECTIONS} kept-alive connections, \
         {RESPONSE_BYTES}-byte responses), pod on node 1 to pod on node 2; {rounds} rounds taken in turns. Figures are \
         medians over the rounds; % of no mesh and p99 added compare each round with no mesh in the same round. \
         Machine CPU is the whole machine's busy time (client, server, agents, and the kernel's work for them, \
         which the agents' own CPU time does not show).\n\n\
         | path | throughput (Gbit/s) | % of no mesh | machine CPU s / GiB | p50 (µs) | p90 (µs) | p99 (µs) | p99 added (µs) | agent CPU s / 1000 req | machine CPU s / 1000 req | agent RSS (MiB) | waypoint CPU s / 1000 req | waypoint RSS (MiB) | saturation (req/s) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        TRANSFER_BYTES >> 30
    );
    for path in paths {
        let scenario = &path.median;
        let (cpu, rss) = cost(scenario.kept_alive.agents);
        let (waypoint_cpu, waypoint_rss) = cost(scenario.kept_alive.waypoint);
        let _ = writeln!(
            table,
            "| {} | {:.2} | {:.0}% | {:.2} | {} | {cpu} | {:.4} | {rss} | {waypoint_cpu} | {waypoint_rss} | {:.0} |",
            scenario.name,
            scenario.throughput_gbit_per_s,
            path.against_no_mesh.throughput_percent,
            scenario.transfer_machine_cpu_seconds_per_gib,
            percentiles(
                &scenario.kept_alive,
                path.against_no_mesh.kept_alive_p99_added_us
            ),
            scenario.kept_alive.machine_cpu_seconds_per_1000_requests,
            scenario.saturation_requests_per_s,
        );
    }
    let named = |name: &str| paths.iter().find(|path| path.median.name == name);
    if let (Some(l4), Some(ambit), Some(envoy)) =
        (named(L4_PATH), named(WAYPOINT_PATH), named(ENVOY_PATH))
    {
        let _ = writeln!(
            table,
            "\nEach waypoint against the mTLS L4 path, round by round (the goals for Ambit's in brackets):\n\n\
             | waypoint | p50 added (µs) | p99 added (µs) | CPU s / 1000 req | RSS (MiB) | saturation (req/s) |\n\
             |---|---:|---:|---:|---:|---:|"
        );
        for (name, waypoint, goals) in [
            ("Ambit", ambit, [" (≤ 1000)", " (≤ 0.05)", " (≤ 20)"]),
            ("Envoy", envoy, ["", "", ""]),
        ] {
            let over_l4 = against_no_mesh(&waypoint.rounds, &l4.rounds);
            let (cpu, rss) = cost(waypoint.median.kept_alive.waypoint);
            let _ = writeln!(
                table,
                "| {name} | {} | {}{} | {cpu}{} | {rss}{} | {:.0} |",
                over_l4.kept_alive_p50_added_us,
                over_l4.kept_alive_p99_added_us,
                goals[0],
                goals[1],
                goals[2],
                waypoint.median.saturation_requests_per_s,
            );
        }
        let _ = writeln!(
            table,
            "| (mTLS L4 alone) | | | | | {:.0} |\n\n\
             Envoy {} runs with one worker, as Ambit's waypoint here, configured as Istio configures its \
             waypoints (HBONE ended into an internal listener, requests routed, each upstream connection \
             tunnelled from another), with a file access log; without Istio's telemetry filter, which \
             upstream Envoy lacks, so Istio's own waypoint costs more.",
            l4.median.saturation_requests_per_s,
            envoy::VERSION,
        );
    }
    if let (Some(ambit), Some(ztunnel)) = (named(L4_PATH), named(ZTUNNEL_PATH)) {
        let _ = writeln!(table, "\n{}", against_ztunnel(ambit, ztunnel));
    }
    let _ = write!(
        table,
        "\nA new connection per request (its setup timed with it), {NEW_CONNECTION_RATE} req/s for {SECONDS} s, \
         at most {CONNECTIONS} at once.\n\n\
         | path | p50 (µs) | p90 (µs) | p99 (µs) | p99 added (µs) | agent CPU s / 1000 connections | machine CPU s / 1000 connections |\n\
         |---|---:|---:|---:|---:|---:|---:|\n"
    );
    for path in paths {
        let scenario = &path.median;
        let (cpu, _) = cost(scenario.new_connections.agents);
        let _ = writeln!(
            table,
            "| {} | {} | {cpu} | {:.4} |",
            scenario.name,
            percentiles(
                &scenario.new_connections,
                path.against_no_mesh.new_connections_p99_added_us
            ),
            scenario
                .new_connections
                .machine_cpu_seconds_per_1000_requests,
        );
    }
    table
}

/// Ambit's agents beside ztunnels on the same mTLS path, medians of the
/// same rounds, with issue 25's goals.
fn against_ztunnel(ambit: &PathReport, ztunnel: &PathReport) -> String {
    let transfer_proxy_cpu = |path: &PathReport, side: usize| {
        (path.median.transfer_proxy_cpu_seconds_per_gib.as_ref())
            .and_then(|proxies| proxies.get(side).copied())
            .unwrap_or(f64::NAN)
    };
    let proxy_cpu = |path: &PathReport| {
        path.median
            .kept_alive
            .agents
            .map_or(f64::NAN, |cost| cost.cpu_seconds_per_1000_requests)
    };
    let rows = [
        (
            "single stream (Gbit/s)",
            ambit.median.throughput_gbit_per_s,
            ztunnel.median.throughput_gbit_per_s,
            "≥ 1.3",
        ),
        (
            "machine CPU s / GiB",
            ambit.median.transfer_machine_cpu_seconds_per_gib,
            ztunnel.median.transfer_machine_cpu_seconds_per_gib,
            "≤ 0.75",
        ),
        (
            "sending proxy CPU s / GiB",
            transfer_proxy_cpu(ambit, 0),
            transfer_proxy_cpu(ztunnel, 0),
            "",
        ),
        (
            "receiving proxy CPU s / GiB",
            transfer_proxy_cpu(ambit, 1),
            transfer_proxy_cpu(ztunnel, 1),
            "",
        ),
        (
            "p99 added at 1000 req/s (µs)",
            ambit.against_no_mesh.kept_alive_p99_added_us as f64,
            ztunnel.against_no_mesh.kept_alive_p99_added_us as f64,
            "≤ 1",
        ),
        (
            "proxy CPU s / 1000 req (each)",
            proxy_cpu(ambit),
            proxy_cpu(ztunnel),
            "≤ 1",
        ),
        (
            "new connections: p99 added (µs)",
            ambit.against_no_mesh.new_connections_p99_added_us as f64,
            ztunnel.against_no_mesh.new_connections_p99_added_us as f64,
            "",
        ),
    ];
    let mut table = String::from(
        "Ambit's agents against ztunnels (dedicated mode, each in its pod), both mTLS over HBONE, same rounds:\n\n\
         | figure | Ambit | ztunnel | Ambit / ztunnel (goal) |\n|---|---:|---:|---:|\n",
    );
    for (figure, ours, theirs, goal) in rows {
        let goal = match goal {
            "" => String::new(),
            goal => format!(" ({goal})"),
        };
        let _ = writeln!(
            table,
            "| {figure} | {ours:.4} | {theirs:.4} | {:.2}{goal} |",
            ours / theirs
        );
    }
    table
}

/// p50, p90, p99 and the p99 added to no mesh's, as table cells.
fn percentiles(run: &Timed, p99_added_us: i64) -> String {
    let latency = &run.latency;
    format!(
        "{} | {} | {} | {p99_added_us}",
        latency.p50_us, latency.p90_us, latency.p99_us,
    )
}

/// A proxy's CPU per 1000 requests and largest memory, as table cells.
fn cost(cost: Option<AgentCost>) -> (String, String) {
    match cost {
        Some(cost) => (
            format!("{:.4}", cost.cpu_seconds_per_1000_requests),
            format!("{:.1}", cost.max_rss_mib),
        ),
        None => ("-".to_string(), "-".to_string()),
    }
}
