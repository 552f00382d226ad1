#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test
//! Real TLS handshakes between the configurations the proxies use: who is
//! accepted, who is refused, and which identity each side sees.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ambit_identity::ca::{CaError, CaFiles, DEFAULT_TTL};
use ambit_identity::certificate::CertificateError;
use ambit_identity::tls::{client_config, peer_identity, server_config};
use ambit_identity::{
    certificate_request, CertificateAuthority, Identity, TrustBundle, WorkloadCertificate,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const DOMAIN: &str = "cluster.local";

fn workload(ca: &CertificateAuthority, namespace: &str, account: &str) -> WorkloadCertificate {
    let identity = Identity::new(ca.trust_domain(), namespace, account);
    let (key, csr) = certificate_request(&identity).unwrap();
    let pem = ca.issue(&csr, &identity, DEFAULT_TTL).unwrap();
    WorkloadCertificate::new(&identity, &key, &pem).unwrap()
}

fn bundle(cas: &[&CertificateAuthority]) -> TrustBundle {
    let pem: String = cas.iter().map(|ca| ca.root_pem()).collect();
    TrustBundle::from_pem(DOMAIN, &pem).unwrap()
}

/// What each side saw: the peer's identity, or why the handshake failed.
type Seen = Result<Option<Identity>, String>;

async fn handshake(client: ClientConfig, server: ServerConfig) -> (Seen, Seen) {
    let (near, far) = tokio::io::duplex(64 * 1024);
    let connector = TlsConnector::from(Arc::new(client));
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let (client, server) = tokio::join!(connector.connect(name, near), acceptor.accept(far));
    let client = client
        .map(|stream| peer_identity(stream.get_ref().1))
        .map_err(|error| error.to_string());
    let server = server
        .map(|stream| peer_identity(stream.get_ref().1))
        .map_err(|error| error.to_string());
    (client, server)
}

fn failed(seen: &Seen, reason: &str) -> bool {
    matches!(seen, Err(error) if error.contains(reason))
}

/// Two workloads of `ca` shake hands, each trusting only `trust`, and each
/// sees the other's identity.
async fn assert_peers_see_each_other(ca: &CertificateAuthority, trust: &TrustBundle) {
    let (cart, pay) = (workload(ca, "shop", "cart"), workload(ca, "shop", "pay"));
    let (client, server) = handshake(
        client_config(&cart, trust, &pay.identity).unwrap(),
        server_config(&pay, trust).unwrap(),
    )
    .await;
    assert_eq!(client, Ok(Some(pay.identity.clone())));
    assert_eq!(server, Ok(Some(cart.identity.clone())));
}

#[tokio::test]
async fn peers_of_one_ca_see_each_others_identity() {
    let ca = CertificateAuthority::generate(DOMAIN).unwrap();
    assert_peers_see_each_other(&ca, &bundle(&[&ca])).await;
}

/// One of the Istio-shaped CA files in `tests/istio-ca` (see its README).
fn istio_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/istio-ca")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

#[tokio::test]
async fn an_istio_plugged_in_intermediate_ca_issues_chains_that_peers_trusting_the_root_accept() {
    let (cert, key, root, chain) = (
        istio_file("ca-cert.pem"),
        istio_file("ca-key.pem"),
        istio_file("root-cert.pem"),
        istio_file("cert-chain.pem"),
    );
    // Peers (ztunnels among them) trust the root alone, so every leaf must
    // carry the intermediate: from cert-chain.pem, or ca-cert.pem without it.
    for chain in [Some(chain.as_str()), None] {
        let files = CaFiles {
            cert: &cert,
            key: &key,
            root: Some(&root),
            chain,
        };
        let ca = CertificateAuthority::from_files(files, DOMAIN).unwrap();
        assert_eq!(ca.root_pem(), root);
        assert_peers_see_each_other(&ca, &TrustBundle::from_pem(DOMAIN, &root).unwrap()).await;
    }
}

#[tokio::test]
async fn istio_self_signed_roots_sign_with_their_pkcs1_rsa_and_sec1_ec_keys() {
    for (cert, key) in [
        ("root-cert.pem", "root-key.pem"),
        ("ec-cert.pem", "ec-key.pem"),
    ] {
        let (cert, key) = (istio_file(cert), istio_file(key));
        // As in Istio's `istio-ca-secret`, whose root and chain keys are empty.
        let files = CaFiles {
            cert: &cert,
            key: &key,
            root: Some(""),
            chain: Some("\n"),
        };
        let ca = CertificateAuthority::from_files(files, DOMAIN).unwrap();
        assert_eq!(ca.root_pem(), cert);
        assert_peers_see_each_other(&ca, &TrustBundle::from_pem(DOMAIN, &cert).unwrap()).await;
    }
}

#[test]
fn ca_files_that_do_not_fit_together_are_refused_with_the_reason() {
    let (cert, key) = (istio_file("ca-cert.pem"), istio_file("ca-key.pem"));
    let (other_root, chain) = (istio_file("ec-cert.pem"), istio_file("cert-chain.pem"));
    let intermediate = CaFiles {
        cert: &cert,
        key: &key,
        root: None,
        chain: None,
    };
    let under_another_root = CaFiles {
        root: Some(&other_root),
        ..intermediate
    };
    let Err(error) = CertificateAuthority::from_files(under_another_root, DOMAIN) else {
        panic!("a CA under a root that did not sign it was accepted");
    };
    assert!(
        matches!(&error, CaError::Untrusted(reason) if reason.contains("UnknownIssuer")),
        "{error}"
    );
    let without_root = CaFiles {
        chain: Some(&chain),
        ..intermediate
    };
    assert!(matches!(
        CertificateAuthority::from_files(without_root, DOMAIN),
        Err(CaError::ChainWithoutRoot)
    ));
    let unreadable = CertificateAuthority::from_pem(&cert, &cert, DOMAIN);
    assert!(matches!(unreadable, Err(CaError::UnreadableKey)));
    let mismatched = CertificateAuthority::from_pem(&cert, &istio_file("root-key.pem"), DOMAIN);
    assert!(matches!(mismatched, Err(CaError::KeyMismatch)));
}

#[tokio::test]
async fn a_server_that_is_not_the_expected_identity_is_refused() {
    let ca = CertificateAuthority::generate(DOMAIN).unwrap();
    let trust = bundle(&[&ca]);
    let (cart, pay) = (workload(&ca, "shop", "cart"), workload(&ca, "shop", "pay"));
    let expected = Identity::new(DOMAIN, "shop", "ledger");
    let (client, _) = handshake(
        client_config(&cart, &trust, &expected).unwrap(),
        server_config(&pay, &trust).unwrap(),
    )
    .await;
    assert!(
        failed(&client, "is spiffe://cluster.local/ns/shop/sa/pay, not the expected spiffe://cluster.local/ns/shop/sa/ledger"),
        "{client:?}"
    );
}

/// A certificate of `ca` for the workload `identities[0]` naming every one
/// of `identities` (Istio's CA issues one; others may issue several).
fn naming_several(ca: &CertificateAuthority, identities: &[&Identity]) -> WorkloadCertificate {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = identities
        .iter()
        .map(|identity| rcgen::SanType::URI(identity.to_string().try_into().unwrap()))
        .collect();
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let signer = rcgen::KeyPair::from_pem(&ca.key_pem()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca.root_pem(), signer).unwrap();
    let leaf = params.signed_by(&key, &issuer).unwrap();
    WorkloadCertificate::new(identities[0], &key, &leaf.pem()).unwrap()
}

/// As ztunnel: a server is accepted as any identity its certificate names,
/// and a peer is known by the first.
#[tokio::test]
async fn a_certificate_naming_several_identities_is_known_by_its_first() {
    let ca = CertificateAuthority::generate(DOMAIN).unwrap();
    let trust = bundle(&[&ca]);
    let cart = workload(&ca, "shop", "cart");
    let (pay, payments) = (
        Identity::new(DOMAIN, "shop", "pay"),
        Identity::new(DOMAIN, "shop", "payments"),
    );
    let both = naming_several(&ca, &[&pay, &payments]);

    let (client, _) = handshake(
        client_config(&cart, &trust, &payments).unwrap(),
        server_config(&both, &trust).unwrap(),
    )
    .await;
    assert_eq!(client, Ok(Some(pay.clone())));
    let (_, server) = handshake(
        client_config(&both, &trust, &cart.identity).unwrap(),
        server_config(&cart, &trust).unwrap(),
    )
    .await;
    assert_eq!(server, Ok(Some(pay.clone())));
    let (client, _) = handshake(
        client_config(&cart, &trust, &Identity::new(DOMAIN, "shop", "ledger")).unwrap(),
        server_config(&both, &trust).unwrap(),
    )
    .await;
    assert!(
        failed(&client, "is spiffe://cluster.local/ns/shop/sa/pay, not the expected spiffe://cluster.local/ns/shop/sa/ledger"),
        "{client:?}"
    );
}

#[tokio::test]
async fn certificates_of_another_ca_are_refused_both_ways() {
    let ca = CertificateAuthority::generate(DOMAIN).unwrap();
    let stranger = CertificateAuthority::generate(DOMAIN).unwrap();
    let trust = bundle(&[&ca]);
    let (cart, pay) = (workload(&ca, "shop", "cart"), workload(&ca, "shop", "pay"));
    let impostor = workload(&stranger, "shop", "pay");

    let (client, _) = handshake(
        client_config(&cart, &trust, &pay.identity).unwrap(),
        server_config(&impostor, &bundle(&[&stranger, &ca])).unwrap(),
    )
    .await;
    // Both roots bear the same name: the chain fails on its signature.
    assert!(failed(&client, "invalid peer certificate"), "{client:?}");

    let (_, server) = handshake(
        client_config(&impostor, &bundle(&[&stranger, &ca]), &pay.identity).unwrap(),
        server_config(&pay, &trust).unwrap(),
    )
    .await;
    assert!(failed(&server, "invalid peer certificate"), "{server:?}");
}

#[tokio::test]
async fn a_trusted_root_of_another_trust_domain_does_not_make_its_identities_ours() {
    let ca = CertificateAuthority::generate(DOMAIN).unwrap();
    let foreign = CertificateAuthority::generate("evil.example").unwrap();
    let trust = bundle(&[&ca, &foreign]);
    let pay = workload(&ca, "shop", "pay");
    let intruder = workload(&foreign, "shop", "cart");
    let (_, server) = handshake(
        client_config(&intruder, &trust, &pay.identity).unwrap(),
        server_config(&pay, &trust).unwrap(),
    )
    .await;
    assert!(
        failed(
            &server,
            "spiffe://evil.example/ns/shop/sa/cart is not in the trust domain cluster.local"
        ),
        "{server:?}"
    );
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let ca = CertificateAuthority::generate(DOMAIN).unwrap();
    let trust = bundle(&[&ca]);
    let pay = workload(&ca, "shop", "pay");
    let identity = Identity::new(DOMAIN, "shop", "cart");
    let (key, csr) = certificate_request(&identity).unwrap();
    let hour = Duration::from_secs(3600);
    let now = SystemTime::now();
    let pem = ca
        .issue_valid_between(&csr, &identity, now - 2 * hour, now - hour)
        .unwrap();
    let expired = WorkloadCertificate::new(&identity, &key, &pem).unwrap();
    let (_, server) = handshake(
        client_config(&expired, &trust, &pay.identity).unwrap(),
        server_config(&pay, &trust).unwrap(),
    )
    .await;
    assert!(failed(&server, "Expired"), "{server:?}");
}

/// A client that offers no certificate.
#[derive(Debug)]
struct NoCertificate;

impl rustls::client::ResolvesClientCert for NoCertificate {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let ca = CertificateAuthority::generate(DOMAIN).unwrap();
    let trust = bundle(&[&ca]);
    let (cart, pay) = (workload(&ca, "shop", "cart"), workload(&ca, "shop", "pay"));
    let mut anonymous = client_config(&cart, &trust, &pay.identity).unwrap();
    anonymous.client_auth_cert_resolver = Arc::new(NoCertificate);
    let (_, server) = handshake(anonymous, server_config(&pay, &trust).unwrap()).await;
    assert!(failed(&server, "peer sent no certificates"), "{server:?}");
}

#[tokio::test]
async fn during_a_root_rotation_both_roots_are_trusted() {
    let old = CertificateAuthority::generate(DOMAIN).unwrap();
    let new = CertificateAuthority::generate(DOMAIN).unwrap();
    let trust = bundle(&[&old, &new]);
    let (cart, pay) = (
        workload(&old, "shop", "cart"),
        workload(&new, "shop", "pay"),
    );
    let (client, server) = handshake(
        client_config(&cart, &trust, &pay.identity).unwrap(),
        server_config(&pay, &trust).unwrap(),
    )
    .await;
    assert_eq!(client, Ok(Some(pay.identity.clone())));
    assert_eq!(server, Ok(Some(cart.identity.clone())));
}

#[test]
fn the_ca_keeps_its_root_and_certifies_only_its_trust_domain() {
    let ca = CertificateAuthority::generate(DOMAIN).unwrap();
    let reloaded = CertificateAuthority::from_pem(ca.root_pem(), &ca.key_pem(), DOMAIN).unwrap();
    assert_eq!(reloaded.root_pem(), ca.root_pem());
    let other = CertificateAuthority::generate(DOMAIN).unwrap();
    assert!(matches!(
        CertificateAuthority::from_pem(ca.root_pem(), &other.key_pem(), DOMAIN),
        Err(CaError::KeyMismatch)
    ));

    let foreign = Identity::new("evil.example", "shop", "cart");
    let (_, csr) = certificate_request(&foreign).unwrap();
    let error = reloaded.issue(&csr, &foreign, DEFAULT_TTL).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the CA of trust domain cluster.local cannot certify spiffe://evil.example/ns/shop/sa/cart"
    );

    // The CA names the identity it decided, whatever the request asked for,
    // and the certificate must be for the key that asked.
    let asked = Identity::new(DOMAIN, "kube-system", "admin");
    let granted = Identity::new(DOMAIN, "shop", "cart");
    let (key, csr) = certificate_request(&asked).unwrap();
    let pem = reloaded.issue(&csr, &granted, DEFAULT_TTL).unwrap();
    let certificate = WorkloadCertificate::new(&granted, &key, &pem).unwrap();
    assert_eq!(certificate.identity, granted);
    let life = certificate
        .not_after
        .duration_since(certificate.not_before)
        .unwrap();
    assert!(
        life >= DEFAULT_TTL && life <= DEFAULT_TTL + Duration::from_secs(600),
        "{life:?}"
    );
    let (other_key, _) = certificate_request(&granted).unwrap();
    assert!(matches!(
        WorkloadCertificate::new(&granted, &other_key, &pem),
        Err(CertificateError::KeyMismatch)
    ));
    assert!(matches!(
        WorkloadCertificate::new(&asked, &key, &pem),
        Err(CertificateError::WrongIdentity { .. })
    ));
}
