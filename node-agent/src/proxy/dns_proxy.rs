//! The agent's DNS proxy in each enrolled pod's namespace (on the
//! outbound listener's loopback address and on `[::1]`, port 15053, UDP and
//! TCP), where
//! capture sends the pod's queries: names the mesh knows (Services,
//! ServiceEntry hosts, with the address Ambit gives a host that has none)
//! are answered from the mesh in force; the rest are asked of the node's
//! resolver and its answer passed back, as Istio's DNS proxying does.

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use super::{PodContext, ProxyInputs};
use ambit_dns as dns;

/// How long the mesh's answers may be kept.
const MESH_TTL: u32 = 30;
/// Queries one pod may have waiting on the node's resolver at once; more
/// are dropped (the pod's resolver asks again).
const MAX_FORWARDED: usize = 256;
/// How long a TCP client may stay silent, and its largest message.
const TCP_IDLE: Duration = Duration::from_secs(10);
const MAX_TCP_MESSAGE: usize = 64 << 10;
/// TCP connections one pod may hold to its proxy at once.
const MAX_TCP_CONNECTIONS: usize = 64;

/// What the proxy does with a query.
enum Reply {
    Answer(Vec<u8>),
    /// The node's resolver answers it.
    Forward,
    /// Not a query: nothing to answer.
    Drop,
}

/// The mesh's answer to `query`, from a pod in `namespace`.
fn reply(inputs: &ProxyInputs, namespace: &str, query: &[u8]) -> Reply {
    let Some(question) = dns::parse_query(query) else {
        return Reply::Drop;
    };
    let mesh = inputs.mesh.snapshot();
    match mesh.host_addresses(&question.name, namespace) {
        // A name the mesh knows has its A and AAAA records, no other.
        Some(addresses) => {
            dns::answer(query, &addresses, MESH_TTL).map_or(Reply::Drop, Reply::Answer)
        }
        None => Reply::Forward,
    }
}

/// The node's resolver's answer to `query`, if it gives one.
async fn forwarded(inputs: &ProxyInputs, query: &[u8]) -> Option<Vec<u8>> {
    let server = inputs.resolver.server()?;
    match dns::exchange(server, query).await {
        Ok(answer) => Some(answer),
        Err(error) => {
            tracing::debug!(%server, %error, "a forwarded DNS query failed");
            None
        }
    }
}

/// One pod's limits, over its proxy's sockets of both families.
#[derive(Clone)]
pub(super) struct Limits {
    forwarding: Arc<Semaphore>,
    tcp_connections: Arc<Semaphore>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            forwarding: Arc::new(Semaphore::new(MAX_FORWARDED)),
            tcp_connections: Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS)),
        }
    }
}

/// Serves the pod's UDP queries until the task is dropped.
pub(super) async fn serve_udp(
    socket: UdpSocket,
    limits: Limits,
    pod: Arc<PodContext>,
    inputs: Arc<ProxyInputs>,
) {
    let forwarding = limits.forwarding;
    let socket = Arc::new(socket);
    let mut buffer = [0u8; dns::MAX_UDP_MESSAGE];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        let query = buffer[..n].to_vec();
        match reply(&inputs, &pod.key.namespace, &query) {
            Reply::Answer(answer) => {
                let _ = socket.send_to(&answer, from).await;
            }
            Reply::Forward => {
                let Ok(place) = forwarding.clone().try_acquire_owned() else {
                    continue;
                };
                let (socket, inputs) = (socket.clone(), inputs.clone());
                tokio::spawn(async move {
                    let _place = place;
                    if let Some(answer) = forwarded(&inputs, &query).await {
                        let _ = socket.send_to(&answer, from).await;
                    }
                });
            }
            Reply::Drop => {}
        }
    }
}

/// Serves the pod's TCP queries (each message after its two-byte length)
/// until the task is dropped.
pub(super) async fn serve_tcp(
    listener: TcpListener,
    limits: Limits,
    pod: Arc<PodContext>,
    inputs: Arc<ProxyInputs>,
) {
    let connections = limits.tcp_connections;
    loop {
        let Ok(place) = connections.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let (pod, inputs) = (pod.clone(), inputs.clone());
        tokio::spawn(async move {
            let _place = place;
            if let Err(error) = tcp_client(stream, &pod, &inputs).await {
                tracing::debug!(%peer, %error, "a DNS client over TCP ended");
            }
        });
    }
}

async fn tcp_client(
    mut stream: TcpStream,
    pod: &PodContext,
    inputs: &ProxyInputs,
) -> std::io::Result<()> {
    loop {
        let mut length = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut length)).await {
            Ok(Ok(_)) => {}
            // Closed, or silent too long: done.
            Ok(Err(_)) | Err(_) => return Ok(()),
        }
        let length = usize::from(u16::from_be_bytes(length));
        if length > MAX_TCP_MESSAGE {
            return Ok(());
        }
        let mut query = vec![0u8; length];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let answer = match reply(inputs, &pod.key.namespace, &query) {
            Reply::Answer(answer) => Some(answer),
            Reply::Forward => forwarded(inputs, &query).await,
            Reply::Drop => None,
        };
        let Some(answer) = answer else {
            return Ok(());
        };
        let length = u16::try_from(answer.len()).map_err(std::io::Error::other)?;
        stream.write_all(&length.to_be_bytes()).await?;
        stream.write_all(&answer).await?;
    }
}

/// Where the proxy listens in a pod's namespace.
pub(super) fn address() -> SocketAddrV4 {
    SocketAddrV4::new(
        *super::OUTBOUND_LISTENER.ip(),
        ambit_ebpf_common::DNS_PROXY_PORT,
    )
}
