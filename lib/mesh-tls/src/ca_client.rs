//! What a proxy uses to obtain certificates: a key made here, a
//! signing request to the CA over TLS (the CA proving its own identity),
//! a token as the credential: a bootstrap token, or the agent's projected
//! service account token, read again for every request since the kubelet
//! rotates it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit_identity::{certificate_request, tls, Identity, TrustBundle, WorkloadCertificate};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

use crate::ca_protocol::{CertificateRequest, CertificateResponse, CERTIFICATE_PATH};

/// How long one request to the CA may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    #[error("the CA at {addr} refused: HTTP {status}: {message}")]
    Refused {
        addr: String,
        status: StatusCode,
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
        let body = serde_json::to_vec(&CertificateRequest {
            identity: identity.to_string(),
            csr,
        })
        .map_err(|e| failed(e.to_string()))?;
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
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| failed(e.to_string()))?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(Method::POST)
            .uri(CERTIFICATE_PATH)
            .header(hyper::header::HOST, addr.as_str())
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| failed(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| failed(e.to_string()))?
            .to_bytes();
        if status != StatusCode::OK {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|value| value["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(CaClientError::Refused {
                addr: addr.clone(),
                status,
                message,
            });
        }
        let answer: CertificateResponse =
            serde_json::from_slice(&body).map_err(|e| failed(format!("unreadable answer: {e}")))?;
        let certificate = WorkloadCertificate::new(identity, &key, &answer.certificate_chain)
            .map_err(|e| failed(e.to_string()))?;
        Ok(Certified {
            certificate,
            trust_bundle_pem: answer.trust_bundle,
        })
    }
}
