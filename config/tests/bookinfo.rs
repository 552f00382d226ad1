//! The Bookinfo task manifests from Istio's documentation (request routing,
//! traffic shifting, fault injection, destination rules) read under every
//! version Istio serves, with the routes and subsets they describe.

use std::time::Duration;

use ambit_config::api::networking::{DestinationRuleSpec, HttpRoute, TlsMode, VirtualServiceSpec};
use ambit_config::document::{parse_manifests, Parsed, Resource, Severity};

const VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/bookinfo/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// The fixture, with the destination rules, under one API version; no problem.
fn parse(name: &str, version: &str) -> Parsed {
    let text = format!(
        "{}---\n{}",
        fixture("destination-rule-all.yaml"),
        fixture(name)
    )
    .replace(
        "networking.istio.io/v1\n",
        &format!("networking.istio.io/{version}\n"),
    );
    let parsed = parse_manifests(&text);
    assert_eq!(parsed.problems, vec![], "{name} as {version}");
    for resource in &parsed.resources {
        assert_eq!(
            resource.describe().0,
            format!("networking.istio.io/{version}")
        );
    }
    parsed
}

fn virtual_services(parsed: &Parsed) -> Vec<(String, &VirtualServiceSpec)> {
    parsed
        .resources
        .iter()
        .filter_map(|resource| match resource {
            Resource::VirtualService(o) => Some((o.metadata.name.clone(), &o.spec)),
            _ => None,
        })
        .collect()
}

/// `subset:weight` of each destination of a route.
fn targets(route: &HttpRoute) -> Vec<String> {
    route
        .route
        .iter()
        .map(|r| {
            format!(
                "{}:{}",
                r.destination.subset.as_deref().unwrap_or("-"),
                r.weight.unwrap_or(100)
            )
        })
        .collect()
}

#[test]
fn request_routing_all_to_v1() {
    for version in VERSIONS {
        let parsed = parse("routing-all-v1.yaml", version);
        let services = virtual_services(&parsed);
        let names: Vec<&str> = services.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["productpage", "reviews", "ratings", "details"]);
        for (name, spec) in services {
            assert_eq!(spec.hosts, std::slice::from_ref(&name));
            assert_eq!(spec.http.len(), 1);
            assert_eq!(spec.http[0].route[0].destination.host, name);
            assert_eq!(targets(&spec.http[0]), ["v1:100"]);
        }
    }
}

#[test]
fn reviews_v2_for_jason_by_header() {
    for version in VERSIONS {
        let parsed = parse("reviews-v2-for-jason.yaml", version);
        let spec = virtual_services(&parsed)[0].1;
        let jason = &spec.http[0].matches[0].headers["end-user"];
        assert_eq!(jason.exact.as_deref(), Some("jason"));
        assert_eq!(targets(&spec.http[0]), ["v2:100"]);
        assert!(
            spec.http[1].matches.is_empty(),
            "the second route catches the rest"
        );
        assert_eq!(targets(&spec.http[1]), ["v1:100"]);
    }
}

#[test]
fn weighted_shifts() {
    for version in VERSIONS {
        for (name, expected) in [
            ("reviews-50-v3.yaml", ["v1:50", "v3:50"]),
            ("reviews-90-10.yaml", ["v1:90", "v2:10"]),
        ] {
            let parsed = parse(name, version);
            assert_eq!(
                targets(&virtual_services(&parsed)[0].1.http[0]),
                expected,
                "{name}"
            );
        }
    }
}

#[test]
fn ratings_faults_for_jason() {
    for version in VERSIONS {
        let parsed = parse("ratings-delay-for-jason.yaml", version);
        let delay = virtual_services(&parsed)[0].1.http[0]
            .fault
            .clone()
            .and_then(|f| f.delay)
            .expect("a delay");
        assert_eq!(delay.fixed_delay.map(|d| d.0), Some(Duration::from_secs(7)));
        assert_eq!(delay.percentage.map(|p| p.value), Some(100.0));

        let parsed = parse("ratings-abort-for-jason.yaml", version);
        let routes = &virtual_services(&parsed)[0].1.http;
        let abort = routes[0]
            .fault
            .clone()
            .and_then(|f| f.abort)
            .expect("an abort");
        assert_eq!(abort.http_status, Some(500));
        assert_eq!(abort.percentage.map(|p| p.value), Some(100.0));
        assert!(routes[1].fault.is_none(), "others are not faulted");
    }
}

fn destination_rules(parsed: &Parsed) -> Vec<&DestinationRuleSpec> {
    parsed
        .resources
        .iter()
        .filter_map(|resource| match resource {
            Resource::DestinationRule(o) => Some(&o.spec),
            _ => None,
        })
        .collect()
}

#[test]
fn destination_rules_define_every_subset_with_and_without_mtls() {
    for version in VERSIONS {
        for (name, tls) in [
            ("destination-rule-all.yaml", None),
            ("destination-rule-all-mtls.yaml", Some(TlsMode::IstioMutual)),
        ] {
            let text = fixture(name).replace(
                "networking.istio.io/v1\n",
                &format!("networking.istio.io/{version}\n"),
            );
            let parsed = parse_manifests(&text);
            assert_eq!(parsed.problems, vec![], "{name} as {version}");
            let subsets: Vec<String> = destination_rules(&parsed)
                .iter()
                .map(|rule| {
                    assert_eq!(
                        rule.traffic_policy
                            .as_ref()
                            .and_then(|p| p.tls.as_ref())
                            .and_then(|t| t.mode),
                        tls,
                        "{name}"
                    );
                    let names: Vec<String> = rule
                        .subsets
                        .iter()
                        .map(|s| {
                            assert_eq!(
                                s.labels["version"], s.name,
                                "subset {} selects its version",
                                s.name
                            );
                            s.name.clone()
                        })
                        .collect();
                    format!("{}={}", rule.host, names.join(","))
                })
                .collect();
            assert_eq!(
                subsets,
                [
                    "productpage=v1",
                    "reviews=v1,v2,v3",
                    "ratings=v1,v2,v2-mysql,v2-mysql-vm",
                    "details=v1,v2"
                ],
                "{name}"
            );
        }
    }
}

#[test]
fn routes_to_undefined_subsets_are_reported() {
    // Without the destination rules, every subset reference is dangling.
    let parsed = parse_manifests(&fixture("reviews-90-10.yaml"));
    let found: Vec<String> = parsed.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        found,
        [
            "warning: VirtualService default/reviews: spec.http[0].route[0].destination.subset: subset \"v1\" of reviews.default.svc.cluster.local is not defined by any DestinationRule: traffic to it fails",
            "warning: VirtualService default/reviews: spec.http[0].route[1].destination.subset: subset \"v2\" of reviews.default.svc.cluster.local is not defined by any DestinationRule: traffic to it fails",
        ]
    );
    assert!(parsed
        .problems
        .iter()
        .all(|p| p.severity == Severity::Warning));
    assert_eq!(
        parsed.resources.len(),
        1,
        "the VirtualService still applies"
    );
}

#[test]
fn networking_mistakes_are_named_by_field_path() {
    let text = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken, namespace: shop}
spec:
  hosts: [cart]
  http:
  - match:
    - uri: {regex: "^/items/(?P<id>[0-9+$"}
      port: 70000
    route:
    - destination: {host: cart, port: {number: 8080}}
      weight: 60
    - destination: {host: cart-v2}
      weight: 30
    redirect: {uri: /elsewhere}
    fault: {abort: {httpStatus: 503, grpcStatus: UNAVAILABLE}}
    timeout: 10 seconds
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: cart, namespace: shop}
spec:
  host: cart
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN, consistentHash: {useSourceIp: true}}
    outlierDetection: {maxEjectionPercent: 150}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v1, labels: {version: v2}}
"#;
    let found: Vec<String> = parse_manifests(text)
        .problems
        .iter()
        .map(ToString::to_string)
        .collect();
    // A value that cannot be read stops that object's reading at the field.
    assert_eq!(found.len(), 4, "{found:#?}");
    assert!(
        found[0].contains("spec.http[0].timeout") && found[0].contains("not a duration"),
        "{found:#?}"
    );

    let fixed = text.replace("timeout: 10 seconds", "timeout: 10s");
    let found: Vec<String> = parse_manifests(&fixed)
        .problems
        .iter()
        .map(ToString::to_string)
        .collect();
    let expected = [
        "VirtualService shop/broken: spec.http[0]: set exactly one of route, redirect, directResponse and delegate (found route, redirect)",
        "VirtualService shop/broken: spec.http[0].match[0].uri.regex: invalid RE2 regular expression",
        "VirtualService shop/broken: spec.http[0].match[0].port: port 70000 is not a number from 1 to 65535",
        "VirtualService shop/broken: spec.http[0].route: weights add up to 90, not 100",
        "VirtualService shop/broken: spec.http[0].fault.abort: set exactly one of httpStatus, grpcStatus and http2Error",
        "DestinationRule shop/cart: spec.trafficPolicy.loadBalancer: simple and consistentHash are exclusive",
        "DestinationRule shop/cart: spec.trafficPolicy.outlierDetection.maxEjectionPercent: must be from 0 to 100",
        "DestinationRule shop/cart: spec.subsets[1].name: subset \"v1\" is defined twice",
    ];
    assert_eq!(found.len(), expected.len(), "{found:#?}");
    for (found, expected) in found.iter().zip(expected) {
        assert!(
            found.contains(expected),
            "{found}\n  should contain\n{expected}"
        );
    }
}

#[test]
fn the_gateway_and_service_entries_parse_under_every_version() {
    for version in VERSIONS {
        let parsed = parse("bookinfo-gateway.yaml", version);
        let Resource::Gateway(gateway) = &parsed.resources[4] else {
            panic!("the gateway follows the four destination rules");
        };
        assert_eq!(gateway.spec.selector["istio"], "ingressgateway");
        assert_eq!(
            (
                gateway.spec.servers[0].port.number,
                gateway.spec.servers[0].hosts.clone()
            ),
            (8080, vec!["*".to_string()])
        );
        let routes = &virtual_services(&parsed)[0].1.http[0];
        assert_eq!(routes.matches.len(), 5);
        assert_eq!(
            routes.route[0].destination.port.map(|p| p.number),
            Some(9080)
        );

        let text = fixture("../egress.yaml").replace(
            "networking.istio.io/v1\n",
            &format!("networking.istio.io/{version}\n"),
        );
        let parsed = parse_manifests(&text);
        assert_eq!(parsed.problems, vec![], "{version}");
        let entries: Vec<(String, usize)> = parsed
            .resources
            .iter()
            .filter_map(|r| match r {
                Resource::ServiceEntry(o) => {
                    Some((o.metadata.name.clone(), o.spec.endpoints.len()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("payments-api".to_string(), 0),
                ("legacy-db".to_string(), 1)
            ]
        );
    }
}

#[test]
fn service_entry_and_gateway_mistakes_are_named() {
    let text = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bad-entry}
spec:
  hosts: ["*.example.com"]
  addresses: [not-an-address]
  resolution: DNS
  ports:
  - {number: 443, name: https, protocol: QUIC}
  - {number: 8443, name: https}
  workloadSelector: {labels: {app: x}}
  endpoints: [{address: 10.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bad-dynamic}
spec:
  hosts: ["*.example.org"]
  resolution: DYNAMIC_DNS
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.0.2}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bad-gateway}
spec:
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: []
    tls: {mode: SIMPLE}
"#;
    let found: Vec<String> = parse_manifests(text)
        .problems
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        found,
        [
            "error: ServiceEntry default/bad-entry: spec.addresses[0]: \"not-an-address\" is not an IP address or CIDR block",
            "error: ServiceEntry default/bad-entry: spec.ports[0].protocol: unknown protocol \"QUIC\" (one of HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, HTTP_PROXY, MONGO, MYSQL, REDIS, TCP, TLS, UDP)",
            "error: ServiceEntry default/bad-entry: spec.ports[1].name: port name \"https\" is used twice",
            "error: ServiceEntry default/bad-entry: spec: endpoints and workloadSelector are exclusive",
            "error: ServiceEntry default/bad-dynamic: spec.resolution: DYNAMIC_DNS resolves the host each request names: it takes no endpoints nor workloadSelector",
            "error: Gateway default/bad-gateway: spec.servers[0].hosts: at least one host is required",
            "error: Gateway default/bad-gateway: spec.servers[0].tls: this mode needs credentialName, or serverCertificate and privateKey",
        ]
    );
}
