//! `cargo xtask demo`: a two-node namespace cluster with sample apps and the
//! node agents, traffic between nodes through the mesh, a summary, then
//! Istio's Bookinfo routing through a waypoint, then teardown.

use std::net::{Ipv4Addr, SocketAddr};

use ambit_testbed::bookinfo;
use ambit_testbed::ca::TestCa;
use ambit_testbed::mesh::{self, samples, MeshConfig, NodeAgent, Source};
use ambit_testbed::testapp::{self, HttpLoad, HttpSummary, Server};
use ambit_testbed::waypoint::Waypoint;
use ambit_testbed::{Cluster, Pod};
use anyhow::{ensure, Context};

const REQUESTS: usize = 20;
const REVIEWS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const WAYPOINT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 21);

pub fn run() -> anyhow::Result<()> {
    let cluster = Cluster::builder()
        .node(&["productpage", "legacy", "waypoint"])
        .node(&["reviews-v1", "reviews-v2", "reviews-v3"])
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

    let [productpage, legacy, v1, v2, v3] = cluster.pods_named([
        "productpage",
        "legacy",
        "reviews-v1",
        "reviews-v2",
        "reviews-v3",
    ])?;
    let reviews = mesh::service("reviews", REVIEWS_VIP, 9080, 9080, &[v1, v2]);
    let config = mesh::enrolling(&cluster, &[productpage, v1, v2, v3], vec![reviews]);
    let (ca, agents) = mesh::start_secured(&cluster, &config, 3600)?;
    println!(
        "\n  ambit-ca issues workload identities; ambit-node-agent runs on every node, and\n  \
         ambit-cni handed it every pod.\n  \
         Enrolled (istio.io/dataplane-mode=ambient): productpage, reviews-v1, reviews-v2. Not enrolled: legacy.\n  \
         Service reviews.default: {REVIEWS_VIP}:9080 -> reviews-v1, reviews-v2."
    );
    for (agent, node) in agents.iter().zip(cluster.nodes()) {
        let held: Vec<String> = agent
            .certificates(&cluster)?
            .into_iter()
            .map(|(identity, _)| identity)
            .collect();
        println!("  {} holds certificates for {}", node.name, held.join(", "));
    }
    let _apps = [
        Server::new("reviews", "v1")
            .http(9080)
            .echo(9000)
            .start(&cluster, v1)?,
        Server::new("reviews", "v2")
            .http(9080)
            .start(&cluster, v2)?,
        Server::new("reviews", "v3")
            .http(9080)
            .start(&cluster, v3)?,
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

    println!(
        "\n  What each side saw (istio_tcp_connections_opened_total by reporter, \
         the caller and callee with their identities):"
    );
    print_connections(&agents, &cluster)?;
    println!("    (legacy's own calls bypass node-1's agent: it is not enrolled; they arrive in plaintext)");

    // Only productpage may call: an L4 AuthorizationPolicy, applied live.
    let mut config = config;
    config.istio = vec![serde_json::json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": { "name": "productpage-only", "namespace": "default" },
        "spec": { "action": "ALLOW", "rules": [{ "from": [{ "source": {
            "principals": ["cluster.local/ns/default/sa/productpage"] } }] }] },
    })];
    mesh::write_config(&cluster, &config)?;
    println!(
        "\n  AuthorizationPolicy default/productpage-only: ALLOW from principal \
         cluster.local/ns/default/sa/productpage"
    );
    let legacy_url = format!("http://{}:9080/", v1.ip);
    let mut refused = HttpSummary::default();
    for _ in 0..50 {
        refused = HttpLoad::new(1).run(&cluster, legacy.place(), &legacy_url)?;
        if refused.errors == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    ensure!(refused.errors == 1, "legacy was not refused: {refused:?}");
    println!("    legacy -> {legacy_url}: refused, no answer");
    let load = HttpLoad::new(REQUESTS).reconnect();
    let allowed = load.run(&cluster, productpage.place(), &vip_url)?;
    println!("    {}", describe(productpage, &vip_url, &load, &allowed));
    ensure!(
        allowed.status(200) == REQUESTS,
        "productpage was refused: {allowed:?}"
    );
    let log = agents[1].output();
    let denial = log
        .lines()
        .find(|line| line.contains("no ALLOW AuthorizationPolicy matched"))
        .context("the denial is in node-2's access log")?;
    println!("    node-2's access log: {}", denial.trim());

    bookinfo_through_a_waypoint(&cluster, &ca, config)?;

    let run = cluster.run_name().to_string();
    drop(agents);
    drop(ca);
    drop(cluster);
    println!("\n  Torn down: every namespace, cgroup and process of {run} is gone.\n");
    Ok(())
}

/// Binds reviews (v1, v2, v3) to a waypoint and applies Istio's Bookinfo
/// routing manifests one after another, printing who answered.
fn bookinfo_through_a_waypoint(
    cluster: &Cluster,
    ca: &TestCa,
    config: MeshConfig,
) -> anyhow::Result<()> {
    let [productpage, waypoint_pod, v1, v2, v3] = cluster.pods_named([
        "productpage",
        "waypoint",
        "reviews-v1",
        "reviews-v2",
        "reviews-v3",
    ])?;
    let mut config = MeshConfig {
        services: vec![
            mesh::ServiceConfig {
                waypoint: Some("waypoint".into()),
                ..mesh::service("reviews", REVIEWS_VIP, 9080, 9080, &[v1, v2, v3])
            },
            mesh::service("waypoint", WAYPOINT_VIP, 15008, 15008, &[waypoint_pod]),
        ],
        istio: bookinfo::manifest("destination-rule-all.yaml")?,
        ..config
    }
    .versioned("reviews");
    let rules = config.istio.clone();
    mesh::write_config(cluster, &config)?;
    let waypoint = Waypoint::start(
        cluster,
        waypoint_pod,
        "waypoint",
        &Source::Directory,
        Some(ca),
    )?;
    println!(
        "\n  Waypoint default/waypoint on node-1; reviews (v1, v2, v3) bound to it by istio.io/use-waypoint.\n  \
         Istio's Bookinfo manifests, unchanged (destination-rule-all.yaml, then each task's routes):"
    );
    let url = format!("http://{REVIEWS_VIP}:9080/");
    let jason = || HttpLoad::new(100).header("end-user", "jason");
    let tasks = [
        (
            "routing-all-v1.yaml",
            vec![("everyone", HttpLoad::new(100))],
        ),
        (
            "reviews-v2-for-jason.yaml",
            vec![
                ("end-user: jason", jason()),
                ("anyone else", HttpLoad::new(100)),
            ],
        ),
        ("reviews-50-v3.yaml", vec![("everyone", HttpLoad::new(400))]),
    ];
    for (file, loads) in tasks {
        config.istio = [rules.clone(), bookinfo::manifest(file)?].concat();
        waypoint.apply(cluster, &config)?;
        println!("    {file}");
        for (who, load) in loads {
            let summary = load.run(cluster, productpage.place(), &url)?;
            ensure!(
                summary.status(200) == summary.requests,
                "requests failed: {summary:?}\n{}",
                waypoint.output()
            );
            let versions: Vec<String> = summary
                .versions
                .iter()
                .map(|(version, n)| format!("{version} {n}"))
                .collect();
            println!("      {who}: {}", versions.join(", "));
        }
    }
    println!("    istio_requests_total on the waypoint (reporter=waypoint), by version and code:");
    for (labels, count) in samples(&waypoint.metrics()?, "istio_requests_total") {
        let label = |name| label(&labels, name);
        println!(
            "      {} -> {} {}: {count}",
            label("source_workload"),
            label("destination_workload"),
            label("response_code"),
        );
    }
    waypoint.stop()
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

/// Each agent's connections, one line per reporter, caller and callee.
fn print_connections(agents: &[NodeAgent], cluster: &Cluster) -> anyhow::Result<()> {
    for (agent, node) in agents.iter().zip(cluster.nodes()) {
        let metrics = agent.metrics(cluster)?;
        for (labels, count) in samples(&metrics, "istio_tcp_connections_opened_total") {
            let label = |name| label(&labels, name);
            println!(
                "    {} ({}): {} [{}] -> {} [{}] via service {}, {}: {count}",
                node.name,
                label("reporter"),
                label("source_workload"),
                label("source_principal"),
                label("destination_workload"),
                label("destination_principal"),
                label("destination_service"),
                label("connection_security_policy"),
            );
        }
    }
    Ok(())
}

/// The value of the label `name` of a sample, or `?`.
fn label<'a>(labels: &'a [(String, String)], name: &str) -> &'a str {
    labels
        .iter()
        .find(|(key, _)| key == name)
        .map_or("?", |(_, value)| value.as_str())
}
