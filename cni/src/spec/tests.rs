use std::collections::HashMap;

use super::*;

const CONFIG: &str = r#"{"cniVersion":"1.0.0","name":"k8s","type":"ambit-cni","agentSocket":"/run/a.sock",
  "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"10.244.1.7/24","interface":0}]}}"#;

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| vars.get(name).cloned()
}

fn add_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/var/run/netns/cni-1"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1;K8S_POD_UID=u-1",
        ),
    ]
}

fn without(vars: &[(&'static str, &'static str)], name: &str) -> Vec<(&'static str, &'static str)> {
    vars.iter().filter(|(k, _)| *k != name).copied().collect()
}

#[test]
fn add_reads_the_pod_its_namespace_and_addresses() {
    let invocation = parse(env(&add_env()), CONFIG.as_bytes()).unwrap();
    assert_eq!(invocation.command, Command::Add);
    assert_eq!(invocation.agent_socket, PathBuf::from("/run/a.sock"));
    assert_eq!(
        invocation.netns,
        Some(PathBuf::from("/var/run/netns/cni-1"))
    );
    let pod = invocation.pod.clone().unwrap();
    assert_eq!(
        (pod.namespace.as_str(), pod.name.as_str(), pod.uid.as_str()),
        ("shop", "cart-1", "u-1")
    );
    assert_eq!(invocation.pod_ips(), vec![Ipv4Addr::new(10, 244, 1, 7)]);
    // The previous result is passed through.
    assert_eq!(
        invocation.add_result()["ips"][0]["address"],
        "10.244.1.7/24"
    );
}

/// CNI variables, stdin, the expected error code and a phrase of its message.
type BadInput = (
    Vec<(&'static str, &'static str)>,
    &'static str,
    u32,
    &'static str,
);

#[test]
fn bad_input_gets_the_error_code_the_spec_reserves() {
    let cases: Vec<BadInput> = vec![
        (
            vec![],
            CONFIG,
            code::INVALID_ENVIRONMENT,
            "CNI_COMMAND is not set",
        ),
        (
            vec![("CNI_COMMAND", "FROB")],
            CONFIG,
            code::INVALID_ENVIRONMENT,
            "\"FROB\"",
        ),
        (
            without(&add_env(), "CNI_NETNS"),
            CONFIG,
            code::INVALID_ENVIRONMENT,
            "CNI_NETNS",
        ),
        (
            without(&add_env(), "CNI_CONTAINERID"),
            CONFIG,
            code::INVALID_ENVIRONMENT,
            "CNI_CONTAINERID",
        ),
        (
            without(&add_env(), "CNI_IFNAME"),
            CONFIG,
            code::INVALID_ENVIRONMENT,
            "CNI_IFNAME",
        ),
        (add_env(), "{not json", code::DECODE_FAILURE, "not JSON"),
        (
            add_env(),
            r#"{"name":"k8s"}"#,
            code::INVALID_CONFIG,
            "no cniVersion",
        ),
        (
            add_env(),
            r#"{"cniVersion":"9.9.9"}"#,
            code::INCOMPATIBLE_VERSION,
            "9.9.9",
        ),
        (
            add_env(),
            r#"{"cniVersion":"1.0.0"}"#,
            code::INVALID_CONFIG,
            "prevResult",
        ),
        (
            add_env(),
            r#"{"cniVersion":"1.0.0","prevResult":{},"agentSocket":7}"#,
            code::INVALID_CONFIG,
            "agentSocket",
        ),
        (
            vec![
                ("CNI_COMMAND", "CHECK"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_NETNS", "/n"),
                ("CNI_IFNAME", "eth0"),
            ],
            r#"{"cniVersion":"0.3.1"}"#,
            code::INCOMPATIBLE_VERSION,
            "CHECK",
        ),
        (
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "K8S_POD_NAME=x"),
            ],
            CONFIG,
            code::INVALID_ENVIRONMENT,
            "K8S_POD_NAMESPACE",
        ),
    ];
    for (vars, stdin, expected_code, says) in cases {
        let error = parse(env(&vars), stdin.as_bytes()).unwrap_err();
        assert_eq!(error.code, expected_code, "{vars:?} {stdin}: {error}");
        assert!(
            error.to_string().contains(says),
            "{vars:?} {stdin}: {error}"
        );
    }
}

#[test]
fn del_needs_no_namespace_and_version_needs_no_sandbox() {
    let del = vec![
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "c"),
        ("CNI_IFNAME", "eth0"),
    ];
    let invocation = parse(env(&del), br#"{"cniVersion":"1.0.0"}"#).unwrap();
    assert_eq!(
        (invocation.command, invocation.netns, invocation.pod),
        (Command::Del, None, None)
    );

    let version = parse(
        env(&[("CNI_COMMAND", "VERSION")]),
        br#"{"cniVersion":"0.4.0"}"#,
    )
    .unwrap();
    assert_eq!(version.command, Command::Version);
    assert_eq!(version_result("0.4.0")["supportedVersions"][4], "1.1.0");
}

#[test]
fn errors_print_in_the_spec_format() {
    let error = CniError::new(code::INVALID_CONFIG, "bad", "").in_version("0.4.0");
    assert_eq!(
        serde_json::to_string(&error).unwrap(),
        r#"{"cniVersion":"0.4.0","code":7,"msg":"bad"}"#
    );
}
