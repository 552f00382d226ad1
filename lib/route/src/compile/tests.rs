use std::net::{IpAddr, Ipv4Addr};

use ambit_config::document::parse_manifests;
use ambit_config::model::{Key, Labels};
use http::Request;

use super::*;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);

/// The tables of the waypoint `bookinfo/waypoint` over [`mesh`].
fn tables(extra: &str) -> RouteTables {
    compile(&mesh(extra), &waypoint())
}

fn waypoint() -> WaypointRef {
    WaypointRef(Key::new("bookinfo", "waypoint"))
}

/// Bookinfo's reviews (three versions) and ratings in `bookinfo`, bound to
/// the waypoint `waypoint`, with Istio's subsets, and `extra` on top.
pub(super) fn mesh(extra: &str) -> Mesh {
    let pod = |name: &str, app: &str, version: &str, ip: &str| {
        format!(
            "{{apiVersion: v1, kind: Pod, metadata: {{name: {name}, namespace: bookinfo, labels: {{app: {app}, version: {version}}}}}, \
              spec: {{nodeName: node-0}}, status: {{podIP: {ip}}}}}\n---\n"
        )
    };
    let manifests = [
        "{apiVersion: v1, kind: Namespace, metadata: {name: bookinfo, labels: {istio.io/use-waypoint: waypoint}}}\n---\n".to_string(),
        "{apiVersion: v1, kind: Namespace, metadata: {name: other}}\n---\n".to_string(),
        pod("reviews-v1", "reviews", "v1", "10.244.0.11"),
        pod("reviews-v2", "reviews", "v2", "10.244.0.12"),
        pod("reviews-v3", "reviews", "v3", "10.244.0.13"),
        pod("ratings-v1", "ratings", "v1", "10.244.0.21"),
        "{apiVersion: v1, kind: Service, metadata: {name: reviews, namespace: bookinfo}, \
          spec: {clusterIP: 10.96.0.20, ports: [{name: http, port: 9080, targetPort: 9080}, {name: tcp-admin, port: 7000}]}}\n---\n".to_string(),
        "{apiVersion: v1, kind: Service, metadata: {name: ratings, namespace: bookinfo}, \
          spec: {clusterIP: 10.96.0.21, ports: [{name: http, port: 9080}]}}\n---\n".to_string(),
        "{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: reviews-1, namespace: bookinfo, labels: {kubernetes.io/service-name: reviews}}, addressType: IPv4, \
          endpoints: [{addresses: [10.244.0.11]}, {addresses: [10.244.0.12]}, {addresses: [10.244.0.13]}], ports: [{name: http, port: 9080}]}\n---\n".to_string(),
        "{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: ratings-1, namespace: bookinfo, labels: {kubernetes.io/service-name: ratings}}, addressType: IPv4, \
          endpoints: [{addresses: [10.244.0.21]}], ports: [{name: http, port: 9080}]}\n---\n".to_string(),
        "{apiVersion: networking.istio.io/v1, kind: DestinationRule, metadata: {name: reviews, namespace: bookinfo}, \
          spec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}, {name: v3, labels: {version: v3}, \
          trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}]}}\n---\n".to_string(),
        extra.to_string(),
    ]
    .concat();
    let parsed = parse_manifests(&manifests);
    let errors = parsed
        .problems
        .iter()
        .filter(|p| p.severity == ambit_config::document::Severity::Error);
    assert_eq!(errors.count(), 0, "{:?}", parsed.problems);
    Mesh::from_resources(parsed.resources)
}

fn reviews(extra: &str) -> Arc<PortTable> {
    tables(extra).ports[&SocketAddr::from((VIP, 9080))].clone()
}

fn virtual_service(http: &str) -> String {
    format!(
        "{{apiVersion: networking.istio.io/v1, kind: VirtualService, metadata: {{name: reviews, namespace: bookinfo}}, \
          spec: {{hosts: [reviews], http: {http}}}}}\n"
    )
}

/// The subset (or `-`) of the first destination the request is routed to,
/// or `404` when no route matches.
fn subset(table: &PortTable, request: Request<()>, caller: Caller<'_>) -> String {
    let (parts, ()) = request.into_parts();
    match table.route(&parts, "http", caller) {
        Some(routed) => routed.route.destinations[0]
            .backend
            .subset
            .clone()
            .unwrap_or_else(|| "-".into()),
        None => "404".into(),
    }
}

/// A request to reviews written `[METHOD] PATH [name:value]…`.
fn request_of(text: &str) -> Request<()> {
    let mut words = text.split(' ').peekable();
    let method = match words.peek() {
        Some(word) if !word.starts_with('/') => words.next().unwrap_or_default(),
        _ => "GET",
    };
    let mut request = Request::builder()
        .method(method)
        .uri(words.next().unwrap_or("/"))
        .header("host", "reviews:9080");
    for header in words {
        let (name, value) = header.split_once(':').unwrap();
        request = request.header(name, value);
    }
    request.body(()).unwrap()
}

#[test]
fn without_a_virtual_service_a_port_goes_to_its_service() {
    let tables = tables("");
    let table = &tables.ports[&SocketAddr::from((VIP, 9080))];
    assert_eq!(table.protocol, Protocol::Http);
    let route = table
        .route(&request_of("/").into_parts().0, "http", Caller::default())
        .unwrap();
    let backend = &route.route.destinations[0].backend;
    assert_eq!(
        backend.cluster,
        "outbound|9080||reviews.bookinfo.svc.cluster.local"
    );
    assert_eq!(backend.endpoints.len(), 3);
    assert_eq!(backend.load_balancer, LoadBalancer::LeastRequest);
    let admin = &tables.ports[&SocketAddr::from((VIP, 7000))];
    assert_eq!(admin.protocol, Protocol::Tcp);
    assert_eq!(admin.tcp[0].destinations[0].backend.port, 7000);
    // Ratings has no waypoint label of its own but its namespace's: bound too.
    assert!(tables
        .ports
        .contains_key(&SocketAddr::from(([10, 96, 0, 21], 9080))));
}

#[test]
fn subsets_select_their_pods_and_carry_their_load_balancer() {
    let table = reviews(&virtual_service(
        "[{route: [{destination: {host: reviews, subset: v2}, weight: 50}, {destination: {host: reviews, subset: v3}, weight: 50}]}]",
    ));
    let destinations = &table.http[0].destinations;
    let endpoints: Vec<_> = destinations
        .iter()
        .map(|d| {
            (
                d.weight,
                d.backend.endpoints.clone(),
                d.backend.load_balancer.clone(),
            )
        })
        .collect();
    let at = |ip: [u8; 4]| vec![SocketAddr::from((ip, 9080))];
    assert_eq!(
        endpoints,
        [
            (50, at([10, 244, 0, 12]), LoadBalancer::LeastRequest),
            (50, at([10, 244, 0, 13]), LoadBalancer::RoundRobin),
        ]
    );
    // A subset no rule defines has no endpoint (503 on use).
    let table = reviews(&virtual_service(
        "[{route: [{destination: {host: reviews, subset: v9}}]}]",
    ));
    assert!(table.http[0].destinations[0].backend.endpoints.is_empty());
}

/// How ratings' one backend is balanced and spoken to under a
/// DestinationRule with `traffic_policy`.
fn ratings_under(traffic_policy: &str) -> (LoadBalancer, Upstream) {
    let rule = format!(
        "{{apiVersion: networking.istio.io/v1, kind: DestinationRule, metadata: {{name: ratings, namespace: bookinfo}}, \
          spec: {{host: ratings, trafficPolicy: {traffic_policy}}}}}\n"
    );
    let tables = tables(&rule);
    let backend =
        &tables.ports[&SocketAddr::from(([10, 96, 0, 21], 9080))].http[0].destinations[0].backend;
    (backend.load_balancer.clone(), backend.upstream)
}

#[test]
fn a_ports_traffic_policy_is_merged_as_istio_merges_it() {
    let upgrade = "connectionPool: {http: {h2UpgradePolicy: UPGRADE}}";
    assert_eq!(
        ratings_under("{}"),
        (LoadBalancer::LeastRequest, Upstream::Http1)
    );
    assert_eq!(
        ratings_under(&format!("{{loadBalancer: {{simple: RANDOM}}, {upgrade}}}")),
        (LoadBalancer::Random, Upstream::Http2)
    );
    // Settings for the port replace the rule's whole: what they leave out
    // is Istio's default, not the rule's.
    assert_eq!(
        ratings_under(&format!(
            "{{loadBalancer: {{simple: RANDOM}}, {upgrade}, \
              portLevelSettings: [{{port: {{number: 9080}}, loadBalancer: {{simple: ROUND_ROBIN}}}}]}}"
        )),
        (LoadBalancer::RoundRobin, Upstream::Http1)
    );
    // Settings for another port change nothing here.
    assert_eq!(
        ratings_under(&format!(
            "{{{upgrade}, portLevelSettings: [{{port: {{number: 7000}}, loadBalancer: {{simple: RANDOM}}}}]}}"
        )),
        (LoadBalancer::LeastRequest, Upstream::Http2)
    );
    assert_eq!(
        ratings_under(
            "{connectionPool: {http: {useClientProtocol: true, h2UpgradePolicy: UPGRADE}}}"
        ),
        (LoadBalancer::LeastRequest, Upstream::AsClient)
    );
    assert_eq!(
        ratings_under("{connectionPool: {http: {h2UpgradePolicy: DO_NOT_UPGRADE}}}").1,
        Upstream::Http1
    );
    assert!(Upstream::AsClient.http2_for(http::Version::HTTP_2));
    assert!(!Upstream::AsClient.http2_for(http::Version::HTTP_11));
}

#[test]
fn each_match_field_decides_as_istio_says() {
    let labels: Labels = [("app".to_string(), "productpage".to_string())].into();
    let productpage = Caller {
        namespace: Some("bookinfo"),
        labels: Some(&labels),
    };
    let stranger = Caller {
        namespace: Some("other"),
        labels: None,
    };
    let (s, p) = (stranger, productpage);
    // (match, request as `[METHOD] PATH [header:value]…`, caller, subset)
    #[rustfmt::skip]
    let cases = [
        ("{uri: {exact: /reviews/0}}", "/reviews/0?x=1", s, "v1"),
        ("{uri: {exact: /reviews/0}}", "/reviews/01", s, "v2"),
        ("{uri: {prefix: /rev}}", "/reviews/1", s, "v1"),
        ("{uri: {regex: '/reviews/[0-9]+'}}", "/reviews/12", s, "v1"),
        ("{uri: {regex: '/reviews/[0-9]+'}}", "/reviews/12/x", s, "v2"),
        ("{uri: {prefix: /REV}, ignoreUriCase: true}", "/reviews", s, "v1"),
        ("{uri: {prefix: /REV}}", "/reviews", s, "v2"),
        ("{method: {exact: POST}}", "POST /", s, "v1"),
        ("{method: {exact: POST}}", "/", s, "v2"),
        ("{scheme: {exact: http}}", "/", s, "v1"),
        ("{scheme: {exact: https}}", "/", s, "v2"),
        ("{authority: {prefix: 'reviews:'}}", "/", s, "v1"),
        ("{authority: {exact: ratings}}", "/", s, "v2"),
        ("{headers: {end-user: {exact: jason}}}", "/ end-user:jason", s, "v1"),
        ("{headers: {End-User: {exact: jason}}}", "/ end-user:json", s, "v2"),
        ("{headers: {x-canary: {}}}", "/ x-canary:any", s, "v1"),
        ("{headers: {x-canary: {}}}", "/", s, "v2"),
        ("{withoutHeaders: {x-canary: {}}}", "/", s, "v1"),
        ("{withoutHeaders: {x-canary: {exact: 'no'}}}", "/ x-canary:no", s, "v2"),
        ("{queryParams: {v: {exact: '3'}}}", "/?a=1&v=3", s, "v1"),
        ("{queryParams: {v: {regex: '[0-9]'}}}", "/?v=33", s, "v2"),
        ("{port: 9080}", "/", s, "v1"),
        ("{port: 9081}", "/", s, "v2"),
        ("{sourceLabels: {app: productpage}}", "/", p, "v1"),
        ("{sourceLabels: {app: productpage}}", "/", s, "v2"),
        ("{sourceNamespace: bookinfo}", "/", p, "v1"),
        ("{sourceNamespace: bookinfo}", "/", s, "v2"),
        ("{gateways: [mesh], uri: {prefix: /}}", "/", s, "v1"),
        ("{gateways: [ingress], uri: {prefix: /}}", "/", s, "v2"),
        ("{uri: {prefix: /r}, headers: {u: {exact: j}}}", "/r u:j", s, "v1"),
        ("{uri: {prefix: /r}, headers: {u: {exact: j}}}", "/r", s, "v2"),
    ];
    for (matched, request, caller, expected) in cases {
        let table = reviews(&virtual_service(&format!(
            "[{{match: [{matched}], route: [{{destination: {{host: reviews, subset: v1}}}}]}}, \
              {{route: [{{destination: {{host: reviews, subset: v2}}}}]}}]"
        )));
        let routed = subset(&table, request_of(request), caller);
        assert_eq!(routed, expected, "{matched} {request}");
    }
    // Alternatives: either match will do; no route at all: 404.
    let table = reviews(&virtual_service(
        "[{match: [{uri: {exact: /a}}, {uri: {exact: /b}}], route: [{destination: {host: reviews, subset: v1}}]}]",
    ));
    assert_eq!(subset(&table, request_of("/b"), stranger), "v1");
    assert_eq!(subset(&table, request_of("/c"), stranger), "404");
}

#[test]
fn a_route_is_named_as_istio_names_it_for_envoy() {
    let table = reviews(&virtual_service(
        "[{name: canary, match: [{name: jason, headers: {end-user: {exact: jason}}}, {uri: {prefix: /c}}], \
           route: [{destination: {host: reviews, subset: v2}}]}, \
          {match: [{name: api, uri: {prefix: /api}}], route: [{destination: {host: reviews, subset: v3}}]}, \
          {route: [{destination: {host: reviews, subset: v1}}]}]",
    ));
    let name = |request: &str| {
        let (parts, ()) = request_of(request).into_parts();
        table
            .route(&parts, "http", Caller::default())
            .and_then(|routed| routed.name())
    };
    assert_eq!(name("/ end-user:jason").as_deref(), Some("canary.jason"));
    assert_eq!(name("/c").as_deref(), Some("canary"));
    assert_eq!(name("/api").as_deref(), Some("api"));
    assert_eq!(name("/"), None);
}

#[test]
fn a_virtual_service_that_cannot_be_used_is_left_out_alone() {
    let tables = tables(&format!(
        "{}---\n{}",
        virtual_service("[{headers: {request: {set: {'bad name': x}}}, route: [{destination: {host: reviews}}]}]"),
        "{apiVersion: networking.istio.io/v1, kind: VirtualService, metadata: {name: ratings, namespace: bookinfo}, \
          spec: {hosts: [ratings], http: [{route: [{destination: {host: reviews, subset: v3}}]}]}}\n"
    ));
    assert_eq!(
        tables.problems.keys().collect::<Vec<_>>(),
        ["VirtualService bookinfo/reviews"]
    );
    // Reviews falls back to its Service; ratings' own route applies.
    let reviews = &tables.ports[&SocketAddr::from((VIP, 9080))];
    assert_eq!(reviews.http[0].destinations[0].backend.subset, None);
    let ratings = &tables.ports[&SocketAddr::new(IpAddr::from([10, 96, 0, 21]), 9080)];
    assert_eq!(
        ratings.http[0].destinations[0].backend.subset.as_deref(),
        Some("v3")
    );
    assert_eq!(ratings.http[0].destinations[0].backend.port, 9080);
}

/// A VirtualService `name` in `namespace` for `hosts`, sending everything
/// to reviews' `subset`, created at `created` when given.
fn routing_to(
    name: &str,
    namespace: &str,
    hosts: &str,
    subset: &str,
    created: Option<&str>,
) -> String {
    let created = created.map_or(String::new(), |at| format!(", creationTimestamp: '{at}'"));
    format!(
        "{{apiVersion: networking.istio.io/v1, kind: VirtualService, metadata: {{name: {name}, namespace: {namespace}{created}}}, \
          spec: {{hosts: {hosts}, http: [{{route: [{{destination: {{host: reviews.bookinfo.svc.cluster.local, subset: {subset}}}}}]}}]}}}}\n---\n"
    )
}

fn subset_for_all(tables: &RouteTables) -> String {
    let table = &tables.ports[&SocketAddr::from((VIP, 9080))];
    subset(table, request_of("/"), Caller::default())
}

#[test]
fn one_virtual_service_routes_a_host_the_most_specific_then_the_oldest() {
    // A wildcard applies to every host under it.
    let wildcard = routing_to(
        "all",
        "bookinfo",
        "['*.bookinfo.svc.cluster.local']",
        "v3",
        None,
    );
    let routed = tables(&wildcard);
    assert_eq!(subset_for_all(&routed), "v3");
    assert!(routed.problems.is_empty(), "{:?}", routed.problems);
    let ratings = &routed.ports[&SocketAddr::new(IpAddr::from([10, 96, 0, 21]), 9080)];
    assert_eq!(ratings.virtual_service, Some(Key::new("bookinfo", "all")));

    // The host named exactly wins over the wildcard, which still routes
    // ratings; a longer wildcard wins over `*`.
    let routed = tables(&format!(
        "{wildcard}{}{}",
        routing_to("exact", "bookinfo", "[reviews]", "v1", None),
        routing_to("everything", "bookinfo", "['*']", "v2", None),
    ));
    assert_eq!(subset_for_all(&routed), "v1");
    let ratings = &routed.ports[&SocketAddr::new(IpAddr::from([10, 96, 0, 21]), 9080)];
    assert_eq!(ratings.virtual_service, Some(Key::new("bookinfo", "all")));
    assert!(routed.problems.is_empty(), "{:?}", routed.problems);

    // Two for the same host: the older applies, the other is reported and
    // not merged in, whatever their names.
    let routed = tables(&format!(
        "{}{}",
        routing_to(
            "a-newer",
            "bookinfo",
            "[reviews]",
            "v2",
            Some("2026-05-02T10:00:00Z")
        ),
        routing_to(
            "b-older",
            "bookinfo",
            "[reviews]",
            "v3",
            Some("2026-05-01T10:00:00Z")
        ),
    ));
    assert_eq!(subset_for_all(&routed), "v3");
    let table = &routed.ports[&SocketAddr::from((VIP, 9080))];
    assert_eq!(table.http.len(), 1, "not merged: {:?}", table.http);
    let problem = &routed.problems["VirtualService bookinfo/a-newer"];
    assert!(
        problem.contains("bookinfo/b-older") && problem.contains("IST0109"),
        "{problem}"
    );

    // Without creation times (a manifest directory), by name; one that
    // cannot be used gives way to the next.
    let routed = tables(&format!(
        "{}{}",
        routing_to("b", "bookinfo", "[reviews]", "v2", None),
        virtual_service(
            "[{headers: {request: {set: {'bad name': x}}}, route: [{destination: {host: reviews}}]}]"
        )
        .replace("name: reviews", "name: a")
            + "---\n",
    ));
    assert_eq!(subset_for_all(&routed), "v2");
    assert!(routed.problems["VirtualService bookinfo/a"].contains("is not a header name"));
}

#[test]
fn bindings_name_the_virtual_service_in_force_and_the_destination_rules() {
    let mesh = mesh(&format!(
        "{}{}",
        routing_to(
            "all",
            "bookinfo",
            "['*.bookinfo.svc.cluster.local']",
            "v3",
            None
        ),
        routing_to("exact", "bookinfo", "[reviews]", "v1", None),
    ));
    let binding = |service: &str, virtual_service: &str, destination_rules: &[&str]| Binding {
        service: Key::new("bookinfo", service),
        host: format!("{service}.bookinfo.svc.cluster.local"),
        virtual_service: Some(Key::new("bookinfo", virtual_service)),
        destination_rules: destination_rules
            .iter()
            .map(|name| Key::new("bookinfo", *name))
            .collect(),
    };
    assert_eq!(
        compile(&mesh, &waypoint()).bindings,
        [
            binding("ratings", "all", &[]),
            binding("reviews", "exact", &["reviews"]),
        ]
    );
    assert!(compile(&mesh, &WaypointRef(Key::new("other", "waypoint")))
        .bindings
        .is_empty());
}

#[test]
fn a_delegated_route_stands_for_its_delegates_routes() {
    let delegate = |name: &str, namespace: &str, export_to: &str| {
        format!(
            "{{apiVersion: networking.istio.io/v1, kind: VirtualService, metadata: {{name: {name}, namespace: {namespace}}}, \
              spec: {{exportTo: {export_to}, http: [\
                {{match: [{{uri: {{prefix: /api/v2}}}}], route: [{{destination: {{host: reviews.bookinfo.svc.cluster.local, subset: v2}}}}]}}, \
                {{match: [{{uri: {{prefix: /elsewhere}}}}], route: [{{destination: {{host: reviews.bookinfo.svc.cluster.local, subset: v3}}}}]}}]}}}}\n---\n"
        )
    };
    let root = |namespace: &str| {
        virtual_service(&format!(
            "[{{name: api, match: [{{uri: {{prefix: /api}}}}], delegate: {{name: team, namespace: {namespace}}}}}, \
              {{route: [{{destination: {{host: reviews, subset: v1}}}}]}}]"
        ))
    };
    let routed = tables(&format!(
        "{}---\n{}",
        root("team-ns"),
        delegate("team", "team-ns", "['*']")
    ));
    assert!(routed.problems.is_empty(), "{:?}", routed.problems);
    let table = &routed.ports[&SocketAddr::from((VIP, 9080))];
    let to = |path: &str| subset(table, request_of(path), Caller::default());
    assert_eq!(to("/api/v2/books"), "v2");
    // The delegate's route outside the root's prefix is dropped; what the
    // delegate does not match falls to the root's next route.
    assert_eq!(to("/elsewhere"), "v1");
    assert_eq!(to("/api/v1"), "v1");
    assert_eq!(table.http[0].name.as_deref(), Some("api"));

    // Not exported to the root's namespace: the route is left out, noted,
    // and the rest of the root applies.
    let routed = tables(&format!(
        "{}---\n{}",
        root("team-ns"),
        delegate("team", "team-ns", "['.']")
    ));
    let table = &routed.ports[&SocketAddr::from((VIP, 9080))];
    assert_eq!(
        subset(table, request_of("/api/v2"), Caller::default()),
        "v1"
    );
    let note = &routed.problems["VirtualService bookinfo/reviews"];
    assert!(
        note.contains("team-ns/team") && note.contains("left out"),
        "{note}"
    );
}

#[test]
fn a_pod_bound_by_its_own_label_is_reached_by_its_address() {
    let routed = tables(
        "{apiVersion: v1, kind: Pod, metadata: {name: details-v1, namespace: bookinfo, labels: {app: details, istio.io/use-waypoint: waypoint}}, \
          spec: {nodeName: node-0}, status: {podIP: 10.244.0.31}}\n---\n\
         {apiVersion: v1, kind: Service, metadata: {name: details, namespace: bookinfo}, \
          spec: {clusterIP: 10.96.0.31, ports: [{name: http, port: 80, targetPort: 9080}]}}\n---\n\
         {apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: details-1, namespace: bookinfo, labels: {kubernetes.io/service-name: details}}, \
          addressType: IPv4, endpoints: [{addresses: [10.244.0.31]}], ports: [{name: http, port: 9080}]}\n",
    );
    let pod = IpAddr::from([10, 244, 0, 31]);
    // The port its Service names http: HTTP, to the pod alone.
    let http = routed.table(SocketAddr::new(pod, 9080)).expect("a table");
    assert_eq!(http.protocol, Protocol::Http);
    let (parts, ()) = request_of("/").into_parts();
    let routed_to = http
        .route(&parts, "http", Caller::default())
        .expect("a route");
    assert_eq!(
        routed_to.route.destinations[0].backend.endpoints,
        [SocketAddr::new(pod, 9080)]
    );
    // Any other port: TCP to that port of the pod.
    let other = routed.table(SocketAddr::new(pod, 5000)).expect("a table");
    assert_eq!(other.protocol, Protocol::Tcp);
    assert_eq!(
        other.tcp[0].destinations[0].backend.endpoints,
        [SocketAddr::new(pod, 5000)]
    );
    // A pod without the label (the namespace's label binds Services only)
    // is not served by address.
    assert!(routed
        .table(SocketAddr::new(IpAddr::from([10, 244, 0, 11]), 9080))
        .is_none());
}

#[test]
fn entries_resolved_by_dns_leave_their_names_to_the_request_path() {
    let routed = tables(
        "{apiVersion: networking.istio.io/v1, kind: ServiceEntry, metadata: {name: dynamic, namespace: bookinfo, labels: {istio.io/use-waypoint: waypoint}}, \
          spec: {hosts: ['*.example.com'], ports: [{number: 80, name: http, targetPort: 8080}], resolution: DYNAMIC_DNS}}\n---\n\
         {apiVersion: networking.istio.io/v1, kind: DestinationRule, metadata: {name: dynamic, namespace: bookinfo}, \
          spec: {host: '*.example.com', trafficPolicy: {tls: {mode: SIMPLE}}}}\n---\n\
         {apiVersion: networking.istio.io/v1, kind: ServiceEntry, metadata: {name: named, namespace: bookinfo, labels: {istio.io/use-waypoint: waypoint}}, \
          spec: {hosts: [api.named.org], ports: [{number: 80, name: http}], resolution: DNS_ROUND_ROBIN, \
          endpoints: [{address: one.named.org, ports: {http: 9000}}, {address: 192.0.2.7}]}}\n",
    );
    let backend_at = |host: &str| {
        let address = ambit_config::model::auto_address(host);
        let table = routed
            .table(SocketAddr::from((address, 80)))
            .expect("a table");
        let (parts, ()) = request_of("/").into_parts();
        let route = table
            .route(&parts, "http", Caller::default())
            .expect("a route");
        route.route.destinations[0].backend.clone()
    };
    // Every name under the wildcard: the one the request names, at the
    // target port; none outside it, and no host at all is refused.
    let dynamic = backend_at("*.example.com");
    let resolve = dynamic.resolve.as_ref().expect("names to resolve");
    assert!(dynamic.endpoints.is_empty());
    assert_eq!(
        resolve.names_for("API.example.com:80"),
        Ok(vec![("API.example.com", 8080)])
    );
    assert!(resolve
        .names_for("example.org")
        .unwrap_err()
        .contains("not a host"));
    assert!(resolve.names_for("").is_err());
    // TLS toward a resolved host asks for that host, not the wildcard.
    let found = dynamic.resolved(
        vec![SocketAddr::from(([192, 0, 2, 1], 8080))],
        Some("api.example.com"),
    );
    assert_eq!(found.endpoints, [SocketAddr::from(([192, 0, 2, 1], 8080))]);
    let sni = |backend: &Backend| backend.tls.as_ref().map(|tls| tls.sni.clone());
    assert_eq!(sni(&dynamic).as_deref(), Some("*.example.com"));
    assert_eq!(sni(&found).as_deref(), Some("api.example.com"));
    // DNS_ROUND_ROBIN: its endpoints' names (or addresses), each at the
    // port it names, else the entry's; only the first address of each.
    let named = backend_at("api.named.org");
    let resolve = named.resolve.as_ref().expect("names to resolve");
    assert_eq!(
        resolve.names_for("anything"),
        Ok(vec![("one.named.org", 9000), ("192.0.2.7", 80)])
    );
    assert!(!resolve.every_address);
}
