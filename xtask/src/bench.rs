//! `cargo xtask bench`: the data path's cost, measured on the namespace
//! cluster with release builds, next to the same traffic with no mesh.
//! Figures are reported, not asserted.

use std::fmt::Write;
use std::net::SocketAddr;

use ambit_testbed::mesh::{self, sample, NodeAgent};
use ambit_testbed::testapp::{self, HttpLoad, LatencySummary, Server};
use ambit_testbed::{Binaries, Cluster, Pod};
use anyhow::{ensure, Context};
use serde::Serialize;

use crate::Workspace;

/// Bytes moved for the single-stream throughput figure.
const TRANSFER_BYTES: u64 = 4 << 30;
const RATE: u32 = 1000;
const SECONDS: u32 = 10;
const CONNECTIONS: u32 = 8;
const RESPONSE_BYTES: usize = 1024;

#[derive(Serialize)]
struct Scenario {
    name: &'static str,
    throughput_gbit_per_s: f64,
    latency: LatencySummary,
}

pub fn run(workspace: &Workspace) -> anyhow::Result<()> {
    crate::run(
        workspace
            .cargo()
            .args(["build", "--release", "--workspace", "--bins"]),
    )?;
    let binaries = Binaries::in_dir(&workspace.target.join("release"))?;
    let cluster = Cluster::builder()
        .binaries(binaries)
        .node(&["client"])
        .node(&["server"])
        .build()?;
    let [client, server] =
        ["client", "server"].map(|name| cluster.pod(name).expect("a pod of the bench"));
    mesh::write_config(&cluster, &mesh::enrolling(&[], vec![]))?;
    let agents = mesh::start_agents(&cluster)?;
    let _server = Server::new("server", "v1")
        .http(8080)
        .sink(9100)
        .start(&cluster, server)?;

    let mut scenarios = vec![measure(&cluster, "no mesh", client, server)?];
    mesh::write_config(&cluster, &mesh::enrolling(&[client, server], vec![]))?;
    wait_for_capture(&cluster, &agents[0], client, server)?;
    scenarios.push(measure(&cluster, "agents, plaintext L4", client, server)?);

    let report = markdown(&scenarios);
    println!("\n{report}");
    let dir = workspace.target.join("bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("l4.json"), serde_json::to_vec_pretty(&scenarios)?)?;
    std::fs::write(dir.join("l4.md"), report)?;
    println!("Saved to {}/l4.json and l4.md", dir.display());
    Ok(())
}

fn measure(
    cluster: &Cluster,
    name: &'static str,
    client: &Pod,
    server: &Pod,
) -> anyhow::Result<Scenario> {
    println!("bench: {name}: {} GiB in one stream", TRANSFER_BYTES >> 30);
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
    println!("bench: {name}: {RATE} requests/s for {SECONDS} s, {RESPONSE_BYTES}-byte responses");
    let url = format!("http://{}:8080/bytes/{RESPONSE_BYTES}", server.ip);
    let latency = testapp::latency(cluster, client.place(), &url, RATE, SECONDS, CONNECTIONS)?;
    ensure!(latency.errors == 0, "requests failed: {latency:?}");
    Ok(Scenario {
        name,
        throughput_gbit_per_s: transfer.bytes_sent as f64 * 8.0 / transfer.seconds / 1e9,
        latency,
    })
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

fn markdown(scenarios: &[Scenario]) -> String {
    let baseline = &scenarios[0];
    let mut table = format!(
        "Single stream ({} GiB) and HTTP/1.1 at {RATE} req/s ({CONNECTIONS} connections, {RESPONSE_BYTES}-byte responses), \
         pod on node 1 to pod on node 2.\n\n\
         | path | throughput (Gbit/s) | % of no mesh | p50 (µs) | p90 (µs) | p99 (µs) | p99 added (µs) |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
        TRANSFER_BYTES >> 30
    );
    for scenario in scenarios {
        let _ = writeln!(
            table,
            "| {} | {:.2} | {:.0}% | {} | {} | {} | {} |",
            scenario.name,
            scenario.throughput_gbit_per_s,
            100.0 * scenario.throughput_gbit_per_s / baseline.throughput_gbit_per_s,
            scenario.latency.p50_us,
            scenario.latency.p90_us,
            scenario.latency.p99_us,
            scenario.latency.p99_us as i64 - baseline.latency.p99_us as i64,
        );
    }
    table
}
