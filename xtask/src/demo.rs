//! `cargo xtask demo`: a two-node namespace cluster with sample apps and the
//! node agents, traffic between nodes, a summary, then teardown.

use std::net::SocketAddr;
use std::time::Duration;

use ambit_testbed::testapp::{self, HttpSummary};
use ambit_testbed::{Cluster, Node, Pod, Process};
use anyhow::{ensure, Context};

const REQUESTS: usize = 20;
const READINESS_PORT: u16 = 15021;

pub fn run() -> anyhow::Result<()> {
    let cluster = Cluster::builder()
        .node(&["productpage"])
        .node(&["reviews-v1", "reviews-v2"])
        .build()
        .context("building the namespace cluster")?;
    println!("\nAmbit demo: a 2-node cluster built from network namespaces\n");
    for node in cluster.nodes() {
        let pods: Vec<String> = cluster
            .pods()
            .iter()
            .filter(|pod| pod.node == node.name)
            .map(|pod| format!("{} {}", pod.name, pod.ip))
            .collect();
        println!(
            "  {}  {}  pods: {}",
            node.name,
            node.underlay_ip,
            pods.join(", ")
        );
    }

    let _agents = cluster
        .nodes()
        .iter()
        .map(|node| start_agent(&cluster, node))
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!(
        "\n  ambit-node-agent runs on every node: BPF capture attached to the node's pods cgroup, \
         ready on :{READINESS_PORT}/healthz/ready.\n  No pod is enrolled yet, so traffic goes pod to pod directly."
    );

    let client = cluster.pod("productpage")?;
    let v1 = cluster.pod("reviews-v1")?;
    let v2 = cluster.pod("reviews-v2")?;
    let _apps = [
        testapp::serve(&cluster, v1, "reviews", "v1", &[9080], &[9000])?,
        testapp::serve(&cluster, v2, "reviews", "v2", &[9080], &[])?,
    ];

    println!(
        "\n  Traffic from {} ({}, {}):",
        client.name, client.ip, client.node
    );
    for (server, http2) in [(v1, false), (v2, true)] {
        let url = format!("http://{}:9080/", server.ip);
        let summary = testapp::http(&cluster, client.place(), &url, REQUESTS, http2)?;
        println!("    {}", describe(server, http2, &summary));
        ensure!(
            summary.status(200) == REQUESTS,
            "requests failed: {summary:?}"
        );
    }
    let echo_addr = SocketAddr::from((v1.ip, 9000));
    let echoed = testapp::echo(&cluster, client.place(), echo_addr, "hello over TCP")?;
    println!(
        "    -> {} TCP echo {echo_addr}: sent \"hello over TCP\", got back \"{echoed}\"",
        v1.name
    );
    ensure!(
        echoed == "hello over TCP",
        "the echo came back as {echoed:?}"
    );

    let run = cluster.run_name().to_string();
    drop(cluster);
    println!("\n  Torn down: every namespace, cgroup and process of {run} is gone.\n");
    Ok(())
}

fn start_agent(cluster: &Cluster, node: &Node) -> anyhow::Result<Process> {
    let binary = cluster.binaries().get("ambit-node-agent")?;
    let bpf_object = cluster.binaries().bpf_object()?;
    let agent = cluster.spawn(
        node.place(),
        "node-agent",
        &binary,
        [
            "--capture-cgroup".as_ref(),
            node.pods_cgroup().as_os_str(),
            "--bpf-object".as_ref(),
            bpf_object.as_os_str(),
        ],
    )?;
    let readiness = SocketAddr::from((node.bridge_ip, READINESS_PORT));
    node.place()
        .wait_for_listener(readiness, Duration::from_secs(10))
        .with_context(|| {
            format!(
                "the node agent on {} did not start:\n{}",
                node.name,
                agent.output()
            )
        })?;
    let probe = testapp::http(
        cluster,
        node.place(),
        &format!("http://{readiness}/healthz/ready"),
        1,
        false,
    )?;
    ensure!(
        probe.status(200) == 1,
        "the node agent on {} is not ready: {probe:?}",
        node.name
    );
    Ok(agent)
}

fn describe(server: &Pod, http2: bool, summary: &HttpSummary) -> String {
    let protocol = if http2 { "HTTP/2 (h2c)" } else { "HTTP/1.1" };
    let statuses: Vec<String> = summary
        .statuses
        .iter()
        .map(|(code, n)| format!("{n} x {code}"))
        .collect();
    let versions: Vec<String> = summary.versions.keys().cloned().collect();
    let peers: Vec<String> = summary.peers.keys().cloned().collect();
    format!(
        "-> {} {protocol}: {} requests, {}; answered by {}; the server saw the caller as {}",
        server.name,
        summary.requests,
        statuses.join(", "),
        versions.join(", "),
        peers.join(", ")
    )
}
