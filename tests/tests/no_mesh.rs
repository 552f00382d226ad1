//! Without any mesh: the namespace cluster itself carries traffic between
//! pods on different nodes.

use std::net::SocketAddr;

use ambit_testbed::bare_relay::{self, PORT_OFFSET};
use ambit_testbed::testapp::{self, HttpLoad, Server};
use ambit_testbed::Cluster;

const REQUESTS: usize = 20;

#[test]
fn pods_on_different_nodes_exchange_http_and_tcp_echo_both_ways() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client"], &["server"])?;
    let client = cluster.pod("client")?;
    let server = cluster.pod("server")?;
    assert_ne!(client.node, server.node);
    let _server_app = Server::new("server", "v1")
        .http(8080)
        .echo(9000)
        .start(&cluster, server)?;
    let _client_app = Server::new("client", "v1")
        .echo(9000)
        .start(&cluster, client)?;

    for http2 in [false, true] {
        let url = format!("http://{}:8080/", server.ip);
        // No NAT between nodes: the server sees the client pod's own address.
        HttpLoad::new(REQUESTS)
            .http2(http2)
            .run(&cluster, client.place(), &url)?
            .expect_all(REQUESTS, "server/v1", client.ip)?;
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

/// The benchmarks' floor of relaying: requests and a transfer pass through
/// both bare relays intact, the server seeing the relay in its own
/// namespace as the caller.
#[test]
fn a_bare_relay_pair_carries_requests_and_a_transfer_intact() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client"], &["server"])?;
    let [client, server] = cluster.pods_named(["client", "server"])?;
    let _server_app = Server::new("server", "v1")
        .http(8080)
        .sink(9100)
        .start(&cluster, server)?;
    let _relays = bare_relay::pair(client, server, &[8080, 9100])?;
    let url = format!("http://127.0.0.1:{}/", 8080 + PORT_OFFSET);
    HttpLoad::new(REQUESTS)
        .run(&cluster, client.place(), &url)?
        .expect_all(REQUESTS, "server/v1", server.ip)?;
    let sink = SocketAddr::from(([127, 0, 0, 1], 9100 + PORT_OFFSET));
    let transfer = testapp::send(&cluster, client.place(), sink, 64 << 20)?;
    assert_eq!(
        (
            transfer.bytes_received_by_server,
            transfer.crc_received_by_server
        ),
        (64 << 20, transfer.crc_sent)
    );
    Ok(())
}

#[test]
fn teardown_removes_every_namespace_and_process_of_the_run() -> anyhow::Result<()> {
    let cluster = Cluster::builder().node(&["lonely"]).build()?;
    let run = cluster.run_name().to_string();
    let pod = cluster.pod("lonely")?;
    let server = Server::new("lonely", "v1")
        .http(8080)
        .start(&cluster, pod)?;
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

/// Starts the `cluster` example, which holds a cluster until it is signalled,
/// and returns it with its run name and the pid of a process in a pod.
fn hold_cluster() -> anyhow::Result<(std::process::Child, String, u32)> {
    use std::io::BufRead;
    let example = ambit_testbed::Binaries::locate()?.example("cluster")?;
    let mut child = std::process::Command::new(example)
        .args(["1", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    let run = lines.next().expect("a first line")?;
    let run = run
        .strip_prefix("run ")
        .expect("`run NAME` first")
        .to_string();
    let pod_line = lines.next().expect("a pod line")?;
    let pid = pod_line
        .split("pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|pid| pid.parse().ok())
        .expect("the test app's pid");
    // Keep reading, so the example never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Ok((child, run, pid))
}

fn leftovers(run: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .filter(|name| name.starts_with(&format!("{run}-")))
                .collect()
        })
        .unwrap_or_default()
}

fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

#[test]
fn ctrl_c_tears_the_cluster_down() -> anyhow::Result<()> {
    let (mut child, run, pid) = hold_cluster()?;
    assert!(!leftovers(&run).is_empty());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let status = child.wait()?;
    assert_eq!(status.code(), Some(130), "{status}");
    assert_eq!(leftovers(&run), Vec::<String>::new());
    assert!(!is_running(pid), "the pod's process {pid} survived");
    Ok(())
}

#[test]
fn a_killed_run_is_swept_by_the_next_start() -> anyhow::Result<()> {
    let (mut child, run, pid) = hold_cluster()?;
    child.kill()?;
    child.wait()?;
    let _next = Cluster::builder().node(&[]).build()?;
    assert_eq!(leftovers(&run), Vec::<String>::new());
    assert!(!is_running(pid), "the pod's process {pid} survived");
    Ok(())
}
