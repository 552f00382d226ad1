//! The waypoint's resilience, end to end: retries (Istio's default policy,
//! the user's, none) and circuit breaking, each asserted by what the
//! clients got and what the waypoint counted.

mod reviews;

use ambit_testbed::mesh::sample;
use std::time::Duration;

use ambit_testbed::testapp::{self, last_json, HttpLoad, HttpSummary, Server};
use anyhow::{ensure, Context};
use reviews::{Bed, PORT, REVIEWS_VIP};
use serde_json::{json, Value};

/// All of reviews to its v1 subset, with this route's `retries` (none: no
/// field at all).
fn to_v1_retrying(retries: Option<Value>) -> Value {
    let mut route = json!({ "route": [{ "destination": { "host": "reviews", "subset": "v1" } }] });
    if let Some(retries) = retries {
        route["retries"] = retries;
    }
    json!([route])
}

/// `requests` requests from `client` to reviews on one connection.
fn hundred(bed: &Bed) -> anyhow::Result<HttpSummary> {
    bed.load(HttpLoad::new(100), "client", PORT, "/")
}

#[test]
fn retries_turn_a_replica_failing_every_other_request_into_full_success() -> anyhow::Result<()> {
    // v1 answers 500 to every other request it gets, retries included.
    let bed = Bed::start_serving(|version| {
        let server = Server::new("reviews", version);
        match version {
            "v1" => server.fail_every(2, 500),
            _ => server,
        }
    })?;
    // Istio's default policy retries 503s and connection failures, not a
    // 500: half the requests fail.
    bed.apply(json!({}), Some(to_v1_retrying(None)))?;
    let summary = hundred(&bed)?;
    ensure!(
        summary.status(500) == 50 && summary.status(200) == 50,
        "no retries for a 500 by default: {summary:?}"
    );
    // Retrying 5xx, every request succeeds on its second attempt.
    bed.apply(
        json!({}),
        Some(to_v1_retrying(Some(
            json!({ "attempts": 3, "retryOn": "5xx" }),
        ))),
    )?;
    let summary = hundred(&bed)?;
    ensure!(
        summary.status(200) == 100,
        "retried, every request succeeds: {summary:?}\n{}",
        bed.outputs()
    );
    // A status named in retryOn is retried too, and attempts: 0 turns
    // retries off.
    bed.apply(
        json!({}),
        Some(to_v1_retrying(Some(
            json!({ "attempts": 1, "retryOn": "500" }),
        ))),
    )?;
    ensure!(hundred(&bed)?.status(200) == 100, "retried by status");
    bed.apply(
        json!({}),
        Some(to_v1_retrying(Some(
            json!({ "attempts": 0, "retryOn": "5xx" }),
        ))),
    )?;
    let summary = hundred(&bed)?;
    ensure!(summary.status(500) == 50, "attempts 0: {summary:?}");

    // A request body is sent again from the copy the waypoint kept, up to
    // 64 KiB; a larger one cannot be retried and its failure comes back.
    bed.apply(
        json!({}),
        Some(to_v1_retrying(Some(
            json!({ "attempts": 3, "retryOn": "5xx" }),
        ))),
    )?;
    let client = bed.cluster.pod("client")?;
    let url = format!("http://{REVIEWS_VIP}:{PORT}/upload");
    for _ in 0..4 {
        let upload = testapp::upload(&bed.cluster, client.place(), &url, 60 * 1024, false)
            .with_context(|| bed.outputs())?;
        ensure!(
            upload.bytes_received_by_server == upload.bytes_sent
                && upload.crc_received_by_server == upload.crc_sent,
            "the retried body arrived whole: {upload:?}"
        );
    }
    let large: Vec<String> = (0..4)
        .map(
            |_| match testapp::upload(&bed.cluster, client.place(), &url, 1 << 20, false) {
                Ok(upload) => format!("{} bytes", upload.bytes_received_by_server),
                Err(error) => format!("{error:#}"),
            },
        )
        .collect();
    ensure!(
        large.iter().filter(|r| r.contains("answered 500")).count() == 2
            && large.iter().filter(|r| *r == "1048576 bytes").count() == 2,
        "of 1 MiB uploads half fail, unretried: {large:?}"
    );
    Ok(())
}

#[test]
fn a_failing_replica_is_retried_on_the_other_by_istios_default_policy() -> anyhow::Result<()> {
    // v2 answers 503 to everything; v1 is healthy.
    let bed = Bed::start_serving(|version| {
        let server = Server::new("reviews", version);
        match version {
            "v2" => server.fail_every(1, 503),
            _ => server,
        }
    })?;
    // No VirtualService: Istio's default retry policy applies, and a
    // retry goes to the host not tried yet.
    bed.apply(json!({ "loadBalancer": { "simple": "ROUND_ROBIN" } }), None)?;
    let summary = hundred(&bed)?;
    ensure!(
        summary.status(200) == 100 && summary.versions.get("reviews/v1") == Some(&100),
        "every request answered by the healthy replica: {summary:?}\n{}",
        bed.outputs()
    );
    // The 503s were retried, not passed on: the waypoint counts 50 of
    // them from v2 and the client saw none.
    let metrics = bed.waypoint.metrics()?;
    let from_v2 = sample(
        &metrics,
        "istio_requests_total",
        &[("destination_version", "v2"), ("response_code", "503")],
    );
    ensure!(from_v2 == 0.0, "attempts are not requests: {from_v2}");
    // With retries off, round robin sends half the requests to the
    // failing replica, and its 503s reach the client.
    bed.apply_objects(vec![
        reviews::destination_rule(json!({ "loadBalancer": { "simple": "ROUND_ROBIN" } })),
        reviews::virtual_service(
            "reviews",
            json!([{ "route": [{ "destination": { "host": "reviews" } }], "retries": { "attempts": 0 } }]),
        ),
    ])?;
    let summary = hundred(&bed)?;
    ensure!(
        summary.status(503) == 50,
        "unretried, the failing replica's share fails: {summary:?}"
    );
    Ok(())
}

/// `clients` callers at once from `client`, `requests` each: what they got
/// together.
fn concurrent(bed: &Bed, clients: usize, requests: usize) -> anyhow::Result<HttpSummary> {
    let url = format!("http://{REVIEWS_VIP}:{PORT}/");
    let client = bed.cluster.pod("client")?;
    let mut runs = (0..clients)
        .map(|_| HttpLoad::new(requests).spawn(&bed.cluster, client.place(), &url))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut total = HttpSummary::default();
    for run in runs.iter_mut() {
        run.wait_exit(Duration::from_secs(60))?;
        let summary: HttpSummary = last_json(&run.output())?;
        total.requests += summary.requests;
        for (status, count) in summary.statuses {
            *total.statuses.entry(status).or_default() += count;
        }
    }
    Ok(total)
}

#[test]
fn istios_circuit_breaking_task_sheds_what_one_connection_cannot_take() -> anyhow::Result<()> {
    // Each answer takes 50 ms, so concurrent callers overlap.
    let bed = Bed::start_serving(|version| {
        Server::new("reviews", version).answer_delay(Duration::from_millis(50))
    })?;
    // The task's trafficPolicy, whole: one connection, one request
    // waiting for it, no keep-alive; and its outlier detection, which a
    // refusal of the waypoint's own (no endpoint was asked) does not feed.
    bed.apply(
        json!({
            "connectionPool": {
                "tcp": { "maxConnections": 1 },
                "http": { "http1MaxPendingRequests": 1, "maxRequestsPerConnection": 1 },
            },
            "outlierDetection": {
                "consecutive5xxErrors": 1,
                "interval": "1s",
                "baseEjectionTime": "3m",
                "maxEjectionPercent": 100,
            },
        }),
        None,
    )?;
    let overflowed = || -> anyhow::Result<f64> {
        Ok(sample(
            &bed.waypoint.metrics()?,
            "istio_requests_total",
            &[("response_code", "503"), ("response_flags", "UO")],
        ))
    };
    // One caller at a time never finds the connection busy.
    let alone = concurrent(&bed, 1, 20)?;
    ensure!(
        alone.status(200) == 20 && overflowed()? == 0.0,
        "one caller: {alone:?}"
    );
    // Three at once: one has the connection, one waits, the third is
    // turned away with 503 UO, as Envoy turns it away.
    let three = concurrent(&bed, 3, 20)?;
    let refused = three.status(503);
    let share = refused as f64 / three.requests as f64;
    println!(
        "circuit breaking, 3 callers x 20: {refused} of 60 refused ({share:.0}%)",
        share = share * 100.0
    );
    ensure!(
        refused > 0 && three.status(200) + refused == 60 && overflowed()? == refused as f64,
        "three callers: {three:?}, {} counted UO\n{}",
        overflowed()?,
        bed.outputs()
    );
    Ok(())
}

#[test]
fn outlier_detection_ejects_a_failing_replica_then_brings_it_back() -> anyhow::Result<()> {
    // v2 answers 500 to everything (which Istio's default retries leave
    // alone); v1 is healthy.
    let bed = Bed::start_serving(|version| {
        let server = Server::new("reviews", version);
        match version {
            "v2" => server.fail_every(1, 500),
            _ => server,
        }
    })?;
    bed.apply(
        json!({
            "loadBalancer": { "simple": "ROUND_ROBIN" },
            "outlierDetection": {
                "consecutive5xxErrors": 1,
                "interval": "1s",
                "baseEjectionTime": "3s",
                "maxEjectionPercent": 100,
            },
        }),
        None,
    )?;
    // Its first failure ejects v2: one 500, then only v1 answers.
    let first = bed.load(HttpLoad::new(20), "client", PORT, "/")?;
    ensure!(
        first.status(500) == 1 && first.versions.get("reviews/v1") == Some(&19),
        "ejected after one failure: {first:?}\n{}",
        bed.outputs()
    );
    let ejected = bed.load(HttpLoad::new(20), "client", PORT, "/")?;
    ensure!(
        ejected.status(200) == 20,
        "no errors while it is ejected: {ejected:?}"
    );
    // After the base ejection time it is back, fails once, and is ejected
    // again (for twice as long).
    std::thread::sleep(Duration::from_millis(3500));
    let back = bed.load(HttpLoad::new(20), "client", PORT, "/")?;
    ensure!(
        back.status(500) == 1 && back.status(200) == 19,
        "back after 3 s, then ejected again: {back:?}"
    );
    Ok(())
}

/// Requests reviews v2 received as mirrored copies, from its log.
fn shadowed(bed: &Bed) -> usize {
    bed.servers[1]
        .output()
        .lines()
        .filter(|line| line.starts_with("request: ") && line.contains("-shadow:9080"))
        .count()
}

#[test]
fn istios_mirroring_task_copies_requests_to_v2_and_v1_answers() -> anyhow::Result<()> {
    // v2 is slow and failing, which must not show in what callers get.
    let bed = Bed::start_serving(|version| {
        let server = Server::new("reviews", version);
        match version {
            "v2" => server
                .log_requests()
                .fail_every(1, 500)
                .answer_delay(Duration::from_secs(1)),
            _ => server,
        }
    })?;
    let to_v1_mirroring = |mirror: Value| {
        let mut route = json!({ "route": [{ "destination": { "host": "reviews", "subset": "v1" }, "weight": 100 }] });
        for (field, value) in mirror.as_object().into_iter().flatten() {
            route[field] = value.clone();
        }
        Some(json!([route]))
    };
    // The task's VirtualService: all to v1, mirrored in full to v2.
    bed.apply(
        json!({}),
        to_v1_mirroring(json!({
            "mirror": { "host": "reviews", "subset": "v2" },
            "mirrorPercentage": { "value": 100.0 },
        })),
    )?;
    let started = std::time::Instant::now();
    let summary = hundred(&bed)?;
    let took = started.elapsed();
    ensure!(
        summary.status(200) == 100 && summary.versions.get("reviews/v1") == Some(&100),
        "v1 answers everything: {summary:?}"
    );
    // A copy waiting a second on v2 never held a request up (100 of them
    // one after another would take 100 s).
    ensure!(
        took < Duration::from_secs(20),
        "mirrors held requests up: {took:?}"
    );
    ambit_testbed::wait_for(
        "v2 receives the 100 copies",
        Duration::from_secs(10),
        || Ok(shadowed(&bed) == 100),
    )
    .with_context(|| format!("v2 received {}", shadowed(&bed)))?;

    // mirrors[] with a share: about half the requests are copied.
    bed.apply(
        json!({}),
        to_v1_mirroring(json!({
            "mirrors": [{ "destination": { "host": "reviews", "subset": "v2" }, "percentage": { "value": 50.0 } }],
        })),
    )?;
    let before = shadowed(&bed);
    let summary = bed.load(HttpLoad::new(400), "client", PORT, "/")?;
    ensure!(summary.status(200) == 400, "{summary:?}");
    std::thread::sleep(Duration::from_secs(2));
    let copied = shadowed(&bed) - before;
    ensure!(
        (160..=240).contains(&copied),
        "half of 400 requests copied: {copied}"
    );
    Ok(())
}
