use http::Request;

use super::*;
use crate::compile::tests::mesh;
use crate::Caller;

/// The gateway pod's labels, as Istio's ingress gateway is labelled.
fn ingress() -> Labels {
    [("istio".to_string(), "ingressgateway".to_string())].into()
}

/// Bookinfo's gateway and its VirtualService (Istio's sample, routing to
/// reviews, which `mesh` has), and `extra`.
fn bookinfo(extra: &str) -> GatewayTables {
    let manifests = format!(
        "{{apiVersion: networking.istio.io/v1, kind: Gateway, metadata: {{name: bookinfo-gateway, namespace: bookinfo}}, \
           spec: {{selector: {{istio: ingressgateway}}, servers: [{{port: {{number: 8080, name: http, protocol: HTTP}}, hosts: ['*']}}]}}}}\n---\n\
         {{apiVersion: networking.istio.io/v1, kind: VirtualService, metadata: {{name: bookinfo, namespace: bookinfo}}, \
           spec: {{hosts: ['*'], gateways: [bookinfo-gateway], http: [{{match: [{{uri: {{exact: /productpage}}}}, {{uri: {{prefix: /static}}}}], \
           route: [{{destination: {{host: reviews, port: {{number: 9080}}}}}}]}}]}}}}\n---\n{extra}"
    );
    compile_gateway(&mesh(&manifests), "istio-system", &ingress())
}

/// Where a plaintext request for `host` and `path` on `port` goes: the
/// first destination's host, or `404`.
fn routed(tables: &GatewayTables, port: u16, host: &str, path: &str) -> String {
    let Some(virtual_host) = tables.listeners[&port].virtual_host(host) else {
        return "no virtual host".to_string();
    };
    let (parts, ()) = Request::get(path).body(()).unwrap().into_parts();
    let caller = Caller {
        namespace: None,
        labels: None,
    };
    match virtual_host.table.route(&parts, "http", caller) {
        Some(routed) => routed.route.destinations[0].backend.host.clone(),
        None => "404".to_string(),
    }
}

const REVIEWS: &str = "reviews.bookinfo.svc.cluster.local";
const RATINGS: &str = "ratings.bookinfo.svc.cluster.local";

#[test]
fn bookinfo_gateway_routes_its_paths_and_nothing_else() {
    let tables = bookinfo("");
    assert!(tables.problems.is_empty(), "{:?}", tables.problems);
    let listener = &tables.listeners[&8080];
    assert_eq!(listener.protocol, ListenerProtocol::Http);
    assert_eq!(
        routed(&tables, 8080, "anything.example", "/productpage"),
        REVIEWS
    );
    assert_eq!(routed(&tables, 8080, "1.2.3.4", "/static/x.css"), REVIEWS);
    assert_eq!(routed(&tables, 8080, "anything.example", "/admin"), "404");
    let table = &listener.servers[0].virtual_hosts[0].table;
    let backend = &table.http[0].destinations[0].backend;
    assert_eq!(backend.endpoints.len(), 3, "reviews' three pods");
}

#[test]
fn a_gateway_serves_only_pods_its_selector_matches_and_routes_bound_to_it() {
    let mesh_only = "{apiVersion: networking.istio.io/v1, kind: VirtualService, metadata: {name: mesh-only, namespace: bookinfo}, \
        spec: {hosts: ['*'], http: [{route: [{destination: {host: ratings}}]}]}}\n";
    let tables = bookinfo(mesh_only);
    assert_eq!(
        tables.listeners[&8080].servers[0].virtual_hosts[0].virtual_services,
        [Key::new("bookinfo", "bookinfo")],
        "a VirtualService without gateways is the mesh's"
    );
    let none = compile_gateway(&mesh(""), "istio-system", &ingress());
    assert!(none.listeners.is_empty());
    let manifests = "{apiVersion: networking.istio.io/v1, kind: Gateway, metadata: {name: gw, namespace: bookinfo}, \
        spec: {selector: {istio: egressgateway}, servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]}}\n";
    let unselected = compile_gateway(&mesh(manifests), "istio-system", &ingress());
    assert!(
        unselected.listeners.is_empty(),
        "selector istio=egressgateway"
    );
}

#[test]
fn hosts_pick_the_most_specific_virtual_host_and_namespaces_limit_binding() {
    let gateway = "{apiVersion: networking.istio.io/v1, kind: Gateway, metadata: {name: gw, namespace: bookinfo}, \
        spec: {selector: {istio: ingressgateway}, servers: [{port: {number: 80, name: http, protocol: HTTP}, \
        hosts: ['*.example.com', 'other/*.other.example']}]}}\n---\n";
    let vs = |name: &str, namespace: &str, host: &str, to: &str| {
        format!(
            "{{apiVersion: networking.istio.io/v1, kind: VirtualService, metadata: {{name: {name}, namespace: {namespace}}}, \
              spec: {{hosts: ['{host}'], gateways: [bookinfo/gw], http: [{{route: [{{destination: {{host: {to}.bookinfo.svc.cluster.local}}}}]}}]}}}}\n---\n"
        )
    };
    let manifests = [
        gateway.to_string(),
        vs("all", "bookinfo", "*", "ratings"),
        vs("shop", "bookinfo", "shop.example.com", "reviews"),
        // Only `other` may bind *.other.example; this one is in bookinfo.
        vs("sneaky", "bookinfo", "a.other.example", "reviews"),
        vs("allowed", "other", "b.other.example", "reviews"),
    ]
    .concat();
    let tables = compile_gateway(&mesh(&manifests), "istio-system", &ingress());
    let domains: Vec<&str> = tables.listeners[&80].servers[0]
        .virtual_hosts
        .iter()
        .map(|v| v.domain.as_str())
        .collect();
    assert_eq!(
        domains,
        ["*.example.com", "b.other.example", "shop.example.com"],
        "`*` narrowed to the server's host, a.other.example refused"
    );
    let to = |host| routed(&tables, 80, host, "/");
    assert_eq!(to("shop.example.com"), REVIEWS);
    assert_eq!(to("SHOP.example.com"), REVIEWS);
    assert_eq!(to("www.example.com"), RATINGS);
    assert_eq!(to("b.other.example"), REVIEWS);
    assert_eq!(to("a.other.example"), "no virtual host");
    assert_eq!(to("example.com"), "no virtual host");
}

#[test]
fn virtual_services_for_one_host_merge_and_matches_may_name_their_gateway() {
    let manifests = "{apiVersion: networking.istio.io/v1, kind: Gateway, metadata: {name: gw, namespace: bookinfo}, \
        spec: {selector: {istio: ingressgateway}, servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]}}\n---\n\
        {apiVersion: networking.istio.io/v1, kind: VirtualService, metadata: {name: a, namespace: bookinfo}, \
        spec: {hosts: ['*'], gateways: [gw, mesh], http: [\
          {match: [{uri: {prefix: /mesh-only}, gateways: [mesh]}], route: [{destination: {host: ratings}}]}, \
          {match: [{uri: {prefix: /a}}], route: [{destination: {host: ratings}}]}]}}\n---\n\
        {apiVersion: networking.istio.io/v1, kind: VirtualService, metadata: {name: b, namespace: bookinfo}, \
        spec: {hosts: ['*'], gateways: [bookinfo/gw], http: [{match: [{uri: {prefix: /b}}], route: [{destination: {host: reviews}}]}]}}\n";
    let tables = compile_gateway(&mesh(manifests), "istio-system", &ingress());
    let to = |path| routed(&tables, 80, "x", path);
    assert_eq!(to("/a"), RATINGS);
    assert_eq!(
        to("/b"),
        REVIEWS,
        "the second VirtualService's routes follow"
    );
    assert_eq!(to("/mesh-only"), "404", "a match for the mesh alone");
}

#[test]
fn tls_servers_terminate_or_pass_through_by_server_name() {
    let manifests = "{apiVersion: networking.istio.io/v1, kind: Gateway, metadata: {name: gw, namespace: bookinfo}, \
        spec: {selector: {istio: ingressgateway}, servers: [\
          {port: {number: 443, name: https, protocol: HTTPS}, hosts: [a.example.com], \
           tls: {mode: SIMPLE, credentialName: a-cert}}, \
          {port: {number: 443, name: https-b, protocol: HTTPS}, hosts: [b.example.com], \
           tls: {mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem}}, \
          {port: {number: 80, name: http, protocol: HTTP}, hosts: ['*'], tls: {httpsRedirect: true}}, \
          {port: {number: 8443, name: tls, protocol: TLS}, hosts: ['*.pass.example'], tls: {mode: PASSTHROUGH}}, \
          {port: {number: 8443, name: plain, protocol: HTTP}, hosts: ['*']}]}}\n---\n\
        {apiVersion: networking.istio.io/v1, kind: VirtualService, metadata: {name: pass, namespace: bookinfo}, \
        spec: {hosts: ['*.pass.example'], gateways: [gw], tls: [\
          {match: [{sniHosts: [one.pass.example]}], route: [{destination: {host: reviews, port: {number: 9080}}}]}, \
          {match: [{sniHosts: ['*.pass.example']}], route: [{destination: {host: ratings, port: {number: 9080}}}]}]}}\n";
    let tables = compile_gateway(&mesh(manifests), "istio-system", &ingress());
    let https = &tables.listeners[&443];
    assert_eq!(https.protocol, ListenerProtocol::Tls);
    let a = https.server(Some("a.example.com")).unwrap();
    let ServerMode::Terminate(a_tls) = &a.mode else {
        panic!("SIMPLE terminates: {a:?}");
    };
    assert_eq!(a_tls.clients, ClientCertificates::Unasked);
    assert_eq!(
        a_tls.credential,
        Credential::Secret {
            name: "a-cert".into(),
            ca_name: None
        }
    );
    let b = https.server(Some("B.example.com")).unwrap();
    assert!(
        matches!(&b.mode, ServerMode::Terminate(t) if t.clients == ClientCertificates::Required)
    );
    assert!(https.server(Some("c.example.com")).is_none());
    assert!(matches!(
        tables.listeners[&80].servers[0].mode,
        ServerMode::Http {
            https_redirect: true
        }
    ));
    let pass = tables.listeners[&8443]
        .server(Some("one.pass.example"))
        .unwrap();
    let to = |sni| {
        pass.tls_route(Some(sni))
            .map(|r| r.destinations[0].backend.host.clone())
    };
    assert_eq!(to("one.pass.example").unwrap(), REVIEWS);
    assert_eq!(to("two.pass.example").unwrap(), RATINGS);
    assert!(pass.tls_route(None).is_none(), "no server name, no route");
    let problem = &tables.problems["Gateway bookinfo/gw"];
    assert!(
        problem.contains("servers[4]") && problem.contains("already served as Tls"),
        "{problem}"
    );
}

#[test]
fn servers_ambit_cannot_serve_are_reported_by_field() {
    let manifests = "{apiVersion: networking.istio.io/v1, kind: Gateway, metadata: {name: gw, namespace: bookinfo}, \
        spec: {selector: {istio: ingressgateway}, servers: [\
          {port: {number: 15443, name: tls, protocol: TLS}, hosts: ['*'], tls: {mode: AUTO_PASSTHROUGH}}]}}\n";
    let tables = compile_gateway(&mesh(manifests), "istio-system", &ingress());
    assert!(tables.listeners.is_empty());
    let problem = &tables.problems["Gateway bookinfo/gw"];
    assert!(
        problem.contains("spec.servers[0]") && problem.contains("AUTO_PASSTHROUGH"),
        "{problem}"
    );
}

#[test]
fn a_tcp_server_carries_its_connections_to_the_first_tcp_route_for_its_port() {
    let manifests = "{apiVersion: networking.istio.io/v1, kind: Gateway, metadata: {name: gw, namespace: bookinfo}, \
        spec: {selector: {istio: ingressgateway}, servers: [\
          {port: {number: 31400, name: tcp, protocol: TCP}, hosts: ['*']}, \
          {port: {number: 31400, name: tcp-again, protocol: MONGO}, hosts: ['*']}, \
          {port: {number: 27017, name: mongo, protocol: MONGO}, hosts: ['*']}]}}\n---\n\
        {apiVersion: networking.istio.io/v1, kind: VirtualService, metadata: {name: tcp, namespace: bookinfo}, \
        spec: {hosts: ['*'], gateways: [gw], tcp: [\
          {match: [{port: 31400}], route: [{destination: {host: ratings, port: {number: 9080}}}]}, \
          {route: [{destination: {host: reviews, port: {number: 9080}}}]}]}}\n";
    let tables = compile_gateway(&mesh(manifests), "istio-system", &ingress());
    let carried_to = |port: u16| {
        let listener = &tables.listeners[&port];
        assert_eq!(listener.protocol, ListenerProtocol::Tcp);
        assert_eq!(listener.servers.len(), 1, "one server a TCP port");
        listener.servers[0].tcp_route[0].backend.host.clone()
    };
    assert_eq!(carried_to(31400), RATINGS);
    // The route without a port match takes every other port.
    assert_eq!(carried_to(27017), REVIEWS);
    let problem = &tables.problems["Gateway bookinfo/gw"];
    assert!(
        problem.contains("servers[1]") && problem.contains("already served as Tcp"),
        "{problem}"
    );
}
