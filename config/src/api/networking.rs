//! `networking.istio.io`: VirtualService and DestinationRule.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::meta::WorkloadSelector;
use super::types::{check_port_number, check_regex, Duration, Percent, StringMatch};
use super::{Issue, Spec};

/// `VirtualService.spec`.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    #[serde(default)]
    pub tls: Vec<TlsRoute>,
    #[serde(default)]
    pub tcp: Vec<TcpRoute>,
    #[serde(default)]
    pub export_to: Vec<String>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    pub redirect: Option<HttpRedirect>,
    pub direct_response: Option<HttpDirectResponse>,
    pub delegate: Option<Delegate>,
    pub rewrite: Option<HttpRewrite>,
    pub timeout: Option<Duration>,
    pub retries: Option<HttpRetry>,
    pub fault: Option<HttpFaultInjection>,
    pub mirror: Option<Destination>,
    #[serde(default)]
    pub mirrors: Vec<HttpMirrorPolicy>,
    pub mirror_percentage: Option<Percent>,
    /// Deprecated by Istio in favour of `mirrorPercentage`; its schema
    /// also takes the proto's own spelling.
    #[serde(alias = "mirror_percent")]
    pub mirror_percent: Option<u32>,
    pub cors_policy: Option<CorsPolicy>,
    pub headers: Option<Headers>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatchRequest {
    pub name: Option<String>,
    pub uri: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    pub port: Option<u32>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub ignore_uri_case: bool,
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    pub source_namespace: Option<String>,
    pub stat_prefix: Option<String>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpRouteDestination {
    pub destination: Destination,
    pub weight: Option<i32>,
    pub headers: Option<Headers>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct Destination {
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<PortSelector>,
}

#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq,
)]
pub struct PortSelector {
    pub number: u32,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    pub request: Option<HeaderOperations>,
    pub response: Option<HeaderOperations>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderOperations {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRedirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u32>,
    pub derive_port: Option<RedirectPortSelection>,
    pub scheme: Option<String>,
    pub redirect_code: Option<u32>,
    /// Replaces the part of the path the match's `uri.prefix` matched.
    pub prefix_rewrite: Option<String>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectPortSelection {
    FromProtocolDefault,
    FromRequestPort,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpDirectResponse {
    pub status: u32,
    pub body: Option<HttpBody>,
}

/// Exactly one of a string or base64 bytes.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpBody {
    pub string: Option<String>,
    pub bytes: Option<String>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct Delegate {
    #[serde(default)]
    pub name: String,
    pub namespace: Option<String>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct RegexRewrite {
    #[serde(default, rename = "match")]
    pub pattern: String,
    #[serde(default)]
    pub rewrite: String,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRetry {
    #[serde(default)]
    pub attempts: i32,
    pub per_try_timeout: Option<Duration>,
    pub retry_on: Option<String>,
    pub retry_remote_localities: Option<bool>,
    pub backoff: Option<Duration>,
    pub retry_ignore_previous_hosts: Option<bool>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq)]
pub struct HttpFaultInjection {
    pub delay: Option<Delay>,
    pub abort: Option<Abort>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Delay {
    pub fixed_delay: Option<Duration>,
    pub exponential_delay: Option<Duration>,
    pub percentage: Option<Percent>,
    /// Deprecated by Istio in favour of `percentage`.
    pub percent: Option<i32>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Abort {
    pub http_status: Option<i32>,
    pub grpc_status: Option<String>,
    pub http2_error: Option<String>,
    pub percentage: Option<Percent>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq)]
pub struct HttpMirrorPolicy {
    pub destination: Destination,
    pub percentage: Option<Percent>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CorsPolicy {
    #[serde(default)]
    pub allow_origins: Vec<StringMatch>,
    /// Deprecated by Istio in favour of `allowOrigins`.
    #[serde(default)]
    pub allow_origin: Vec<String>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    pub max_age: Option<Duration>,
    pub allow_credentials: Option<bool>,
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    Unspecified,
    Forward,
    Ignore,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsRoute {
    #[serde(default, rename = "match")]
    pub matches: Vec<TlsMatchAttributes>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TlsMatchAttributes {
    #[serde(default)]
    pub sni_hosts: Vec<String>,
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    pub port: Option<u32>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    pub source_namespace: Option<String>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpRoute {
    #[serde(default, rename = "match")]
    pub matches: Vec<L4MatchAttributes>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct L4MatchAttributes {
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    pub port: Option<u32>,
    pub source_subnet: Option<String>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    pub source_namespace: Option<String>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteDestination {
    pub destination: Destination,
    pub weight: Option<i32>,
}

impl Spec for VirtualServiceSpec {
    fn validate(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        for (i, route) in self.http.iter().enumerate() {
            route.validate(&format!("spec.http[{i}]"), &mut issues);
        }
        for (i, route) in self.tls.iter().enumerate() {
            let at = format!("spec.tls[{i}]");
            for (m, matched) in route.matches.iter().enumerate() {
                if let Some(port) = matched.port {
                    check_port_number(&format!("{at}.match[{m}].port"), port, &mut issues);
                }
            }
            check_weights(
                &at,
                route.route.iter().map(|r| (&r.destination, r.weight)),
                &mut issues,
            );
        }
        for (i, route) in self.tcp.iter().enumerate() {
            let at = format!("spec.tcp[{i}]");
            for (m, matched) in route.matches.iter().enumerate() {
                if let Some(port) = matched.port {
                    check_port_number(&format!("{at}.match[{m}].port"), port, &mut issues);
                }
            }
            check_weights(
                &at,
                route.route.iter().map(|r| (&r.destination, r.weight)),
                &mut issues,
            );
        }
        issues
    }
}

impl HttpRoute {
    fn validate(&self, at: &str, issues: &mut Vec<Issue>) {
        let actions = [
            ("route", !self.route.is_empty()),
            ("redirect", self.redirect.is_some()),
            ("directResponse", self.direct_response.is_some()),
            ("delegate", self.delegate.is_some()),
        ];
        let set: Vec<&str> = actions
            .iter()
            .filter(|(_, set)| *set)
            .map(|(name, _)| *name)
            .collect();
        if set.len() != 1 {
            let found = if set.is_empty() {
                "none".to_string()
            } else {
                set.join(", ")
            };
            issues.push(Issue::new(at, format!("set exactly one of route, redirect, directResponse and delegate (found {found})")));
        }
        for (m, matched) in self.matches.iter().enumerate() {
            matched.validate(&format!("{at}.match[{m}]"), issues);
        }
        check_weights(
            at,
            self.route.iter().map(|r| (&r.destination, r.weight)),
            issues,
        );
        if let Some(redirect) = &self.redirect {
            if let Some(code) = redirect.redirect_code {
                if ![301, 302, 303, 307, 308].contains(&code) {
                    issues.push(Issue::new(
                        format!("{at}.redirect.redirectCode"),
                        format!("{code} is not one of 301, 302, 303, 307, 308"),
                    ));
                }
            }
            if let Some(port) = redirect.port {
                check_port_number(&format!("{at}.redirect.port"), port, issues);
                if redirect.derive_port.is_some() {
                    issues.push(Issue::new(
                        format!("{at}.redirect"),
                        "port and derivePort are exclusive",
                    ));
                }
            }
        }
        if let Some(response) = &self.direct_response {
            if !(200..=599).contains(&response.status) {
                issues.push(Issue::new(
                    format!("{at}.directResponse.status"),
                    format!("{} is not an HTTP status from 200 to 599", response.status),
                ));
            }
            if response
                .body
                .as_ref()
                .is_some_and(|body| body.string.is_some() == body.bytes.is_some())
            {
                issues.push(Issue::new(
                    format!("{at}.directResponse.body"),
                    "set exactly one of string and bytes",
                ));
            }
        }
        if self.delegate.as_ref().is_some_and(|d| d.name.is_empty()) {
            issues.push(Issue::new(
                format!("{at}.delegate.name"),
                "the delegate VirtualService must be named",
            ));
        }
        if let Some(rewrite) = &self.rewrite {
            if let Some(regex) = &rewrite.uri_regex_rewrite {
                if regex.pattern.is_empty() {
                    issues.push(Issue::new(
                        format!("{at}.rewrite.uriRegexRewrite.match"),
                        "the regex to rewrite by is required",
                    ));
                }
                check_regex(
                    &format!("{at}.rewrite.uriRegexRewrite.match"),
                    &regex.pattern,
                    issues,
                );
                if rewrite.uri.is_some() {
                    issues.push(Issue::new(
                        format!("{at}.rewrite"),
                        "uri and uriRegexRewrite are exclusive",
                    ));
                }
            }
        }
        if let Some(retries) = &self.retries {
            if retries.attempts < 0 {
                issues.push(Issue::new(
                    format!("{at}.retries.attempts"),
                    "must not be negative",
                ));
            }
            let retry_on = retries.retry_on.as_deref().unwrap_or_default();
            for token in retry_on.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                let status = token.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
                if !status && !RETRY_CONDITIONS.contains(&token) {
                    issues.push(Issue::new(
                        format!("{at}.retries.retryOn"),
                        format!("{token:?} is neither a retry condition nor an HTTP status"),
                    ));
                }
            }
        }
        if let Some(fault) = &self.fault {
            fault.validate(&format!("{at}.fault"), issues);
        }
        if self.mirror.is_some() && !self.mirrors.is_empty() {
            issues.push(Issue::new(at, "mirror and mirrors are exclusive"));
        }
        if let Some(percentage) = &self.mirror_percentage {
            percentage.validate(&format!("{at}.mirrorPercentage"), issues);
        }
        for (m, mirror) in self.mirrors.iter().enumerate() {
            if let Some(percentage) = &mirror.percentage {
                percentage.validate(&format!("{at}.mirrors[{m}].percentage"), issues);
            }
        }
        if let Some(cors) = &self.cors_policy {
            for (o, origin) in cors.allow_origins.iter().enumerate() {
                origin.validate(&format!("{at}.corsPolicy.allowOrigins[{o}]"), issues);
            }
        }
    }
}

impl HttpMatchRequest {
    fn validate(&self, at: &str, issues: &mut Vec<Issue>) {
        let single = [
            ("uri", &self.uri),
            ("scheme", &self.scheme),
            ("method", &self.method),
            ("authority", &self.authority),
        ];
        for (field, matched) in single {
            if let Some(matched) = matched {
                matched.validate(&format!("{at}.{field}"), issues);
            }
        }
        let maps = [
            ("headers", &self.headers),
            ("queryParams", &self.query_params),
            ("withoutHeaders", &self.without_headers),
        ];
        for (field, map) in maps {
            for (key, matched) in map {
                matched.validate_or_presence(&format!("{at}.{field}.{key}"), issues);
            }
        }
        if let Some(port) = self.port {
            check_port_number(&format!("{at}.port"), port, issues);
        }
    }
}

impl HttpFaultInjection {
    fn validate(&self, at: &str, issues: &mut Vec<Issue>) {
        if self.delay.is_none() && self.abort.is_none() {
            issues.push(Issue::new(at, "set delay, abort or both"));
        }
        if let Some(delay) = &self.delay {
            if delay.fixed_delay.is_some() == delay.exponential_delay.is_some() {
                issues.push(Issue::new(
                    format!("{at}.delay"),
                    "set exactly one of fixedDelay and exponentialDelay",
                ));
            }
            if let Some(percentage) = &delay.percentage {
                percentage.validate(&format!("{at}.delay.percentage"), issues);
            }
        }
        if let Some(abort) = &self.abort {
            let kinds = [
                abort.http_status.is_some(),
                abort.grpc_status.is_some(),
                abort.http2_error.is_some(),
            ];
            if kinds.iter().filter(|set| **set).count() != 1 {
                issues.push(Issue::new(
                    format!("{at}.abort"),
                    "set exactly one of httpStatus, grpcStatus and http2Error",
                ));
            }
            if let Some(status) = abort.http_status {
                if !(200..=599).contains(&status) {
                    issues.push(Issue::new(
                        format!("{at}.abort.httpStatus"),
                        format!("{status} is not an HTTP status from 200 to 599"),
                    ));
                }
            }
            if let Some(percentage) = &abort.percentage {
                percentage.validate(&format!("{at}.abort.percentage"), issues);
            }
        }
    }
}

/// Weights, when any is given, are non-negative and add up to 100; ports
/// are valid.
fn check_weights<'a>(
    at: &str,
    destinations: impl Iterator<Item = (&'a Destination, Option<i32>)>,
    issues: &mut Vec<Issue>,
) {
    let mut total = 0i64;
    let mut weighted = false;
    let mut count = 0;
    for (i, (destination, weight)) in destinations.enumerate() {
        count += 1;
        if destination.host.is_empty() {
            issues.push(Issue::new(
                format!("{at}.route[{i}].destination.host"),
                "is required",
            ));
        }
        if let Some(port) = destination.port {
            check_port_number(
                &format!("{at}.route[{i}].destination.port.number"),
                port.number,
                issues,
            );
        }
        if let Some(weight) = weight {
            weighted = true;
            if weight < 0 {
                issues.push(Issue::new(
                    format!("{at}.route[{i}].weight"),
                    "must not be negative",
                ));
            }
            total += i64::from(weight);
        }
    }
    if weighted && count > 1 && total != 100 {
        issues.push(Issue::new(
            format!("{at}.route"),
            format!("weights add up to {total}, not 100"),
        ));
    }
}

/// `DestinationRule.spec`.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    pub host: String,
    pub traffic_policy: Option<Box<TrafficPolicy>>,
    #[serde(default)]
    pub subsets: Vec<Subset>,
    #[serde(default)]
    pub export_to: Vec<String>,
    pub workload_selector: Option<WorkloadSelector>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTlsSettings>,
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    pub tunnel: Option<TunnelSettings>,
    pub proxy_protocol: Option<ProxyProtocol>,
    pub retry_budget: Option<RetryBudget>,
}

/// Retries in flight as a share of the requests in flight, with a floor.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    pub percent: Option<f64>,
    pub min_retry_concurrency: Option<u32>,
    pub budget_interval: Option<Duration>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    pub port: Option<PortSelector>,
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTlsSettings>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerSettings {
    pub simple: Option<SimpleLb>,
    pub consistent_hash: Option<ConsistentHashLb>,
    pub locality_lb_setting: Option<LocalityLbSetting>,
    pub warmup_duration_secs: Option<Duration>,
    pub warmup: Option<WarmupConfiguration>,
    pub zone_aware_lb_setting: Option<ZoneAwareLbSetting>,
    pub backend_utilization: Option<BackendUtilization>,
}

/// Envoy's zone-aware routing: locality failover without Istio's
/// locality labels (Ambit has no localities: accepted, no effect).
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ZoneAwareLbSetting {
    pub enabled: Option<bool>,
    #[serde(default)]
    pub failover: Vec<LocalityFailover>,
    #[serde(default)]
    pub failover_priority: Vec<String>,
    pub min_cluster_size: Option<u32>,
}

/// Load balancing by the utilization endpoints report (ORCA).
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackendUtilization {
    pub error_utilization_penalty_percent: Option<u32>,
    #[serde(default)]
    pub metric_names_for_computing_utilization: Vec<String>,
    pub weight_expiration_period: Option<Duration>,
    pub weight_stabilization_period: Option<Duration>,
    pub weight_update_period: Option<Duration>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    Unspecified,
    LeastConn,
    Random,
    Passthrough,
    RoundRobin,
    LeastRequest,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConsistentHashLb {
    pub http_header_name: Option<String>,
    pub http_cookie: Option<HttpCookie>,
    pub use_source_ip: Option<bool>,
    pub http_query_parameter_name: Option<String>,
    pub ring_hash: Option<RingHash>,
    pub maglev: Option<Maglev>,
    /// Deprecated by Istio in favour of `ringHash.minimumRingSize`.
    pub minimum_ring_size: Option<u64>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpCookie {
    pub name: String,
    pub path: Option<String>,
    pub ttl: Option<Duration>,
    #[serde(default)]
    pub attributes: Vec<CookieAttribute>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct CookieAttribute {
    pub name: String,
    pub value: Option<String>,
}

#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq,
)]
#[serde(rename_all = "camelCase")]
pub struct RingHash {
    pub minimum_ring_size: Option<u64>,
}

#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq,
)]
#[serde(rename_all = "camelCase")]
pub struct Maglev {
    pub table_size: Option<u64>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LocalityLbSetting {
    #[serde(default)]
    pub distribute: Vec<LocalityDistribute>,
    #[serde(default)]
    pub failover: Vec<LocalityFailover>,
    #[serde(default)]
    pub failover_priority: Vec<String>,
    pub enabled: Option<bool>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalityDistribute {
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: BTreeMap<String, u32>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalityFailover {
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WarmupConfiguration {
    pub duration: Option<Duration>,
    pub minimum_percent: Option<f64>,
    pub aggression: Option<f64>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionPoolSettings {
    pub tcp: Option<TcpSettings>,
    pub http: Option<HttpSettings>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TcpSettings {
    pub max_connections: Option<i32>,
    pub connect_timeout: Option<Duration>,
    pub tcp_keepalive: Option<TcpKeepalive>,
    pub max_connection_duration: Option<Duration>,
    pub idle_timeout: Option<Duration>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpKeepalive {
    pub probes: Option<u32>,
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HttpSettings {
    pub http1_max_pending_requests: Option<i32>,
    pub http2_max_requests: Option<i32>,
    pub max_requests_per_connection: Option<i32>,
    pub max_retries: Option<i32>,
    pub idle_timeout: Option<Duration>,
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    pub use_client_protocol: Option<bool>,
    pub max_concurrent_streams: Option<i32>,
    pub http2_keep_alive: Option<Http2KeepAlive>,
}

/// HTTP/2 PINGs on upstream connections.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct Http2KeepAlive {
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    Default,
    DoNotUpgrade,
    Upgrade,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    pub split_external_local_origin_errors: Option<bool>,
    pub consecutive_local_origin_failures: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    /// Deprecated by Istio in favour of `consecutive5xxErrors`.
    pub consecutive_errors: Option<i32>,
    pub interval: Option<Duration>,
    pub base_ejection_time: Option<Duration>,
    pub max_ejection_percent: Option<i32>,
    pub min_health_percent: Option<i32>,
    /// The statuses counted as errors (none: 5xx, as Envoy counts).
    #[serde(default)]
    pub outlier_detection_http_error_codes: Vec<u32>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClientTlsSettings {
    pub mode: Option<TlsMode>,
    pub client_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub credential_name: Option<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    pub sni: Option<String>,
    pub insecure_skip_verify: Option<bool>,
    pub ca_crl: Option<String>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TunnelSettings {
    pub protocol: Option<String>,
    pub target_host: String,
    pub target_port: u32,
}

#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq,
)]
pub struct ProxyProtocol {
    pub version: Option<ProxyProtocolVersion>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocolVersion {
    V1,
    V2,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub traffic_policy: Option<Box<TrafficPolicy>>,
}

impl Spec for DestinationRuleSpec {
    fn validate(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        if self.host.is_empty() {
            issues.push(Issue::new("spec.host", "is required"));
        }
        if let Some(policy) = &self.traffic_policy {
            policy.validate("spec.trafficPolicy", &mut issues);
        }
        let mut names = BTreeSet::new();
        for (i, subset) in self.subsets.iter().enumerate() {
            let at = format!("spec.subsets[{i}]");
            if subset.name.is_empty() {
                issues.push(Issue::new(format!("{at}.name"), "is required"));
            } else if !names.insert(&subset.name) {
                issues.push(Issue::new(
                    format!("{at}.name"),
                    format!("subset {:?} is defined twice", subset.name),
                ));
            }
            if let Some(policy) = &subset.traffic_policy {
                policy.validate(&format!("{at}.trafficPolicy"), &mut issues);
            }
        }
        issues
    }
}

impl TrafficPolicy {
    fn validate(&self, at: &str, issues: &mut Vec<Issue>) {
        check_policy_parts(
            at,
            self.load_balancer.as_ref(),
            self.outlier_detection.as_ref(),
            self.tls.as_ref(),
            issues,
        );
        for (i, port_policy) in self.port_level_settings.iter().enumerate() {
            let at = format!("{at}.portLevelSettings[{i}]");
            match port_policy.port {
                Some(port) => check_port_number(&format!("{at}.port.number"), port.number, issues),
                None => issues.push(Issue::new(format!("{at}.port"), "is required")),
            }
            check_policy_parts(
                &at,
                port_policy.load_balancer.as_ref(),
                port_policy.outlier_detection.as_ref(),
                port_policy.tls.as_ref(),
                issues,
            );
        }
        if let Some(tunnel) = &self.tunnel {
            check_port_number(
                &format!("{at}.tunnel.targetPort"),
                tunnel.target_port,
                issues,
            );
        }
    }
}

fn check_policy_parts(
    at: &str,
    load_balancer: Option<&LoadBalancerSettings>,
    outlier_detection: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
    issues: &mut Vec<Issue>,
) {
    if let Some(lb) = load_balancer {
        if lb.simple.is_some() && lb.consistent_hash.is_some() {
            issues.push(Issue::new(
                format!("{at}.loadBalancer"),
                "simple and consistentHash are exclusive",
            ));
        }
        if let Some(hash) = &lb.consistent_hash {
            let keys = [
                hash.http_header_name.is_some(),
                hash.http_cookie.is_some(),
                hash.use_source_ip == Some(true),
                hash.http_query_parameter_name.is_some(),
            ];
            if keys.iter().filter(|set| **set).count() != 1 {
                issues.push(Issue::new(
                    format!("{at}.loadBalancer.consistentHash"),
                    "set exactly one of httpHeaderName, httpCookie, useSourceIp and httpQueryParameterName",
                ));
            }
            if hash.ring_hash.is_some() && hash.maglev.is_some() {
                issues.push(Issue::new(
                    format!("{at}.loadBalancer.consistentHash"),
                    "ringHash and maglev are exclusive",
                ));
            }
        }
    }
    if let Some(outlier) = outlier_detection {
        for (field, value) in [
            ("maxEjectionPercent", outlier.max_ejection_percent),
            ("minHealthPercent", outlier.min_health_percent),
        ] {
            if value.is_some_and(|percent| !(0..=100).contains(&percent)) {
                issues.push(Issue::new(
                    format!("{at}.outlierDetection.{field}"),
                    "must be from 0 to 100",
                ));
            }
        }
    }
    if let Some(tls) = tls {
        let has_files = tls.client_certificate.is_some() && tls.private_key.is_some();
        if tls.mode == Some(TlsMode::Mutual) && tls.credential_name.is_none() && !has_files {
            issues.push(Issue::new(
                format!("{at}.tls"),
                "MUTUAL needs clientCertificate and privateKey, or credentialName",
            ));
        }
    }
}

/// `ServiceEntry.spec`: services outside (or inside) the mesh added to its registry.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    pub location: Option<Location>,
    pub resolution: Option<Resolution>,
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntry>,
    pub workload_selector: Option<EntryWorkloadSelector>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub number: u32,
    pub protocol: Option<String>,
    pub name: String,
    pub target_port: Option<u32>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    MeshExternal,
    MeshInternal,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    None,
    Static,
    Dns,
    DnsRoundRobin,
    /// Resolved per request from the host asked for (wildcard hosts).
    DynamicDns,
}

/// An endpoint of a ServiceEntry (WorkloadEntry's fields).
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntry {
    pub address: Option<String>,
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub network: Option<String>,
    pub locality: Option<String>,
    pub weight: Option<u32>,
    pub service_account: Option<String>,
}

/// ServiceEntry's selector, which names its map `labels`.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryWorkloadSelector {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The conditions `retries.retryOn` may name (Envoy's), besides HTTP
/// status codes.
pub const RETRY_CONDITIONS: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Protocols Istio knows for a port (case-insensitive).
const PROTOCOLS: [&str; 12] = [
    "HTTP",
    "HTTPS",
    "GRPC",
    "GRPC-WEB",
    "HTTP2",
    "HTTP_PROXY",
    "MONGO",
    "MYSQL",
    "REDIS",
    "TCP",
    "TLS",
    "UDP",
];

fn check_service_ports<'a>(
    at: &str,
    ports: impl Iterator<Item = (&'a str, u32, Option<&'a str>)>,
    issues: &mut Vec<Issue>,
) {
    let mut names = BTreeSet::new();
    for (i, (name, number, protocol)) in ports.enumerate() {
        check_port_number(&format!("{at}[{i}].number"), number, issues);
        if !name.is_empty() && !names.insert(name) {
            issues.push(Issue::new(
                format!("{at}[{i}].name"),
                format!("port name {name:?} is used twice"),
            ));
        }
        if let Some(protocol) = protocol {
            if !PROTOCOLS
                .iter()
                .any(|known| known.eq_ignore_ascii_case(protocol))
            {
                issues.push(Issue::new(
                    format!("{at}[{i}].protocol"),
                    format!(
                        "unknown protocol {protocol:?} (one of {})",
                        PROTOCOLS.join(", ")
                    ),
                ));
            }
        }
    }
}

impl Spec for ServiceEntrySpec {
    fn validate(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        if self.hosts.is_empty() {
            issues.push(Issue::new("spec.hosts", "at least one host is required"));
        }
        for (i, address) in self.addresses.iter().enumerate() {
            if super::security::parse_ip_block(address).is_none() {
                issues.push(Issue::new(
                    format!("spec.addresses[{i}]"),
                    format!("{address:?} is not an IP address or CIDR block"),
                ));
            }
        }
        let ports = self
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.number, p.protocol.as_deref()));
        check_service_ports("spec.ports", ports, &mut issues);
        for (i, port) in self.ports.iter().enumerate() {
            if let Some(target) = port.target_port {
                check_port_number(&format!("spec.ports[{i}].targetPort"), target, &mut issues);
            }
        }
        if !self.endpoints.is_empty() && self.workload_selector.is_some() {
            issues.push(Issue::new(
                "spec",
                "endpoints and workloadSelector are exclusive",
            ));
        }
        if self.resolution == Some(Resolution::Static)
            && self.endpoints.is_empty()
            && self.workload_selector.is_none()
        {
            issues.push(Issue::new(
                "spec.endpoints",
                "resolution STATIC needs endpoints or a workloadSelector",
            ));
        }
        if matches!(
            self.resolution,
            Some(Resolution::Dns | Resolution::DnsRoundRobin)
        ) {
            for (i, host) in self.hosts.iter().enumerate() {
                if host.starts_with('*') && self.endpoints.is_empty() {
                    issues.push(Issue::new(
                        format!("spec.hosts[{i}]"),
                        "a wildcard host cannot be resolved by DNS without endpoints",
                    ));
                }
            }
        }
        if self.resolution == Some(Resolution::DynamicDns)
            && (!self.endpoints.is_empty() || self.workload_selector.is_some())
        {
            issues.push(Issue::new(
                "spec.resolution",
                "DYNAMIC_DNS resolves the host each request names: it takes no endpoints \
                 nor workloadSelector",
            ));
        }
        for (e, endpoint) in self.endpoints.iter().enumerate() {
            for (name, port) in &endpoint.ports {
                check_port_number(
                    &format!("spec.endpoints[{e}].ports.{name}"),
                    *port,
                    &mut issues,
                );
            }
        }
        issues
    }
}

/// `Gateway.spec`: what a gateway proxy listens for.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewaySpec {
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub servers: Vec<Server>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    pub port: ServicePort,
    pub bind: Option<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    pub tls: Option<ServerTlsSettings>,
    pub name: Option<String>,
    pub default_endpoint: Option<String>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServerTlsSettings {
    pub https_redirect: Option<bool>,
    pub mode: Option<ServerTlsMode>,
    pub server_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub ca_crl: Option<String>,
    pub credential_name: Option<String>,
    #[serde(default)]
    pub credential_names: Vec<String>,
    #[serde(default)]
    pub tls_certificates: Vec<TlsCertificate>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    #[serde(default)]
    pub verify_certificate_spki: Vec<String>,
    #[serde(default)]
    pub verify_certificate_hash: Vec<String>,
    pub min_protocol_version: Option<TlsProtocol>,
    pub max_protocol_version: Option<TlsProtocol>,
    #[serde(default)]
    pub cipher_suites: Vec<String>,
    /// The Secret holding the CA bundle for MUTUAL, apart from the key pair.
    pub ca_cert_credential_name: Option<String>,
    #[serde(default)]
    pub ecdh_curves: Vec<String>,
    pub insecure_skip_verify: Option<bool>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TlsCertificate {
    pub server_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    Passthrough,
    Simple,
    Mutual,
    AutoPassthrough,
    IstioMutual,
    OptionalMutual,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsProtocol {
    #[serde(rename = "TLS_AUTO")]
    Auto,
    #[serde(rename = "TLSV1_0")]
    V1_0,
    #[serde(rename = "TLSV1_1")]
    V1_1,
    #[serde(rename = "TLSV1_2")]
    V1_2,
    #[serde(rename = "TLSV1_3")]
    V1_3,
}

impl Spec for GatewaySpec {
    fn validate(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        if self.servers.is_empty() {
            issues.push(Issue::new(
                "spec.servers",
                "at least one server is required",
            ));
        }
        let ports = self
            .servers
            .iter()
            .map(|s| ("", s.port.number, s.port.protocol.as_deref()));
        check_service_ports("spec.servers.port", ports, &mut issues);
        for (i, server) in self.servers.iter().enumerate() {
            let at = format!("spec.servers[{i}]");
            if server.hosts.is_empty() {
                issues.push(Issue::new(
                    format!("{at}.hosts"),
                    "at least one host is required",
                ));
            }
            if let Some(tls) = &server.tls {
                let needs_certificate = matches!(
                    tls.mode,
                    Some(
                        ServerTlsMode::Simple
                            | ServerTlsMode::Mutual
                            | ServerTlsMode::OptionalMutual
                    )
                );
                let has_certificate = tls.credential_name.is_some()
                    || !tls.credential_names.is_empty()
                    || !tls.tls_certificates.is_empty()
                    || (tls.server_certificate.is_some() && tls.private_key.is_some());
                if needs_certificate && !has_certificate {
                    issues.push(Issue::new(
                        format!("{at}.tls"),
                        "this mode needs credentialName, or serverCertificate and privateKey",
                    ));
                }
                if let (Some(min), Some(max)) = (tls.min_protocol_version, tls.max_protocol_version)
                {
                    if min != TlsProtocol::Auto
                        && max != TlsProtocol::Auto
                        && (min as u8) > (max as u8)
                    {
                        issues.push(Issue::new(
                            format!("{at}.tls"),
                            "minProtocolVersion is above maxProtocolVersion",
                        ));
                    }
                }
            }
        }
        issues
    }
}
