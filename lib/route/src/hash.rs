//! Istio's `consistentHash`: a request's key (a header, a cookie, the
//! caller's address, a query parameter) always picks the same endpoint
//! while the endpoints stay, over a ring (`ringHash`, Envoy's default) or a
//! Maglev table. A cookie that is absent, with a `ttl`, is generated and
//! set on the answer, so the caller sticks from its next request on.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ambit_config::api::networking::ConsistentHashLb;
use http::request::Parts;
use http::HeaderName;
use serde::Serialize;

use crate::matching::query_parameter;

/// Envoy's defaults: the fewest ring points, and Maglev's table size (a prime).
const DEFAULT_RING_SIZE: u64 = 1024;
const MAX_RING_SIZE: u64 = 1 << 20;
const DEFAULT_MAGLEV_SIZE: u64 = 65537;

/// What a request's key is read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HashKey {
    Header(#[serde(serialize_with = "as_str")] HeaderName),
    Cookie {
        name: String,
        path: Option<String>,
        /// With a ttl, a missing cookie is generated and set.
        ttl: Option<Duration>,
    },
    SourceIp,
    QueryParameter(String),
}

fn as_str<S: serde::Serializer>(name: &HeaderName, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(name.as_str())
}

/// A key and the table it is looked up in, built for one set of endpoints.
#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsistentHash {
    pub key: HashKey,
    #[serde(skip)]
    table: Table,
}

#[derive(Debug, PartialEq, Eq)]
enum Table {
    /// Points on the ring, sorted, each with its endpoint.
    Ring(Vec<(u64, u32)>),
    /// Maglev's lookup table: an endpoint per slot.
    Maglev(Vec<u32>),
}

/// How a request's key was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKey {
    Hash(u64),
    /// The cookie is absent and is to be set to this value on the answer.
    NewCookie(String),
    /// No key (a header or parameter absent): any endpoint will do.
    None,
}

impl ConsistentHash {
    /// The policy of `settings` over `endpoints`; `None` when no key is set.
    pub fn new(settings: &ConsistentHashLb, endpoints: &[SocketAddr]) -> Option<Self> {
        let key = if let Some(name) = &settings.http_header_name {
            HashKey::Header(HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok()?)
        } else if let Some(cookie) = &settings.http_cookie {
            HashKey::Cookie {
                name: cookie.name.clone(),
                path: cookie.path.clone(),
                ttl: cookie.ttl.map(|ttl| ttl.0),
            }
        } else if settings.use_source_ip == Some(true) {
            HashKey::SourceIp
        } else {
            HashKey::QueryParameter(settings.http_query_parameter_name.clone()?)
        };
        let names: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
        let table = match settings.maglev {
            Some(maglev) => Table::Maglev(maglev_table(
                &names,
                maglev.table_size.unwrap_or(DEFAULT_MAGLEV_SIZE),
            )),
            None => {
                let size = settings
                    .ring_hash
                    .and_then(|ring| ring.minimum_ring_size)
                    .or(settings.minimum_ring_size)
                    .unwrap_or(DEFAULT_RING_SIZE);
                Table::Ring(ring(&names, size.min(MAX_RING_SIZE)))
            }
        };
        Some(Self { key, table })
    }

    /// The key of a request from `source`; a cookie to set gets `fresh`
    /// (a random number) as its value.
    pub fn key_of(&self, request: &Parts, source: Option<IpAddr>, fresh: u64) -> RequestKey {
        let found = match &self.key {
            HashKey::Header(name) => request
                .headers
                .get(name)
                .map(|value| hash(value.as_bytes())),
            HashKey::Cookie { name, ttl, .. } => {
                let value = cookie(request, name);
                match (value, ttl) {
                    (Some(value), _) => Some(hash(value.as_bytes())),
                    (None, Some(_)) => return RequestKey::NewCookie(format!("{fresh:016x}")),
                    (None, None) => None,
                }
            }
            HashKey::SourceIp => self.connection_key(source),
            HashKey::QueryParameter(name) => {
                query_parameter(request, name).map(|value| hash(value.as_bytes()))
            }
        };
        found.map_or(RequestKey::None, RequestKey::Hash)
    }

    /// The key of a connection from `source`, which carries no header,
    /// cookie or query: only `useSourceIp` gives one.
    pub fn connection_key(&self, source: Option<IpAddr>) -> Option<u64> {
        match self.key {
            HashKey::SourceIp => source.map(|ip| hash(ip.to_string().as_bytes())),
            _ => None,
        }
    }

    /// The endpoint a key hash falls on.
    pub fn lookup(&self, key: u64) -> Option<usize> {
        match &self.table {
            Table::Ring(points) => {
                let at = points.partition_point(|(point, _)| *point < key);
                points
                    .get(at)
                    .or_else(|| points.first())
                    .map(|(_, endpoint)| *endpoint as usize)
            }
            Table::Maglev(slots) => {
                let len = slots.len() as u64;
                (len > 0).then(|| slots[(key % len) as usize] as usize)
            }
        }
    }

    /// The `Set-Cookie` value that makes `value` the caller's key.
    pub fn set_cookie(&self, value: &str) -> Option<String> {
        let HashKey::Cookie { name, path, ttl } = &self.key else {
            return None;
        };
        let mut cookie = format!("{name}=\"{value}\"");
        if let Some(ttl) = ttl {
            cookie.push_str(&format!("; Max-Age={}", ttl.as_secs()));
        }
        if let Some(path) = path {
            cookie.push_str(&format!("; Path={path}"));
        }
        cookie.push_str("; HttpOnly");
        Some(cookie)
    }
}

/// The value of the cookie `name` (quotes removed).
fn cookie<'a>(request: &'a Parts, name: &str) -> Option<&'a str> {
    request
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then(|| value.trim_matches('"'))
        })
}

/// FNV-1a, then a 64-bit finalizer for spread: stable across processes and
/// versions, so every waypoint replica places a key alike.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut state: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        state ^= u64::from(*byte);
        state = state.wrapping_mul(0x0100_0000_01b3);
    }
    state ^= state >> 33;
    state = state.wrapping_mul(0xff51_afd7_ed55_8ccd);
    state ^= state >> 33;
    state = state.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    state ^ (state >> 33)
}

/// A ring of at least `size` points, spread evenly over the endpoints.
fn ring(names: &[String], size: u64) -> Vec<(u64, u32)> {
    if names.is_empty() {
        return Vec::new();
    }
    let per_endpoint = size.div_ceil(names.len() as u64);
    let mut points: Vec<(u64, u32)> = names
        .iter()
        .enumerate()
        .flat_map(|(index, name)| {
            (0..per_endpoint)
                .map(move |replica| (hash(format!("{name}_{replica}").as_bytes()), index as u32))
        })
        .collect();
    points.sort_unstable();
    points
}

/// Maglev's table (Eisenbud et al., 2016): each endpoint takes slots in the
/// order of its own permutation, in turns, until every slot is taken.
fn maglev_table(names: &[String], size: u64) -> Vec<u32> {
    if names.is_empty() || size < 2 {
        return Vec::new();
    }
    let size = size as usize;
    let permutations: Vec<(usize, usize)> = names
        .iter()
        .map(|name| {
            let offset = hash(name.as_bytes()) as usize % size;
            let skip = hash(format!("{name}#skip").as_bytes()) as usize % (size - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0usize; names.len()];
    let mut table = vec![u32::MAX; size];
    let mut filled = 0;
    'fill: loop {
        for (index, (offset, skip)) in permutations.iter().enumerate() {
            let mut slot = (offset + next[index] * skip) % size;
            while table[slot] != u32::MAX {
                next[index] += 1;
                slot = (offset + next[index] * skip) % size;
            }
            table[slot] = index as u32;
            next[index] += 1;
            filled += 1;
            if filled == size {
                break 'fill;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use ambit_config::api::networking::{HttpCookie, Maglev, RingHash};

    use super::*;

    fn endpoints(count: u8) -> Vec<SocketAddr> {
        (1..=count)
            .map(|i| SocketAddr::from(([10, 244, 0, i], 9080)))
            .collect()
    }

    fn request(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn by_header(maglev: bool) -> ConsistentHashLb {
        ConsistentHashLb {
            http_header_name: Some("x-user".into()),
            maglev: maglev.then_some(Maglev {
                table_size: Some(1031),
            }),
            ring_hash: (!maglev).then_some(RingHash {
                minimum_ring_size: Some(2048),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_key_keeps_its_endpoint_and_keys_spread_over_all() {
        for maglev in [false, true] {
            let policy = ConsistentHash::new(&by_header(maglev), &endpoints(4)).unwrap();
            let pick = |user: &str| match policy.key_of(&request("/", &[("x-user", user)]), None, 0)
            {
                RequestKey::Hash(key) => policy.lookup(key).unwrap(),
                other => panic!("{other:?}"),
            };
            let mut counts = [0; 4];
            for user in 0..4000 {
                let user = format!("user-{user}");
                let first = pick(&user);
                assert_eq!(pick(&user), first, "the same key, the same endpoint");
                counts[first] += 1;
            }
            // Every endpoint takes a fair share (a quarter, give or take).
            assert!(
                counts.iter().all(|c| (700..1300).contains(c)),
                "{maglev}: {counts:?}"
            );
            assert_eq!(policy.key_of(&request("/", &[]), None, 0), RequestKey::None);
        }
    }

    #[test]
    fn removing_an_endpoint_moves_few_of_the_others_keys() {
        for maglev in [false, true] {
            let settings = by_header(maglev);
            let before = ConsistentHash::new(&settings, &endpoints(4)).unwrap();
            let after = ConsistentHash::new(&settings, &endpoints(3)).unwrap();
            let (mut stayed, mut moved) = (0, 0);
            for key in 0..4000u64 {
                let key = hash(&key.to_le_bytes());
                let (was, is) = (before.lookup(key).unwrap(), after.lookup(key).unwrap());
                if was != 3 {
                    stayed += usize::from(was == is);
                    moved += usize::from(was != is);
                }
            }
            // Rehashing everything would move two thirds of them.
            assert!(
                moved * 5 < stayed,
                "{maglev}: {moved} moved, {stayed} stayed"
            );
        }
    }

    #[test]
    fn keys_come_from_cookies_source_addresses_and_query_parameters() {
        let cookie = ConsistentHashLb {
            http_cookie: Some(HttpCookie {
                name: "session".into(),
                path: Some("/".into()),
                ttl: Some(ambit_config::api::types::Duration(Duration::from_secs(60))),
                attributes: vec![],
            }),
            ..Default::default()
        };
        let policy = ConsistentHash::new(&cookie, &endpoints(3)).unwrap();
        let with = request("/", &[("cookie", "a=1; session=\"abc\"")]);
        assert_eq!(
            policy.key_of(&with, None, 0),
            RequestKey::Hash(hash(b"abc"))
        );
        let RequestKey::NewCookie(value) = policy.key_of(&request("/", &[]), None, 0xabc) else {
            panic!("a cookie to set");
        };
        assert_eq!(value, "0000000000000abc");
        assert_eq!(
            policy.set_cookie(&value).unwrap(),
            format!("session=\"{value}\"; Max-Age=60; Path=/; HttpOnly")
        );
        let source = ConsistentHashLb {
            use_source_ip: Some(true),
            ..Default::default()
        };
        let policy = ConsistentHash::new(&source, &endpoints(3)).unwrap();
        let ip = IpAddr::from([10, 244, 1, 5]);
        assert_eq!(
            policy.key_of(&request("/", &[]), Some(ip), 0),
            RequestKey::Hash(hash(b"10.244.1.5"))
        );
        let query = ConsistentHashLb {
            http_query_parameter_name: Some("user".into()),
            ..Default::default()
        };
        let policy = ConsistentHash::new(&query, &endpoints(3)).unwrap();
        assert_eq!(
            policy.key_of(&request("/?a=b&user=7", &[]), None, 0),
            RequestKey::Hash(hash(b"7"))
        );
    }
}
