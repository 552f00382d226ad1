//! A destination's DestinationRule `outlierDetection`, as Istio has Envoy
//! eject failing endpoints: one that fails so many times in a row leaves
//! the load balancing pool for `baseEjectionTime` times the number of times
//! it was ejected, unless that would eject more than `maxEjectionPercent`
//! of the pool. Pure: the I/O layer records outcomes and asks which
//! endpoints may be picked, passing the time in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ambit_config::api::networking::OutlierDetection;
use serde::Serialize;

/// Envoy's defaults, which Istio leaves in place for fields not given.
const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
/// Envoy's cap on one ejection (`max_ejection_time`), unless the base is
/// longer.
const MAX_EJECTION: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierPolicy {
    /// 5xx answers in a row that eject (local failures count as 503 unless
    /// split); none: not by 5xx.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx: Option<u32>,
    /// 502, 503 and 504 answers in a row that eject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway: Option<u32>,
    /// Connection failures, resets and timeouts in a row that eject, when
    /// they are counted apart (`splitExternalLocalOriginErrors`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_local: Option<u32>,
    pub split_local: bool,
    pub interval: Duration,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
    pub min_health_percent: u32,
    /// The statuses that count as errors; none: every 5xx.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub error_codes: Vec<u16>,
}

impl OutlierPolicy {
    /// The policy of a rule's `outlierDetection`; none when it has none.
    pub fn from_spec(spec: Option<&OutlierDetection>) -> Option<Self> {
        let spec = spec?;
        let duration = |d: Option<ambit_config::api::types::Duration>| d.map(|d| d.0);
        let percent = |p: Option<i32>, default: u32| {
            p.and_then(|p| u32::try_from(p).ok())
                .map_or(default, |p| p.min(100))
        };
        // Zero turns a kind of ejection off, as Istio tells Envoy.
        let threshold = |n: Option<u32>| n.filter(|n| *n > 0);
        let consecutive_5xx = match (spec.consecutive_5xx_errors, spec.consecutive_errors) {
            (Some(n), _) => threshold(Some(n)),
            (None, Some(n)) => threshold(u32::try_from(n).ok()),
            (None, None) => Some(DEFAULT_CONSECUTIVE_5XX),
        };
        let split_local = spec.split_external_local_origin_errors == Some(true);
        Some(Self {
            consecutive_5xx,
            consecutive_gateway: threshold(spec.consecutive_gateway_errors),
            consecutive_local: threshold(spec.consecutive_local_origin_failures)
                .filter(|_| split_local),
            split_local,
            interval: duration(spec.interval).unwrap_or(DEFAULT_INTERVAL),
            base_ejection: duration(spec.base_ejection_time).unwrap_or(DEFAULT_BASE_EJECTION),
            max_ejection_percent: percent(spec.max_ejection_percent, DEFAULT_MAX_EJECTION_PERCENT),
            min_health_percent: percent(spec.min_health_percent, 0),
            error_codes: spec
                .outlier_detection_http_error_codes
                .iter()
                .filter_map(|code| u16::try_from(*code).ok())
                .collect(),
        })
    }
}

/// How an attempt at an endpoint ended, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostResult {
    /// The endpoint answered with this status.
    Answered(u16),
    /// No answer: no connection, a reset, a timeout (local origin).
    Failed,
}

#[derive(Debug, Default, Clone)]
struct Host {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_local: u32,
    ejected_at: Option<Instant>,
    /// Times ejected: each ejection lasts that many base ejection times.
    ejections: u32,
}

/// The endpoints of one destination, as outlier detection sees them.
#[derive(Debug)]
pub struct Detector {
    pub policy: OutlierPolicy,
    hosts: HashMap<SocketAddr, Host>,
}

impl Detector {
    pub fn new(policy: OutlierPolicy) -> Self {
        Self {
            policy,
            hosts: HashMap::new(),
        }
    }

    /// Records how an attempt at `endpoint`, one of `pool` endpoints, ended;
    /// whether that ejected it.
    pub fn record(
        &mut self,
        endpoint: SocketAddr,
        result: HostResult,
        pool: usize,
        now: Instant,
    ) -> bool {
        let policy = &self.policy;
        let host = self.hosts.entry(endpoint).or_default();
        let status = match (result, policy.split_local) {
            (HostResult::Answered(status), _) => {
                host.consecutive_local = 0;
                Some(status)
            }
            (HostResult::Failed, false) => Some(503),
            (HostResult::Failed, true) => {
                host.consecutive_local += 1;
                None
            }
        };
        if let Some(status) = status {
            let error = match policy.error_codes.is_empty() {
                true => status >= 500,
                false => policy.error_codes.contains(&status),
            };
            host.consecutive_5xx = if error { host.consecutive_5xx + 1 } else { 0 };
            host.consecutive_gateway = if matches!(status, 502..=504) {
                host.consecutive_gateway + 1
            } else {
                0
            };
        }
        let reached = |count: u32, threshold: Option<u32>| threshold.is_some_and(|t| count >= t);
        let failing = reached(host.consecutive_5xx, policy.consecutive_5xx)
            || reached(host.consecutive_gateway, policy.consecutive_gateway)
            || reached(host.consecutive_local, policy.consecutive_local);
        if !failing || host.ejected_at.is_some() {
            return false;
        }
        let ejected = self.ejected_count(now);
        let percent = u64::from(self.policy.max_ejection_percent);
        if (ejected as u64 + 1) * 100 > percent * pool as u64 {
            return false;
        }
        let host = self.hosts.entry(endpoint).or_default();
        *host = Host {
            ejected_at: Some(now),
            ejections: host.ejections + 1,
            ..Host::default()
        };
        true
    }

    /// The indices of `endpoints` that may be picked now (`None`: all of
    /// them); an endpoint whose ejection has run out is back.
    pub fn eligible(&mut self, endpoints: &[SocketAddr], now: Instant) -> Option<Vec<usize>> {
        self.expire(now);
        let ejected = |e: &SocketAddr| self.hosts.get(e).is_some_and(|h| h.ejected_at.is_some());
        if !endpoints.iter().any(ejected) {
            return None;
        }
        let healthy: Vec<usize> = (0..endpoints.len())
            .filter(|&i| !ejected(&endpoints[i]))
            .collect();
        // Below the healthy share asked for, ejections are ignored.
        let below = healthy.len() * 100 < self.policy.min_health_percent as usize * endpoints.len();
        (!below).then_some(healthy)
    }

    fn ejected_count(&self, now: Instant) -> usize {
        self.hosts
            .values()
            .filter(|h| {
                h.ejected_at
                    .is_some_and(|at| now < at + self.ejection_time(h))
            })
            .count()
    }

    fn ejection_time(&self, host: &Host) -> Duration {
        let cap = MAX_EJECTION.max(self.policy.base_ejection);
        (self.policy.base_ejection * host.ejections.max(1)).min(cap)
    }

    fn expire(&mut self, now: Instant) {
        let times: Vec<(SocketAddr, Duration)> = self
            .hosts
            .iter()
            .filter(|(_, h)| h.ejected_at.is_some())
            .map(|(e, h)| (*e, self.ejection_time(h)))
            .collect();
        for (endpoint, time) in times {
            let host = self.hosts.entry(endpoint).or_default();
            if host.ejected_at.is_some_and(|at| now >= at + time) {
                host.ejected_at = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ambit_config::api::types::Duration as SpecDuration;

    use super::*;

    fn spec(consecutive_5xx: u32, max_percent: i32) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx_errors: Some(consecutive_5xx),
            interval: Some(SpecDuration(Duration::from_secs(1))),
            base_ejection_time: Some(SpecDuration(Duration::from_secs(3))),
            max_ejection_percent: Some(max_percent),
            ..Default::default()
        }
    }

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 9080))
    }

    #[test]
    fn an_endpoint_failing_in_a_row_is_ejected_for_longer_each_time() {
        let policy = OutlierPolicy::from_spec(Some(&spec(2, 100))).unwrap();
        let mut detector = Detector::new(policy);
        let pool = [addr(1), addr(2)];
        let start = Instant::now();
        // A success between failures resets the count.
        assert!(!detector.record(addr(2), HostResult::Answered(500), 2, start));
        assert!(!detector.record(addr(2), HostResult::Answered(200), 2, start));
        assert!(!detector.record(addr(2), HostResult::Answered(503), 2, start));
        assert!(detector.record(addr(2), HostResult::Answered(500), 2, start));
        assert_eq!(detector.eligible(&pool, start), Some(vec![0]));
        let later = |secs| start + Duration::from_secs(secs);
        assert_eq!(detector.eligible(&pool, later(2)), Some(vec![0]));
        // Back after the base ejection time; ejected again, for twice as long.
        assert_eq!(detector.eligible(&pool, later(3)), None);
        assert!(!detector.record(addr(2), HostResult::Failed, 2, later(3)));
        assert!(detector.record(addr(2), HostResult::Failed, 2, later(3)));
        assert_eq!(detector.eligible(&pool, later(8)), Some(vec![0]));
        assert_eq!(detector.eligible(&pool, later(9)), None);
    }

    #[test]
    fn ejections_stop_at_the_max_percent_and_below_min_health() {
        let mut detector = Detector::new(OutlierPolicy::from_spec(Some(&spec(1, 50))).unwrap());
        let pool = [addr(1), addr(2)];
        let now = Instant::now();
        assert!(detector.record(addr(1), HostResult::Answered(500), 2, now));
        // A second would eject all of the pool: over 50%.
        assert!(!detector.record(addr(2), HostResult::Answered(500), 2, now));
        assert_eq!(detector.eligible(&pool, now), Some(vec![1]));
        // With at least 100% healthy asked for, ejections are ignored.
        let mut strict = spec(1, 100);
        strict.min_health_percent = Some(100);
        let mut detector = Detector::new(OutlierPolicy::from_spec(Some(&strict)).unwrap());
        assert!(detector.record(addr(1), HostResult::Answered(500), 2, now));
        assert_eq!(detector.eligible(&pool, now), None);
    }

    #[test]
    fn istios_fields_map_to_envoys_defaults() {
        let default = OutlierPolicy::from_spec(Some(&OutlierDetection::default())).unwrap();
        assert_eq!(default.consecutive_5xx, Some(5));
        assert_eq!(default.consecutive_gateway, None);
        assert_eq!(default.max_ejection_percent, 10);
        assert_eq!(default.base_ejection, Duration::from_secs(30));
        // Gateway errors alone, 5xx off; local failures counted apart.
        let gateway = OutlierPolicy::from_spec(Some(&OutlierDetection {
            consecutive_5xx_errors: Some(0),
            consecutive_gateway_errors: Some(2),
            split_external_local_origin_errors: Some(true),
            consecutive_local_origin_failures: Some(1),
            max_ejection_percent: Some(100),
            ..Default::default()
        }))
        .unwrap();
        let mut detector = Detector::new(gateway);
        let now = Instant::now();
        assert!(!detector.record(addr(1), HostResult::Answered(500), 3, now));
        assert!(!detector.record(addr(1), HostResult::Answered(502), 3, now));
        assert!(detector.record(addr(1), HostResult::Answered(504), 3, now));
        assert!(detector.record(addr(2), HostResult::Failed, 3, now));
        assert!(OutlierPolicy::from_spec(None).is_none());
        // Only the statuses named count, when some are.
        let mut named = spec(1, 100);
        named.outlier_detection_http_error_codes = vec![429];
        let mut detector = Detector::new(OutlierPolicy::from_spec(Some(&named)).unwrap());
        assert!(!detector.record(addr(1), HostResult::Answered(500), 3, now));
        assert!(detector.record(addr(1), HostResult::Answered(429), 3, now));
    }
}
