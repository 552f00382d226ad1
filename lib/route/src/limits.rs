//! A destination's DestinationRule `connectionPool`, as Istio sets Envoy's
//! circuit breakers and connection options: a limit left out (or zero,
//! which Istio reads as unset) is none.

use std::time::Duration;

use ambit_config::api::networking::{ConnectionPoolSettings, RetryBudget, TcpKeepalive};
use serde::Serialize;

/// Istio's `connectTimeout` when the rule gives none.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Istio's idle timeout of upstream HTTP connections when none is given.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Envoy's retry budget when `retryBudget` leaves a field out.
const DEFAULT_BUDGET_PERCENT: f64 = 20.0;
const DEFAULT_MIN_RETRY_CONCURRENCY: u32 = 3;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Connections to the destination's endpoints, all together; HTTP/1.1
    /// requests past it wait for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection; one more is answered 503 `UO`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Requests in flight to the destination; one more is answered 503 `UO`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Requests one connection carries before it is closed (1: no keep-alive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// Retries in flight to the destination; past it a failure is not retried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// In place of `max_retries`: retries in flight as a share of the
    /// requests in flight, never fewer than its floor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<Budget>,
    pub connect_timeout: Duration,
    /// How long an upstream HTTP connection may sit idle before it is closed.
    pub idle_timeout: Duration,
    /// How long an upstream connection is used for new requests at most.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<Duration>,
    /// TCP keepalive on upstream connections; unset fields are the
    /// system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<Keepalive>,
    /// Streams one upstream HTTP/2 connection carries at once; more open
    /// another connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<u32>,
    /// HTTP/2 PINGs on upstream connections: how often, and how long an
    /// answer may take before the connection is closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2_keepalive: Option<(Duration, Option<Duration>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Keepalive {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<u32>,
}

impl Keepalive {
    fn of(spec: &TcpKeepalive) -> Self {
        Self {
            time: spec.time.map(|t| t.0),
            interval: spec.interval.map(|t| t.0),
            probes: spec.probes,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    pub percent: f64,
    pub min_concurrency: u32,
}

impl Budget {
    /// Retries allowed in flight while `requests` are.
    pub fn retries(&self, requests: u32) -> u32 {
        let share = (f64::from(requests) * self.percent / 100.0) as u32;
        share.max(self.min_concurrency)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: None,
            max_pending_requests: None,
            max_requests: None,
            max_requests_per_connection: None,
            max_retries: None,
            retry_budget: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connection_duration: None,
            tcp_keepalive: None,
            max_concurrent_streams: None,
            http2_keepalive: None,
        }
    }
}

impl Limits {
    /// The limits of a destination's `connectionPool` and `retryBudget`.
    pub fn of(pool: Option<&ConnectionPoolSettings>, budget: Option<&RetryBudget>) -> Self {
        let positive =
            |value: Option<i32>| value.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0);
        let tcp = pool.and_then(|p| p.tcp.as_ref());
        let http = pool.and_then(|p| p.http.as_ref());
        let duration = |value: Option<ambit_config::api::types::Duration>| {
            value.map(|d| d.0).filter(|d| !d.is_zero())
        };
        Self {
            max_connections: positive(tcp.and_then(|t| t.max_connections)),
            max_pending_requests: positive(http.and_then(|h| h.http1_max_pending_requests)),
            max_requests: positive(http.and_then(|h| h.http2_max_requests)),
            max_requests_per_connection: positive(http.and_then(|h| h.max_requests_per_connection)),
            max_retries: positive(http.and_then(|h| h.max_retries)),
            retry_budget: budget.map(|budget| Budget {
                percent: budget.percent.unwrap_or(DEFAULT_BUDGET_PERCENT),
                min_concurrency: budget
                    .min_retry_concurrency
                    .unwrap_or(DEFAULT_MIN_RETRY_CONCURRENCY),
            }),
            connect_timeout: duration(tcp.and_then(|t| t.connect_timeout))
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            // The HTTP setting, else the TCP one, as Istio applies them.
            idle_timeout: duration(http.and_then(|h| h.idle_timeout))
                .or(duration(tcp.and_then(|t| t.idle_timeout)))
                .unwrap_or(DEFAULT_IDLE_TIMEOUT),
            max_connection_duration: duration(tcp.and_then(|t| t.max_connection_duration)),
            tcp_keepalive: tcp
                .and_then(|t| t.tcp_keepalive.as_ref())
                .map(Keepalive::of),
            max_concurrent_streams: positive(http.and_then(|h| h.max_concurrent_streams)),
            http2_keepalive: http
                .and_then(|h| h.http2_keep_alive.as_ref())
                .and_then(|k| Some((duration(k.interval)?, duration(k.timeout)))),
        }
    }

    /// Which of an endpoint's HTTP/2 connections (from 0) takes a request
    /// when `in_flight` requests (this one counted) are going to it: the
    /// n-th takes those past n times the streams one may carry.
    pub fn http2_connection(&self, in_flight: usize) -> usize {
        self.max_concurrent_streams
            .map_or(0, |most| in_flight.saturating_sub(1) / most as usize)
    }

    /// Whether any request or retry can be refused for the destination's
    /// sake (else nothing needs counting).
    pub fn breaks(&self) -> bool {
        self.max_connections.is_some()
            || self.max_pending_requests.is_some()
            || self.max_requests.is_some()
            || self.max_retries.is_some()
            || self.retry_budget.is_some()
    }
}

#[cfg(test)]
mod tests {
    use ambit_config::api::networking::{HttpSettings, TcpSettings};
    use ambit_config::api::types::Duration as SpecDuration;

    use super::*;

    #[test]
    fn istios_circuit_breaking_task_sets_three_limits_and_zero_is_unset() {
        let pool = ConnectionPoolSettings {
            tcp: Some(TcpSettings {
                max_connections: Some(1),
                max_connection_duration: Some(SpecDuration(Duration::from_secs(600))),
                tcp_keepalive: Some(TcpKeepalive {
                    time: Some(SpecDuration(Duration::from_secs(30))),
                    probes: Some(3),
                    interval: None,
                }),
                ..Default::default()
            }),
            http: Some(HttpSettings {
                http1_max_pending_requests: Some(1),
                max_requests_per_connection: Some(1),
                max_retries: Some(0),
                idle_timeout: Some(SpecDuration(Duration::from_secs(30))),
                ..Default::default()
            }),
        };
        let limits = Limits::of(Some(&pool), None);
        assert_eq!(
            limits,
            Limits {
                max_connections: Some(1),
                max_pending_requests: Some(1),
                max_requests_per_connection: Some(1),
                idle_timeout: Duration::from_secs(30),
                max_connection_duration: Some(Duration::from_secs(600)),
                tcp_keepalive: Some(Keepalive {
                    time: Some(Duration::from_secs(30)),
                    interval: None,
                    probes: Some(3),
                }),
                ..Limits::default()
            }
        );
        assert!(limits.breaks());
        assert!(!Limits::of(None, None).breaks());
        // Streams past maxConcurrentStreams go on another HTTP/2 connection.
        let streams = Limits {
            max_concurrent_streams: Some(2),
            ..Limits::default()
        };
        let connections: Vec<usize> = (1..=5).map(|n| streams.http2_connection(n)).collect();
        assert_eq!(connections, [0, 0, 1, 1, 2]);
        assert_eq!(Limits::default().http2_connection(100), 0);
        // A retry budget: a fifth of the requests in flight, at least three.
        let budget = Limits::of(None, Some(&RetryBudget::default()));
        let budget = budget.retry_budget.expect("a budget");
        assert_eq!((budget.retries(5), budget.retries(100)), (3, 20));
    }
}
