use super::*;
use crate::document::parse_manifests;

fn resources(manifests: &str) -> Vec<Resource> {
    let parsed = parse_manifests(manifests);
    assert_eq!(parsed.problems, vec![]);
    parsed.resources
}

fn mesh(manifests: &str) -> Mesh {
    Mesh::from_resources(resources(manifests))
}

fn object(kind: &str, namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        kind: kind.into(),
        namespace: namespace.into(),
        name: name.into(),
    }
}

#[test]
fn enrollment_follows_istios_labels() {
    let mesh = mesh(
        r#"
{apiVersion: v1, kind: Namespace, metadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}}
---
{apiVersion: v1, kind: Namespace, metadata: {name: plain}}
---
{apiVersion: v1, kind: Pod, metadata: {name: opted-out, namespace: mesh, labels: {istio.io/dataplane-mode: none}}}
---
{apiVersion: v1, kind: Pod, metadata: {name: opted-in, namespace: plain, labels: {istio.io/dataplane-mode: ambient}}}
---
{apiVersion: v1, kind: Pod, metadata: {name: other-label, namespace: mesh, labels: {istio.io/dataplane-mode: sidecar}}}
---
{apiVersion: v1, kind: Pod, metadata: {name: injected, namespace: mesh, annotations: {sidecar.istio.io/status: '{"containers":["istio-proxy"]}'}}}
---
{apiVersion: v1, kind: Pod, metadata: {name: native-sidecar, namespace: plain, labels: {istio.io/dataplane-mode: ambient}}, spec: {initContainers: [{name: istio-proxy, image: proxyv2}], containers: [{name: app}]}}
"#,
    );
    let cases = [
        (("mesh", "any"), true),
        (("mesh", "opted-out"), false),
        (("mesh", "other-label"), true),
        (("plain", "any"), false),
        (("plain", "opted-in"), true),
        (("unknown-ns", "any"), false),
        // Istio's sidecar captures these: never Ambit's, labels or not.
        (("mesh", "injected"), false),
        (("plain", "native-sidecar"), false),
    ];
    for (pod, enrolled) in cases {
        assert_eq!(mesh.is_enrolled(pod.0, pod.1), enrolled, "{pod:?}");
    }
}

const CART: &str = r#"
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
- {addresses: [10.244.2.8]}
ports:
- {name: http, port: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: shop}
spec: {clusterIP: None, ports: [{port: 80}]}
"#;

#[test]
fn a_service_port_resolves_to_its_target_port_and_ready_endpoints() {
    let mut mesh = mesh(CART);
    let vip = IpAddr::from([10, 96, 0, 42]);
    let resolve = |mesh: &Mesh, port| {
        let (key, service, target) = mesh.service_by_vip(vip, port)?;
        let ready: Vec<IpAddr> = service.ready_like(vip).collect();
        Some((key.to_string(), ready, target))
    };
    // A named target port comes from the slice; absent conditions are ready.
    let ready = vec![IpAddr::from([10, 244, 1, 7]), IpAddr::from([10, 244, 2, 8])];
    assert_eq!(
        resolve(&mesh, 80),
        Some(("shop/cart".into(), ready.clone(), 8080))
    );
    // Asked for IPv6, a Service with none has its IPv4 endpoints to offer.
    let (_, service, _) = mesh.service_by_vip(vip, 80).unwrap();
    assert!(service
        .ready_like("fd00::1".parse().unwrap())
        .next()
        .is_none());
    assert_eq!(service.ready_preferring("fd00::1".parse().unwrap()), ready);
    // A numeric target port, and none (the port itself).
    assert_eq!(resolve(&mesh, 9000).map(|r| r.2), Some(9001));
    assert_eq!(resolve(&mesh, 7000).map(|r| r.2), Some(7000));
    assert_eq!(resolve(&mesh, 81), None);
    assert!(mesh
        .service_by_vip(IpAddr::from([10, 244, 1, 7]), 8080)
        .is_none());
    assert_eq!(
        mesh.services.len(),
        2,
        "the headless Service is known, with no VIP to route"
    );
    mesh.delete(&object("EndpointSlice", "shop", "cart-1"));
    assert_eq!(resolve(&mesh, 80).map(|r| r.1), Some(vec![]));
}

#[test]
fn indexes_follow_each_change() {
    let mut mesh = mesh(CART);
    let snapshot = mesh.clone();
    // The slice moves to another Service: cart loses its endpoints.
    mesh.apply(
        resources(
            r#"
{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, addressType: IPv4,
 metadata: {name: cart-1, namespace: shop, labels: {kubernetes.io/service-name: other}},
 endpoints: [{addresses: [10.244.1.7]}]}
"#,
        )
        .remove(0),
    );
    assert!(mesh.services[&Key::new("shop", "cart")]
        .endpoints
        .is_empty());
    // The Service changes its VIP: the old address no longer routes.
    mesh.apply(
        resources(
            "{apiVersion: v1, kind: Service, metadata: {name: cart, namespace: shop},
              spec: {clusterIP: 10.96.0.43, ports: [{port: 80}]}}",
        )
        .remove(0),
    );
    assert!(mesh
        .service_by_vip("10.96.0.42".parse().unwrap(), 80)
        .is_none());
    assert!(mesh
        .service_by_vip("10.96.0.43".parse().unwrap(), 80)
        .is_some());
    // The snapshot taken before is untouched.
    assert_eq!(
        snapshot.services[&Key::new("shop", "cart")].endpoints.len(),
        3
    );
    assert!(snapshot
        .service_by_vip("10.96.0.42".parse().unwrap(), 80)
        .is_some());

    // A pod's IP changes, then the pod goes.
    let pod = |ip: &str| {
        resources(&format!(
            "{{apiVersion: v1, kind: Pod, metadata: {{name: web, namespace: shop}},
               spec: {{nodeName: node-1, serviceAccountName: web}}, status: {{podIP: {ip}}}}}"
        ))
        .remove(0)
    };
    mesh.apply(pod("10.244.1.5"));
    mesh.apply(pod("10.244.1.6"));
    assert!(mesh.workload_by_ip("10.244.1.5".parse().unwrap()).is_none());
    let (key, workload) = mesh.workload_by_ip("10.244.1.6".parse().unwrap()).unwrap();
    assert_eq!(
        (key.to_string(), workload.service_account.as_str()),
        ("shop/web".into(), "web")
    );
    assert!(mesh.delete(&object("Pod", "shop", "web")));
    assert!(mesh.workload_by_ip("10.244.1.6".parse().unwrap()).is_none());
}

/// After any sequence of changes, the model (objects and indexes) is the
/// one built from scratch from the objects that remain.
#[test]
fn incremental_changes_equal_a_rebuild() {
    let variants = |i: u32| -> Vec<Resource> {
        let service = i % 3;
        let ip = 10 + i % 4;
        let port = 80 + i % 2;
        resources(&format!(
            r#"
{{apiVersion: v1, kind: Pod, metadata: {{name: p{i}, namespace: ns{service}, labels: {{app: a{service}}}}},
  status: {{podIP: 10.244.0.{ip}}}}}
---
{{apiVersion: v1, kind: Service, metadata: {{name: s{service}, namespace: ns{service}}},
  spec: {{clusterIP: 10.96.0.{ip}, ports: [{{name: http, port: {port}, targetPort: http}}]}}}}
---
{{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, addressType: IPv4,
  metadata: {{name: e{i}, namespace: ns{service}, labels: {{kubernetes.io/service-name: s{}}}}},
  endpoints: [{{addresses: [10.244.0.{ip}], conditions: {{ready: {}}}}}], ports: [{{name: http, port: 90{i}}}]}}
---
{{apiVersion: networking.istio.io/v1, kind: VirtualService, metadata: {{name: v{service}, namespace: ns{service}}},
  spec: {{hosts: [s{}, other.example.com], http: [{{route: [{{destination: {{host: s{service}}}}}]}}]}}}}
"#,
            (i / 3) % 3,
            i.is_multiple_of(2),
            i % 4
        ))
    };
    let mut mesh = Mesh::default();
    let mut held: BTreeMap<ObjectRef, Resource> = BTreeMap::new();
    // A fixed pseudo-random walk: applies, re-applies with other values, deletes.
    let mut state = 7u32;
    for step in 0..400 {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let pick = (state >> 8) % 12;
        let all = variants(pick);
        let resource = all[(state >> 4) as usize % all.len()].clone();
        let name = resource.describe().1;
        if step % 5 == 4 {
            assert_eq!(mesh.delete(&name), held.remove(&name).is_some(), "{name}");
        } else {
            mesh.apply(resource.clone());
            held.insert(name, resource);
        }
        assert_eq!(
            mesh,
            Mesh::from_resources(held.values().cloned()),
            "step {step}"
        );
    }
}

#[test]
fn a_relist_removes_what_is_gone_and_keeps_the_rest() {
    let mut mesh = mesh(CART);
    let all = resources(CART);
    let kept: Vec<Resource> = all
        .into_iter()
        .filter(|r| r.describe().1.name != "headless")
        .collect();
    mesh.replace(&["Service"], kept.clone(), vec![]);
    assert_eq!(mesh, Mesh::from_resources(kept));
}

#[test]
fn routing_objects_are_found_by_their_fully_qualified_host_as_exported() {
    let mesh = mesh(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v1}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-private, namespace: team}
spec:
  hosts: [reviews.default.svc.cluster.local]
  exportTo: ["."]
  http: [{route: [{destination: {host: reviews.default.svc.cluster.local, subset: v2}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  exportTo: [default, team]
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"#,
    );
    let host = "reviews.default.svc.cluster.local";
    let names = |found: Vec<(&Key, &Config<VirtualServiceSpec>)>| -> Vec<String> {
        found.iter().map(|(key, _)| key.to_string()).collect()
    };
    assert_eq!(
        names(mesh.virtual_services_for(host, "default")),
        ["default/reviews"]
    );
    assert_eq!(
        names(mesh.virtual_services_for(host, "team")),
        ["default/reviews", "team/reviews-private"]
    );
    assert!(mesh.virtual_services_for("reviews", "default").is_empty());
    assert_eq!(mesh.destination_rules_for(host, "team").len(), 1);
    assert!(mesh.destination_rules_for(host, "elsewhere").is_empty());
}

#[test]
fn an_unreadable_policy_fails_closed_and_other_kinds_keep_their_last_good_version() {
    let mut mesh = mesh(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}
"#,
    );
    let before = mesh.clone();
    mesh.reject(
        &object("VirtualService", "default", "reviews"),
        vec!["bad".into()],
    );
    assert_eq!(mesh, before);
    let policy = object("AuthorizationPolicy", "default", "allow-some");
    mesh.reject(&policy, vec!["spec.rules[0].from: unknown field".into()]);
    assert_eq!(
        mesh.authorization_policies[&Key::new("default", "allow-some")],
        AuthorizationPolicy::Invalid {
            problems: vec!["spec.rules[0].from: unknown field".into()]
        }
    );
    // A relist that still holds it unread keeps the denial.
    mesh.replace(
        &["AuthorizationPolicy"],
        vec![],
        vec![(policy, vec!["again".into()])],
    );
    assert_eq!(mesh.authorization_policies.len(), 1);

    // A PeerAuthentication never read stands as STRICT for its namespace;
    // one read before keeps its last good version.
    let labels = Default::default();
    let mode = |mesh: &Mesh| {
        let target = crate::policy::Target {
            namespace: "default",
            labels: &labels,
        };
        crate::policy::mtls_mode(mesh, "istio-system", target, 8080)
    };
    assert_eq!(mode(&mesh), crate::policy::PeerMode::Permissive);
    let unread = object("PeerAuthentication", "default", "strict");
    mesh.reject(&unread, vec!["spec.mtls.mode: unknown variant".into()]);
    assert_eq!(mode(&mesh), crate::policy::PeerMode::Strict);
    mesh.delete(&unread);
    assert_eq!(mode(&mesh), crate::policy::PeerMode::Permissive);
    let mut mesh = mesh.clone();
    for resource in resources(
        "{apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: {name: strict, namespace: default}, spec: {mtls: {mode: PERMISSIVE}}}",
    ) {
        mesh.apply(resource);
    }
    mesh.reject(&unread, vec!["bad".into()]);
    assert_eq!(mode(&mesh), crate::policy::PeerMode::Permissive);
}

#[test]
fn an_unreadable_peer_authentication_makes_its_namespace_strict_over_its_neighbours() {
    use crate::policy::{mtls_mode, PeerMode, Target};
    let mut mesh = mesh(
        r#"
{apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: {name: a-permissive, namespace: shop}, spec: {mtls: {mode: PERMISSIVE}}}
---
{apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: {name: a-cart, namespace: shop}, spec: {selector: {matchLabels: {app: cart}}, mtls: {mode: DISABLE}}}
---
{apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: {name: legacy, namespace: legacy}, spec: {mtls: {mode: PERMISSIVE}}}
"#,
    );
    let labels = [("app".to_string(), "cart".to_string())].into();
    let mode = |mesh: &Mesh, namespace| {
        let target = Target {
            namespace,
            labels: &labels,
        };
        mtls_mode(mesh, "istio-system", target, 8080)
    };
    assert_eq!(mode(&mesh, "shop"), PeerMode::Disable);
    mesh.reject(
        &object("PeerAuthentication", "shop", "z-broken"),
        vec!["bad".into()],
    );
    assert_eq!(mode(&mesh, "shop"), PeerMode::Strict);
    assert_eq!(mode(&mesh, "other"), PeerMode::Permissive);
    // One in the root namespace stands for a mesh-wide STRICT: a namespace's
    // own policy still decides for it.
    mesh.reject(
        &object("PeerAuthentication", "istio-system", "mesh"),
        vec!["bad".into()],
    );
    assert_eq!(mode(&mesh, "other"), PeerMode::Strict);
    assert_eq!(mode(&mesh, "legacy"), PeerMode::Permissive);
}

#[test]
fn waypoints_come_from_the_service_or_its_namespace() {
    let mesh = mesh(
        r#"
{apiVersion: v1, kind: Namespace, metadata: {name: shop, labels: {istio.io/use-waypoint: shop-waypoint}}}
---
{apiVersion: v1, kind: Service, metadata: {name: cart, namespace: shop}, spec: {clusterIP: 10.96.0.1}}
---
{apiVersion: v1, kind: Service, metadata: {name: pay, namespace: shop, labels: {istio.io/use-waypoint: pay-waypoint}}, spec: {clusterIP: 10.96.0.2}}
---
{apiVersion: v1, kind: Service, metadata: {name: raw, namespace: shop, labels: {istio.io/use-waypoint: none}}, spec: {clusterIP: 10.96.0.3}}
"#,
    );
    let waypoint = |service| mesh.waypoint_for_service(&Key::new("shop", service));
    assert_eq!(
        waypoint("cart"),
        Some(WaypointRef(Key::new("shop", "shop-waypoint")))
    );
    assert_eq!(
        waypoint("pay"),
        Some(WaypointRef(Key::new("shop", "pay-waypoint")))
    );
    assert_eq!(waypoint("raw"), None);
    let bound = |name| mesh.services_bound_to(&WaypointRef(Key::new("shop", name)));
    assert_eq!(bound("shop-waypoint"), [&Key::new("shop", "cart")]);
    assert_eq!(bound("pay-waypoint"), [&Key::new("shop", "pay")]);
    assert!(bound("elsewhere").is_empty());
}

#[test]
fn the_outbound_traffic_policy_is_read_from_istios_mesh_config_in_the_root_namespace() {
    let config_map = |namespace: &str, name: &str, mesh: &str| {
        format!(
            "{{apiVersion: v1, kind: ConfigMap, metadata: {{name: {name}, namespace: {namespace}}}, \
              data: {{mesh: {mesh:?}, meshNetworks: 'networks: {{}}'}}}}\n---\n"
        )
    };
    let registry_only =
        "accessLogFile: /dev/stdout\noutboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n";
    let manifests = [
        config_map("istio-system", "istio", registry_only),
        // Another ConfigMap is not the mesh's, whatever it holds.
        config_map(
            "istio-system",
            "other",
            "outboundTrafficPolicy: {mode: ALLOW_ANY}",
        ),
        config_map("elsewhere", "istio", "defaultConfig: {}"),
    ]
    .concat();
    let mut model = mesh(&manifests);
    assert_eq!(
        model.outbound_mode("istio-system"),
        OutboundMode::RegistryOnly
    );
    assert_eq!(model.outbound_mode("elsewhere"), OutboundMode::AllowAny);
    assert_eq!(model.outbound_mode("nowhere"), OutboundMode::AllowAny);
    model.delete(&object("ConfigMap", "istio-system", "istio"));
    assert_eq!(model.outbound_mode("istio-system"), OutboundMode::AllowAny);

    let parsed = parse_manifests(&config_map(
        "istio-system",
        "istio",
        "outboundTrafficPolicy: {mode: BLOCK_ALL}",
    ));
    let problem = &parsed.problems[0];
    assert_eq!(problem.path, "data.mesh");
    assert!(problem.message.contains("BLOCK_ALL"), "{problem:?}");
}

#[test]
fn the_mesh_answers_for_its_services_and_service_entry_hosts() {
    let model = mesh(
        r#"
{apiVersion: v1, kind: Service, metadata: {name: reviews, namespace: shop}, spec: {clusterIP: 10.96.0.20, ports: [{port: 9080}]}}
---
{apiVersion: v1, kind: Service, metadata: {name: hidden, namespace: shop, annotations: {networking.istio.io/exportTo: "."}}, spec: {clusterIP: 10.96.0.21, ports: [{port: 80}]}}
---
{apiVersion: v1, kind: Service, metadata: {name: dual, namespace: shop}, spec: {clusterIP: 10.96.0.22, clusterIPs: [10.96.0.22, "fd00:96::22"], ports: [{port: 80}]}}
---
{apiVersion: networking.istio.io/v1, kind: ServiceEntry, metadata: {name: api, namespace: shop}, spec: {hosts: [api.example.com], addresses: [240.0.0.1, 10.0.0.0/8], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: 192.0.2.1}]}}
---
{apiVersion: networking.istio.io/v1, kind: ServiceEntry, metadata: {name: bare, namespace: shop}, spec: {hosts: [bare.example.com], ports: [{number: 443, name: tls}], resolution: DNS}}
---
{apiVersion: networking.istio.io/v1, kind: ServiceEntry, metadata: {name: dynamic, namespace: shop}, spec: {hosts: ["*.dyn.example.com"], ports: [{number: 80, name: http}], resolution: DYNAMIC_DNS}}
---
{apiVersion: networking.istio.io/v1, kind: ServiceEntry, metadata: {name: wild, namespace: shop}, spec: {hosts: ["*.wild.example.com"], ports: [{number: 80, name: http}], resolution: NONE}}
"#,
    );
    let known = |name: &str, from: &str| model.host_addresses(name, from);
    let ip = |text: &str| text.parse::<IpAddr>().unwrap();
    assert_eq!(
        known("reviews.shop.svc.cluster.local", "other"),
        Some(vec![ip("10.96.0.20")])
    );
    assert_eq!(known("hidden.shop.svc.cluster.local", "other"), None);
    assert_eq!(
        known("dual.shop.svc.cluster.local", "other"),
        Some(vec![ip("10.96.0.22"), ip("fd00:96::22")])
    );
    assert_eq!(
        known("hidden.shop.svc.cluster.local", "shop"),
        Some(vec![ip("10.96.0.21")])
    );
    assert_eq!(
        known("API.example.com", "other"),
        Some(vec![ip("240.0.0.1")])
    );
    let given = auto_address("bare.example.com");
    assert_eq!(known("bare.example.com", "other"), Some(vec![given.into()]));
    assert!(given.octets()[..2] == [240, 240] && (1..=254).contains(&given.octets()[3]));
    assert_eq!(known("nothing.example.com", "shop"), None);
    // DYNAMIC_DNS: every name under the wildcard shares one address (a
    // waypoint resolves each request's host); under another wildcard the
    // names are the DNS's to answer.
    let wildcard = auto_address("*.dyn.example.com");
    assert_eq!(
        known("a.dyn.example.com", "other"),
        Some(vec![wildcard.into()])
    );
    assert_eq!(
        known("B.x.dyn.example.com", "other"),
        Some(vec![wildcard.into()])
    );
    assert_eq!(known("a.wild.example.com", "other"), None);
    let found = model
        .service_entry_at(IpAddr::V4(wildcard), 80, "other")
        .unwrap();
    assert_eq!(found.key, &Key::new("shop", "dynamic"));
    // The address given maps back to its entry, on the entry's ports.
    let found = model
        .service_entry_at(IpAddr::V4(given), 443, "other")
        .unwrap();
    assert_eq!(found.key, &Key::new("shop", "bare"));
    assert!(model
        .service_entry_at(IpAddr::V4(given), 80, "other")
        .is_none());
}

#[test]
fn a_services_endpoints_are_found_by_address_from_every_slice_and_family() {
    let mesh = mesh(
        r#"
{apiVersion: v1, kind: Service, metadata: {name: cart, namespace: shop}, spec: {clusterIP: 10.96.0.42, ports: [{port: 80}]}}
---
{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: cart-b, namespace: shop, labels: {kubernetes.io/service-name: cart}}, addressType: IPv4, endpoints: [{addresses: [10.244.9.1]}, {addresses: [10.244.1.7]}]}
---
{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: cart-a, namespace: shop, labels: {kubernetes.io/service-name: cart}}, addressType: IPv6, endpoints: [{addresses: ["fd00::7"]}, {addresses: ["fd00::3"]}]}
"#,
    );
    let cart = &mesh.services[&Key::new("shop", "cart")];
    for ip in ["10.244.9.1", "10.244.1.7", "fd00::7", "fd00::3"] {
        assert!(cart.has_endpoint(ip.parse().unwrap()), "{ip}");
    }
    for ip in ["10.244.1.8", "10.96.0.42", "fd00::4"] {
        assert!(!cart.has_endpoint(ip.parse().unwrap()), "{ip}");
    }
}
