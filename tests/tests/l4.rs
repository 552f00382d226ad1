//! The L4 data path: enrolled pods' connections pass through both node
//! agents, captured by eBPF, with nothing changed in the apps.

use std::net::Ipv4Addr;

use ambit_testbed::mesh::{self, sample, NodeAgent};
use ambit_testbed::testapp::{self, HttpLoad};
use ambit_testbed::Cluster;

const REQUESTS: usize = 20;
const OPENED: &str = "istio_tcp_connections_opened_total";
const RECEIVED: &str = "istio_tcp_received_bytes_total";
const SENT: &str = "istio_tcp_sent_bytes_total";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

#[test]
fn enrolled_pods_talk_through_both_agents_by_pod_ip_and_service_vip() -> anyhow::Result<()> {
    let cluster = Cluster::builder()
        .node(&["client", "bystander"])
        .node(&["server", "plain"])
        .build()?;
    let [client, bystander, server, plain] =
        ["client", "bystander", "server", "plain"].map(|name| cluster.pod(name).expect("pod"));
    let services = vec![mesh::service("server", VIP, 80, 8080, &[server])];
    mesh::write_config(&cluster, &mesh::enrolling(&[client, server], services))?;
    let agents = [
        NodeAgent::start(&cluster, cluster.node("node-1")?)?,
        NodeAgent::start(&cluster, cluster.node("node-2")?)?,
    ];
    for (agent, pod) in [
        (&agents[0], client),
        (&agents[0], bystander),
        (&agents[1], server),
        (&agents[1], plain),
    ] {
        agent.add_pod(&cluster, pod)?;
    }
    let _apps = [
        testapp::serve(&cluster, server, "server", "v1", &[8080], &[])?,
        testapp::serve(&cluster, plain, "plain", "v1", &[8080], &[])?,
    ];

    for url in [
        format!("http://{}:8080/", server.ip),
        format!("http://{VIP}:80/"),
    ] {
        let summary = HttpLoad::new(REQUESTS).run(&cluster, client.place(), &url)?;
        assert_eq!(
            summary.status(200),
            REQUESTS,
            "{url}: {summary:?}\n{}",
            agents[0].output()
        );
        assert_eq!(
            summary.versions.get("server/v1"),
            Some(&REQUESTS),
            "{url}: {summary:?}"
        );
        // The server sees the client pod itself, not an agent.
        assert_eq!(
            summary.peers.get(&client.ip.to_string()),
            Some(&REQUESTS),
            "{url}: {summary:?}"
        );
    }
    let source = agents[0].metrics(&cluster)?;
    let destination = agents[1].metrics(&cluster)?;
    // One connection each (the client keeps its connection for all requests).
    assert_eq!(
        sample(
            &source,
            OPENED,
            &[("reporter", "source"), ("destination_service", "unknown")]
        ),
        1.0,
        "{source}"
    );
    assert_eq!(
        sample(
            &source,
            OPENED,
            &[
                ("reporter", "source"),
                ("destination_service", "server.default")
            ]
        ),
        1.0,
        "{source}"
    );
    assert_eq!(
        sample(&destination, OPENED, &[("reporter", "destination")]),
        2.0,
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
    let summary = HttpLoad::new(REQUESTS).run(
        &cluster,
        bystander.place(),
        &format!("http://{}:8080/", plain.ip),
    )?;
    assert_eq!(
        summary.versions.get("plain/v1"),
        Some(&REQUESTS),
        "{summary:?}"
    );
    assert_eq!(
        summary.peers.get(&bystander.ip.to_string()),
        Some(&REQUESTS),
        "{summary:?}"
    );
    assert_eq!(sample(&agents[0].metrics(&cluster)?, OPENED, &[]), 2.0);
    assert_eq!(sample(&agents[1].metrics(&cluster)?, OPENED, &[]), 2.0);
    Ok(())
}
