//! What users look at: a real Prometheus (Debian's) scraping the mesh's
//! proxies as a cluster's would, asked through its HTTP API for the queries
//! Istio's dashboards make, after Bookinfo traffic that the test knows.

use std::time::Duration;

use ambit_testbed::bookinfo::Bookinfo;
use ambit_testbed::prometheus::Prometheus;
use ambit_testbed::testapp::HttpLoad;
use ambit_testbed::wait_for;
use anyhow::{ensure, Context};

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
        // Every proxy says what it is.
        (r#"count(istio_build{component=~"ambit-.*"})"#, 3.0),
    ];
    for (query, at_least) in checks {
        let got = value(query)?;
        ensure!(
            got >= Some(at_least),
            "{query}: {got:?}, wanted at least {at_least}\n{}",
            prometheus.output()
        );
    }
    Ok(())
}
