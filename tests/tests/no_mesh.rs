//! Without any mesh: the namespace cluster itself carries traffic between
//! pods on different nodes.

use std::net::SocketAddr;

use ambit_testbed::{testapp, Cluster};

const REQUESTS: usize = 20;

#[test]
fn pods_on_different_nodes_exchange_http_and_tcp_echo_both_ways() -> anyhow::Result<()> {
    let cluster = Cluster::builder()
        .node(&["client"])
        .node(&["server"])
        .build()?;
    let client = cluster.pod("client")?;
    let server = cluster.pod("server")?;
    assert_ne!(client.node, server.node);
    let _server_app = testapp::serve(&cluster, server, "server", "v1", &[8080], &[9000])?;
    let _client_app = testapp::serve(&cluster, client, "client", "v1", &[], &[9000])?;

    for http2 in [false, true] {
        let url = format!("http://{}:8080/", server.ip);
        let summary = testapp::http(&cluster, client.place(), &url, REQUESTS, http2)?;
        assert_eq!(summary.status(200), REQUESTS, "http2={http2}: {summary:?}");
        assert_eq!(
            summary.versions.get("server/v1"),
            Some(&REQUESTS),
            "{summary:?}"
        );
        // No NAT between nodes: the server sees the client pod's own address.
        assert_eq!(
            summary.peers.get(&client.ip.to_string()),
            Some(&REQUESTS),
            "{summary:?}"
        );
    }

    let to_server = SocketAddr::from((server.ip, 9000));
    let to_client = SocketAddr::from((client.ip, 9000));
    assert_eq!(
        testapp::echo(&cluster, client.place(), to_server, "ping from client")?,
        "ping from client"
    );
    assert_eq!(
        testapp::echo(&cluster, server.place(), to_client, "ping from server")?,
        "ping from server"
    );
    Ok(())
}

#[test]
fn teardown_removes_every_namespace_and_process_of_the_run() -> anyhow::Result<()> {
    let cluster = Cluster::builder().node(&["lonely"]).build()?;
    let run = cluster.run_name().to_string();
    let pod = cluster.pod("lonely")?;
    let server = testapp::serve(&cluster, pod, "lonely", "v1", &[8080], &[])?;
    let pid = server.pid();
    let cgroup = pod.place().cgroup().to_path_buf();
    drop(cluster);

    let netns: Vec<String> = std::fs::read_dir("/run/netns")?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(&run))
        .collect();
    assert!(netns.is_empty(), "namespaces left: {netns:?}");
    assert!(!cgroup.exists(), "cgroup left: {}", cgroup.display());
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Killed; at most a zombie until its handle reaps it.
    assert!(
        state.is_empty() || state.contains(") Z "),
        "server still running: {state}"
    );
    Ok(())
}
