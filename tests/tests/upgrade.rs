//! A rolling upgrade as the chart's DaemonSet runs it: agents started with
//! the arguments Helm renders for the DaemonSet (its node paths, which the
//! test bed keeps elsewhere, mapped), a new one started beside each old
//! one on the same ports, then the old one stopped, under steady traffic.

use std::ffi::OsString;
use std::time::Duration;

use ambit_testbed::mesh::{self, Source};
use ambit_testbed::testapp::{HttpLoad, Server};
use ambit_testbed::{Cluster, Node};
use anyhow::Context;

/// The node agent's arguments as Helm renders the chart.
fn chart_agent_args() -> anyhow::Result<Vec<String>> {
    let objects = ambit_testbed::chart::render("default")?;
    let daemonset = objects
        .iter()
        .find(|o| o["kind"] == "DaemonSet")
        .context("the chart renders no DaemonSet")?;
    let args = &daemonset["spec"]["template"]["spec"]["containers"][0]["args"];
    Ok(args
        .as_array()
        .context("no args")?
        .iter()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect())
}

/// The chart's arguments for an agent on `node`: the flags the test bed
/// sets itself (where it keeps the node's cgroup, pins, socket, state,
/// readiness port and probe socket) and the CA's address, root and token
/// (the test CA's)
/// left to it; the node's CNI directories mapped into `dir`.
fn on_test_node(chart: &[String], dir: &std::path::Path) -> anyhow::Result<Vec<OsString>> {
    const SET_BY_THE_TEST_BED: [&str; 10] = [
        "--capture-cgroup",
        "--readiness-addr",
        "--bpf-pin-dir",
        "--cni-socket",
        "--state-dir",
        "--probe-socket",
        "--drain-seconds",
        "--ca-addr",
        "--ca-root",
        "--ca-token-file",
    ];
    let mut args = Vec::new();
    for arg in chart {
        let flag = arg.split('=').next().unwrap_or(arg);
        if SET_BY_THE_TEST_BED.contains(&flag) {
            continue;
        }
        let mapped = match flag {
            "--cni-conf-dir" => format!("{flag}={}", dir.join("net.d").display()),
            "--cni-bin-dir" => format!("{flag}={}", dir.join("bin").display()),
            _ => arg.clone(),
        };
        args.push(mapped.into());
    }
    std::fs::create_dir_all(dir.join("net.d"))?;
    let conflist = r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[{"type":"ptp"}]}"#;
    std::fs::write(dir.join("net.d/10-ptp.conflist"), conflist)?;
    Ok(args)
}

#[test]
fn agents_started_with_the_charts_arguments_roll_over_without_a_failed_connection(
) -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client"], &["server"])?;
    let [client, server] = cluster.pods_named(["client", "server"])?;
    let config = mesh::enrolling(&cluster, &[client, server], vec![]);
    mesh::write_config(&cluster, &config)?;
    let ca = ambit_testbed::ca::TestCa::start(&cluster, 3600)?;
    let chart = chart_agent_args()?;
    let plugin = cluster.binaries().get("ambit-cni")?;
    let args = |node: &Node| -> anyhow::Result<Vec<OsString>> {
        let dir = cluster.work_dir().join(format!("chart-{}", node.name));
        let mut args = on_test_node(&chart, &dir)?;
        args.extend(["--cni-plugin".into(), plugin.clone().into_os_string()]);
        args.extend(ca.agent_args(node)?);
        Ok(args)
    };
    let mut agents = mesh::start_agents_with_args(&cluster, &Source::Directory, args)?;
    for agent in &agents {
        agent.wait_for_certificates(&cluster, 1)?;
    }
    let _app = Server::new("server", "v1")
        .http(8080)
        .start(&cluster, server)?;
    let requests = 400;
    let url = format!("http://{}:8080/", server.ip);
    let mut load = HttpLoad::churn(requests).spawn(&cluster, client.place(), &url)?;
    std::thread::sleep(Duration::from_millis(300));
    // Node by node, as the DaemonSet's surge: the new beside the old, then
    // the old stopped.
    for agent in &mut agents {
        agent.restart(&cluster)?;
    }
    mesh::expect_no_failed_request(&mut load, requests, &agents)?;
    // The CNI entry the chart's arguments installed stayed (an upgrade).
    let entry = std::fs::read_to_string(
        cluster
            .work_dir()
            .join("chart-node-1/net.d/10-ptp.conflist"),
    )?;
    assert!(entry.contains("ambit-cni"), "{entry}");
    Ok(())
}
