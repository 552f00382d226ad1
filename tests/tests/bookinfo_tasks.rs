//! Bookinfo played by the test app through the waypoint, its services
//! calling each other as Bookinfo's do, under Istio's own task YAML:
//! routing by the signed-in user, fault injection, request timeouts.

use std::time::{Duration, Instant};

use ambit_testbed::bookinfo;
use ambit_testbed::bookinfo::{failed, page, url, virtual_service, Bookinfo, PRODUCTPAGE_PATIENCE};
use ambit_testbed::testapp::{self, HttpLoad, HttpSummary};
use anyhow::ensure;
use serde_json::{json, Value};

#[test]
fn bookinfo_calls_down_its_chain_through_the_waypoint_with_the_users_routes() -> anyhow::Result<()>
{
    let bookinfo = Bookinfo::start()?;
    // Everything to v1: reviews v1 shows no stars, so it calls no ratings.
    assert_eq!(bookinfo.chains(HttpLoad::new(20))?, page("reviews/v1", 20));

    // Jason signs in: productpage passes `end-user` on, and the waypoint
    // routes its call to reviews by it.
    bookinfo.apply(bookinfo::manifest("reviews-v2-for-jason.yaml")?)?;
    assert_eq!(
        bookinfo.chains(HttpLoad::new(20).header("end-user", "jason"))?,
        page("reviews/v2 -> [ratings/v1]", 20)
    );
    assert_eq!(
        bookinfo.chains(HttpLoad::new(20).header("end-user", "someone"))?,
        page("reviews/v1", 20)
    );
    Ok(())
}

/// Istio's fault-injection task: ratings delayed 7 s for jason, then
/// aborted with 500 for him; everyone else unharmed.
#[test]
fn istios_fault_injection_task_delays_then_aborts_ratings_for_jason() -> anyhow::Result<()> {
    let bookinfo = Bookinfo::start()?;
    let jason = || HttpLoad::new(2).header("end-user", "jason");
    let routes = |task: &str| -> anyhow::Result<Vec<Value>> {
        // As the task applies them over `routing-all-v1`, whose reviews and
        // ratings routes these replace.
        Ok([
            bookinfo::manifest("reviews-v2-for-jason.yaml")?,
            bookinfo::manifest(task)?,
        ]
        .concat())
    };

    // The delay outlasts productpage's patience with reviews: the page
    // comes without reviews, after that patience, as the task shows.
    bookinfo.apply(routes("ratings-delay-for-jason.yaml")?)?;
    let started = Instant::now();
    let reviews_gone = failed(
        "reviews",
        "/reviews/0",
        &format!("no answer within {PRODUCTPAGE_PATIENCE:?}"),
    )?;
    assert_eq!(bookinfo.chains(jason())?, page(&reviews_gone, 2));
    ensure!(
        started.elapsed() >= PRODUCTPAGE_PATIENCE * 2,
        "answered before productpage gave up"
    );
    assert_eq!(
        bookinfo.chains(HttpLoad::new(5).header("end-user", "someone"))?,
        page("reviews/v1", 5)
    );

    // The abort: reviews v2 answers, without its ratings.
    bookinfo.apply(routes("ratings-abort-for-jason.yaml")?)?;
    let before = bookinfo.requests_flagged("ratings", "FI")?;
    let ratings_down = failed("ratings", "/ratings/0", "500 Internal Server Error")?;
    assert_eq!(
        bookinfo.chains(HttpLoad::new(10).header("end-user", "jason"))?,
        page(&format!("reviews/v2 -> [{ratings_down}]"), 10)
    );
    assert_eq!(bookinfo.requests_flagged("ratings", "FI")? - before, 10.0);
    Ok(())
}

/// Istio's request-timeouts task: ratings delayed 2 s, reviews (v2) given
/// half a second: the page comes without reviews, in about that time.
#[test]
fn istios_request_timeouts_task_cuts_reviews_off_after_half_a_second() -> anyhow::Result<()> {
    let bookinfo = Bookinfo::start()?;
    let ratings_delayed = virtual_service(
        "ratings",
        json!([{
            "fault": { "delay": { "percentage": { "value": 100 }, "fixedDelay": "2s" } },
            "route": [{ "destination": { "host": "ratings", "subset": "v1" } }],
        }]),
    );
    let reviews_v2 = |timeout: Option<&str>| {
        let mut route =
            json!({ "route": [{ "destination": { "host": "reviews", "subset": "v2" } }] });
        if let Some(timeout) = timeout {
            route["timeout"] = json!(timeout);
        }
        virtual_service("reviews", json!([route]))
    };

    // Without a timeout, reviews waits the 2 s for its ratings.
    bookinfo.apply(vec![reviews_v2(None), ratings_delayed.clone()])?;
    let started = Instant::now();
    assert_eq!(
        bookinfo.chains(HttpLoad::new(1))?,
        page("reviews/v2 -> [ratings/v1]", 1)
    );
    ensure!(started.elapsed() >= Duration::from_secs(2), "no delay");

    // With 0.5 s, the waypoint answers productpage 504 `UT` in its stead.
    bookinfo.apply(vec![reviews_v2(Some("0.5s")), ratings_delayed])?;
    let before = bookinfo.requests_flagged("reviews", "UT")?;
    let started = Instant::now();
    let timed_out = failed("reviews", "/reviews/0", "504 Gateway Timeout")?;
    assert_eq!(bookinfo.chains(HttpLoad::new(4))?, page(&timed_out, 4));
    let each = started.elapsed() / 4;
    ensure!(
        (Duration::from_millis(500)..Duration::from_millis(1500)).contains(&each),
        "{each:?} a page"
    );
    assert_eq!(bookinfo.requests_flagged("reviews", "UT")? - before, 4.0);
    Ok(())
}

/// An abort for 30% of requests and a delay for 20%, each within three
/// points over 5,000 requests (4.6 and 5.3 standard deviations of the
/// binomial, so the check fails a fair split once in a hundred thousand
/// runs or fewer), counted by their flags.
#[test]
fn faults_hit_their_percentage_of_requests() -> anyhow::Result<()> {
    const REQUESTS: usize = 5000;
    let bookinfo = Bookinfo::start()?;
    bookinfo.apply(vec![virtual_service(
        "details",
        json!([{
            "fault": {
                "abort": { "percentage": { "value": 30 }, "httpStatus": 503 },
                "delay": { "percentage": { "value": 20 }, "fixedDelay": "1ms" },
            },
            "route": [{ "destination": { "host": "details" } }],
        }]),
    )])?;
    let flagged = |flags: &[&str]| -> anyhow::Result<f64> {
        flags
            .iter()
            .map(|flags| bookinfo.requests_flagged("details", flags))
            .sum()
    };
    let before = (flagged(&["FI", "DI,FI"])?, flagged(&["DI", "DI,FI"])?);
    let summary = bookinfo.run(HttpLoad::new(REQUESTS), "details", "/details/0")?;
    let aborted = summary.status(503);
    ensure!(
        aborted + summary.status(200) == REQUESTS
            && (0.27..=0.33).contains(&(aborted as f64 / REQUESTS as f64)),
        "{summary:?}"
    );
    let after = (flagged(&["FI", "DI,FI"])?, flagged(&["DI", "DI,FI"])?);
    assert_eq!(after.0 - before.0, aborted as f64, "each abort flagged FI");
    let delayed = (after.1 - before.1) / REQUESTS as f64;
    ensure!((0.17..=0.23).contains(&delayed), "delayed {delayed}");
    Ok(())
}

/// The seeds' chaos case: an abort for the calls from one caller, chosen
/// by `sourceLabels`; the other caller is unharmed.
#[test]
fn a_source_labels_abort_hits_only_the_matching_caller() -> anyhow::Result<()> {
    let bookinfo = Bookinfo::start()?;
    bookinfo.apply(vec![virtual_service(
        "details",
        json!([
            {
                "match": [{ "sourceLabels": { "app": "client" } }],
                "fault": { "abort": { "percentage": { "value": 100 }, "httpStatus": 503 } },
                "route": [{ "destination": { "host": "details" } }],
            },
            { "route": [{ "destination": { "host": "details" } }] },
        ]),
    )])?;
    let from = |pod: &str| -> anyhow::Result<HttpSummary> {
        let place = bookinfo.cluster.pod(pod)?.place();
        HttpLoad::new(20).run(&bookinfo.cluster, place, &url("details", "/details/0")?)
    };
    assert_eq!(from("client")?.status(503), 20);
    assert_eq!(from("client-b")?.status(200), 20);
    Ok(())
}

/// A route may answer by itself, redirect, rewrite what the upstream is
/// asked, and edit headers both ways.
#[test]
fn a_route_answers_redirects_rewrites_and_edits_headers() -> anyhow::Result<()> {
    let bookinfo = Bookinfo::start()?;
    let to_details = json!([{ "destination": { "host": "details" } }]);
    let productpage_as_jason = virtual_service(
        "productpage",
        json!([{
            "headers": { "request": { "set": { "end-user": "jason" } } },
            "route": [{ "destination": { "host": "productpage" } }],
        }]),
    );
    let routes = [
        bookinfo::manifest("reviews-v2-for-jason.yaml")?,
        vec![
            productpage_as_jason,
            virtual_service(
                "details",
                json!([
                { "match": [{ "uri": { "exact": "/resting" } }],
                  "directResponse": { "status": 503, "body": { "string": "resting" } } },
                { "match": [{ "uri": { "prefix": "/old/" } }],
                  "redirect": { "uri": "/details/0", "redirectCode": 302 } },
                { "match": [{ "uri": { "prefix": "/v2/" } }],
                  "rewrite": { "uri": "/details/" }, "route": to_details },
                { "match": [{ "uri": { "regex": "/item/[0-9]+/info" } }],
                  "rewrite": { "uriRegexRewrite": { "match": "^/item/([0-9]+)/info$", "rewrite": "/details/\\1" } },
                  "route": to_details },
                { "match": [{ "uri": { "prefix": "/moved/" } }],
                  "redirect": { "prefixRewrite": "/details/", "authority": "details.example", "derivePort": "FROM_PROTOCOL_DEFAULT" } },
                // The destination's header edits, then the route's.
                { "route": [{ "destination": { "host": "details" },
                              "headers": { "response": { "set": { "x-served-by": "details", "x-layer": "destination" } } } }],
                  "headers": { "response": { "set": { "x-layer": "route" }, "remove": ["x-served-by-nobody"] } } },
            ])),
        ],
    ]
    .concat();
    bookinfo.apply(routes)?;

    let run = |path: &str| bookinfo.run(HttpLoad::new(3), "details", path);
    let direct = run("/resting")?;
    assert_eq!(
        (direct.status(503), direct.versions.get("unknown")),
        (3, Some(&3))
    );
    assert_eq!(run("/old/page")?.status(302), 3);
    let moved = bookinfo.run(
        HttpLoad::new(1).show_header("location"),
        "details",
        "/moved/7?q=1",
    )?;
    assert_eq!(
        moved.headers.keys().collect::<Vec<_>>(),
        ["location: http://details.example/details/7?q=1"],
        "prefixRewrite replaces what the match matched"
    );
    let edited = bookinfo.run(
        HttpLoad::new(2)
            .show_header("x-served-by")
            .show_header("x-layer"),
        "details",
        "/details/0",
    )?;
    assert_eq!(
        edited.headers.keys().collect::<Vec<_>>(),
        ["x-layer: route", "x-served-by: details"],
        "{edited:?}"
    );
    let rewritten = run("/v2/7?q=1")?;
    assert_eq!(
        rewritten.paths.keys().collect::<Vec<_>>(),
        ["/details/7?q=1"]
    );
    let by_regex = run("/item/42/info")?;
    assert_eq!(by_regex.paths.keys().collect::<Vec<_>>(), ["/details/42"]);

    // The mesh signs everyone in as jason on the way to productpage, which
    // passes it on: reviews answers as it does for him.
    assert_eq!(
        bookinfo.chains(HttpLoad::new(5))?,
        page("reviews/v2 -> [ratings/v1]", 5)
    );
    Ok(())
}

/// A gRPC abort answers as a gRPC server that fails at once: 200, with the
/// status in the headers (trailers-only).
#[test]
fn a_grpc_abort_answers_trailers_only_with_its_status() -> anyhow::Result<()> {
    let bookinfo = Bookinfo::start()?;
    bookinfo.apply(vec![virtual_service(
        "details",
        json!([{
            "fault": { "abort": { "percentage": { "value": 100 }, "grpcStatus": "UNAVAILABLE" } },
            "route": [{ "destination": { "host": "details" } }],
        }]),
    )])?;
    let client = bookinfo.cluster.pod("client")?;
    let answer = testapp::trailers(
        &bookinfo.cluster,
        client.place(),
        &url("details", "/trailers")?,
        "hello",
    )?;
    assert_eq!(
        answer,
        json!({
            "status": 200, "body": "", "trailers": {},
            "headers": { "grpc-status": "14", "grpc-message": "fault filter abort" },
        })
    );
    assert_eq!(bookinfo.requests_flagged("details", "FI")?, 1.0);
    Ok(())
}

#[test]
fn a_cors_policy_answers_preflights_and_marks_answers() -> anyhow::Result<()> {
    let bookinfo = Bookinfo::start()?;
    let cors = |unmatched: &str| {
        json!({
            "allowOrigins": [{ "exact": "https://shop.example" }, { "regex": "https://.*\\.shop\\.example" }],
            "allowMethods": ["GET", "PUT"],
            "allowHeaders": ["x-user"],
            "exposeHeaders": ["x-trace"],
            "maxAge": "1h",
            "allowCredentials": true,
            "unmatchedPreflights": unmatched,
        })
    };
    let to_details = json!([{ "destination": { "host": "details" } }]);
    bookinfo.apply(vec![virtual_service(
        "details",
        json!([
            { "match": [{ "uri": { "prefix": "/strict/" } }],
              "corsPolicy": cors("IGNORE"), "route": to_details },
            { "corsPolicy": cors("FORWARD"), "route": to_details },
        ]),
    )])?;
    let shown = [
        "access-control-allow-origin",
        "access-control-allow-methods",
        "access-control-allow-headers",
        "access-control-max-age",
        "access-control-allow-credentials",
        "access-control-expose-headers",
    ];
    let request = |method: &str, origin: &str, preflight: bool| {
        let mut load = HttpLoad::new(2).method(method).header("origin", origin);
        if preflight {
            load = load.header("access-control-request-method", "PUT");
        }
        shown.iter().fold(load, |load, name| load.show_header(name))
    };
    let seen = |summary: &HttpSummary| -> Vec<String> { summary.headers.keys().cloned().collect() };

    // A preflight from an allowed origin: the waypoint answers it.
    let preflight = bookinfo.run(
        request("OPTIONS", "https://app.shop.example", true),
        "details",
        "/details/0",
    )?;
    assert_eq!(
        (preflight.status(200), preflight.versions.get("unknown")),
        (2, Some(&2))
    );
    assert_eq!(
        seen(&preflight),
        [
            "access-control-allow-credentials: true",
            "access-control-allow-headers: x-user",
            "access-control-allow-methods: GET,PUT",
            "access-control-allow-origin: https://app.shop.example",
            "access-control-max-age: 3600",
        ]
    );
    // The request itself goes to details; its answer is marked.
    let actual = bookinfo.run(
        request("GET", "https://shop.example", false),
        "details",
        "/details/0",
    )?;
    assert_eq!(actual.versions.get("details/v1"), Some(&2));
    assert_eq!(
        seen(&actual),
        [
            "access-control-allow-credentials: true",
            "access-control-allow-origin: https://shop.example",
            "access-control-expose-headers: x-trace",
        ]
    );
    // Another origin is left alone: its preflight goes on to details
    // (FORWARD), or is answered without CORS headers (IGNORE).
    let stranger = "https://evil.example";
    let forwarded = bookinfo.run(request("OPTIONS", stranger, true), "details", "/details/0")?;
    assert_eq!(
        (forwarded.versions.get("details/v1"), seen(&forwarded).len()),
        (Some(&2), 0)
    );
    let ignored = bookinfo.run(request("OPTIONS", stranger, true), "details", "/strict/0")?;
    assert_eq!(
        (
            ignored.status(200),
            ignored.versions.get("unknown"),
            seen(&ignored).len()
        ),
        (2, Some(&2), 0)
    );
    let plain = bookinfo.run(request("GET", stranger, false), "details", "/details/0")?;
    assert_eq!(
        (plain.versions.get("details/v1"), seen(&plain).len()),
        (Some(&2), 0)
    );
    Ok(())
}
