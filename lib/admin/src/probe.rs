//! Readiness and liveness over a Unix socket private to the process's
//! container, for the kubelet's `exec` probes (`BINARY probe SOCKET
//! ready|live`). A proxy on the node's network shares its TCP ports with
//! the one it replaces at an upgrade (SO_REUSEPORT), so an HTTP probe could
//! be answered by the old process for the new one, and the new pod be
//! counted ready, and the old one stopped, before the new one carries
//! anything. A socket in the container's own directory is answered by its
//! own process alone.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;

use crate::{serve_connection, AdminState, Readiness, LIVE_PATH, READY_PATH};

/// Probes answered at once; more wait to be accepted.
const MAX_PROBES: usize = 8;
/// How long a probe may take, end to end.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Answers readiness and liveness on `listener` until `shutdown`.
pub async fn serve(
    listener: UnixListener,
    readiness: Readiness,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_PROBES));
    let state = AdminState {
        readiness,
        registry: None,
        config_dump: None,
    };
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accepting a probe");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let served = serve_connection(stream, state.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(PROBE_TIMEOUT, served).await;
            drop(permit);
        });
    }
}

/// Asks the process at `socket` for `path`: `Ok` when it answers 200.
pub fn ask(socket: &Path, path: &str) -> Result<(), String> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|error| format!("{}: {error}", socket.display()))?;
    let io = |error: std::io::Error| format!("{}: {error}", socket.display());
    stream.set_read_timeout(Some(PROBE_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT)).map_err(io)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut answer = Vec::new();
    stream.take(4096).read_to_end(&mut answer).map_err(io)?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.lines().next().unwrap_or_default();
    match status.split(' ').nth(1) {
        Some("200") => Ok(()),
        _ => Err(format!("{path}: {status}")),
    }
}

/// `BINARY probe SOCKET ready|live`, as an exec probe runs it: the exit
/// code the kubelet reads (0: passed).
pub fn run(args: &[String]) -> i32 {
    let path = match args {
        [socket, what] => match what.as_str() {
            "ready" => Some((socket, READY_PATH)),
            "live" => Some((socket, LIVE_PATH)),
            _ => None,
        },
        _ => None,
    };
    let Some((socket, path)) = path else {
        eprintln!("usage: probe SOCKET ready|live");
        return 2;
    };
    match ask(Path::new(socket), path) {
        Ok(()) => 0,
        Err(why) => {
            eprintln!("probe failed: {why}");
            1
        }
    }
}
