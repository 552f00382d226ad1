//! A CNI invocation as the CNI specification (1.1) defines it: environment
//! variables, the network configuration on stdin, and the error format.
//! Pure: everything is passed in.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use crate::protocol::{PodRef, DEFAULT_AGENT_SOCKET};

/// Versions of the CNI specification this plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Error codes the specification reserves.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Plugin-specific: the node agent refused the pod.
    pub const AGENT_REFUSED: u32 = 100;
}

/// The error a plugin prints on stdout before exiting non-zero.
#[derive(Serialize, Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            cni_version: LATEST.to_string(),
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// Answers in the version the caller asked for, where it is known.
    pub fn in_version(mut self, version: &str) -> Self {
        self.cni_version = version.to_string();
        self
    }
}

const LATEST: &str = "1.1.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            _ => return None,
        })
    }
}

/// One call of the plugin, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    pub command: Command,
    pub cni_version: String,
    pub agent_socket: PathBuf,
    /// Namespaces whose pods start even with the agent unreachable and no
    /// record of enrollment (`exemptNamespaces`; kube-system always).
    pub exempt_namespaces: Vec<String>,
    /// The previous plugin's result, passed through on ADD.
    pub prev_result: Option<Value>,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    /// `None` for a sandbox that is not a Kubernetes pod.
    pub pod: Option<PodRef>,
}

impl Invocation {
    /// The pod's IPv4 addresses, from the previous plugin's result.
    pub fn pod_ips(&self) -> Vec<Ipv4Addr> {
        let ips = self
            .prev_result
            .as_ref()
            .and_then(|result| result.get("ips"));
        ips.and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.get("address")?.as_str()?.split('/').next()?.parse().ok())
            .collect()
    }

    /// What ADD prints: the previous result, unchanged but for its version.
    pub fn add_result(&self) -> Value {
        let mut result = self
            .prev_result
            .clone()
            .unwrap_or_else(|| Value::Object(Default::default()));
        if let Value::Object(fields) = &mut result {
            fields.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        }
        result
    }
}

/// What VERSION prints.
pub fn version_result(cni_version: &str) -> Value {
    serde_json::json!({ "cniVersion": cni_version, "supportedVersions": SUPPORTED_VERSIONS })
}

/// Reads an invocation from the environment (`env`) and stdin.
pub fn parse(env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Invocation, CniError> {
    let invalid_env = |msg: String| CniError::new(code::INVALID_ENVIRONMENT, msg, "");
    let command_name =
        env("CNI_COMMAND").ok_or_else(|| invalid_env("CNI_COMMAND is not set".into()))?;
    let command = Command::parse(&command_name).ok_or_else(|| {
        invalid_env(format!(
            "CNI_COMMAND {command_name:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"
        ))
    })?;

    let config: Value = serde_json::from_slice(stdin).map_err(|error| {
        CniError::new(
            code::DECODE_FAILURE,
            "the network configuration on stdin is not JSON",
            error.to_string(),
        )
    })?;
    let invalid_config = |msg: String| CniError::new(code::INVALID_CONFIG, msg, "");
    let cni_version = config
        .get("cniVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid_config("the network configuration has no cniVersion".into()))?
        .to_string();
    if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("CNI version {cni_version} is not supported"),
            format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    let versioned = |error: CniError| error.in_version(&cni_version);
    if command == Command::Check && cni_version.starts_with("0.3") {
        return Err(versioned(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("CHECK needs CNI version 0.4.0 or later, not {cni_version}"),
            "",
        )));
    }
    let agent_socket = match config.get("agentSocket") {
        None => PathBuf::from(DEFAULT_AGENT_SOCKET),
        Some(Value::String(path)) if !path.is_empty() => PathBuf::from(path),
        Some(_) => {
            return Err(versioned(invalid_config(
                "agentSocket must be the path of the node agent's socket".into(),
            )))
        }
    };
    let exempt_namespaces = match config.get("exemptNamespaces") {
        None => Vec::new(),
        Some(Value::Array(names)) if names.iter().all(Value::is_string) => names
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(_) => {
            return Err(versioned(invalid_config(
                "exemptNamespaces must be a list of namespace names".into(),
            )))
        }
    };
    let prev_result = config.get("prevResult").cloned();
    if command == Command::Add && prev_result.is_none() {
        return Err(versioned(invalid_config(
            "ambit-cni is a chained plugin: it needs the prevResult of the plugin before it".into(),
        )));
    }

    let needs_sandbox = matches!(command, Command::Add | Command::Del | Command::Check);
    let required = |name: &str| {
        env(name)
            .filter(|value| !value.is_empty())
            .ok_or_else(|| versioned(invalid_env(format!("{name} is not set"))))
    };
    let (container_id, netns) = if needs_sandbox {
        required("CNI_IFNAME")?;
        let netns = match command {
            Command::Del => env("CNI_NETNS")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            _ => Some(PathBuf::from(required("CNI_NETNS")?)),
        };
        (required("CNI_CONTAINERID")?, netns)
    } else {
        (String::new(), None)
    };
    let pod = pod_from_args(&env("CNI_ARGS").unwrap_or_default())
        .map_err(|msg| versioned(invalid_env(msg)))?;

    Ok(Invocation {
        command,
        cni_version,
        agent_socket,
        exempt_namespaces,
        prev_result,
        container_id,
        netns,
        pod,
    })
}

/// The Kubernetes pod named in `CNI_ARGS` (`K8S_POD_NAMESPACE=…;K8S_POD_NAME=…;…`).
fn pod_from_args(args: &str) -> Result<Option<PodRef>, String> {
    let mut namespace = None;
    let mut name = None;
    let mut uid = None;
    for pair in args.split(';').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("CNI_ARGS: {pair:?} is not KEY=VALUE"))?;
        match key {
            "K8S_POD_NAMESPACE" => namespace = Some(value.to_string()),
            "K8S_POD_NAME" => name = Some(value.to_string()),
            "K8S_POD_UID" => uid = Some(value.to_string()),
            _ => {}
        }
    }
    match (namespace, name) {
        (Some(namespace), Some(name)) => Ok(Some(PodRef {
            uid: uid.unwrap_or_default(),
            namespace,
            name,
        })),
        (None, None) => Ok(None),
        _ => Err("CNI_ARGS names only one of K8S_POD_NAMESPACE and K8S_POD_NAME".into()),
    }
}

#[cfg(test)]
mod tests;
