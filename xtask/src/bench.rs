//! `cargo xtask bench`: the mesh model at scale (memory, change propagation;
//! `lib/mesh-source/benches/scale.rs`), then the data path's cost, measured
//! on the namespace cluster with release builds, next to the same traffic
//! with no mesh, and an agent's memory with many enrolled pods. Figures are
//! reported, not asserted.

use std::fmt::Write;
use std::net::SocketAddr;

use ambit_testbed::ca::TestCa;
use ambit_testbed::mesh::{self, sample, NodeAgent};
use ambit_testbed::testapp::{
    self, Connections, HttpLoad, LatencySummary, Server, TransferSummary,
};
use ambit_testbed::{machine_busy_seconds, Binaries, Cluster, Pod, Usage};
use anyhow::{ensure, Context};
use serde::Serialize;

use crate::Workspace;

/// Bytes moved for the single-stream throughput figure.
const TRANSFER_BYTES: u64 = 2 << 30;
const GIB: f64 = (1u64 << 30) as f64;
const RATE: u32 = 1000;
const SECONDS: u32 = 10;
/// Each path is measured this many times, in turns; the report gives medians.
const ROUNDS: usize = 5;
const CONNECTIONS: u32 = 8;
/// Requests per second when each opens a new connection.
const NEW_CONNECTION_RATE: u32 = 500;
const RESPONSE_BYTES: usize = 1024;
/// Pods on one agent for the memory figure.
const ENROLLED_PODS: usize = 100;

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
    /// Requests on kept-alive connections.
    kept_alive: Timed,
    /// A new connection per request: its setup is in the latency.
    new_connections: Timed,
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
}

#[derive(Serialize, Clone, Copy)]
struct AgentCost {
    /// CPU time per 1000 requests of the run, per agent (mean).
    cpu_seconds_per_1000_requests: f64,
    /// Largest resident memory of an agent after the run.
    max_rss_mib: f64,
}

pub fn run(workspace: &Workspace) -> anyhow::Result<()> {
    let dir = workspace.target.join("bench");
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
    crate::run(
        workspace
            .cargo()
            .args(["build", "--release", "--workspace", "--bins"]),
    )?;
    let binaries = Binaries::in_dir(&workspace.target.join("release"))?;
    let paths = data_path(&binaries)?;
    let memory = memory_with_enrolled_pods(&binaries)?;

    let report = format!("{}\n{}", markdown(&paths), memory.markdown());
    println!("\n{report}");
    std::fs::create_dir_all(&dir)?;
    let json = serde_json::json!({ "paths": paths, "memory": memory });
    std::fs::write(dir.join("l4.json"), serde_json::to_vec_pretty(&json)?)?;
    std::fs::write(dir.join("l4.md"), report)?;
    println!("Saved to {}/l4.json and l4.md", dir.display());
    Ok(())
}

/// Each path's throughput, latency and agent cost, round by round, as
/// medians, and against no mesh.
fn data_path(binaries: &Binaries) -> anyhow::Result<Vec<PathReport>> {
    // Four client/server pairs side by side: no mesh, agents in plain TCP
    // relayed in the kernel (nodes 1 and 2), agents with identities from a
    // CA, in mTLS over HBONE (nodes 3 and 4), and agents in plain TCP that
    // move the bytes themselves (nodes 5 and 6), so the paths are measured
    // in turns under the same conditions.
    let cluster = Cluster::builder()
        .binaries(binaries.clone())
        .node(&["client", "mesh-client"])
        .node(&["server", "mesh-server"])
        .node(&["tls-client"])
        .node(&["tls-server"])
        .node(&["splice-client"])
        .node(&["splice-server"])
        .build()?;
    let [client, server, mesh_client, mesh_server, tls_client, tls_server, splice_client, splice_server] =
        cluster.pods_named([
            "client",
            "server",
            "mesh-client",
            "mesh-server",
            "tls-client",
            "tls-server",
            "splice-client",
            "splice-server",
        ])?;
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
            vec![],
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
    let _servers = [server, mesh_server, tls_server, splice_server]
        .map(|pod| {
            Server::new(&pod.name, "v1")
                .http(8080)
                .sink(9100)
                .start(&cluster, pod)
        })
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    wait_for_capture(&cluster, &agents[0], mesh_client, mesh_server)?;
    wait_for_capture(&cluster, &agents[2], tls_client, tls_server)?;
    wait_for_capture(&cluster, &agents[4], splice_client, splice_server)?;

    let paths = [
        ("no mesh", client, server, None),
        (
            "agents, plaintext L4",
            mesh_client,
            mesh_server,
            Some(&agents[0..2]),
        ),
        (
            "agents, plaintext L4, relayed in user space",
            splice_client,
            splice_server,
            Some(&agents[4..6]),
        ),
        (
            "agents, mTLS over HBONE",
            tls_client,
            tls_server,
            Some(&agents[2..4]),
        ),
    ];
    let mut rounds: Vec<Vec<Scenario>> = paths.iter().map(|_| Vec::new()).collect();
    for round in 0..ROUNDS {
        // No mesh first, the baseline of the round; the other paths take
        // turns at going first, so that none always follows the same one.
        let mut order: Vec<usize> = (1..paths.len()).collect();
        order.rotate_left(round % (paths.len() - 1));
        for index in std::iter::once(0).chain(order) {
            let (name, from, to, on_path) = paths[index];
            println!("bench: round {}/{ROUNDS}: {name}", round + 1);
            rounds[index].push(measure(&cluster, name, from, to, on_path)?);
        }
    }
    let against: Vec<AgainstNoMesh> = rounds
        .iter()
        .map(|path| against_no_mesh(path, &rounds[0]))
        .collect();
    Ok(rounds
        .into_iter()
        .zip(against)
        .map(|(path_rounds, against_no_mesh)| PathReport {
            median: median(&path_rounds),
            against_no_mesh,
            rounds: path_rounds,
        })
        .collect())
}

/// Each round's figures against no mesh's in the same round, the median
/// over the rounds.
fn against_no_mesh(path: &[Scenario], baseline: &[Scenario]) -> AgainstNoMesh {
    let pairs = || path.iter().zip(baseline);
    let p99_added = |timed: fn(&Scenario) -> &Timed| {
        mid(pairs().map(|(run, base)| {
            timed(run).latency.p99_us as i64 - timed(base).latency.p99_us as i64
        }))
    };
    AgainstNoMesh {
        throughput_percent: mid(pairs()
            .map(|(run, base)| 100.0 * run.throughput_gbit_per_s / base.throughput_gbit_per_s)),
        kept_alive_p99_added_us: p99_added(|s| &s.kept_alive),
        new_connections_p99_added_us: p99_added(|s| &s.new_connections),
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
    transfer_intact(&cluster, client, server)?;
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
        kept_alive: median_timed(rounds.iter().map(|r| &r.kept_alive)),
        new_connections: median_timed(rounds.iter().map(|r| &r.new_connections)),
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
    };
    let agents = runs
        .clone()
        .map(|r| r.agents)
        .collect::<Option<Vec<AgentCost>>>()
        .map(|costs| AgentCost {
            cpu_seconds_per_1000_requests: mid(costs
                .iter()
                .map(|c| c.cpu_seconds_per_1000_requests)),
            max_rss_mib: costs.iter().map(|c| c.max_rss_mib).fold(0.0, f64::max),
        });
    Timed {
        latency,
        machine_cpu_seconds_per_1000_requests: mid(runs
            .clone()
            .map(|r| r.machine_cpu_seconds_per_1000_requests)),
        agents,
    }
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
    server: &Pod,
    agents: Option<&[NodeAgent]>,
) -> anyhow::Result<Scenario> {
    let (transfer, transfer_cpu) = with_machine_cpu(|| transfer_intact(cluster, client, server))?;
    let url = format!("http://{}:8080/bytes/{RESPONSE_BYTES}", server.ip);
    let timed = |rate, connections| timed(cluster, client, &url, rate, connections, agents);
    Ok(Scenario {
        name,
        throughput_gbit_per_s: transfer.bytes_sent as f64 * 8.0 / transfer.seconds / 1e9,
        transfer_machine_cpu_seconds_per_gib: transfer_cpu / (transfer.bytes_sent as f64 / GIB),
        kept_alive: timed(RATE, Connections::KeptAlive(CONNECTIONS))?,
        new_connections: timed(NEW_CONNECTION_RATE, Connections::PerRequest(CONNECTIONS))?,
    })
}

/// A latency run, with the agents' CPU time during it.
fn timed(
    cluster: &Cluster,
    client: &Pod,
    url: &str,
    rate: u32,
    connections: Connections,
    agents: Option<&[NodeAgent]>,
) -> anyhow::Result<Timed> {
    let usage = |agents: &[NodeAgent]| {
        agents
            .iter()
            .map(NodeAgent::usage)
            .collect::<anyhow::Result<Vec<Usage>>>()
    };
    let before = agents.map(usage).transpose()?;
    let (latency, machine_cpu) = with_machine_cpu(|| {
        testapp::latency(cluster, client.place(), url, rate, SECONDS, connections)
    })?;
    let machine_cpu_seconds_per_1000_requests = machine_cpu / (latency.requests as f64 / 1000.0);
    ensure!(latency.errors == 0, "requests failed: {latency:?}");
    let agents = match (agents, before) {
        (Some(agents), Some(before)) => {
            let after = usage(agents)?;
            let cpu: f64 = after
                .iter()
                .zip(&before)
                .map(|(a, b)| a.cpu_seconds - b.cpu_seconds)
                .sum();
            Some(AgentCost {
                cpu_seconds_per_1000_requests: cpu
                    / agents.len() as f64
                    / (latency.requests as f64 / 1000.0),
                max_rss_mib: after.iter().map(mib).fold(0.0, f64::max),
            })
        }
        _ => None,
    };
    Ok(Timed {
        latency,
        machine_cpu_seconds_per_1000_requests,
        agents,
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
    server: &Pod,
) -> anyhow::Result<TransferSummary> {
    let transfer = testapp::send(
        cluster,
        client.place(),
        SocketAddr::from((server.ip, 9100)),
        TRANSFER_BYTES,
    )?;
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

fn markdown(paths: &[PathReport]) -> String {
    let mut table = format!(
        "Single stream ({} GiB) and HTTP/1.1 at {RATE} req/s for {SECONDS} s ({CONNECTIONS} kept-alive connections, \
         {RESPONSE_BYTES}-byte responses), pod on node 1 to pod on node 2; {ROUNDS} rounds taken in turns. Figures are \
         medians over the rounds; % of no mesh and p99 added compare each round with no mesh in the same round. \
         Machine CPU is the whole machine's busy time (client, server, agents, and the kernel's work for them, \
         which the agents' own CPU time does not show).\n\n\
         | path | throughput (Gbit/s) | % of no mesh | machine CPU s / GiB | p50 (µs) | p90 (µs) | p99 (µs) | p99 added (µs) | agent CPU s / 1000 req | machine CPU s / 1000 req | agent RSS (MiB) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        TRANSFER_BYTES >> 30
    );
    for path in paths {
        let scenario = &path.median;
        let (cpu, rss) = cost(&scenario.kept_alive);
        let _ = writeln!(
            table,
            "| {} | {:.2} | {:.0}% | {:.2} | {} | {cpu} | {:.4} | {rss} |",
            scenario.name,
            scenario.throughput_gbit_per_s,
            path.against_no_mesh.throughput_percent,
            scenario.transfer_machine_cpu_seconds_per_gib,
            percentiles(
                &scenario.kept_alive,
                path.against_no_mesh.kept_alive_p99_added_us
            ),
            scenario.kept_alive.machine_cpu_seconds_per_1000_requests,
        );
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
        let (cpu, _) = cost(&scenario.new_connections);
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

/// p50, p90, p99 and the p99 added to no mesh's, as table cells.
fn percentiles(run: &Timed, p99_added_us: i64) -> String {
    let latency = &run.latency;
    format!(
        "{} | {} | {} | {p99_added_us}",
        latency.p50_us, latency.p90_us, latency.p99_us,
    )
}

/// The agents' CPU per 1000 requests and largest memory, as table cells.
fn cost(run: &Timed) -> (String, String) {
    match run.agents {
        Some(cost) => (
            format!("{:.4}", cost.cpu_seconds_per_1000_requests),
            format!("{:.1}", cost.max_rss_mib),
        ),
        None => ("-".to_string(), "-".to_string()),
    }
}
