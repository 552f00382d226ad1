//! The real `ambit-cni` binary, run as a container runtime runs it, against
//! the real agent: spec-conformant errors, and no half-enrolled pod.

use ambit_testbed::apiserver::ApiServer;
use ambit_testbed::mesh::{self, run_cni, AgentPort, NodeAgent, Source};
use ambit_testbed::testapp::{HttpLoad, Server};
use ambit_testbed::Cluster;
use serde_json::Value;

fn stdout_json(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or(Value::Null)
}

#[test]
fn bad_invocations_get_spec_errors() -> anyhow::Result<()> {
    let cluster = Cluster::builder().node(&[]).build()?;
    let config =
        r#"{"cniVersion":"1.0.0","name":"k8s","type":"ambit-cni","prevResult":{"ips":[]}}"#;
    let sandbox = |command: &str| {
        vec![
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", "c1".to_string()),
            ("CNI_NETNS", "/run/netns/nowhere".to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
        ]
    };
    // CNI variables, stdin, the expected error code and a phrase of its message.
    type Case<'a> = (Vec<(&'a str, String)>, &'a str, u64, &'a str);
    let cases: Vec<Case> = vec![
        (vec![], config, 4, "CNI_COMMAND is not set"),
        (sandbox("FROB"), config, 4, "FROB"),
        (sandbox("ADD")[..2].to_vec(), config, 4, "CNI_IFNAME"),
        (sandbox("ADD"), "{\"cniVersion\": ", 6, "not JSON"),
        (
            sandbox("ADD"),
            r#"{"cniVersion":"1.0.0","name":"k8s"}"#,
            7,
            "prevResult",
        ),
        (sandbox("ADD"), r#"{"cniVersion":"0.1.0"}"#, 1, "0.1.0"),
    ];
    for (env, stdin, code, says) in cases {
        let output = run_cni(&cluster, &env, stdin.as_bytes())?;
        let error = stdout_json(&output);
        assert!(!output.status.success(), "{env:?}: succeeded");
        assert_eq!(error["code"], code, "{env:?} {stdin}: {error}");
        assert!(
            error["msg"].as_str().is_some_and(|msg| msg.contains(says)),
            "{env:?}: {error}"
        );
    }
    let version = run_cni(
        &cluster,
        &[("CNI_COMMAND", "VERSION".into())],
        br#"{"cniVersion":"1.0.0"}"#,
    )?;
    assert!(version.status.success());
    assert!(stdout_json(&version)["supportedVersions"]
        .to_string()
        .contains("1.1.0"));
    Ok(())
}

#[test]
fn add_check_del_and_failed_adds_leave_nothing_behind() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["app", "squatter"], &["server"])?;
    let [app, squatter, server] = cluster.pods_named(["app", "squatter", "server"])?;
    mesh::write_config(
        &cluster,
        &mesh::enrolling(&cluster, &[app, squatter], vec![]),
    )?;
    let mut agent = NodeAgent::start(&cluster, cluster.node("node-1")?)?;
    let _server = Server::new("server", "v1")
        .http(8080)
        .start(&cluster, server)?;
    let url = format!("http://{}:8080/", server.ip);
    let captured = || agent.opened_as_source(&cluster);

    // ADD passes the previous plugin's result through; the pod is enrolled.
    let add = agent.cni(&cluster, "ADD", app)?;
    assert!(add.status.success(), "{add:?}");
    assert_eq!(
        stdout_json(&add)["ips"][0]["address"],
        format!("{}/24", app.ip)
    );
    assert!(agent.cni(&cluster, "CHECK", app)?.status.success());
    HttpLoad::new(1).run(&cluster, app.place(), &url)?;
    assert_eq!(captured()?, 1.0);
    // The admin port's config dump shows the pod; the network-facing
    // metrics port does not serve it.
    let (status, dump) = agent.get(&cluster, AgentPort::Admin, "/config_dump")?;
    let dump: Value = serde_json::from_str(&dump)?;
    assert_eq!(status, 200);
    assert_eq!(dump["pods"][0]["name"], "app", "{dump}");
    assert_eq!(dump["pods"][0]["enrolled"], true, "{dump}");
    assert_eq!(dump["pods"][0]["ips"][0], app.ip.to_string(), "{dump}");
    assert_eq!(
        agent.get(&cluster, AgentPort::Metrics, "/config_dump")?.0,
        404
    );

    // DEL forgets it: CHECK fails, and its traffic is no longer captured.
    assert!(agent.cni(&cluster, "DEL", app)?.status.success());
    let check = agent.cni(&cluster, "CHECK", app)?;
    assert!(!check.status.success());
    assert!(
        stdout_json(&check)["details"]
            .as_str()
            .is_some_and(|d| d.contains("unknown")),
        "{check:?}"
    );
    HttpLoad::new(1).run(&cluster, app.place(), &url)?;
    assert_eq!(captured()?, 1.0);

    // A pod whose port 15001 is taken cannot get the agent's listener: ADD
    // fails with the reason, and nothing of the pod stays captured.
    let _squat = Server::new("squatter", "v1")
        .http(15001)
        .start(&cluster, squatter)?;
    let add = agent.cni(&cluster, "ADD", squatter)?;
    assert!(!add.status.success());
    let error = stdout_json(&add);
    assert_eq!(error["code"], 100, "{error}");
    assert!(
        error["details"]
            .as_str()
            .is_some_and(|d| d.contains("listeners")),
        "{error}"
    );
    assert!(!agent.cni(&cluster, "CHECK", squatter)?.status.success());
    let summary = HttpLoad::new(1).run(&cluster, squatter.place(), &url)?;
    assert_eq!(summary.status(200), 1, "{summary:?}");
    assert_eq!(
        captured()?,
        1.0,
        "the squatter's connection went through the agent"
    );

    // With the agent gone, ADD asks the runtime to try again later; DEL
    // still succeeds.
    agent.stop()?;
    let add = agent.cni(&cluster, "ADD", app)?;
    assert_eq!(stdout_json(&add)["code"], 11, "{add:?}");
    assert!(agent.cni(&cluster, "DEL", app)?.status.success());
    Ok(())
}

#[test]
fn with_the_agent_down_only_pods_the_mesh_wants_wait_and_those_started_are_taken_on_later(
) -> anyhow::Result<()> {
    let cluster = Cluster::builder()
        .node(&["meshed", "opted-in", "plain", "system", "injected"])
        .node(&["server"])
        .namespace("meshed", "shop")
        .namespace("injected", "shop")
        .namespace("opted-in", "other")
        .namespace("plain", "other")
        .namespace("system", "kube-system")
        .build()?;
    let [meshed, opted_in, plain, system, server, injected] = cluster.pods_named([
        "meshed", "opted-in", "plain", "system", "server", "injected",
    ])?;
    // `shop` is in the mesh by its namespace's label, `opted-in` by its own.
    let shop = serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": "shop", "labels": { "istio.io/dataplane-mode": "ambient" } },
    });
    // `injected` runs Istio's sidecar, in `shop`: never Ambit's.
    let sidecar = |config: &mut mesh::MeshConfig| {
        for pod in config.pods.iter_mut().filter(|p| p.name == "injected") {
            let status = r#"{"containers":["istio-proxy"]}"#;
            pod.annotations = vec![("sidecar.istio.io/status".into(), status.into())];
        }
    };
    let mut config = mesh::enrolling(&cluster, &[opted_in], vec![]);
    config.istio.push(shop.clone());
    sidecar(&mut config);
    mesh::write_config(&cluster, &config)?;
    let mut agent = NodeAgent::start(&cluster, cluster.node("node-1")?)?;
    let add = agent.cni(&cluster, "ADD", injected)?;
    assert!(add.status.success(), "{add:?}");
    let (_, dump) = agent.get(&cluster, AgentPort::Admin, "/config_dump")?;
    let dump: Value = serde_json::from_str(&dump)?;
    let pods = dump["pods"].as_array().cloned().unwrap_or_default();
    assert!(
        pods.iter()
            .any(|p| p["name"] == "injected" && p["enrolled"] == false),
        "{dump}"
    );
    let _server = Server::new("server", "v1")
        .http(8080)
        .start(&cluster, server)?;
    agent.stop()?;

    // The agent is down: pods the mesh wants wait (a retryable error), the
    // rest start at once.
    for (pod, waits) in [
        (meshed, true),
        (opted_in, true),
        (plain, false),
        (system, false),
        (injected, false),
    ] {
        let add = agent.cni(&cluster, "ADD", pod)?;
        match waits {
            true => {
                let error = stdout_json(&add);
                assert_eq!(error["code"], 11, "{}: {add:?}", pod.name);
                assert!(
                    error["details"]
                        .as_str()
                        .is_some_and(|d| d.contains("enrolled")),
                    "{error}"
                );
            }
            false => assert!(add.status.success(), "{}: {add:?}", pod.name),
        }
    }
    // A node just rebooted has no record yet: only kube-system starts.
    let record = agent.dir().join("enrollment.json");
    let kept = std::fs::read(&record)?;
    std::fs::remove_file(&record)?;
    assert_eq!(stdout_json(&agent.cni(&cluster, "ADD", plain)?)["code"], 11);
    assert!(agent.cni(&cluster, "ADD", system)?.status.success());
    std::fs::write(&record, kept)?;

    // Back up, the agent takes on the pods started without it: enrolled
    // once the mesh wants them, with no new ADD.
    agent.start_again(&cluster)?;
    let url = format!("http://{}:8080/", server.ip);
    HttpLoad::new(1).run(&cluster, plain.place(), &url)?;
    assert_eq!(agent.opened_as_source(&cluster)?, 0.0);
    let mut config = mesh::enrolling(&cluster, &[opted_in, plain], vec![]);
    config.istio.push(shop);
    sidecar(&mut config);
    mesh::write_config(&cluster, &config)?;
    ambit_testbed::wait_for(
        "the plain pod to be enrolled",
        std::time::Duration::from_secs(10),
        || {
            let (_, dump) = agent.get(&cluster, AgentPort::Admin, "/config_dump")?;
            let dump: Value = serde_json::from_str(&dump)?;
            let pods = dump["pods"].as_array().cloned().unwrap_or_default();
            Ok(pods
                .iter()
                .any(|p| p["name"] == "plain" && p["enrolled"] == true))
        },
    )?;
    HttpLoad::new(1).run(&cluster, plain.place(), &url)?;
    assert_eq!(agent.opened_as_source(&cluster)?, 1.0, "{}", agent.output());
    Ok(())
}

#[test]
fn the_agent_installs_its_plugin_keeps_its_entry_and_takes_both_out_only_at_an_uninstall(
) -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["app"], &["server"])?;
    let api = ApiServer::start(&cluster)?;
    api.apply(&mesh::enrolling(&cluster, &[], vec![]))?;
    let daemonset = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": { "name": "ambit-node-agent", "namespace": "ambit-system" },
    });
    api.server()
        .apply(daemonset)
        .map_err(|refusal| anyhow::anyhow!("{}", refusal.message))?;
    // The node's CNI directories, the cluster's own CNI configured there.
    let node = cluster.work_dir().join("node-cni");
    let (conf_dir, bin_dir) = (node.join("net.d"), node.join("bin"));
    std::fs::create_dir_all(&conf_dir)?;
    let calico = serde_json::json!({
        "cniVersion": "1.0.0", "name": "k8s-pod-network",
        "plugins": [{ "type": "calico" }, { "type": "portmap" }],
    });
    let primary = conf_dir.join("10-calico.conflist");
    std::fs::write(&primary, calico.to_string())?;
    std::fs::write(
        conf_dir.join("99-loopback.conf"),
        r#"{"cniVersion":"1.0.0","name":"lo","type":"loopback"}"#,
    )?;
    let plugin = cluster.binaries().get("ambit-cni")?;
    let args: Vec<std::ffi::OsString> = vec![
        "--cni-conf-dir".into(),
        conf_dir.clone().into(),
        "--cni-bin-dir".into(),
        bin_dir.clone().into(),
        "--cni-plugin".into(),
        plugin.clone().into(),
        "--cni-exempt-namespaces=ambit-system".into(),
        "--cni-uninstall=if-daemonset-removed".into(),
        "--daemonset=ambit-system/ambit-node-agent".into(),
    ];
    let source = Source::Kubeconfig(api.kubeconfig().to_path_buf());
    let mut agent = NodeAgent::start_with(&cluster, cluster.node("node-1")?, source, args)?;
    let plugins = || -> anyhow::Result<Vec<Value>> {
        let config: Value = serde_json::from_slice(&std::fs::read(&primary)?)?;
        Ok(config["plugins"].as_array().cloned().unwrap_or_default())
    };
    let ours = |plugins: &[Value]| plugins.iter().filter(|p| p["type"] == "ambit-cni").count();
    let entry_last = || -> anyhow::Result<bool> {
        let plugins = plugins()?;
        Ok(ours(&plugins) == 1 && plugins.last().is_some_and(|p| p["type"] == "ambit-cni"))
    };
    let within = std::time::Duration::from_secs(10);
    ambit_testbed::wait_for("the CNI entry", within, &entry_last)?;
    let installed = std::fs::read(bin_dir.join("ambit-cni"))?;
    assert_eq!(installed, std::fs::read(&plugin)?, "the plugin, whole");
    let last = plugins()?.pop().unwrap_or_default();
    assert_eq!(
        last["agentSocket"],
        agent.dir().join("cni.sock").display().to_string()
    );
    assert_eq!(
        last["exemptNamespaces"],
        serde_json::json!(["ambit-system"])
    );
    // Calico rewrites its file and drops the entry: it comes back.
    std::fs::write(&primary, calico.to_string())?;
    ambit_testbed::wait_for("the CNI entry repaired", within, &entry_last)?;

    // An upgrade (the DaemonSet stays): the plugin and entry stay.
    agent.stop()?;
    assert!(
        entry_last()? && bin_dir.join("ambit-cni").exists(),
        "{}",
        agent.output()
    );
    // An uninstall (the DaemonSet is gone): both are taken out, and the
    // cluster's configuration is as it was.
    agent.start_again(&cluster)?;
    api.server()
        .delete("DaemonSet", "ambit-system", "ambit-node-agent")
        .map_err(|refusal| anyhow::anyhow!("{}", refusal.message))?;
    agent.stop()?;
    let left: Value = serde_json::from_slice(&std::fs::read(&primary)?)?;
    assert_eq!(left, calico, "{}", agent.output());
    assert!(!bin_dir.join("ambit-cni").exists());
    Ok(())
}
