//! Choices among endpoints and weighted destinations, from state the I/O
//! layer keeps and passes in (a turn counter, requests in flight, random
//! draws): the same inputs always give the same choice.

use std::sync::Arc;

use serde::Serialize;

use crate::hash::ConsistentHash;

/// A DestinationRule's `loadBalancer`, as the waypoint applies it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LoadBalancer {
    RoundRobin,
    /// Istio's default: of two endpoints drawn at random, the one with
    /// fewer requests in flight (Envoy's power of two choices).
    #[default]
    LeastRequest,
    Random,
    /// To the address the caller asked for: behind a waypoint that is the
    /// Service, whose endpoints the waypoint then picks at random.
    Passthrough,
    /// By the request's key; at random for a request without one.
    ConsistentHash(Arc<ConsistentHash>),
}

/// What one choice is made from.
#[derive(Debug, Clone, Copy)]
pub struct Draw {
    /// This backend's count of choices so far.
    pub turn: usize,
    /// Two independent random numbers.
    pub random: [u64; 2],
    /// The request's key, for consistent hashing.
    pub hash: Option<u64>,
}

impl LoadBalancer {
    /// The consistent-hash key of a TCP connection from `source`, if this
    /// balancer hashes by it.
    pub fn connection_key(&self, source: Option<std::net::IpAddr>) -> Option<u64> {
        match self {
            Self::ConsistentHash(policy) => policy.connection_key(source),
            _ => None,
        }
    }

    /// The endpoint to use among `count`, `active(i)` being the requests in
    /// flight to endpoint `i`; `None` when there is none.
    pub fn pick(&self, count: usize, draw: Draw, active: impl Fn(usize) -> usize) -> Option<usize> {
        if count == 0 {
            return None;
        }
        let random = |r: u64| (r % count as u64) as usize;
        Some(match self {
            Self::RoundRobin => draw.turn % count,
            Self::Random | Self::Passthrough => random(draw.random[0]),
            Self::ConsistentHash(policy) => match draw.hash {
                Some(key) => policy.lookup(key).filter(|i| *i < count)?,
                None => random(draw.random[0]),
            },
            Self::LeastRequest => {
                let (a, b) = (random(draw.random[0]), random(draw.random[1]));
                if active(b) < active(a) {
                    b
                } else {
                    a
                }
            }
        })
    }
}

/// The destination `draw` falls on when `weights` share the traffic; `None`
/// when every weight is zero.
pub fn pick_weighted(weights: impl IntoIterator<Item = u32> + Clone, draw: u64) -> Option<usize> {
    let total: u64 = weights.clone().into_iter().map(u64::from).sum();
    if total == 0 {
        return None;
    }
    let mut point = draw % total;
    for (index, weight) in weights.into_iter().enumerate() {
        let weight = u64::from(weight);
        if point < weight {
            return Some(index);
        }
        point -= weight;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(turn: usize, a: u64, b: u64) -> Draw {
        Draw {
            turn,
            random: [a, b],
            hash: None,
        }
    }

    #[test]
    fn each_balancer_picks_as_its_name_says() {
        let idle = |_| 0;
        let round: Vec<_> = (0..6)
            .map(|turn| LoadBalancer::RoundRobin.pick(3, draw(turn, 7, 7), idle))
            .collect();
        assert_eq!(round, [0, 1, 2, 0, 1, 2].map(Some));
        assert_eq!(LoadBalancer::Random.pick(3, draw(0, 7, 0), idle), Some(1));
        // Of endpoints 1 and 2, the one with fewer requests in flight.
        let busy = |i| [0, 5, 2][i];
        assert_eq!(
            LoadBalancer::LeastRequest.pick(3, draw(0, 1, 2), busy),
            Some(2)
        );
        assert_eq!(
            LoadBalancer::LeastRequest.pick(3, draw(0, 2, 1), busy),
            Some(2)
        );
        assert_eq!(
            LoadBalancer::LeastRequest.pick(3, draw(0, 0, 1), busy),
            Some(0)
        );
        assert_eq!(LoadBalancer::RoundRobin.pick(0, draw(0, 0, 0), idle), None);
    }

    #[test]
    fn weights_split_in_proportion() {
        let mut counts = [0; 3];
        for point in 0..100 {
            counts[pick_weighted([50, 30, 20], point).unwrap()] += 1;
        }
        assert_eq!(counts, [50, 30, 20]);
        assert_eq!(pick_weighted([0, 7], 3), Some(1));
        assert_eq!(pick_weighted([0, 0], 3), None);
    }
}
