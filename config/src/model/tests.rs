use super::*;

fn pod(namespace: &'static str, name: &'static str) -> (&'static str, &'static str) {
    (namespace, name)
}

fn labels(mode: &str) -> Labels {
    [(DATAPLANE_MODE_LABEL.to_string(), mode.to_string())].into()
}

#[test]
fn enrollment_follows_istios_labels() {
    let snapshot = MeshSnapshot::new(MeshConfig {
        namespaces: vec![
            NamespaceConfig {
                name: "mesh".into(),
                labels: labels("ambient"),
            },
            NamespaceConfig {
                name: "plain".into(),
                labels: Labels::new(),
            },
        ],
        pods: vec![
            PodConfig {
                namespace: "mesh".into(),
                name: "opted-out".into(),
                labels: labels("none"),
            },
            PodConfig {
                namespace: "plain".into(),
                name: "opted-in".into(),
                labels: labels("ambient"),
            },
            PodConfig {
                namespace: "mesh".into(),
                name: "other-label".into(),
                labels: labels("sidecar"),
            },
        ],
        services: vec![],
    });
    let cases = [
        (pod("mesh", "any"), true),
        (pod("mesh", "opted-out"), false),
        (pod("mesh", "other-label"), true),
        (pod("plain", "any"), false),
        (pod("plain", "opted-in"), true),
        (pod("unknown-ns", "any"), false),
    ];
    for (pod, enrolled) in cases {
        assert_eq!(snapshot.is_enrolled(pod.0, pod.1), enrolled, "{pod:?}");
    }
}

fn reviews(endpoints: Vec<Endpoint>) -> MeshConfig {
    MeshConfig {
        services: vec![ServiceConfig {
            namespace: "default".into(),
            name: "reviews".into(),
            vip: Ipv4Addr::new(10, 96, 0, 10),
            ports: vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: 9080,
            }],
            endpoints,
        }],
        ..MeshConfig::default()
    }
}

#[test]
fn a_service_port_goes_round_robin_over_ready_endpoints() {
    let endpoint = |last, ready| Endpoint {
        ip: Ipv4Addr::new(10, 244, 2, last),
        ready,
    };
    let snapshot = MeshSnapshot::new(reviews(vec![
        endpoint(2, true),
        endpoint(3, false),
        endpoint(4, true),
    ]));
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
    let picked: Vec<Route> = (0..4).map(|_| snapshot.route(vip)).collect();
    let to = |last| Route::Service {
        service: "reviews.default".into(),
        endpoint: SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, last), 9080),
    };
    assert_eq!(picked, vec![to(2), to(4), to(2), to(4)]);

    let other_port = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 81);
    assert_eq!(snapshot.route(other_port), Route::Direct(other_port));
    let pod_ip = SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, 2), 9080);
    assert_eq!(snapshot.route(pod_ip), Route::Direct(pod_ip));
}

#[test]
fn a_service_without_ready_endpoints_is_refused() {
    let snapshot = MeshSnapshot::new(reviews(vec![Endpoint {
        ip: Ipv4Addr::new(10, 244, 2, 2),
        ready: false,
    }]));
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
    assert_eq!(
        snapshot.route(vip),
        Route::NoReadyEndpoint {
            service: "reviews.default".into()
        }
    );
}

#[test]
fn manifests_compile_to_enrollment_and_service_routes() {
    let manifests = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: legacy, namespace: shop, labels: {istio.io/dataplane-mode: none}}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.0.42
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: admin, port: 9000, targetPort: 9001}
  - {name: other, port: 7000}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: cart-1, namespace: shop, labels: {kubernetes.io/service-name: cart}}
addressType: IPv4
endpoints:
- {addresses: [10.244.1.7], conditions: {ready: true}}
- {addresses: [10.244.2.9], conditions: {ready: false}}
ports:
- {name: http, port: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: shop}
spec: {clusterIP: None, ports: [{port: 80}]}
"#;
    let parsed = crate::document::parse_manifests(manifests);
    assert_eq!(parsed.problems, vec![]);
    let config = MeshConfig::from_resources(&parsed.resources);
    let snapshot = MeshSnapshot::new(config.clone());
    assert!(snapshot.is_enrolled("shop", "cart-0"));
    assert!(!snapshot.is_enrolled("shop", "legacy"));

    assert_eq!(
        config.services.len(),
        1,
        "a headless Service has no VIP to route"
    );
    let cart = &config.services[0];
    let ports: Vec<(u16, u16)> = cart.ports.iter().map(|p| (p.port, p.target_port)).collect();
    // Named target port from the slice, numeric target port, none (= port).
    assert_eq!(ports, [(80, 8080), (9000, 9001), (7000, 7000)]);
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 42), 80);
    let ready = SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 7), 8080);
    for _ in 0..3 {
        assert_eq!(
            snapshot.route(vip),
            Route::Service {
                service: "cart.shop".into(),
                endpoint: ready
            },
            "only the ready endpoint"
        );
    }
}
