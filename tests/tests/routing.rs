//! Istio's request matching and load balancing, end to end through the
//! waypoint: each field of `HTTPMatchRequest` and each load balancer of a
//! DestinationRule, asserted by which version of reviews answered.

mod reviews;

use std::time::Duration;

use ambit_testbed::testapp::{last_json, HttpLoad, HttpSummary, Server};
use ambit_testbed::wait_for;
use anyhow::{ensure, Context};
use reviews::{destination_rule, virtual_service, Bed, OTHER_PORT, PORT, REVIEWS_VIP};
use serde_json::{json, Value};

impl Bed {
    fn start() -> anyhow::Result<Self> {
        Self::start_with(Duration::ZERO)
    }

    /// Reviews v1 answers each request only after `v1_delay`.
    fn start_with(v1_delay: Duration) -> anyhow::Result<Self> {
        Self::start_serving(|version| {
            let delay = if version == "v1" {
                v1_delay
            } else {
                Duration::ZERO
            };
            Server::new("reviews", version).answer_delay(delay)
        })
    }

    /// A run of `load` from the pod `from` to reviews' `port` and `path`,
    /// every request answered 200.
    fn run(
        &self,
        load: HttpLoad,
        from: &str,
        port: u16,
        path: &str,
    ) -> anyhow::Result<HttpSummary> {
        let summary = self.load(load, from, port, path)?;
        ensure!(
            summary.status(200) == summary.requests,
            "{from} to {path}: {summary:?}\n{}",
            self.outputs()
        );
        Ok(summary)
    }

    /// The one version that answered all of `load` from `client` to `path`.
    fn version(&self, load: HttpLoad, path: &str) -> anyhow::Result<String> {
        self.version_from(load, "client", PORT, path)
    }

    fn version_from(
        &self,
        load: HttpLoad,
        from: &str,
        port: u16,
        path: &str,
    ) -> anyhow::Result<String> {
        let summary = self.run(load, from, port, path)?;
        let versions: Vec<&String> = summary.versions.keys().collect();
        match versions.as_slice() {
            [one] => Ok(one.trim_start_matches("reviews/").to_string()),
            _ => anyhow::bail!("several versions answered {from}: {summary:?}"),
        }
    }

    /// The versions that answered `count` requests from `client`, in
    /// order, each on a connection of its own.
    fn sequence(&self, count: usize) -> anyhow::Result<Vec<String>> {
        (0..count)
            .map(|_| self.version(HttpLoad::new(1), "/"))
            .collect()
    }
}

/// Routes: those whose match is `matched` go to v2, the rest to v1.
fn v2_when(matched: Value) -> Value {
    json!([
        { "match": matched, "route": [{ "destination": { "host": "reviews", "subset": "v2" } }] },
        { "route": [{ "destination": { "host": "reviews", "subset": "v1" } }] },
    ])
}

/// Five requests.
fn five() -> HttpLoad {
    HttpLoad::new(5)
}

#[test]
fn uri_matches_exactly_by_prefix_or_by_regex() -> anyhow::Result<()> {
    let bed = Bed::start()?;
    bed.apply(
        json!({}),
        Some(v2_when(json!([
            { "uri": { "exact": "/reviews/0" } },
            { "uri": { "prefix": "/ratings/" } },
            { "uri": { "regex": "/details/[0-9]+" } },
        ]))),
    )?;
    for (path, version) in [
        ("/reviews/0", "v2"),
        ("/reviews/0?user=1", "v2"),
        ("/reviews/01", "v1"),
        ("/ratings/7", "v2"),
        ("/ratings", "v1"),
        ("/details/42", "v2"),
        ("/details/42/x", "v1"),
    ] {
        assert_eq!(bed.version(five(), path)?, version, "{path}");
    }
    Ok(())
}

#[test]
fn ignore_uri_case_matches_the_path_in_any_case() -> anyhow::Result<()> {
    let bed = Bed::start()?;
    bed.apply(
        json!({}),
        Some(json!([
            { "match": [{ "uri": { "prefix": "/Reviews" }, "ignoreUriCase": true }],
              "route": [{ "destination": { "host": "reviews", "subset": "v2" } }] },
            { "match": [{ "uri": { "prefix": "/Ratings" } }],
              "route": [{ "destination": { "host": "reviews", "subset": "v2" } }] },
            { "route": [{ "destination": { "host": "reviews", "subset": "v1" } }] },
        ])),
    )?;
    assert_eq!(bed.version(five(), "/REVIEWS/1")?, "v2");
    assert_eq!(bed.version(five(), "/reviews/1")?, "v2");
    assert_eq!(bed.version(five(), "/ratings/1")?, "v1", "case counts");
    assert_eq!(bed.version(five(), "/Ratings/1")?, "v2");
    Ok(())
}

#[test]
fn scheme_matches_how_the_request_arrived() -> anyhow::Result<()> {
    let bed = Bed::start()?;
    bed.apply(
        json!({}),
        Some(json!([
            { "match": [{ "scheme": { "exact": "https" } }],
              "route": [{ "destination": { "host": "reviews", "subset": "v1" } }] },
            { "match": [{ "scheme": { "exact": "http" } }],
              "route": [{ "destination": { "host": "reviews", "subset": "v2" } }] },
            { "route": [{ "destination": { "host": "reviews", "subset": "v1" } }] },
        ])),
    )?;
    assert_eq!(bed.version(five(), "/")?, "v2");
    assert_eq!(bed.version(five().http2(true), "/")?, "v2");
    Ok(())
}

#[test]
fn method_matches_the_requests_method() -> anyhow::Result<()> {
    let bed = Bed::start()?;
    bed.apply(
        json!({}),
        Some(v2_when(json!([{ "method": { "exact": "POST" } }]))),
    )?;
    assert_eq!(bed.version(five().method("POST"), "/")?, "v2");
    assert_eq!(bed.version(five(), "/")?, "v1");
    assert_eq!(bed.version(five().method("PUT"), "/")?, "v1");
    Ok(())
}

#[test]
fn authority_matches_the_host_the_caller_named() -> anyhow::Result<()> {
    let bed = Bed::start()?;
    bed.apply(
        json!({}),
        Some(v2_when(
            json!([{ "authority": { "prefix": "reviews.default" } }]),
        )),
    )?;
    let named = |host: &str| five().header("host", host);
    assert_eq!(
        bed.version(named("reviews.default.svc.cluster.local:9080"), "/")?,
        "v2"
    );
    assert_eq!(bed.version(named("reviews:9080"), "/")?, "v1");
    assert_eq!(bed.version(five(), "/")?, "v1", "the VIP as host");
    Ok(())
}

#[test]
fn headers_match_by_value_or_by_presence() -> anyhow::Result<()> {
    let bed = Bed::start()?;
    bed.apply(
        json!({}),
        Some(v2_when(json!([
            { "headers": { "end-user": { "exact": "jason" } } },
            { "headers": { "x-canary": {} } },
        ]))),
    )?;
    assert_eq!(bed.version(five().header("end-user", "jason"), "/")?, "v2");
    assert_eq!(bed.version(five().header("end-user", "json"), "/")?, "v1");
    assert_eq!(bed.version(five().header("x-canary", "any"), "/")?, "v2");
    assert_eq!(bed.version(five(), "/")?, "v1");
    Ok(())
}

#[test]
fn without_headers_matches_requests_lacking_them() -> anyhow::Result<()> {
    let bed = Bed::start()?;
    bed.apply(
        json!({}),
        Some(v2_when(json!([
            { "withoutHeaders": { "end-user": { "exact": "jason" } } },
        ]))),
    )?;
    assert_eq!(bed.version(five(), "/")?, "v2");
    assert_eq!(bed.version(five().header("end-user", "mary"), "/")?, "v2");
    assert_eq!(bed.version(five().header("end-user", "jason"), "/")?, "v1");
    Ok(())
}

#[test]
fn query_params_match_the_query_string() -> anyhow::Result<()> {
    let bed = Bed::start()?;
    bed.apply(
        json!({}),
        Some(v2_when(json!([
            { "queryParams": { "version": { "exact": "2" } } },
            { "queryParams": { "canary": { "regex": "yes|true" } } },
        ]))),
    )?;
    assert_eq!(bed.version(five(), "/reviews?version=2")?, "v2");
    assert_eq!(bed.version(five(), "/reviews?a=1&version=2")?, "v2");
    assert_eq!(bed.version(five(), "/reviews?version=22")?, "v1");
    assert_eq!(bed.version(five(), "/reviews?canary=true")?, "v2");
    assert_eq!(bed.version(five(), "/reviews")?, "v1");
    Ok(())
}

#[test]
fn port_matches_the_service_port_addressed() -> anyhow::Result<()> {
    let bed = Bed::start()?;
    bed.apply(json!({}), Some(v2_when(json!([{ "port": OTHER_PORT }]))))?;
    assert_eq!(bed.version_from(five(), "client", OTHER_PORT, "/")?, "v2");
    assert_eq!(bed.version_from(five(), "client", PORT, "/")?, "v1");
    Ok(())
}

#[test]
fn source_labels_route_two_callers_differently() -> anyhow::Result<()> {
    let bed = Bed::start()?;
    bed.apply(
        json!({}),
        Some(v2_when(json!([{ "sourceLabels": { "app": "client-b" } }]))),
    )?;
    assert_eq!(bed.version_from(five(), "client-b", PORT, "/")?, "v2");
    assert_eq!(bed.version_from(five(), "client", PORT, "/")?, "v1");
    Ok(())
}

#[test]
fn source_namespace_routes_two_callers_differently() -> anyhow::Result<()> {
    let bed = Bed::start()?;
    bed.apply(
        json!({}),
        Some(v2_when(json!([{ "sourceNamespace": "other" }]))),
    )?;
    assert_eq!(bed.version_from(five(), "client-other", PORT, "/")?, "v2");
    assert_eq!(bed.version_from(five(), "client", PORT, "/")?, "v1");
    Ok(())
}

#[test]
fn gateways_keep_a_match_off_the_mesh_unless_it_names_mesh() -> anyhow::Result<()> {
    let bed = Bed::start()?;
    bed.apply(
        json!({}),
        Some(json!([
            { "match": [{ "gateways": ["default/ingress"] }],
              "route": [{ "destination": { "host": "reviews", "subset": "v1" } }] },
            { "match": [{ "gateways": ["mesh"], "uri": { "prefix": "/" } }],
              "route": [{ "destination": { "host": "reviews", "subset": "v2" } }] },
            { "route": [{ "destination": { "host": "reviews", "subset": "v1" } }] },
        ])),
    )?;
    assert_eq!(bed.version(five(), "/")?, "v2");
    Ok(())
}

#[test]
fn a_matchs_name_is_logged_with_its_routes() -> anyhow::Result<()> {
    let bed = Bed::start()?;
    bed.apply(
        json!({}),
        Some(json!([
            { "name": "canary",
              "match": [{ "name": "jason", "headers": { "end-user": { "exact": "jason" } } }],
              "route": [{ "destination": { "host": "reviews", "subset": "v2" } }] },
            { "route": [{ "destination": { "host": "reviews", "subset": "v1" } }] },
        ])),
    )?;
    assert_eq!(
        bed.version(five().header("end-user", "jason"), "/jason")?,
        "v2"
    );
    assert_eq!(bed.version(five(), "/anyone")?, "v1");
    // The waypoint writes its access lines out within a second.
    let logged = || {
        let log = bed.waypoint.output();
        let lines = |path: &str, route: &str| {
            log.lines()
                .filter(|line| line.contains(&format!("path={path} ")) && line.contains(route))
                .count()
        };
        (
            lines("/jason", r#"route="canary.jason""#),
            lines("/anyone", r#"route="-""#),
        )
    };
    wait_for("the access lines", Duration::from_secs(3), || {
        Ok(logged() == (5, 5))
    })
    .with_context(|| format!("access log:\n{}", bed.waypoint.output()))?;
    Ok(())
}

#[test]
fn a_virtual_service_in_error_is_refused_alone() -> anyhow::Result<()> {
    let bed = Bed::start()?;
    bed.apply(json!({}), None)?;
    let to = |subset: &str| json!([{ "route": [{ "destination": { "host": "reviews", "subset": subset } }] }]);
    // Sorted by name before `reviews`, so each would come first if used.
    let unreadable = virtual_service(
        "a-unreadable",
        json!([{ "match": [{ "uri": { "regex": "(unclosed" } }], "route": to("v1")[0]["route"] }]),
    );
    // Valid by Istio's schema, but not a header a proxy can send.
    let unusable = virtual_service(
        "b-unusable",
        json!([{ "headers": { "request": { "set": { "bad name": "x" } } }, "route": to("v1")[0]["route"] }]),
    );
    bed.apply_objects(vec![
        destination_rule(json!({})),
        unreadable,
        unusable,
        virtual_service("reviews", to("v2")),
    ])?;
    assert_eq!(bed.version(five(), "/")?, "v2");
    let dump = bed.waypoint.config_dump()?;
    assert_eq!(
        dump["routes"]["problems"],
        json!({ "VirtualService default/b-unusable": "spec.http[0].headers.request: \"bad name\" is not a header name" })
    );
    let log = bed.waypoint.output();
    ensure!(
        log.contains("a-unreadable") && log.contains("unclosed group"),
        "the unreadable VirtualService is logged:\n{log}"
    );
    Ok(())
}

#[test]
fn a_wildcard_host_routes_the_services_under_it_until_one_names_the_host() -> anyhow::Result<()> {
    let bed = Bed::start()?;
    let to = |subset: &str| json!([{ "route": [{ "destination": { "host": "reviews", "subset": subset } }] }]);
    let mut wildcard = virtual_service("everything-here", to("v2"));
    wildcard["spec"]["hosts"] = json!(["*.default.svc.cluster.local"]);
    bed.apply_objects(vec![destination_rule(json!({})), wildcard.clone()])?;
    assert_eq!(bed.version(five(), "/")?, "v2");
    // The VirtualService that names reviews wins over the wildcard.
    bed.apply_objects(vec![
        destination_rule(json!({})),
        wildcard,
        virtual_service("reviews", to("v1")),
    ])?;
    assert_eq!(bed.version(five(), "/")?, "v1");
    let dump = bed.waypoint.config_dump()?;
    assert_eq!(dump["services"][0]["virtualService"], "default/reviews");
    Ok(())
}

#[test]
fn a_delegated_route_takes_its_delegates_routes() -> anyhow::Result<()> {
    let bed = Bed::start()?;
    let to = |subset: &str| json!([{ "destination": { "host": "reviews", "subset": subset } }]);
    let root = virtual_service(
        "reviews",
        json!([
            { "name": "jason", "match": [{ "headers": { "end-user": { "exact": "jason" } } }],
              "delegate": { "name": "reviews-team" } },
            { "route": to("v1") },
        ]),
    );
    // The team's own rules, without hosts: within jason's requests, the
    // beta path goes to v2.
    let mut delegate = virtual_service(
        "reviews-team",
        json!([{ "match": [{ "uri": { "prefix": "/beta" } }], "route": to("v2") }]),
    );
    delegate["spec"]["hosts"] = json!([]);
    bed.apply_objects(vec![destination_rule(json!({})), root, delegate])?;
    let jason = || five().header("end-user", "jason");
    assert_eq!(bed.version(jason(), "/beta")?, "v2");
    assert_eq!(bed.version(jason(), "/")?, "v1");
    assert_eq!(bed.version(five(), "/beta")?, "v1");
    Ok(())
}

#[test]
fn a_pod_labelled_for_the_waypoint_is_reached_through_it_by_its_address() -> anyhow::Result<()> {
    let bed = Bed::start()?;
    let mut config = Bed::config(&bed.cluster, vec![destination_rule(json!({}))])?;
    for pod in config
        .pods
        .iter_mut()
        .filter(|pod| pod.name == "reviews-v1")
    {
        pod.labels
            .push(("istio.io/use-waypoint".into(), "waypoint".into()));
    }
    bed.waypoint.apply(&bed.cluster, &config)?;
    let v1 = bed.cluster.pod("reviews-v1")?;
    let client = bed.cluster.pod("client")?;
    let url = format!("http://{}:{PORT}/", v1.ip);
    // Requests for `path` that passed the waypoint, by its access lines.
    let passed = |path: &str| {
        let host = format!("host={}", v1.ip);
        let path = format!("path={path} ");
        let log = bed.waypoint.output();
        log.lines()
            .filter(|line| line.contains(&host) && line.contains(&path))
            .count()
    };
    // Once the client's agent has seen the label too, each request to the
    // pod's address passes the waypoint, which carries it to that pod.
    wait_for(
        "a request to the pod passing the waypoint",
        Duration::from_secs(10),
        || {
            HttpLoad::new(1).run(&bed.cluster, client.place(), &url)?;
            Ok(passed("/") > 0)
        },
    )
    .with_context(|| bed.outputs())?;
    let summary = five().run(&bed.cluster, client.place(), &format!("{url}five"))?;
    ensure!(summary.status(200) == 5, "{summary:?}\n{}", bed.outputs());
    assert_eq!(
        summary.versions.keys().collect::<Vec<_>>(),
        ["reviews/v1"],
        "answered by the pod asked for"
    );
    // Its access lines are written out within a second.
    wait_for(
        "each request passing the waypoint",
        Duration::from_secs(3),
        || Ok(passed("/five") == 5),
    )
    .with_context(|| bed.outputs())?;
    Ok(())
}

#[test]
fn h2_upgrade_policy_and_use_client_protocol_choose_how_the_waypoint_speaks_upstream(
) -> anyhow::Result<()> {
    let bed = Bed::start()?;
    // The protocols reviews was spoken to in, for a caller speaking HTTP/2
    // or HTTP/1.1.
    let protocols = |http2: bool| -> anyhow::Result<Vec<String>> {
        let load = HttpLoad::new(5).http2(http2);
        let summary = bed.run(load, "client", PORT, "/")?;
        Ok(summary.protocols.into_keys().collect())
    };
    bed.apply(json!({}), None)?;
    assert_eq!(protocols(false)?, ["HTTP/1.1"]);
    assert_eq!(
        protocols(true)?,
        ["HTTP/1.1"],
        "an http port is HTTP/1.1 upstream"
    );
    bed.apply(
        json!({ "connectionPool": { "http": { "h2UpgradePolicy": "UPGRADE" } } }),
        None,
    )?;
    assert_eq!(protocols(false)?, ["HTTP/2.0"]);
    bed.apply(
        json!({ "connectionPool": { "http": { "useClientProtocol": true } } }),
        None,
    )?;
    assert_eq!(protocols(false)?, ["HTTP/1.1"]);
    assert_eq!(protocols(true)?, ["HTTP/2.0"]);
    Ok(())
}

#[test]
fn round_robin_takes_the_endpoints_in_turn() -> anyhow::Result<()> {
    let bed = Bed::start()?;
    bed.apply(json!({ "loadBalancer": { "simple": "ROUND_ROBIN" } }), None)?;
    let sequence = bed.sequence(12)?;
    ensure!(
        sequence.windows(2).all(|pair| pair[0] != pair[1]),
        "not in turn: {sequence:?}"
    );
    Ok(())
}

#[test]
fn random_spreads_without_a_pattern() -> anyhow::Result<()> {
    let bed = Bed::start()?;
    bed.apply(json!({ "loadBalancer": { "simple": "RANDOM" } }), None)?;
    let summary = bed.run(HttpLoad::new(400), "client", PORT, "/")?;
    let v1 = summary.versions.get("reviews/v1").copied().unwrap_or(0) as f64 / 400.0;
    ensure!((0.4..=0.6).contains(&v1), "{summary:?}");
    // Unlike round robin, not in turn (24 in turn by chance: 1 in 8 million).
    let sequence = bed.sequence(24)?;
    ensure!(
        sequence.windows(2).any(|pair| pair[0] == pair[1]),
        "in turn: {sequence:?}"
    );
    Ok(())
}

#[test]
fn passthrough_leaves_the_endpoint_to_chance_as_the_l4_path_would() -> anyhow::Result<()> {
    // Behind a waypoint the caller's original destination is the Service
    // address, whose endpoint the L4 path (ztunnel, kube-proxy) draws at
    // random: so does the waypoint.
    let bed = Bed::start()?;
    bed.apply(json!({ "loadBalancer": { "simple": "PASSTHROUGH" } }), None)?;
    let dump = bed.waypoint.config_dump()?;
    let backend = &dump["routes"]["ports"][format!("{REVIEWS_VIP}:{PORT}")]["http"][0]
        ["destinations"][0]["backend"];
    ensure!(backend["loadBalancer"] == "PASSTHROUGH", "{backend}");
    let summary = bed.run(HttpLoad::new(400), "client", PORT, "/")?;
    let v1 = summary.versions.get("reviews/v1").copied().unwrap_or(0) as f64 / 400.0;
    ensure!((0.4..=0.6).contains(&v1), "{summary:?}");
    Ok(())
}

/// Eight callers at once for `requests` requests each; the share v2 (the
/// fast replica) answered.
fn fast_share(bed: &Bed, requests: usize) -> anyhow::Result<f64> {
    let url = format!("http://{REVIEWS_VIP}:{PORT}/");
    let client = bed.cluster.pod("client")?;
    let mut runs = (0..8)
        .map(|_| HttpLoad::new(requests).spawn(&bed.cluster, client.place(), &url))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut fast = 0;
    for run in runs.iter_mut() {
        run.wait_exit(Duration::from_secs(60))?;
        let summary: HttpSummary = last_json(&run.output())?;
        ensure!(summary.status(200) == requests, "{summary:?}");
        fast += summary.versions.get("reviews/v2").copied().unwrap_or(0);
    }
    Ok(fast as f64 / (8 * requests) as f64)
}

#[test]
fn least_request_spares_the_slow_replica_and_round_robin_does_not() -> anyhow::Result<()> {
    let bed = Bed::start_with(Duration::from_millis(100))?;
    bed.apply(
        json!({ "loadBalancer": { "simple": "LEAST_REQUEST" } }),
        None,
    )?;
    let least = fast_share(&bed, 40)?;
    bed.apply(json!({ "loadBalancer": { "simple": "ROUND_ROBIN" } }), None)?;
    let turns = fast_share(&bed, 40)?;
    // Two draws, as Envoy makes them, are the same endpoint half the
    // time, so the slow one still takes a quarter.
    ensure!(
        least >= 0.68 && turns == 0.5,
        "the fast replica's share: {least:.2} with least request, {turns:.2} in turn"
    );
    Ok(())
}

/// Whether each of `keys` always got one version, and the versions seen.
fn stickiness(
    bed: &Bed,
    keys: &[String],
    load: impl Fn(&str) -> (HttpLoad, String),
) -> anyhow::Result<Vec<String>> {
    keys.iter()
        .map(|key| {
            let (load, path) = load(key);
            bed.version(load, &path)
                .with_context(|| format!("the key {key}"))
        })
        .collect()
}

fn both_versions(seen: &[String]) -> anyhow::Result<()> {
    ensure!(
        seen.iter().any(|v| v == "v1") && seen.iter().any(|v| v == "v2"),
        "the keys all went to one version: {seen:?}"
    );
    Ok(())
}

#[test]
fn consistent_hash_by_header_over_maglev_keeps_each_user_on_one_replica() -> anyhow::Result<()> {
    let bed = Bed::start()?;
    bed.apply(
        json!({ "loadBalancer": { "consistentHash": { "httpHeaderName": "x-user", "maglev": { "tableSize": 65537 } } } }),
        None,
    )?;
    let users: Vec<String> = (0..16).map(|n| format!("user-{n}")).collect();
    let seen = stickiness(&bed, &users, |user| {
        (HttpLoad::new(8).header("x-user", user), "/".into())
    })?;
    both_versions(&seen)?;
    // The same again: each user lands where it did.
    let again = stickiness(&bed, &users, |user| {
        (HttpLoad::new(2).header("x-user", user), "/".into())
    })?;
    assert_eq!(seen, again);
    Ok(())
}

#[test]
fn consistent_hash_by_query_parameter_over_a_ring_keeps_each_key_on_one_replica(
) -> anyhow::Result<()> {
    let bed = Bed::start()?;
    bed.apply(
        json!({ "loadBalancer": { "consistentHash": { "httpQueryParameterName": "session", "ringHash": { "minimumRingSize": 1024 } } } }),
        None,
    )?;
    let sessions: Vec<String> = (0..16).map(|n| format!("s{n}")).collect();
    let seen = stickiness(&bed, &sessions, |session| {
        (HttpLoad::new(8), format!("/?session={session}"))
    })?;
    both_versions(&seen)
}

#[test]
fn consistent_hash_by_cookie_sets_one_and_keeps_to_it() -> anyhow::Result<()> {
    let bed = Bed::start()?;
    bed.apply(
        json!({ "loadBalancer": { "consistentHash": { "httpCookie": { "name": "affinity", "ttl": "60s" } } } }),
        None,
    )?;
    // Each client starts without the cookie, gets one, and keeps to the
    // replica it names.
    let clients: Vec<String> = (0..16).map(|n| n.to_string()).collect();
    let seen = stickiness(&bed, &clients, |_| (HttpLoad::new(8).cookies(), "/".into()))?;
    both_versions(&seen)
}

#[test]
fn consistent_hash_by_source_ip_keeps_each_caller_on_one_replica() -> anyhow::Result<()> {
    let bed = Bed::start()?;
    bed.apply(
        json!({ "loadBalancer": { "consistentHash": { "useSourceIp": true } } }),
        None,
    )?;
    for caller in ["client", "client-b", "client-other"] {
        bed.version_from(HttpLoad::new(8).reconnect(), caller, PORT, "/")?;
    }
    Ok(())
}
