//! Istio's metrics as Ambit reports them: the label vocabulary both
//! proxies share ([`labels`]), the agent's TCP families ([`tcp`]) and the
//! waypoint's HTTP families ([`http`]), with Istio's names, labels and
//! buckets so Istio's dashboards, Kiali and alerts work unchanged.

pub mod baggage;
pub mod http;
pub mod labels;
pub mod tcp;
pub mod trace;
