//! What hostile pods and careless operators must never achieve: switch the
//! mesh off, or take the node's other traffic down with them.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambit_identity::Identity;
use ambit_testbed::hbone::{tunnel_from, tunnel_through};
use ambit_testbed::mesh::{self, AgentPort, NodeAgent};
use ambit_testbed::sniff::contains;
use ambit_testbed::testapp::{self, HttpLoad, Server};
use ambit_testbed::{Cluster, Place, Pod};
use serde_json::json;

/// The ports of the agent's listeners (admin, outbound, inbound, HBONE,
/// metrics, readiness, DNS), as Istio's ztunnel uses them.
const AGENT_PORTS: [u16; 7] = [15000, 15001, 15006, 15008, 15020, 15021, 15053];

/// Whether an echo of `message` to `addr` from `from` came back whole.
fn echoed(cluster: &Cluster, from: &Place, addr: SocketAddr, message: &str) -> bool {
    matches!(testapp::echo(cluster, from, addr, message), Ok(back) if back.trim() == message)
}

fn open_files(agent: &NodeAgent) -> anyhow::Result<usize> {
    Ok(agent.usage()?.open_files)
}

#[test]
fn the_agents_own_ports_are_never_a_destination_inside_a_pod() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client", "attacker"], &["server"])?;
    let [client, attacker, server] = cluster.pods_named(["client", "attacker", "server"])?;
    let config = mesh::enrolling(&cluster, &[client, server], vec![]);
    let (ca, agents) = mesh::start_secured(&cluster, &config, 3600)?;
    let _app = Server::new("server", "v1")
        .http(8080)
        .echo(9000)
        .start(&cluster, server)?;
    let server_agent = &agents[1];
    let before = open_files(server_agent)?;

    // The attacker holds a certificate the mesh trusts, as any enrolled pod
    // of another node does.
    let attacker_certificate =
        ca.certify(&Identity::new("cluster.local", "default", "attacker"))?;
    let bundle = ca.bundle()?;
    let server_identity = Identity::new("cluster.local", "default", "server");
    let tunnel = |port: u16| {
        tunnel_from(
            attacker,
            Some(&attacker_certificate),
            &bundle,
            &server_identity,
            SocketAddr::new(server.ip.into(), port),
        )
    };
    assert!(tunnel(9000)?, "an HBONE stream to the app is carried");
    for port in AGENT_PORTS {
        let target = SocketAddr::new(server.ip.into(), port);
        // In plaintext from outside the mesh, through the client's agent,
        // and over HBONE straight to the server's agent.
        for (from, how) in [(attacker, "plaintext"), (client, "through its agent")] {
            assert!(
                !echoed(&cluster, from.place(), target, "loop"),
                "{} reached {target} {how}",
                from.name
            );
        }
        assert!(!tunnel(port)?, "an HBONE stream reached {target}");
    }
    // The pod itself, on loopback, to the agent's listeners in its namespace.
    for port in [15001, 15006] {
        let target = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(
            !echoed(&cluster, server.place(), target, "loop"),
            "the server pod reached {target}"
        );
    }

    // Nothing was left open, and the pods' own traffic still flows.
    std::thread::sleep(Duration::from_secs(1));
    let after = open_files(server_agent)?;
    assert!(
        after <= before + 16,
        "the server's agent went from {before} to {after} open files"
    );
    HttpLoad::new(20)
        .run(
            &cluster,
            client.place(),
            &format!("http://{}:8080/", server.ip),
        )?
        .expect_all(20, "server/v1", client.ip)?;
    let log = server_agent.output();
    assert!(
        log.contains("is the mesh agent's own, never a destination inside a pod"),
        "the server's agent says why it refused:\n{log}"
    );
    Ok(())
}

#[test]
fn a_killed_agent_leaves_its_pods_unreachable_never_unprotected() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client", "outsider"], &["server", "bystander"])?;
    let [client, outsider, server, bystander] =
        cluster.pods_named(["client", "outsider", "server", "bystander"])?;
    // Dual-stack: neither family may go around the mesh.
    cluster.add_ipv6()?;
    let mut config = mesh::enrolling(&cluster, &[client, server], vec![]).dual_stack();
    config.istio = vec![json!({
        "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": { "name": "strict", "namespace": "default" },
        "spec": { "mtls": { "mode": "STRICT" } },
    })];
    let (_ca, mut agents) = mesh::start_secured(&cluster, &config, 3600)?;
    let _apps = [
        Server::new("server", "v1")
            .echo(9000)
            .start(&cluster, server)?,
        Server::new("bystander", "v1")
            .echo(9000)
            .start(&cluster, bystander)?,
    ];
    for pod in [server, bystander] {
        echo_in(pod, SocketAddr::new(pod.ipv6().into(), 9000))?;
    }
    // What the enrolled pods say must never cross the underlay in the clear.
    let secret = "words-only-the-mesh-may-carry";
    let expect = |when: &str, cases: [(&Pod, &Pod, bool); 4]| {
        for (from, to, reached) in cases {
            let message = match from.name == "outsider" && to.name == "bystander" {
                true => "outside-the-mesh",
                false => secret,
            };
            for ip in [IpAddr::from(to.ip), IpAddr::from(to.ipv6())] {
                assert_eq!(
                    echoed(&cluster, from.place(), SocketAddr::new(ip, 9000), message),
                    reached,
                    "{when}: {} to {} at {ip}",
                    from.name,
                    to.name
                );
            }
        }
    };
    let in_service = [
        (client, server, true),
        (client, bystander, true),
        (outsider, server, false),
        (outsider, bystander, true),
    ];
    expect("both agents running", in_service);

    for agent in &mut agents {
        agent.kill()?;
    }
    let sniffer = cluster.sniff_underlay()?;
    expect(
        "both agents killed",
        [
            (client, server, false),
            (client, bystander, false),
            (outsider, server, false),
            (outsider, bystander, true),
        ],
    );
    assert!(
        !contains(&sniffer.stop()?, secret.as_bytes()),
        "an enrolled pod's bytes crossed the underlay in the clear while its agent was dead"
    );

    // Agents started again serve at once (ready means serving).
    for agent in &mut agents {
        agent.start_again(&cluster)?;
    }
    expect("both agents started again", in_service);
    Ok(())
}

/// Dual-stack pods of the mesh talk over IPv6 in mutual TLS, as over IPv4,
/// across nodes: an enrolled client's call to an enrolled server's IPv6
/// address, or to a dual-stack Service's IPv6 VIP (which its agent's DNS
/// proxy answers AAAA queries with), is carried by the two
/// agents over HBONE on IPv6, and the server's app sees the client's own
/// IPv6 address; an HBONE caller over IPv6 (a ztunnel's pod, say) reaches
/// the app too. Plaintext into the enrolled server over IPv6 meets its
/// PeerAuthentication as over IPv4: refused where STRICT, carried to the
/// app from the caller's address on a PERMISSIVE port, passed for its
/// node's own probes; the pod's loopback is left alone, and an enrolled
/// pod's IPv6 calls out of the mesh go out plain.
#[test]
fn dual_stack_pods_of_the_mesh_talk_over_ipv6_in_mutual_tls_and_never_around_it(
) -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client", "bystander"], &["server"])?;
    let [client, bystander, server] = cluster.pods_named(["client", "bystander", "server"])?;
    let node_2 = cluster.node("node-2")?;
    let [client_ip, bystander_ip, server_ip] = [client, bystander, server].map(Pod::ipv6);
    let at = |ip: Ipv6Addr| SocketAddr::from((ip, 9000));
    let mut config = mesh::enrolling(&cluster, &[client, server], vec![]).dual_stack();
    // A dual-stack Service of the server, its IPv6 VIP on port 80.
    let vip6 = SocketAddr::from((Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x60), 80));
    config.istio = vec![
        json!({
            "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": { "name": "strict", "namespace": "default" },
            "spec": { "mtls": { "mode": "STRICT" } },
        }),
        json!({
            "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": { "name": "server-open", "namespace": "default" },
            "spec": {
                "selector": { "matchLabels": { "app": "server" } },
                "portLevelMtls": { "9001": { "mode": "PERMISSIVE" } },
            },
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "server6", "namespace": "default" },
            "spec": {
                "clusterIP": "10.96.0.60", "clusterIPs": ["10.96.0.60", vip6.ip()],
                "ports": [{ "name": "tcp", "port": 80, "targetPort": 9000, "protocol": "TCP" }],
            },
        }),
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": "server6-ipv6", "namespace": "default",
                "labels": { "kubernetes.io/service-name": "server6" },
            },
            "addressType": "IPv6",
            "endpoints": [{ "addresses": [server_ip], "conditions": { "ready": true } }],
            "ports": [{ "name": "tcp", "port": 9000, "protocol": "TCP" }],
        }),
    ];
    cluster.add_ipv6()?;
    let (ca, agents) = mesh::start_secured(&cluster, &config, 3600)?;
    let outputs = || format!("{}\n{}", agents[0].output(), agents[1].output());
    // An echo in each pod on its IPv6 address, and on the server's IPv6
    // loopback and its PERMISSIVE port; each tells whom it served.
    let served_client = echo_in(client, at(client_ip))?;
    let served_bystander = echo_in(bystander, at(bystander_ip))?;
    let served_server = echo_in(server, at(server_ip))?;
    let loopback = SocketAddr::from((Ipv6Addr::LOCALHOST, 9000));
    echo_in(server, loopback)?;
    let open_port = SocketAddr::new(server_ip.into(), 9001);
    let served_open = echo_in(server, open_port)?;
    let seen = |served: &Arc<Mutex<Vec<SocketAddr>>>| -> anyhow::Result<Vec<IpAddr>> {
        let seen = served
            .lock()
            .map_err(|_| anyhow::anyhow!("echo poisoned"))?;
        Ok(seen.iter().map(SocketAddr::ip).collect())
    };

    // The client's resolver, answered by its agent's DNS proxy, gives the
    // Service's VIPs of both families, as the cluster's DNS would.
    let service = "server6.default.svc.cluster.local";
    let resolved = testapp::resolve(&cluster, client.place(), service, None)?;
    assert!(
        resolved.contains(&"10.96.0.60".parse()?) && resolved.contains(&vip6.ip()),
        "the Service resolved to {resolved:?}\n{}",
        outputs()
    );
    // A query to a nameserver at an IPv6 address (no server is there) is
    // answered by the proxy too, as from that server.
    let nameserver = SocketAddr::from((Ipv6Addr::new(0xfd00, 0x53, 0, 0, 0, 0, 0, 0x53), 53));
    let resolved = testapp::resolve(&cluster, client.place(), service, Some(nameserver))?;
    assert_eq!(resolved, ["10.96.0.60".parse::<IpAddr>()?], "{}", outputs());
    // So is one from an IPv6 socket to an IPv4 nameserver by its mapped
    // address (`::ffff:a.b.c.d`), as Java's resolver asks the cluster's DNS.
    let mapped = SocketAddr::from((Ipv4Addr::new(10, 96, 0, 53).to_ipv6_mapped(), 53));
    let resolved = testapp::resolve(&cluster, client.place(), service, Some(mapped))?;
    assert_eq!(resolved, ["10.96.0.60".parse::<IpAddr>()?], "{}", outputs());

    #[rustfmt::skip]
    let cases = [
        (client, at(server_ip), true, "from the enrolled client to the enrolled server"),
        (client, vip6, true, "from the enrolled client to the server's IPv6 VIP"),
        (client, at(bystander_ip), true, "from the enrolled client out of the mesh"),
        (bystander, at(server_ip), false, "plaintext into the enrolled server"),
        (bystander, open_port, true, "plaintext to the server's PERMISSIVE port"),
        (server, loopback, true, "the enrolled server's own loopback"),
    ];
    for (from, to, works, what) in cases {
        let echoed = echoed(&cluster, from.place(), to, "over IPv6");
        anyhow::ensure!(echoed == works, "{what}: echoed {echoed}\n{}", outputs());
    }
    // The server's app saw the client itself, from its own IPv6 address,
    // both times; the bystander saw it too, and the server's PERMISSIVE
    // port the bystander.
    let client_ip = IpAddr::V6(client_ip);
    assert_eq!(seen(&served_server)?, [client_ip; 2], "the server's app");
    assert_eq!(seen(&served_bystander)?, [client_ip], "the bystander's app");
    assert_eq!(
        seen(&served_open)?,
        [IpAddr::V6(bystander_ip)],
        "the PERMISSIVE port"
    );
    assert!(
        seen(&served_client)?.is_empty(),
        "the client's app was called"
    );
    // A probe its node itself opens passes STRICT over IPv6 too.
    let probe = echoed(&cluster, node_2.place(), at(server_ip), "over IPv6");
    anyhow::ensure!(
        probe,
        "a probe from the node over IPv6 refused\n{}",
        outputs()
    );
    assert_eq!(
        seen(&served_server)?[2..],
        [IpAddr::V6(node_2.bridge_ipv6())],
        "the server's app"
    );
    // In mutual TLS both times, between the two agents, the Service's call
    // counted under it.
    let mutual_tls = |agent: &NodeAgent, reporter: &str, more: &[(&str, &str)]| {
        let metrics = agent.metrics(&cluster)?;
        let mut labels = vec![
            ("reporter", reporter),
            (
                "source_principal",
                "spiffe://cluster.local/ns/default/sa/client",
            ),
            (
                "destination_principal",
                "spiffe://cluster.local/ns/default/sa/server",
            ),
            ("connection_security_policy", "mutual_tls"),
        ];
        labels.extend_from_slice(more);
        let opened = mesh::sample(&metrics, "istio_tcp_connections_opened_total", &labels);
        anyhow::Ok((opened, metrics))
    };
    let (opened, metrics) = mutual_tls(&agents[1], "destination", &[])?;
    assert_eq!(opened, 2.0, "{metrics}");
    let service = [("destination_service", "server6.default.svc.cluster.local")];
    let (opened, metrics) = mutual_tls(&agents[0], "source", &service)?;
    assert_eq!(opened, 1.0, "{metrics}");

    // In mutual TLS over IPv6, to the server's 15008 at its IPv6 address,
    // as a caller of the mesh from elsewhere (a ztunnel's pod) dials it.
    let caller = Identity::new("cluster.local", "default", "client");
    let server_identity = Identity::new("cluster.local", "default", "server");
    let tunnel = |target: SocketAddr| {
        tunnel_through(
            bystander,
            Some(&ca.certify(&caller)?),
            &ca.bundle()?,
            (&server_identity, server_ip.into()),
            (target.into(), None),
        )
    };
    assert!(tunnel(at(server_ip))?, "{}", outputs());
    assert_eq!(
        seen(&served_server)?[3..],
        [IpAddr::V6(bystander_ip)],
        "the server's app"
    );
    // Only the pod's own addresses: the bystander's, or an IPv4 target
    // from an IPv6 caller (the app is reached from the caller's address),
    // are refused.
    assert!(
        !tunnel(at(bystander_ip))?,
        "a stream to another pod's address was carried"
    );
    let server_v4 = SocketAddr::new(server.ip.into(), 9000);
    assert!(
        !tunnel(server_v4)?,
        "an IPv4 target was carried from an IPv6 caller"
    );
    Ok(())
}

/// An IPv6-only pod, as in an IPv6 cluster (no IPv4 address in its
/// namespace nor in its CNI result, one IPv6 address in its Pod's status),
/// joins the mesh and talks in mutual TLS both ways with a pod of the mesh
/// on another node, each app seeing the other's IPv6 address.
#[test]
fn an_ipv6_only_pod_joins_the_mesh_and_talks_in_mutual_tls_both_ways() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client"], &["solo"])?;
    let [client, solo] = cluster.pods_named(["client", "solo"])?;
    cluster.add_ipv6()?;
    let flushed = solo.place().in_netns(|| {
        std::process::Command::new("ip")
            .args(["-4", "addr", "flush", "dev", "eth0"])
            .status()
    })??;
    anyhow::ensure!(flushed.success(), "taking the IPv4 address away");
    let mut config = mesh::enrolling(&cluster, &[client, solo], vec![]).dual_stack();
    for pod in &mut config.pods {
        pod.without_ipv4 = pod.name == solo.name;
    }
    let (_ca, agents) = mesh::start_secured(&cluster, &config, 3600)?;
    let at = |pod: &Pod| SocketAddr::new(pod.ipv6().into(), 9000);
    let served_client = echo_in(client, at(client))?;
    let served_solo = echo_in(solo, at(solo))?;
    for (from, to) in [(client, solo), (solo, client)] {
        let outputs = format!("{}\n{}", agents[0].output(), agents[1].output());
        let echoed = echoed(&cluster, from.place(), at(to), "over IPv6 alone");
        anyhow::ensure!(
            echoed,
            "{} to {}: not echoed\n{outputs}",
            from.name,
            to.name
        );
    }
    let seen = |served: &Arc<Mutex<Vec<SocketAddr>>>| -> anyhow::Result<Vec<IpAddr>> {
        let seen = served
            .lock()
            .map_err(|_| anyhow::anyhow!("echo poisoned"))?;
        Ok(seen.iter().map(SocketAddr::ip).collect())
    };
    assert_eq!(seen(&served_solo)?, [IpAddr::V6(client.ipv6())]);
    assert_eq!(seen(&served_client)?, [IpAddr::V6(solo.ipv6())]);
    // In mutual TLS, each agent counting its pod's caller by its principal.
    for (agent, caller) in [(&agents[1], "client"), (&agents[0], "solo")] {
        let metrics = agent.metrics(&cluster)?;
        let principal = format!("spiffe://cluster.local/ns/default/sa/{caller}");
        let labels = [
            ("reporter", "destination"),
            ("source_principal", principal.as_str()),
            ("connection_security_policy", "mutual_tls"),
        ];
        let opened = mesh::sample(&metrics, "istio_tcp_connections_opened_total", &labels);
        assert_eq!(opened, 1.0, "{metrics}");
    }
    Ok(())
}

/// Echoes every connection to `address` in `pod`'s namespace, from a
/// thread of the test (for as long as the test runs); the callers it
/// served, as it saw them.
fn echo_in(pod: &Pod, address: SocketAddr) -> anyhow::Result<Arc<Mutex<Vec<SocketAddr>>>> {
    let listener = pod
        .place()
        .in_netns(|| std::net::TcpListener::bind(address))??;
    let served = Arc::new(Mutex::new(Vec::new()));
    let callers = served.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            if let (Ok(peer), Ok(mut callers)) = (stream.peer_addr(), callers.lock()) {
                callers.push(peer);
            }
            let mut message = Vec::new();
            if stream.read_to_end(&mut message).is_ok() {
                let _ = stream.write_all(&message);
            }
        }
    });
    Ok(served)
}

/// The CNI plugin's answer: its JSON on stdout.
fn cni_answer(output: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_default()
}

#[test]
fn a_bad_cni_call_never_releases_a_pod_nor_stalls_the_agent() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["app"], &["server"])?;
    let [app, server] = cluster.pods_named(["app", "server"])?;
    let node = cluster.node("node-1")?;
    let agents = mesh::start_enrolling(&cluster, &[app])?;
    let agent = &agents[0];
    let _server = Server::new("server", "v1")
        .http(8080)
        .start(&cluster, server)?;
    let url = format!("http://{}:8080/", server.ip);
    let fifo = cluster.work_dir().join("not-a-namespace");
    nix::unistd::mkfifo(
        &fifo,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )?;
    let sandbox = format!("{}-sandbox", app.uid);

    // A new sandbox for the enrolled pod whose namespace is a FIFO, or the
    // node's own namespace: each ADD is refused at once with the reason.
    for (netns, says) in [
        (fifo.clone(), "is not a network namespace"),
        (
            node.place().netns_path(),
            "the node's own network namespace",
        ),
    ] {
        let add = agent.cni_for_sandbox(&cluster, "ADD", app, &netns, "second-sandbox")?;
        let answer = cni_answer(&add);
        assert!(!add.status.success(), "ADD with {}", netns.display());
        assert!(
            answer["details"].as_str().is_some_and(|d| d.contains(says)),
            "ADD with {}: {answer}",
            netns.display()
        );
    }
    // Nothing of the agent's listens in the node's namespace.
    let listening = node
        .place()
        .in_netns(|| std::net::TcpStream::connect(("127.0.0.1", 15001)).is_ok())?;
    assert!(
        !listening,
        "the agent opened a pod's listener in the node's namespace"
    );

    // A late DEL of a sandbox the pod no longer has changes nothing either.
    let del = agent.cni_for_sandbox(
        &cluster,
        "DEL",
        app,
        &app.place().netns_path(),
        "an-old-sandbox",
    )?;
    assert!(del.status.success(), "{del:?}");

    // The pod is still enrolled, and the agent still serves it.
    let check =
        agent.cni_for_sandbox(&cluster, "CHECK", app, &app.place().netns_path(), &sandbox)?;
    assert!(check.status.success(), "CHECK: {}", cni_answer(&check));
    HttpLoad::new(1)
        .run(&cluster, app.place(), &url)?
        .expect_all(1, "server/v1", app.ip)?;
    assert_eq!(
        agent.opened_as_source(&cluster)?,
        1.0,
        "the pod's connection went through the agent"
    );
    Ok(())
}

#[test]
fn a_deny_stays_in_force_while_its_file_is_half_written_or_mistyped() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client"], &["server"])?;
    let [client, server] = cluster.pods_named(["client", "server"])?;
    let _agents = mesh::start_enrolling(&cluster, &[client, server])?;
    let _app = Server::new("server", "v1")
        .echo(9000)
        .start(&cluster, server)?;
    let addr = SocketAddr::new(server.ip.into(), 9000);
    let policy = |kind: &str, action: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: {kind}\nmetadata:\n  name: no-echo\n  namespace: default\n\
             spec:\n  selector:\n    matchLabels: {{app: server}}\n  action: {action}\n  rules:\n  - to:\n    - operation:\n        ports: [\"9000\"]\n"
        )
    };
    let file = mesh::config_dir(&cluster).join("policy.yaml");
    let reaches = || echoed(&cluster, client.place(), addr, "hello");
    let settle = || std::thread::sleep(Duration::from_millis(500));

    std::fs::write(&file, policy("AuthorizationPolicy", "DENY"))?;
    ambit_testbed::wait_for("the DENY", Duration::from_secs(10), || Ok(!reaches()))?;

    // Rewritten in place to an ALLOW of everything else: while half of it
    // is written (the file still open), the DENY holds.
    let mut writer = std::fs::File::create(&file)?;
    let next = policy("AuthorizationPolicy", "ALLOW");
    use std::io::Write;
    writer.write_all(&next.as_bytes()[..next.len() / 2])?;
    writer.flush()?;
    settle();
    assert!(
        !reaches(),
        "the DENY lapsed while its file was half written"
    );
    drop(writer);

    // A typo in the kind: still no echo (the policy fails closed).
    std::fs::write(&file, policy("AuthorisationPolicy", "DENY"))?;
    settle();
    assert!(!reaches(), "a mistyped DENY let the echo through");

    // Only a policy that allows it, or none, lets it through.
    std::fs::remove_file(&file)?;
    ambit_testbed::wait_for(
        "the echo once the policy is gone",
        Duration::from_secs(10),
        || Ok(reaches()),
    )?;
    Ok(())
}

/// Whether the far end has closed `stream` (read at once: an end, or a reset).
fn closed_by_peer(stream: &mut TcpStream) -> bool {
    use std::io::Read;
    let _ = stream.set_nonblocking(true);
    match stream.read(&mut [0u8; 64]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => error.kind() != std::io::ErrorKind::WouldBlock,
    }
}

#[test]
fn idle_connections_and_an_agent_out_of_descriptors_never_stall_the_node() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client"], &["server", "attacker"])?;
    let [client, server, attacker] = cluster.pods_named(["client", "server", "attacker"])?;
    let config = mesh::enrolling(&cluster, &[client, server], vec![]);
    let (_ca, agents) = mesh::start_secured(&cluster, &config, 3600)?;
    let _app = Server::new("server", "v1")
        .http(8080)
        .echo(9000)
        .start(&cluster, server)?;
    let agent = &agents[1];
    let url = format!("http://{}:8080/", server.ip);
    let served = |requests: usize| -> anyhow::Result<()> {
        HttpLoad::new(requests)
            .run(&cluster, client.place(), &url)?
            .expect_all(requests, "server/v1", client.ip)
    };
    served(1)?;
    let before = open_files(agent)?;

    // One pod opens idle connections, sending nothing: to the server's
    // HBONE port, and to its node agent's metrics and readiness ports.
    let attack = attacker.place();
    let mut idle = attack.idle_connections(SocketAddr::new(server.ip.into(), 15008), 1000)?;
    for port in [AgentPort::Metrics, AgentPort::Readiness] {
        idle.extend(attack.idle_connections(agent.addr(&cluster, port)?, 200)?);
    }
    std::thread::sleep(Duration::from_secs(1));
    // Everyone else still gets through, and the agent holds only a bounded
    // share of them.
    served(20)?;
    assert_eq!(
        agent
            .get(&cluster, AgentPort::Readiness, "/healthz/ready")?
            .0,
        200
    );
    agent.metrics(&cluster)?;
    let during = open_files(agent)?;
    assert!(
        during <= before + 256 + 2 * 16 + 64,
        "the agent went from {before} to {during} open files"
    );
    // None of them stays open for long.
    ambit_testbed::wait_for(
        "the idle connections closed",
        Duration::from_secs(30),
        || Ok(idle.iter_mut().all(closed_by_peer)),
    )?;
    drop(idle);

    // The agent runs out of descriptors: plaintext connections to the
    // server's echo take two each. It pauses instead of spinning, says so
    // once per listener, and reports not ready until it can accept again.
    let limit = open_files(agent)? as u64 + 40;
    agent.limit_open_files(limit)?;
    let cpu = agent.usage()?.cpu_seconds;
    let held = attack.idle_connections(SocketAddr::new(server.ip.into(), 9000), 100)?;
    std::thread::sleep(Duration::from_secs(3));
    let spent = agent.usage()?.cpu_seconds - cpu;
    assert!(
        spent < 0.5,
        "the agent spent {spent} s of CPU in 3 s out of descriptors"
    );
    let ready = agent.get(&cluster, AgentPort::Readiness, "/healthz/ready");
    assert!(
        !matches!(ready, Ok((200, _))),
        "ready while out of descriptors: {ready:?}"
    );
    let log = agent.output();
    let complaints = log.matches("accepting connections fails").count();
    assert!(
        (1..=4).contains(&complaints),
        "{complaints} complaints:\n{log}"
    );

    drop(held);
    agent.limit_open_files(u64::MAX)?;
    ambit_testbed::wait_for("ready again", Duration::from_secs(10), || {
        Ok(matches!(
            agent.get(&cluster, AgentPort::Readiness, "/healthz/ready"),
            Ok((200, _))
        ))
    })?;
    served(5)?;
    assert!(agent.output().contains("accepting connections works again"));
    Ok(())
}

/// A port of an enrolled pod where its app does not listen is refused at
/// once, over mutual TLS and in plaintext, in either family, as it would
/// be without the mesh: the kernel's reset to the agent's connect reaches
/// the agent, instead of leaving it to wait out its connect timeout.
#[test]
fn a_closed_port_of_an_enrolled_pod_is_refused_at_once() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client", "bystander"], &["server"])?;
    let [client, bystander, server] = cluster.pods_named(["client", "bystander", "server"])?;
    cluster.add_ipv6()?;
    let config = mesh::enrolling(&cluster, &[client, server], vec![]).dual_stack();
    let (_ca, agents) = mesh::start_secured(&cluster, &config, 3600)?;
    let closed = [
        SocketAddr::from((server.ip, 9999)),
        SocketAddr::from((server.ipv6(), 9999)),
    ];
    for from in [client, bystander] {
        for to in closed {
            let started = Instant::now();
            let echoed = echoed(&cluster, from.place(), to, "anyone there?");
            let took = started.elapsed();
            anyhow::ensure!(
                !echoed && took < Duration::from_secs(3),
                "{} to {to}: echoed {echoed} after {took:?}\n{}",
                from.name,
                agents[1].output()
            );
        }
    }
    Ok(())
}
