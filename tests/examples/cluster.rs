//! Builds a namespace cluster and keeps it until Ctrl-C, for poking around:
//!
//! ```text
//! cargo run -p ambit-testbed --example cluster -- 2 2    # 2 nodes, 2 pods each
//! ```
//!
//! Every pod runs the test app (HTTP on 8080, TCP echo on 9000). The first
//! line printed is `run <name>`; the test bed's own tests rely on it.

use ambit_testbed::testapp::Server;
use ambit_testbed::Cluster;
use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).map(|arg| arg.parse::<usize>());
    let nodes = args.next().unwrap_or(Ok(2)).context("nodes: a number")?;
    let pods_per_node = args
        .next()
        .unwrap_or(Ok(1))
        .context("pods per node: a number")?;

    let names: Vec<Vec<String>> = (1..=nodes)
        .map(|node| {
            (1..=pods_per_node)
                .map(|pod| format!("pod-{node}-{pod}"))
                .collect()
        })
        .collect();
    let cluster = names
        .iter()
        .fold(Cluster::builder(), |builder, pods| {
            builder.node(&pods.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .build()?;
    println!("run {}", cluster.run_name());
    let servers = cluster
        .pods()
        .iter()
        .map(|pod| {
            Server::new(&pod.name, "v1")
                .http(8080)
                .echo(9000)
                .start(&cluster, pod)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (pod, server) in cluster.pods().iter().zip(&servers) {
        println!(
            "pod {} on {}: {} (test app pid {}); enter with `ip netns exec {}-{} bash`",
            pod.name,
            pod.node,
            pod.ip,
            server.pid(),
            cluster.run_name(),
            pod.name
        );
    }
    println!("Ctrl-C tears it all down.");
    loop {
        std::thread::park();
    }
}
