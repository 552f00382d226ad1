//! What users look at: a real Prometheus (Debian's) scraping the mesh's
//! proxies as a cluster's would, asked through its HTTP API for the queries
//! Istio's dashboards make, after Bookinfo traffic that the test knows.

use std::collections::BTreeMap;
use std::time::Duration;

use ambit_testbed::bookinfo::Bookinfo;
use ambit_testbed::prometheus::Prometheus;
use ambit_testbed::testapp::{HttpLoad, HttpSummary};
use ambit_testbed::wait_for;
use anyhow::{ensure, Context};
use serde_json::Value;

#[test]
fn prometheus_scrapes_istios_metrics_with_the_labels_its_dashboards_select_on() -> anyhow::Result<()>
{
    let bookinfo = Bookinfo::start()?;
    let cluster = &bookinfo.cluster;
    let targets = bookinfo.metrics_targets()?;
    let prometheus = Prometheus::start(cluster, cluster.node("node-1")?, &targets)?;
    // Known traffic: 20 pages, each a call to details and to reviews v1,
    // all through the waypoint.
    let pages = bookinfo.run(HttpLoad::new(20), "productpage", "/productpage")?;
    ensure!(pages.status(200) == 20, "{pages:?}");
    let value = |query: &str| prometheus.query(cluster, query);
    // As Istio's service dashboard asks: requests to reviews by code, from
    // the waypoint's reports.
    let to_reviews = r#"sum(istio_requests_total{reporter="waypoint",destination_service_name="reviews",response_code="200"})"#;
    wait_for(
        "Prometheus to scrape the waypoint",
        Duration::from_secs(20),
        || Ok(value(to_reviews)? >= Some(20.0)),
    )
    .with_context(|| prometheus.output())?;
    let checks = [
        // The calls to details, by its workload and version.
        (
            r#"sum(istio_requests_total{destination_workload="details-v1",destination_version="v1"})"#,
            20.0,
        ),
        // Istio's latency panels: the duration histogram's buckets.
        (
            r#"sum(istio_request_duration_milliseconds_bucket{destination_service_name="reviews",le="+Inf"})"#,
            20.0,
        ),
        // The workload dashboard's TCP panels, from the agents, over mTLS.
        (
            r#"sum(istio_tcp_connections_opened_total{reporter="source",connection_security_policy="mutual_tls"})"#,
            1.0,
        ),
        // And the servers' agents, which took them in.
        (
            r#"sum(istio_tcp_connections_opened_total{reporter="destination",destination_workload="reviews-v1"})"#,
            1.0,
        ),
        // Istio's mesh dashboard: requests as sources and waypoints report
        // them, the non-5xx ones for its success rate.
        (
            r#"sum(istio_requests_total{reporter=~"source|waypoint",response_code!~"5.."})"#,
            40.0,
        ),
        // Kiali's graph: canonical service and revision, and the cluster.
        (
            r#"sum(istio_requests_total{reporter="waypoint",destination_canonical_service="reviews",destination_canonical_revision="v1",destination_cluster="Kubernetes",source_canonical_service="productpage"})"#,
            20.0,
        ),
        // Istio's service dashboard picks a service by `destination_service`
        // in both families: the same host in TCP as in HTTP.
        (
            r#"sum(istio_tcp_connections_opened_total{reporter="source",destination_service="reviews.default.svc.cluster.local",destination_service_name="reviews",destination_service_namespace="default"})"#,
            1.0,
        ),
        // Every agent and waypoint applied the configuration at least once.
        (r#"count(ambit_config_updates_total >= 1)"#, 3.0),
        // Every proxy, and the CA, says what it is.
        (r#"count(istio_build{component=~"ambit-.*"})"#, 4.0),
        // The CA issued every identity the agents hold.
        (
            r#"sum(ambit_ca_certificate_requests_total{outcome="issued"})"#,
            2.0,
        ),
    ];
    // Each target is scraped on its own second: wait for all of them.
    let mut last = Vec::new();
    let all = wait_for("every query answered", Duration::from_secs(20), || {
        last = Vec::new();
        for (query, at_least) in checks {
            let got = value(query)?;
            if got < Some(at_least) {
                last.push(format!("{query}: {got:?}, wanted at least {at_least}"));
            }
        }
        Ok(last.is_empty())
    });
    all.with_context(|| format!("{}\n{}", last.join("\n"), prometheus.output()))?;

    // Every panel of Ambit's Grafana dashboards returns data for this
    // traffic (Grafana's `$__rate_interval` as 30s).
    let dashboards =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/charts/ambit/dashboards");
    let mut panels = 0;
    for entry in std::fs::read_dir(&dashboards)? {
        let path = entry?.path();
        let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        for panel in dashboard["panels"].as_array().context("no panels")? {
            for target in panel["targets"].as_array().context("no targets")? {
                let expr = target["expr"].as_str().context("no expr")?;
                let query = expr.replace("$__rate_interval", "30s");
                // A rate needs two scrapes of a series in its window.
                let title = &panel["title"];
                let answered = wait_for(
                    &format!("the panel {title}"),
                    Duration::from_secs(10),
                    || Ok(value(&query)?.is_some()),
                );
                answered.with_context(|| {
                    format!(
                        "{} returns nothing: {query}\n{}",
                        path.display(),
                        prometheus.output()
                    )
                })?;
                panels += 1;
            }
        }
    }
    ensure!(panels >= 10, "{panels} panels");

    // The same signals in a terminal: `ambit stat` off the proxies' own
    // metrics endpoints, with no Prometheus.
    let ambit = cluster.binaries().get("ambit")?;
    let mut args = vec!["stat".to_string(), "-o".into(), "json".into()];
    for (_, addr) in &targets {
        args.extend(["--metrics".to_string(), addr.to_string()]);
    }
    let node = cluster.node("node-1")?;
    let output = cluster.run(node.place(), &ambit, &args, Duration::from_secs(20))?;
    ensure!(output.status.success(), "{output:?}");
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    for service in ["default/reviews", "default/details"] {
        let row = &rows[service];
        ensure!(
            row["requests"].as_f64() >= Some(20.0)
                && row["successRate"] == 1.0
                && row["p50Ms"].as_f64().is_some()
                && row["p99Ms"].as_f64() >= row["p50Ms"].as_f64(),
            "{service}: {rows:#}"
        );
    }

    // The same rows through Prometheus (its federation endpoint), as a
    // user whose Prometheus scrapes the proxies would ask.
    let args = [
        "stat".to_string(),
        "-o".into(),
        "json".into(),
        "--prometheus".into(),
        prometheus.url(),
    ];
    let output = cluster.run(node.place(), &ambit, &args, Duration::from_secs(20))?;
    ensure!(output.status.success(), "{output:?}");
    let through: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    for service in ["default/reviews", "default/details"] {
        ensure!(
            through[service]["requests"].as_f64() >= Some(20.0)
                && through[service]["successRate"] == 1.0,
            "{service} through Prometheus: {through:#}"
        );
    }
    // `--watch`: a JSON line a second, each over its own window, until
    // stopped; the traffic of the last second shows as a request rate.
    let mut args = vec![
        "stat".to_string(),
        "--watch".into(),
        "--interval".into(),
        "1".into(),
        "-o".into(),
        "json".into(),
    ];
    for (_, addr) in &targets {
        args.extend(["--metrics".to_string(), addr.to_string()]);
    }
    let watching = cluster.spawn(node.place(), "ambit-stat-watch", &ambit, args)?;
    let mut load = HttpLoad::new(400)
        .interval(Duration::from_millis(10))
        .spawn(
            cluster,
            cluster.pod("client")?.place(),
            &ambit_testbed::bookinfo::url("productpage", "/productpage")?,
        )?;
    let mut busy = Vec::new();
    wait_for(
        "two refreshes that saw traffic",
        Duration::from_secs(20),
        || {
            busy = watching
                .output()
                .lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .filter(|rows| rows["default/reviews"]["rps"].as_f64() > Some(1.0))
                .collect();
            Ok(busy.len() >= 2)
        },
    )
    .with_context(|| watching.output())?;
    load.wait_exit(Duration::from_secs(30))?;
    drop(watching);

    // The service graph, drawn: an SVG with an edge per caller and callee.
    let svg = cluster.work_dir().join("mesh.svg");
    let mut args = vec!["graph".to_string(), "-o".into(), svg.display().to_string()];
    for (_, addr) in &targets {
        args.extend(["--metrics".to_string(), addr.to_string()]);
    }
    let output = cluster.run(node.place(), &ambit, &args, Duration::from_secs(20))?;
    ensure!(output.status.success(), "{output:?}");
    let drawn = std::fs::read_to_string(&svg)?;
    ensure!(
        drawn.contains("<svg") && drawn.trim_end().ends_with("</svg>"),
        "{drawn}"
    );
    // Graphviz titles each edge `from->to`, escaped.
    let edges: Vec<String> = drawn
        .split("class=\"edge\"")
        .skip(1)
        .filter_map(|edge| {
            let title = edge.split("<title>").nth(1)?.split("</title>").next()?;
            Some(title.replace("&#45;", "-").replace("&gt;", ">"))
        })
        .collect();
    for expected in [
        "default/productpage-v1->default/details-v1",
        "default/productpage-v1->default/reviews-v1",
    ] {
        ensure!(
            edges.iter().any(|e| e == expected),
            "{expected} not in {edges:?}"
        );
    }
    Ok(())
}

/// Distributed tracing as Istio's Bookinfo task shows it: the waypoint
/// and the ingress gateway make a span for every request and export it
/// over OTLP; the apps pass the trace context on (as Bookinfo's do), so a
/// page's calls to details and reviews are children of the proxy's span
/// for the page.
#[test]
fn the_waypoint_and_the_gateway_export_a_span_per_request_and_join_the_apps_calls_into_one_trace(
) -> anyhow::Result<()> {
    let bookinfo = Bookinfo::start_traced()?;
    let cluster = &bookinfo.cluster;
    let collector = bookinfo.collector.as_ref().context("started traced")?;
    let page = |load: HttpLoad| -> anyhow::Result<HttpSummary> {
        let pages = bookinfo.run(load, "productpage", "/productpage")?;
        ensure!(
            pages.status(200) == pages.requests && pages.one_trace == pages.requests,
            "{pages:?}"
        );
        Ok(pages)
    };
    // No context: the waypoint starts each trace and gives productpage
    // its span in both W3C's and B3's headers.
    let fresh = page(HttpLoad::new(3))?;
    for header in ["traceparent: 00-", "x-b3-traceid: ", "x-b3-spanid: "] {
        let seen: usize = fresh
            .forwarded
            .iter()
            .filter(|(value, _)| value.starts_with(header))
            .map(|(_, count)| count)
            .sum();
        ensure!(seen == 3, "{header}: {:?}", fresh.forwarded);
    }
    // A caller's W3C context: its trace, its span as the parent, its
    // tracestate passed on untouched.
    let (w3c_trace, w3c_parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let w3c = page(
        HttpLoad::new(2)
            .header("traceparent", &format!("00-{w3c_trace}-{w3c_parent}-01"))
            .header("tracestate", "vendor=opaque"),
    )?;
    ensure!(
        w3c.forwarded.get("tracestate: vendor=opaque") == Some(&2),
        "{:?}",
        w3c.forwarded
    );
    // A caller's B3 context, rewritten in B3 with the waypoint's span.
    let (b3_trace, b3_parent) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let b3 = page(
        HttpLoad::new(2)
            .header("x-b3-traceid", b3_trace)
            .header("x-b3-spanid", b3_parent)
            .header("x-b3-sampled", "1"),
    )?;
    for expected in [
        format!("x-b3-traceid: {b3_trace}"),
        format!("x-b3-parentspanid: {b3_parent}"),
    ] {
        ensure!(
            b3.forwarded.get(&expected) == Some(&2),
            "{expected}: {:?}",
            b3.forwarded
        );
    }
    // A caller that decided not to sample: passed on, never exported.
    let unsampled = "11111111111111111111111111111111";
    page(HttpLoad::new(2).header(
        "traceparent",
        &format!("00-{unsampled}-00f067aa0ba902b7-00"),
    ))?;

    // Three spans a page: productpage's, details' and reviews'.
    let expected = (3 + 2 + 2) * 3;
    let mut spans = Vec::new();
    wait_for("the spans exported", Duration::from_secs(20), || {
        spans = collector.spans(cluster)?;
        Ok(spans.len() >= expected)
    })
    .with_context(|| format!("{} spans\n{}", spans.len(), collector.output()))?;
    ensure!(spans.len() == expected, "{} spans: {spans:#?}", spans.len());
    let mut traces: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for span in &spans {
        let trace = span["traceId"].as_str().context("a trace id")?;
        traces.entry(trace.to_string()).or_default().push(span);
        // Istio's tags, on the waypoint's server side.
        let tags = &span["attributes"];
        ensure!(
            span["kind"] == 2
                && span["resource"]["service.name"] == "waypoint.default"
                && span["resource"]["istio.namespace"] == "default"
                && tags["http.method"] == "GET"
                && tags["http.status_code"] == "200"
                && tags["response_flags"] == "-"
                && tags["upstream_cluster"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("outbound|9080|v1|"))
                && tags["guid:x-request-id"]
                    .as_str()
                    .is_some_and(|id| id.len() >= 32),
            "{span:#}"
        );
    }
    ensure!(!traces.contains_key(unsampled), "{traces:#?}");
    ensure!(
        traces[w3c_trace].len() == 6 && traces[b3_trace].len() == 6,
        "{traces:#?}"
    );
    ensure!(
        traces.len() == 3 + 2,
        "3 new traces and the callers' two: {traces:#?}"
    );
    for (trace, spans) in &traces {
        let named = |service: &str| -> Vec<&Value> {
            spans
                .iter()
                .copied()
                .filter(|s| {
                    s["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(&format!("{service}.")))
                })
                .collect()
        };
        let pages = named("productpage");
        let expected_parent = match trace.as_str() {
            t if t == w3c_trace => Some(w3c_parent),
            t if t == b3_trace => Some(b3_parent),
            _ => None,
        };
        for page in &pages {
            ensure!(
                page["parentSpanId"].as_str() == expected_parent
                    && page["name"]
                        .as_str()
                        .is_some_and(|n| n.ends_with(":9080/*")),
                "{page:#}"
            );
        }
        // Each call's parent is the waypoint's span for a page of the
        // trace, and the page's request id went with it.
        for call in [named("details"), named("reviews")].concat() {
            ensure!(
                pages
                    .iter()
                    .any(|page| page["spanId"] == call["parentSpanId"]
                        && page["attributes"]["guid:x-request-id"]
                            == call["attributes"]["guid:x-request-id"]),
                "{call:#}\nnot a child of {pages:#?}"
            );
        }
        ensure!(pages.len() * 3 == spans.len(), "{spans:#?}");
    }

    // From outside through the ingress gateway: a span a page at the
    // gateway (the client side, as Istio's gateways trace), and the page's
    // calls to details and reviews, at the waypoint, its children.
    bookinfo.apply(
        [
            ambit_testbed::bookinfo::manifest("bookinfo-gateway.yaml")?,
            ambit_testbed::bookinfo::manifest("routing-all-v1.yaml")?,
        ]
        .concat(),
    )?;
    let outside = bookinfo.outside_to(
        HttpLoad::new(2),
        "http://bookinfo.example.com/productpage",
        8080,
    )?;
    ensure!(outside.status(200) == 2, "{outside:?}");
    let mut all = Vec::new();
    wait_for("the gateway's spans", Duration::from_secs(20), || {
        all = collector.spans(cluster)?;
        Ok(all.len() >= expected + 2 * 3)
    })
    .with_context(|| format!("{} spans\n{}", all.len(), collector.output()))?;
    let at_gateway: Vec<&Value> = all
        .iter()
        .filter(|s| s["resource"]["service.name"] == "ingressgateway.istio-system")
        .collect();
    ensure!(at_gateway.len() == 2, "{all:#?}");
    for page in at_gateway {
        let children = all
            .iter()
            .filter(|s| s["parentSpanId"] == page["spanId"] && s["traceId"] == page["traceId"])
            .count();
        ensure!(
            page["kind"] == 3
                && page["name"] == "productpage.default.svc.cluster.local:9080/*"
                && page["parentSpanId"].is_null()
                && children == 2,
            "{page:#}: {children} children in {all:#?}"
        );
    }
    Ok(())
}
