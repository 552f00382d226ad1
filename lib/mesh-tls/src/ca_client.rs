//! What a proxy uses to obtain certificates: a key made here, a
//! signing request to the CA over TLS (the CA proving its own identity),
//! a token as the credential: a bootstrap token, or the agent's projected
//! service account token, read again for every request since the kubelet
//! rotates it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit_identity::{certificate_request, tls, Identity, TrustBundle, WorkloadCertificate};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::ca_protocol::{
    decode_message, frame, unframe, CertificateRequest, CertificateResponse, GrpcCode,
    CREATE_CERTIFICATE_PATH,
};

/// How long one request to the CA may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    #[error("the CA at {addr} refused: gRPC status {code}: {message}")]
    Refused {
        addr: String,
        /// gRPC's status code ([`GrpcCode`]).
        code: u32,
        message: String,
    },
    #[error("the CA at {addr} did not answer within {REQUEST_TIMEOUT:?}")]
    Timeout { addr: String },
    #[error("asking the CA at {addr}: {message}")]
    Failed { addr: String, message: String },
}

pub struct CaClient {
    /// `host:port`, resolved at each request (a Service name in Kubernetes).
    addr: String,
    connector: tokio_rustls::TlsConnector,
    credential: Credential,
}

/// The token an agent presents to the CA.
#[derive(Debug, Clone)]
pub enum Credential {
    Token(String),
    /// A file holding the token, read at every request.
    TokenFile(PathBuf),
}

impl From<String> for Credential {
    fn from(token: String) -> Self {
        Self::Token(token)
    }
}

impl Credential {
    /// The token to present now.
    pub fn current(&self) -> std::io::Result<String> {
        match self {
            Self::Token(token) => Ok(token.clone()),
            Self::TokenFile(path) => std::fs::read_to_string(path)
                .map(|token| token.trim().to_string())
                .map_err(|error| {
                    std::io::Error::new(
                        error.kind(),
                        format!("reading the token {}: {error}", path.display()),
                    )
                }),
        }
    }
}

/// A certificate and the roots it came with.
pub struct Certified {
    pub certificate: WorkloadCertificate,
    pub trust_bundle_pem: String,
}

impl CaClient {
    /// A client of the CA at `addr` (`host:port`), which must prove it is `ca_identity`
    /// under `bundle`.
    pub fn new(
        addr: impl ToString,
        bundle: &TrustBundle,
        ca_identity: &Identity,
        credential: impl Into<Credential>,
    ) -> Result<Self, tls::TlsError> {
        let config = tls::client_config_without_certificate(bundle, ca_identity)?;
        Ok(Self {
            addr: addr.to_string(),
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            credential: credential.into(),
        })
    }

    /// A new key, certified as `identity`.
    pub async fn certify(&self, identity: &Identity) -> Result<Certified, CaClientError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.ask(identity))
            .await
            .map_err(|_| CaClientError::Timeout {
                addr: self.addr.clone(),
            })?
    }

    async fn ask(&self, identity: &Identity) -> Result<Certified, CaClientError> {
        let addr = &self.addr;
        let failed = |message: String| CaClientError::Failed {
            addr: addr.clone(),
            message,
        };
        let token = self
            .credential
            .current()
            .map_err(|e| failed(e.to_string()))?;
        let (key, csr) = certificate_request(identity).map_err(|e| failed(e.to_string()))?;
        // As ztunnel asks istiod: for the identity of a pod on its node.
        let body = frame(
            &CertificateRequest {
                csr,
                validity_seconds: 0,
                impersonated_identity: Some(identity.to_string()),
            }
            .encode(),
        );
        let tcp = tokio::net::TcpStream::connect(addr.as_str())
            .await
            .map_err(|e| failed(e.to_string()))?;
        // The CA is verified by its SPIFFE identity, whatever name found it.
        let peer = tcp.peer_addr().map_err(|e| failed(e.to_string()))?;
        let tls = self
            .connector
            .connect(peer.ip().into(), tcp)
            .await
            .map_err(|e| failed(format!("TLS: {e}")))?;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| failed(e.to_string()))?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("https://{addr}{CREATE_CERTIFICATE_PATH}"))
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(hyper::header::CONTENT_TYPE, "application/grpc")
            .header(hyper::header::TE, "trailers")
            .body(Full::new(body))
            .map_err(|e| failed(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let (parts, body) = response.into_parts();
        if parts.status != StatusCode::OK {
            return Err(failed(format!("HTTP {}", parts.status)));
        }
        let collected = body.collect().await.map_err(|e| failed(e.to_string()))?;
        // The status comes in the trailers, or alone in the headers.
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let status = |name: &str| {
            trailers
                .get(name)
                .or_else(|| parts.headers.get(name))
                .and_then(|value| value.to_str().ok())
                .map(str::to_string)
        };
        let code = status("grpc-status")
            .and_then(|code| code.parse::<u32>().ok())
            .ok_or_else(|| failed("an answer without a gRPC status".to_string()))?;
        if code != GrpcCode::Ok as u32 {
            return Err(CaClientError::Refused {
                addr: addr.clone(),
                code,
                message: status("grpc-message")
                    .map(|message| decode_message(&message))
                    .unwrap_or_default(),
            });
        }
        let body = collected.to_bytes();
        let answer = unframe(&body)
            .and_then(CertificateResponse::decode)
            .map_err(|e| failed(e.to_string()))?;
        // The leaf and its intermediates, then the root.
        let Some((root, chain)) = answer
            .cert_chain
            .split_last()
            .filter(|(_, c)| !c.is_empty())
        else {
            return Err(failed(
                "an answer without a certificate and its root".to_string(),
            ));
        };
        let chain: String = chain
            .iter()
            .map(|pem| format!("{}\n", pem.trim_end()))
            .collect();
        let certificate =
            WorkloadCertificate::new(identity, &key, &chain).map_err(|e| failed(e.to_string()))?;
        Ok(Certified {
            certificate,
            trust_bundle_pem: root.clone(),
        })
    }
}
