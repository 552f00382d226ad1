//! Plugin <-> node agent: one JSON request line, one JSON response line, over
//! the agent's Unix socket.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the agent listens unless the network configuration says otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/ambit/cni.sock";
const TIMEOUT: Duration = Duration::from_secs(10);

/// Which pod, as Kubernetes names it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A pod's sandbox: its network namespace and addresses.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PodSandbox {
    pub pod: PodRef,
    pub container_id: String,
    /// The namespace's file, e.g. `/var/run/netns/cni-…` or `/proc/PID/ns/net`.
    pub netns: PathBuf,
    pub ips: Vec<Ipv4Addr>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// A pod was created: enroll it if the mesh configuration says so.
    Add(PodSandbox),
    /// A pod is going away: forget it.
    Del { pod: PodRef, container_id: String },
    /// Is the pod in the state the configuration asks for?
    Check(PodSandbox),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Response {
    Ok { enrolled: bool },
    Error { message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("the node agent at {path} is not reachable: {source}")]
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the node agent at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the node agent at {path} answered something unreadable: {source}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Sends one request to the agent at `socket` and waits for its answer.
pub fn call(socket: &Path, request: &Request) -> Result<Response, ProtocolError> {
    let path = socket.to_path_buf();
    let io = |source| ProtocolError::Io {
        path: path.clone(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| ProtocolError::Unreachable {
        path: path.clone(),
        source,
    })?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_vec(request).map_err(|source| ProtocolError::Decode {
        path: path.clone(),
        source,
    })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|source| ProtocolError::Decode { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json() {
        let request = Request::Del {
            pod: PodRef {
                namespace: "default".into(),
                name: "web".into(),
                uid: "u1".into(),
            },
            container_id: "c1".into(),
        };
        let json = serde_json::to_string(&request).unwrap();
        assert!(json.starts_with(r#"{"op":"del","#), "{json}");
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), request);
        let ok: Response = serde_json::from_str(r#"{"result":"ok","enrolled":true}"#).unwrap();
        assert_eq!(ok, Response::Ok { enrolled: true });
    }
}
