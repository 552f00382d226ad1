//! Workload identities on the cluster: each node agent obtains, from the
//! real `ambit-ca`, certificates for the service accounts of its own
//! enrolled pods and renews them before they expire; the CA refuses an
//! agent asking for an identity with no pod on its node, and logs why.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use ambit_identity::{certificate_request, CertificateAuthority, Identity, WorkloadCertificate};
use ambit_mesh_tls::ca_client::{CaClient, CaClientError};
use ambit_mesh_tls::ca_protocol::GrpcCode;
use ambit_testbed::ca::TestCa;
use ambit_testbed::hbone::tunnel_from;
use ambit_testbed::mesh::{self, sample, NodeAgent, Source};
use ambit_testbed::sniff::contains;
use ambit_testbed::testapp::{self, HttpLoad, HttpSummary, Server};
use ambit_testbed::{wait_for, Cluster};
use anyhow::ensure;

/// What the test app's JSON answer says, in the clear.
const MARKER: &[u8] = br#""app":"server""#;

/// Short, so renewals happen within the test.
const TTL_SECONDS: u64 = 60;

#[test]
fn agents_hold_their_pods_identities_and_the_ca_refuses_others() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client", "bystander"], &["server"])?;
    let [client, server] = cluster.pods_named(["client", "server"])?;
    let mut config = mesh::enrolling(&cluster, &[client, server], vec![]);
    // The CA's own pod, and a neighbour outside the mesh, both on node-1.
    for (name, service_account, ip) in [
        ("ambit-ca-1", "ambit-ca", "10.244.1.200"),
        ("ca-tool-1", "ca-tool", "10.244.1.201"),
    ] {
        config.istio.push(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "namespace": "ambit-system" },
            "spec": { "nodeName": "node-1", "serviceAccountName": service_account },
            "status": { "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }] },
        }));
    }
    mesh::write_config(&cluster, &config)?;
    let ca = TestCa::start(&cluster, TTL_SECONDS)?;
    let agents = mesh::start_agents_with(&cluster, &Source::Directory, Some(&ca))?;
    let id = |sa: &str| format!("spiffe://cluster.local/ns/default/sa/{sa}");

    // Each agent holds exactly its enrolled pods' identities (not the
    // bystander's: it is not enrolled).
    for (agent, expected) in agents.iter().zip([id("client"), id("server")]) {
        wait_for(
            &format!("a certificate for {expected}"),
            Duration::from_secs(20),
            || {
                let held = agent.certificates(&cluster)?;
                Ok(held.len() == 1 && held[0].0 == expected)
            },
        )?;
    }

    // The agent tells Prometheus when the certificate expires, and its
    // build, as Istio's dashboards read them.
    let metrics = agents[0].metrics(&cluster)?;
    let expiry = sample(
        &metrics,
        "ambit_certificate_expiration_timestamp_seconds",
        &[("identity", id("client").as_str())],
    );
    let held = agents[0].certificates(&cluster)?[0].1;
    ensure!(
        expiry as u64 == held,
        "expiry {expiry} in the metrics, {held} held"
    );
    ensure!(
        sample(
            &metrics,
            "istio_build",
            &[("component", "ambit-node-agent")]
        ) == 1.0,
        "{metrics}"
    );

    // Renewed before expiry: a later certificate replaces the first.
    let first = agents[0].certificates(&cluster)?[0].1;
    wait_for("a renewal", Duration::from_secs(TTL_SECONDS), || {
        Ok(agents[0].certificates(&cluster)?[0].1 > first)
    })?;

    // node-1's credential does not buy the server's identity, which runs
    // on node-2, nor the identities of pods beside the CA on node-1: the
    // CA's own, which agents trust the CA by, and a neighbour's outside the
    // mesh.
    let node = cluster.node("node-1")?;
    let bundle = ca.bundle()?;
    let ca_identity = Identity::new("cluster.local", "ambit-system", "ambit-ca");
    let neighbour = "spiffe://cluster.local/ns/ambit-system/sa/ca-tool";
    let mut forbidden = 0;
    for (asked, why) in [
        (
            id("server"),
            format!("no pod on node node-1 runs as {}", id("server")),
        ),
        (
            ca_identity.to_string(),
            format!("{ca_identity} is the CA's own identity"),
        ),
        (
            neighbour.to_string(),
            format!("no pod on node node-1 runs as {neighbour}"),
        ),
    ] {
        let asked: Identity = asked.parse()?;
        let refusal = node.place().in_netns(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let client = CaClient::new(ca.addr, &bundle, &ca_identity, ca.token("node-1"))?;
            anyhow::Ok(runtime.block_on(client.certify(&asked)).err())
        })??;
        match refusal {
            Some(CaClientError::Refused { code, message, .. }) => {
                assert_eq!(code, GrpcCode::PermissionDenied as u32, "{asked}");
                assert_eq!(message, why);
                forbidden += 1;
            }
            other => panic!("node-1 was given {asked}: {other:?}"),
        }
    }
    let log = ca.output();
    assert!(
        log.contains("refused a certificate: no pod on node node-1 runs as spiffe://cluster.local/ns/default/sa/server"),
        "the CA's log:\n{log}"
    );
    // Counted by outcome: each refusal, and every certificate the agents
    // hold (none forbidden to them).
    let metrics = ca.metrics(&cluster)?;
    let outcome = |outcome| {
        sample(
            &metrics,
            "ambit_ca_certificate_requests_total",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(outcome("forbidden"), forbidden as f64, "{metrics}");
    assert!(outcome("issued") >= 2.0, "{metrics}");
    Ok(())
}

#[test]
fn traffic_between_enrolled_pods_goes_through_mutual_tls() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client", "outsider"], &["server"])?;
    let [client, outsider, server] = cluster.pods_named(["client", "outsider", "server"])?;
    let config = mesh::enrolling(&cluster, &[client, server], vec![]);
    let (_ca, agents) = mesh::start_secured(&cluster, &config, 3600)?;
    let _app = Server::new("server", "v1")
        .http(8080)
        .start(&cluster, server)?;

    // The server still sees the client's own address, and nothing of the
    // exchange crosses the underlay in the clear.
    let url = format!("http://{}:8080/", server.ip);
    let sniffer = cluster.sniff_underlay()?;
    HttpLoad::new(5)
        .run(&cluster, client.place(), &url)?
        .expect_all(5, "server/v1", client.ip)?;
    let between_agents = sniffer.stop()?;
    assert!(
        between_agents.len() > 5 * 100,
        "the capture saw the traffic"
    );
    assert!(
        !contains(&between_agents, MARKER),
        "the app's bytes crossed the underlay in the clear"
    );
    let mtls = |agent: &NodeAgent, reporter: &str| -> anyhow::Result<f64> {
        Ok(sample(
            &agent.metrics(&cluster)?,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", reporter),
                ("connection_security_policy", "mutual_tls"),
            ],
        ))
    };
    assert!(
        mtls(&agents[0], "source")? >= 1.0,
        "the client's agent sent over mTLS"
    );
    assert!(
        mtls(&agents[1], "destination")? >= 1.0,
        "the server's agent received over mTLS"
    );

    // A pod outside the mesh still reaches the server in plain TCP (PERMISSIVE by default).
    // The capture would have seen them: plain TCP shows.
    let before = mtls(&agents[1], "destination")?;
    let sniffer = cluster.sniff_underlay()?;
    HttpLoad::new(1)
        .run(&cluster, outsider.place(), &url)?
        .expect_all(1, "server/v1", outsider.ip)?;
    assert!(
        contains(&sniffer.stop()?, MARKER),
        "plain TCP is visible on the underlay"
    );
    assert_eq!(mtls(&agents[1], "destination")?, before);
    Ok(())
}

#[test]
fn continuous_traffic_across_certificate_renewals_never_fails() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client"], &["server"])?;
    let [client, server] = cluster.pods_named(["client", "server"])?;
    let config = mesh::enrolling(&cluster, &[client, server], vec![]);
    let (_ca, agents) = mesh::start_secured(&cluster, &config, TTL_SECONDS)?;
    let _app = Server::new("server", "v1")
        .http(8080)
        .start(&cluster, server)?;

    // A new connection every 100 ms for over 120 s: three renewals or more
    // on each side (each at about half of a certificate's remaining life).
    let requests = 1200;
    let url = format!("http://{}:8080/", server.ip);
    let mut load = HttpLoad::new(requests)
        .reconnect()
        .interval(Duration::from_millis(100))
        .spawn(&cluster, client.place(), &url)?;
    let mut expiries: Vec<std::collections::BTreeSet<u64>> = vec![Default::default(); 2];
    while load.check_running().is_ok() {
        for (agent, seen) in agents.iter().zip(&mut expiries) {
            seen.extend(
                agent
                    .certificates(&cluster)?
                    .iter()
                    .map(|(_, expiry)| expiry),
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    load.wait_exit(Duration::from_secs(10))?;
    let summary: HttpSummary = testapp::last_json(&load.output())?;
    summary.expect_all(requests, "server/v1", client.ip)?;
    for (seen, node) in expiries.iter().zip(["node-1", "node-2"]) {
        assert!(
            seen.len() >= 4,
            "{node} renewed only {} times: {seen:?}",
            seen.len() - 1
        );
    }
    Ok(())
}

#[test]
fn the_hbone_listener_refuses_certificates_it_must_not_trust() -> anyhow::Result<()> {
    let cluster = Cluster::two_nodes(&["client", "outsider"], &["server"])?;
    let [client, outsider, server] = cluster.pods_named(["client", "outsider", "server"])?;
    let config = mesh::enrolling(&cluster, &[client, server], vec![]);
    let (ca, agents) = mesh::start_secured(&cluster, &config, 3600)?;
    let _app = Server::new("server", "v1")
        .echo(9000)
        .start(&cluster, server)?;

    // The test's own certificates, signed with the mesh's real root key,
    // with another root, or for another trust domain.
    let root = std::fs::read_to_string(ca.root_pem_file())?;
    let key = std::fs::read_to_string(ca.root_pem_file().with_file_name("ca-key.pem"))?;
    let mesh_ca = ca.authority()?;
    let bundle = ca.bundle()?;
    let issue = |ca: &CertificateAuthority, valid: Option<(SystemTime, SystemTime)>| {
        let identity = Identity::new(ca.trust_domain(), "default", "client");
        let (key, csr) = certificate_request(&identity)?;
        let chain = match valid {
            Some((from, until)) => ca.issue_valid_between(&csr, &identity, from, until)?,
            None => ca.issue(&csr, &identity, Duration::from_secs(3600))?,
        };
        anyhow::Ok(WorkloadCertificate::new(&identity, &key, &chain)?)
    };
    let hour = Duration::from_secs(3600);
    let now = SystemTime::now();
    let cases = [
        ("the mesh's CA", Some(issue(&mesh_ca, None)?), true),
        (
            "another CA",
            Some(issue(
                &CertificateAuthority::generate("cluster.local")?,
                None,
            )?),
            false,
        ),
        (
            "another trust domain, same root",
            Some(issue(
                &CertificateAuthority::from_pem(&root, &key, "elsewhere.example")?,
                None,
            )?),
            false,
        ),
        (
            "expired",
            Some(issue(&mesh_ca, Some((now - 2 * hour, now - hour)))?),
            false,
        ),
        ("no certificate", None, false),
    ];
    let server_identity = Identity::new("cluster.local", "default", "server");
    let target = SocketAddr::new(server.ip.into(), 9000);
    for (what, certificate, accepted) in &cases {
        let echoed = tunnel_from(
            outsider,
            certificate.as_ref(),
            &bundle,
            &server_identity,
            target,
        )?;
        assert_eq!(echoed, *accepted, "a client with {what}");
    }
    let log = agents[1].output();
    let refusals = log.matches("HBONE handshake refused").count();
    assert!(
        refusals >= 4,
        "the server's agent logs each refusal:\n{log}"
    );
    // And counts each, by reason, where an operator's alert can see them.
    let metrics = agents[1].metrics(&cluster)?;
    let counted = sample(
        &metrics,
        "ambit_connections_refused_total",
        &[("reporter", "destination"), ("reason", "handshake_failed")],
    );
    assert_eq!(counted, refusals as f64, "{metrics}");
    Ok(())
}
