//! The node agent's life cycle around capture: it loads and attaches the BPF
//! programs, reports ready, and stops cleanly; without its BPF object it says
//! how to build it.

use std::time::Duration;

use ambit_testbed::mesh::{self, NodeAgent};
use ambit_testbed::Cluster;

#[test]
fn node_agent_reports_ready_and_stops_on_sigterm() -> anyhow::Result<()> {
    let cluster = Cluster::builder().node(&["app"]).build()?;
    mesh::write_config(&cluster, &mesh::MeshConfig::default())?;
    let mut agent = NodeAgent::start(&cluster, cluster.node("node-1")?)?;
    // Prometheus text: no connection counted yet, the relay's counter at 0.
    let metrics = agent.metrics(&cluster)?;
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
    assert!(!metrics.contains("istio_tcp_"), "{metrics}");
    assert!(
        metrics.contains("\nambit_relay_takebacks_total 0\n"),
        "{metrics}"
    );

    agent.stop()?;
    let output = agent.output();
    assert!(output.contains("traffic capture attached"), "{output}");
    assert!(
        output.contains("stopped; capture stays in place for the next agent"),
        "{output}"
    );
    Ok(())
}

#[test]
fn node_agent_without_its_bpf_object_says_how_to_build_it() -> anyhow::Result<()> {
    let cluster = Cluster::builder().node(&[]).build()?;
    let node = cluster.node("node-1")?;
    let output = cluster.run(
        node.place(),
        &cluster.binaries().get("ambit-node-agent")?,
        [
            "--capture-cgroup".as_ref(),
            node.pods_cgroup().as_os_str(),
            "--bpf-object".as_ref(),
            "/nonexistent/ambit.bpf.o".as_ref(),
        ],
        Duration::from_secs(10),
    )?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("cargo xtask build-ebpf"), "{stderr}");
    Ok(())
}
