//! `security.istio.io`: AuthorizationPolicy and PeerAuthentication.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::meta::{PolicyTargetReference, WorkloadSelector};
use super::{check_port, Issue, Spec};

/// `AuthorizationPolicy.spec`.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    pub selector: Option<WorkloadSelector>,
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub action: Action,
    pub provider: Option<ExtensionProvider>,
}

#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
    Audit,
    Custom,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtensionProvider {
    pub name: String,
}

/// A rule matches when any `from`, any `to` and every `when` match (an
/// empty list matches anything).
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    #[serde(default)]
    pub from: Vec<From>,
    #[serde(default)]
    pub to: Vec<To>,
    #[serde(default)]
    pub when: Vec<Condition>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct From {
    pub source: Source,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    /// `namespace/name` of the caller's service account, from its
    /// certificate (any trust domain); exact, no wildcards.
    #[serde(default)]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
    /// The trust domain of the caller's certificate.
    #[serde(default)]
    pub trust_domains: Vec<String>,
    #[serde(default)]
    pub not_trust_domains: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct To {
    pub operation: Operation,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

impl Spec for AuthorizationPolicySpec {
    fn validate(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        let targets =
            usize::from(self.target_ref.is_some()) + usize::from(!self.target_refs.is_empty());
        if self.selector.is_some() && targets > 0 || targets > 1 {
            issues.push(Issue::new(
                "spec",
                "selector, targetRef and targetRefs are exclusive: set at most one",
            ));
        }
        match (self.action, &self.provider) {
            (Action::Custom, None) => issues.push(Issue::new(
                "spec.provider",
                "action CUSTOM needs a provider",
            )),
            (Action::Custom, Some(_)) | (_, None) => {}
            (_, Some(_)) => issues.push(Issue::new(
                "spec.provider",
                "a provider is only allowed with action CUSTOM",
            )),
        }
        for (r, rule) in self.rules.iter().enumerate() {
            let at = format!("spec.rules[{r}]");
            for (f, from) in rule.from.iter().enumerate() {
                from.source
                    .validate(&format!("{at}.from[{f}].source"), &mut issues);
            }
            for (t, to) in rule.to.iter().enumerate() {
                let op = &to.operation;
                let at = format!("{at}.to[{t}].operation");
                for (field, ports) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
                    for (i, port) in ports.iter().enumerate() {
                        check_port(format!("{at}.{field}[{i}]"), port, &mut issues);
                    }
                }
            }
            for (w, condition) in rule.when.iter().enumerate() {
                let at = format!("{at}.when[{w}]");
                if condition.key.is_empty() {
                    issues.push(Issue::new(format!("{at}.key"), "key must not be empty"));
                }
                if condition.values.is_empty() && condition.not_values.is_empty() {
                    issues.push(Issue::new(at, "a condition needs values or notValues"));
                }
            }
        }
        issues
    }
}

/// Most service accounts one `serviceAccounts` (or `notServiceAccounts`)
/// list may hold, as Istio's schema allows.
const MAX_SERVICE_ACCOUNTS: usize = 16;

impl Source {
    fn validate(&self, at: &str, issues: &mut Vec<Issue>) {
        let accounts = [
            ("serviceAccounts", &self.service_accounts),
            ("notServiceAccounts", &self.not_service_accounts),
        ];
        let by_account = accounts.iter().any(|(_, values)| !values.is_empty());
        let by_identity = [
            &self.principals,
            &self.not_principals,
            &self.namespaces,
            &self.not_namespaces,
        ]
        .iter()
        .any(|values| !values.is_empty());
        if by_account && by_identity {
            issues.push(Issue::new(
                at,
                "serviceAccounts cannot be set with principals or namespaces (or their not forms)",
            ));
        }
        for (field, values) in accounts {
            if values.len() > MAX_SERVICE_ACCOUNTS {
                issues.push(Issue::new(
                    format!("{at}.{field}"),
                    format!("at most {MAX_SERVICE_ACCOUNTS} service accounts"),
                ));
            }
            for (i, account) in values.iter().enumerate() {
                if parse_service_account(account).is_none() {
                    issues.push(Issue::new(
                        format!("{at}.{field}[{i}]"),
                        format!("{account:?} is not namespace/name (without wildcards)"),
                    ));
                }
            }
        }
        let blocks = [
            ("ipBlocks", &self.ip_blocks),
            ("notIpBlocks", &self.not_ip_blocks),
            ("remoteIpBlocks", &self.remote_ip_blocks),
            ("notRemoteIpBlocks", &self.not_remote_ip_blocks),
        ];
        for (field, values) in blocks {
            for (i, block) in values.iter().enumerate() {
                if parse_ip_block(block).is_none() {
                    issues.push(Issue::new(
                        format!("{at}.{field}[{i}]"),
                        format!("{block:?} is not an IP address or CIDR block"),
                    ));
                }
            }
        }
    }
}

/// A `serviceAccounts` entry, `namespace/name`, as its two parts.
pub fn parse_service_account(account: &str) -> Option<(&str, &str)> {
    let (namespace, name) = account.split_once('/')?;
    let valid = |part: &str| !part.is_empty() && !part.contains(['/', '*']);
    (valid(namespace) && valid(name)).then_some((namespace, name))
}

/// An address (`10.1.2.3`, `fd00::1`) or a CIDR block (`10.1.0.0/16`).
pub fn parse_ip_block(block: &str) -> Option<ipnet::IpNet> {
    block.parse::<ipnet::IpNet>().ok().or_else(|| {
        block
            .parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

/// `PeerAuthentication.spec`.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    pub selector: Option<WorkloadSelector>,
    pub mtls: Option<MutualTls>,
    /// Port (of the workload) -> its own mode.
    #[serde(default)]
    pub port_level_mtls: BTreeMap<PortKey, MutualTls>,
}

/// A port used as a map key: YAML writes it as a number, JSON (and so the
/// Kubernetes API) as a string; both are accepted and kept as written.
#[derive(Serialize, schemars::JsonSchema, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[serde(transparent)]
pub struct PortKey(pub String);

impl<'de> Deserialize<'de> for PortKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PortKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a port number")
            }
            fn visit_u64<E: serde::de::Error>(self, port: u64) -> Result<PortKey, E> {
                Ok(PortKey(port.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, port: i64) -> Result<PortKey, E> {
                Ok(PortKey(port.to_string()))
            }
            fn visit_str<E: serde::de::Error>(self, port: &str) -> Result<PortKey, E> {
                Ok(PortKey(port.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq,
)]
pub struct MutualTls {
    #[serde(default)]
    pub mode: MtlsMode,
}

#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent policy (namespace, then mesh).
    #[default]
    Unset,
    Disable,
    Permissive,
    Strict,
}

impl Spec for PeerAuthenticationSpec {
    fn validate(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        if !self.port_level_mtls.is_empty() && self.selector.is_none() {
            issues.push(Issue::new(
                "spec.portLevelMtls",
                "port-level settings need a selector: they apply to one workload's ports",
            ));
        }
        for PortKey(port) in self.port_level_mtls.keys() {
            check_port(format!("spec.portLevelMtls[{port}]"), port, &mut issues);
        }
        issues
    }
}
