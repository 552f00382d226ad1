//! The waypoint: it reads the mesh from either source and shows, on its
//! admin port, the Services bound to it and the policy that applies to
//! them; the agents send those Services' traffic through it, and it routes
//! each request by the user's VirtualServices and DestinationRules.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ambit_identity::Identity;
use ambit_mesh_source::view::{VIEW_LABEL, VIEW_PORT};

use ambit_testbed::apiserver::ApiServer;
use ambit_testbed::bookinfo;
use ambit_testbed::hbone::get_through;
use ambit_testbed::mesh::{self, sample, AgentPort, MeshConfig, Source};
use ambit_testbed::testapp::{self, HttpLoad, Messages, Server};
use ambit_testbed::waypoint::Waypoint;
use ambit_testbed::Cluster;
use anyhow::Context;
use serde_json::json;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const VIEW_REQUESTS: &str = "ambit_mesh_view_requests_total";

#[test]
fn a_waypoint_follows_its_bindings_from_every_source() -> anyhow::Result<()> {
    let cluster = Cluster::builder().node(&["waypoint", "reviews"]).build()?;
    let [waypoint_pod, reviews] = cluster.pods_named(["waypoint", "reviews"])?;
    let config = |bound: bool, view: bool| {
        let mut config = MeshConfig {
            services: vec![mesh::ServiceConfig {
                waypoint: bound.then(|| "waypoint".to_string()),
                ..mesh::service("reviews", VIP, 9080, 9080, &[reviews])
            }],
            ..mesh::enrolling(&cluster, &[reviews], vec![])
        };
        // As Istio labels a waypoint's pods: its node's agent serves it
        // the mesh view. The reviews pod claims the label too, but does not
        // run as an account the agents serve.
        if view {
            for pod in &mut config.pods {
                pod.labels.push((VIEW_LABEL.into(), "waypoint".into()));
            }
        }
        config
    };
    let api = ApiServer::start(&cluster)?;
    let kubeconfig = Source::Kubeconfig(api.kubeconfig().to_path_buf());
    for source in [Source::Directory, kubeconfig.clone(), Source::AgentView] {
        let publish = |bound| match &source {
            Source::Directory => mesh::write_config(&cluster, &config(bound, true)),
            _ => api.apply(&config(bound, true)),
        };
        publish(true)?;
        // The view's agent reads the API server; the waypoint is given no
        // access to it.
        let mut agents = match source {
            Source::AgentView => Some(mesh::start_agents_with_args(&cluster, &kubeconfig, |_| {
                Ok(vec!["--mesh-view-for=default/waypoint".into()])
            })?),
            _ => None,
        };
        let waypoint = Waypoint::start(&cluster, waypoint_pod, "waypoint", &source, None)?;
        let dump = waypoint.config_dump()?;
        assert_eq!(dump["waypoint"], "default/waypoint", "{source:?}");
        assert_eq!(
            dump["services"],
            json!([{
                "service": "default/reviews",
                "host": "reviews.default.svc.cluster.local",
                "virtualService": null,
                "destinationRules": [],
            }]),
            "{source:?}"
        );
        assert_eq!(
            dump["mesh"]["services"]["default/reviews"]["vips"],
            json!([VIP]),
            "{source:?}: the whole model is in the dump"
        );
        if let Some(agents) = &mut agents {
            the_view_passes_on_only_what_the_mesh_reads(&cluster, &api, &agents[0])?;
            // The agent is replaced (an upgrade): the waypoint's watches
            // resume through the next one, and the change below reaches it.
            agents[0].restart(&cluster)?;
        }

        // The Service leaves the waypoint: the waypoint follows.
        publish(false)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while waypoint.config_dump()?["services"] != json!([]) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{source:?}: the waypoint never saw the Service leave"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        waypoint.stop()?;
        if let Source::AgentView = source {
            // The label goes: so does the view, watches and all.
            api.apply(&config(false, false))?;
            let deadline = Instant::now() + Duration::from_secs(10);
            let view = SocketAddr::from((Ipv4Addr::LOCALHOST, VIEW_PORT));
            while waypoint_pod.place().http_get(view, "/version").is_ok() {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the view outlived its pod's label"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    Ok(())
}

/// The mesh view in the waypoint's pod refuses what the mesh is not read
/// from, and passes pods on without what the model does not read; a pod
/// that only claims the label has none.
fn the_view_passes_on_only_what_the_mesh_reads(
    cluster: &Cluster,
    api: &ApiServer,
    agent: &mesh::NodeAgent,
) -> anyhow::Result<()> {
    let [waypoint, reviews] = cluster.pods_named(["waypoint", "reviews"])?;
    let view = SocketAddr::from((Ipv4Addr::LOCALHOST, VIEW_PORT));
    api.server()
        .apply(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "billing", "namespace": "default", "uid": "billing-uid" },
            "spec": {
                "nodeName": "elsewhere", "serviceAccountName": "billing",
                "containers": [{ "name": "app", "env": [{ "name": "DB_PASSWORD", "value": "hunter2" }] }],
            },
            "status": { "podIP": "10.9.9.9" },
        }))
        .map_err(|refusal| anyhow::anyhow!("{}", refusal.message))?;
    let (code, pods) = waypoint.place().http_get(view, "/api/v1/pods")?;
    assert_eq!(code, 200, "{pods}");
    assert!(pods.contains("\"billing\""), "the view lists pods: {pods}");
    assert!(
        !pods.contains("hunter2") && !pods.contains("DB_PASSWORD"),
        "a pod's environment reached the waypoint: {pods}"
    );
    for refused in [
        "/api/v1/secrets",
        "/api/v1/namespaces/default/secrets/tls",
        "/api/v1/configmaps",
        "/api/v1/namespaces/default/pods/billing",
    ] {
        let (code, answer) = waypoint.place().http_get(view, refused)?;
        assert_eq!(code, 403, "{refused}: {answer}");
    }
    assert!(
        reviews.place().http_get(view, "/api/v1/pods").is_err(),
        "a pod labelled for the view, of an account not named for it, reaches one"
    );
    // The agent counts them: the four refusals, and the waypoint's reads.
    let metrics = agent.metrics(cluster)?;
    let requests = |outcome| sample(&metrics, VIEW_REQUESTS, &[("outcome", outcome)]);
    assert_eq!(requests("refused"), 4.0, "{metrics}");
    assert!(requests("passed") > 1.0, "{metrics}");
    // And shows whom it serves.
    let (_, dump) = agent.get(cluster, AgentPort::Admin, "/config_dump")?;
    let dump: serde_json::Value = serde_json::from_str(&dump)?;
    let served: Vec<&str> = dump["pods"]
        .as_array()
        .context("the agent's pods")?
        .iter()
        .filter(|pod| pod["meshView"] == true)
        .filter_map(|pod| pod["name"].as_str())
        .collect();
    assert_eq!(served, ["waypoint"], "{dump}");
    Ok(())
}

const REVIEWS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 31);
const WAYPOINT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 32);
const GRPC_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 34);

/// Bookinfo's reviews subsets, each pod its own version (test pods are
/// labelled `app: <pod name>`).
fn reviews_rules(virtual_service: Option<serde_json::Value>) -> Vec<serde_json::Value> {
    let subset =
        |name: &str| json!({ "name": name, "labels": { "app": format!("reviews-{name}") } });
    let rule = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": { "name": "reviews", "namespace": "default" },
        "spec": { "host": "reviews", "subsets": [subset("v1"), subset("v2")] },
    });
    let routes = virtual_service.map(|http| {
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": { "name": "reviews", "namespace": "default" },
            "spec": { "hosts": ["reviews"], "http": http },
        })
    });
    std::iter::once(rule).chain(routes).collect()
}

/// A route of `(subset, weight)` destinations.
fn split(weights: &[(&str, u32)]) -> serde_json::Value {
    let destinations: Vec<_> = weights
        .iter()
        .map(|(subset, weight)| json!({ "destination": { "host": "reviews", "subset": subset }, "weight": weight }))
        .collect();
    json!([{ "route": destinations }])
}

#[test]
fn a_bound_services_requests_are_routed_through_the_waypoint_by_its_virtual_service(
) -> anyhow::Result<()> {
    let cluster = Cluster::builder()
        .node(&["client", "waypoint"])
        .node(&["reviews-v1", "reviews-v2"])
        .build()?;
    let [client, waypoint_pod, v1, v2] =
        cluster.pods_named(["client", "waypoint", "reviews-v1", "reviews-v2"])?;
    let config = |routes: Option<serde_json::Value>| MeshConfig {
        istio: reviews_rules(routes),
        ..mesh::enrolling(
            &cluster,
            &[client, v1, v2],
            vec![
                mesh::ServiceConfig {
                    waypoint: Some("waypoint".to_string()),
                    ..mesh::service("reviews", REVIEWS_VIP, 9080, 9080, &[v1, v2])
                },
                // A gRPC port: HTTP/2 to the endpoint too.
                mesh::ServiceConfig {
                    waypoint: Some("waypoint".to_string()),
                    port_name: "grpc".into(),
                    ..mesh::service("ratings", GRPC_VIP, 9090, 9090, &[v1])
                },
                mesh::service("waypoint", WAYPOINT_VIP, 15008, 15008, &[waypoint_pod]),
            ],
        )
    };
    let (_ca, agents, waypoint) = Waypoint::start_secured(&cluster, &config(None), waypoint_pod)?;
    let _servers = [
        Server::new("reviews", "v1")
            .http(9080)
            .http(9090)
            .start(&cluster, v1)?,
        Server::new("reviews", "v2")
            .http(9080)
            .start(&cluster, v2)?,
    ];
    let url = format!("http://{REVIEWS_VIP}:9080/reviews/0");
    let run = |requests| {
        HttpLoad::new(requests)
            .run(&cluster, client.place(), &url)
            .with_context(|| {
                format!(
                    "waypoint:\n{}\nagent:\n{}",
                    waypoint.output(),
                    agents[0].output()
                )
            })
    };

    // No VirtualService: the Service's own endpoints, through the waypoint
    // (the apps see the waypoint as their caller).
    let summary = run(40)?;
    let waypoint_ip = waypoint_pod.ip.to_string();
    anyhow::ensure!(
        summary.status(200) == 40
            && summary.peers.get(&waypoint_ip) == Some(&40)
            && summary.versions.len() == 2,
        "both versions answer the waypoint: {summary:?}\n{}",
        waypoint.output()
    );

    // HTTP/2 from the client; a gibibyte uploaded in one streamed body; a
    // gRPC-style answer whose status is in its trailers, unary and
    // streaming; a WebSocket.
    let summary = HttpLoad::new(20)
        .http2(true)
        .run(&cluster, client.place(), &url)?;
    anyhow::ensure!(
        summary.status(200) == 20,
        "h2c through the waypoint: {summary:?}"
    );
    let upload_url = format!("http://{REVIEWS_VIP}:9080/upload");
    let uploaded = testapp::upload(&cluster, client.place(), &upload_url, 1 << 30, false)?;
    assert_eq!(
        (
            uploaded.bytes_received_by_server,
            uploaded.crc_received_by_server
        ),
        (uploaded.bytes_sent, uploaded.crc_sent),
        "a gibibyte arrives intact"
    );
    let grpc_url = format!("http://{GRPC_VIP}:9090/trailers");
    let answer = testapp::trailers(&cluster, client.place(), &grpc_url, "hello")?;
    assert_eq!(
        answer,
        json!({ "status": 200, "body": "ok", "trailers": { "grpc-status": "0", "grpc-message": "hello" } })
    );

    // A bidirectional stream: each message goes out only once the one
    // before came back, so the waypoint must pass each on as it arrives.
    let stream_url = format!("http://{GRPC_VIP}:9090/stream");
    let streamed = testapp::exchange_messages(
        &cluster,
        client.place(),
        Messages::GrpcStream,
        &stream_url,
        20,
    )?;
    assert_eq!(
        streamed,
        json!({ "status": 200, "echoed": 20, "trailers": { "grpc-status": "0" } })
    );

    let ws_url = format!("http://{REVIEWS_VIP}:9080/ws");
    let socket =
        testapp::exchange_messages(&cluster, client.place(), Messages::WebSocket, &ws_url, 10)?;
    assert_eq!(
        socket,
        json!({ "status": 101, "accepted": true, "echoed": 10 }),
        "a WebSocket echo through the waypoint"
    );

    // All to v2; then Bookinfo's 80/20 shift, each applied without a restart.
    mesh::write_config(&cluster, &config(Some(split(&[("v2", 100)]))))?;
    wait_for(
        || Ok(run(10)?.versions.get("reviews/v2") == Some(&10)),
        "all to v2",
    )?;
    // Istio's request metrics, exact, with Istio's labels.
    let requests = |labels: &[(&str, &str)]| -> anyhow::Result<f64> {
        let mut all = vec![
            ("reporter", "waypoint"),
            ("source_workload", "client"),
            (
                "source_principal",
                "spiffe://cluster.local/ns/default/sa/client",
            ),
            ("destination_service", "reviews.default.svc.cluster.local"),
            ("destination_service_name", "reviews"),
            ("connection_security_policy", "mutual_tls"),
        ];
        all.extend_from_slice(labels);
        Ok(sample(&waypoint.metrics()?, "istio_requests_total", &all))
    };
    let to_v2 = [
        ("destination_workload", "reviews-v2"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/default/sa/reviews-v2",
        ),
        ("response_code", "200"),
        ("response_flags", "-"),
    ];
    let to_v1 = [("destination_workload", "reviews-v1")];
    let before = (requests(&to_v2)?, requests(&to_v1)?);
    run(200)?.expect_all(200, "reviews/v2", waypoint_pod.ip)?;
    let after = (requests(&to_v2)?, requests(&to_v1)?);
    assert_eq!((after.0 - before.0, after.1 - before.1), (200.0, 0.0));

    // A route that matches no request: 404, flagged NR, counted.
    let only_ratings = json!([{
        "match": [{ "uri": { "prefix": "/ratings" } }],
        "route": [{ "destination": { "host": "reviews", "subset": "v1" } }],
    }]);
    mesh::write_config(&cluster, &config(Some(only_ratings)))?;
    wait_for(|| Ok(run(1)?.status(404) == 1), "a route for /ratings only")?;
    let no_route = [("response_code", "404"), ("response_flags", "NR")];
    let before = requests(&no_route)?;
    assert_eq!(run(30)?.status(404), 30);
    assert_eq!(requests(&no_route)? - before, 30.0);

    mesh::write_config(&cluster, &config(Some(split(&[("v1", 80), ("v2", 20)]))))?;
    wait_for(
        || Ok(run(20)?.versions.contains_key("reviews/v1")),
        "the 80/20 shift",
    )?;
    // 5,000 requests put three points 5.3 standard deviations out.
    let summary = run(5000)?;
    let v1_share = summary.versions.get("reviews/v1").copied().unwrap_or(0) as f64 / 5000.0;
    anyhow::ensure!(
        summary.status(200) == 5000 && (0.77..=0.83).contains(&v1_share),
        "80/20 within 3 points: {summary:?}"
    );
    waypoint.stop()
}

/// Polls `done` until it holds, for up to ten seconds.
fn wait_for(mut done: impl FnMut() -> anyhow::Result<bool>, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done()? {
        anyhow::ensure!(Instant::now() < deadline, "{what} never applied");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

const BOOKINFO_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 33);

/// The (subset, weight) destinations of the first route of the table for
/// `address`, as the waypoint's config dump shows them compiled.
fn first_route(waypoint: &Waypoint, address: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let dump = waypoint.config_dump()?;
    let destinations = dump["routes"]["ports"][address]["http"][0]["destinations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(destinations
        .iter()
        .map(|d| {
            let subset = d["backend"]["subset"].as_str().unwrap_or("-").to_string();
            (subset, d["weight"].as_u64().unwrap_or(0))
        })
        .collect())
}

#[test]
fn istios_bookinfo_traffic_management_applies_unchanged() -> anyhow::Result<()> {
    let cluster = Cluster::builder()
        .node(&["productpage", "waypoint"])
        .node(&["reviews-v1", "reviews-v2", "reviews-v3"])
        .build()?;
    let [productpage, waypoint_pod, v1, v2, v3] = cluster.pods_named([
        "productpage",
        "waypoint",
        "reviews-v1",
        "reviews-v2",
        "reviews-v3",
    ])?;
    let reviews = [v1, v2, v3];
    let config = |istio: Vec<serde_json::Value>| {
        let config = MeshConfig {
            istio,
            ..mesh::enrolling(
                &cluster,
                &[productpage, v1, v2, v3],
                vec![
                    mesh::ServiceConfig {
                        waypoint: Some("waypoint".to_string()),
                        ..mesh::service("reviews", BOOKINFO_VIP, 9080, 9080, &reviews)
                    },
                    mesh::service("waypoint", WAYPOINT_VIP, 15008, 15008, &[waypoint_pod]),
                ],
            )
        };
        config.versioned("reviews")
    };
    let rules = bookinfo::manifest("destination-rule-all.yaml")?;
    let (_ca, _agents, waypoint) =
        Waypoint::start_secured(&cluster, &config(rules.clone()), waypoint_pod)?;
    let _servers = reviews
        .iter()
        .map(|pod| {
            let version = pod.name.trim_start_matches("reviews-");
            Server::new("reviews", version)
                .http(9080)
                .start(&cluster, pod)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let url = format!("http://{BOOKINFO_VIP}:9080/reviews/0");
    let address = format!("{BOOKINFO_VIP}:9080");
    // Applies a task's manifest beside the rules, and waits until the
    // waypoint's first route is `expected`.
    let apply = |routes: Vec<serde_json::Value>, expected: &[(&str, u64)]| -> anyhow::Result<()> {
        mesh::write_config(&cluster, &config([rules.clone(), routes].concat()))?;
        let expected: Vec<(String, u64)> =
            expected.iter().map(|(s, w)| (s.to_string(), *w)).collect();
        wait_for(
            || Ok(first_route(&waypoint, &address)? == expected),
            "the task's routes",
        )
    };
    let share = |summary: &ambit_testbed::testapp::HttpSummary, version: &str| {
        summary.versions.get(version).copied().unwrap_or(0) as f64 / summary.requests as f64
    };

    // Request routing: everything to v1.
    apply(bookinfo::manifest("routing-all-v1.yaml")?, &[("v1", 1)])?;
    HttpLoad::new(200)
        .run(&cluster, productpage.place(), &url)?
        .expect_all(200, "reviews/v1", waypoint_pod.ip)?;

    // The signed-in user jason sees v2, everyone else v1.
    apply(
        bookinfo::manifest("reviews-v2-for-jason.yaml")?,
        &[("v2", 1)],
    )?;
    HttpLoad::new(200)
        .header("end-user", "jason")
        .run(&cluster, productpage.place(), &url)?
        .expect_all(200, "reviews/v2", waypoint_pod.ip)?;
    HttpLoad::new(200)
        .header("end-user", "someone")
        .run(&cluster, productpage.place(), &url)?
        .expect_all(200, "reviews/v1", waypoint_pod.ip)?;

    // Traffic shifting: 50/50 to v3, 90/10 and 80/20 to v2, each within
    // three points over 5,000 requests: 4.2 standard deviations of the
    // binomial for 50/50 (over 2,000 it was 2.7, a fair split failing about
    // one run in 140).
    let eighty_twenty = {
        let mut shift = bookinfo::manifest("reviews-90-10.yaml")?;
        shift[0]["spec"]["http"][0]["route"][0]["weight"] = json!(80);
        shift[0]["spec"]["http"][0]["route"][1]["weight"] = json!(20);
        shift
    };
    let shifts = [
        (
            bookinfo::manifest("reviews-50-v3.yaml")?,
            [("v1", 50), ("v3", 50)],
        ),
        (
            bookinfo::manifest("reviews-90-10.yaml")?,
            [("v1", 90), ("v2", 10)],
        ),
        (eighty_twenty, [("v1", 80), ("v2", 20)]),
    ];
    for (routes, weights) in shifts {
        apply(routes, &weights)?;
        let summary = HttpLoad::new(5000).run(&cluster, productpage.place(), &url)?;
        anyhow::ensure!(summary.status(200) == 5000, "{summary:?}");
        for (subset, weight) in weights {
            let observed = share(&summary, &format!("reviews/{subset}"));
            anyhow::ensure!(
                (observed - weight as f64 / 100.0).abs() <= 0.03,
                "{subset} took {observed:.3} of the requests for a weight of {weight}: {summary:?}"
            );
        }
    }
    waypoint.stop()
}

/// A caller the waypoint's mesh does not know (a pod of another cluster,
/// say, tunnelling in itself) is labelled in the waypoint's request
/// metrics as its stream's `baggage` names it, as the agents label such a
/// caller; a claim of another namespace than its proven identity's is
/// ignored.
#[test]
fn a_caller_the_waypoint_does_not_know_is_named_by_its_baggage() -> anyhow::Result<()> {
    let cluster = Cluster::builder()
        .node(&["waypoint", "reviews", "stranger"])
        .build()?;
    let [waypoint_pod, reviews, stranger] =
        cluster.pods_named(["waypoint", "reviews", "stranger"])?;
    let mut config = MeshConfig {
        services: vec![mesh::ServiceConfig {
            waypoint: Some("waypoint".to_string()),
            ..mesh::service("reviews", VIP, 9080, 9080, &[reviews])
        }],
        ..mesh::enrolling(&cluster, &[reviews], vec![])
    };
    config.pods.retain(|pod| pod.name != "stranger");
    let (ca, _agents) = mesh::start_secured(&cluster, &config, 3600)?;
    let waypoint = Waypoint::start(
        &cluster,
        waypoint_pod,
        "waypoint",
        &Source::Directory,
        Some(&ca),
    )?;
    let _reviews = Server::new("reviews", "v1")
        .http(9080)
        .start(&cluster, reviews)?;
    let caller = ca.certify(&Identity::new("cluster.local", "default", "stranger"))?;
    let waypoint_identity = Identity::new("cluster.local", "default", "waypoint");
    let get = |baggage| {
        get_through(
            stranger,
            &caller,
            &ca.bundle()?,
            (&waypoint_identity, waypoint_pod.ip.into()),
            (SocketAddr::from((VIP, 9080)).into(), Some(baggage)),
            ("reviews", "/"),
        )
    };
    assert_eq!(
        get("k8s.cluster.name=east,k8s.namespace.name=default,k8s.deployment.name=cart-v1,service.name=cart,service.version=v1")?,
        Some(200)
    );
    assert_eq!(
        get("k8s.namespace.name=kube-system,k8s.pod.name=coredns")?,
        Some(200)
    );
    let metrics = waypoint.metrics()?;
    let requests = |labels: &[(&str, &str)]| {
        let mut all = vec![
            ("reporter", "waypoint"),
            (
                "source_principal",
                "spiffe://cluster.local/ns/default/sa/stranger",
            ),
            ("response_code", "200"),
        ];
        all.extend_from_slice(labels);
        sample(&metrics, "istio_requests_total", &all)
    };
    let claimed = requests(&[
        ("source_workload", "cart-v1"),
        ("source_canonical_service", "cart"),
        ("source_canonical_revision", "v1"),
        ("source_cluster", "east"),
    ]);
    let unnamed = requests(&[("source_workload", "unknown")]);
    anyhow::ensure!(
        (claimed, unnamed) == (1.0, 1.0),
        "named by its claim {claimed}, unknown {unnamed}:\n{metrics}"
    );
    waypoint.stop()
}

/// In a dual-stack cluster, a caller of a Service's IPv6 VIP is carried to
/// the waypoint over IPv6 (its pod has an IPv6 address), which listens on
/// both families and routes the request as it would over IPv4.
#[test]
fn a_request_to_an_ipv6_vip_reaches_the_waypoint_over_ipv6() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client", "waypoint"], &["server"])?;
    let [client, waypoint_pod, server] = cluster.pods_named(["client", "waypoint", "server"])?;
    cluster.add_ipv6()?;
    let vip6 = std::net::Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x61);
    let slice = |name: &str, service: &str, address: std::net::Ipv6Addr, port: u16| {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": name, "namespace": "default",
                "labels": { "kubernetes.io/service-name": service },
            },
            "addressType": "IPv6",
            "endpoints": [{ "addresses": [address], "conditions": { "ready": true } }],
            "ports": [{ "name": "http", "port": port, "protocol": "TCP" }],
        })
    };
    let mut config = MeshConfig {
        services: vec![mesh::service(
            "waypoint",
            WAYPOINT_VIP,
            15008,
            15008,
            &[waypoint_pod],
        )],
        ..mesh::enrolling(&cluster, &[client, server], vec![])
    }
    .dual_stack();
    config.istio = vec![
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {
                "name": "server6", "namespace": "default",
                "labels": { "istio.io/use-waypoint": "waypoint" },
            },
            "spec": {
                "clusterIP": "10.96.0.61", "clusterIPs": ["10.96.0.61", vip6],
                "ports": [{ "name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP" }],
            },
        }),
        slice("server6-ipv6", "server6", server.ipv6(), 8080),
        slice("waypoint-ipv6", "waypoint", waypoint_pod.ipv6(), 15008),
    ];
    let (_ca, _agents, waypoint) = Waypoint::start_secured(&cluster, &config, waypoint_pod)?;
    let _server = Server::new("server", "v1")
        .dual_stack()
        .http(8080)
        .start(&cluster, server)?;

    let url = format!("http://[{vip6}]:80/");
    let answered = HttpLoad::new(5).run(&cluster, client.place(), &url)?;
    assert_eq!(
        answered.status(200),
        5,
        "{answered:?}\n{}",
        waypoint.output()
    );
    let metrics = waypoint.metrics()?;
    let routed = sample(
        &metrics,
        "istio_requests_total",
        &[
            ("reporter", "waypoint"),
            ("destination_service", "server6.default.svc.cluster.local"),
            ("response_code", "200"),
        ],
    );
    assert_eq!(routed, 5.0, "{metrics}");
    // The agent's HBONE connection, kept for the next requests, came from
    // the client's IPv6 address.
    let connections = waypoint_pod.place().in_netns(|| {
        std::process::Command::new("ss")
            .args(["-Htn", "state", "established", "( sport = :15008 )"])
            .output()
    })??;
    let connections = String::from_utf8_lossy(&connections.stdout).into_owned();
    let from_client = format!("[{}]:", client.ipv6());
    assert!(
        connections.contains(&from_client),
        "no HBONE connection from {from_client}:\n{connections}"
    );
    waypoint.stop()
}

/// A request whose caller gives up before the answer is counted as Envoy
/// counts it (response code 0, flag DC), never as a success.
#[test]
fn a_request_its_caller_gives_up_on_is_counted_unanswered() -> anyhow::Result<()> {
    let cluster = Cluster::builder()
        .node(&["client", "waypoint", "slow"])
        .build()?;
    let [client, waypoint_pod, slow] = cluster.pods_named(["client", "waypoint", "slow"])?;
    let config = mesh::enrolling(
        &cluster,
        &[client, slow],
        vec![
            mesh::ServiceConfig {
                waypoint: Some("waypoint".to_string()),
                ..mesh::service("slow", VIP, 9080, 9080, &[slow])
            },
            mesh::service("waypoint", WAYPOINT_VIP, 15008, 15008, &[waypoint_pod]),
        ],
    );
    let (_ca, _agents, waypoint) = Waypoint::start_secured(&cluster, &config, waypoint_pod)?;
    // Slower to answer than the client waits (5 s).
    let _slow = Server::new("slow", "v1")
        .answer_delay(Duration::from_secs(8))
        .http(9080)
        .start(&cluster, slow)?;
    let url = format!("http://{VIP}:9080/");
    let answered = HttpLoad::new(1).run(&cluster, client.place(), &url)?;
    assert_eq!(answered.errors, 1, "{answered:?}");
    let counted = |code: &str, flags: &str| -> anyhow::Result<f64> {
        let labels = [
            ("reporter", "waypoint"),
            ("response_code", code),
            ("response_flags", flags),
        ];
        Ok(sample(
            &waypoint.metrics()?,
            "istio_requests_total",
            &labels,
        ))
    };
    wait_for(
        || Ok(counted("0", "DC")? == 1.0),
        "the request counted unanswered",
    )?;
    assert_eq!(counted("200", "-")?, 0.0, "{}", waypoint.metrics()?);
    waypoint.stop()
}
