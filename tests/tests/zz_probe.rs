use std::net::SocketAddr;
use ambit_testbed::mesh;
use ambit_testbed::testapp::{self, Server};
use ambit_testbed::Cluster;

#[test]
fn probe_throughput() -> anyhow::Result<()> {
    let cluster = Cluster::builder().node(&["client"]).node(&["server"]).build()?;
    let [client, server] = ["client", "server"].map(|name| cluster.pod(name).expect("pod"));
    let config = mesh::enrolling(&cluster, &[client, server], vec![]);
    mesh::write_config(&cluster, &config)?;
    let agents = mesh::start_agents(&cluster)?;
    let _app = Server::new("server", "v1").echo(9000).sink(9100).start(&cluster, server)?;
    for _ in 0..3 {
        let t = testapp::send(&cluster, client.place(), SocketAddr::from((server.ip, 9100)), 2 << 30)?;
        eprintln!("PROBE {:.2} Gbit/s", (2u64 << 30) as f64 * 8.0 / t.seconds / 1e9);
    }
    drop(agents);
    Ok(())
}
