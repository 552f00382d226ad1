//! What the waypoint keeps per destination, as Envoy keeps it per
//! cluster: its outlier detection (`Outliers`, the decisions in
//! `ambit_route::outlier`) and its circuit breakers (`Breaker`):
//! HTTP/1.1 requests beyond `maxConnections` wait for a connection, up to
//! `http1MaxPendingRequests` of them; requests beyond `http2MaxRequests`
//! and waiters beyond the pending limit are refused at once (503 `UO`),
//! so one overloaded destination sheds load instead of queueing without
//! bound. Retries in flight are held to `maxRetries`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use ambit_route::limits::Limits;
use ambit_route::outlier::{Detector, OutlierPolicy};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// State kept per destination (Envoy's cluster), made from its settings.
pub trait ClusterState {
    type Settings: PartialEq + Clone;
    fn new(settings: Self::Settings) -> Self;
    fn settings(&self) -> &Self::Settings;
}

/// The state of every destination that needs one, by cluster name.
pub struct ByCluster<T> {
    states: Mutex<HashMap<String, Arc<T>>>,
}

impl<T> Default for ByCluster<T> {
    fn default() -> Self {
        Self {
            states: Mutex::default(),
        }
    }
}

impl<T: ClusterState> ByCluster<T> {
    /// The state of the destination `cluster` with `settings`: a new one
    /// when its settings changed (what is in flight under the old ones
    /// finishes under them).
    pub fn of(&self, cluster: &str, settings: &T::Settings) -> Arc<T> {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        match states.get(cluster) {
            Some(state) if state.settings() == settings => state.clone(),
            _ => {
                let state = Arc::new(T::new(settings.clone()));
                states.insert(cluster.to_string(), state.clone());
                state
            }
        }
    }
}

/// The outlier detection of one destination.
pub struct Outliers(pub Mutex<Detector>, OutlierPolicy);

impl ClusterState for Outliers {
    type Settings = OutlierPolicy;
    fn new(policy: OutlierPolicy) -> Self {
        Self(Mutex::new(Detector::new(policy.clone())), policy)
    }
    fn settings(&self) -> &OutlierPolicy {
        &self.1
    }
}

impl ClusterState for Breaker {
    type Settings = Limits;
    fn new(limits: Limits) -> Self {
        let connections = limits
            .max_connections
            .map(|max| Arc::new(Semaphore::new(max as usize)));
        Self {
            limits,
            connections,
            pending: Arc::default(),
            requests: Arc::default(),
            retries: Arc::default(),
        }
    }
    fn settings(&self) -> &Limits {
        &self.limits
    }
}

pub struct Breaker {
    limits: Limits,
    /// HTTP/1.1 connections in use, one per request in flight.
    connections: Option<Arc<Semaphore>>,
    pending: Arc<AtomicU32>,
    requests: Arc<AtomicU32>,
    retries: Arc<AtomicU32>,
}

/// What a request holds while it is in flight, released when dropped.
pub struct Admitted {
    _connection: Option<OwnedSemaphorePermit>,
    _request: Count,
}

/// One count in flight, taken back when dropped.
pub struct Count(Arc<AtomicU32>);

impl Drop for Count {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Taken only when under `limit` (none: always).
fn count_under(counter: &Arc<AtomicU32>, limit: Option<u32>) -> Option<Count> {
    let limit = limit.unwrap_or(u32::MAX);
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .ok()
        .map(|_| Count(counter.clone()))
}

impl Breaker {
    /// Admits a request, waiting for an HTTP/1.1 connection if it must;
    /// `None` when the destination is full (503 `UO`).
    pub async fn admit(&self, http2: bool) -> Option<Admitted> {
        let request = count_under(&self.requests, self.limits.max_requests)?;
        let connection = match (&self.connections, http2) {
            (Some(connections), false) => Some(match connections.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    // Counted as waiting until it has one (or gives up).
                    let _waiting = count_under(&self.pending, self.limits.max_pending_requests)?;
                    connections.clone().acquire_owned().await.ok()?
                }
            }),
            _ => None,
        };
        Some(Admitted {
            _connection: connection,
            _request: request,
        })
    }

    /// A retry's place, held while it is in flight; `None` past
    /// `maxRetries`, or past the retry budget when there is one.
    pub fn retry(&self) -> Option<Count> {
        let limit = match &self.limits.retry_budget {
            Some(budget) => Some(budget.retries(self.requests.load(Ordering::Acquire))),
            None => self.limits.max_retries,
        };
        count_under(&self.retries, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(connections: u32, pending: u32) -> Limits {
        Limits {
            max_connections: Some(connections),
            max_pending_requests: Some(pending),
            max_retries: Some(1),
            ..Limits::default()
        }
    }

    #[tokio::test]
    async fn past_the_connections_one_waits_and_the_next_is_refused() {
        let breaker = Arc::new(Breaker::new(limits(1, 1)));
        let first = breaker.admit(false).await.expect("a connection");
        let waiter = tokio::spawn({
            let breaker = breaker.clone();
            async move { breaker.admit(false).await.is_some() }
        });
        while breaker.pending.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(
            breaker.admit(false).await.is_none(),
            "the pending queue is full"
        );
        drop(first);
        assert!(waiter.await.unwrap(), "the waiter gets the connection");
        // HTTP/2 requests share connections: only max requests applies.
        assert!(breaker.admit(true).await.is_some());
    }

    #[tokio::test]
    async fn retries_past_the_limit_are_not_made() {
        let breaker = Breaker::new(limits(1, 1));
        let retry = breaker.retry().expect("one retry");
        assert!(breaker.retry().is_none());
        drop(retry);
        assert!(breaker.retry().is_some());
    }

    #[test]
    fn a_destination_keeps_its_breaker_until_its_limits_change() {
        let breakers = ByCluster::<Breaker>::default();
        let one = breakers.of("outbound|9080|v1|reviews", &limits(1, 1));
        assert!(Arc::ptr_eq(
            &one,
            &breakers.of("outbound|9080|v1|reviews", &limits(1, 1))
        ));
        assert!(!Arc::ptr_eq(
            &one,
            &breakers.of("outbound|9080|v1|reviews", &limits(2, 1))
        ));
    }
}
