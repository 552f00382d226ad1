//! L4 AuthorizationPolicy, as the receiving node agent enforces it.
//!
//! Istio's order: a matching CUSTOM or DENY policy denies; then, if any
//! ALLOW policy applies to the workload, one of its rules must match;
//! AUDIT policies only mark the connection. The policies that apply are
//! those of the root namespace and of the workload's namespace whose
//! selector picks the workload (no selector: every workload). Policies
//! attached by `targetRef(s)` are a waypoint's to enforce.
//!
//! What the agent cannot see (request principals, hosts, methods, paths,
//! remote IPs, non-L4 `when` keys) fails closed: in an ALLOW or AUDIT rule
//! it never matches, in a DENY or CUSTOM rule it is taken as matched, so
//! the agent may deny more than a waypoint would but never allows more.
//! CUSTOM (external authorization) is not available at L4, so its rules
//! deny what they cover.

use std::net::IpAddr;

use serde::Serialize;

use super::{selects, Target};
use crate::api::security::{
    parse_ip_block, parse_service_account, Action, AuthorizationPolicySpec, Condition, Operation,
    Rule, Source,
};
use crate::model::{in_namespace, AuthorizationPolicy, Key, Mesh};

/// What the receiving agent knows about a connection.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The caller's address, as the connection shows it.
    pub ip: IpAddr,
    /// The caller's authenticated identity as Istio writes principals
    /// (`TRUST_DOMAIN/ns/NS/sa/SA`): `None` for plaintext.
    pub principal: Option<&'a str>,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
}

/// The parts of an authenticated caller's principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity<'a> {
    trust_domain: &'a str,
    namespace: &'a str,
    service_account: &'a str,
}

impl Caller<'_> {
    /// The parts of the caller's principal, if it is a workload's.
    fn identity(&self) -> Option<Identity<'_>> {
        let mut parts = self.principal?.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some(trust_domain), Some("ns"), Some(namespace), Some("sa"), Some(sa), None) => {
                Some(Identity {
                    trust_domain,
                    namespace,
                    service_account: sa,
                })
            }
            _ => None,
        }
    }

    /// The namespace of an authenticated caller, from its principal.
    fn namespace(&self) -> Option<&str> {
        self.identity().map(|identity| identity.namespace)
    }
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub verdict: Verdict,
    /// The AUDIT policies that matched.
    pub audited: Vec<Key>,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase", tag = "verdict")]
pub enum Verdict {
    Allow,
    Deny(Denial),
}

/// Why a connection was denied, naming the policy where there is one.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase", tag = "reason", content = "policy")]
pub enum Denial {
    /// A DENY (or CUSTOM) policy matched.
    Matched(Key),
    /// A policy that could not be read stands for a denial.
    Invalid(Key),
    /// ALLOW policies apply and none matched.
    NoAllowMatched,
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Matched(key) => write!(f, "denied by AuthorizationPolicy {key}"),
            Self::Invalid(key) => write!(f, "AuthorizationPolicy {key} is invalid, so it denies"),
            Self::NoAllowMatched => f.write_str("no ALLOW AuthorizationPolicy matched"),
        }
    }
}

/// The verdict on `caller` connecting to the workload `target`.
pub fn authorize(
    mesh: &Mesh,
    root_namespace: &str,
    target: Target<'_>,
    caller: &Caller<'_>,
) -> Decision {
    let mut audited = Vec::new();
    let mut allow_applies = false;
    let mut allowed = false;
    for (key, policy) in applicable(mesh, root_namespace, target) {
        let spec = match policy {
            AuthorizationPolicy::Invalid { .. } => {
                return deny(Denial::Invalid(key.clone()), audited)
            }
            AuthorizationPolicy::Valid(config) => &config.spec,
        };
        if !selected(spec, target) {
            continue;
        }
        match spec.action {
            Action::Deny | Action::Custom => {
                if matches(spec, caller, Unenforceable::Matches) {
                    return deny(Denial::Matched(key.clone()), audited);
                }
            }
            Action::Allow => {
                allow_applies = true;
                allowed = allowed || matches(spec, caller, Unenforceable::Fails);
            }
            Action::Audit => {
                if matches(spec, caller, Unenforceable::Fails) {
                    audited.push(key.clone());
                }
            }
        }
    }
    let verdict = match allow_applies && !allowed {
        true => Verdict::Deny(Denial::NoAllowMatched),
        false => Verdict::Allow,
    };
    Decision { verdict, audited }
}

fn deny(denial: Denial, audited: Vec<Key>) -> Decision {
    Decision {
        verdict: Verdict::Deny(denial),
        audited,
    }
}

/// The policies of the root namespace, then of the workload's namespace.
fn applicable<'a>(
    mesh: &'a Mesh,
    root_namespace: &'a str,
    target: Target<'a>,
) -> impl Iterator<Item = (&'a Key, &'a AuthorizationPolicy)> + 'a {
    let policies = &mesh.authorization_policies;
    let own =
        (target.namespace != root_namespace).then(|| in_namespace(policies, target.namespace));
    in_namespace(policies, root_namespace).chain(own.into_iter().flatten())
}

/// Whether a valid policy is the agent's to apply to `target`.
fn selected(spec: &AuthorizationPolicySpec, target: Target<'_>) -> bool {
    let attached_to_waypoint = spec.target_ref.is_some() || !spec.target_refs.is_empty();
    !attached_to_waypoint
        && spec
            .selector
            .as_ref()
            .is_none_or(|selector| selects(selector, target.labels))
}

/// How a condition the agent cannot check counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unenforceable {
    Matches,
    Fails,
}

impl Unenforceable {
    fn check(self, present: bool) -> bool {
        !present || self == Self::Matches
    }
}

/// A policy matches when any of its rules does (no rules: none does).
fn matches(spec: &AuthorizationPolicySpec, caller: &Caller<'_>, l7: Unenforceable) -> bool {
    spec.rules.iter().any(|rule| rule_matches(rule, caller, l7))
}

/// A rule matches when any `from`, any `to` and every `when` does; an
/// empty list matches anything.
fn rule_matches(rule: &Rule, caller: &Caller<'_>, l7: Unenforceable) -> bool {
    let any = |empty: bool, found: bool| empty || found;
    any(
        rule.from.is_empty(),
        rule.from
            .iter()
            .any(|f| source_matches(&f.source, caller, l7)),
    ) && any(
        rule.to.is_empty(),
        rule.to
            .iter()
            .any(|t| operation_matches(&t.operation, caller, l7)),
    ) && rule.when.iter().all(|c| condition_matches(c, caller, l7))
}

fn source_matches(source: &Source, caller: &Caller<'_>, l7: Unenforceable) -> bool {
    let principal = caller.principal;
    let identity = caller.identity();
    let namespace = identity.map(|identity| identity.namespace);
    let ip = caller.ip;
    field(&source.principals, &source.not_principals, |p| {
        string_matches(p, principal)
    }) && field(&source.namespaces, &source.not_namespaces, |n| {
        string_matches(n, namespace)
    }) && field(
        &source.service_accounts,
        &source.not_service_accounts,
        |account| {
            identity.is_some_and(|identity| {
                parse_service_account(account)
                    == Some((identity.namespace, identity.service_account))
            })
        },
    ) && field(&source.trust_domains, &source.not_trust_domains, |t| {
        string_matches(t, identity.map(|identity| identity.trust_domain))
    }) && field(&source.ip_blocks, &source.not_ip_blocks, |b| {
        block_contains(b, ip)
    }) && l7.check(
        !source.request_principals.is_empty()
            || !source.not_request_principals.is_empty()
            || !source.remote_ip_blocks.is_empty()
            || !source.not_remote_ip_blocks.is_empty(),
    )
}

fn operation_matches(operation: &Operation, caller: &Caller<'_>, l7: Unenforceable) -> bool {
    field(&operation.ports, &operation.not_ports, |port| {
        port.parse() == Ok(caller.destination_port)
    }) && l7.check(
        [
            &operation.hosts,
            &operation.not_hosts,
            &operation.methods,
            &operation.not_methods,
            &operation.paths,
            &operation.not_paths,
        ]
        .iter()
        .any(|values| !values.is_empty()),
    )
}

/// A `when` condition on an L4 key; any other key is unenforceable here.
fn condition_matches(condition: &Condition, caller: &Caller<'_>, l7: Unenforceable) -> bool {
    let (values, not_values) = (&condition.values, &condition.not_values);
    match condition.key.as_str() {
        "source.ip" => field(values, not_values, |b| block_contains(b, caller.ip)),
        "source.principal" => field(values, not_values, |p| string_matches(p, caller.principal)),
        "source.namespace" => field(values, not_values, |n| {
            string_matches(n, caller.namespace())
        }),
        "destination.ip" => field(values, not_values, |b| {
            block_contains(b, caller.destination_ip)
        }),
        "destination.port" => field(values, not_values, |port| {
            port.parse() == Ok(caller.destination_port)
        }),
        _ => l7.check(true),
    }
}

/// A field and its `not` form: some value must match (if any are given),
/// and no `not` value may.
fn field(values: &[String], not_values: &[String], matches: impl Fn(&str) -> bool) -> bool {
    (values.is_empty() || values.iter().any(|v| matches(v)))
        && !not_values.iter().any(|v| matches(v))
}

/// Istio's string match: exact, `prefix*`, `*suffix`, or `*` for any
/// (present) value. An absent value (plaintext: no principal) matches none.
fn string_matches(pattern: &str, value: Option<&str>) -> bool {
    let Some(value) = value else {
        return false;
    };
    if pattern == "*" {
        !value.is_empty()
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else {
        value == pattern
    }
}

fn block_contains(block: &str, ip: IpAddr) -> bool {
    parse_ip_block(block).is_some_and(|block| block.contains(&ip))
}
