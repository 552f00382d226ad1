//! Egress: an enrolled pod reaches a server outside the cluster (a network
//! namespace of the test bed the mesh knows nothing of) as the
//! ServiceEntries that declare it say, through its node's agent; the
//! mesh's `outboundTrafficPolicy` decides what nothing declares.

use std::net::Ipv4Addr;
use std::time::Duration;

use ambit_testbed::mesh::{self, sample, MeshConfig};
use ambit_testbed::pki::TestPki;
use ambit_testbed::testapp::{self, HttpLoad, Server};
use ambit_testbed::waypoint::Waypoint;
use ambit_testbed::{wait_for, Cluster};
use anyhow::{ensure, Context};
use serde_json::{json, Value};

/// The egress waypoint's Service.
const WAYPOINT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 70);

/// The address no one has, which the STATIC ServiceEntry declares.
const API_VIP: Ipv4Addr = Ipv4Addr::new(240, 240, 0, 10);

fn service_entry(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": { "name": name, "namespace": "default" },
        "spec": spec,
    })
}

/// A client in the mesh and a server outside the cluster (in the test
/// bed's namespace `external`, but no pod the mesh's source lists),
/// serving HTTP on 8080 and 9090; and a pod `dns` for a DNS server.
fn outside_the_cluster() -> anyhow::Result<(Cluster, ambit_testbed::Process)> {
    outside_the_cluster_with(&[])
}

/// [`outside_the_cluster`], with `more` pods beside the client.
fn outside_the_cluster_with(more: &[&str]) -> anyhow::Result<(Cluster, ambit_testbed::Process)> {
    let first: Vec<&str> = std::iter::once("client")
        .chain(more.iter().copied())
        .collect();
    let cluster = Cluster::builder()
        .node(&first)
        .node(&["external", "dns"])
        .namespace("external", "external")
        .namespace("dns", "dns")
        .build()?;
    let external = cluster.pod("external")?;
    let server = Server::new("external", "v1")
        .http(8080)
        .http(9090)
        .start(&cluster, external)?;
    Ok((cluster, server))
}

/// The mesh: `client` enrolled, the server outside it unknown to it, and
/// `istio` objects.
fn mesh_config(cluster: &Cluster, istio: Vec<Value>) -> anyhow::Result<MeshConfig> {
    let mut config = MeshConfig {
        istio,
        ..mesh::enrolling(cluster, &[cluster.pod("client")?], vec![])
    };
    config.pods.retain(|pod| pod.name != "external");
    Ok(config)
}

/// [`mesh_config`] with the waypoint `waypoint` (its Service) in `pod`.
fn with_egress_waypoint(
    cluster: &Cluster,
    istio: Vec<Value>,
    pod: &ambit_testbed::Pod,
) -> anyhow::Result<MeshConfig> {
    let mut config = mesh_config(cluster, istio)?;
    config.services.push(mesh::service(
        "waypoint",
        WAYPOINT_VIP,
        15008,
        15008,
        &[pod],
    ));
    Ok(config)
}

/// `entry` bound to the waypoint `waypoint`, an egress gateway.
fn bound_to_waypoint(mut entry: Value) -> Value {
    entry["metadata"]["labels"] = json!({ "istio.io/use-waypoint": "waypoint" });
    entry
}

/// Istio's mesh config with this `outboundTrafficPolicy.mode`.
fn outbound_policy(mode: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "istio", "namespace": "istio-system" },
        "data": { "mesh": format!("outboundTrafficPolicy:\n  mode: {mode}\n") },
    })
}

#[test]
fn service_entries_static_and_none_reach_a_server_outside_the_mesh() -> anyhow::Result<()> {
    let (cluster, _server) = outside_the_cluster()?;
    let [client, external] = cluster.pods_named(["client", "external"])?;
    let config = mesh_config(
        &cluster,
        vec![
            service_entry(
                "api",
                json!({
                    "hosts": ["api.external.example"],
                    "addresses": [API_VIP.to_string()],
                    "ports": [{ "number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080 }],
                    "location": "MESH_EXTERNAL",
                    "resolution": "STATIC",
                    "endpoints": [{ "address": external.ip.to_string() }],
                }),
            ),
            service_entry(
                "external-pods",
                json!({
                    "hosts": ["pods.external.example"],
                    "addresses": [format!("{}/32", external.ip)],
                    "ports": [{ "number": 8080, "name": "http", "protocol": "HTTP" }],
                    "location": "MESH_EXTERNAL",
                    "resolution": "NONE",
                }),
            ),
        ],
    )?;
    let (_ca, agents) = mesh::start_secured(&cluster, &config, 3600)?;
    for (url, host) in [
        (format!("http://{API_VIP}/"), "api.external.example"),
        (
            format!("http://{}:8080/", external.ip),
            "pods.external.example",
        ),
    ] {
        let summary = HttpLoad::new(5)
            .reconnect()
            .run(&cluster, client.place(), &url)?;
        ensure!(
            summary.versions.get("external/v1") == Some(&5),
            "{url}: {summary:?}\n{}",
            agents[0].output()
        );
        let opened = sample(
            &agents[0].metrics(&cluster)?,
            "istio_tcp_connections_opened_total",
            &[("reporter", "source"), ("destination_service", host)],
        );
        ensure!(opened == 5.0, "{host}: {opened} connections reported");
    }
    Ok(())
}

#[test]
fn registry_only_refuses_what_nothing_declares_and_allow_any_passes_it() -> anyhow::Result<()> {
    let (cluster, _server) = outside_the_cluster()?;
    let [client, external] = cluster.pods_named(["client", "external"])?;
    // Port 8080 of the server is declared; 9090 is not.
    let declared = service_entry(
        "external",
        json!({
            "hosts": ["external.example"],
            "addresses": [external.ip.to_string()],
            "ports": [{ "number": 8080, "name": "http" }],
            "resolution": "NONE",
        }),
    );
    let config = |mode: &str| mesh_config(&cluster, vec![declared.clone(), outbound_policy(mode)]);
    let (_ca, agents) = mesh::start_secured(&cluster, &config("REGISTRY_ONLY")?, 3600)?;
    let get = |port: u16| {
        HttpLoad::new(3).reconnect().run(
            &cluster,
            client.place(),
            &format!("http://{}:{port}/", external.ip),
        )
    };
    let summary = get(8080)?;
    ensure!(summary.status(200) == 3, "declared: {summary:?}");
    let summary = get(9090)?;
    ensure!(
        summary.errors == 3,
        "undeclared under REGISTRY_ONLY: {summary:?}"
    );
    let blocked = sample(
        &agents[0].metrics(&cluster)?,
        "istio_tcp_connections_opened_total",
        &[
            ("destination_service", "BlackHoleCluster"),
            ("response_flags", "NR"),
        ],
    );
    ensure!(blocked == 3.0, "{blocked} blocked connections reported");

    // ALLOW_ANY, applied live: the same port passes.
    mesh::write_config(&cluster, &config("ALLOW_ANY")?)?;
    wait_for("ALLOW_ANY to apply", Duration::from_secs(10), || {
        Ok(get(9090)?.status(200) == 3)
    })
    .with_context(|| agents[0].output())?;
    Ok(())
}

#[test]
fn a_dns_service_entry_reaches_the_address_the_nodes_resolver_gives() -> anyhow::Result<()> {
    let (cluster, _server) = outside_the_cluster()?;
    let [client, external, dns] = cluster.pods_named(["client", "external", "dns"])?;
    // The cluster's own resolver knows the external host; nothing else does.
    let _dns = testapp::dns_server(&cluster, dns, &[("api.external.example", external.ip)])?;
    let vip = Ipv4Addr::new(240, 240, 0, 11);
    let config = mesh_config(
        &cluster,
        vec![service_entry(
            "api-by-name",
            json!({
                "hosts": ["api.external.example"],
                "addresses": [vip.to_string()],
                "ports": [{ "number": 80, "name": "http", "targetPort": 8080 }],
                "location": "MESH_EXTERNAL",
                "resolution": "DNS",
            }),
        )],
    )?;
    mesh::write_config(&cluster, &config)?;
    let resolver = format!("{}:53", dns.ip);
    let agents = mesh::start_agents_with_args(&cluster, &mesh::Source::Directory, |_| {
        Ok(vec!["--dns-server".into(), resolver.clone().into()])
    })?;
    let summary =
        HttpLoad::new(5)
            .reconnect()
            .run(&cluster, client.place(), &format!("http://{vip}/"))?;
    ensure!(
        summary.versions.get("external/v1") == Some(&5),
        "{summary:?}\n{}",
        agents[0].output()
    );
    Ok(())
}

#[test]
fn a_pod_resolves_a_service_entry_host_only_the_mesh_knows() -> anyhow::Result<()> {
    let (cluster, _server) = outside_the_cluster()?;
    let [client, external] = cluster.pods_named(["client", "external"])?;
    // No address: the mesh gives the host one, and its agent's DNS proxy
    // answers for it; no DNS server anywhere knows the name.
    let config = mesh_config(
        &cluster,
        vec![service_entry(
            "mesh-only",
            json!({
                "hosts": ["api.mesh-only.example"],
                "ports": [{ "number": 80, "name": "http", "targetPort": 8080 }],
                "location": "MESH_EXTERNAL",
                "resolution": "STATIC",
                "endpoints": [{ "address": external.ip.to_string() }],
            }),
        )],
    )?;
    let (_ca, agents) = mesh::start_secured(&cluster, &config, 3600)?;
    // The client's resolver asks the server in the machine's resolv.conf,
    // as a pod asks its cluster's: capture answers in its stead.
    let summary = HttpLoad::new(3).reconnect().run(
        &cluster,
        client.place(),
        "http://api.mesh-only.example/",
    )?;
    ensure!(
        summary.versions.get("external/v1") == Some(&3),
        "{summary:?}\n{}",
        agents[0].output()
    );
    Ok(())
}

#[test]
fn an_egress_waypoint_originates_tls_to_an_https_server_for_a_plaintext_client(
) -> anyhow::Result<()> {
    let (cluster, _plain) = outside_the_cluster_with(&["waypoint"])?;
    let [client, external, waypoint_pod] =
        cluster.pods_named(["client", "external", "waypoint"])?;
    let work = cluster.work_dir().to_path_buf();
    let pki = TestPki::new("external-ca", &work.join("pki"))?;
    let issued = pki.server(&["api.secure.example"], &work.join("secure"))?;
    // HTTPS only, on 443: a plaintext request could not be answered.
    let _https = Server::new("secure", "v1")
        .https(443, &issued.certificate, &issued.key)
        .start(&cluster, external)?;
    // One server under four names, each with its own DestinationRule `tls`.
    let entry_and_rule = |host: &str, tls: Value| {
        let name = host.split('.').next().unwrap_or(host);
        let entry = bound_to_waypoint(service_entry(
            name,
            json!({
                "hosts": [host],
                "ports": [{ "number": 80, "name": "http", "protocol": "HTTP", "targetPort": 443 }],
                "location": "MESH_EXTERNAL",
                "resolution": "STATIC",
                "endpoints": [{ "address": external.ip.to_string() }],
            }),
        ));
        let rule = json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": { "name": name, "namespace": "default" },
            "spec": {
                "host": host,
                "trafficPolicy": { "portLevelSettings": [{ "port": { "number": 80 }, "tls": tls }] },
            },
        });
        [entry, rule]
    };
    let ca = pki.ca_file();
    let istio = [
        // The certificate names the host asked for.
        entry_and_rule("api.secure.example", json!({ "mode": "SIMPLE", "caCertificates": ca })),
        // It does not name this host: the names it must carry instead.
        entry_and_rule(
            "alias.secure.example",
            json!({ "mode": "SIMPLE", "caCertificates": ca, "subjectAltNames": ["api.secure.example"] }),
        ),
        // A CA nobody gave the waypoint, and no check at all.
        entry_and_rule("unchecked.secure.example", json!({ "mode": "SIMPLE", "insecureSkipVerify": true })),
        // Checked for its own name, which the certificate lacks: refused.
        entry_and_rule("wrong.secure.example", json!({ "mode": "SIMPLE", "caCertificates": ca })),
    ]
    .concat();
    let config = with_egress_waypoint(&cluster, istio, waypoint_pod)?;
    let (_ca, agents, waypoint) = Waypoint::start_secured(&cluster, &config, waypoint_pod)?;
    let summary = HttpLoad::new(5).run(&cluster, client.place(), "http://api.secure.example/")?;
    ensure!(
        summary.versions.get("secure/v1") == Some(&5),
        "{summary:?}\nwaypoint:\n{}\nagent:\n{}",
        waypoint.output(),
        agents[0].output()
    );
    // The waypoint counted them, to the entry's host.
    let counted = sample(
        &waypoint.metrics()?,
        "istio_requests_total",
        &[
            ("destination_service", "api.secure.example"),
            ("response_code", "200"),
        ],
    );
    ensure!(counted == 5.0, "the waypoint counted {counted}");
    for (host, answered) in [
        ("alias.secure.example", 200),
        ("unchecked.secure.example", 200),
        ("wrong.secure.example", 503),
    ] {
        let summary = HttpLoad::new(2).run(&cluster, client.place(), &format!("http://{host}/"))?;
        ensure!(
            summary.status(answered) == 2,
            "{host}: {summary:?}\nwaypoint:\n{}",
            waypoint.output()
        );
    }
    Ok(())
}

#[test]
fn an_egress_waypoint_resolves_dns_entries_and_each_requests_host_for_dynamic_dns(
) -> anyhow::Result<()> {
    let (cluster, _server) = outside_the_cluster_with(&["waypoint"])?;
    let [client, external, dns, waypoint_pod] =
        cluster.pods_named(["client", "external", "dns", "waypoint"])?;
    // Only the test cluster's resolver knows these names; `gone` it does not.
    let _dns = testapp::dns_server(
        &cluster,
        dns,
        &[
            ("api.dyn.example", external.ip),
            ("www.dyn.example", external.ip),
            ("api.byname.example", external.ip),
        ],
    )?;
    let bound = |name: &str, spec: Value| bound_to_waypoint(service_entry(name, spec));
    let entries = vec![
        bound(
            "dynamic",
            json!({
                "hosts": ["*.dyn.example"],
                "ports": [{ "number": 80, "name": "http", "targetPort": 8080 }],
                "location": "MESH_EXTERNAL",
                "resolution": "DYNAMIC_DNS",
            }),
        ),
        bound(
            "by-name",
            json!({
                "hosts": ["api.byname.example"],
                "ports": [{ "number": 80, "name": "http", "targetPort": 9090 }],
                "location": "MESH_EXTERNAL",
                "resolution": "DNS",
            }),
        ),
    ];
    let config = with_egress_waypoint(&cluster, entries, waypoint_pod)?;
    let (ca, agents) = mesh::start_secured(&cluster, &config, 3600)?;
    let resolver = format!("{}:53", dns.ip);
    let waypoint = Waypoint::start_with(
        &cluster,
        waypoint_pod,
        "waypoint",
        &mesh::Source::Directory,
        Some(&ca),
        vec![
            "--dns-server".into(),
            resolver.into(),
            // Its log for a collector: a JSON object a line.
            "--log-format=json".into(),
        ],
    )?;
    let logs = || {
        format!(
            "waypoint:\n{}\nagent:\n{}",
            waypoint.output(),
            agents[0].output()
        )
    };
    // The client resolves every name under the wildcard to the entry's one
    // address (its agent answers); the waypoint resolves each request's
    // host, at the entry's target port.
    for host in ["api.dyn.example", "www.dyn.example"] {
        let summary = HttpLoad::new(3).run(&cluster, client.place(), &format!("http://{host}/"))?;
        ensure!(
            summary.versions.get("external/v1") == Some(&3),
            "{host}: {summary:?}\n{}",
            logs()
        );
    }
    // A name under the wildcard no DNS server knows: 503, as Envoy's DNS
    // failure; a host outside the wildcard, sent to the entry's address:
    // refused (the waypoint is no open proxy).
    let address =
        std::net::SocketAddr::from((ambit_config::model::auto_address("*.dyn.example"), 80));
    for (host, status) in [("gone.dyn.example", 503), ("api.byname.example", 404)] {
        let summary = HttpLoad::new(2).connect(address).run(
            &cluster,
            client.place(),
            &format!("http://{host}/"),
        )?;
        ensure!(
            summary.statuses.get(&status) == Some(&2),
            "{host}: {summary:?}\n{}",
            logs()
        );
    }
    // A DNS entry bound to the waypoint: the waypoint resolves its host.
    let summary = HttpLoad::new(3).run(&cluster, client.place(), "http://api.byname.example/")?;
    ensure!(
        summary.versions.get("external/v1") == Some(&3),
        "{summary:?}\n{}",
        logs()
    );
    // Each went through the waypoint, a failed resolution flagged as such.
    let metrics = waypoint.metrics()?;
    let counted = |service: &str, code: &str, flags: &str| {
        sample(
            &metrics,
            "istio_requests_total",
            &[
                ("destination_service", service),
                ("response_code", code),
                ("response_flags", flags),
            ],
        )
    };
    let seen = [
        counted("*.dyn.example", "200", "-"),
        counted("*.dyn.example", "503", "DF"),
        counted("*.dyn.example", "404", "NR"),
        counted("api.byname.example", "200", "-"),
    ];
    ensure!(
        seen == [6.0, 2.0, 2.0, 3.0],
        "the waypoint counted {seen:?}"
    );
    // Its access lines, as JSON, carry the plain line's fields; one per
    // request, with the status each got (written out within a second).
    let access = || -> Vec<Value> {
        waypoint
            .output()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["target"] == "access")
            .collect()
    };
    wait_for("the access lines", Duration::from_secs(3), || {
        Ok(access().len() == 13)
    })
    .with_context(|| waypoint.output())?;
    let fields = [
        "method",
        "path",
        "status",
        "flags",
        "host",
        "upstream",
        "route",
        "source",
        "duration_ms",
        "request_bytes",
        "response_bytes",
    ];
    let lines = access();
    for line in &lines {
        for field in fields {
            ensure!(line.get(field).is_some(), "{field} missing: {line}");
        }
    }
    let status = |code: u64| lines.iter().filter(|l| l["status"] == code).count();
    ensure!(
        (status(200), status(503), status(404)) == (9, 2, 2),
        "{lines:?}"
    );
    Ok(())
}
