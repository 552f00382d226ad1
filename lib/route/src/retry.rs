//! A route's retry policy, as Istio has Envoy retry: Istio's default
//! policy when the route names none, `retries.attempts: 0` for none, and
//! otherwise the default with the user's fields over it. Pure: which
//! outcome of an attempt is retried, and how long to wait before the next.

use std::time::Duration;

use ambit_config::api::networking::HttpRetry;
use serde::Serialize;

/// Envoy's wait before a retry when `backoff` is not given (its base
/// interval); each retry may wait up to twice the one before, at most ten
/// times the base, drawn at random below that.
const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    pub retry_on: Vec<Condition>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub status_codes: Vec<u16>,
    pub backoff: Duration,
    /// Retries go to an endpoint not tried yet, where there is one.
    pub other_hosts: bool,
}

/// Envoy's `retry_on` conditions, as Istio's `retryOn` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Condition {
    #[serde(rename = "5xx")]
    FiveXx,
    GatewayError,
    Reset,
    ResetBeforeRequest,
    ConnectFailure,
    Retriable4xx,
    RefusedStream,
    RetriableStatusCodes,
    /// Istio gives Envoy no header list, so it never matches.
    RetriableHeaders,
    /// Envoy's own rate limiting, which the waypoint does not do.
    EnvoyRatelimited,
    Cancelled,
    DeadlineExceeded,
    Internal,
    ResourceExhausted,
    Unavailable,
}

impl Condition {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "5xx" => Self::FiveXx,
            "gateway-error" => Self::GatewayError,
            "reset" => Self::Reset,
            "reset-before-request" => Self::ResetBeforeRequest,
            "connect-failure" => Self::ConnectFailure,
            "retriable-4xx" => Self::Retriable4xx,
            "refused-stream" => Self::RefusedStream,
            "retriable-status-codes" => Self::RetriableStatusCodes,
            "retriable-headers" => Self::RetriableHeaders,
            "envoy-ratelimited" => Self::EnvoyRatelimited,
            "cancelled" => Self::Cancelled,
            "deadline-exceeded" => Self::DeadlineExceeded,
            "internal" => Self::Internal,
            "resource-exhausted" => Self::ResourceExhausted,
            "unavailable" => Self::Unavailable,
            _ => return None,
        })
    }
}

/// How an attempt ended, as far as retrying goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No connection to the endpoint.
    ConnectFailure,
    /// The HTTP/2 stream was refused (REFUSED_STREAM).
    RefusedStream,
    /// The connection or stream ended before the answer's headers.
    Reset,
    /// No answer within the per-try timeout (Envoy counts it as a 504).
    Timeout,
    /// An answer: its status, and for gRPC the `grpc-status` of a
    /// trailers-only answer.
    Answered { status: u16, grpc: Option<u32> },
}

impl RetryPolicy {
    /// What Istio tells Envoy when a route sets no `retries`.
    pub fn istio_default() -> Self {
        use Condition::*;
        Self {
            attempts: 2,
            per_try_timeout: None,
            retry_on: vec![
                ConnectFailure,
                RefusedStream,
                Unavailable,
                Cancelled,
                RetriableStatusCodes,
            ],
            status_codes: vec![503],
            backoff: DEFAULT_BACKOFF,
            other_hosts: true,
        }
    }

    /// The policy of a route's `retries` (`None`: Istio's default), or
    /// none at all for `attempts: 0`.
    pub fn from_spec(spec: Option<&HttpRetry>) -> Result<Option<Self>, String> {
        let mut policy = Self::istio_default();
        let Some(spec) = spec else {
            return Ok(Some(policy));
        };
        policy.attempts = match u32::try_from(spec.attempts) {
            Ok(0) => return Ok(None),
            Ok(attempts) => attempts,
            Err(_) => return Err(format!("retries.attempts {}: negative", spec.attempts)),
        };
        if let Some(retry_on) = spec.retry_on.as_deref().filter(|r| !r.trim().is_empty()) {
            let (conditions, codes) = parse_retry_on(retry_on)?;
            policy.retry_on = conditions;
            policy.status_codes = codes;
            if !policy.status_codes.is_empty()
                && !policy.retry_on.contains(&Condition::RetriableStatusCodes)
            {
                policy.retry_on.push(Condition::RetriableStatusCodes);
            }
        }
        policy.per_try_timeout = spec.per_try_timeout.map(|t| t.0).filter(|t| !t.is_zero());
        if let Some(backoff) = spec.backoff.map(|b| b.0).filter(|b| !b.is_zero()) {
            policy.backoff = backoff;
        }
        policy.other_hosts = spec.retry_ignore_previous_hosts.unwrap_or(true);
        Ok(Some(policy))
    }

    /// Whether an attempt that ended so is tried again (attempts left aside).
    pub fn retries(&self, outcome: Outcome) -> bool {
        use Condition::*;
        let on = |condition| self.retry_on.contains(&condition);
        match outcome {
            Outcome::ConnectFailure => [
                ConnectFailure,
                ResetBeforeRequest,
                Reset,
                FiveXx,
                GatewayError,
            ]
            .into_iter()
            .any(on),
            Outcome::RefusedStream => [RefusedStream, Reset, FiveXx, GatewayError]
                .into_iter()
                .any(on),
            Outcome::Reset => [Reset, FiveXx, GatewayError].into_iter().any(on),
            Outcome::Timeout => self.retries(Outcome::Answered {
                status: 504,
                grpc: None,
            }),
            Outcome::Answered { status, grpc } => {
                (on(FiveXx) && status >= 500)
                    || (on(GatewayError) && matches!(status, 502..=504))
                    || (on(Retriable4xx) && status == 409)
                    || (on(RetriableStatusCodes) && self.status_codes.contains(&status))
                    || grpc.is_some_and(|code| {
                        let condition = match code {
                            1 => Cancelled,
                            4 => DeadlineExceeded,
                            8 => ResourceExhausted,
                            13 => Internal,
                            14 => Unavailable,
                            _ => return false,
                        };
                        on(condition)
                    })
            }
        }
    }

    /// The wait before retry number `retry` (from 1), from a `random` draw:
    /// fully jittered below `backoff * 2^(retry-1)`, at most ten backoffs.
    pub fn wait(&self, retry: u32, random: u64) -> Duration {
        let base = self.backoff.as_nanos().min(u64::MAX as u128) as u64;
        let ceiling = base
            .saturating_mul(1u64 << (retry.saturating_sub(1)).min(32))
            .min(base.saturating_mul(10))
            .max(1);
        Duration::from_nanos(random % ceiling)
    }
}

/// `retryOn`: Envoy's conditions and HTTP status codes, comma-separated.
fn parse_retry_on(retry_on: &str) -> Result<(Vec<Condition>, Vec<u16>), String> {
    let mut conditions = Vec::new();
    let mut codes = Vec::new();
    for token in retry_on.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if let Some(condition) = Condition::parse(token) {
            if !conditions.contains(&condition) {
                conditions.push(condition);
            }
        } else if let Some(code) = token
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
        {
            codes.push(code);
        } else {
            return Err(format!(
                "retries.retryOn: {token:?} is neither a retry condition nor an HTTP status"
            ));
        }
    }
    Ok((conditions, codes))
}

#[cfg(test)]
mod tests {
    use ambit_config::api::types::Duration as SpecDuration;

    use super::*;

    fn answered(status: u16) -> Outcome {
        Outcome::Answered { status, grpc: None }
    }

    fn grpc(code: u32) -> Outcome {
        Outcome::Answered {
            status: 200,
            grpc: Some(code),
        }
    }

    fn policy(retry_on: &str) -> RetryPolicy {
        RetryPolicy::from_spec(Some(&HttpRetry {
            attempts: 3,
            retry_on: Some(retry_on.into()),
            ..Default::default()
        }))
        .unwrap()
        .unwrap()
    }

    #[test]
    fn istios_default_retries_connect_failures_refusals_503_and_unavailable_twice() {
        let default = RetryPolicy::from_spec(None).unwrap().unwrap();
        assert_eq!(default, RetryPolicy::istio_default());
        assert_eq!(default.attempts, 2);
        let retried = [
            Outcome::ConnectFailure,
            Outcome::RefusedStream,
            answered(503),
            grpc(14),
            grpc(1),
        ];
        for outcome in retried {
            assert!(default.retries(outcome), "{outcome:?}");
        }
        let kept = [
            Outcome::Reset,
            Outcome::Timeout,
            answered(500),
            answered(502),
            answered(200),
            answered(404),
            grpc(13),
        ];
        for outcome in kept {
            assert!(!default.retries(outcome), "{outcome:?}");
        }
        assert!(default.other_hosts);
    }

    #[test]
    fn attempts_zero_turns_retries_off() {
        let off = HttpRetry {
            attempts: 0,
            ..Default::default()
        };
        assert_eq!(RetryPolicy::from_spec(Some(&off)), Ok(None));
    }

    #[test]
    fn each_condition_retries_what_envoy_retries() {
        // (retryOn, outcomes retried, outcomes kept)
        let table: &[(&str, &[Outcome], &[Outcome])] = &[
            (
                "5xx",
                &[
                    answered(500),
                    answered(503),
                    Outcome::Reset,
                    Outcome::Timeout,
                    Outcome::ConnectFailure,
                ],
                &[answered(409), answered(200), grpc(14)],
            ),
            (
                "gateway-error",
                &[
                    answered(502),
                    answered(503),
                    answered(504),
                    Outcome::Timeout,
                    Outcome::Reset,
                ],
                &[answered(500), answered(501)],
            ),
            (
                "reset",
                &[Outcome::Reset, Outcome::ConnectFailure],
                &[answered(503)],
            ),
            (
                "connect-failure",
                &[Outcome::ConnectFailure],
                &[Outcome::Reset, answered(503)],
            ),
            (
                "refused-stream",
                &[Outcome::RefusedStream],
                &[Outcome::Reset],
            ),
            (
                "retriable-4xx",
                &[answered(409)],
                &[answered(404), answered(503)],
            ),
            (
                "retriable-status-codes,418",
                &[answered(418)],
                &[answered(503)],
            ),
            ("418,429", &[answered(418), answered(429)], &[answered(503)]),
            ("retriable-headers", &[], &[answered(503), Outcome::Reset]),
            ("cancelled", &[grpc(1)], &[grpc(14)]),
            ("deadline-exceeded", &[grpc(4)], &[grpc(1)]),
            ("internal", &[grpc(13)], &[grpc(14)]),
            ("resource-exhausted", &[grpc(8)], &[grpc(14)]),
            ("unavailable", &[grpc(14)], &[grpc(0), answered(503)]),
        ];
        for (retry_on, retried, kept) in table {
            let policy = policy(retry_on);
            for outcome in *retried {
                assert!(policy.retries(*outcome), "{retry_on}: {outcome:?}");
            }
            for outcome in *kept {
                assert!(!policy.retries(*outcome), "{retry_on}: {outcome:?}");
            }
        }
    }

    #[test]
    fn the_users_fields_go_over_istios_default() {
        let policy = RetryPolicy::from_spec(Some(&HttpRetry {
            attempts: 5,
            per_try_timeout: Some(SpecDuration(Duration::from_millis(200))),
            backoff: Some(SpecDuration(Duration::from_millis(10))),
            retry_ignore_previous_hosts: Some(false),
            ..Default::default()
        }))
        .unwrap()
        .unwrap();
        assert_eq!(policy.attempts, 5);
        assert_eq!(policy.per_try_timeout, Some(Duration::from_millis(200)));
        assert_eq!(policy.retry_on, RetryPolicy::istio_default().retry_on);
        assert!(!policy.other_hosts);
        // Jittered below base * 2^(n-1), at most ten times the base.
        assert!(policy.wait(1, u64::MAX) < Duration::from_millis(10));
        assert!(policy.wait(3, u64::MAX) < Duration::from_millis(40));
        assert_eq!(policy.wait(3, 39_999_999), Duration::from_nanos(39_999_999));
        assert_eq!(policy.wait(3, 40_000_000), Duration::ZERO);
        assert!(policy.wait(30, u64::MAX) < Duration::from_millis(100));
        assert!(RetryPolicy::from_spec(Some(&HttpRetry {
            attempts: 1,
            retry_on: Some("5xx,sometimes".into()),
            ..Default::default()
        }))
        .is_err());
    }
}
