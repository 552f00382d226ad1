//! `cargo xtask demo`: a two-node namespace cluster with sample apps and the
//! node agents, traffic between nodes through the mesh, a summary, then
//! teardown.

use std::net::{Ipv4Addr, SocketAddr};

use ambit_testbed::mesh::{self, sample};
use ambit_testbed::testapp::{self, HttpLoad, HttpSummary, Server};
use ambit_testbed::{Cluster, Pod};
use anyhow::{ensure, Context};

const REQUESTS: usize = 20;
const REVIEWS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);

pub fn run() -> anyhow::Result<()> {
    let cluster = Cluster::builder()
        .node(&["productpage", "legacy"])
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

    let [productpage, legacy, v1, v2] = ["productpage", "legacy", "reviews-v1", "reviews-v2"]
        .map(|name| cluster.pod(name).expect("a pod of the demo"));
    let reviews = mesh::service("reviews", REVIEWS_VIP, 9080, 9080, &[v1, v2]);
    mesh::write_config(
        &cluster,
        &mesh::enrolling(&cluster, &[productpage, v1, v2], vec![reviews]),
    )?;
    let agents = mesh::start_agents(&cluster)?;
    println!(
        "\n  ambit-node-agent runs on every node; ambit-cni handed it every pod.\n  \
         Enrolled (istio.io/dataplane-mode=ambient): productpage, reviews-v1, reviews-v2. Not enrolled: legacy.\n  \
         Service reviews.default: {REVIEWS_VIP}:9080 -> reviews-v1, reviews-v2."
    );
    let _apps = [
        Server::new("reviews", "v1")
            .http(9080)
            .echo(9000)
            .start(&cluster, v1)?,
        Server::new("reviews", "v2")
            .http(9080)
            .start(&cluster, v2)?,
    ];

    println!("\n  Traffic:");
    let vip_url = format!("http://{REVIEWS_VIP}:9080/");
    let runs = [
        (
            productpage,
            vip_url.as_str(),
            HttpLoad::new(REQUESTS).reconnect(),
        ),
        (
            productpage,
            &format!("http://{}:9080/", v2.ip),
            HttpLoad::new(REQUESTS).http2(true),
        ),
        (
            legacy,
            &format!("http://{}:9080/", v1.ip),
            HttpLoad::new(REQUESTS),
        ),
    ];
    for (from, url, load) in runs {
        let summary = load.run(&cluster, from.place(), url)?;
        println!("    {}", describe(from, url, &load, &summary));
        ensure!(
            summary.status(200) == REQUESTS,
            "requests failed: {summary:?}"
        );
    }
    let echo_addr = SocketAddr::from((v1.ip, 9000));
    let echoed = testapp::echo(&cluster, productpage.place(), echo_addr, "hello over TCP")?;
    println!(
        "    productpage -> {echo_addr} TCP echo: sent \"hello over TCP\", got back \"{echoed}\""
    );
    ensure!(
        echoed == "hello over TCP",
        "the echo came back as {echoed:?}"
    );

    println!("\n  What the agents counted (istio_tcp_connections_opened_total):");
    for (agent, node) in agents.iter().zip(cluster.nodes()) {
        let metrics = agent.metrics(&cluster)?;
        let count = |reporter| {
            sample(
                &metrics,
                "istio_tcp_connections_opened_total",
                &[("reporter", reporter)],
            )
        };
        println!(
            "    {}: {} outbound (reporter=source), {} inbound (reporter=destination)",
            node.name,
            count("source"),
            count("destination")
        );
    }
    println!("    (legacy's own calls bypass node-1's agent: it is not enrolled)");

    let run = cluster.run_name().to_string();
    drop(agents);
    drop(cluster);
    println!("\n  Torn down: every namespace, cgroup and process of {run} is gone.\n");
    Ok(())
}

fn describe(from: &Pod, url: &str, load: &HttpLoad, summary: &HttpSummary) -> String {
    let protocol = format!("{load}");
    let statuses: Vec<String> = summary
        .statuses
        .iter()
        .map(|(code, n)| format!("{n} x {code}"))
        .collect();
    let versions: Vec<String> = summary
        .versions
        .iter()
        .map(|(version, n)| format!("{version} {n}"))
        .collect();
    let peers: Vec<String> = summary.peers.keys().cloned().collect();
    format!(
        "{} -> {url} {protocol}: {}; answered by {}; the server saw the caller as {}",
        from.name,
        statuses.join(", "),
        versions.join(", "),
        peers.join(", ")
    )
}
