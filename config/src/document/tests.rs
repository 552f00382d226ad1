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
