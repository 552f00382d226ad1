//! The parts of Kubernetes object metadata Ambit uses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Object metadata. Other metadata fields (managed fields, …) are accepted
/// and ignored: they never change behaviour.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub resource_version: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
    /// When the API server created the object (RFC 3339, UTC): Istio lets
    /// the oldest of several VirtualServices for one host win.
    #[serde(default)]
    pub creation_timestamp: Option<String>,
}

/// `selector` of Istio's policies: the workloads (by pod labels) it applies to.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// `targetRef`: a Gateway API style reference to what a policy attaches to.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetReference {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub namespace: String,
}
