//! A relay with nothing in it: it accepts, connects onwards and copies both
//! ways (tokio's `copy_bidirectional`, on one current-thread runtime, as an
//! agent on a small node runs). A pair of them, one in the client's network
//! namespace and one in the server's, is the least any relaying proxy adds
//! to a path: two more TCP connections per connection and two more
//! processes woken per exchange, with no capture, policy or telemetry. The
//! benchmarks measure it beside the agents as that floor.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::{Place, Pod};

/// How much higher than the port it relays a relay listens: never on an
/// app's port.
pub const PORT_OFFSET: u16 = 10_000;

/// A relay in `client`'s namespace and one in `server`'s: from the client,
/// `127.0.0.1:{port + PORT_OFFSET}` reaches the server's `port` through
/// both, for each of `ports`.
pub fn pair(client: &Pod, server: &Pod, ports: &[u16]) -> anyhow::Result<[BareRelay; 2]> {
    let routes = |onward: fn(u16) -> u16| -> Vec<(u16, SocketAddr)> {
        (ports.iter())
            .map(|&port| (relayed(port), SocketAddr::from((server.ip, onward(port)))))
            .collect()
    };
    Ok([
        BareRelay::start(server.place(), &routes(|port| port))?,
        BareRelay::start(client.place(), &routes(relayed))?,
    ])
}

fn relayed(port: u16) -> u16 {
    port + PORT_OFFSET
}

/// Relays running in one place until dropped.
pub struct BareRelay {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl BareRelay {
    /// Listens in `place`'s namespace on each route's port (all addresses)
    /// and relays what it accepts there to the route's address, connecting
    /// from that namespace.
    pub fn start(place: &Place, routes: &[(u16, SocketAddr)]) -> anyhow::Result<Self> {
        let netns = std::fs::File::open(place.netns_path())
            .with_context(|| format!("opening the network namespace of {}", place.name()))?;
        let routes = routes.to_vec();
        let (stop, stopped) = oneshot::channel();
        let (ready, listening) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || match listen_in(&netns, &routes) {
            Ok(listeners) => {
                let _ = ready.send(Ok(()));
                relay_until(listeners, stopped);
            }
            Err(error) => {
                let _ = ready.send(Err(error));
            }
        });
        listening
            .recv()
            .context("the relay's thread ended before listening")?
            .with_context(|| format!("starting a bare relay in {}", place.name()))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for BareRelay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Listeners of one thread's runtime, each with where it relays to.
type Listening = (tokio::runtime::Runtime, Vec<(TcpListener, SocketAddr)>);

/// Enters `netns` (the calling thread stays there: it ends with the relay)
/// and listens on each route's port, in a runtime for this thread.
fn listen_in(netns: &std::fs::File, routes: &[(u16, SocketAddr)]) -> anyhow::Result<Listening> {
    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let entered = runtime.enter();
    let listeners = (routes.iter())
        .map(|&(port, to)| {
            let listener = std::net::TcpListener::bind(("0.0.0.0", port))?;
            listener.set_nonblocking(true)?;
            Ok((TcpListener::from_std(listener)?, to))
        })
        .collect::<anyhow::Result<_>>()?;
    drop(entered);
    Ok((runtime, listeners))
}

/// Relays on the calling thread until `stopped`.
fn relay_until((runtime, listeners): Listening, stopped: oneshot::Receiver<()>) {
    runtime.block_on(async move {
        for (listener, to) in listeners {
            tokio::spawn(relay_from(listener, to));
        }
        let _ = stopped.await;
    });
}

async fn relay_from(listener: TcpListener, to: SocketAddr) {
    while let Ok((mut accepted, _)) = listener.accept().await {
        tokio::spawn(async move {
            let Ok(mut onward) = TcpStream::connect(to).await else {
                return;
            };
            for socket in [&accepted, &onward] {
                let _ = socket.set_nodelay(true);
            }
            let _ = tokio::io::copy_bidirectional(&mut accepted, &mut onward).await;
        });
    }
}
