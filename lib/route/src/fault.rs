//! A route's fault injection (VirtualService `fault`), as Envoy's fault
//! filter applies what Istio gives it: a fixed delay, then an abort, each
//! for its percentage of the requests, decided from draws passed in.

use std::time::Duration;

use ambit_config::api::networking::HttpFaultInjection;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<Injected<Duration>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<Injected<Abort>>,
}

/// A fault and the share of requests it is injected into.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Injected<T> {
    pub fault: T,
    /// 0 to 100.
    pub percent: f64,
}

impl<T> Injected<T> {
    /// The fault, for a request whose draw (uniform in [0, 1)) falls in
    /// its share.
    pub fn for_draw(&self, draw: f64) -> Option<&T> {
        (draw * 100.0 < self.percent).then_some(&self.fault)
    }
}

/// What an aborted request is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Abort {
    Http(u16),
    /// A gRPC status code, answered in a trailers-only response.
    Grpc(u16),
}

/// gRPC's status codes by name, as Istio's `grpcStatus` writes them.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

impl Fault {
    /// The fault of `spec`, with the fields of it Istio leaves out (as
    /// paths from the route): as Istio, the rest of the route applies. A fault without a
    /// percentage is never injected (Istio passes none to Envoy, whose
    /// default share is 0).
    pub fn from_spec(
        spec: &HttpFaultInjection,
    ) -> Result<(Option<Self>, Vec<&'static str>), String> {
        let mut notes = Vec::new();
        let delay = match &spec.delay {
            None => None,
            Some(delay) => match (&delay.fixed_delay, &delay.exponential_delay) {
                (Some(fixed), _) => Some(Injected {
                    fault: fixed.0,
                    percent: delay
                        .percentage
                        .as_ref()
                        .map(|p| p.value)
                        .or(delay.percent.map(f64::from))
                        .unwrap_or(0.0),
                }),
                (None, Some(_)) => {
                    notes.push("fault.delay.exponentialDelay");
                    None
                }
                (None, None) => return Err("fault.delay: no fixedDelay".to_string()),
            },
        };
        let abort = match &spec.abort {
            None => None,
            Some(abort) => {
                let fault = match (abort.http_status, &abort.grpc_status, &abort.http2_error) {
                    (Some(status), _, _) => match u16::try_from(status) {
                        Ok(status @ 200..=599) => Some(Abort::Http(status)),
                        _ => {
                            return Err(format!(
                            "fault.abort.httpStatus {status}: not an HTTP status from 200 to 599"
                        ))
                        }
                    },
                    (None, Some(code), _) => Some(Abort::Grpc(grpc_code(code)?)),
                    (None, None, Some(_)) => {
                        notes.push("fault.abort.http2Error");
                        None
                    }
                    (None, None, None) => {
                        return Err("fault.abort: no httpStatus or grpcStatus".to_string())
                    }
                };
                fault.map(|fault| Injected {
                    fault,
                    percent: abort.percentage.as_ref().map_or(0.0, |p| p.value),
                })
            }
        };
        for (name, percent) in [
            ("delay", delay.as_ref().map(|d| d.percent)),
            ("abort", abort.as_ref().map(|a| a.percent)),
        ] {
            if let Some(percent) = percent.filter(|p| !(0.0..=100.0).contains(p)) {
                return Err(format!(
                    "fault.{name}.percentage {percent}: not from 0 to 100"
                ));
            }
        }
        let fault = (delay.is_some() || abort.is_some()).then_some(Self { delay, abort });
        Ok((fault, notes))
    }
}

/// A gRPC status by name (`UNAVAILABLE`) or number (`14`).
fn grpc_code(code: &str) -> Result<u16, String> {
    let by_name = GRPC_CODES.iter().position(|name| *name == code);
    by_name
        .and_then(|n| u16::try_from(n).ok())
        .or_else(|| {
            code.parse::<u16>()
                .ok()
                .filter(|n| usize::from(*n) < GRPC_CODES.len())
        })
        .ok_or_else(|| format!("fault.abort.grpcStatus {code:?}: not a gRPC status code"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(yaml: &str) -> Result<(Option<Fault>, Vec<&'static str>), String> {
        let spec: HttpFaultInjection = serde_json::from_value(
            serde_saphyr::from_str::<serde_json::Value>(yaml).expect("YAML"),
        )
        .expect("a fault");
        Fault::from_spec(&spec)
    }

    #[test]
    fn a_fault_is_injected_into_its_share_of_requests() {
        let (Some(fault), notes) = fault(
            "{delay: {fixedDelay: 2s, percentage: {value: 10}}, abort: {httpStatus: 503, percentage: {value: 100}}}",
        )
        .unwrap() else {
            panic!("no fault")
        };
        assert!(notes.is_empty());
        let delay = fault.delay.unwrap();
        assert_eq!(delay.for_draw(0.05), Some(&Duration::from_secs(2)));
        assert_eq!(delay.for_draw(0.10), None);
        assert_eq!(
            fault.abort.unwrap().for_draw(0.999),
            Some(&Abort::Http(503))
        );
    }

    #[test]
    fn a_fault_reads_as_istio_reads_it() {
        let percent = |yaml| fault(yaml).unwrap().0.unwrap().delay.unwrap().percent;
        // The deprecated integer percent, and none: never injected.
        assert_eq!(percent("{delay: {fixedDelay: 1s, percent: 30}}"), 30.0);
        assert_eq!(percent("{delay: {fixedDelay: 1s}}"), 0.0);
        let abort = |yaml| fault(yaml).unwrap().0.unwrap().abort.unwrap().fault;
        assert_eq!(abort("{abort: {grpcStatus: UNAVAILABLE}}"), Abort::Grpc(14));
        assert_eq!(abort("{abort: {grpcStatus: '4'}}"), Abort::Grpc(4));
        // What Istio leaves out is left out, with a note.
        let (left, notes) = fault("{abort: {http2Error: REFUSED_STREAM}}").unwrap();
        assert_eq!((left, notes.len()), (None, 1));
        // What cannot be meant is an error.
        for bad in [
            "{abort: {httpStatus: 99}}",
            "{abort: {grpcStatus: NOPE}}",
            "{abort: {httpStatus: 503, percentage: {value: 150}}}",
            "{delay: {percentage: {value: 50}}}",
        ] {
            assert!(fault(bad).is_err(), "{bad}");
        }
    }
}
