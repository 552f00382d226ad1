//! Egress: an enrolled pod reaches a server outside the mesh (a pod of a
//! namespace of its own, not enrolled) as the ServiceEntries that declare
//! it say, through its node's agent.

use std::net::Ipv4Addr;

use ambit_testbed::mesh::{self, sample, MeshConfig};
use ambit_testbed::testapp::{HttpLoad, Server};
use ambit_testbed::Cluster;
use anyhow::ensure;
use serde_json::{json, Value};

/// The address no one has, which the STATIC ServiceEntry declares.
const API_VIP: Ipv4Addr = Ipv4Addr::new(240, 240, 0, 10);

fn service_entry(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": { "name": name, "namespace": "default" },
        "spec": spec,
    })
}

#[test]
fn service_entries_static_and_none_reach_a_server_outside_the_mesh() -> anyhow::Result<()> {
    let cluster = Cluster::builder()
        .node(&["client"])
        .node(&["external"])
        .namespace("external", "external")
        .build()?;
    let [client, external] = cluster.pods_named(["client", "external"])?;
    let config = MeshConfig {
        istio: vec![
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
        ..mesh::enrolling(&cluster, &[client], vec![])
    };
    let (_ca, agents) = mesh::start_secured(&cluster, &config, 3600)?;
    let _server = Server::new("external", "v1")
        .http(8080)
        .start(&cluster, external)?;
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
