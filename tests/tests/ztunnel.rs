#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test
//! Ambit's agents and Istio's ztunnel in one mesh, by hand: the suite never
//! builds or fetches ztunnel, so this runs only when given a binary built
//! from istio/ztunnel:
//!
//! ```text
//! AMBIT_ZTUNNEL=/path/to/ztunnel cargo xtask test -- --test ztunnel --ignored
//! ```
//!
//! Node 1 runs Ambit's agent for two pods; nodes 2 and 3 have no agent,
//! each pod there proxied by its own ztunnel in dedicated mode
//! (`ambit_testbed::ztunnel`) with Istio's post-quantum compliance policy.
//! Every proxy has its certificate from `ambit-ca`, the ztunnels over
//! Istio's gRPC API as they ask istiod.

use std::net::SocketAddr;
use std::path::PathBuf;

use ambit_testbed::ca::TestCa;
use ambit_testbed::mesh::{self, sample, NodeAgent};
use ambit_testbed::testapp::{self, HttpLoad, Server};
use ambit_testbed::ztunnel::Ztunnel;
use ambit_testbed::Cluster;
use anyhow::{ensure, Context};

/// As many concurrent connections as the issue asks to complete: five
/// times ztunnel's 200 streams a connection.
const CONNECTIONS: usize = 1000;

fn ztunnel_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("AMBIT_ZTUNNEL")
        .map(PathBuf::from)
        .context("AMBIT_ZTUNNEL names no ztunnel binary (build one from istio/ztunnel)")?;
    ensure!(
        path.is_file(),
        "AMBIT_ZTUNNEL: no file at {}",
        path.display()
    );
    Ok(path)
}

#[test]
#[ignore = "needs a ztunnel binary: AMBIT_ZTUNNEL=PATH, with --ignored"]
fn ztunnels_and_agents_tunnel_to_each_other_with_certificates_from_one_ca() -> anyhow::Result<()> {
    let binary = ztunnel_binary()?;
    let cluster = Cluster::builder()
        .node(&["ambit-client", "ambit-server"])
        .node(&["zt-server"])
        .node(&["zt-client"])
        .build()?;
    let [ambit_client, ambit_server, zt_server, zt_client] =
        cluster.pods_named(["ambit-client", "ambit-server", "zt-server", "zt-client"])?;
    // In the mesh, for Ambit's agent: its own pods and the one it reaches
    // over HBONE at its ztunnel.
    mesh::write_config(
        &cluster,
        &mesh::enrolling(&cluster, &[ambit_client, ambit_server, zt_server], vec![]),
    )?;
    let ca = TestCa::start(&cluster, 3600)?;
    let node = cluster.node("node-1")?;
    let agent = NodeAgent::start_with(
        &cluster,
        node,
        mesh::Source::Directory,
        ca.agent_args(node)?,
    )?;
    for pod in [ambit_client, ambit_server] {
        agent.add_pod(&cluster, pod)?;
    }
    agent.wait_for_certificates(&cluster, 2)?;
    let _servers = [ambit_server, zt_server]
        .map(|pod| {
            Server::new(&pod.name, "v1")
                .http(8080)
                .echo(9000)
                .start(&cluster, pod)
        })
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The server's ztunnel is not told of the Ambit client: it names it
    // by the baggage of the agent's streams.
    let everyone = [ambit_client, ambit_server, zt_server, zt_client];
    let pqc = [("COMPLIANCE_POLICY", "pqc")];
    let ztunnels = [(zt_server, &everyone[1..]), (zt_client, &everyone[..])]
        .map(|(pod, known)| Ztunnel::start(&cluster, &binary, pod, &ca, known, &pqc))
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let outputs = || {
        format!(
            "{}\n{}\n{}",
            agent.output(),
            ztunnels[0].output(),
            ztunnels[1].output()
        )
    };
    // From an Ambit pod to a ztunnel's: every one of 1,000 connections open
    // at once echoes, and ztunnel saw the Ambit pod's identity and, from
    // its baggage, its workload.
    let many = testapp::echo_many(
        &cluster,
        ambit_client.place(),
        SocketAddr::from((zt_server.ip, 9000)),
        CONNECTIONS,
    )?;
    ensure!(many.completed == CONNECTIONS, "{many:?}\n{}", outputs());
    let from_ambit = sample(
        &ztunnels[0].metrics(zt_server)?,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            (
                "source_principal",
                "spiffe://cluster.local/ns/default/sa/ambit-client",
            ),
            ("source_workload", "ambit-client"),
            ("source_workload_namespace", "default"),
        ],
    );
    ensure!(
        from_ambit >= CONNECTIONS as f64,
        "ztunnel's inbound from the Ambit pod: {from_ambit}"
    );

    // From a ztunnel's pod to an Ambit pod (20 requests on one connection):
    // the agent saw ztunnel's identity, in mutual TLS.
    HttpLoad::new(20)
        .run(
            &cluster,
            zt_client.place(),
            &format!("http://{}:8080/", ambit_server.ip),
        )?
        .expect_all(20, "ambit-server/v1", zt_client.ip)
        .with_context(outputs)?;
    let from_ztunnel = sample(
        &agent.metrics(&cluster)?,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            (
                "source_principal",
                "spiffe://cluster.local/ns/default/sa/zt-client",
            ),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    ensure!(
        from_ztunnel >= 1.0,
        "the agent's inbound from ztunnel: {from_ztunnel}"
    );

    // ztunnels ask for their certificate at their first connection.
    let issued = sample(
        &ca.metrics(&cluster)?,
        "ambit_ca_certificate_requests_total",
        &[("outcome", "issued")],
    );
    ensure!(
        issued == 4.0,
        "two pods' and two ztunnels' certificates: {issued}"
    );
    Ok(())
}
