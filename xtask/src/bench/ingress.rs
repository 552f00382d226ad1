//! The ingress gateway beside Envoy, the proxy Istio's gateways run: the
//! same Gateway and VirtualService (requests with a header to one
//! upstream, the others split 90/10 between two plaintext upstreams), Envoy
//! configured statically with the routes Istio would give it, both with
//! one worker, measured in turns in the same rounds, in HTTP and in HTTPS
//! (TLS ended at the gateway, plaintext upstream).

use std::fmt::Write;
use std::net::{Ipv4Addr, SocketAddr};

use ambit_testbed::ca::TestCa;
use ambit_testbed::envoy::{self, EnvoyGateway, IngressRoutes};
use ambit_testbed::mesh::{self, MeshConfig, Source};
use ambit_testbed::pki::TestPki;
use ambit_testbed::testapp::{ClientTls, Connections, HttpLoad, Server};
use ambit_testbed::waypoint::Waypoint;
use ambit_testbed::{Binaries, Cluster, Pod};
use anyhow::ensure;
use serde::Serialize;
use serde_json::json;

use super::{mid, timed, L7Proxy, OnPath, CONNECTIONS, RATE, RESPONSE_BYTES, SECONDS};

const HTTP_PORT: u16 = 8080;
const HTTPS_PORT: u16 = 8443;
const HOST: &str = "bench.example.com";
const CANARY: (&str, &str) = ("x-canary", "yes");
const UPSTREAM_A: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 60);
const UPSTREAM_B: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 61);
/// Requests per second asked for the saturation figure, on the kept-alive
/// connections: more than either proxy carries on one worker.
const SATURATING_RATE: u32 = 40_000;
const SATURATION_SECONDS: u32 = 2;

#[derive(Serialize)]
pub struct IngressReport {
    rows: Vec<Row>,
    rounds: usize,
}

/// One proxy in one scheme: medians of its rounds, and each round's.
#[derive(Serialize)]
struct Row {
    proxy: &'static str,
    scheme: &'static str,
    median: Figures,
    rounds: Vec<Figures>,
}

#[derive(Serialize, Clone, Copy)]
struct Figures {
    p50_us: u64,
    p99_us: u64,
    /// The proxy's own CPU time per 1000 requests at the paced rate.
    cpu_seconds_per_1000_requests: f64,
    rss_mib: f64,
    saturation_requests_per_s: f64,
    /// Requests carried at saturation per second of the proxy's CPU.
    saturation_requests_per_cpu_second: f64,
}

impl L7Proxy for EnvoyGateway {
    fn usage(&self) -> anyhow::Result<ambit_testbed::Usage> {
        EnvoyGateway::usage(self)
    }
    fn output(&self) -> String {
        EnvoyGateway::output(self)
    }
}

/// The Gateway and VirtualService both proxies serve (Envoy's config is
/// written by hand to the same effect).
fn istio_config() -> Vec<serde_json::Value> {
    vec![
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "Gateway",
            "metadata": { "name": "bench", "namespace": "default" },
            "spec": {
                "selector": { "istio": "ingressgateway" },
                "servers": [
                    {
                        "port": { "number": HTTP_PORT, "name": "http", "protocol": "HTTP" },
                        "hosts": ["*"],
                    },
                    {
                        "port": { "number": HTTPS_PORT, "name": "https", "protocol": "HTTPS" },
                        "hosts": ["*"],
                        "tls": { "mode": "SIMPLE", "credentialName": "bench-cert" },
                    },
                ],
            },
        }),
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": { "name": "bench", "namespace": "default" },
            "spec": {
                "hosts": ["*"], "gateways": ["bench"],
                "http": [
                    {
                        "match": [{ "headers": { CANARY.0: { "exact": CANARY.1 } } }],
                        "route": [{ "destination": { "host": "upstream-b" } }],
                    },
                    {
                        "route": [
                            { "destination": { "host": "upstream-a" }, "weight": 90 },
                            { "destination": { "host": "upstream-b" }, "weight": 10 },
                        ],
                    },
                ],
            },
        }),
    ]
}

pub fn run(binaries: &Binaries, rounds: usize) -> anyhow::Result<IngressReport> {
    let cluster = Cluster::builder()
        .binaries(binaries.clone())
        .node(&["client"])
        .node(&["gateway", "envoy"])
        .node(&["upstream-a", "upstream-b"])
        .build()?;
    let [client, gateway_pod, envoy_pod, upstream_a, upstream_b] =
        cluster.pods_named(["client", "gateway", "envoy", "upstream-a", "upstream-b"])?;
    let work = cluster.work_dir().to_path_buf();
    let credentials = work.join("credentials");
    let pki = TestPki::new("bench-ca", &work.join("pki"))?;
    let issued = pki.server(&[HOST], &credentials.join("bench-cert"))?;
    // Nothing is enrolled: the upstreams are plaintext, as Envoy's are.
    let mut config = MeshConfig {
        istio: istio_config(),
        ..mesh::enrolling(
            &cluster,
            &[],
            vec![
                mesh::service("upstream-a", UPSTREAM_A, 8080, 8080, &[upstream_a]),
                mesh::service("upstream-b", UPSTREAM_B, 8080, 8080, &[upstream_b]),
            ],
        )
    };
    for pod in config.pods.iter_mut().filter(|pod| pod.name == "gateway") {
        pod.labels = vec![("istio".into(), "ingressgateway".into())];
    }
    mesh::write_config(&cluster, &config)?;
    let ca = TestCa::start(&cluster, 24 * 3600)?;
    let _servers = [upstream_a, upstream_b]
        .map(|pod| Server::new(&pod.name, "v1").http(8080).start(&cluster, pod))
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let standalone = (&Source::Directory, Some(credentials.as_path()));
    let ambit = Waypoint::start_gateway(
        &cluster,
        gateway_pod,
        "gateway",
        standalone,
        &ca,
        Vec::new(),
    )?;
    let routes = IngressRoutes {
        header: (CANARY.0.into(), CANARY.1.into()),
        matched: SocketAddr::from((upstream_b.ip, 8080)),
        split: vec![
            (SocketAddr::from((upstream_a.ip, 8080)), 90),
            (SocketAddr::from((upstream_b.ip, 8080)), 10),
        ],
    };
    let envoy = EnvoyGateway::start(
        &cluster,
        envoy_pod,
        (HTTP_PORT, HTTPS_PORT),
        (&issued.certificate, &issued.key),
        &routes,
    )?;
    let tls = ClientTls {
        ca: pki.ca_file().to_path_buf(),
        client: None,
    };
    let proxies: [(&'static str, &Pod, &dyn L7Proxy); 2] =
        [("Ambit", gateway_pod, &ambit), ("Envoy", envoy_pod, &envoy)];
    for (name, pod, proxy) in proxies {
        routes_hold(&cluster, client, pod, &tls).map_err(|error| {
            let output = proxy.output();
            error.context(format!("{name} does not route as configured:\n{output}"))
        })?;
    }
    let cases: Vec<(&'static str, &'static str, &Pod, &dyn L7Proxy)> = proxies
        .iter()
        .flat_map(|&(name, pod, proxy)| {
            [("http", pod, proxy), ("https", pod, proxy)]
                .map(|(scheme, pod, proxy)| (name, scheme, pod, proxy))
        })
        .collect();
    let mut measured: Vec<Vec<Figures>> = cases.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..cases.len()).collect();
        order.rotate_left(round % cases.len());
        for index in order {
            let (name, scheme, pod, proxy) = cases[index];
            println!(
                "bench: round {}/{rounds}: ingress, {name}, {scheme}",
                round + 1
            );
            measured[index].push(measure(&cluster, client, (scheme, pod), proxy, &tls)?);
        }
    }
    let rows = cases
        .iter()
        .zip(measured)
        .map(|(&(proxy, scheme, _, _), rounds)| Row {
            proxy,
            scheme,
            median: median(&rounds),
            rounds,
        })
        .collect();
    Ok(IngressReport { rows, rounds })
}

/// Where a client reaches `pod`'s listener for `scheme`, and the URL it
/// asks for.
fn target(scheme: &str, pod: &Pod, path: &str) -> (String, SocketAddr) {
    let port = if scheme == "https" {
        HTTPS_PORT
    } else {
        HTTP_PORT
    };
    (
        format!("{scheme}://{HOST}:{port}{path}"),
        SocketAddr::from((pod.ip, port)),
    )
}

/// The routes hold through the proxy at `pod`, in both schemes: the
/// header's requests all to upstream B, the others split about 90/10.
fn routes_hold(cluster: &Cluster, client: &Pod, pod: &Pod, tls: &ClientTls) -> anyhow::Result<()> {
    for scheme in ["http", "https"] {
        let (url, address) = target(scheme, pod, "/");
        let load = HttpLoad::new(200).connect(address).tls(tls.clone());
        let split = load.run(cluster, client.place(), &url)?;
        let to_a = split.versions.get("upstream-a/v1").copied().unwrap_or(0);
        ensure!(
            split.status(200) == 200 && (160..=195).contains(&to_a),
            "{scheme}, 90/10: {split:?}"
        );
        let load = HttpLoad::new(20)
            .connect(address)
            .tls(tls.clone())
            .header(CANARY.0, CANARY.1);
        let matched = load.run(cluster, client.place(), &url)?;
        ensure!(
            matched.versions.get("upstream-b/v1") == Some(&20),
            "{scheme}, by header: {matched:?}"
        );
    }
    Ok(())
}

/// One round of one proxy in one scheme: latency and cost at the paced
/// rate, then saturation.
fn measure(
    cluster: &Cluster,
    client: &Pod,
    (scheme, pod): (&str, &Pod),
    proxy: &dyn L7Proxy,
    tls: &ClientTls,
) -> anyhow::Result<Figures> {
    let (url, address) = target(scheme, pod, &format!("/bytes/{RESPONSE_BYTES}"));
    let on_path = OnPath {
        agents: None,
        waypoint: Some(proxy),
    };
    let via = Some((address, Some(tls)));
    let connections = Connections::KeptAlive(CONNECTIONS);
    let paced = timed(
        cluster,
        client,
        &url,
        (RATE, SECONDS),
        connections,
        on_path,
        via,
    )?;
    let saturated = timed(
        cluster,
        client,
        &url,
        (SATURATING_RATE, SATURATION_SECONDS),
        connections,
        on_path,
        via,
    )?;
    let cost = paced.waypoint.unwrap_or_default();
    let saturated_cost = saturated.waypoint.unwrap_or_default();
    Ok(Figures {
        p50_us: paced.latency.p50_us,
        p99_us: paced.latency.p99_us,
        cpu_seconds_per_1000_requests: cost.cpu_seconds_per_1000_requests,
        rss_mib: cost.max_rss_mib.max(saturated_cost.max_rss_mib),
        saturation_requests_per_s: saturated.latency.requests as f64
            / (saturated.latency.elapsed_us as f64 / 1e6),
        saturation_requests_per_cpu_second: 1000.0 / saturated_cost.cpu_seconds_per_1000_requests,
    })
}

fn median(rounds: &[Figures]) -> Figures {
    Figures {
        p50_us: mid(rounds.iter().map(|f| f.p50_us)),
        p99_us: mid(rounds.iter().map(|f| f.p99_us)),
        cpu_seconds_per_1000_requests: mid(rounds.iter().map(|f| f.cpu_seconds_per_1000_requests)),
        rss_mib: rounds.iter().map(|f| f.rss_mib).fold(0.0, f64::max),
        saturation_requests_per_s: mid(rounds.iter().map(|f| f.saturation_requests_per_s)),
        saturation_requests_per_cpu_second: mid(rounds
            .iter()
            .map(|f| f.saturation_requests_per_cpu_second)),
    }
}

impl IngressReport {
    pub fn markdown(&self) -> String {
        let mut table = format!(
            "Ingress gateway beside Envoy {}: HTTP/1.1 from a client outside the mesh, routed by a header \
             match else split 90/10 between two plaintext upstreams; {RATE} req/s for {SECONDS} s on \
             {CONNECTIONS} kept-alive connections ({RESPONSE_BYTES}-byte responses), then as fast as they \
             go; one worker each; {} rounds taken in turns, medians (RSS: the largest).\n\n\
             | proxy | in | p50 (µs) | p99 (µs) | CPU s / 1000 req | RSS (MiB) | saturation (req/s) | req / CPU-second at saturation |\n\
             |---|---|---:|---:|---:|---:|---:|---:|\n",
            envoy::VERSION,
            self.rounds,
        );
        for row in &self.rows {
            let f = &row.median;
            let _ = writeln!(
                table,
                "| {} | {} | {} | {} | {:.4} | {:.1} | {:.0} | {:.0} |",
                row.proxy,
                row.scheme,
                f.p50_us,
                f.p99_us,
                f.cpu_seconds_per_1000_requests,
                f.rss_mib,
                f.saturation_requests_per_s,
                f.saturation_requests_per_cpu_second,
            );
        }
        let _ = writeln!(
            table,
            "\nAmbit against Envoy (goals: CPU ≤ 0.5×, p99 ≤ Envoy's, RSS ≤ 0.5×):\n\n\
             | in | CPU per request | p99 | RSS |\n|---|---:|---:|---:|"
        );
        for scheme in ["http", "https"] {
            let of = |proxy: &str| {
                self.rows
                    .iter()
                    .find(|row| row.proxy == proxy && row.scheme == scheme)
                    .map(|row| row.median)
            };
            if let (Some(ambit), Some(envoy)) = (of("Ambit"), of("Envoy")) {
                let _ = writeln!(
                    table,
                    "| {scheme} | {:.2}× | {} vs {} µs | {:.2}× |",
                    ambit.cpu_seconds_per_1000_requests / envoy.cpu_seconds_per_1000_requests,
                    ambit.p99_us,
                    envoy.p99_us,
                    ambit.rss_mib / envoy.rss_mib,
                );
            }
        }
        table
    }
}
