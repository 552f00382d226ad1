//! AuthorizationPolicy at the waypoint, end to end: L7 allow and deny by
//! path, method, host and header, for the Service a policy is attached to,
//! with a change applying to the next request.

mod reviews;

use std::time::Duration;

use ambit_testbed::testapp::{last_json, HttpLoad, HttpSummary, Server};
use anyhow::ensure;
use reviews::{destination_rule, virtual_service, Bed, PORT, REVIEWS_VIP};
use serde_json::{json, Value};

/// An AuthorizationPolicy attached to the reviews Service.
fn on_reviews(name: &str, action: &str, rules: Value) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": { "name": name, "namespace": "default" },
        "spec": {
            "targetRefs": [{ "kind": "Service", "group": "", "name": "reviews" }],
            "action": action, "rules": rules,
        },
    })
}

/// The status `load` to `path` from `client` got, when all got the same.
fn status(bed: &Bed, load: HttpLoad, path: &str) -> anyhow::Result<u16> {
    let summary = bed.load(load, "client", PORT, path)?;
    let statuses: Vec<&u16> = summary.statuses.keys().collect();
    match statuses[..] {
        [status] if summary.errors == 0 => Ok(*status),
        _ => anyhow::bail!("{path}: {summary:?}"),
    }
}

#[test]
fn the_waypoint_allows_and_denies_by_path_method_host_and_header() -> anyhow::Result<()> {
    let bed = Bed::start_serving(|version| Server::new("reviews", version))?;
    // Only /reviews/ has a route: the policy is enforced before routing,
    // as Envoy's RBAC filter runs before its router.
    let routes = json!([{
        "match": [{ "uri": { "prefix": "/reviews/" } }],
        "route": [{ "destination": { "host": "reviews", "subset": "v2" } }],
    }]);
    bed.apply_objects(vec![
        destination_rule(json!({})),
        virtual_service("reviews", routes),
        on_reviews(
            "readers",
            "ALLOW",
            json!([{ "to": [{ "operation": {
                "methods": ["GET"],
                "paths": ["/reviews/*", "/public/*"],
                "hosts": [format!("{REVIEWS_VIP}")],
            } }] }]),
        ),
        on_reviews(
            "no-blocked-users",
            "DENY",
            json!([{ "when": [{ "key": "request.headers[x-user]", "values": ["blocked-*"] }] }]),
        ),
        on_reviews(
            "no-admin",
            "DENY",
            json!([{ "to": [{ "operation": { "paths": ["/reviews/admin*"] } }] }]),
        ),
    ])?;
    let get = || HttpLoad::new(2);
    let cases: [(&str, HttpLoad, u16); 9] = [
        ("/reviews/1", get(), 200),
        // Allowed, but no route.
        ("/public/1", get(), 404),
        ("/reviews/1", get().method("POST"), 403),
        ("/ratings/1", get(), 403),
        ("/reviews/1", get().header("x-user", "blocked-mallory"), 403),
        ("/reviews/1", get().header("x-user", "jane"), 200),
        ("/reviews/admin", get(), 403),
        // Dot segments are resolved before the policy sees the path.
        ("/public/../reviews/admin", get(), 403),
        // Another host name than the policy allows.
        (
            "/reviews/1",
            get().header("host", "reviews.default.svc.cluster.local"),
            403,
        ),
    ];
    for (path, load, expected) in cases {
        let got = status(&bed, load.clone(), path)?;
        ensure!(
            got == expected,
            "{path} {load:?}: {got}, not {expected}\n{}",
            bed.outputs()
        );
    }
    // Denials are answered as Envoy's RBAC filter answers them.
    let denied = bed.load(
        HttpLoad::new(1).method("DELETE"),
        "client",
        PORT,
        "/reviews/1",
    )?;
    ensure!(denied.status(403) == 1, "{denied:?}");
    Ok(())
}

#[test]
fn a_policy_change_applies_to_the_next_request_on_an_open_connection() -> anyhow::Result<()> {
    let bed = Bed::start_serving(|version| Server::new("reviews", version))?;
    bed.apply(json!({}), None)?;
    // One connection, a request every 100 ms for six seconds.
    let client = bed.cluster.pod("client")?;
    let url = format!("http://{REVIEWS_VIP}:{PORT}/reviews/1");
    let mut run = HttpLoad::new(60)
        .interval(Duration::from_millis(100))
        .spawn(&bed.cluster, client.place(), &url)?;
    std::thread::sleep(Duration::from_secs(2));
    bed.apply_objects(vec![
        destination_rule(json!({})),
        on_reviews("closed", "DENY", json!([{}])),
    ])?;
    run.wait_exit(Duration::from_secs(30))?;
    let summary: HttpSummary = last_json(&run.output())?;
    ensure!(
        summary.status(200) >= 10 && summary.status(403) >= 10 && summary.errors == 0,
        "allowed, then denied on the same connection: {summary:?}"
    );
    Ok(())
}
