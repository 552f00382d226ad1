//! The Unix socket the CNI plugin talks to.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ambit_admin::accept::AcceptFailures;
use ambit_cni::protocol::{Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::enrollment::Enrollment;

/// Longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;
/// How long the plugin may take to send its request.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Binds the socket, replacing one a previous agent left (a restarting agent
/// takes the path over from the one it replaces). Only root may connect.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let listener = ambit_admin::bind_unix_socket(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, enrollment: Arc<Mutex<Enrollment>>) {
    let mut failures = AcceptFailures::new("CNI");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                failures.recovered();
                tokio::spawn(answer(stream, enrollment.clone()));
            }
            Err(error) => failures.failed(&error).await,
        }
    }
}

async fn answer(stream: UnixStream, enrollment: Arc<Mutex<Enrollment>>) {
    let (reader, mut writer) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(reader).take(MAX_REQUEST);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no request line within the time allowed",
            ))
        });
    let response = match read.map(|_| serde_json::from_str::<Request>(&line)) {
        Ok(Ok(request)) => {
            tracing::info!(?request, "CNI request");
            // Namespaces, sockets and the state file: off the runtime's
            // threads, which carry every connection of the node.
            let handled = tokio::task::spawn_blocking(move || {
                let mut enrollment = enrollment
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                enrollment.handle(request)
            });
            handled.await.unwrap_or_else(|error| Response::Error {
                message: format!("handling the request failed: {error}"),
            })
        }
        Ok(Err(error)) => Response::Error {
            message: format!("malformed request: {error}"),
        },
        Err(error) => Response::Error {
            message: format!("reading the request: {error}"),
        },
    };
    if let Response::Error { message } = &response {
        tracing::warn!(%message, "CNI request refused");
    }
    let mut bytes = serde_json::to_vec(&response).unwrap_or_default();
    bytes.push(b'\n');
    let _ = writer.write_all(&bytes).await;
}
