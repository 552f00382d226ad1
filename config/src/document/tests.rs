use super::*;
use crate::api::security::{Action, MtlsMode};

const POLICIES: &str = include_str!("../../tests/fixtures/security.yaml");

fn problems(text: &str) -> Vec<String> {
    parse_manifests(text)
        .problems
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn good_objects_parse_under_every_served_version() {
    let parsed = parse_manifests(POLICIES);
    assert_eq!(parsed.problems, vec![], "{:?}", parsed.problems);
    let names: Vec<String> = parsed
        .resources
        .iter()
        .map(|resource| {
            let (version, object) = resource.describe();
            format!("{version} {}/{}", object.namespace, object.name)
        })
        .collect();
    assert_eq!(
        names,
        [
            "security.istio.io/v1 shop/allow-frontend-get",
            "security.istio.io/v1beta1 shop/allow-frontend-get-beta",
            "security.istio.io/v1 shop/deny-outside-ips",
            "security.istio.io/v1 istio-system/mesh-strict",
            "security.istio.io/v1beta1 shop/legacy-db-permissive",
        ]
    );
    let (Resource::AuthorizationPolicy(v1), Resource::AuthorizationPolicy(beta)) =
        (&parsed.resources[0], &parsed.resources[1])
    else {
        panic!("two AuthorizationPolicies first");
    };
    assert_eq!(v1.spec, beta.spec, "the same policy under both versions");
    assert_eq!(v1.spec.action, Action::Allow);
    assert_eq!(
        v1.spec.rules[0].from[0].source.principals,
        ["cluster.local/ns/shop/sa/frontend"]
    );
    assert_eq!(v1.spec.rules[0].to[0].operation.ports, ["8080"]);
    let Resource::PeerAuthentication(legacy) = &parsed.resources[4] else {
        panic!("a PeerAuthentication last");
    };
    assert_eq!(legacy.spec.mtls.map(|m| m.mode), Some(MtlsMode::Strict));
    let port = crate::api::security::PortKey("5432".into());
    assert_eq!(
        legacy.spec.port_level_mtls[&port].mode,
        MtlsMode::Permissive
    );
}

#[test]
fn each_bad_object_is_named_with_its_field_path_and_the_others_apply() {
    let text = format!(
        "{POLICIES}---\n{}",
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: shop}
spec:
  action: DENY
  rules:
  - from:
    - source:
        notPrincipal: ["cluster.local/ns/shop/sa/admin"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-values, namespace: shop}
spec:
  action: PERMIT
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-blocks, namespace: shop}
spec:
  rules:
  - from:
    - source: {ipBlocks: ["10.0.0.0/8", "10.0.0.300"]}
    to:
    - operation: {ports: ["80", "99999"]}
    when:
    - key: request.headers[x-user]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: conflicting, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  targetRef: {kind: Gateway, name: gw}
  action: CUSTOM
---
apiVersion: security.istio.io/v2
kind: PeerAuthentication
metadata: {name: future, namespace: shop}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ports-without-selector, namespace: shop}
spec:
  portLevelMtls:
    "0": {mode: STRICT}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: not-ours}
"#
    );
    let parsed = parse_manifests(&text);
    assert_eq!(parsed.resources.len(), 5, "the good objects still apply");
    assert_eq!(
        problems(&text),
        [
            "error: AuthorizationPolicy shop/typo: spec.rules[0].from[0].source.notPrincipal: unknown field",
            "error: AuthorizationPolicy shop/bad-values: spec.action: unknown variant `PERMIT`, expected one of `ALLOW`, `DENY`, `AUDIT`, `CUSTOM`",
            "error: AuthorizationPolicy shop/bad-blocks: spec.rules[0].from[0].source.ipBlocks[1]: \"10.0.0.300\" is not an IP address or CIDR block",
            "error: AuthorizationPolicy shop/bad-blocks: spec.rules[0].to[0].operation.ports[1]: port \"99999\" is not a number from 1 to 65535",
            "error: AuthorizationPolicy shop/bad-blocks: spec.rules[0].when[0]: a condition needs values or notValues",
            "error: AuthorizationPolicy shop/conflicting: spec: selector, targetRef and targetRefs are exclusive: set at most one",
            "error: AuthorizationPolicy shop/conflicting: spec.provider: action CUSTOM needs a provider",
            "error: PeerAuthentication shop/future: apiVersion: security.istio.io/v2 is not served for PeerAuthentication (served: v1, v1beta1)",
            "error: PeerAuthentication shop/ports-without-selector: spec.portLevelMtls: port-level settings need a selector: they apply to one workload's ports",
            "error: PeerAuthentication shop/ports-without-selector: spec.portLevelMtls[0]: port \"0\" is not a number from 1 to 65535",
        ]
    );
}

#[test]
fn documents_without_identity_or_valid_yaml_are_reported() {
    assert_eq!(
        problems("kind: AuthorizationPolicy\n"),
        ["error: AuthorizationPolicy default/: apiVersion and kind are required"]
    );
    assert_eq!(
        problems("metadata: {name: x}\n"),
        ["error: document 0: apiVersion and kind are required"]
    );
    assert_eq!(
        problems("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {namespace: a}\n"),
        ["error: AuthorizationPolicy a/: metadata.name: is required"]
    );
    let broken = problems("apiVersion: v1\nkind: [unclosed\n");
    assert_eq!(broken.len(), 1);
    assert!(
        broken[0].starts_with("error: document 0: not valid YAML"),
        "{broken:?}"
    );
    // An empty spec is a valid policy: ALLOW with no rules allows nothing.
    let parsed = parse_manifests("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-nothing}\n");
    assert_eq!(parsed.problems, vec![]);
    assert!(
        matches!(&parsed.resources[0], Resource::AuthorizationPolicy(o) if o.spec.rules.is_empty() && o.namespace() == "default")
    );
}

/// What `rejections` makes of a stream: the objects that stand rejected.
fn rejected(text: &str) -> Vec<String> {
    rejections(&parse_manifests(text).problems)
        .into_iter()
        .map(|(object, _)| object.to_string())
        .collect()
}

#[test]
fn a_broken_document_is_named_from_its_text_and_the_ones_after_it_still_read() {
    let good = |name: &str| {
        format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: shop\nspec: {{action: DENY, rules: [{{}}]}}\n")
    };
    let broken = [
        // A tab where YAML allows only spaces.
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: tabbed\n  namespace: shop\nspec:\n\taction: DENY\n",
        // A key given twice.
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: twice\n  namespace: shop\nspec: {action: DENY}\nspec: {action: ALLOW}\n",
        // Metadata of the wrong shape.
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: shaped, namespace: shop, labels: [a]}\nspec: {action: DENY}\n",
        // An integer out of any range, in a document before the policy.
        "apiVersion: v1\nkind: Service\nmetadata: {name: big}\nspec: {ports: [{port: 99999999999999999999999}]}\n",
    ];
    for broken in broken {
        let text = format!("{}---\n{broken}---\n{}", good("before"), good("after"));
        let parsed = parse_manifests(&text);
        let read: Vec<String> = parsed
            .resources
            .iter()
            .map(|resource| resource.describe().1.to_string())
            .collect();
        assert_eq!(
            read,
            [
                "AuthorizationPolicy shop/before",
                "AuthorizationPolicy shop/after"
            ],
            "{broken}: {:?}",
            parsed.problems
        );
        assert_eq!(parsed.problems.len(), 1, "{broken}: {:?}", parsed.problems);
        assert_eq!(parsed.problems[0].document, 1, "{broken}");
    }
    assert_eq!(
        rejected(&format!("{}---\n{}", good("a"), broken_policy())),
        ["AuthorizationPolicy shop/tabbed"]
    );
}

fn broken_policy() -> &'static str {
    "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: tabbed\n  namespace: shop\nspec:\n\taction: DENY\n"
}

#[test]
fn a_mistyped_kind_or_group_is_reported_and_a_mistyped_policy_fails_closed() {
    let object = |api_version: &str, kind: &str| {
        format!("apiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: x, namespace: shop}}\nspec: {{}}\n")
    };
    let cases = [
        (object("securty.istio.io/v1", "AuthorizationPolicy"), "error: AuthorizationPolicy shop/x: kind: securty.istio.io/v1 AuthorizationPolicy is not a kind Ambit reads; taken for a security.istio.io AuthorizationPolicy that cannot be read, which fails closed"),
        (object("security.istio.io/v1", "AuthorisationPolicy"), "error: AuthorizationPolicy shop/x: kind: security.istio.io/v1 AuthorisationPolicy is not a kind Ambit reads; taken for a security.istio.io AuthorizationPolicy that cannot be read, which fails closed"),
        (object("security.istio.io/v1", "PeerAuthentications"), "error: PeerAuthentication shop/x: kind: security.istio.io/v1 PeerAuthentications is not a kind Ambit reads; taken for a security.istio.io PeerAuthentication that cannot be read, which fails closed"),
        (object("networking.istio.io/v1", "VirtualServices"), "warning: VirtualServices shop/x: kind: networking.istio.io/v1 VirtualServices is not a kind Ambit reads; did you mean networking.istio.io VirtualService?"),
        (object("networking.istio.io/v1", "Sidecar"), "warning: Sidecar shop/x: kind: networking.istio.io/v1 Sidecar is not a kind Ambit reads; it has no effect"),
    ];
    for (text, says) in &cases {
        assert_eq!(problems(text), [*says]);
    }
    assert_eq!(rejected(&cases[0].0), ["AuthorizationPolicy shop/x"]);
    assert_eq!(rejected(&cases[2].0), ["PeerAuthentication shop/x"]);
    assert!(rejected(&cases[3].0).is_empty());
    // Other projects' kinds are none of Ambit's business.
    assert!(problems(&object("apps/v1", "Deployment")).is_empty());
}

#[test]
fn documents_over_budget_are_refused_cheaply() {
    let deep = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: deep}}\nspec: {}{}\n",
        "{a: ".repeat(300_000),
        "}".repeat(300_000)
    );
    let found = problems(&deep);
    assert_eq!(found.len(), 1);
    assert!(found[0].contains("too costly to read"), "{found:?}");
    let block = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: block}}\nspec:\n{}",
        (0..100)
            .map(|depth| format!("{}a{depth}:\n", " ".repeat(depth + 1)))
            .collect::<String>()
    );
    assert!(problems(&block)[0].contains("too costly to read"));
    // Nine nested aliases would repeat a billion nodes.
    let mut laughs =
        String::from("apiVersion: v1\nkind: Pod\nmetadata: {name: laughs}\nx0: &x0 [lol]\n");
    for level in 1..10 {
        let previous = format!("*x{}", level - 1);
        laughs += &format!(
            "x{level}: &x{level} [{}]\n",
            [previous.as_str(); 10].join(", ")
        );
    }
    assert!(
        problems(&laughs)[0].contains("too costly to read"),
        "{:?}",
        problems(&laughs)
    );
    let large = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: large}}\n# {}\n",
        "x".repeat(MAX_DOCUMENT_BYTES)
    );
    assert!(problems(&large)[0].contains("over the 1572864 read"));
    // Brackets inside quotes and comments do not count, nor do balanced ones.
    let text = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: fine\n  labels: {{a: \"{}\", b: '{}'}} # {}\n  annotations: {{c: \"{}\"}}\n",
        "{".repeat(100), "[".repeat(100), "[".repeat(100), "[]".repeat(100)
    );
    assert_eq!(problems(&text), Vec::<String>::new());
}

#[test]
fn a_stream_splits_at_its_separator_lines_only() {
    let text = "# a comment\n---\na: 1\n--- {b: 2}\nc: \"---\"\n  ---x\n---\n";
    let split: Vec<&str> = documents(text).collect();
    assert_eq!(split, ["\na: 1\n", " {b: 2}\nc: \"---\"\n  ---x\n", "\n"]);
    assert_eq!(documents("a: 1\n").collect::<Vec<_>>(), ["a: 1\n"]);
}

#[test]
fn oversized_regular_expressions_are_refused_cheaply() {
    let route = |regex: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r, namespace: shop}}\nspec: {{hosts: [r], http: [{{match: [{{uri: {{regex: '{regex}'}}}}], route: [{{destination: {{host: r}}}}]}}]}}\n")
    };
    let long = "a".repeat(2000);
    assert!(problems(&route(&long))[0]
        .contains("a regular expression of 2000 bytes is over the 1024 read"));
    // Short, but megabytes once compiled: two hundred of them still parse at once.
    let text: Vec<String> = (0..200).map(|_| route("(a{1000}){1000}")).collect();
    let found = problems(&text.join("---\n"));
    assert_eq!(found.len(), 200);
    assert!(
        found[0].contains("invalid RE2 regular expression"),
        "{found:?}"
    );
    assert_eq!(
        problems(&route("^/api/v[0-9]{1,3}/.*")),
        Vec::<String>::new()
    );
}

#[test]
fn yaml_is_read_by_the_core_schema_of_yaml_1_2() {
    let text = "# only a comment\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: &labels\n    enabled: yes\n    mode: on\n    version: \"1.10\"\n  annotations: *labels\n";
    let parsed = parse_manifests(text);
    assert_eq!(parsed.problems, vec![]);
    let [Resource::Pod(pod)] = parsed.resources.as_slice() else {
        panic!("one Pod: {:?}", parsed.resources);
    };
    let labels: Vec<(&str, &str)> = pod
        .metadata
        .labels
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    assert_eq!(
        labels,
        [("enabled", "yes"), ("mode", "on"), ("version", "1.10")]
    );
    assert_eq!(pod.metadata.annotations, pod.metadata.labels);
    // Duplicate keys are an error, not a silent choice of one.
    let duplicate = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  name: q\n";
    assert!(problems(duplicate)[0].contains("not valid YAML"));
}

#[test]
fn plurals_are_the_served_resource_names() {
    let plurals: Vec<String> = KINDS.iter().map(|(_, kind, _)| plural(kind)).collect();
    assert_eq!(
        plurals,
        [
            "namespaces",
            "configmaps",
            "pods",
            "services",
            "endpointslices",
            "virtualservices",
            "serviceentries",
            "gateways",
            "destinationrules",
            "authorizationpolicies",
            "peerauthentications"
        ]
    );
}
