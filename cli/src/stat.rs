//! `ambit stat` and `ambit graph`: the golden signals of the mesh's
//! services, and its service graph, read off the
//! proxies' own metrics endpoints (Istio's metric names), for people who
//! live in a terminal, as `linkerd viz stat`: per service (or workload),
//! requests, success rate, latency percentiles, TCP connections and the
//! share of them in mutual TLS. With `--interval`, over that window (two
//! scrapes); without, since the proxies started.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

/// What rows are per.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Service,
    Workload,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

/// One sample of Prometheus' text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A row's golden signals.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub requests: f64,
    /// Requests per second over the window (none: no window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rps: Option<f64>,
    /// Share of requests not answered 5xx (none: no request).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    pub tcp_connections: f64,
    /// Share of TCP connections in mutual TLS (none: no connection).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtls_share: Option<f64>,
}

/// The samples of a text exposition (comments and blank lines skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

/// `NAME{LABELS} VALUE`, and a timestamp after it as Prometheus's
/// federation gives one.
fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let (name, rest) = line.split_at(name_end);
    let (labels, rest) = match rest.strip_prefix('{') {
        Some(labels) => parse_labels(labels)?,
        None => (BTreeMap::new(), rest),
    };
    let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `a="x",b="y \"quoted\""}`: the labels, and what follows the `}`.
fn parse_labels(mut text: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        text = text.trim_start_matches(',');
        if let Some(rest) = text.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (key, rest) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => value.push(match chars.next()?.1 {
                    'n' => '\n',
                    other => other,
                }),
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key.to_string(), value);
        text = &rest[end + 1..];
    }
}

/// The rows of `now` (less `before`, over `seconds`, when a window).
pub fn rows(now: &[Sample], before: Option<(&[Sample], f64)>, by: By) -> BTreeMap<String, Row> {
    let totals = |samples: &[Sample]| totals(samples, by);
    let mut rows = totals(now);
    if let Some((before, seconds)) = before {
        let earlier = totals(before);
        for (key, row) in &mut rows {
            let Some(was) = earlier.get(key) else {
                continue;
            };
            row.near.less(&was.near);
            row.far.less(&was.far);
            row.tcp_connections -= was.tcp_connections;
            row.mtls -= was.mtls;
        }
        return rows
            .into_iter()
            .map(|(key, row)| (key, row.finish(Some(seconds))))
            .collect();
    }
    rows.into_iter()
        .map(|(key, row)| (key, row.finish(None)))
        .collect()
}

/// Counts before rates and quantiles are made of them.
#[derive(Default)]
struct Totals {
    /// Requests as the side nearer the callee reported them (a waypoint,
    /// the server's proxy), and as the caller's (a gateway) did: each
    /// request is counted once, by the nearer report when there is one.
    near: Http,
    far: Http,
    tcp_connections: f64,
    mtls: f64,
}

#[derive(Default)]
struct Http {
    requests: f64,
    successes: f64,
    /// Cumulative latency buckets by upper bound (ms).
    buckets: BTreeMap<Bound, f64>,
}

impl Http {
    fn less(&mut self, earlier: &Http) {
        self.requests -= earlier.requests;
        self.successes -= earlier.successes;
        for (le, count) in &mut self.buckets {
            *count -= earlier.buckets.get(le).copied().unwrap_or(0.0);
        }
    }
}

/// A bucket's upper bound, ordered (`+Inf` last).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bound(f64);
impl Eq for Bound {}
impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

fn totals(samples: &[Sample], by: By) -> BTreeMap<String, Totals> {
    let mut rows: BTreeMap<String, Totals> = BTreeMap::new();
    let key = |labels: &BTreeMap<String, String>| -> Option<String> {
        let (name, namespace) = match by {
            By::Service => ("destination_service_name", "destination_service_namespace"),
            By::Workload => ("destination_workload", "destination_workload_namespace"),
        };
        let name = labels
            .get(name)
            .filter(|n| !n.is_empty() && *n != "unknown")?;
        let namespace = labels.get(namespace).map_or("", String::as_str);
        Some(format!("{namespace}/{name}"))
    };
    for sample in samples {
        let labels = &sample.labels;
        let reporter = labels.get("reporter").map_or("", String::as_str);
        let near = reporter == "waypoint" || reporter == "destination";
        let Some(key) = key(labels) else { continue };
        match sample.name.as_str() {
            "istio_requests_total" => {
                let row = rows.entry(key).or_default().http(near);
                row.requests += sample.value;
                if succeeded(labels) {
                    row.successes += sample.value;
                }
            }
            "istio_request_duration_milliseconds_bucket" => {
                let le = match labels.get("le").map(String::as_str) {
                    Some("+Inf") => f64::INFINITY,
                    Some(le) => match le.parse() {
                        Ok(le) => le,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                let row = rows.entry(key).or_default().http(near);
                *row.buckets.entry(Bound(le)).or_default() += sample.value;
            }
            "istio_tcp_connections_opened_total" if reporter == "destination" => {
                let row = rows.entry(key).or_default();
                row.tcp_connections += sample.value;
                if in_mutual_tls(labels) {
                    row.mtls += sample.value;
                }
            }
            _ => {}
        }
    }
    rows
}

/// Whether a request's series is of answers that were no server error.
fn succeeded(labels: &BTreeMap<String, String>) -> bool {
    let code: u16 = labels
        .get("response_code")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (1..500).contains(&code)
}

/// Whether a connection's series is of connections in mutual TLS.
fn in_mutual_tls(labels: &BTreeMap<String, String>) -> bool {
    labels.get("connection_security_policy").map(String::as_str) == Some("mutual_tls")
}

impl Totals {
    /// The counts of requests reported near the callee, or by its caller.
    fn http(&mut self, near: bool) -> &mut Http {
        match near {
            true => &mut self.near,
            false => &mut self.far,
        }
    }

    fn finish(self, seconds: Option<f64>) -> Row {
        let share = |part: f64, whole: f64| (whole > 0.0).then(|| part / whole);
        let http = match self.near.requests > 0.0 {
            true => self.near,
            false => self.far,
        };
        Row {
            requests: http.requests,
            rps: seconds.filter(|s| *s > 0.0).map(|s| http.requests / s),
            success_rate: share(http.successes, http.requests),
            p50_ms: quantile(&http.buckets, 0.50),
            p95_ms: quantile(&http.buckets, 0.95),
            p99_ms: quantile(&http.buckets, 0.99),
            tcp_connections: self.tcp_connections,
            mtls_share: share(self.mtls, self.tcp_connections),
        }
    }
}

/// Prometheus' `histogram_quantile`: linear within the bucket the rank
/// falls in; the last finite bound when it falls in `+Inf`.
fn quantile(buckets: &BTreeMap<Bound, f64>, q: f64) -> Option<f64> {
    let total = *buckets.values().last()?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut previous = (0.0, 0.0);
    for (Bound(le), count) in buckets {
        if *count >= rank {
            if le.is_infinite() {
                return Some(previous.0);
            }
            let within = (rank - previous.1) / (count - previous.1).max(f64::MIN_POSITIVE);
            return Some(previous.0 + (le - previous.0) * within);
        }
        previous = (*le, *count);
    }
    None
}

/// One edge of the service graph: a caller and a callee workload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Edge {
    pub requests: f64,
    pub successes: f64,
    pub tcp_connections: f64,
    pub mtls: f64,
}

/// The edges (caller → callee, `namespace/workload` each) in `samples`,
/// each request and connection counted once, as the side nearer the
/// callee reported it.
pub fn edges(samples: &[Sample]) -> BTreeMap<(String, String), Edge> {
    let mut edges: BTreeMap<(String, String), Edge> = BTreeMap::new();
    let workload = |labels: &BTreeMap<String, String>, side: &str| -> Option<String> {
        let name = labels.get(&format!("{side}_workload"))?;
        if name.is_empty() || name == "unknown" {
            return None;
        }
        let namespace = labels.get(&format!("{side}_workload_namespace"));
        Some(format!("{}/{name}", namespace.map_or("", String::as_str)))
    };
    for sample in samples {
        let labels = &sample.labels;
        let reporter = labels.get("reporter").map_or("", String::as_str);
        let (Some(from), Some(to)) = (workload(labels, "source"), workload(labels, "destination"))
        else {
            continue;
        };
        match sample.name.as_str() {
            "istio_requests_total" if reporter == "waypoint" || reporter == "destination" => {
                let edge = edges.entry((from, to)).or_default();
                edge.requests += sample.value;
                if succeeded(labels) {
                    edge.successes += sample.value;
                }
            }
            "istio_tcp_connections_opened_total" if reporter == "destination" => {
                let edge = edges.entry((from, to)).or_default();
                edge.tcp_connections += sample.value;
                if in_mutual_tls(labels) {
                    edge.mtls += sample.value;
                }
            }
            _ => {}
        }
    }
    edges
}

/// The graph in Graphviz's DOT: a node per workload, an edge per caller
/// and callee, labelled with requests, success and mutual TLS.
pub fn dot(edges: &BTreeMap<(String, String), Edge>) -> String {
    let mut text = String::from(
        "digraph mesh {\n  rankdir=LR;\n  node [shape=box, style=rounded, fontname=\"sans-serif\"];\n",
    );
    for ((from, to), edge) in edges {
        let mut label = Vec::new();
        if edge.requests > 0.0 {
            label.push(format!(
                "{} req, {:.0}% ok",
                edge.requests,
                100.0 * edge.successes / edge.requests
            ));
        }
        if edge.tcp_connections > 0.0 {
            label.push(format!(
                "{} conn, {:.0}% mTLS",
                edge.tcp_connections,
                100.0 * edge.mtls / edge.tcp_connections
            ));
        }
        text.push_str(&format!(
            "  {:?} -> {:?} [label={:?}];\n",
            from,
            to,
            label.join("\\n")
        ));
    }
    text.push_str("}\n");
    text
}

/// Where the proxies' metrics are read: their own endpoints, or a
/// Prometheus that scrapes them.
#[derive(clap::Args, Debug)]
pub struct Sources {
    /// A proxy's metrics address (an agent's or a waypoint's
    /// `ADDRESS:15020`); repeatable.
    #[arg(long = "metrics", required_unless_present = "prometheus")]
    pub metrics: Vec<SocketAddr>,
    /// A Prometheus that scrapes the proxies (`http://HOST:PORT`): their
    /// Istio metrics are read from its federation endpoint.
    #[arg(long)]
    pub prometheus: Option<String>,
}

/// What Prometheus's federation endpoint is asked for: Istio's families.
const FEDERATE: &str = "/federate?match%5B%5D=%7B__name__%3D~%22istio_.%2A%22%7D";

impl Sources {
    /// Every sample, from every source, now.
    fn scrape(&self) -> anyhow::Result<Vec<Sample>> {
        let mut samples = Vec::new();
        for addr in &self.metrics {
            samples.extend(parse(&get(&addr.to_string(), "/metrics")?));
        }
        if let Some(url) = &self.prometheus {
            let rest = url.strip_prefix("http://").with_context(|| {
                format!("--prometheus {url:?}: an http:// URL, as http://prometheus:9090")
            })?;
            let (host, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let prefix = prefix.trim_end_matches('/');
            let path = match prefix {
                "" => FEDERATE.to_string(),
                prefix => format!("/{prefix}{FEDERATE}"),
            };
            samples.extend(parse(&get(host, &path)?));
        }
        Ok(samples)
    }
}

/// Reads the metrics and writes the service graph to `out`: DOT, or SVG
/// when `out` ends in `.svg` (drawn by Graphviz's `dot`).
pub fn graph(sources: &Sources, out: &std::path::Path) -> anyhow::Result<()> {
    let text = dot(&edges(&sources.scrape()?));
    if out.extension().is_some_and(|e| e == "svg") {
        let mut dot = std::process::Command::new("dot")
            .args(["-Tsvg", "-o"])
            .arg(out)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("running Graphviz's dot (install graphviz, or write .dot)")?;
        dot.stdin
            .take()
            .context("dot's stdin")?
            .write_all(text.as_bytes())?;
        let status = dot.wait()?;
        if !status.success() {
            bail!("dot failed ({status})");
        }
    } else {
        std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    }
    println!("{}", out.display());
    Ok(())
}

/// How `ambit stat` reads and shows.
pub struct View {
    /// Over a window of this long (two scrapes); none: since the proxies
    /// started.
    pub interval: Option<Duration>,
    /// Again every `interval` until interrupted.
    pub watch: bool,
    pub by: By,
    pub output: Output,
}

/// How long `--watch` windows are unless `--interval` says.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// Reads the metrics, once or twice `interval` apart (again and again
/// with `watch`), and prints the rows.
pub fn run(sources: &Sources, view: &View) -> anyhow::Result<()> {
    let Some(interval) = view.interval.or(view.watch.then_some(WATCH_INTERVAL)) else {
        return print(&rows(&sources.scrape()?, None, view.by), view, false);
    };
    let mut before = sources.scrape()?;
    loop {
        std::thread::sleep(interval);
        let now = sources.scrape()?;
        let window = Some((before.as_slice(), interval.as_secs_f64()));
        print(&rows(&now, window, view.by), view, view.watch)?;
        if !view.watch {
            return Ok(());
        }
        before = now;
    }
}

/// Prints `rows`: a table (on a cleared terminal when `refresh`), or one
/// JSON document (a line of its own when `refresh`, for a script to read
/// as they come).
fn print(rows: &BTreeMap<String, Row>, view: &View, refresh: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match view.output {
        Output::Json if refresh => writeln!(out, "{}", serde_json::to_string(rows)?)?,
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(rows)?)?,
        Output::Table => {
            if refresh {
                // ANSI: clear the screen, cursor home.
                write!(out, "\x1b[2J\x1b[H")?;
            }
            let heading = match view.by {
                By::Service => "SERVICE",
                By::Workload => "WORKLOAD",
            };
            writeln!(
                out,
                "{heading:<40} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8} {:>6}",
                "REQUESTS", "RPS", "SUCCESS", "P50_MS", "P95_MS", "P99_MS", "TCP", "MTLS"
            )?;
            let show = |value: Option<f64>, scale: f64, unit: &str| {
                value.map_or("-".to_string(), |v| format!("{:.1}{unit}", v * scale))
            };
            for (key, row) in rows {
                writeln!(
                    out,
                    "{key:<40} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8} {:>6}",
                    row.requests,
                    show(row.rps, 1.0, ""),
                    show(row.success_rate, 100.0, "%"),
                    show(row.p50_ms, 1.0, ""),
                    show(row.p95_ms, 1.0, ""),
                    show(row.p99_ms, 1.0, ""),
                    row.tcp_connections,
                    show(row.mtls_share, 100.0, "%"),
                )?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// `GET path` of `host` (`HOST:PORT`), in HTTP/1.0.
fn get(host: &str, path: &str) -> anyhow::Result<String> {
    let addr = host
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {host}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if head.split_whitespace().nth(1) != Some("200") {
        bail!("{host}{path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# HELP istio_requests_total Requests.
# TYPE istio_requests_total counter
istio_requests_total{reporter="waypoint",destination_service_name="reviews",destination_service_namespace="default",response_code="200"} 90
istio_requests_total{reporter="waypoint",destination_service_name="reviews",destination_service_namespace="default",response_code="503"} 10
istio_requests_total{reporter="source",destination_service_name="reviews",destination_service_namespace="default",response_code="200"} 100
istio_request_duration_milliseconds_bucket{reporter="waypoint",destination_service_name="reviews",destination_service_namespace="default",le="1"} 50
istio_request_duration_milliseconds_bucket{reporter="waypoint",destination_service_name="reviews",destination_service_namespace="default",le="10"} 90
istio_request_duration_milliseconds_bucket{reporter="waypoint",destination_service_name="reviews",destination_service_namespace="default",le="+Inf"} 100
istio_tcp_connections_opened_total{reporter="destination",destination_service_name="reviews",destination_service_namespace="default",connection_security_policy="mutual_tls"} 3
istio_tcp_connections_opened_total{reporter="destination",destination_service_name="reviews",destination_service_namespace="default",connection_security_policy="none"} 1
"#;

    #[test]
    fn each_service_gets_its_golden_signals_from_istios_metrics() {
        let samples = parse(SCRAPE);
        assert_eq!(samples.len(), 8);
        let rows = rows(&samples, None, By::Service);
        let reviews = &rows["default/reviews"];
        // The gateway's (source) report of the same requests is not added.
        assert_eq!(reviews.requests, 100.0);
        // A service only a gateway reports on is counted from its reports.
        let gateway_only = parse(
            r#"istio_requests_total{reporter="source",destination_service_name="productpage",destination_service_namespace="default",response_code="200"} 7"#,
        );
        let counted = super::rows(&gateway_only, None, By::Service);
        assert_eq!(counted["default/productpage"].requests, 7.0);
        assert_eq!(reviews.success_rate, Some(0.9));
        assert_eq!(reviews.p50_ms, Some(1.0));
        assert!((reviews.p95_ms.unwrap() - 10.0).abs() < 1e-9, "{reviews:?}");
        assert_eq!(
            reviews.p99_ms,
            Some(10.0),
            "past the last bound: the last bound"
        );
        assert_eq!(reviews.tcp_connections, 4.0);
        assert_eq!(reviews.mtls_share, Some(0.75));
        assert_eq!(reviews.rps, None);
    }

    #[test]
    fn over_a_window_the_counts_are_what_changed() {
        let before = parse(SCRAPE);
        let after = parse(&SCRAPE.replace("} 90\n", "} 110\n"));
        let rows = rows(&after, Some((&before, 2.0)), By::Service);
        let reviews = &rows["default/reviews"];
        assert_eq!(reviews.requests, 20.0);
        assert_eq!(reviews.rps, Some(10.0));
        assert_eq!(reviews.success_rate, Some(1.0));
    }

    #[test]
    fn the_graph_has_an_edge_per_caller_and_callee() {
        let samples = parse(
            r#"istio_requests_total{reporter="waypoint",source_workload="productpage-v1",source_workload_namespace="default",destination_workload="reviews-v1",destination_workload_namespace="default",response_code="200"} 9
istio_requests_total{reporter="waypoint",source_workload="productpage-v1",source_workload_namespace="default",destination_workload="reviews-v1",destination_workload_namespace="default",response_code="500"} 1
istio_requests_total{reporter="source",source_workload="productpage-v1",source_workload_namespace="default",destination_workload="reviews-v1",destination_workload_namespace="default",response_code="200"} 10
istio_tcp_connections_opened_total{reporter="destination",source_workload="reviews-v1",source_workload_namespace="default",destination_workload="ratings-v1",destination_workload_namespace="default",connection_security_policy="mutual_tls"} 2
"#,
        );
        let edges = edges(&samples);
        assert_eq!(edges.len(), 2);
        let page = &edges[&("default/productpage-v1".into(), "default/reviews-v1".into())];
        assert_eq!((page.requests, page.successes), (10.0, 9.0));
        let text = dot(&edges);
        assert!(
            text.contains(
                r#""default/productpage-v1" -> "default/reviews-v1" [label="10 req, 90% ok"]"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"[label="2 conn, 100% mTLS"]"#), "{text}");
    }

    #[test]
    fn labels_with_quotes_and_commas_are_read_whole() {
        let sample = parse_line(r#"m{a="x,y",b="say \"hi\""} 2"#).unwrap();
        assert_eq!(sample.labels["a"], "x,y");
        assert_eq!(sample.labels["b"], r#"say "hi""#);
        assert_eq!(sample.value, 2.0);
        // Prometheus's federation adds a timestamp; labels may hold braces.
        let federated = parse_line(r#"m{a="}{ x",job="p"} 7 1733300000000"#).unwrap();
        assert_eq!(
            (federated.labels["a"].as_str(), federated.value),
            ("}{ x", 7.0)
        );
        assert_eq!(parse_line("plain 3").unwrap().value, 3.0);
    }
}
