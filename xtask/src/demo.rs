//! `cargo xtask demo`: a two-node namespace cluster with sample apps and the
//! node agents, traffic between nodes through the mesh, a summary; then
//! Istio's Bookinfo behind an ingress gateway and a waypoint, driven by
//! Istio's own YAML; then teardown.

use std::net::{Ipv4Addr, SocketAddr};

use ambit_testbed::bookinfo::{self, Bookinfo, GATEWAY_POD, OUTSIDE_POD};
use ambit_testbed::mesh::{self, samples, NodeAgent};
use ambit_testbed::testapp::{self, HttpLoad, HttpSummary, Server};
use ambit_testbed::{Cluster, Pod};
use anyhow::{ensure, Context};

const REQUESTS: usize = 20;
const REVIEWS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
/// The port the seeds' Gateway listens on.
const GATEWAY_PORT: u16 = 8080;

pub fn run() -> anyhow::Result<()> {
    let cluster = Cluster::builder()
        .node(&["productpage", "legacy"])
        .node(&["reviews-v1", "reviews-v2", "reviews-v3", "external"])
        .namespace("external", "external")
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
    let mut config = mesh::enrolling(&cluster, &[productpage, v1, v2, v3], vec![reviews]);
    // `external` stands for a server outside the cluster: no pod the mesh knows.
    config.pods.retain(|pod| pod.name != "external");
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

    egress(&cluster, config)?;

    let run = cluster.run_name().to_string();
    drop(agents);
    drop(ca);
    drop(cluster);
    println!("\n  Torn down: every namespace, cgroup and process of {run} is gone.");

    bookinfo_through_the_gateway()?;
    println!("\n  Torn down.\n");
    Ok(())
}

/// A ServiceEntry for a host only the mesh knows, outside the cluster: an
/// enrolled pod resolves it (its agent answers the DNS query) and reaches
/// it through its agent.
fn egress(cluster: &Cluster, mut config: mesh::MeshConfig) -> anyhow::Result<()> {
    let [productpage, external] = cluster.pods_named(["productpage", "external"])?;
    let _server = Server::new("external-api", "v1")
        .http(8080)
        .start(cluster, external)?;
    config.istio.push(serde_json::json!({
        "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": { "name": "external-api", "namespace": "default" },
        "spec": {
            "hosts": ["api.external.example"],
            "ports": [{ "number": 80, "name": "http", "targetPort": 8080 }],
            "location": "MESH_EXTERNAL", "resolution": "STATIC",
            "endpoints": [{ "address": external.ip.to_string() }],
        },
    }));
    mesh::write_config(cluster, &config)?;
    println!(
        "\n  ServiceEntry default/external-api: api.external.example (no address; no DNS server knows the name)\n  \
         -> {}:8080, a server outside the cluster.",
        external.ip
    );
    let url = "http://api.external.example/";
    let load = HttpLoad::new(REQUESTS).reconnect();
    let mut summary = HttpSummary::default();
    for _ in 0..50 {
        summary = load.run(cluster, productpage.place(), url)?;
        if summary.status(200) == REQUESTS {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    ensure!(
        summary.status(200) == REQUESTS,
        "egress failed: {summary:?}"
    );
    println!("    {}", describe(productpage, url, &load, &summary));
    println!(
        "    (productpage's DNS query was answered by node-1's agent with the address the mesh gives the host,\n     \
         and its connections to that address sent on to the entry's endpoint)"
    );
    Ok(())
}

/// Bookinfo on a cluster of its own: the test app in each of its roles,
/// all bound to a waypoint, an ingress gateway in front; the seeds'
/// `bookinfo-gateway.yaml` and Istio's routing tasks applied unchanged one
/// after another, `/productpage` asked for from outside the mesh each time.
fn bookinfo_through_the_gateway() -> anyhow::Result<()> {
    let bookinfo = Bookinfo::start_with_gateway()?;
    let outside = bookinfo.cluster.pod(OUTSIDE_POD)?;
    let gateway = bookinfo.cluster.pod(GATEWAY_POD)?;
    println!(
        "\n  Bookinfo on a second cluster: productpage, details, reviews v1/v2/v3 and ratings (the test app\n  \
         in each role, calling each other as Bookinfo's services do), all bound to the waypoint;\n  \
         ambit-waypoint --mode gateway as istio-system/{GATEWAY_POD} ({}, labelled istio: ingressgateway);\n  \
         a client outside the mesh ({}, namespace outside).\n  \
         Istio's manifests, unchanged: destination-rule-all.yaml, bookinfo-gateway.yaml, then each task's routes.",
        gateway.ip, outside.ip
    );
    let gateway_yaml = bookinfo::manifest("bookinfo-gateway.yaml")?;
    let url = |path: &str| format!("http://{}:{GATEWAY_PORT}{path}", gateway.ip);
    let jason = || HttpLoad::new(REQUESTS).header("end-user", "jason");
    let tasks = [
        (
            "routing-all-v1.yaml",
            vec![("everyone", HttpLoad::new(REQUESTS))],
        ),
        (
            "reviews-v2-for-jason.yaml",
            vec![
                ("end-user: jason", jason()),
                ("anyone else", HttpLoad::new(REQUESTS)),
            ],
        ),
        ("reviews-50-v3.yaml", vec![("everyone", HttpLoad::new(100))]),
    ];
    for (task, loads) in tasks {
        bookinfo.apply([gateway_yaml.clone(), bookinfo::manifest(task)?].concat())?;
        println!("    {task}: GET {} from outside", url("/productpage"));
        for (who, load) in loads {
            let summary = bookinfo.outside_to(load, &url("/productpage"), GATEWAY_PORT)?;
            ensure!(
                summary.status(200) == summary.requests,
                "requests failed: {summary:?}\n{}",
                bookinfo.outputs()
            );
            for (chain, count) in &summary.chains {
                println!("      {who}: {count} x {chain}");
            }
        }
    }
    let refused = bookinfo.outside_to(HttpLoad::new(1), &url("/admin"), GATEWAY_PORT)?;
    ensure!(refused.status(404) == 1, "/admin was routed: {refused:?}");
    println!(
        "    GET {}: 404, no route (the seeds' VirtualService exposes five paths)",
        url("/admin")
    );
    let gateway_proxy = bookinfo
        .gateway
        .as_ref()
        .context("started with a gateway")?;
    println!("    istio_requests_total, by reporter (the gateway reports as source, the waypoint as waypoint):");
    for (proxy, metrics) in [
        ("gateway", gateway_proxy.metrics()?),
        ("waypoint", bookinfo.waypoint.metrics()?),
    ] {
        for (labels, count) in samples(&metrics, "istio_requests_total") {
            let label = |name| label(&labels, name);
            println!(
                "      {proxy}: {} -> {} ({}) {}: {count}",
                label("source_workload"),
                label("destination_workload"),
                label("destination_service_name"),
                label("response_code"),
            );
        }
    }
    stat_and_graph(&bookinfo)
}

/// `ambit stat` by workload (the reviews split the tasks applied shows)
/// and `ambit graph`, as a user would run them on the proxies' metrics.
fn stat_and_graph(bookinfo: &Bookinfo) -> anyhow::Result<()> {
    let cluster = &bookinfo.cluster;
    let ambit = cluster.binaries().get("ambit")?;
    let metrics: Vec<String> = bookinfo
        .metrics_targets()?
        .iter()
        .flat_map(|(_, addr)| ["--metrics".to_string(), addr.to_string()])
        .collect();
    let node = cluster.node("node-1")?;
    let run = |args: Vec<String>| -> anyhow::Result<String> {
        let output = cluster.run(
            node.place(),
            &ambit,
            &args,
            std::time::Duration::from_secs(20),
        )?;
        ensure!(
            output.status.success(),
            "ambit {}: {output:?}",
            args.join(" ")
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    println!("    ambit stat --by workload (all the tasks' traffic, as the waypoint saw it):");
    let stat = run([
        vec!["stat".into(), "--by".into(), "workload".into()],
        metrics.clone(),
    ]
    .concat())?;
    for line in stat.lines() {
        println!("      {line}");
    }
    let svg = std::env::temp_dir().join("ambit-demo-mesh.svg");
    run([
        vec!["graph".into(), "-o".into(), svg.display().to_string()],
        metrics,
    ]
    .concat())?;
    println!(
        "    ambit graph: the service graph drawn in {}",
        svg.display()
    );
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
