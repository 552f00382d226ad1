#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test
//! The CA in process, over real TLS on loopback: node agents get
//! certificates for the service accounts of their own node's pods and are
//! refused others, unknown callers are refused, the root survives a restart.

use std::path::Path;

use rustls::pki_types::pem::PemObject;

use ambit_ca::{app, Args, Config};
use ambit_identity::{Identity, TrustBundle};
use ambit_mesh_tls::ca_client::{CaClient, CaClientError};
use ambit_mesh_tls::ca_protocol::{CertificateRequest, GrpcCode, CREATE_CERTIFICATE_PATH};
use clap::Parser;

const NODE_1_TOKEN: &str = "node-1-secret-0123456789";
const NODE_2_TOKEN: &str = "node-2-secret-9876543210";

fn config(dir: &Path) -> Config {
    let path = |name: &str| dir.join(name).display().to_string();
    let args = Args::parse_from([
        "ambit-ca",
        "--listen=127.0.0.1:0",
        "--admin-addr=127.0.0.1:0",
        "--readiness-addr=127.0.0.1:0",
        "--metrics-addr=127.0.0.1:0",
        &format!("--root-dir={}", path("root")),
        &format!("--node-tokens={}", path("tokens")),
        &format!("--config-dir={}", path("mesh")),
    ]);
    Config::from_args(args).unwrap()
}

/// A client that trusts the root in `root_file` (under the CA's root dir).
fn client_trusting(running: &app::Running, dir: &Path, root_file: &str, token: &str) -> CaClient {
    let root = std::fs::read_to_string(dir.join("root").join(root_file)).unwrap();
    let bundle = TrustBundle::from_pem("cluster.local", &root).unwrap();
    let ca = Identity::new("cluster.local", "ambit-system", "ambit-ca");
    CaClient::new(running.addr, &bundle, &ca, token.to_string()).unwrap()
}

fn client(running: &app::Running, dir: &Path, token: &str) -> CaClient {
    client_trusting(running, dir, "ca-cert.pem", token)
}

/// A fresh directory for a standalone CA: two nodes' tokens, and a mesh with
/// `cart` on node-1 and `pay` on node-2.
fn standalone_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ambit-ca-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("mesh")).unwrap();
    std::fs::write(
        dir.join("tokens"),
        format!("# node agents\nnode-1 {NODE_1_TOKEN}\nnode-2 {NODE_2_TOKEN}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("mesh/pods.yaml"),
        "{apiVersion: v1, kind: Pod, metadata: {name: cart-1, namespace: shop}, spec: {nodeName: node-1, serviceAccountName: cart}}\n---\n\
         {apiVersion: v1, kind: Pod, metadata: {name: pay-1, namespace: shop}, spec: {nodeName: node-2, serviceAccountName: pay}}\n",
    )
    .unwrap();
    dir
}

#[tokio::test]
async fn agents_get_the_identities_of_their_nodes_pods_only() {
    let dir = standalone_dir("own");
    let running = app::start(config(&dir)).await.unwrap();
    let (cart, pay) = (
        Identity::new("cluster.local", "shop", "cart"),
        Identity::new("cluster.local", "shop", "pay"),
    );

    let node_1 = client(&running, &dir, NODE_1_TOKEN);
    let certified = node_1.certify(&cart).await.unwrap();
    assert_eq!(certified.certificate.identity, cart);
    let root = std::fs::read_to_string(dir.join("root/ca-cert.pem")).unwrap();
    assert_eq!(certified.trust_bundle_pem, root);

    match node_1.certify(&pay).await {
        Err(CaClientError::Refused { code, message, .. }) => {
            assert_eq!(code, GrpcCode::PermissionDenied as u32);
            assert_eq!(
                message,
                "no pod on node node-1 runs as spiffe://cluster.local/ns/shop/sa/pay"
            );
        }
        other => panic!(
            "node-1 got pay's identity: {:?}",
            other.map(|c| c.certificate)
        ),
    }
    let node_2 = client(&running, &dir, NODE_2_TOKEN);
    assert_eq!(
        node_2.certify(&pay).await.unwrap().certificate.identity,
        pay
    );

    let stranger = client(&running, &dir, "a-token-nobody-was-given");
    match stranger.certify(&cart).await {
        Err(CaClientError::Refused { code, .. }) => {
            assert_eq!(code, GrpcCode::Unauthenticated as u32)
        }
        other => panic!(
            "an unknown caller got a certificate: {:?}",
            other.map(|c| c.certificate)
        ),
    }

    // A CA that is not the expected identity is not trusted with the key's request.
    let bundle = TrustBundle::from_pem("cluster.local", &root).unwrap();
    let impostor = Identity::new("cluster.local", "shop", "ambit-ca");
    let wary = CaClient::new(running.addr, &bundle, &impostor, NODE_1_TOKEN.to_string()).unwrap();
    assert!(matches!(
        wary.certify(&cart).await,
        Err(CaClientError::Failed { .. })
    ));

    // The root is kept: a restarted CA certifies under the same root.
    running.stop().await;
    let restarted = app::start(config(&dir)).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("root/ca-cert.pem")).unwrap(),
        root
    );
    let again = client(&restarted, &dir, NODE_1_TOKEN)
        .certify(&cart)
        .await
        .unwrap();
    assert_eq!(again.trust_bundle_pem, root);
    restarted.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_istio_cacerts_intermediate_is_used_as_it_is_and_its_root_is_the_one_trusted() {
    let dir = standalone_dir("istio");
    // Istio's plug-in CA layout, shared with the identity crate's tests.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lib/identity/tests/istio-ca");
    std::fs::create_dir_all(dir.join("root")).unwrap();
    for name in [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    ] {
        std::fs::copy(fixtures.join(name), dir.join("root").join(name)).unwrap();
    }
    let running = app::start(config(&dir)).await.unwrap();
    // Trusting the root alone, the agent accepts the CA's own certificate
    // (so it came with the intermediate) and is told to trust that root.
    let certified = client_trusting(&running, &dir, "root-cert.pem", NODE_1_TOKEN)
        .certify(&Identity::new("cluster.local", "shop", "cart"))
        .await
        .unwrap();
    let root = std::fs::read_to_string(fixtures.join("root-cert.pem")).unwrap();
    assert_eq!(certified.trust_bundle_pem, root);
    running.stop().await;

    // A chain that leads elsewhere stops the CA, saying why.
    std::fs::copy(fixtures.join("ec-cert.pem"), dir.join("root/root-cert.pem")).unwrap();
    let error = app::start(config(&dir)).await.err().unwrap();
    let error = format!("{error:#}");
    assert!(
        error.contains("loading the CA root from")
            && error
                .contains("are not trusted by its root: invalid peer certificate: UnknownIssuer"),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A certificate refusal's gRPC status, or a panic naming what was issued instead.
fn refusal(result: Result<ambit_mesh_tls::ca_client::Certified, CaClientError>) -> (u32, String) {
    match result {
        Err(CaClientError::Refused { code, message, .. }) => (code, message),
        other => panic!("expected a refusal, got {:?}", other.map(|c| c.certificate)),
    }
}

#[tokio::test]
async fn in_kubernetes_agents_prove_their_node_with_service_account_tokens() {
    use ambit_fake_apiserver::{FakeApiServer, ServiceAccountToken};
    use std::sync::Arc;

    let dir = std::env::temp_dir().join(format!("ambit-ca-kube-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let api = Arc::new(FakeApiServer::default());
    for namespace in ["ambit-system", "shop", "kube-system"] {
        api.create(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": namespace },
        }))
        .unwrap();
    }
    for (name, namespace, node, sa) in [
        ("cart-1", "shop", "node-1", "cart"),
        ("pay-1", "shop", "node-2", "pay"),
        ("agent-1", "ambit-system", "node-1", "ambit-node-agent"),
        ("waypoint-1", "shop", "node-2", "waypoint"),
    ] {
        api.create(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "namespace": namespace },
            "spec": { "nodeName": node, "serviceAccountName": sa },
        }))
        .unwrap();
    }
    let token = |sa: &str, audience: &str| ServiceAccountToken {
        namespace: "ambit-system".into(),
        service_account: sa.into(),
        pod: "agent-1".into(),
        node: "node-1".into(),
        audiences: vec![audience.into()],
    };
    api.add_service_account_token("agent-token", token("ambit-node-agent", "ambit-ca"));
    api.add_service_account_token("other-sa-token", token("default", "ambit-ca"));
    api.add_service_account_token(
        "waypoint-token",
        ServiceAccountToken {
            namespace: "shop".into(),
            service_account: "waypoint".into(),
            pod: "waypoint-1".into(),
            node: "node-2".into(),
            audiences: vec!["ambit-ca".into()],
        },
    );
    api.add_service_account_token(
        "api-server-token",
        token("ambit-node-agent", "https://kubernetes.default.svc"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(api.clone().serve(listener));
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig(&url)).unwrap();
    let config = || {
        Config::from_args(Args::parse_from([
            "ambit-ca",
            "--listen=127.0.0.1:0",
            "--admin-addr=127.0.0.1:0",
            "--readiness-addr=127.0.0.1:0",
            "--metrics-addr=127.0.0.1:0",
            "--namespace=ambit-system",
            &format!("--kubeconfig={}", kubeconfig.display()),
        ]))
        .unwrap()
    };

    let running = app::start(config()).await.unwrap();
    // The root was created in its Secret.
    let secret: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(api.objects("Secret")[0].clone()).unwrap();
    assert_eq!(secret.metadata.name.as_deref(), Some("ambit-ca-root"));
    let pem = |key: &str| String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap();
    let root = pem("ca-cert.pem");
    assert!(pem("ca-key.pem").contains("PRIVATE KEY"));
    // The root certificate, and only it, is published for the proxies: in
    // every namespace of the mesh (a waypoint mounts it from its own), not
    // in kube-system.
    let published = || {
        let config_maps = api.objects("ConfigMap");
        let mut namespaces: Vec<String> = config_maps
            .iter()
            .filter(|c| c["metadata"]["name"] == "ambit-ca-root-cert")
            .inspect(|c| assert_eq!(c["data"], serde_json::json!({ "root-cert.pem": root })))
            .map(|c| c["metadata"]["namespace"].as_str().unwrap().to_string())
            .collect();
        namespaces.sort();
        namespaces
    };
    for _ in 0..100 {
        if published().len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(published(), ["ambit-system", "shop"]);
    let bundle = TrustBundle::from_pem("cluster.local", &root).unwrap();
    let ca = Identity::new("cluster.local", "ambit-system", "ambit-ca");
    let client = |addr, token: &str| CaClient::new(addr, &bundle, &ca, token.to_string()).unwrap();
    let (cart, pay) = (
        Identity::new("cluster.local", "shop", "cart"),
        Identity::new("cluster.local", "shop", "pay"),
    );

    // The agent on node-1 gets node-1's identities, not node-2's.
    let agent = client(running.addr, "agent-token");
    assert_eq!(
        agent.certify(&cart).await.unwrap().certificate.identity,
        cart
    );
    assert_eq!(
        refusal(agent.certify(&pay).await),
        (
            GrpcCode::PermissionDenied as u32,
            "no pod on node node-1 runs as spiffe://cluster.local/ns/shop/sa/pay".into()
        )
    );
    // A waypoint's own pod-bound token: its own identity, nothing else.
    let waypoint = client(running.addr, "waypoint-token");
    let own = Identity::new("cluster.local", "shop", "waypoint");
    assert_eq!(
        waypoint.certify(&own).await.unwrap().certificate.identity,
        own
    );
    assert_eq!(
        refusal(waypoint.certify(&cart).await),
        (
            GrpcCode::PermissionDenied as u32,
            "the pod shop/waypoint-1 may hold only its own identity, not spiffe://cluster.local/ns/shop/sa/cart".into()
        )
    );
    // Another service account's token on the agent's pod, a token for the
    // API server's audience, and a token the API server never issued are
    // all refused.
    let (status, message) = refusal(client(running.addr, "other-sa-token").certify(&cart).await);
    assert_eq!(status, GrpcCode::PermissionDenied as u32);
    assert!(
        message.contains("the pod ambit-system/agent-1 may hold only its own identity"),
        "{message}"
    );
    for token in ["api-server-token", "forged-token"] {
        let (status, message) = refusal(client(running.addr, token).certify(&cart).await);
        assert_eq!(status, GrpcCode::Unauthenticated as u32, "{token}");
        assert!(
            message.contains("does not accept the token"),
            "{token}: {message}"
        );
    }

    // A restarted CA keeps the root from its Secret.
    running.stop().await;
    let restarted = app::start(config()).await.unwrap();
    let again = client(restarted.addr, "agent-token")
        .certify(&cart)
        .await
        .unwrap();
    assert_eq!(again.trust_bundle_pem, root);
    assert_eq!(api.objects("Secret").len(), 1);
    assert_eq!(published(), ["ambit-system", "shop"], "published once each");
    assert_eq!(api.objects("ConfigMap").len(), 2);
    restarted.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A gRPC call made by hand, as any client of Istio's API makes it: the
/// request's protobuf bytes framed, the status read from the trailers or,
/// for a refusal, the headers.
async fn grpc_call(
    running: &app::Running,
    dir: &Path,
    path: &str,
    message: &[u8],
) -> (u32, String) {
    use http_body_util::{BodyExt, Full};
    let root = std::fs::read_to_string(dir.join("root/ca-cert.pem")).unwrap();
    let bundle = TrustBundle::from_pem("cluster.local", &root).unwrap();
    let ca = Identity::new("cluster.local", "ambit-system", "ambit-ca");
    let config = ambit_identity::tls::client_config_without_certificate(&bundle, &ca).unwrap();
    let tcp = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(running.addr.ip().into(), tcp)
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let mut framed = vec![0];
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(message);
    let request = hyper::Request::post(format!("https://{}{path}", running.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {NODE_1_TOKEN}"))
        .body(Full::new(bytes::Bytes::from(framed)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let headers = response.headers().clone();
    let trailers = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .trailers()
        .cloned();
    let get = |name: &str| {
        let value = trailers
            .as_ref()
            .and_then(|t| t.get(name))
            .or(headers.get(name));
        value
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    (get("grpc-status").parse().unwrap(), get("grpc-message"))
}

#[tokio::test]
async fn istios_api_answers_what_it_cannot_do_with_grpc_statuses() {
    let dir = standalone_dir("grpc");
    let running = app::start(config(&dir)).await.unwrap();
    // `IstioCertificateRequest { csr: "x" }`: no request to read an identity from.
    let (code, message) = grpc_call(&running, &dir, CREATE_CERTIFICATE_PATH, b"\x0a\x01x").await;
    assert_eq!(code, GrpcCode::InvalidArgument as u32, "{message}");
    assert!(message.contains("not a PKCS #10 request"), "{message}");
    // No ImpersonatedIdentity, as a sidecar or a dedicated ztunnel asks:
    // the identity its request names, authorized as any other.
    let asking_for = |identity: &Identity| {
        let (_, csr) = ambit_identity::certificate_request(identity).unwrap();
        CertificateRequest {
            csr,
            ..CertificateRequest::default()
        }
        .encode()
    };
    let cart = asking_for(&Identity::new("cluster.local", "shop", "cart"));
    let (code, message) = grpc_call(&running, &dir, CREATE_CERTIFICATE_PATH, &cart).await;
    assert_eq!(code, GrpcCode::Ok as u32, "{message}");
    let pay = asking_for(&Identity::new("cluster.local", "shop", "pay"));
    let (code, message) = grpc_call(&running, &dir, CREATE_CERTIFICATE_PATH, &pay).await;
    assert_eq!(code, GrpcCode::PermissionDenied as u32, "{message}");
    assert_eq!(
        message,
        "no pod on node node-1 runs as spiffe://cluster.local/ns/shop/sa/pay"
    );
    // Another method of the service.
    let other = "/istio.v1.auth.IstioCertificateService/Other";
    let (code, message) = grpc_call(&running, &dir, other, b"").await;
    assert_eq!(code, GrpcCode::Unimplemented as u32, "{message}");
    // Bytes that are no protobuf message.
    let (code, _) = grpc_call(&running, &dir, CREATE_CERTIFICATE_PATH, b"\x0a\x09x").await;
    assert_eq!(code, GrpcCode::InvalidArgument as u32);
    running.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Istio's proxies check the CA as a web client checks a server, by the
/// host name they dial (`istiod.istio-system.svc` for istiod): the CA's
/// serving certificate names its Service so, and no other.
#[tokio::test]
async fn the_ca_is_verified_by_the_host_name_of_its_service() {
    let dir = standalone_dir("host");
    let running = app::start(config(&dir)).await.unwrap();
    let root = std::fs::read(dir.join("root/ca-cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls::pki_types::CertificateDer::pem_slice_iter(&root) {
        roots.add(certificate.unwrap()).unwrap();
    }
    let config = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let handshake = |host: &'static str| {
        let config = config.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(running.addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from(host).unwrap();
            tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map(drop)
        }
    };
    handshake("ambit-ca.ambit-system.svc").await.unwrap();
    let error = handshake("istiod.istio-system.svc").await.unwrap_err();
    assert!(error.to_string().contains("not valid for name"), "{error}");
    running.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
