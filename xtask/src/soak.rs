//! `cargo xtask soak [--minutes N]`: connection churn through both agents,
//! a new mutual-TLS connection every 10 ms for N minutes (10 by default),
//! with the attacks of the hardening issue running beside it all along: a
//! pod dialling the agents' own ports inside another pod, in plaintext and
//! over HBONE with a certificate the mesh trusts, and holding idle
//! connections to the server's HBONE port and to its agent's metrics and
//! readiness ports, renewed every few seconds. Release builds. Reports each
//! agent's memory and open files at the start and at the end, and fails on
//! a failed legitimate connection or on an agent that grew.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ambit_identity::Identity;
use ambit_testbed::hbone::tunnel_from;
use ambit_testbed::mesh::{self, AgentPort, NodeAgent};
use ambit_testbed::testapp::{self, HttpLoad, HttpSummary, Server};
use ambit_testbed::{Binaries, Cluster, Usage};
use anyhow::ensure;

use crate::bench::mib;
use crate::Workspace;

/// The agents' own ports, never a destination inside a pod.
const AGENT_PORTS: [u16; 7] = [15000, 15001, 15006, 15008, 15020, 15021, 15053];
const CHURN_INTERVAL: Duration = Duration::from_millis(10);
/// Connections a churning client makes before the next takes over (each
/// client's run is bounded; the soak runs clients until its time is up).
const CHURN_BATCH: usize = 2000;
/// Idle connections the attacker holds to the server's HBONE port and to
/// each of its agent's metrics and readiness ports, renewed this often.
const IDLE_HBONE: usize = 300;
const IDLE_ADMIN: usize = 50;
const IDLE_RENEWAL: Duration = Duration::from_secs(5);
/// How much an agent may grow over the soak and still count as flat.
const OPEN_FILES_SLACK: usize = 64;
const RSS_GROWTH: f64 = 1.25;
const RSS_SLACK_MIB: f64 = 4.0;

pub fn run(workspace: &Workspace, minutes: u64) -> anyhow::Result<()> {
    crate::run(
        workspace
            .cargo()
            .args(["build", "--release", "--workspace", "--bins"]),
    )?;
    let binaries = Binaries::in_dir(&workspace.target.join("release"))?;
    let cluster = Cluster::builder()
        .binaries(binaries)
        .node(&["client", "attacker"])
        .node(&["server"])
        .build()?;
    let [client, attacker, server] = cluster.pods_named(["client", "attacker", "server"])?;
    let config = mesh::enrolling(&cluster, &[client, server], vec![]);
    // Certificates live ten minutes: renewals happen during the soak.
    let (ca, agents) = mesh::start_secured(&cluster, &config, 600)?;
    let _app = Server::new("server", "v1")
        .http(8080)
        .start(&cluster, server)?;
    let duration = Duration::from_secs(minutes * 60);
    println!("soak: a connection every {CHURN_INTERVAL:?} for {minutes} min, attacks beside them");

    let url = format!("http://{}:8080/", server.ip);
    // Warm: pools, certificates and the allocator's first arenas.
    HttpLoad::new(100)
        .reconnect()
        .run(&cluster, client.place(), &url)?
        .expect_all(100, "server/v1", client.ip)?;
    let start = usages(&agents)?;

    let certificate = ca.certify(&Identity::new("cluster.local", "default", "attacker"))?;
    let bundle = ca.bundle()?;
    let server_identity = Identity::new("cluster.local", "default", "server");
    let stop = AtomicBool::new(false);
    let attacks = AtomicU64::new(0);
    let breaches = AtomicU64::new(0);
    let attack_result = std::thread::scope(|scope| {
        let attacking = scope.spawn(|| -> anyhow::Result<()> {
            let attack = attacker.place();
            let hbone = SocketAddr::new(server.ip.into(), ambit_hbone::HBONE_PORT);
            let mut idle = Vec::new();
            let mut renewed = Instant::now() - IDLE_RENEWAL;
            while !stop.load(Ordering::Acquire) {
                if renewed.elapsed() >= IDLE_RENEWAL {
                    idle.clear();
                    idle.extend(attack.idle_connections(hbone, IDLE_HBONE)?);
                    for port in [AgentPort::Metrics, AgentPort::Readiness] {
                        let addr = agents[1].addr(&cluster, port)?;
                        idle.extend(attack.idle_connections(addr, IDLE_ADMIN)?);
                    }
                    renewed = Instant::now();
                }
                for port in AGENT_PORTS {
                    let target = SocketAddr::new(server.ip.into(), port);
                    let plain = testapp::echo(&cluster, attack, target, "loop")
                        .is_ok_and(|back| back.trim() == "loop");
                    let tunnelled = tunnel_from(
                        attacker,
                        Some(&certificate),
                        &bundle,
                        &server_identity,
                        target,
                    )?;
                    attacks.fetch_add(2, Ordering::Relaxed);
                    if plain || tunnelled {
                        breaches.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        });
        let churned = churn(&cluster, client.place(), &url, duration);
        stop.store(true, Ordering::Release);
        let attacked = attacking
            .join()
            .map_err(|_| anyhow::anyhow!("the attacking thread panicked"));
        attacked.and_then(|attacked| attacked.and(churned))
    });
    let batches = attack_result?;
    let summary = HttpSummary {
        requests: batches.iter().map(|batch| batch.requests).sum(),
        statuses: [(200, batches.iter().map(|batch| batch.status(200)).sum())].into(),
        errors: batches.iter().map(|batch| batch.errors).sum(),
        first_error: batches.iter().find_map(|batch| batch.first_error.clone()),
        ..HttpSummary::default()
    };
    // The idle connections are gone; give the agents their timeouts.
    std::thread::sleep(Duration::from_secs(15));
    let end = usages(&agents)?;

    let report = markdown(minutes, &summary, &attacks, &breaches, &start, &end);
    println!("\n{report}");
    let dir = workspace.target.join("bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("soak.md"), &report)?;
    for batch in &batches {
        batch.expect_all(CHURN_BATCH, "server/v1", client.ip)?;
    }
    ensure!(
        breaches.load(Ordering::Relaxed) == 0,
        "an attack reached an agent's own port"
    );
    for ((node, start), end) in ["node-1", "node-2"].iter().zip(&start).zip(&end) {
        ensure!(
            end.open_files <= start.open_files + OPEN_FILES_SLACK,
            "the agent on {node} went from {} to {} open files",
            start.open_files,
            end.open_files
        );
        ensure!(
            mib(end) <= mib(start) * RSS_GROWTH + RSS_SLACK_MIB,
            "the agent on {node} grew from {:.1} to {:.1} MiB",
            mib(start),
            mib(end)
        );
    }
    Ok(())
}

/// New connections from `from` to `url`, one every [`CHURN_INTERVAL`],
/// client after client, until `duration` is over; each client's summary.
fn churn(
    cluster: &Cluster,
    from: &ambit_testbed::Place,
    url: &str,
    duration: Duration,
) -> anyhow::Result<Vec<HttpSummary>> {
    let deadline = Instant::now() + duration;
    let mut batches = Vec::new();
    while Instant::now() < deadline {
        let batch = HttpLoad::new(CHURN_BATCH)
            .reconnect()
            .interval(CHURN_INTERVAL)
            .run(cluster, from, url)?;
        batches.push(batch);
    }
    Ok(batches)
}

fn usages(agents: &[NodeAgent]) -> anyhow::Result<Vec<Usage>> {
    agents.iter().map(NodeAgent::usage).collect()
}

fn markdown(
    minutes: u64,
    summary: &HttpSummary,
    attacks: &AtomicU64,
    breaches: &AtomicU64,
    start: &[Usage],
    end: &[Usage],
) -> String {
    let mut text = format!(
        "## Soak: {minutes} min of connection churn with attacks beside it\n\n\
         - Legitimate connections: {} made, {} answered 200, {} failed\n\
         - Attacks on the agents' own ports: {}, of which reached: {}\n\
         - Idle connections held all along: {IDLE_HBONE} to the server's HBONE port, \
         {IDLE_ADMIN} each to its agent's metrics and readiness ports, renewed every {IDLE_RENEWAL:?}\n\n\
         | agent | RSS start | RSS end | open files start | open files end |\n\
         |---|---|---|---|---|\n",
        summary.requests,
        summary.status(200),
        summary.errors,
        attacks.load(Ordering::Relaxed),
        breaches.load(Ordering::Relaxed),
    );
    for ((node, start), end) in ["node-1 (client)", "node-2 (server)"]
        .iter()
        .zip(start)
        .zip(end)
    {
        text.push_str(&format!(
            "| {node} | {:.1} MiB | {:.1} MiB | {} | {} |\n",
            mib(start),
            mib(end),
            start.open_files,
            end.open_files
        ));
    }
    text
}
