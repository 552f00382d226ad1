//! Security policy at the receiving agent, on the cluster with the real
//! CA and agents: PeerAuthentication decides whether plaintext reaches a
//! pod, AuthorizationPolicy who may connect at all, and changes apply to
//! the next connection without a restart. The TCP metrics and access log
//! name both sides, with the identity each proved.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context};

use ambit_testbed::mesh::{self, sample, NodeAgent};
use ambit_testbed::testapp::{self, echo, Server, StreamSummary};
use ambit_testbed::{wait_for, Cluster, Place, Pod};
use serde_json::{json, Value};

/// How long a policy change may take to reach the agents.
const PROPAGATION: Duration = Duration::from_secs(10);

fn principal(service_account: &str) -> String {
    format!("cluster.local/ns/default/sa/{service_account}")
}

fn peer_authentication(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": { "name": name, "namespace": namespace }, "spec": spec,
    })
}

/// An AuthorizationPolicy on the server pod.
fn authorization_policy(name: &str, action: &str, rules: Value) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": { "name": name, "namespace": "default" },
        "spec": { "selector": { "matchLabels": { "app": "server" } }, "action": action, "rules": rules },
    })
}

/// A NAT rule on a node: what `from` sends to `to` leaves the node from the
/// node's own address. Removed when dropped.
struct Masquerade<'a>(&'a Place);

const MASQUERADE_TABLE: &str = "ambit_test_masquerade";

impl<'a> Masquerade<'a> {
    fn on(node: &'a Place, from: &Pod, to: &Pod) -> anyhow::Result<Self> {
        let rules = format!(
            "table ip {MASQUERADE_TABLE} {{\n\
             chain postrouting {{\n\
             type nat hook postrouting priority srcnat;\n\
             ip saddr {} ip daddr {} masquerade\n\
             }}\n\
             }}\n",
            from.ip, to.ip
        );
        node.nft(&["-f", "-"], Some(&rules))?;
        Ok(Self(node))
    }
}

impl Drop for Masquerade<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .nft(&["delete", "table", "ip", MASQUERADE_TABLE], None);
    }
}

/// Connections from `source_workload` that `agent` refused by policy.
fn refusals(cluster: &Cluster, agent: &NodeAgent, source_workload: &str) -> anyhow::Result<f64> {
    Ok(sample(
        &agent.metrics(cluster)?,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("source_workload", source_workload),
            ("response_flags", "DENY"),
        ],
    ))
}

/// Whether `from` gets `message` echoed by the server at `addr`.
fn echoes(cluster: &Cluster, from: &Pod, addr: SocketAddr) -> bool {
    let message = format!("hello from {}", from.name);
    echo(cluster, from.place(), addr, &message).is_ok_and(|echoed| echoed == message)
}

/// Waits until every (pod, port) reaches the server exactly when expected.
fn expect_reach(
    cluster: &Cluster,
    server: &Pod,
    what: &str,
    cases: &[(&Pod, u16, bool)],
) -> anyhow::Result<()> {
    let mut last = Vec::new();
    let result = wait_for(what, PROPAGATION, || {
        last = cases
            .iter()
            .map(|(from, port, _)| {
                let reached = echoes(cluster, from, SocketAddr::new(server.ip.into(), *port));
                (from.name.clone(), *port, reached)
            })
            .collect();
        Ok(last
            .iter()
            .zip(cases)
            .all(|((_, _, reached), (_, _, expected))| reached == expected))
    });
    result.map_err(|error| anyhow::anyhow!("{error}; last seen (pod, port, reached): {last:?}"))
}

#[test]
fn peer_authentication_decides_whether_plaintext_reaches_a_pod() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client", "outsider"], &["server"])?;
    let [client, outsider, server] = cluster.pods_named(["client", "outsider", "server"])?;
    let mut config = mesh::enrolling(&cluster, &[client, server], vec![]);
    let (_ca, agents) = mesh::start_secured(&cluster, &config, 3600)?;
    let _app = Server::new("server", "v1")
        .http(8080)
        .echo(9000)
        .start(&cluster, server)?;
    let probe = SocketAddr::new(server.ip.into(), 8080);
    let node = cluster.node(&server.node)?;

    // PERMISSIVE by default: plaintext from outside the mesh is accepted,
    // and reported as plaintext.
    expect_reach(
        &cluster,
        server,
        "PERMISSIVE",
        &[(outsider, 9000, true), (client, 9000, true)],
    )?;
    let plaintext = sample(
        &agents[1].metrics(&cluster)?,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("source_workload", "outsider"),
            ("connection_security_policy", "none"),
            ("response_flags", "-"),
        ],
    );
    assert!(plaintext >= 1.0, "plaintext reported: {plaintext}");

    // STRICT for the namespace: plaintext is refused, mTLS still passes,
    // and so do health probes from the node's own address.
    config.istio = vec![peer_authentication(
        "default",
        "strict",
        json!({ "mtls": { "mode": "STRICT" } }),
    )];
    mesh::write_config(&cluster, &config)?;
    expect_reach(
        &cluster,
        server,
        "STRICT",
        &[(outsider, 9000, false), (client, 9000, true)],
    )?;
    assert!(
        outsider.place().http_get(probe, "/").is_err(),
        "plaintext HTTP from outside the mesh passed STRICT"
    );
    let (status, _) = node.place().http_get(probe, "/healthz")?;
    assert_eq!(status, 200, "a health probe from the node under STRICT");

    // Plaintext the node only forwards, masqueraded to the node's own
    // address (as a NodePort's can be), is no probe: STRICT refuses it.
    let masqueraded = Masquerade::on(node.place(), outsider, server)?;
    expect_reach(
        &cluster,
        server,
        "STRICT, masqueraded",
        &[(outsider, 9000, false)],
    )?;
    let (status, _) = node.place().http_get(probe, "/healthz")?;
    assert_eq!(status, 200, "a health probe beside masqueraded traffic");
    let from_node_address = refusals(&cluster, &agents[1], "unknown")?;
    assert!(
        from_node_address >= 1.0,
        "refusals of the node's address reported: {from_node_address}"
    );
    drop(masqueraded);

    let refused = refusals(&cluster, &agents[1], "outsider")?;
    assert!(refused >= 1.0, "refusals reported: {refused}");

    // A workload's port-level exception beats the namespace's mode.
    config.istio.push(peer_authentication(
        "default",
        "server-echo-open",
        json!({
            "selector": { "matchLabels": { "app": "server" } },
            "portLevelMtls": { "9000": { "mode": "PERMISSIVE" } },
        }),
    ));
    mesh::write_config(&cluster, &config)?;
    expect_reach(
        &cluster,
        server,
        "port-level PERMISSIVE",
        &[(outsider, 9000, true)],
    )?;
    assert!(outsider.place().http_get(probe, "/").is_err());

    // Mesh-wide STRICT from the root namespace, the namespace's own policy gone.
    config.istio = vec![peer_authentication(
        "istio-system",
        "default",
        json!({ "mtls": { "mode": "STRICT" } }),
    )];
    mesh::write_config(&cluster, &config)?;
    expect_reach(
        &cluster,
        server,
        "mesh-wide STRICT",
        &[(outsider, 9000, false), (client, 9000, true)],
    )?;
    Ok(())
}

#[test]
fn authorization_policies_allow_and_deny_by_principal_namespace_account_domain_ip_block_and_port(
) -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client", "other", "outsider"], &["server"])?;
    let [client, other, outsider, server] =
        cluster.pods_named(["client", "other", "outsider", "server"])?;
    let mut config = mesh::enrolling(&cluster, &[client, other, server], vec![]);
    let (_ca, agents) = mesh::start_secured(&cluster, &config, 3600)?;
    let _app = Server::new("server", "v1")
        .echo(9000)
        .echo(9001)
        .start(&cluster, server)?;
    let mut apply = |what: &str, policies: Vec<Value>, cases: &[(&Pod, u16, bool)]| {
        config.istio = policies;
        mesh::write_config(&cluster, &config)?;
        expect_reach(&cluster, server, what, cases)
    };

    apply(
        "no policy",
        vec![],
        &[
            (client, 9000, true),
            (other, 9000, true),
            (outsider, 9000, true),
        ],
    )?;
    apply(
        "ALLOW by principal",
        vec![authorization_policy(
            "client-only",
            "ALLOW",
            json!([{ "from": [{ "source": { "principals": [principal("client")] } }] }]),
        )],
        &[
            (client, 9000, true),
            (other, 9000, false),
            (outsider, 9000, false),
        ],
    )?;
    apply(
        "ALLOW by namespace and port",
        vec![authorization_policy(
            "default-ns-9000",
            "ALLOW",
            json!([{
                "from": [{ "source": { "namespaces": ["default"] } }],
                "to": [{ "operation": { "ports": ["9000"] } }],
            }]),
        )],
        &[
            (client, 9000, true),
            (client, 9001, false),
            (other, 9000, true),
            // plaintext proves no namespace
            (outsider, 9000, false),
        ],
    )?;
    apply(
        "DENY by principal over ALLOW all",
        vec![
            authorization_policy("all", "ALLOW", json!([{}])),
            authorization_policy(
                "not-other",
                "DENY",
                json!([{ "from": [{ "source": { "principals": [principal("other")] } }] }]),
            ),
        ],
        &[
            (client, 9000, true),
            (other, 9000, false),
            (outsider, 9000, true),
        ],
    )?;
    apply(
        "ALLOW by service account",
        vec![authorization_policy(
            "client-account",
            "ALLOW",
            json!([{ "from": [{ "source": { "serviceAccounts": ["default/client"] } }] }]),
        )],
        &[
            (client, 9000, true),
            (other, 9000, false),
            (outsider, 9000, false),
        ],
    )?;
    apply(
        "DENY from outside the trust domain",
        vec![
            authorization_policy("all", "ALLOW", json!([{}])),
            authorization_policy(
                "own-domain-only",
                "DENY",
                json!([{ "from": [{ "source": { "notTrustDomains": ["cluster.local"] } }] }]),
            ),
        ],
        &[
            (client, 9000, true),
            (other, 9000, true),
            // plaintext has no trust domain
            (outsider, 9000, false),
        ],
    )?;
    apply(
        "ALLOW by ip block",
        vec![authorization_policy(
            "by-address",
            "ALLOW",
            json!([{ "from": [{ "source": {
                "ipBlocks": [format!("{}/24", outsider.ip)],
                "notIpBlocks": [other.ip.to_string()],
            } }] }]),
        )],
        &[
            (client, 9000, true),
            (other, 9000, false),
            (outsider, 9000, true),
        ],
    )?;
    apply(
        "DENY by port",
        vec![authorization_policy(
            "no-9001",
            "DENY",
            json!([{ "to": [{ "operation": { "ports": ["9001"] } }] }]),
        )],
        &[(client, 9000, true), (client, 9001, false)],
    )?;

    // Denials are counted and logged with who asked and which policy said no.
    let denied = sample(
        &agents[1].metrics(&cluster)?,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            (
                "source_principal",
                "spiffe://cluster.local/ns/default/sa/other",
            ),
            ("response_flags", "DENY"),
        ],
    );
    assert!(denied >= 1.0, "denials of other reported: {denied}");
    // And counted by reason, each denial once, beside Istio's families.
    for agent in &agents {
        let metrics = agent.metrics(&cluster)?;
        let istio = sample(
            &metrics,
            "istio_tcp_connections_opened_total",
            &[("reporter", "destination"), ("response_flags", "DENY")],
        );
        let by_reason = sample(
            &metrics,
            "ambit_connections_refused_total",
            &[("reporter", "destination"), ("reason", "policy_denied")],
        );
        assert_eq!(by_reason, istio, "{metrics}");
    }
    let metrics = agents[1].metrics(&cluster)?;
    assert!(
        sample(
            &metrics,
            "ambit_connections_refused_total",
            &[("reason", "policy_denied")]
        ) >= 3.0,
        "{metrics}"
    );
    let log = agents[1].output();
    assert!(
        log.lines().any(|line| line
            .contains("src.identity=spiffe://cluster.local/ns/default/sa/other")
            && line.contains("denied by AuthorizationPolicy default/not-other")),
        "the access log names the caller and the policy:\n{log}"
    );
    Ok(())
}

#[test]
fn tcp_metrics_and_access_log_name_both_sides() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client"], &["server"])?;
    let [client, server] = cluster.pods_named(["client", "server"])?;
    // Two Services to the server's 9000: a call through one is reported
    // under that one; a call to the pod itself, on the server's side, as
    // ztunnel guesses it, under the first by name whose port targets 9000.
    let echo_vip = std::net::Ipv4Addr::new(10, 96, 0, 90);
    let config = mesh::enrolling(
        &cluster,
        &[client, server],
        vec![
            mesh::service("echo", echo_vip, 80, 9000, &[server]),
            mesh::service(
                "alias",
                std::net::Ipv4Addr::new(10, 96, 0, 91),
                81,
                9000,
                &[server],
            ),
        ],
    );
    // Open connections' bytes reported every second (Istio's default 15).
    let reporting = ["--tcp-reporting-seconds=1"];
    let (_ca, agents) = mesh::start_secured_with_args(&cluster, &config, 3600, &reporting)?;
    let _app = Server::new("server", "v1")
        .echo(9000)
        .start(&cluster, server)?;
    let addr = SocketAddr::new(server.ip.into(), 9000);
    const CONNECTIONS: usize = 3;
    let message = "x".repeat(1000);
    for _ in 0..CONNECTIONS {
        assert_eq!(echo(&cluster, client.place(), addr, &message)?, message);
    }

    let labels = |reporter| {
        [
            ("reporter", reporter),
            ("source_workload", "client"),
            ("source_workload_namespace", "default"),
            (
                "source_principal",
                "spiffe://cluster.local/ns/default/sa/client",
            ),
            ("source_app", "client"),
            ("destination_workload", "server"),
            ("destination_workload_namespace", "default"),
            (
                "destination_principal",
                "spiffe://cluster.local/ns/default/sa/server",
            ),
            ("destination_app", "server"),
            match reporter {
                "source" => ("destination_service", "unknown"),
                _ => ("destination_service", "alias.default.svc.cluster.local"),
            },
            ("connection_security_policy", "mutual_tls"),
            ("response_flags", "-"),
        ]
    };
    let bytes = (CONNECTIONS * message.len()) as f64;
    for (agent, reporter) in agents.iter().zip(["source", "destination"]) {
        let labels = labels(reporter);
        // Closed once both sides are done, shortly after the client has its echo.
        wait_for(
            &format!("{reporter}: {CONNECTIONS} closed connections"),
            Duration::from_secs(5),
            || {
                let metrics = agent.metrics(&cluster)?;
                Ok(
                    sample(&metrics, "istio_tcp_connections_closed_total", &labels)
                        == CONNECTIONS as f64,
                )
            },
        )?;
        let metrics = agent.metrics(&cluster)?;
        let value = |name| sample(&metrics, name, &labels);
        assert_eq!(
            value("istio_tcp_connections_opened_total"),
            CONNECTIONS as f64,
            "{reporter}:\n{metrics}"
        );
        assert_eq!(value("istio_tcp_received_bytes_total"), bytes, "{reporter}");
        assert_eq!(value("istio_tcp_sent_bytes_total"), bytes, "{reporter}");
    }

    // Called through a Service, both sides name it: the client's agent
    // passes it on (`Forwarded: host=`, as ztunnel does) to the server's.
    let called = [
        ("destination_service", "echo.default.svc.cluster.local"),
        ("destination_service_name", "echo"),
        ("destination_service_namespace", "default"),
    ];
    let message = "through the Service";
    let via_service = SocketAddr::new(echo_vip.into(), 80);
    assert_eq!(
        echo(&cluster, client.place(), via_service, message)?,
        message
    );
    for (agent, reporter) in agents.iter().zip(["source", "destination"]) {
        let labels: Vec<_> = [("reporter", reporter)].into_iter().chain(called).collect();
        wait_for(
            &format!("{reporter}: the Service's connection closed"),
            Duration::from_secs(5),
            || {
                let metrics = agent.metrics(&cluster)?;
                Ok(sample(&metrics, "istio_tcp_connections_closed_total", &labels) == 1.0)
            },
        )
        .with_context(|| agent.metrics(&cluster).unwrap_or_default())?;
    }

    let log = agents[1].output();
    let echoed = |line: &&str| {
        line.contains("connection complete")
            && line.contains("src.identity=spiffe://cluster.local/ns/default/sa/client")
            && line.contains("dst.identity=spiffe://cluster.local/ns/default/sa/server")
            && line.contains(&format!("src.addr={}:", client.ip))
            && line.contains("bytes_recv=1000")
            && line.contains("bytes_sent=1000")
    };
    let lines = log.lines().filter(echoed).count();
    assert_eq!(
        lines, CONNECTIONS,
        "one access-log line per connection:\n{log}"
    );
    // Both sides log a connection under one id, which the client's agent
    // sent on its CONNECT (`traceparent`, as ztunnel does): one each.
    let trace_ids = |log: &str| -> std::collections::BTreeSet<String> {
        log.lines()
            .filter(echoed)
            .filter_map(|line| line.split("trace_id=").nth(1)?.split_whitespace().next())
            .map(str::to_string)
            .collect()
    };
    let at_destination = trace_ids(&log);
    assert_eq!(at_destination.len(), CONNECTIONS, "{at_destination:?}");
    assert!(
        at_destination.iter().all(|id| id.len() == 32),
        "{at_destination:?}"
    );
    assert_eq!(trace_ids(&agents[0].output()), at_destination);
    // A connection held open is counted open on both sides while it
    // lasts, its bytes reported as it goes (not only at its end), and no
    // longer open once it ends.
    let open = |agent: &NodeAgent, reporter| -> anyhow::Result<f64> {
        let metrics = agent.metrics(&cluster)?;
        Ok(sample(
            &metrics,
            "ambit_connections_open",
            &[("reporter", reporter)],
        ))
    };
    let mut held = testapp::echo_stream(
        &cluster,
        client.place(),
        addr,
        30,
        Duration::from_millis(100),
    )?;
    for (agent, reporter) in agents.iter().zip(["source", "destination"]) {
        wait_for(
            &format!("{reporter}: one open"),
            Duration::from_secs(2),
            || Ok(open(agent, reporter)? == 1.0),
        )?;
    }
    for (agent, reporter) in agents.iter().zip(["source", "destination"]) {
        let labels = labels(reporter);
        wait_for(
            &format!("{reporter}: bytes of the open connection"),
            Duration::from_secs(3),
            || {
                let metrics = agent.metrics(&cluster)?;
                let received = sample(&metrics, "istio_tcp_received_bytes_total", &labels);
                let sent = sample(&metrics, "istio_tcp_sent_bytes_total", &labels);
                Ok(received > bytes && sent > bytes && open(agent, reporter)? == 1.0)
            },
        )?;
    }
    held.wait_exit(Duration::from_secs(10))?;
    let stream: StreamSummary = testapp::last_json(&held.output())?;
    ensure!(stream.echoed == 30, "{stream:?}");
    // `line 0\n` to `line 29\n` each way: reported once in all, no byte
    // twice, however much was reported before the end.
    let streamed = bytes + (10 * 7 + 20 * 8) as f64;
    for (agent, reporter) in agents.iter().zip(["source", "destination"]) {
        let labels = labels(reporter);
        wait_for(
            &format!("{reporter}: none open, every byte counted once"),
            Duration::from_secs(5),
            || {
                let metrics = agent.metrics(&cluster)?;
                let received = sample(&metrics, "istio_tcp_received_bytes_total", &labels);
                let sent = sample(&metrics, "istio_tcp_sent_bytes_total", &labels);
                Ok(open(agent, reporter)? == 0.0 && received == streamed && sent == streamed)
            },
        )?;
    }
    Ok(())
}
