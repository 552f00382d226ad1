use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::document::parse_manifests;
use crate::model::{Key, Mesh};

const ROOT: &str = "istio-system";

fn mesh(manifests: &str) -> Mesh {
    let parsed = parse_manifests(manifests);
    assert_eq!(parsed.problems, vec![]);
    Mesh::from_resources(parsed.resources)
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn mode(mesh: &Mesh, namespace: &str, app: &str, port: u16) -> PeerMode {
    let labels = labels(&[("app", app)]);
    let target = Target {
        namespace,
        labels: &labels,
    };
    mtls_mode(mesh, ROOT, target, port)
}

fn peer_authentication(namespace: &str, name: &str, body: &str) -> String {
    format!(
        "{{apiVersion: security.istio.io/v1, kind: PeerAuthentication, \
         metadata: {{name: {name}, namespace: {namespace}}}, spec: {body}}}\n---\n"
    )
}

#[test]
fn peer_authentication_default_is_permissive() {
    assert_eq!(
        mode(&Mesh::default(), "shop", "cart", 80),
        PeerMode::Permissive
    );
}

#[test]
fn peer_authentication_follows_istios_precedence() {
    let manifests = [
        peer_authentication(ROOT, "mesh", "{mtls: {mode: STRICT}}"),
        peer_authentication("legacy", "ns", "{mtls: {mode: PERMISSIVE}}"),
        peer_authentication("inherit", "ns", "{mtls: {mode: UNSET}}"),
        peer_authentication(
            "legacy",
            "db",
            "{selector: {matchLabels: {app: db}}, mtls: {mode: STRICT}, \
             portLevelMtls: {9104: {mode: DISABLE}, 5432: {mode: UNSET}}}",
        ),
        peer_authentication(
            "legacy",
            "metrics-only",
            "{selector: {matchLabels: {app: exporter}}, portLevelMtls: {9100: {mode: PERMISSIVE}}}",
        ),
        // A selector in the root namespace picks workloads of the root
        // namespace only; it does not make a mesh-wide exception.
        peer_authentication(
            ROOT,
            "root-selector",
            "{selector: {matchLabels: {app: cart}}, mtls: {mode: DISABLE}}",
        ),
    ]
    .concat();
    let mesh = mesh(&manifests);
    let cases = [
        // (namespace, app, port) -> mode
        (("shop", "cart", 80), PeerMode::Strict), // mesh-wide
        (("inherit", "cart", 80), PeerMode::Strict), // UNSET inherits the mesh
        (("legacy", "web", 80), PeerMode::Permissive), // namespace over mesh
        (("legacy", "db", 5432), PeerMode::Strict), // workload over namespace; port UNSET inherits it
        (("legacy", "db", 9104), PeerMode::Disable), // port over workload
        (("legacy", "exporter", 9100), PeerMode::Permissive),
        (("legacy", "exporter", 80), PeerMode::Permissive), // no workload mode: namespace
        ((ROOT, "cart", 80), PeerMode::Disable),
    ];
    for ((namespace, app, port), expected) in cases {
        assert_eq!(
            mode(&mesh, namespace, app, port),
            expected,
            "{namespace}/{app}:{port}"
        );
    }
}

const CLIENT: &str = "cluster.local/ns/shop/sa/client";
const SERVER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 244, 2, 2));

fn caller(principal: Option<&str>, ip: [u8; 4], port: u16) -> Caller<'_> {
    Caller {
        ip: IpAddr::from(ip),
        principal,
        destination_ip: SERVER_IP,
        destination_port: port,
    }
}

fn authorization_policy(namespace: &str, name: &str, body: &str) -> String {
    format!(
        "{{apiVersion: security.istio.io/v1, kind: AuthorizationPolicy, \
         metadata: {{name: {name}, namespace: {namespace}}}, spec: {body}}}\n---\n"
    )
}

fn verdict(mesh: &Mesh, app: &str, caller: &Caller<'_>) -> Verdict {
    let labels = labels(&[("app", app)]);
    let target = Target {
        namespace: "shop",
        labels: &labels,
    };
    authorize(mesh, ROOT, target, caller).verdict
}

fn denied_by(namespace: &str, name: &str) -> Verdict {
    Verdict::Deny(Denial::Matched(Key::new(namespace, name)))
}

#[test]
fn no_policy_allows() {
    let anyone = caller(None, [10, 244, 1, 9], 80);
    assert_eq!(verdict(&Mesh::default(), "cart", &anyone), Verdict::Allow);
}

#[test]
fn allow_policies_admit_only_what_they_match() {
    let mesh = mesh(&authorization_policy(
        "shop",
        "cart-from-client",
        &format!(
            "{{selector: {{matchLabels: {{app: cart}}}}, action: ALLOW, rules: [\
             {{from: [{{source: {{principals: [\"{CLIENT}\"]}}}}], to: [{{operation: {{ports: [\"8080\"]}}}}]}},\
             {{from: [{{source: {{ipBlocks: [10.244.3.0/24], notIpBlocks: [10.244.3.7]}}}}]}},\
             {{from: [{{source: {{namespaces: [\"ops-*\"]}}}}]}}]}}"
        ),
    ));
    let cases = [
        (caller(Some(CLIENT), [10, 244, 1, 2], 8080), true),
        // the right caller, another port
        (caller(Some(CLIENT), [10, 244, 1, 2], 9090), false),
        // another principal
        (
            caller(
                Some("cluster.local/ns/shop/sa/other"),
                [10, 244, 1, 2],
                8080,
            ),
            false,
        ),
        // plaintext: no principal at all
        (caller(None, [10, 244, 1, 2], 8080), false),
        // by IP block, plaintext included, but not the excluded address
        (caller(None, [10, 244, 3, 4], 1), true),
        (caller(None, [10, 244, 3, 7], 1), false),
        // by namespace prefix, derived from the principal
        (
            caller(Some("cluster.local/ns/ops-tools/sa/x"), [1, 1, 1, 1], 1),
            true,
        ),
        (
            caller(Some("cluster.local/ns/dev/sa/x"), [1, 1, 1, 1], 1),
            false,
        ),
    ];
    for (caller, allowed) in cases {
        let verdict = verdict(&mesh, "cart", &caller);
        let expected = match allowed {
            true => Verdict::Allow,
            false => Verdict::Deny(Denial::NoAllowMatched),
        };
        assert_eq!(verdict, expected, "{caller:?}");
    }
    // The selector limits the policy to cart: other workloads stay open.
    let stranger = caller(None, [192, 168, 0, 1], 1);
    assert_eq!(verdict(&mesh, "web", &stranger), Verdict::Allow);
}

#[test]
fn deny_wins_over_allow_and_audit_only_marks() {
    let manifests = [
        authorization_policy("shop", "allow-all", "{action: ALLOW, rules: [{}]}"),
        authorization_policy(
            "shop",
            "no-admin-port",
            "{action: DENY, rules: [{to: [{operation: {ports: [\"9000\"]}}]}]}",
        ),
        authorization_policy(
            ROOT,
            "no-dev",
            "{action: DENY, rules: [{from: [{source: {notNamespaces: [shop, ops]}}]}]}",
        ),
        authorization_policy(
            "shop",
            "watch-plaintext",
            "{action: AUDIT, rules: [{from: [{source: {notPrincipals: [\"*\"]}}]}]}",
        ),
    ]
    .concat();
    let mesh = mesh(&manifests);
    assert_eq!(
        verdict(&mesh, "cart", &caller(Some(CLIENT), [10, 0, 0, 1], 80)),
        Verdict::Allow
    );
    assert_eq!(
        verdict(&mesh, "cart", &caller(Some(CLIENT), [10, 0, 0, 1], 9000)),
        denied_by("shop", "no-admin-port")
    );
    // The mesh-wide DENY, from the root namespace; plaintext has no
    // namespace, so it is not in the allowed ones either.
    let dev = "cluster.local/ns/dev/sa/x";
    assert_eq!(
        verdict(&mesh, "cart", &caller(Some(dev), [10, 0, 0, 1], 80)),
        denied_by(ROOT, "no-dev")
    );
    let labels = labels(&[("app", "cart")]);
    let target = Target {
        namespace: "shop",
        labels: &labels,
    };
    let ops = caller(Some("cluster.local/ns/ops/sa/x"), [10, 0, 0, 1], 80);
    assert_eq!(
        authorize(&mesh, ROOT, target, &ops),
        Decision {
            verdict: Verdict::Allow,
            audited: vec![]
        }
    );
    let plaintext = caller(None, [10, 0, 0, 1], 80);
    assert_eq!(
        authorize(&mesh, ROOT, target, &plaintext),
        Decision {
            verdict: denied_by(ROOT, "no-dev"),
            audited: vec![]
        }
    );
}

#[test]
fn audit_records_matches_without_deciding() {
    let mesh = mesh(&authorization_policy(
        "shop",
        "watch-plaintext",
        "{action: AUDIT, rules: [{from: [{source: {notPrincipals: [\"*\"]}}]}]}",
    ));
    let labels = labels(&[("app", "cart")]);
    let target = Target {
        namespace: "shop",
        labels: &labels,
    };
    let plaintext = authorize(&mesh, ROOT, target, &caller(None, [10, 0, 0, 1], 80));
    assert_eq!(plaintext.verdict, Verdict::Allow);
    assert_eq!(plaintext.audited, vec![Key::new("shop", "watch-plaintext")]);
    let mtls = authorize(
        &mesh,
        ROOT,
        target,
        &caller(Some(CLIENT), [10, 0, 0, 1], 80),
    );
    assert_eq!(mtls.audited, vec![]);
}

#[test]
fn empty_policies_follow_istio() {
    // ALLOW with no rules allows nothing; a rule `{}` allows everything;
    // DENY with no rules denies nothing.
    let anyone = caller(Some(CLIENT), [10, 0, 0, 1], 80);
    let allow_nothing = mesh(&authorization_policy("shop", "nothing", "{}"));
    assert_eq!(
        verdict(&allow_nothing, "cart", &anyone),
        Verdict::Deny(Denial::NoAllowMatched)
    );
    let deny_nothing = mesh(&authorization_policy("shop", "d", "{action: DENY}"));
    assert_eq!(verdict(&deny_nothing, "cart", &anyone), Verdict::Allow);
}

#[test]
fn l7_fields_fail_closed_at_l4() {
    let get_only = authorization_policy(
        "shop",
        "get-only",
        &format!(
            "{{action: ALLOW, rules: [{{from: [{{source: {{principals: [\"{CLIENT}\"]}}}}], \
             to: [{{operation: {{methods: [GET]}}}}]}}]}}"
        ),
    );
    let no_admin_path = authorization_policy(
        "shop",
        "no-admin-path",
        "{action: DENY, rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]}",
    );
    let client = caller(Some(CLIENT), [10, 0, 0, 1], 80);
    // An ALLOW rule naming methods cannot be checked: it admits nothing.
    assert_eq!(
        verdict(&mesh(&get_only), "cart", &client),
        Verdict::Deny(Denial::NoAllowMatched)
    );
    // A DENY rule naming paths is taken as matched: it denies all it could.
    assert_eq!(
        verdict(&mesh(&no_admin_path), "cart", &client),
        denied_by("shop", "no-admin-path")
    );
    // An L7 `when` key likewise.
    let header_deny = authorization_policy(
        "shop",
        "header",
        "{action: DENY, rules: [{when: [{key: \"request.headers[x-debug]\", values: [\"1\"]}]}]}",
    );
    assert_eq!(
        verdict(&mesh(&header_deny), "cart", &client),
        denied_by("shop", "header")
    );
    // A policy attached to a waypoint by targetRef is the waypoint's.
    let waypoint_only = authorization_policy(
        "shop",
        "at-waypoint",
        "{targetRefs: [{kind: Service, group: \"\", name: cart}], action: DENY, rules: [{}]}",
    );
    assert_eq!(
        verdict(&mesh(&waypoint_only), "cart", &client),
        Verdict::Allow
    );
}

#[test]
fn l4_when_keys_are_enforced() {
    let mesh = mesh(&authorization_policy(
        "shop",
        "l4-when",
        "{action: ALLOW, rules: [{when: [\
         {key: source.ip, values: [10.0.0.0/8]},\
         {key: destination.port, notValues: [\"22\"]},\
         {key: source.namespace, values: [shop]}]}]}",
    ));
    assert_eq!(
        verdict(&mesh, "cart", &caller(Some(CLIENT), [10, 1, 1, 1], 80)),
        Verdict::Allow
    );
    for denied in [
        caller(Some(CLIENT), [192, 168, 1, 1], 80),
        caller(Some(CLIENT), [10, 1, 1, 1], 22),
        caller(None, [10, 1, 1, 1], 80),
    ] {
        assert_eq!(
            verdict(&mesh, "cart", &denied),
            Verdict::Deny(Denial::NoAllowMatched),
            "{denied:?}"
        );
    }
}

#[test]
fn an_unreadable_policy_denies_its_namespace() {
    let mut mesh = Mesh::default();
    let broken = crate::document::ObjectRef {
        kind: "AuthorizationPolicy".into(),
        namespace: "shop".into(),
        name: "broken".into(),
    };
    mesh.reject(
        &broken,
        vec!["spec.rules[0].from[0].source.ipBlocks[0]: not an IP".into()],
    );
    let anyone = caller(Some(CLIENT), [10, 0, 0, 1], 80);
    assert_eq!(
        verdict(&mesh, "cart", &anyone),
        Verdict::Deny(Denial::Invalid(Key::new("shop", "broken")))
    );
}

#[test]
fn service_accounts_and_trust_domains_are_enforced() {
    let mesh = mesh(
        &[
            authorization_policy(
                "shop",
                "cart-from-client-sa",
                "{selector: {matchLabels: {app: cart}}, action: ALLOW, rules: [\
             {from: [{source: {serviceAccounts: [shop/client], trustDomains: [cluster.local]}}]}]}",
            ),
            authorization_policy(
                "shop",
                "no-legacy",
                "{action: DENY, rules: [{from: [{source: {notTrustDomains: [\"cluster.*\"]}}]}]}",
            ),
            authorization_policy(
                "shop",
                "ledger-not-from-batch",
                "{selector: {matchLabels: {app: ledger}}, action: DENY, rules: [\
             {from: [{source: {notServiceAccounts: [shop/client]}}]}]}",
            ),
        ]
        .concat(),
    );
    let from = |principal| caller(Some(principal), [10, 244, 1, 2], 8080);
    let no_allow = Verdict::Deny(Denial::NoAllowMatched);
    let cases = [
        ("cart", from(CLIENT), Verdict::Allow),
        // the same account name in another namespace
        (
            "cart",
            from("cluster.local/ns/dev/sa/client"),
            no_allow.clone(),
        ),
        // the same account from a trust domain the ALLOW does not name,
        // which the namespace-wide DENY does not catch either
        (
            "cart",
            from("cluster.example/ns/shop/sa/client"),
            no_allow.clone(),
        ),
        // a foreign trust domain is denied everywhere in the namespace
        (
            "ledger",
            from("partner.org/ns/shop/sa/client"),
            denied_by("shop", "no-legacy"),
        ),
        ("ledger", from(CLIENT), Verdict::Allow),
        (
            "ledger",
            from("cluster.local/ns/shop/sa/batch"),
            denied_by("shop", "ledger-not-from-batch"),
        ),
        // plaintext has no service account: a `not` list denies it
        (
            "ledger",
            caller(None, [10, 244, 1, 2], 8080),
            denied_by("shop", "ledger-not-from-batch"),
        ),
    ];
    for (app, caller, expected) in cases {
        assert_eq!(verdict(&mesh, app, &caller), expected, "{app} {caller:?}");
    }
}

#[test]
fn service_accounts_are_namespace_slash_name_and_alone() {
    let parsed = parse_manifests(&authorization_policy(
        "shop",
        "bad",
        "{rules: [{from: [{source: {serviceAccounts: [client, \"shop/*\"], principals: [x]}}]}]}",
    ));
    let problems: Vec<String> = parsed.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        problems,
        [
            "error: AuthorizationPolicy shop/bad: spec.rules[0].from[0].source: serviceAccounts cannot be set with principals or namespaces (or their not forms)",
            "error: AuthorizationPolicy shop/bad: spec.rules[0].from[0].source.serviceAccounts[0]: \"client\" is not namespace/name (without wildcards)",
            "error: AuthorizationPolicy shop/bad: spec.rules[0].from[0].source.serviceAccounts[1]: \"shop/*\" is not namespace/name (without wildcards)",
        ]
    );
}

/// A request to `reviews` (in `shop`) through the waypoint `shop/waypoint`.
fn request_verdict(
    mesh: &Mesh,
    principal: &str,
    method: &str,
    path: &str,
    user: Option<&str>,
) -> Verdict {
    let waypoint = Key::new("shop", "waypoint");
    let service = Key::new("shop", "reviews");
    let waypoint_labels = labels(&[("gateway.networking.k8s.io/gateway-name", "waypoint")]);
    let target = WaypointTarget {
        waypoint: &waypoint,
        waypoint_labels: &waypoint_labels,
        service: &service,
    };
    let caller = caller(Some(principal), [10, 244, 1, 2], 9080);
    let header = |name: &str| {
        (name == "x-user")
            .then(|| user.map(str::to_string))
            .flatten()
    };
    let request = HttpRequest {
        method,
        host: "reviews.shop.svc.cluster.local:9080",
        path,
        header: &header,
    };
    authorize_request(mesh, ROOT, target, &caller, &request).verdict
}

#[test]
fn a_waypoint_enforces_the_policies_attached_to_it_by_method_path_host_and_header() {
    let to_reviews = "targetRefs: [{kind: Service, group: \"\", name: reviews}]";
    let mesh = mesh(&[
        authorization_policy(
            "shop",
            "reviews-readers",
            &format!(
                "{{{to_reviews}, action: ALLOW, rules: [\
                 {{to: [{{operation: {{methods: [GET], paths: [\"/reviews/*\", \"/items/{{*}}/info\"], \
                 hosts: [\"reviews.shop.svc.cluster.local\"]}}}}]}},\
                 {{from: [{{source: {{principals: [\"{CLIENT}\"]}}}}], to: [{{operation: {{methods: [POST]}}}}], \
                 when: [{{key: \"request.headers[x-user]\", values: [\"admin-*\"]}}]}}]}}"
            ),
        ),
        authorization_policy(
            "shop",
            "no-internal",
            "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], \
             action: DENY, rules: [{to: [{operation: {paths: [\"/reviews/internal*\"]}}]}]}",
        ),
        // Neither attached here: another Service's, and a selector policy
        // for pods (an agent's to enforce).
        authorization_policy(
            "shop",
            "ratings-only",
            "{targetRefs: [{kind: Service, name: ratings}], action: ALLOW, rules: [{to: [{operation: {methods: [DELETE]}}]}]}",
        ),
        authorization_policy(
            "shop",
            "pods",
            "{selector: {matchLabels: {app: reviews}}, action: DENY, rules: [{}]}",
        ),
    ]
    .concat());
    let no_allow = Verdict::Deny(Denial::NoAllowMatched);
    let cases = [
        ("GET", "/reviews/1", None, Verdict::Allow),
        ("GET", "/items/7/info", None, Verdict::Allow),
        ("GET", "/items/7/8/info", None, no_allow.clone()),
        ("PUT", "/reviews/1", None, no_allow.clone()),
        ("GET", "/ratings/1", None, no_allow.clone()),
        ("POST", "/anything", Some("admin-jane"), Verdict::Allow),
        ("POST", "/anything", Some("jane"), no_allow.clone()),
        ("POST", "/anything", None, no_allow.clone()),
        (
            "GET",
            "/reviews/internal/x",
            None,
            denied_by("shop", "no-internal"),
        ),
    ];
    for (method, path, user, expected) in cases {
        assert_eq!(
            request_verdict(&mesh, CLIENT, method, path, user),
            expected,
            "{method} {path} {user:?}"
        );
    }
    // The POST rule names its caller.
    assert_eq!(
        request_verdict(
            &mesh,
            "cluster.local/ns/shop/sa/other",
            "POST",
            "/",
            Some("admin-x")
        ),
        no_allow
    );
}

#[test]
fn at_a_waypoint_what_it_cannot_check_fails_closed_and_a_broken_policy_denies() {
    // Without JWT validation, a DENY on request principals denies all,
    // and an ALLOW on them admits none.
    let deny_principals = mesh(&authorization_policy(
        "shop",
        "no-bob",
        "{targetRefs: [{kind: Service, name: reviews}], action: DENY, \
         rules: [{from: [{source: {requestPrincipals: [\"issuer/bob\"]}}]}]}",
    ));
    assert_eq!(
        request_verdict(&deny_principals, CLIENT, "GET", "/", None),
        denied_by("shop", "no-bob")
    );
    // Policies for every waypoint, from the root namespace.
    let everywhere = mesh(&authorization_policy(
        ROOT,
        "waypoints",
        "{targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}], \
         action: DENY, rules: [{to: [{operation: {methods: [TRACE]}}]}]}",
    ));
    assert_eq!(
        request_verdict(&everywhere, CLIENT, "TRACE", "/", None),
        denied_by(ROOT, "waypoints")
    );
    assert_eq!(
        request_verdict(&everywhere, CLIENT, "GET", "/", None),
        Verdict::Allow
    );
    // A policy selecting the waypoint's own pod.
    let selecting = mesh(&authorization_policy(
        "shop",
        "at-the-waypoint",
        "{selector: {matchLabels: {gateway.networking.k8s.io/gateway-name: waypoint}}, \
         action: DENY, rules: [{to: [{operation: {notPaths: [\"/public/*\"]}}]}]}",
    ));
    assert_eq!(
        request_verdict(&selecting, CLIENT, "GET", "/public/a", None),
        Verdict::Allow
    );
    assert_eq!(
        request_verdict(&selecting, CLIENT, "GET", "/private", None),
        denied_by("shop", "at-the-waypoint")
    );
    let mut broken = Mesh::default();
    broken.reject(
        &crate::document::ObjectRef {
            kind: "AuthorizationPolicy".into(),
            namespace: "shop".into(),
            name: "typo".into(),
        },
        vec!["spec.rules[0].from: unknown field".into()],
    );
    assert_eq!(
        request_verdict(&broken, CLIENT, "GET", "/", None),
        Verdict::Deny(Denial::Invalid(Key::new("shop", "typo")))
    );
}
