use super::*;

fn pod(namespace: &str, name: &str) -> PodRef {
    PodRef {
        namespace: namespace.into(),
        name: name.into(),
        uid: format!("{namespace}-{name}"),
    }
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
        assert_eq!(snapshot.is_enrolled(&pod), enrolled, "{pod}");
    }
}

fn reviews(endpoints: Vec<Endpoint>) -> MeshConfig {
    MeshConfig {
        services: vec![ServiceConfig {
            namespace: "default".into(),
            name: "reviews".into(),
            vip: Ipv4Addr::new(10, 96, 0, 10),
            ports: vec![ServicePort {
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
fn bad_files_are_refused_with_the_reason() {
    /// Removed when dropped, also when an assertion fails.
    struct TempDir(std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir = TempDir(std::env::temp_dir().join(format!("ambit-mesh-test-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let cases = [
        (
            r#"{"namespaces": [{"name": "a", "labels": {}}], "extra": 1}"#,
            "unknown field `extra`",
        ),
        (
            r#"{"services": [{"namespace": "a", "name": "s", "vip": "10.96.0.1", "ports": [{"port": 0, "targetPort": 80}]}]}"#,
            "1-65535",
        ),
        (
            r#"{"services": [{"namespace": "a", "name": "s", "vip": "not-an-ip", "ports": []}]}"#,
            "invalid IPv4 address",
        ),
        (
            r#"{"services": [{"namespace": "a", "name": "s", "vip": "10.96.0.1", "ports": [{"port": 80, "targetPort": 80}]},
                             {"namespace": "a", "name": "t", "vip": "10.96.0.1", "ports": [{"port": 80, "targetPort": 81}]}]}"#,
            "10.96.0.1:80 is also service a/s",
        ),
    ];
    for (i, (text, says)) in cases.iter().enumerate() {
        let path = dir.0.join(format!("mesh-{i}.json"));
        std::fs::write(&path, text).unwrap();
        let error = MeshConfig::load(&path).unwrap_err().to_string();
        assert!(
            error.contains(says) && error.contains(&path.display().to_string()),
            "{error}"
        );
    }
}
