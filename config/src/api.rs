//! Istio's resource types, field for field, with the checks Istio's own
//! validation makes. Field names follow the YAML (`camelCase`).

pub mod core;
pub mod meta;
pub mod networking;
pub mod security;
pub mod types;

/// A resource's spec: read from YAML, then checked as Istio checks it.
pub trait Spec: serde::de::DeserializeOwned {
    /// Every problem found; empty when the spec is valid.
    fn validate(&self) -> Vec<Issue>;
}

/// One problem found in an object: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Path from the object's root, e.g. `spec.rules[0].to[0].operation.ports[1]`.
    pub path: String,
    pub message: String,
}

impl Issue {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Checks a port given as a string, as Istio's policies write them.
pub(crate) fn check_port(path: String, port: &str, issues: &mut Vec<Issue>) {
    match port.parse::<u32>() {
        Ok(1..=65535) => {}
        _ => issues.push(Issue::new(
            path,
            format!("port {port:?} is not a number from 1 to 65535"),
        )),
    }
}
