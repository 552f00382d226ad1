//! The node agents in Kubernetes mode: they read the mesh from an API
//! server (the fake one, over HTTP on the cluster's underlay), follow its
//! changes; both proxies refuse to start without a reachable source.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ambit_testbed::apiserver::ApiServer;
use ambit_testbed::mesh::{self, sample, NodeAgent, Source};
use ambit_testbed::testapp::{HttpLoad, Server};
use ambit_testbed::Cluster;

const OPENED: &str = "istio_tcp_connections_opened_total";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);

#[test]
fn agents_follow_the_kubernetes_api() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client"], &["server"])?;
    let [client, server] = cluster.pods_named(["client", "server"])?;
    let api = ApiServer::start(&cluster)?;
    let services = vec![mesh::service("server", VIP, 80, 8080, &[server])];
    api.apply(&mesh::enrolling(
        &cluster,
        &[client, server],
        services.clone(),
    ))?;
    let source = Source::Kubeconfig(api.kubeconfig().to_path_buf());
    let agents = mesh::start_agents_from(&cluster, &source)?;
    let _app = Server::new("server", "v1")
        .http(8080)
        .start(&cluster, server)?;

    // By Service VIP: only the agents know it, from the API server.
    let url = format!("http://{VIP}:80/");
    HttpLoad::new(5)
        .run(&cluster, client.place(), &url)?
        .expect_all(5, "server/v1", client.ip)?;
    let opened = |agent: &NodeAgent| -> anyhow::Result<f64> {
        Ok(sample(
            &agent.metrics(&cluster)?,
            OPENED,
            &[("reporter", "source")],
        ))
    };
    assert_eq!(opened(&agents[0])?, 1.0, "through the client's agent");

    // The client is released through the API: new connections bypass the agent.
    api.apply(&mesh::enrolling(&cluster, &[server], services))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let direct = format!("http://{}:8080/", server.ip);
    loop {
        let before = opened(&agents[0])?;
        HttpLoad::new(1)
            .run(&cluster, client.place(), &direct)?
            .expect_all(1, "server/v1", client.ip)?;
        if opened(&agents[0])? == before {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the release through the API server never took effect"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn proxies_without_a_reachable_source_say_so() -> anyhow::Result<()> {
    let cluster = Cluster::builder().node(&["app"]).build()?;
    let node = cluster.node("node-1")?;
    let kubeconfig = cluster.work_dir().join("unreachable-kubeconfig");
    // Nothing listens there.
    std::fs::write(
        &kubeconfig,
        ambit_fake_apiserver::FakeApiServer::default()
            .kubeconfig(&format!("http://{}:1", node.underlay_ip)),
    )?;
    let cgroup = node.pods_cgroup().display().to_string();
    let proxies: [(&str, &[&str]); 2] = [
        ("ambit-node-agent", &["--capture-cgroup", &cgroup]),
        ("ambit-waypoint", &["--namespace", "default"]),
    ];
    let cases: [(&[&str], &str); 2] = [
        (
            &["--kubeconfig", kubeconfig.to_str().unwrap_or_default()],
            "is not reachable",
        ),
        (
            &[],
            "no configuration source: give --config-dir DIR (standalone) or --kubeconfig FILE",
        ),
    ];
    for (proxy, own_args) in proxies {
        let binary = cluster.binaries().get(proxy)?;
        for (args, expected) in cases {
            let all = [own_args, args].concat();
            let output = cluster.run(node.place(), &binary, &all, Duration::from_secs(30))?;
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                !output.status.success(),
                "{proxy} {args:?} started:\n{stderr}"
            );
            assert!(
                stderr.contains(expected),
                "{proxy} {args:?}: wanted {expected:?} in:\n{stderr}"
            );
        }
    }
    Ok(())
}

#[test]
fn an_istio_older_than_1_22_serving_no_v1_still_has_its_policies_enforced() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client"], &["server"])?;
    let [client, server] = cluster.pods_named(["client", "server"])?;
    let api = ApiServer::start(&cluster)?;
    // Istio 1.21's CRDs: the security kinds at v1beta1 only.
    api.server()
        .serve_only("authorizationpolicies", &["v1beta1"]);
    api.server().serve_only("peerauthentications", &["v1beta1"]);
    let mut config = mesh::enrolling(&cluster, &[client, server], vec![]);
    config.istio.push(serde_json::json!({
        "apiVersion": "security.istio.io/v1beta1", "kind": "AuthorizationPolicy",
        "metadata": { "name": "deny-all", "namespace": "default" },
        "spec": { "action": "DENY", "rules": [{}] },
    }));
    api.apply(&config)?;
    let source = Source::Kubeconfig(api.kubeconfig().to_path_buf());
    let agents = mesh::start_agents_from(&cluster, &source)?;
    let _app = Server::new("server", "v1")
        .http(8080)
        .start(&cluster, server)?;
    // Read at v1beta1, the policy is in force: the server is refused.
    let summary = HttpLoad::new(2).run(
        &cluster,
        client.place(),
        &format!("http://{}:8080/", server.ip),
    )?;
    assert_eq!(
        summary.status(200),
        0,
        "{summary:?}\n{}",
        agents[1].output()
    );
    let (_, dump) = agents[1].get(&cluster, mesh::AgentPort::Admin, "/config_dump")?;
    assert!(dump.contains("deny-all"), "{dump}");
    Ok(())
}

#[test]
fn captured_pods_are_marked_for_istios_proxies_and_unmarked_when_released() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client"], &["server"])?;
    let [client, server] = cluster.pods_named(["client", "server"])?;
    let api = ApiServer::start(&cluster)?;
    api.apply(&mesh::enrolling(&cluster, &[client, server], vec![]))?;
    let source = Source::Kubeconfig(api.kubeconfig().to_path_buf());
    let _agents = mesh::start_agents_from(&cluster, &source)?;
    let marked = |name: &str| -> Option<String> {
        let pods = api.server().objects("Pod");
        let pod = pods.iter().find(|p| p["metadata"]["name"] == name)?;
        let value = &pod["metadata"]["annotations"]["ambient.istio.io/redirection"];
        value.as_str().map(str::to_string)
    };
    let within = Duration::from_secs(10);
    ambit_testbed::wait_for("both pods marked", within, || {
        Ok(marked("client").as_deref() == Some("enabled")
            && marked("server").as_deref() == Some("enabled"))
    })?;
    // The server leaves the mesh (its label, as `kubectl label` changes
    // it): its mark goes, the client's stays.
    let mut pod = api
        .server()
        .objects("Pod")
        .into_iter()
        .find(|p| p["metadata"]["name"] == "server")
        .ok_or_else(|| anyhow::anyhow!("no server pod"))?;
    pod["metadata"]["labels"]["istio.io/dataplane-mode"] = "none".into();
    api.server()
        .update(pod)
        .map_err(|refusal| anyhow::anyhow!("{}", refusal.message))?;
    ambit_testbed::wait_for("the server unmarked", within, || {
        Ok(marked("server").is_none())
    })?;
    assert_eq!(marked("client").as_deref(), Some("enabled"));
    Ok(())
}
