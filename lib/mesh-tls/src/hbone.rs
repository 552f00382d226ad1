//! HBONE in mutual TLS as workload identities: the client side (pooled
//! connections to a peer's 15008, each proving the calling workload's
//! certificate and checking the peer's identity) and the server side's
//! TLS (proving the served workload's certificate, learning the caller's).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ambit_hbone::client::Connection;
use ambit_hbone::pool::Pool;
use ambit_hbone::{Caller, TunnelStream};
use ambit_identity::tls::{client_config, server_config, TlsError};
use ambit_identity::{Identity, TrustBundle, WorkloadCertificate};
use rustls::pki_types::ServerName;
use rustls::ServerConfig;
use tokio::net::TcpStream;

use crate::certificates::Certificates;
use crate::records::TlsStream;

/// Connections are pooled per calling workload (its identity and address),
/// peer identity and peer address: a connection speaks for one workload.
type PoolKey = (Identity, IpAddr, Identity, IpAddr);

/// A pooled connection that carries no stream and has opened none for this
/// long is closed, so a proxy does not keep a TLS connection to every peer
/// it ever called.
const IDLE_CONNECTION: Duration = Duration::from_secs(300);
/// How long a connection waits for its workload's first certificate.
pub const CERTIFICATE_WAIT: Duration = Duration::from_secs(5);

/// A TLS connection accepted on a 15008 listener.
pub type Accepted = TlsStream;

/// The peer end of an HBONE connection: a workload's identity and address.
#[derive(Debug, Clone, Copy)]
pub struct Party<'a> {
    pub identity: &'a Identity,
    pub ip: IpAddr,
}

pub struct MeshTls {
    certificates: Arc<Certificates>,
    bundle: TrustBundle,
    /// Tagged with the expiry of the certificate each connection proved.
    pool: Arc<Pool<PoolKey, SystemTime>>,
    /// The 15008 listeners' TLS configuration per identity, made once per
    /// certificate rather than once per connection.
    server_configs: Mutex<HashMap<Identity, (SystemTime, Arc<ServerConfig>)>>,
}

impl MeshTls {
    pub fn new(certificates: Arc<Certificates>, bundle: TrustBundle) -> Self {
        Self {
            certificates,
            bundle,
            pool: Arc::default(),
            server_configs: Mutex::default(),
        }
    }

    pub fn certificates(&self) -> &Certificates {
        &self.certificates
    }

    /// The task that closes idle pooled connections, checking every tenth
    /// of the idle time.
    pub fn release_idle_connections(&self) -> impl Future<Output = ()> + 'static {
        let pool = self.pool.clone();
        async move {
            let mut ticks = tokio::time::interval(IDLE_CONNECTION / 10);
            loop {
                ticks.tick().await;
                pool.release_idle(IDLE_CONNECTION);
            }
        }
    }

    /// A stream to `target` for the workload of `identity` at
    /// `caller.client` (what else `caller` holds, the stream's headers
    /// tell the peer), through the peer `peer` (its 15008 at `peer.ip`), on
    /// a pooled connection or a new one whose socket `dial` connects.
    pub async fn open<D, Dialled>(
        &self,
        (identity, caller): (&Identity, Caller<'_>),
        peer: Party<'_>,
        target: SocketAddr,
        dial: D,
    ) -> std::io::Result<TunnelStream>
    where
        D: FnOnce(SocketAddr) -> Dialled,
        Dialled: Future<Output = std::io::Result<TcpStream>>,
    {
        let certificate = self
            .certificates
            .obtain(identity, CERTIFICATE_WAIT)
            .await
            .ok_or_else(|| std::io::Error::other(format!("no certificate for {identity}")))?;
        let connect = || async {
            let address = SocketAddr::new(peer.ip, ambit_hbone::HBONE_PORT);
            let tcp = dial(address).await?;
            // Small frames (a request, its answer) leave at once, whoever
            // dialled: Nagle would hold each ~40 ms for an acknowledgement.
            tcp.set_nodelay(true)?;
            let config = client_config(&certificate, &self.bundle, peer.identity)
                .map_err(std::io::Error::other)?;
            let tls =
                TlsStream::connect(Arc::new(config), ServerName::IpAddress(peer.ip.into()), tcp)
                    .await?;
            Connection::handshake(tls).await
        };
        let key = (
            identity.clone(),
            caller.client,
            peer.identity.clone(),
            peer.ip,
        );
        self.pool
            .open(&key, &certificate.not_after, target, caller, connect)
            .await
            .map_err(std::io::Error::other)
    }

    /// Mutual TLS on an accepted 15008 connection, proving `identity`'s
    /// certificate, within `timeout`.
    pub async fn accept(
        &self,
        identity: &Identity,
        stream: TcpStream,
        timeout: Duration,
    ) -> std::io::Result<Accepted> {
        let certificate = self
            .certificates
            .obtain(identity, CERTIFICATE_WAIT)
            .await
            .ok_or_else(|| std::io::Error::other(format!("no certificate for {identity}")))?;
        // Small frames (an HTTP request, its answer) leave at once.
        let _ = stream.set_nodelay(true);
        let config = self
            .server_config(&certificate)
            .map_err(std::io::Error::other)?;
        tokio::time::timeout(timeout, TlsStream::accept(config, stream))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("TLS handshake not completed in {timeout:?}"),
                )
            })?
    }

    /// The server configuration proving `certificate`, made on first use.
    fn server_config(
        &self,
        certificate: &WorkloadCertificate,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let mut configs = self
            .server_configs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((made_for, config)) = configs.get(&certificate.identity) {
            if *made_for == certificate.not_after {
                return Ok(config.clone());
            }
        }
        let config = Arc::new(server_config(certificate, &self.bundle)?);
        // Rare (a new certificate): forget identities no longer held.
        configs.retain(|identity, _| self.certificates.get(identity).is_some());
        configs.insert(
            certificate.identity.clone(),
            (certificate.not_after, config.clone()),
        );
        Ok(config)
    }
}
