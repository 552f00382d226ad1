//! `ambit analyze` as a user runs it.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn analyze(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ambit"))
        .arg("analyze")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ambit runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("stdin written");
    child.wait_with_output().expect("ambit finishes")
}

fn fixtures() -> String {
    format!("{}/../config/tests/fixtures", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn a_clean_directory_passes() {
    let output = analyze(&["-f", &fixtures()], "");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    // Every Bookinfo file and the security policies, references checked
    // across files (the subsets are defined in another file).
    assert_eq!(
        stdout.trim(),
        "30 objects in 12 files: 0 errors, 0 warnings"
    );
}

#[test]
fn problems_are_listed_with_file_object_and_field_then_summed_up() {
    let manifest = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 70}
    - {destination: {host: reviews, subset: v9}, weight: 20}
"#;
    let rules = format!("{}/bookinfo/destination-rule-all.yaml", fixtures());
    let output = analyze(&["-f", "-", "-f", &rules], manifest);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "<stdin>: error: VirtualService default/reviews: spec.http[0].route: weights add up to 90, not 100",
            "5 objects in 2 files: 1 errors, 0 warnings",
        ]
    );

    let fixed = manifest.replace("weight: 20", "weight: 30");
    let output = analyze(&["-f", "-", "-f", &rules], &fixed);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "warnings alone do not fail: {stdout}"
    );
    assert!(stdout.contains("<stdin>: warning: VirtualService default/reviews: spec.http[0].route[1].destination.subset: subset \"v9\""), "{stdout}");
}

#[test]
fn a_field_istio_leaves_out_is_a_warning() {
    let manifest = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: moved, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
  - redirect: {uri: /elsewhere}
  - route: [{destination: {host: reviews}}]
    fault: {delay: {exponentialDelay: 1s, percentage: {value: 10}}}
"#;
    let output = analyze(&["-f", "-"], manifest);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "<stdin>: warning: VirtualService default/moved: spec.http[2].fault.delay.exponentialDelay: not applied, as Istio does not apply it",
            "1 objects in 1 files: 0 errors, 1 warnings",
        ]
    );
}

#[test]
fn an_unreadable_input_is_named() {
    let output = analyze(&["-f", "/nonexistent/manifests.yaml"], "");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("reading /nonexistent/manifests.yaml"));
}

#[test]
fn a_mistyped_kind_or_group_is_not_passed_in_silence() {
    let manifest = r#"apiVersion: security.istio.io/v1
kind: AuthorisationPolicy
metadata: {name: deny-all, namespace: shop}
spec: {action: DENY, rules: [{}]}
---
apiVersion: securty.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: shop}
"#;
    let output = analyze(&["-f", "-"], manifest);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("<stdin>: error: AuthorizationPolicy shop/deny-all: kind: security.istio.io/v1 AuthorisationPolicy is not a kind Ambit reads"), "{stdout}");
    assert!(stdout.contains("<stdin>: error: PeerAuthentication shop/strict: kind: securty.istio.io/v1 PeerAuthentication is not a kind Ambit reads"), "{stdout}");
    assert!(stdout.contains("<stdin>: warning: Sidecar shop/default: kind: networking.istio.io/v1 Sidecar is not a kind Ambit reads; it has no effect"), "{stdout}");
    assert!(stdout.ends_with("2 errors, 1 warnings\n"), "{stdout}");
}

#[test]
fn jwt_rules_are_named_as_failing_closed() {
    let manifest = r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  jwtRules: [{issuer: "https://issuer.example"}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: signed-in, namespace: shop}
spec:
  rules:
  - from: [{source: {requestPrincipals: ["*"]}}]
  - when: [{key: "request.auth.claims[group]", values: [admins]}]
"#;
    let output = analyze(&["-f", "-"], manifest);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let why = "Ambit does not validate JWTs, so AuthorizationPolicy rules on request principals or request.auth claims fail closed: in ALLOW and AUDIT they never match, in DENY and CUSTOM they always do";
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            format!("<stdin>: warning: RequestAuthentication shop/jwt: kind: security.istio.io/v1 RequestAuthentication is not a kind Ambit reads: {why}"),
            format!("<stdin>: warning: AuthorizationPolicy shop/signed-in: spec.rules[0].from[0].source: {why}"),
            format!("<stdin>: warning: AuthorizationPolicy shop/signed-in: spec.rules[1].when[0]: {why}"),
            "1 objects in 1 files: 0 errors, 3 warnings".to_string(),
        ]
    );
}

#[test]
fn destination_rule_fields_the_waypoint_does_not_act_on_are_named() {
    let manifest = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {enabled: true}}
    connectionPool: {tcp: {maxConnections: 10}}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {tls: {mode: SIMPLE, credentialName: reviews-cert}}
  - name: v2
    labels: {version: v2}
    # Started from files: applied.
    trafficPolicy: {tls: {mode: SIMPLE, caCertificates: /etc/certs/ca.pem}}
"#;
    let output = analyze(&["-f", "-"], manifest);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "<stdin>: warning: DestinationRule shop/reviews: spec.trafficPolicy.loadBalancer.localityLbSetting: not applied: Ambit has no localities (topology labels) to balance or fail over by",
            "<stdin>: warning: DestinationRule shop/reviews: spec.subsets[0].trafficPolicy.tls: not applied by the waypoint; the rest of the DestinationRule is",
            "1 objects in 1 files: 0 errors, 2 warnings",
        ]
    );
}
