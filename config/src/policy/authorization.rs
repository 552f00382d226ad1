//! AuthorizationPolicy, as the receiving node agent enforces it on a
//! connection ([`authorize`]) and a waypoint on a request
//! ([`authorize_request`]).
//!
//! Istio's order: a matching CUSTOM or DENY policy denies; then, if any
//! ALLOW policy applies, one of its rules must match; AUDIT policies only
//! mark. At an agent the policies that apply are those of the root
//! namespace and of the workload's namespace whose selector picks the
//! workload (no selector: every workload); policies attached by
//! `targetRef(s)` are a waypoint's to enforce: those naming its Gateway,
//! the Service (or ServiceEntry) a request is for, or in the root
//! namespace the `istio-waypoint` GatewayClass, and those whose selector
//! picks the waypoint's own pod.
//!
//! What cannot be seen where a policy is enforced (at an agent: request
//! principals, hosts, methods, paths, remote IPs, non-L4 `when` keys; at
//! a waypoint: request principals and JWT claims, since Ambit does not
//! validate JWTs) fails closed: in an ALLOW or AUDIT rule it never
//! matches, in a DENY or CUSTOM rule it is taken as matched, so Ambit may
//! deny more than Istio would but never allows more. CUSTOM (external
//! authorization) is not available, so its rules deny what they cover.

use std::net::IpAddr;

use serde::Serialize;

use super::{selects, Target};
use crate::api::security::{
    parse_ip_block, parse_service_account, Action, AuthorizationPolicySpec, Condition, Operation,
    Rule, Source,
};
use crate::model::Labels;
use crate::model::{in_namespace, AuthorizationPolicy, Key, Mesh};

/// What a waypoint knows of an HTTP request besides who sent it.
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// The authority the caller asked for (`Host`).
    pub host: &'a str,
    /// The path, normalized as the request is passed on, without its query.
    pub path: &'a str,
    /// A request header's values, joined by `,` as Envoy matches them.
    pub header: &'a dyn Fn(&str) -> Option<String>,
}

/// What is being protected, as a waypoint sees it: the waypoint itself
/// (by the key of its Gateway and its pod's labels) and the Service (or
/// ServiceEntry) a request is addressed to.
#[derive(Debug, Clone, Copy)]
pub struct WaypointTarget<'a> {
    pub waypoint: &'a Key,
    pub waypoint_labels: &'a Labels,
    pub service: &'a Key,
}

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
    let namespaces = [root_namespace, target.namespace];
    decide(
        in_namespaces(mesh, &namespaces),
        |spec: &AuthorizationPolicySpec, _: &Key| selected(spec, target),
        caller,
        None,
    )
}

/// The verdict on `caller`'s `request` to `target` through a waypoint.
pub fn authorize_request(
    mesh: &Mesh,
    root_namespace: &str,
    target: WaypointTarget<'_>,
    caller: &Caller<'_>,
    request: &HttpRequest<'_>,
) -> Decision {
    let namespaces = [
        root_namespace,
        target.waypoint.namespace.as_str(),
        target.service.namespace.as_str(),
    ];
    decide(
        in_namespaces(mesh, &namespaces),
        |spec: &AuthorizationPolicySpec, key: &Key| {
            attached_to_waypoint(spec, key, target, root_namespace)
        },
        caller,
        Some(request),
    )
}

/// Istio's evaluation over the `policies` that `applies` picks; one that
/// could not be read denies.
fn decide<'a>(
    policies: impl Iterator<Item = (&'a Key, &'a AuthorizationPolicy)>,
    applies: impl Fn(&AuthorizationPolicySpec, &Key) -> bool,
    caller: &Caller<'_>,
    request: Option<&HttpRequest<'_>>,
) -> Decision {
    let mut audited = Vec::new();
    let mut allow_applies = false;
    let mut allowed = false;
    let seen = |unenforceable| Seen {
        unenforceable,
        request,
    };
    for (key, policy) in policies {
        let spec = match policy {
            AuthorizationPolicy::Invalid { .. } => {
                return deny(Denial::Invalid(key.clone()), audited)
            }
            AuthorizationPolicy::Valid(config) => &config.spec,
        };
        if !applies(spec, key) {
            continue;
        }
        match spec.action {
            Action::Deny | Action::Custom => {
                if matches(spec, caller, seen(Unenforceable::Matches)) {
                    return deny(Denial::Matched(key.clone()), audited);
                }
            }
            Action::Allow => {
                allow_applies = true;
                allowed = allowed || matches(spec, caller, seen(Unenforceable::Fails));
            }
            Action::Audit => {
                if matches(spec, caller, seen(Unenforceable::Fails)) {
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

/// The policies of each of `namespaces` in turn, each namespace once.
fn in_namespaces<'a>(
    mesh: &'a Mesh,
    namespaces: &[&'a str],
) -> impl Iterator<Item = (&'a Key, &'a AuthorizationPolicy)> + 'a {
    let mut distinct: Vec<&'a str> = Vec::with_capacity(namespaces.len());
    for namespace in namespaces {
        if !distinct.contains(namespace) {
            distinct.push(namespace);
        }
    }
    let policies = &mesh.authorization_policies;
    distinct
        .into_iter()
        .flat_map(move |namespace| in_namespace(policies, namespace))
}

/// The GatewayClass whose policies in the root namespace apply to every
/// waypoint.
const WAYPOINT_CLASS: &str = "istio-waypoint";

/// Whether the valid policy `key` is the waypoint's to apply to a request
/// for `target.service`.
fn attached_to_waypoint(
    spec: &AuthorizationPolicySpec,
    key: &Key,
    target: WaypointTarget<'_>,
    root_namespace: &str,
) -> bool {
    let refs = spec.target_ref.iter().chain(&spec.target_refs);
    let mut any = false;
    for reference in refs {
        any = true;
        let group = reference.group.as_str();
        let names =
            |target: &Key| key.namespace == target.namespace && reference.name == target.name;
        let attached = match reference.kind.as_str() {
            "Gateway" => group == "gateway.networking.k8s.io" && names(target.waypoint),
            "Service" => matches!(group, "" | "core") && names(target.service),
            "ServiceEntry" => group == "networking.istio.io" && names(target.service),
            "GatewayClass" => {
                group == "gateway.networking.k8s.io"
                    && reference.name == WAYPOINT_CLASS
                    && key.namespace == root_namespace
            }
            _ => false,
        };
        if attached {
            return true;
        }
    }
    // A selector picking the waypoint's own pod, in its namespace or the root.
    !any && spec.selector.as_ref().is_some_and(|selector| {
        (key.namespace == target.waypoint.namespace || key.namespace == root_namespace)
            && selects(selector, target.waypoint_labels)
    })
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

/// What the enforcer sees of a request, and how what it cannot see counts.
#[derive(Clone, Copy)]
struct Seen<'a> {
    unenforceable: Unenforceable,
    /// The HTTP request, at a waypoint.
    request: Option<&'a HttpRequest<'a>>,
}

/// A policy matches when any of its rules does (no rules: none does).
fn matches(spec: &AuthorizationPolicySpec, caller: &Caller<'_>, l7: Seen<'_>) -> bool {
    spec.rules.iter().any(|rule| rule_matches(rule, caller, l7))
}

/// A rule matches when any `from`, any `to` and every `when` does; an
/// empty list matches anything.
fn rule_matches(rule: &Rule, caller: &Caller<'_>, l7: Seen<'_>) -> bool {
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

fn source_matches(source: &Source, caller: &Caller<'_>, l7: Seen<'_>) -> bool {
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
    }) && l7
        .unenforceable
        .check(!source.request_principals.is_empty() || !source.not_request_principals.is_empty())
        && match l7.request {
            // At a waypoint the remote address is the caller's own: nothing
            // in front of the mesh forwarded the request.
            Some(_) => field(
                &source.remote_ip_blocks,
                &source.not_remote_ip_blocks,
                |b| block_contains(b, ip),
            ),
            None => l7.unenforceable.check(
                !source.remote_ip_blocks.is_empty() || !source.not_remote_ip_blocks.is_empty(),
            ),
        }
}

fn operation_matches(operation: &Operation, caller: &Caller<'_>, l7: Seen<'_>) -> bool {
    let ports = field(&operation.ports, &operation.not_ports, |port| {
        port.parse() == Ok(caller.destination_port)
    });
    let Some(request) = l7.request else {
        return ports
            && l7.unenforceable.check(
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
            );
    };
    ports
        && field(&operation.hosts, &operation.not_hosts, |h| {
            host_matches(h, request.host)
        })
        && field(&operation.methods, &operation.not_methods, |m| {
            string_matches(m, Some(request.method))
        })
        && field(&operation.paths, &operation.not_paths, |p| {
            path_matches(p, request.path)
        })
}

/// Istio's host match: case-insensitive, and a host written without a
/// port matches it with any port.
fn host_matches(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    let without_port = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host.as_str(),
    };
    string_matches(&pattern, Some(&host)) || string_matches(&pattern, Some(without_port))
}

/// Istio's path match: a string match, or a template where `{*}` stands
/// for one segment and `{**}` (last) for the rest of the path.
fn path_matches(pattern: &str, path: &str) -> bool {
    if !pattern.contains('{') {
        return string_matches(pattern, Some(path));
    }
    let mut segments = path.split('/');
    let mut patterns = pattern.split('/');
    loop {
        match (patterns.next(), segments.next()) {
            (None, None) => return true,
            (Some("{**}"), Some(_)) => return true,
            (Some("{*}"), Some(segment)) if !segment.is_empty() => {}
            (Some(expected), Some(segment)) if expected == segment => {}
            _ => return false,
        }
    }
}

/// A `when` condition; a key not seen where it is enforced counts as
/// `l7` says.
fn condition_matches(condition: &Condition, caller: &Caller<'_>, l7: Seen<'_>) -> bool {
    let (values, not_values) = (&condition.values, &condition.not_values);
    let key = condition.key.as_str();
    if let Some(request) = l7.request {
        if let Some(name) = key
            .strip_prefix("request.headers[")
            .and_then(|rest| rest.strip_suffix(']'))
        {
            let value = (request.header)(name);
            return field(values, not_values, |v| string_matches(v, value.as_deref()));
        }
        match key {
            "remote.ip" => return field(values, not_values, |b| block_contains(b, caller.ip)),
            // Requests reach a waypoint inside HBONE, without TLS of their own.
            "connection.sni" => return field(values, not_values, |_| false),
            _ => {}
        }
    }
    match key {
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
        _ => l7.unenforceable.check(true),
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
