//! The L4 data path: enrolled pods' connections pass through both node
//! agents, captured by eBPF, with nothing changed in the apps.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ambit_testbed::mesh::{self, sample, NodeAgent};
use ambit_testbed::testapp::{self, HttpLoad, HttpSummary, Server, StreamSummary};
use ambit_testbed::Cluster;
use anyhow::Context;

const REQUESTS: usize = 20;
const OPENED: &str = "istio_tcp_connections_opened_total";
const CLOSED: &str = "istio_tcp_connections_closed_total";
const RECEIVED: &str = "istio_tcp_received_bytes_total";
const SENT: &str = "istio_tcp_sent_bytes_total";
const RELAYED: &str = "ambit_relayed_connections_total";
const TAKEBACKS: &str = "ambit_relay_takebacks_total";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

#[test]
fn enrolled_pods_talk_through_both_agents_by_pod_ip_and_service_vip() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client", "bystander"], &["server", "plain"])?;
    let [client, bystander, server, plain] =
        cluster.pods_named(["client", "bystander", "server", "plain"])?;
    let services = vec![mesh::service("server", VIP, 80, 8080, &[server])];
    mesh::write_config(
        &cluster,
        &mesh::enrolling(&cluster, &[client, server], services),
    )?;
    let agents = mesh::start_agents(&cluster)?;
    let _apps = [
        Server::new("server", "v1")
            .http(8080)
            .start(&cluster, server)?,
        Server::new("plain", "v1")
            .http(8080)
            .start(&cluster, plain)?,
    ];

    // By pod IP, by Service VIP, and from an IPv6 socket to the pod's
    // IPv4-mapped address (as Java and dual-stack runtimes call IPv4).
    for url in [
        format!("http://{}:8080/", server.ip),
        format!("http://{VIP}:80/"),
        format!("http://[::ffff:{}]:8080/", server.ip),
    ] {
        // The server sees the client pod itself, not an agent.
        HttpLoad::new(REQUESTS)
            .run(&cluster, client.place(), &url)?
            .expect_all(REQUESTS, "server/v1", client.ip)
            .with_context(|| format!("{url}\n{}", agents[0].output()))?;
    }
    let source = agents[0].metrics(&cluster)?;
    let destination = agents[1].metrics(&cluster)?;
    // One connection per URL (the client keeps its connection for all requests).
    assert_eq!(
        sample(
            &source,
            OPENED,
            &[("reporter", "source"), ("destination_service", "unknown")]
        ),
        2.0,
        "{source}"
    );
    assert_eq!(
        sample(
            &source,
            OPENED,
            &[
                ("reporter", "source"),
                ("destination_service", "server.default.svc.cluster.local")
            ]
        ),
        1.0,
        "{source}"
    );
    assert_eq!(
        sample(&destination, OPENED, &[("reporter", "destination")]),
        3.0,
        "{destination}"
    );
    assert!(
        sample(&source, RECEIVED, &[]) > 0.0 && sample(&source, SENT, &[]) > 0.0,
        "{source}"
    );
    assert!(
        sample(&destination, RECEIVED, &[]) > 0.0 && sample(&destination, SENT, &[]) > 0.0,
        "{destination}"
    );

    // A pod that is not enrolled calling one that is not: no agent sees it.
    HttpLoad::new(REQUESTS)
        .run(
            &cluster,
            bystander.place(),
            &format!("http://{}:8080/", plain.ip),
        )?
        .expect_all(REQUESTS, "plain/v1", bystander.ip)?;
    assert_eq!(sample(&agents[0].metrics(&cluster)?, OPENED, &[]), 3.0);
    assert_eq!(sample(&agents[1].metrics(&cluster)?, OPENED, &[]), 3.0);
    Ok(())
}

#[test]
fn a_service_without_a_ready_endpoint_is_refused_and_counted() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client"], &["server"])?;
    let [client, server] = cluster.pods_named(["client", "server"])?;
    let services = vec![mesh::service("empty", VIP, 80, 8080, &[])];
    mesh::write_config(
        &cluster,
        &mesh::enrolling(&cluster, &[client, server], services),
    )?;
    let agents = mesh::start_agents(&cluster)?;

    // The agent accepts the redirected connection, finds no endpoint, and
    // closes it before anything is carried. Until capture is in place the
    // VIP has no route, and the agent sees nothing.
    let url = format!("http://{VIP}:80/");
    let deadline = Instant::now() + Duration::from_secs(10);
    let summary = loop {
        let summary = HttpLoad::new(1).run(&cluster, client.place(), &url)?;
        let unrouted = summary
            .first_error
            .as_deref()
            .is_some_and(|error| error.contains("unreachable"));
        if !unrouted || Instant::now() > deadline {
            break summary;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!((summary.requests, summary.errors), (1, 1), "{summary:?}");
    let source = agents[0].metrics(&cluster)?;
    let refused = [
        ("reporter", "source"),
        ("destination_service", "empty.default.svc.cluster.local"),
        ("response_flags", "CONNECT"),
    ];
    assert_eq!(sample(&source, OPENED, &refused), 1.0, "{source}");
    assert_eq!(sample(&source, CLOSED, &refused), 1.0, "{source}");
    assert!(
        agents[0]
            .output()
            .contains("service empty.default has no ready IPv4 endpoint"),
        "{}",
        agents[0].output()
    );
    Ok(())
}

/// Waits until a new connection from `from` to `url` is (or is not) seen by
/// `agent` as outbound: enrollment changes apply within the config poll.
fn wait_until_captured(
    cluster: &Cluster,
    agent: &NodeAgent,
    from: &ambit_testbed::Pod,
    url: &str,
    captured: bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = sample(&agent.metrics(cluster)?, OPENED, &[("reporter", "source")]);
        HttpLoad::new(1).run(cluster, from.place(), url)?;
        let after = sample(&agent.metrics(cluster)?, OPENED, &[("reporter", "source")]);
        if (after > before) == captured {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} is still {}captured",
            from.name,
            if captured { "not " } else { "" }
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn enrolling_and_releasing_a_running_pod_changes_only_new_connections() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client"], &["server"])?;
    let [client, server] = cluster.pods_named(["client", "server"])?;
    mesh::write_config(&cluster, &mesh::enrolling(&cluster, &[server], vec![]))?;
    let agents = mesh::start_agents(&cluster)?;
    let _app = Server::new("server", "v1")
        .http(8080)
        .echo(9000)
        .start(&cluster, server)?;
    let url = format!("http://{}:8080/", server.ip);
    let echo_addr = SocketAddr::from((server.ip, 9000));
    let lines = 40;
    // New connections all along, across both changes: none may fail, not
    // even one steered to the agent just before the release.
    let requests = 1000;
    let mut load = HttpLoad::churn(requests).spawn(&cluster, client.place(), &url)?;

    // A connection made before the client is enrolled...
    let mut before = testapp::echo_stream(
        &cluster,
        client.place(),
        echo_addr,
        lines,
        Duration::from_millis(100),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    mesh::write_config(
        &cluster,
        &mesh::enrolling(&cluster, &[client, server], vec![]),
    )?;
    wait_until_captured(&cluster, &agents[0], client, &url, true)?;
    // ...and one made while it is, which the release below must not break.
    let mut during = testapp::echo_stream(
        &cluster,
        client.place(),
        echo_addr,
        lines,
        Duration::from_millis(100),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    mesh::write_config(&cluster, &mesh::enrolling(&cluster, &[server], vec![]))?;
    wait_until_captured(&cluster, &agents[0], client, &url, false)?;
    load.wait_exit(Duration::from_secs(60))?;
    let summary: HttpSummary = testapp::last_json(&load.output())?;
    assert_eq!(summary.status(200), requests, "{summary:?}");

    for stream in [&mut before, &mut during] {
        stream.wait_exit(Duration::from_secs(30))?;
        let summary: StreamSummary = testapp::last_json(&stream.output())?;
        assert_eq!(
            (summary.echoed, summary.error.as_deref()),
            (lines, None),
            "{summary:?}"
        );
    }
    // The agent carried exactly the connections made while enrolled.
    let metrics = agents[0].metrics(&cluster)?;
    assert!(
        sample(&metrics, OPENED, &[("reporter", "source")]) >= 2.0,
        "{metrics}"
    );
    Ok(())
}

#[test]
fn a_gibibyte_arrives_intact_after_a_half_close_and_a_thousand_connections_complete(
) -> anyhow::Result<()> {
    bulk_half_close_and_a_thousand_connections(Security::Plaintext)
}

#[test]
fn relayed_in_user_space_a_gibibyte_arrives_intact_after_a_half_close_and_a_thousand_connections_complete(
) -> anyhow::Result<()> {
    bulk_half_close_and_a_thousand_connections(Security::PlaintextInUserSpace)
}

#[test]
fn over_mutual_tls_a_gibibyte_arrives_intact_after_a_half_close_and_a_thousand_streams_complete(
) -> anyhow::Result<()> {
    bulk_half_close_and_a_thousand_connections(Security::MutualTls)
}

enum Security {
    /// Agents without identities: plain TCP between them, relayed in the
    /// kernel.
    Plaintext,
    /// The same, the agents moving the bytes themselves
    /// (`--kernel-relay=false`).
    PlaintextInUserSpace,
    /// Agents with identities from a CA: HBONE, its streams sharing a
    /// connection.
    MutualTls,
}

fn bulk_half_close_and_a_thousand_connections(security: Security) -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client"], &["server"])?;
    let [client, server] = cluster.pods_named(["client", "server"])?;
    let config = mesh::enrolling(&cluster, &[client, server], vec![]);
    let (_ca, agents, label) = match security {
        Security::Plaintext => {
            mesh::write_config(&cluster, &config)?;
            (None, mesh::start_agents(&cluster)?, "none")
        }
        Security::PlaintextInUserSpace => {
            mesh::write_config(&cluster, &config)?;
            let agents = mesh::start_agents_with_args(&cluster, &mesh::Source::Directory, |_| {
                Ok(vec!["--kernel-relay=false".into()])
            })?;
            (None, agents, "none")
        }
        Security::MutualTls => {
            let (ca, agents) = mesh::start_secured(&cluster, &config, 24 * 3600)?;
            (Some(ca), agents, "mutual_tls")
        }
    };
    let _app = Server::new("server", "v1")
        .echo(9000)
        .sink(9100)
        .start(&cluster, server)?;

    // The sink answers only after the client's half-close.
    let gib = 1 << 30;
    send_intact(&cluster, client, server, gib, Duration::ZERO)?;

    let many = testapp::echo_many(
        &cluster,
        client.place(),
        SocketAddr::from((server.ip, 9000)),
        1000,
    )?;
    assert_eq!(
        (many.completed, many.first_error.as_deref()),
        (1000, None),
        "{many:?}"
    );

    let source = agents[0].metrics(&cluster)?;
    let labels = [
        ("reporter", "source"),
        ("connection_security_policy", label),
    ];
    assert_eq!(sample(&source, OPENED, &labels), 1001.0, "{source}");
    assert!(sample(&source, RECEIVED, &labels) >= gib as f64, "{source}");
    // Plain connections are each carried by one relay: the agent copies a
    // connection's first moments, a short one to its end, and bulk (the
    // transfer) past them, unless a quiet moment lets it join the kernel's.
    let relayed = |relay| sample(&source, RELAYED, &[("relay", relay)]);
    let (kernel, user_space) = (relayed("kernel"), relayed("user_space"));
    match security {
        Security::Plaintext => assert_eq!(kernel + user_space, 1001.0, "{source}"),
        Security::PlaintextInUserSpace => assert_eq!((kernel, user_space), (0.0, 1001.0)),
        Security::MutualTls => assert_eq!((kernel, user_space), (0.0, 0.0)),
    }
    Ok(())
}

/// The kernel relay's redirect has no back-pressure, so the agent takes a
/// connection back once too much of what it forwarded is not yet delivered,
/// and only then: a long exchange whose reader keeps up stays in the kernel.
#[test]
fn the_kernel_relay_keeps_exchanges_that_keep_up_and_hands_a_stalled_reader_to_the_agent(
) -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client"], &["server"])?;
    let [client, server] = cluster.pods_named(["client", "server"])?;
    let agents = mesh::start_enrolling(&cluster, &[client, server])?;
    let _app = Server::new("server", "v1")
        .http(8080)
        .sink(9100)
        .stall_sinks(Duration::from_secs(2))
        .start(&cluster, server)?;

    // 16 MiB of responses on one kept-alive connection, four times the
    // relay's budget, each read before the next request.
    let requests = 256;
    let url = format!("http://{}:8080/bytes/65536", server.ip);
    let summary = HttpLoad::new(requests).run(&cluster, client.place(), &url)?;
    assert_eq!(summary.status(200), requests, "{summary:?}");
    for agent in &agents {
        let metrics = agent.metrics(&cluster)?;
        assert_eq!(
            sample(&metrics, RELAYED, &[("relay", "kernel")]),
            1.0,
            "{metrics}"
        );
        assert_eq!(sample(&metrics, TAKEBACKS, &[]), 0.0, "{metrics}");
    }

    // The client is quiet long enough for the connection to join the
    // kernel's relay, then sends to a sink that reads nothing for two
    // seconds: what the kernel forwards piles up in front of it, until the
    // server's agent takes over.
    send_intact(
        &cluster,
        client,
        server,
        64 << 20,
        Duration::from_millis(200),
    )?;
    let destination = agents[1].metrics(&cluster)?;
    assert_eq!(
        sample(&destination, RELAYED, &[("relay", "kernel")]),
        2.0,
        "{destination}"
    );
    assert_eq!(sample(&destination, TAKEBACKS, &[]), 1.0, "{destination}");
    Ok(())
}

/// Sends `bytes` from `client` to the sink on port 9100 of `server`, the
/// client first staying `idle` after it connects, and checks that the sink
/// received them all, unchanged.
fn send_intact(
    cluster: &Cluster,
    client: &ambit_testbed::Pod,
    server: &ambit_testbed::Pod,
    bytes: u64,
    idle: Duration,
) -> anyhow::Result<()> {
    let sink = SocketAddr::from((server.ip, 9100));
    let transfer = testapp::send_after_idle(cluster, client.place(), sink, bytes, idle)?;
    anyhow::ensure!(
        transfer.bytes_sent == bytes
            && transfer.bytes_received_by_server == bytes
            && transfer.crc_received_by_server == transfer.crc_sent,
        "{bytes} bytes sent, but {transfer:?}"
    );
    Ok(())
}

#[test]
fn restarting_the_agents_fails_no_connection_and_drains_established_ones() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client"], &["server"])?;
    let [client, server] = cluster.pods_named(["client", "server"])?;
    let mut agents = mesh::start_enrolling(&cluster, &[client, server])?;
    let _app = Server::new("server", "v1")
        .http(8080)
        .echo(9000)
        .start(&cluster, server)?;

    let requests = 600;
    let url = format!("http://{}:8080/", server.ip);
    let mut load = HttpLoad::churn(requests).spawn(&cluster, client.place(), &url)?;
    // A connection the old agents carry, open across both restarts: they
    // drain it (up to their deadline) before they exit.
    let lines = 20;
    let mut established = testapp::echo_stream(
        &cluster,
        client.place(),
        SocketAddr::from((server.ip, 9000)),
        lines,
        Duration::from_millis(100),
    )?;
    std::thread::sleep(Duration::from_millis(400));
    agents[0].restart(&cluster)?;
    agents[1].restart(&cluster)?;
    established.wait_exit(Duration::from_secs(30))?;
    let stream: StreamSummary = testapp::last_json(&established.output())?;
    assert_eq!(
        (stream.echoed, stream.error.as_deref()),
        (lines, None),
        "{stream:?}"
    );
    mesh::expect_no_failed_request(&mut load, requests, &agents)?;
    // The new agents carry the traffic now.
    let carried = || -> anyhow::Result<f64> {
        Ok(sample(
            &agents[0].metrics(&cluster)?,
            OPENED,
            &[("reporter", "source")],
        ))
    };
    let before = carried()?;
    let summary = HttpLoad::new(5)
        .reconnect()
        .run(&cluster, client.place(), &url)?;
    assert_eq!(summary.status(200), 5, "{summary:?}");
    assert_eq!(carried()? - before, 5.0);
    Ok(())
}
