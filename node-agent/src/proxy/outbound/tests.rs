use ambit_config::document::parse_manifests;

use super::*;

const TRUST_DOMAIN: &str = "cluster.local";

/// `shop` is in the mesh with its waypoint `waypoint`; `pay` opts out of
/// it; `books` uses the waypoint of `shop`; `plain` is outside the mesh.
const MESH: &str = r#"
{apiVersion: v1, kind: Namespace, metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}}
---
{apiVersion: v1, kind: Namespace, metadata: {name: books, labels: {istio.io/dataplane-mode: ambient}}}
---
{apiVersion: v1, kind: Namespace, metadata: {name: plain}}
---
{apiVersion: v1, kind: Pod, metadata: {name: client, namespace: shop}, spec: {serviceAccountName: client}, status: {podIP: 10.244.0.2}}
---
{apiVersion: v1, kind: Pod, metadata: {name: cart-1, namespace: shop, labels: {app: cart}}, spec: {serviceAccountName: cart}, status: {podIP: 10.244.1.7, podIPs: [{ip: 10.244.1.7}, {ip: "fd00:244::1:7"}]}}
---
{apiVersion: v1, kind: Pod, metadata: {name: cart-2, namespace: shop, labels: {app: cart}}, spec: {serviceAccountName: cart}, status: {podIP: 10.244.2.8}}
---
{apiVersion: v1, kind: Pod, metadata: {name: waypoint-1, namespace: shop, labels: {istio.io/dataplane-mode: none}}, spec: {serviceAccountName: waypoint}, status: {podIP: 10.244.1.9, podIPs: [{ip: 10.244.1.9}, {ip: "fd00:244::1:9"}]}}
---
{apiVersion: v1, kind: Pod, metadata: {name: pinned, namespace: books, labels: {istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: shop}}, spec: {serviceAccountName: pinned}, status: {podIP: 10.244.2.5}}
---
{apiVersion: v1, kind: Pod, metadata: {name: web, namespace: plain}, status: {podIP: 10.244.3.3}}
---
{apiVersion: v1, kind: Service, metadata: {name: cart, namespace: shop}, spec: {clusterIP: 10.96.0.42, clusterIPs: [10.96.0.42, "fd00:96::42"], ports: [{name: http, port: 80, targetPort: 8080}]}}
---
{apiVersion: v1, kind: Service, metadata: {name: pay, namespace: shop, labels: {istio.io/use-waypoint: none}}, spec: {clusterIP: 10.96.0.43, clusterIPs: [10.96.0.43, "fd00:96::43"], ports: [{port: 80, targetPort: 8080}]}}
---
{apiVersion: v1, kind: Service, metadata: {name: empty, namespace: shop, labels: {istio.io/use-waypoint: none}}, spec: {clusterIP: 10.96.0.44, clusterIPs: [10.96.0.44, "fd00:96::44"], ports: [{port: 80}]}}
---
{apiVersion: v1, kind: Service, metadata: {name: catalog, namespace: books, labels: {istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: shop}}, spec: {clusterIP: 10.96.0.45, ports: [{port: 80}]}}
---
{apiVersion: v1, kind: Service, metadata: {name: gone, namespace: books, labels: {istio.io/use-waypoint: nowhere}}, spec: {clusterIP: 10.96.0.46, ports: [{port: 80}]}}
---
{apiVersion: v1, kind: Service, metadata: {name: waypoint, namespace: shop, labels: {istio.io/use-waypoint: none}}, spec: {clusterIP: 10.96.0.10, ports: [{name: mesh, port: 15008}]}}
---
{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: cart-1, namespace: shop, labels: {kubernetes.io/service-name: cart}}, addressType: IPv4, endpoints: [{addresses: [10.244.1.7]}, {addresses: [10.244.2.8]}], ports: [{name: http, port: 8080}]}
---
{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: pay-1, namespace: shop, labels: {kubernetes.io/service-name: pay}}, addressType: IPv4, endpoints: [{addresses: [10.244.1.7]}]}
---
{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: pay-2, namespace: shop, labels: {kubernetes.io/service-name: pay}}, addressType: IPv6, endpoints: [{addresses: ["fd00:244::1:7"]}]}
---
{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: waypoint-1, namespace: shop, labels: {kubernetes.io/service-name: waypoint}}, addressType: IPv4, endpoints: [{addresses: [10.244.1.9]}], ports: [{name: mesh, port: 15008}]}
---
{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: waypoint-2, namespace: shop, labels: {kubernetes.io/service-name: waypoint}}, addressType: IPv6, endpoints: [{addresses: ["fd00:244::1:9"]}], ports: [{name: mesh, port: 15008}]}
---
{apiVersion: networking.istio.io/v1, kind: ServiceEntry, metadata: {name: api, namespace: shop, labels: {istio.io/use-waypoint: none}}, spec: {hosts: [api.example.com], addresses: [240.240.0.10], ports: [{number: 80, name: http, targetPort: 8080}], location: MESH_EXTERNAL, resolution: STATIC, endpoints: [{address: 192.0.2.10}, {address: 192.0.2.11, ports: {http: 9090}}]}}
---
{apiVersion: networking.istio.io/v1, kind: ServiceEntry, metadata: {name: partners, namespace: shop, labels: {istio.io/use-waypoint: none}}, spec: {hosts: [partners.example.com], addresses: [198.51.100.0/24], ports: [{number: 443, name: tls}], resolution: NONE}}
---
{apiVersion: networking.istio.io/v1, kind: ServiceEntry, metadata: {name: one-partner, namespace: shop, labels: {istio.io/use-waypoint: none}}, spec: {hosts: [one.partners.example.com], addresses: [198.51.100.7], ports: [{number: 443, name: tls}], resolution: STATIC, endpoints: [{address: 203.0.113.7}, {address: "2001:db8::7"}]}}
---
{apiVersion: networking.istio.io/v1, kind: ServiceEntry, metadata: {name: v6-only, namespace: shop, labels: {istio.io/use-waypoint: none}}, spec: {hosts: [v6.example.com], addresses: [240.240.0.70], ports: [{number: 443, name: tls}], resolution: STATIC, endpoints: [{address: "2001:db8::70"}]}}
---
{apiVersion: networking.istio.io/v1, kind: ServiceEntry, metadata: {name: private, namespace: books}, spec: {hosts: [private.example.com], addresses: [240.240.0.20], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: 10.244.1.7, ports: {http: 8080}}], exportTo: ["."]}}
---
{apiVersion: networking.istio.io/v1, kind: ServiceEntry, metadata: {name: empty, namespace: shop, labels: {istio.io/use-waypoint: none}}, spec: {hosts: [empty.example.com], addresses: [240.240.0.30], ports: [{number: 80, name: http}], resolution: STATIC, workloadSelector: {labels: {app: nothing}}}}
---
{apiVersion: networking.istio.io/v1, kind: ServiceEntry, metadata: {name: web, namespace: plain}, spec: {hosts: [web.plain.example], addresses: [10.244.3.3/32, 10.244.1.7/32], ports: [{number: 81, name: http}], resolution: NONE}}
---
{apiVersion: networking.istio.io/v1, kind: ServiceEntry, metadata: {name: dns-api, namespace: shop, labels: {istio.io/use-waypoint: none}}, spec: {hosts: [dns.example.com], addresses: [240.240.0.50], ports: [{number: 443, name: tls}], resolution: DNS}}
---
{apiVersion: networking.istio.io/v1, kind: ServiceEntry, metadata: {name: dns-pool, namespace: shop, labels: {istio.io/use-waypoint: none}}, spec: {hosts: [pool.example.com], addresses: [240.240.0.51], ports: [{number: 443, name: tls}], resolution: DNS_ROUND_ROBIN, endpoints: [{address: a.example.com, ports: {tls: 8443}}, {address: 192.0.2.20}]}}
---
{apiVersion: networking.istio.io/v1, kind: ServiceEntry, metadata: {name: dynamic, namespace: shop, labels: {istio.io/use-waypoint: none}}, spec: {hosts: ["*.dyn.example"], ports: [{number: 80, name: http}], resolution: DYNAMIC_DNS}}
---
{apiVersion: networking.istio.io/v1, kind: ServiceEntry, metadata: {name: egress, namespace: shop}, spec: {hosts: [egress.example.com], addresses: [240.240.0.60], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: 192.0.2.60}]}}
---
{apiVersion: networking.istio.io/v1, kind: ServiceEntry, metadata: {name: carts, namespace: shop, labels: {istio.io/use-waypoint: none}}, spec: {hosts: [carts.example.com], addresses: [240.240.0.40], ports: [{number: 80, name: http, targetPort: 8080}], resolution: STATIC, workloadSelector: {labels: {app: cart}}}}
"#;

fn mesh() -> Mesh {
    let parsed = parse_manifests(MESH);
    assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    Mesh::from_resources(parsed.resources)
}

fn at(address: &str) -> SocketAddr {
    address.parse().unwrap()
}

fn id(namespace: &str, service_account: &str) -> Identity {
    Identity::new(TRUST_DOMAIN, namespace, service_account)
}

fn hbone(target: &str, namespace: &str, service_account: &str) -> Plan {
    Plan::Hbone {
        target: at(target),
        peer: id(namespace, service_account),
    }
}

/// Through the (dual-stack) waypoint, over the target's family.
fn waypoint(target: &str) -> Plan {
    let target = at(target);
    Plan::Waypoint {
        waypoint: match target.ip() {
            IpAddr::V4(_) => "10.244.1.9".parse().unwrap(),
            IpAddr::V6(_) => "fd00:244::1:9".parse().unwrap(),
        },
        peer: id("shop", "waypoint"),
        target,
    }
}

fn resolve(host: &str, port: u16, spread: Option<Key>) -> Plan {
    Plan::Resolve {
        host: host.into(),
        port,
        spread,
    }
}

fn refused(reason: &str) -> Plan {
    Plan::Refuse {
        reason: reason.into(),
        flags: ResponseFlags::ConnectFailed,
    }
}

/// (caller, trust domain, original destination, turn) -> plan, service
type Case<'a> = (
    &'a Key,
    Option<&'a str>,
    Option<&'a str>,
    usize,
    Plan,
    Option<&'a str>,
);

#[test]
fn plans() {
    let mesh = mesh();
    let client = Key::new("shop", "client");
    let waypoint_pod = Key::new("shop", "waypoint-1");
    let pinned = Key::new("books", "pinned");
    let td = Some(TRUST_DOMAIN);
    let dynamic = format!("{}:80", ambit_config::model::auto_address("*.dyn.example"));
    #[rustfmt::skip]
    let cases: Vec<Case<'_>> = vec![
        (&client, td, None, 0, refused("its original destination is unknown"), None),
        // Pods: outside the mesh plain, in the mesh over HBONE.
        (&client, td, Some("10.244.3.3:80"), 0, Plan::Direct { target: at("10.244.3.3:80") }, None),
        (&client, td, Some("192.0.2.1:443"), 0, Plan::Direct { target: at("192.0.2.1:443") }, None),
        (&client, td, Some("10.244.1.7:8080"), 0, hbone("10.244.1.7:8080", "shop", "cart"), None),
        (&client, None, Some("10.244.1.7:8080"), 0, Plan::Direct { target: at("10.244.1.7:8080") }, None),
        // A Service: one of its endpoints in turn, at the target port.
        (&client, td, Some("10.96.0.43:80"), 0, hbone("10.244.1.7:8080", "shop", "cart"), Some("pay.shop")),
        (&client, None, Some("10.96.0.43:80"), 0, Plan::Direct { target: at("10.244.1.7:8080") }, Some("pay.shop")),
        (&client, td, Some("10.96.0.44:80"), 0, refused("service empty.shop has no ready IPv4 endpoint"), Some("empty.shop")),
        (&client, td, Some("10.96.0.43:81"), 0, Plan::Direct { target: at("10.96.0.43:81") }, None),
        // Bound to a waypoint: its namespace's, or one in another namespace.
        (&client, td, Some("10.96.0.42:80"), 0, waypoint("10.96.0.42:80"), Some("cart.shop")),
        (&client, td, Some("10.96.0.45:80"), 0, waypoint("10.96.0.45:80"), Some("catalog.books")),
        (&client, None, Some("10.96.0.42:80"), 0, refused("its waypoint shop/waypoint is reached over HBONE, and this agent holds no identities"), Some("cart.shop")),
        (&client, td, Some("10.96.0.46:80"), 0, refused("its waypoint books/nowhere does not exist"), Some("gone.books")),
        // A pod labelled for a waypoint, addressed by its IP.
        (&client, td, Some("10.244.2.5:9000"), 0, waypoint("10.244.2.5:9000"), None),
        // ServiceEntries: STATIC to an endpoint in turn (at the port it
        // names, else targetPort); NONE to the address dialled; the
        // narrowest address wins; exportTo hides; a port it does not
        // declare is not its.
        (&client, td, Some("240.240.0.10:80"), 0, Plan::Direct { target: at("192.0.2.10:8080") }, Some("api.example.com")),
        (&client, td, Some("240.240.0.10:80"), 1, Plan::Direct { target: at("192.0.2.11:9090") }, Some("api.example.com")),
        (&client, td, Some("198.51.100.9:443"), 0, Plan::Direct { target: at("198.51.100.9:443") }, Some("partners.example.com")),
        (&client, td, Some("198.51.100.7:443"), 0, Plan::Direct { target: at("203.0.113.7:443") }, Some("one.partners.example.com")),
        (&client, td, Some("198.51.100.7:443"), 1, Plan::Direct { target: at("203.0.113.7:443") }, Some("one.partners.example.com")),
        (&client, td, Some("240.240.0.70:443"), 0, Plan::Direct { target: at("[2001:db8::70]:443") }, Some("v6.example.com")),
        (&client, td, Some("240.240.0.10:81"), 0, Plan::Direct { target: at("240.240.0.10:81") }, None),
        (&client, td, Some("240.240.0.20:80"), 0, Plan::Direct { target: at("240.240.0.20:80") }, None),
        (&pinned, td, Some("240.240.0.20:80"), 0, hbone("10.244.1.7:8080", "shop", "cart"), Some("private.example.com")),
        (&client, td, Some("240.240.0.30:80"), 0, refused("ServiceEntry shop/empty has no endpoint"), Some("empty.example.com")),
        // A pod outside the mesh may be declared by one; a pod of the mesh
        // is reached as itself.
        (&client, td, Some("10.244.3.3:81"), 0, Plan::Direct { target: at("10.244.3.3:81") }, Some("web.plain.example")),
        (&client, td, Some("10.244.1.7:81"), 0, hbone("10.244.1.7:81", "shop", "cart"), None),
        // DNS: its host resolved, each address in turn; DNS_ROUND_ROBIN:
        // its endpoints' names (an address as it is), the first address.
        (&client, td, Some("240.240.0.50:443"), 0, resolve("dns.example.com", 443, Some(Key::new("shop", "dns-api"))), Some("dns.example.com")),
        (&client, td, Some("240.240.0.51:443"), 0, resolve("a.example.com", 8443, None), Some("pool.example.com")),
        (&client, td, Some("240.240.0.51:443"), 1, Plan::Direct { target: at("192.0.2.20:443") }, Some("pool.example.com")),
        // DYNAMIC_DNS, at the address Ambit gave its wildcard: only a
        // waypoint resolves each request's host.
        (&client, td, Some(dynamic.as_str()), 0, refused("ServiceEntry shop/dynamic resolves DYNAMIC_DNS, which only a waypoint does (label it istio.io/use-waypoint)"), Some("*.dyn.example")),
        // Bound to a waypoint by its namespace: through it (an egress
        // gateway), asking for the address dialled; the waypoint's own
        // traffic goes to the endpoints.
        (&client, td, Some("240.240.0.60:80"), 0, waypoint("240.240.0.60:80"), Some("egress.example.com")),
        (&waypoint_pod, td, Some("240.240.0.60:80"), 0, Plan::Direct { target: at("192.0.2.60:80") }, Some("egress.example.com")),
        // A workloadSelector's pods are its endpoints, reached over HBONE.
        (&client, td, Some("240.240.0.40:80"), 1, hbone("10.244.2.8:8080", "shop", "cart"), Some("carts.example.com")),
        // The waypoint's own traffic goes to the endpoints, never back to it.
        (&waypoint_pod, td, Some("10.96.0.42:80"), 1, hbone("10.244.2.8:8080", "shop", "cart"), Some("cart.shop")),
        (&waypoint_pod, td, Some("10.244.2.5:9000"), 0, hbone("10.244.2.5:9000", "books", "pinned"), None),
        // IPv6 as IPv4: pods by their IPv6 addresses; a dual-stack
        // Service's IPv6 VIP to an endpoint of its IPv6 slices, as
        // kube-proxy picks; through a waypoint (over IPv6, as it has an
        // IPv6 address) asking for the IPv6 address dialled.
        (&client, td, Some("[fd00:244::1:7]:8080"), 0, hbone("[fd00:244::1:7]:8080", "shop", "cart"), None),
        (&client, td, Some("[2001:db8::1]:443"), 0, Plan::Direct { target: at("[2001:db8::1]:443") }, None),
        (&client, td, Some("[fd00:96::43]:80"), 0, hbone("[fd00:244::1:7]:8080", "shop", "cart"), Some("pay.shop")),
        (&client, td, Some("[fd00:96::44]:80"), 0, refused("service empty.shop has no ready IPv6 endpoint"), Some("empty.shop")),
        (&client, td, Some("[fd00:96::42]:80"), 0, waypoint("[fd00:96::42]:80"), Some("cart.shop")),
    ];
    for (caller, trust_domain, original, turn, expected, service) in cases {
        let inputs = (trust_domain, OutboundMode::AllowAny);
        let planned = plan(&mesh, inputs, caller, original.map(at), &mut |_| turn);
        // Services by `name.namespace`, entries by their host.
        let named =
            planned
                .service
                .as_ref()
                .map(|s| match s.host.ends_with(".svc.cluster.local") {
                    true => format!("{}.{}", s.name, s.namespace),
                    false => s.host.clone(),
                });
        assert_eq!(
            (planned.plan, named.as_deref()),
            (expected, service),
            "{caller} to {original:?}"
        );
    }
    // Istio's labels: a Service by its cluster-local name, an entry by
    // its host in the entry's namespace.
    let planned = |original: &str| {
        let inputs = (td, OutboundMode::AllowAny);
        plan(&mesh, inputs, &client, Some(at(original)), &mut |_| 0).service
    };
    assert_eq!(
        planned("10.96.0.43:80").map(|s| s.host),
        Some("pay.shop.svc.cluster.local".to_string())
    );
    assert_eq!(
        planned("240.240.0.10:80"),
        Some(DestinationService::entry("api.example.com", "shop"))
    );
}

#[test]
fn a_services_connections_take_its_endpoints_in_turn() {
    let mesh = mesh();
    let turns = Turns::default();
    let waypoint_pod = Key::new("shop", "waypoint-1");
    let targets: Vec<Plan> = (0..4)
        .map(|_| {
            let original = Some(at("10.96.0.42:80"));
            let inputs = (None, OutboundMode::AllowAny);
            plan(&mesh, inputs, &waypoint_pod, original, &mut |k| {
                turns.next(k)
            })
            .plan
        })
        .collect();
    let direct = |target| Plan::Direct { target: at(target) };
    assert_eq!(
        targets,
        [
            direct("10.244.1.7:8080"),
            direct("10.244.2.8:8080"),
            direct("10.244.1.7:8080"),
            direct("10.244.2.8:8080")
        ]
    );
}

#[test]
fn registry_only_sends_what_the_registry_lacks_nowhere() {
    let mesh = mesh();
    let client = Key::new("shop", "client");
    let planned = |original: &str| {
        let inputs = (Some(TRUST_DOMAIN), OutboundMode::RegistryOnly);
        plan(&mesh, inputs, &client, Some(at(original)), &mut |_| 0)
    };
    assert_eq!(
        planned("192.0.2.1:443"),
        Planned {
            plan: Plan::Refuse {
                reason: "192.0.2.1:443 is no Service, pod or ServiceEntry address, and the mesh's \
                         outboundTrafficPolicy is REGISTRY_ONLY"
                    .into(),
                flags: ResponseFlags::NoRoute,
            },
            service: Some(DestinationService::black_hole()),
        }
    );
    // What the registry holds passes: ServiceEntries, Services, pods
    // (in the mesh or not).
    for (original, expected) in [
        (
            "240.240.0.10:80",
            Plan::Direct {
                target: at("192.0.2.10:8080"),
            },
        ),
        (
            "198.51.100.9:443",
            Plan::Direct {
                target: at("198.51.100.9:443"),
            },
        ),
        ("10.96.0.43:80", hbone("10.244.1.7:8080", "shop", "cart")),
        (
            "10.244.3.3:80",
            Plan::Direct {
                target: at("10.244.3.3:80"),
            },
        ),
    ] {
        assert_eq!(planned(original).plan, expected, "{original}");
    }
}
