//! Istio's own data plane beside Ambit's: Envoy, configured as Istio
//! configures its waypoints, between Ambit's agents. The agents must speak
//! HBONE to it as ztunnel does, as clients and as servers.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use ambit_hbone::{Target, TraceParent};
use ambit_identity::ca::CertificateAuthority;
use ambit_identity::{Identity, TrustBundle};
use ambit_testbed::ca::TestCa;
use ambit_testbed::envoy::{EnvoyWaypoint, Route};
use ambit_testbed::hbone::{tunnel_through, EchoPeer};
use ambit_testbed::mesh::{self, sample, NodeAgent};
use ambit_testbed::testapp::{self, HttpLoad, Server};
use ambit_testbed::{wait_for, Cluster, Pod};
use anyhow::{ensure, Context};
use std::sync::atomic::Ordering;

const HTTP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 60);
const SINK_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 61);
const ENVOY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 62);
const ECHO_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 63);
/// More tunnels at once than the agent's pool puts on one HTTP/2
/// connection (100), fewer than Envoy may burst onto a new upstream one
/// before reading the server agent's limit (ztunnel's 200, as Ambit's).
const CONCURRENT_TUNNELS: usize = 150;

#[test]
fn envoy_as_istios_waypoint_carries_the_agents_hbone_both_ways() -> anyhow::Result<()> {
    let cluster = Cluster::builder()
        .node(&["client", "envoy"])
        .node(&["server"])
        .build()?;
    let [client, envoy_pod, server] = cluster.pods_named(["client", "envoy", "server"])?;
    let bound = |name: &str, vip, port, port_name: &str| mesh::ServiceConfig {
        waypoint: Some("envoy".into()),
        port_name: port_name.into(),
        ..mesh::service(name, vip, port, port, &[server])
    };
    let config = mesh::enrolling(
        &cluster,
        &[client, server],
        vec![
            bound("web", HTTP_VIP, 8080, "http"),
            bound("sink", SINK_VIP, 9100, "tcp"),
            bound("echo", ECHO_VIP, 9000, "tcp"),
            mesh::service("envoy", ENVOY_VIP, 15008, 15008, &[envoy_pod]),
        ],
    );
    let (ca, agents) = mesh::start_secured(&cluster, &config, 3600)?;
    let _server = Server::new("server", "v1")
        .http(8080)
        .sink(9100)
        .echo(9000)
        .start(&cluster, server)?;
    let envoy = EnvoyWaypoint::start(
        &cluster,
        envoy_pod,
        &ca,
        &[
            Route {
                service: SocketAddr::from((HTTP_VIP, 8080)),
                endpoint: SocketAddr::from((server.ip, 8080)),
                http: true,
            },
            Route {
                service: SocketAddr::from((SINK_VIP, 9100)),
                endpoint: SocketAddr::from((server.ip, 9100)),
                http: false,
            },
            Route {
                service: SocketAddr::from((ECHO_VIP, 9000)),
                endpoint: SocketAddr::from((server.ip, 9000)),
                http: false,
            },
        ],
    )?;

    // The client's agent tunnels to Envoy, which routes each request and
    // tunnels it on to the server's agent: the server sees Envoy.
    let url = format!("http://{HTTP_VIP}:8080/");
    HttpLoad::new(20)
        .run(&cluster, client.place(), &url)?
        .expect_all(20, "server/v1", envoy_pod.ip)?;
    // Envoy writes its access log out every second.
    let routed = || {
        let log = envoy.access_log();
        log.lines()
            .filter(|line| line.contains("\"GET / HTTP/1.1\" 200"))
            .count()
    };
    wait_for(
        "Envoy's log of the 20 requests",
        Duration::from_secs(5),
        || Ok(routed() == 20),
    )
    .with_context(|| format!("{}\n{}", envoy.access_log(), envoy.output()))?;

    // A stream of bytes through Envoy's TCP route arrives intact.
    let sent = testapp::send(
        &cluster,
        client.place(),
        SocketAddr::from((SINK_VIP, 9100)),
        64 << 20,
    )?;
    ensure!(
        (sent.bytes_received_by_server, sent.crc_received_by_server)
            == (sent.bytes_sent, sent.crc_sent),
        "{sent:?}"
    );

    // 150 connections open at once, each its own tunnel both ways: the
    // client's agent opens a second HTTP/2 connection to Envoy past its
    // 100 streams, and the server's agent takes Envoy's tunnels on as many
    // connections as Envoy opens; every one echoes.
    let many = testapp::echo_many(
        &cluster,
        client.place(),
        SocketAddr::from((ECHO_VIP, 9000)),
        CONCURRENT_TUNNELS,
    )?;
    ensure!(
        many.completed == CONCURRENT_TUNNELS,
        "{many:?}\n{}",
        envoy.output()
    );

    // The server's agent proved Envoy's identity, as the client's agent
    // proved the client's to Envoy.
    let from_envoy = sample(
        &agents[1].metrics(&cluster)?,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            (
                "source_principal",
                "spiffe://cluster.local/ns/default/sa/envoy",
            ),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    ensure!(
        from_envoy >= 2.0,
        "connections from Envoy in mTLS: {from_envoy}"
    );
    Ok(())
}

/// A peer stricter than Ambit's agents and ztunnel (10 streams a
/// connection, where they allow 200): the agent keeps within its limit
/// from the first burst on, opening further connections rather than
/// having streams refused or queued behind others.
#[test]
fn the_agent_keeps_within_a_stricter_peers_stream_limit() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client"], &["peer"])?;
    let [client, peer] = cluster.pods_named(["client", "peer"])?;
    let (ca, agents) = mesh_behind_echo_peer(&cluster, client, peer)?;
    let identity = Identity::new("cluster.local", &peer.namespace, &peer.name);
    let echo_peer = EchoPeer::start(peer, &ca.certify(&identity)?, &ca.bundle()?, 10)?;

    let many = testapp::echo_many(
        &cluster,
        client.place(),
        SocketAddr::from((ECHO_VIP, 9000)),
        100,
    )?;
    let seen = echo_peer.counts();
    let (connections, streams, most_at_once) = (
        seen.connections.load(Ordering::Relaxed),
        seen.streams.load(Ordering::Relaxed),
        seen.most_at_once.load(Ordering::Relaxed),
    );
    ensure!(
        many.completed == 100 && streams == 100,
        "{many:?}; the peer saw {streams} streams"
    );
    ensure!(
        connections >= 2 && most_at_once <= 10,
        "the peer saw {connections} connections, at most {most_at_once} streams at once on one"
    );
    // Each stream tells the peer who calls, and the connection's id, as
    // ztunnel's do.
    let headers = seen.last_headers.lock().unwrap().clone();
    let header = |name| headers.get(name).and_then(|value| value.to_str().ok());
    ensure!(
        header("baggage")
            == Some("k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.pod.name=client,service.name=client,service.version=latest"),
        "the streams' headers: {headers:?}"
    );
    let trace = header("traceparent")
        .and_then(TraceParent::parse)
        .with_context(|| format!("the streams' headers: {headers:?}"))?;
    let logged = format!("trace_id={}", trace.trace_id_hex());
    wait_for(
        "the agent's access log names the stream's connection",
        Duration::from_secs(5),
        || Ok(agents[0].output().contains(&logged)),
    )
    .with_context(|| agents[0].output())?;
    Ok(())
}

/// A caller the destination's mesh does not know (a pod of another
/// cluster, say) is named in the destination's metrics as its streams'
/// `baggage` names it, as ztunnel does; a claim of another namespace than
/// the caller's proven identity is ignored.
#[test]
fn a_caller_the_mesh_does_not_know_is_named_by_its_baggage() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client"], &["server"])?;
    let [client, server] = cluster.pods_named(["client", "server"])?;
    let mut config = mesh::enrolling(&cluster, &[server], vec![]);
    config.pods.retain(|pod| pod.name != "client");
    let (ca, agents) = mesh::start_secured(&cluster, &config, 3600)?;
    let _app = Server::new("server", "v1")
        .echo(9000)
        .start(&cluster, server)?;
    let caller = ca.certify(&Identity::new("cluster.local", "default", "client"))?;
    let server_identity = Identity::new("cluster.local", "default", "server");
    let tunnel = |baggage: &str| {
        tunnel_through(
            client,
            Some(&caller),
            &ca.bundle()?,
            (&server_identity, server.ip.into()),
            (SocketAddr::from((server.ip, 9000)).into(), Some(baggage)),
        )
    };
    ensure!(tunnel(
        "k8s.cluster.name=east,k8s.namespace.name=default,k8s.deployment.name=cart-v1,service.name=cart,service.version=v1"
    )?);
    ensure!(tunnel(
        "k8s.namespace.name=kube-system,k8s.pod.name=coredns"
    )?);
    let metrics = agents[1].metrics(&cluster)?;
    let opened = |labels: &[(&str, &str)]| {
        let mut all = vec![
            ("reporter", "destination"),
            (
                "source_principal",
                "spiffe://cluster.local/ns/default/sa/client",
            ),
        ];
        all.extend_from_slice(labels);
        sample(&metrics, "istio_tcp_connections_opened_total", &all)
    };
    let claimed = opened(&[
        ("source_workload", "cart-v1"),
        ("source_workload_namespace", "default"),
        ("source_canonical_service", "cart"),
        ("source_canonical_revision", "v1"),
        ("source_cluster", "east"),
    ]);
    let unnamed = opened(&[("source_workload", "unknown")]);
    ensure!(
        (claimed, unnamed) == (1.0, 1.0),
        "named by its claim {claimed}, unknown {unnamed}:\n{metrics}"
    );
    Ok(())
}

/// A peer that refuses the agent's certificate (it trusts another root).
/// In TLS 1.3 the client's handshake is done before the server has
/// checked its certificate, so the refusal arrives as the first stream
/// is sent: the agent names it, where it logged the bare alert
/// ("received fatal alert: DecryptError") as the stream's failure.
#[test]
fn the_agent_names_a_peers_refusal_of_its_certificate() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client"], &["peer"])?;
    let [client, peer] = cluster.pods_named(["client", "peer"])?;
    let (ca, agents) = mesh_behind_echo_peer(&cluster, client, peer)?;
    let identity = Identity::new("cluster.local", &peer.namespace, &peer.name);
    let stranger = CertificateAuthority::generate("cluster.local")?;
    let other_root = TrustBundle::from_pem("cluster.local", stranger.root_pem())?;
    let _echo_peer = EchoPeer::start(peer, &ca.certify(&identity)?, &other_root, 10)?;

    let sent = testapp::echo_many(
        &cluster,
        client.place(),
        SocketAddr::from((ECHO_VIP, 9000)),
        1,
    )?;
    ensure!(sent.completed == 0, "{sent:?}");
    wait_for(
        "the client's agent to log the peer's refusal",
        Duration::from_secs(5),
        || {
            Ok(agents[0]
                .output()
                .contains("the peer refused the TLS handshake"))
        },
    )
    .with_context(|| agents[0].output())?;
    Ok(())
}

/// `client` enrolled, its calls to the Service `echo` (port 9000) sent
/// over HBONE to `peer` as their waypoint.
fn mesh_behind_echo_peer(
    cluster: &Cluster,
    client: &Pod,
    peer: &Pod,
) -> anyhow::Result<(TestCa, Vec<NodeAgent>)> {
    let config = mesh::enrolling(
        cluster,
        &[client],
        vec![
            mesh::ServiceConfig {
                waypoint: Some("peer".into()),
                port_name: "tcp".into(),
                ..mesh::service("echo", ECHO_VIP, 9000, 9000, &[peer])
            },
            mesh::service("peer", ENVOY_VIP, 15008, 15008, &[peer]),
        ],
    );
    mesh::start_secured(cluster, &config, 3600)
}

/// ztunnel names a Service by host (`NAME.NAMESPACE.svc.cluster.local:PORT`)
/// where an address would not do (across networks): the agent takes such a
/// stream to its pod at the Service port's target port, and refuses one
/// for a Service the pod does not serve.
#[test]
fn a_stream_naming_a_service_by_host_reaches_the_pod_behind_it() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client"], &["server", "other"])?;
    let [client, server, other] = cluster.pods_named(["client", "server", "other"])?;
    let config = mesh::enrolling(
        &cluster,
        // The caller speaks HBONE itself, from outside the mesh.
        &[server, other],
        vec![
            mesh::service("echo", ECHO_VIP, 80, 9000, &[server]),
            mesh::service("elsewhere", SINK_VIP, 80, 9000, &[other]),
        ],
    );
    let (ca, _agents) = mesh::start_secured(&cluster, &config, 3600)?;
    let _app = Server::new("server", "v1")
        .echo(9000)
        .start(&cluster, server)?;
    let caller = ca.certify(&Identity::new("cluster.local", "default", "client"))?;
    let server_identity = Identity::new("cluster.local", "default", "server");
    let tunnel = |name: &str, port| {
        let target = Target::Host {
            name: name.into(),
            port,
        };
        tunnel_through(
            client,
            Some(&caller),
            &ca.bundle()?,
            (&server_identity, server.ip.into()),
            (target, None),
        )
    };
    ensure!(
        tunnel("echo.default.svc.cluster.local", 80)?,
        "the Service's stream was not echoed"
    );
    for (name, port) in [
        ("elsewhere.default.svc.cluster.local", 80),
        ("echo.default.svc.cluster.local", 81),
        ("nothing.default.svc.cluster.local", 80),
    ] {
        ensure!(!tunnel(name, port)?, "{name}:{port} was carried");
    }
    Ok(())
}
