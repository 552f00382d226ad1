//! The ingress gateway, end to end: `ambit-waypoint --mode gateway` in a
//! pod labelled `istio: ingressgateway`, reached by a client outside the
//! mesh, routing into Bookinfo over HBONE by the seeds' own YAML; HTTPS
//! ended at the gateway (SIMPLE, MUTUAL, a rotated Secret) or passed
//! through by server name; plain HTTP redirected to HTTPS.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ambit_mesh_source::view::VIEW_LABEL;
use ambit_testbed::apiserver::ApiServer;
use ambit_testbed::bookinfo;
use ambit_testbed::bookinfo::{page, Bookinfo, GATEWAY_POD, OUTSIDE_POD, SECURE, SECURE_PORT};
use ambit_testbed::mesh::{self, MeshConfig, Source};
use ambit_testbed::pki::{Issued, TestPki};
use ambit_testbed::testapp::{ClientTls, HttpLoad, Server};
use ambit_testbed::waypoint::Waypoint;
use ambit_testbed::{wait_for, Cluster};
use anyhow::{ensure, Context};
use serde_json::{json, Value};

/// Istio's Bookinfo gateway port.
const HTTP_PORT: u16 = 8080;

#[test]
fn the_seeds_bookinfo_gateway_exposes_productpage_and_the_routing_tasks_hold_through_it(
) -> anyhow::Result<()> {
    let bookinfo = Bookinfo::start_with_gateway()?;
    let gateway_yaml = bookinfo::manifest("bookinfo-gateway.yaml")?;
    let with_gateway = |task: &str| -> anyhow::Result<Vec<Value>> {
        Ok([gateway_yaml.clone(), bookinfo::manifest(task)?].concat())
    };
    bookinfo.apply(with_gateway("routing-all-v1.yaml")?)?;
    // Any host name: the seeds' Gateway and VirtualService take `*`.
    let url = |path: &str| format!("http://bookinfo.example.com{path}");
    let outside = bookinfo.cluster.pod(OUTSIDE_POD)?;

    let summary = bookinfo.outside_to(HttpLoad::new(10), &url("/productpage"), HTTP_PORT)?;
    ensure!(
        summary.status(200) == 10 && summary.one_trace == 10,
        "{summary:?}"
    );
    assert_eq!(
        summary.chains.clone().into_iter().collect::<Vec<_>>(),
        page("reviews/v1", 10)
    );
    // What the gateway tells productpage of the client, as Istio's does.
    for told in [
        format!("x-forwarded-for: {}", outside.ip),
        format!("x-envoy-external-address: {}", outside.ip),
        "x-forwarded-proto: http".to_string(),
    ] {
        ensure!(
            summary.proxied.get(&told) == Some(&10),
            "{told}: {summary:?}"
        );
    }
    // The other paths the seeds' VirtualService exposes reach productpage;
    // anything else is not routed.
    for path in [
        "/static/css/style.css",
        "/login",
        "/logout",
        "/api/v1/products",
    ] {
        let summary = bookinfo.outside_to(HttpLoad::new(1), &url(path), HTTP_PORT)?;
        ensure!(
            summary.status(200) == 1
                && summary.versions.get("productpage/v1") == Some(&1)
                && summary.paths.get(path) == Some(&1),
            "{path}: {summary:?}"
        );
    }
    for path in ["/", "/details/0", "/productpages", "/api/v2/products"] {
        let summary = bookinfo.outside_to(HttpLoad::new(1), &url(path), HTTP_PORT)?;
        ensure!(summary.status(404) == 1, "{path}: {summary:?}");
    }
    let reported = bookinfo.gateway_requests(&[
        ("reporter", "source"),
        ("source_workload", GATEWAY_POD),
        ("destination_service_name", "productpage"),
        ("response_code", "200"),
    ])?;
    ensure!(reported == 14.0, "the gateway reported {reported} requests");

    // The routing tasks, through the gateway: Jason's reviews...
    bookinfo.apply(with_gateway("reviews-v2-for-jason.yaml")?)?;
    let jason = HttpLoad::new(10).header("end-user", "jason");
    let summary = bookinfo.outside_to(jason, &url("/productpage"), HTTP_PORT)?;
    assert_eq!(
        summary.chains.into_iter().collect::<Vec<_>>(),
        page("reviews/v2 -> [ratings/v1]", 10)
    );
    // ...and half of everyone's to v3.
    bookinfo.apply(with_gateway("reviews-50-v3.yaml")?)?;
    let summary = bookinfo.outside_to(HttpLoad::new(100), &url("/productpage"), HTTP_PORT)?;
    let v3 = summary
        .chains
        .get("productpage/v1 -> [details/v1, reviews/v3 -> [ratings/v1]]")
        .copied()
        .unwrap_or(0);
    ensure!(
        summary.status(200) == 100 && (30..=70).contains(&v3),
        "{summary:?}"
    );
    Ok(())
}

#[test]
fn a_service_that_asks_is_reached_from_the_gateway_through_its_waypoint() -> anyhow::Result<()> {
    let bookinfo = Bookinfo::start_with_gateway()?;
    let seeds = [
        bookinfo::manifest("bookinfo-gateway.yaml")?,
        bookinfo::manifest("routing-all-v1.yaml")?,
    ]
    .concat();
    let url = "http://bookinfo.example.com/productpage";
    let from_the_gateway = || -> anyhow::Result<f64> {
        let metrics = bookinfo.waypoint.metrics()?;
        Ok(ambit_testbed::mesh::sample(
            &metrics,
            "istio_requests_total",
            &[
                ("source_workload", GATEWAY_POD),
                ("destination_service_name", "productpage"),
                ("response_code", "200"),
            ],
        ))
    };
    // As Istio's gateways: to the endpoints, past the Services' waypoint...
    bookinfo.apply(seeds.clone())?;
    let summary = bookinfo.outside_to(HttpLoad::new(3), url, HTTP_PORT)?;
    ensure!(summary.status(200) == 3, "{summary:?}");
    ensure!(
        from_the_gateway()? == 0.0,
        "the waypoint saw the gateway's requests"
    );
    // ...unless the namespace (or the Service) asks for its waypoint.
    let asks = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": "default", "labels": { "istio.io/ingress-use-waypoint": "true" } },
    });
    bookinfo.apply([seeds, vec![asks]].concat())?;
    let summary = bookinfo.outside_to(HttpLoad::new(5), url, HTTP_PORT)?;
    ensure!(
        summary.status(200) == 5 && summary.one_trace == 5,
        "{summary:?}"
    );
    assert_eq!(
        summary.chains.into_iter().collect::<Vec<_>>(),
        page("reviews/v1", 5)
    );
    let seen = from_the_gateway()?;
    ensure!(
        seen == 5.0,
        "the waypoint saw {seen} of the gateway's requests\n{}",
        bookinfo.outputs()
    );
    Ok(())
}

#[test]
fn a_tcp_server_carries_connections_whole_to_its_route() -> anyhow::Result<()> {
    let bookinfo = Bookinfo::start_with_gateway()?;
    let tcp = vec![
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "Gateway",
            "metadata": { "name": "bookinfo-tcp", "namespace": "default" },
            "spec": {
                "selector": { "istio": "ingressgateway" },
                "servers": [{
                    "port": { "number": 31400, "name": "tcp", "protocol": "TCP" },
                    "hosts": ["*"],
                }],
            },
        }),
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": { "name": "bookinfo-tcp", "namespace": "default" },
            "spec": {
                "hosts": ["*"],
                "gateways": ["bookinfo-tcp"],
                "tcp": [{
                    "match": [{ "port": 31400 }],
                    "route": [{ "destination": { "host": "details", "port": { "number": 9080 } } }],
                }],
            },
        }),
    ];
    bookinfo.apply(tcp)?;
    // Whatever the bytes say (here HTTP for another host), they reach
    // details untouched, over HBONE.
    let load = HttpLoad::new(3).reconnect();
    let summary = bookinfo.outside_to(load, "http://anything.example/details/0", 31400)?;
    ensure!(
        summary.versions.get("details/v1") == Some(&3) && summary.proxied.is_empty(),
        "{summary:?}"
    );
    Ok(())
}

/// A Gateway of HTTPS servers for `bookinfo.example.com`, and the route
/// to productpage through it.
fn https_gateway() -> Vec<Value> {
    let https = |port: u16, tls: Value| {
        json!({
            "port": { "number": port, "name": format!("https-{port}"), "protocol": "HTTPS" },
            "hosts": ["bookinfo.example.com"],
            "tls": tls,
        })
    };
    vec![
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "Gateway",
            "metadata": { "name": "bookinfo-https", "namespace": "default" },
            "spec": {
                "selector": { "istio": "ingressgateway" },
                "servers": [
                    https(443, json!({ "mode": "SIMPLE", "credentialName": "bookinfo-cert" })),
                    https(8443, json!({
                        "mode": "MUTUAL", "credentialName": "bookinfo-cert",
                        "subjectAltNames": ["partner.example.com"],
                    })),
                    https(9443, json!({
                        "mode": "OPTIONAL_MUTUAL", "credentialName": "bookinfo-cert",
                        "subjectAltNames": ["partner.example.com"],
                    })),
                    {
                        "port": { "number": 8080, "name": "http", "protocol": "HTTP" },
                        "hosts": ["bookinfo.example.com"],
                        "tls": { "httpsRedirect": true },
                    },
                ],
            },
        }),
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": { "name": "bookinfo-https", "namespace": "default" },
            "spec": {
                "hosts": ["bookinfo.example.com"],
                "gateways": ["bookinfo-https"],
                "http": [{
                    "match": [{ "uri": { "exact": "/productpage" } }],
                    "route": [{ "destination": { "host": "productpage", "port": { "number": 9080 } } }],
                }],
            },
        }),
    ]
}

/// A client trusting `ca`, presenting `client` if given.
fn trusting(load: HttpLoad, ca: &Path, client: Option<&Issued>) -> HttpLoad {
    load.tls(ClientTls {
        ca: ca.to_path_buf(),
        client: client.map(|issued| (issued.certificate.clone(), issued.key.clone())),
    })
}

#[test]
fn https_ends_at_the_gateway_simple_mutual_and_optional_and_a_rotated_secret_serves_without_restart(
) -> anyhow::Result<()> {
    let bookinfo = Bookinfo::start_with_gateway()?;
    let work = bookinfo.cluster.work_dir().to_path_buf();
    let secret = bookinfo.credentials().join("bookinfo-cert");
    let pki = TestPki::new("bookinfo-ca", &work.join("pki"))?;
    pki.server(&["bookinfo.example.com"], &secret)?;
    let partner = pki.client(&["partner.example.com"], &work.join("partner"))?;
    let stranger = pki.client(&["stranger.example.com"], &work.join("stranger"))?;
    bookinfo.apply(https_gateway())?;
    let url = "https://bookinfo.example.com/productpage";

    // SIMPLE: the server's certificate from the Secret, HTTP/1.1 and
    // HTTP/2 by ALPN, the scheme told upstream.
    for http2 in [false, true] {
        let load = trusting(HttpLoad::new(5).http2(http2), pki.ca_file(), None);
        let summary = bookinfo.outside_to(load, url, 443)?;
        ensure!(
            summary.status(200) == 5
                && summary.versions.get("productpage/v1") == Some(&5)
                && summary.proxied.get("x-forwarded-proto: https") == Some(&5),
            "SIMPLE, http2 {http2}: {summary:?}"
        );
    }
    let other = TestPki::new("other-ca", &work.join("other-pki"))?;
    let summary =
        bookinfo.outside_to(trusting(HttpLoad::new(1), other.ca_file(), None), url, 443)?;
    ensure!(
        summary.errors == 1,
        "a CA the client does not trust: {summary:?}"
    );

    // MUTUAL: only a client certificate from the Secret's CA that names one
    // of subjectAltNames gets in.
    let mutual = |client: Option<&Issued>| {
        let load = trusting(HttpLoad::new(3), pki.ca_file(), client);
        bookinfo.outside_to(load, "https://bookinfo.example.com:8443/productpage", 8443)
    };
    let summary = mutual(Some(&partner))?;
    ensure!(
        summary.status(200) == 3,
        "the partner's certificate: {summary:?}"
    );
    let summary = mutual(None)?;
    ensure!(summary.errors == 3, "no client certificate: {summary:?}");
    let summary = mutual(Some(&stranger))?;
    ensure!(
        summary.errors == 3,
        "a name not in subjectAltNames: {summary:?}"
    );

    // OPTIONAL_MUTUAL: a client without a certificate gets in; one that
    // shows a certificate must show a good one.
    let optional = |client: Option<&Issued>| {
        let load = trusting(HttpLoad::new(2), pki.ca_file(), client);
        bookinfo.outside_to(load, "https://bookinfo.example.com:9443/productpage", 9443)
    };
    let forged = other.client(&["partner.example.com"], &work.join("forged"))?;
    for (client, status, errors, who) in [
        (None, 2, 0, "no certificate"),
        (Some(&partner), 2, 0, "the partner"),
        (Some(&stranger), 0, 2, "a name not in subjectAltNames"),
        (Some(&forged), 0, 2, "another CA's certificate"),
    ] {
        let summary = optional(client)?;
        ensure!(
            summary.status(200) == status && summary.errors == errors,
            "OPTIONAL_MUTUAL, {who}: {summary:?}"
        );
    }

    // httpsRedirect: plain HTTP for the host is sent to HTTPS.
    let load = HttpLoad::new(1).show_header("location");
    let summary = bookinfo.outside_to(
        load,
        "http://bookinfo.example.com/productpage?u=normal",
        8080,
    )?;
    ensure!(
        summary.status(301) == 1
            && summary
                .headers
                .contains_key("location: https://bookinfo.example.com/productpage?u=normal"),
        "{summary:?}"
    );

    // The Secret rotated to another CA's certificate: the next handshake
    // presents it, with no restart.
    let rotated = TestPki::new("rotated-ca", &work.join("rotated-pki"))?;
    rotated.server(&["bookinfo.example.com"], &secret)?;
    let summary = bookinfo.outside_to(
        trusting(HttpLoad::new(2), rotated.ca_file(), None),
        url,
        443,
    )?;
    ensure!(
        summary.status(200) == 2,
        "the rotated certificate: {summary:?}"
    );
    let summary = bookinfo.outside_to(trusting(HttpLoad::new(1), pki.ca_file(), None), url, 443)?;
    ensure!(
        summary.errors == 1,
        "the old certificate is gone: {summary:?}"
    );
    Ok(())
}

#[test]
fn passthrough_sends_tls_by_server_name_to_two_backends_that_end_it_themselves(
) -> anyhow::Result<()> {
    let bookinfo = Bookinfo::start_with_gateway()?;
    let work = bookinfo.cluster.work_dir().to_path_buf();
    let pki = TestPki::new("secure-ca", &work.join("pki"))?;
    let mut servers = Vec::new();
    for (name, _) in SECURE {
        let issued = pki.server(&[&format!("{name}.pass.example")], &work.join(name))?;
        let server = Server::new(name, "v1").https(SECURE_PORT, &issued.certificate, &issued.key);
        servers.push(server.start(&bookinfo.cluster, bookinfo.cluster.pod(name)?)?);
    }
    let route = |name: &str| {
        json!({
            "match": [{ "sniHosts": [format!("{name}.pass.example")] }],
            "route": [{ "destination": { "host": name, "port": { "number": SECURE_PORT } } }],
        })
    };
    bookinfo.apply(vec![
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "Gateway",
            "metadata": { "name": "secure", "namespace": "default" },
            "spec": {
                "selector": { "istio": "ingressgateway" },
                "servers": [{
                    "port": { "number": 9443, "name": "tls", "protocol": "TLS" },
                    "hosts": ["*.pass.example"],
                    "tls": { "mode": "PASSTHROUGH" },
                }],
            },
        }),
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": { "name": "secure", "namespace": "default" },
            "spec": {
                "hosts": ["*.pass.example"],
                "gateways": ["secure"],
                "tls": [route("secure-one"), route("secure-two")],
            },
        }),
    ])?;
    for (name, _) in SECURE {
        // The client checks the backend's own certificate: the gateway
        // holds none for these names.
        let load = trusting(HttpLoad::new(4), pki.ca_file(), None);
        let url = format!("https://{name}.pass.example:9443/");
        let summary = bookinfo.outside_to(load, &url, 9443)?;
        ensure!(
            summary.versions.get(&format!("{name}/v1")) == Some(&4),
            "{name}: {summary:?}\n{}",
            servers
                .iter()
                .map(ambit_testbed::Process::output)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let load = trusting(HttpLoad::new(1), pki.ca_file(), None);
    let summary = bookinfo.outside_to(load, "https://unknown.example:9443/", 9443)?;
    ensure!(summary.errors == 1, "a name no server takes: {summary:?}");
    Ok(())
}

const WEB_VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 96, 0, 50);

/// A `kubernetes.io/tls` Secret `name` in istio-system holding `issued`.
fn tls_secret(name: &str, issued: &Issued) -> anyhow::Result<Value> {
    use base64::Engine;
    let encoded = |path: &Path| -> anyhow::Result<String> {
        Ok(base64::engine::general_purpose::STANDARD.encode(std::fs::read(path)?))
    };
    Ok(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": { "name": name, "namespace": "istio-system" },
        "data": { "tls.crt": encoded(&issued.certificate)?, "tls.key": encoded(&issued.key)? },
    }))
}

#[test]
fn in_kubernetes_the_gateway_reads_the_mesh_through_its_agent_and_only_the_secrets_its_gateways_name(
) -> anyhow::Result<()> {
    let cluster = Cluster::builder()
        .node(&[GATEWAY_POD, OUTSIDE_POD])
        .node(&["web"])
        .namespace(GATEWAY_POD, "istio-system")
        .namespace(OUTSIDE_POD, "outside")
        .build()?;
    let [gateway_pod, outside, web] = cluster.pods_named([GATEWAY_POD, OUTSIDE_POD, "web"])?;
    let mut config = MeshConfig {
        istio: vec![
            json!({
                "apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                "metadata": { "name": "web", "namespace": "default" },
                "spec": {
                    "selector": { "istio": "ingressgateway" },
                    "servers": [{
                        "port": { "number": 443, "name": "https", "protocol": "HTTPS" },
                        "hosts": ["web.example.com"],
                        "tls": { "mode": "SIMPLE", "credentialName": "web-cert" },
                    }],
                },
            }),
            json!({
                "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": { "name": "web", "namespace": "default" },
                "spec": {
                    "hosts": ["web.example.com"], "gateways": ["web"],
                    "http": [{ "route": [{ "destination": { "host": "web" } }] }],
                },
            }),
        ],
        ..mesh::enrolling(
            &cluster,
            &[web],
            vec![mesh::service("web", WEB_VIP, 80, 8080, &[web])],
        )
    };
    for pod in config.pods.iter_mut().filter(|pod| pod.name == GATEWAY_POD) {
        pod.labels = vec![
            ("istio".into(), "ingressgateway".into()),
            (VIEW_LABEL.into(), GATEWAY_POD.into()),
        ];
    }
    // The agents read the API server, and the gateway its Gateways and
    // routes through its agent's mesh view; its Secrets it reads itself.
    let api = ApiServer::start(&cluster)?;
    api.apply(&config)?;
    let kubeconfig = api.kubeconfig().to_path_buf();
    let agents_source = Source::Kubeconfig(kubeconfig.clone());
    let viewer = format!("--mesh-view-for=istio-system/{GATEWAY_POD}");
    let (ca, _agents) =
        mesh::start_secured_from(&cluster, &config, 3600, (&agents_source, &[&viewer]))?;
    let _web = Server::new("web", "v1").http(8080).start(&cluster, web)?;
    let work = cluster.work_dir().to_path_buf();
    let pki = TestPki::new("web-ca", &work.join("pki"))?;
    let issued = pki.server(&["web.example.com"], &work.join("web-cert"))?;
    let server = api.server();
    let apply = |secret: Value| server.apply(secret).map_err(|r| anyhow::anyhow!(r.message));
    apply(tls_secret("web-cert", &issued)?)?;
    apply(tls_secret("unrelated", &issued)?)?;
    let gateway = Waypoint::start_gateway(
        &cluster,
        gateway_pod,
        GATEWAY_POD,
        (&Source::AgentView, None),
        &ca,
        vec!["--kubeconfig".into(), kubeconfig.into()],
    )?;
    let served_with = |ca: &Path| -> anyhow::Result<bool> {
        let load =
            trusting(HttpLoad::new(1), ca, None).connect(SocketAddr::from((gateway_pod.ip, 443)));
        let summary = load.run(&cluster, outside.place(), "https://web.example.com/")?;
        Ok(summary.versions.get("web/v1") == Some(&1))
    };
    wait_for(
        "HTTPS with the Secret's certificate",
        Duration::from_secs(10),
        || served_with(pki.ca_file()),
    )
    .with_context(|| gateway.output())?;

    // The Secret rotated through the API: the next handshakes present the
    // new certificate, with no restart.
    let rotated = TestPki::new("rotated-ca", &work.join("rotated-pki"))?;
    apply(tls_secret(
        "web-cert",
        &rotated.server(&["web.example.com"], &work.join("rotated"))?,
    )?)?;
    wait_for(
        "HTTPS with the rotated certificate",
        Duration::from_secs(10),
        || served_with(rotated.ca_file()),
    )?;
    ensure!(!served_with(pki.ca_file())?, "the old certificate is gone");

    // It asked for the one Secret, by name, in its own namespace.
    let read: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|request| request.contains("secrets"))
        .collect();
    ensure!(
        !read.is_empty()
            && read.iter().all(|request| {
                request.contains("/api/v1/namespaces/istio-system/secrets?")
                    && request.contains("fieldSelector=metadata.name%3Dweb-cert")
            }),
        "Secrets read: {read:#?}"
    );
    Ok(())
}
