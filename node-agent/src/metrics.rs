//! The agent's metrics: Istio's TCP families (`ambit-telemetry`), and how
//! its relays carry plain TCP.

use std::fmt::Write;

pub use ambit_telemetry::labels::{Party, Reporter, SecurityPolicy};
use ambit_telemetry::tcp::TcpMetrics;
pub use ambit_telemetry::tcp::{ResponseFlags, TcpLabels};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Which relay carries a plain TCP connection's bytes.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Relay {
    /// Paired in the kernel (`relay_verdict`); it may be taken back later.
    Kernel,
    /// Copied by the agent: the kernel relay is off, its maps are full, or
    /// a socket could not join (its peer had already ended).
    UserSpace,
}

impl EncodeLabelValue for Relay {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Kernel => "kernel",
            Self::UserSpace => "user_space",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RelayLabels {
    relay: Relay,
}

pub struct Metrics {
    pub tcp: TcpMetrics,
    relayed: Family<RelayLabels, Counter>,
    taken_back: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            tcp: TcpMetrics::register(registry),
            relayed: Family::default(),
            taken_back: Counter::default(),
        };
        registry.register(
            "ambit_relayed_connections",
            "Plain TCP connections by the relay that started carrying them",
            metrics.relayed.clone(),
        );
        registry.register(
            "ambit_relay_takebacks",
            "Connections the agent took back from the kernel relay: bulk \
             transfers and readers that fell behind",
            metrics.taken_back.clone(),
        );
        metrics
    }

    pub fn relayed(&self, relay: Relay) {
        self.relayed.get_or_create(&RelayLabels { relay }).inc();
    }

    pub fn taken_back(&self) {
        self.taken_back.inc();
    }
}
