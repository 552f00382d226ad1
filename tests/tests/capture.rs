//! The BPF toolchain, the node agent's loader and the test bed together: the
//! `connect4` program from `ebpf/`, loaded by `ambit-node-agent`, changes
//! where an enrolled pod's connections go, and only that pod's.

use std::net::SocketAddrV4;
use std::time::Duration;

use ambit_node_agent::{capture::Capture, netns};
use ambit_testbed::{testapp, Cluster};
use nix::sys::signal::Signal;

const REQUESTS: usize = 5;

#[test]
fn connect4_redirects_only_the_enrolled_pods_connections() -> anyhow::Result<()> {
    let cluster = Cluster::builder()
        .node(&["client", "bystander"])
        .node(&["server"])
        .build()?;
    let client = cluster.pod("client")?;
    let bystander = cluster.pod("bystander")?;
    let server = cluster.pod("server")?;
    let _server = testapp::serve(&cluster, server, "server", "v1", &[8080], &[])?;
    let _target = testapp::serve(&cluster, server, "redirect-target", "v1", &[15001], &[])?;
    let _local = testapp::serve(&cluster, client, "client-local", "v1", &[8080], &[])?;
    let server_url = format!("http://{}:8080/", server.ip);
    let answered_by = |from: &ambit_testbed::Pod, url: &str| -> anyhow::Result<Vec<String>> {
        let summary = testapp::http(&cluster, from.place(), url, REQUESTS, false)?;
        assert_eq!(summary.status(200), REQUESTS, "{summary:?}");
        Ok(summary.versions.into_keys().collect())
    };
    assert_eq!(answered_by(client, &server_url)?, ["server/v1"]);

    let node = cluster.node(&client.node)?;
    let mut capture = Capture::attach(&cluster.binaries().bpf_object()?, node.pods_cgroup())?;
    let cookie = netns::cookie(&client.place().netns_path())?;
    capture.redirect(cookie, SocketAddrV4::new(server.ip, 15001))?;

    assert_eq!(answered_by(client, &server_url)?, ["redirect-target/v1"]);
    assert_eq!(
        answered_by(bystander, &server_url)?,
        ["server/v1"],
        "a pod not enrolled is untouched"
    );
    assert_eq!(
        answered_by(client, "http://127.0.0.1:8080/")?,
        ["client-local/v1"],
        "loopback is never redirected"
    );

    capture.release(cookie)?;
    assert_eq!(answered_by(client, &server_url)?, ["server/v1"], "released");

    capture.redirect(cookie, SocketAddrV4::new(server.ip, 15001))?;
    assert_eq!(answered_by(client, &server_url)?, ["redirect-target/v1"]);
    drop(capture);
    assert_eq!(
        answered_by(client, &server_url)?,
        ["server/v1"],
        "detached when dropped"
    );
    Ok(())
}

#[test]
fn node_agent_attaches_capture_reports_ready_and_stops_on_sigterm() -> anyhow::Result<()> {
    let cluster = Cluster::builder().node(&["app"]).build()?;
    let node = cluster.node("node-1")?;
    let agent_binary = cluster.binaries().get("ambit-node-agent")?;
    let bpf_object = cluster.binaries().bpf_object()?;
    let mut agent = cluster.spawn(
        node.place(),
        "node-agent",
        &agent_binary,
        [
            "--capture-cgroup".as_ref(),
            node.pods_cgroup().as_os_str(),
            "--bpf-object".as_ref(),
            bpf_object.as_os_str(),
        ],
    )?;
    let readiness = std::net::SocketAddr::from((node.bridge_ip, 15021));
    node.place()
        .wait_for_listener(readiness, Duration::from_secs(10))?;
    let url = format!("http://{readiness}/healthz/ready");
    // The kubelet probes from the node; here a pod's view is used as well.
    let summary = testapp::http(&cluster, cluster.pod("app")?.place(), &url, 1, false)?;
    assert_eq!(summary.status(200), 1, "{summary:?}\n{}", agent.output());

    agent.signal(Signal::SIGTERM)?;
    let status = agent.wait_exit(Duration::from_secs(10))?;
    assert!(status.success(), "{status}\n{}", agent.output());
    assert!(
        agent.output().contains("traffic capture detached"),
        "{}",
        agent.output()
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
