//! The test app (`ambit-testapp`): what it says, and how the test bed
//! starts its server and runs its clients in pods.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::{Cluster, Place, Pod, Process};

/// The body of every HTTP response the test app's server sends.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub app: String,
    pub version: String,
    /// The client address the server saw (`ip:port`).
    pub peer: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: String,
}

/// What the test app's HTTP client prints after its requests.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, Eq)]
pub struct HttpSummary {
    pub requests: usize,
    /// Responses by status code.
    pub statuses: BTreeMap<u16, usize>,
    /// Responses by answering `app/version` (`unknown` when the body was not
    /// a test-app reply).
    pub versions: BTreeMap<String, usize>,
    /// Peer addresses (IP only) the servers reported seeing.
    pub peers: BTreeMap<String, usize>,
    /// Requests that got no response at all.
    pub errors: usize,
    pub first_error: Option<String>,
}

impl HttpSummary {
    /// Number of responses with this status code.
    pub fn status(&self, code: u16) -> usize {
        self.statuses.get(&code).copied().unwrap_or(0)
    }
}

/// How long a test-app client may run before the test bed gives up on it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts the test app's server in `pod`: HTTP on `http_ports`, TCP echo on
/// `echo_ports`, all on every address; returns once all of them accept.
pub fn serve(
    cluster: &Cluster,
    pod: &Pod,
    app: &str,
    version: &str,
    http_ports: &[u16],
    echo_ports: &[u16],
) -> anyhow::Result<Process> {
    let mut args = vec![
        "serve".to_string(),
        format!("--app={app}"),
        format!("--version={version}"),
    ];
    args.extend(
        http_ports
            .iter()
            .map(|port| format!("--http=0.0.0.0:{port}")),
    );
    args.extend(
        echo_ports
            .iter()
            .map(|port| format!("--echo=0.0.0.0:{port}")),
    );
    let binary = cluster.binaries().get(BINARY)?;
    let mut server = cluster.spawn(pod.place(), &format!("{app}-{version}"), &binary, args)?;
    for port in http_ports.iter().chain(echo_ports) {
        let addr = SocketAddr::from((pod.ip, *port));
        pod.place()
            .wait_for_listener(addr, START_TIMEOUT)
            .with_context(|| {
                server
                    .check_running()
                    .err()
                    .map(|e| format!("{e:#}"))
                    .unwrap_or_default()
            })?;
    }
    Ok(server)
}

/// Sends `requests` HTTP requests from `from` to `url` with the test app's
/// client (HTTP/2 with prior knowledge when `http2`).
pub fn http(
    cluster: &Cluster,
    from: &Place,
    url: &str,
    requests: usize,
    http2: bool,
) -> anyhow::Result<HttpSummary> {
    let mut args = vec![
        "http".to_string(),
        format!("--url={url}"),
        format!("--requests={requests}"),
    ];
    if http2 {
        args.push("--http2".to_string());
    }
    let output = run_client(cluster, from, &args)?;
    serde_json::from_str(output.trim())
        .with_context(|| format!("the HTTP client printed {output:?}"))
}

/// Sends `message` from `from` to the echo server at `addr`; returns what came back.
pub fn echo(
    cluster: &Cluster,
    from: &Place,
    addr: SocketAddr,
    message: &str,
) -> anyhow::Result<String> {
    run_client(
        cluster,
        from,
        &[
            "echo".to_string(),
            format!("--addr={addr}"),
            format!("--message={message}"),
        ],
    )
}

fn run_client(cluster: &Cluster, from: &Place, args: &[String]) -> anyhow::Result<String> {
    let binary = cluster.binaries().get(BINARY)?;
    let output = cluster.run(from, &binary, args, CLIENT_TIMEOUT)?;
    if !output.status.success() {
        bail!(
            "`ambit-testapp {}` in {} failed ({}): {}",
            args.join(" "),
            from.name(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

const BINARY: &str = "ambit-testapp";
