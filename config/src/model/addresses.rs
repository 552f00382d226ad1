//! The addresses Ambit gives ServiceEntry hosts that have none, as Istio's
//! DNS proxying auto-allocates them (in 240.240.0.0/16), so that a pod can
//! connect to a name only the mesh knows. Every proxy must give a host the
//! same address (an agent sends a waypoint the address a pod dialled), so
//! the allocation is a function of the entries alone: each host starts at
//! the address its name hashes to and, when an earlier host holds that,
//! takes the next free one. Hosts are taken oldest entry first, so a new
//! entry never moves the address of one that was there before it.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};

use super::{Config, Key};
use crate::api::networking::{Resolution, ServiceEntrySpec};

/// The addresses given, both ways.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct AutoAddresses {
    /// Host (lower case) to its address.
    pub by_host: OrdMap<String, Ipv4Addr>,
    /// Address to the entries (without `addresses`) whose host it is.
    pub entries: OrdMap<Ipv4Addr, OrdSet<Key>>,
}

/// How many addresses 240.240.0.0/16 holds that end in neither .0 nor .255.
const CAPACITY: usize = 256 * 254;

/// The address a host hashes to (FNV-1a of its name in lower case): the
/// one it is given unless an older host holds it.
pub fn auto_address(host: &str) -> Ipv4Addr {
    let hash = host.bytes().fold(0x811c_9dc5u32, |hash, byte| {
        (hash ^ u32::from(byte.to_ascii_lowercase())).wrapping_mul(0x0100_0193)
    });
    let [_, _, third, fourth] = hash.to_be_bytes();
    // Neither .0 nor .255 ends the address.
    Ipv4Addr::new(240, 240, third, fourth.clamp(1, 254))
}

/// The address after `address` in 240.240.0.0/16, around at the end,
/// past those ending in .0 or .255.
fn next(address: Ipv4Addr) -> Ipv4Addr {
    let [_, _, third, fourth] = address.octets();
    match fourth {
        254 => Ipv4Addr::new(240, 240, third.wrapping_add(1), 1),
        _ => Ipv4Addr::new(240, 240, third, fourth + 1),
    }
}

/// The hosts of an entry without `addresses` that Ambit gives an address
/// of its own: every named host, and a wildcard only for DYNAMIC_DNS,
/// where a waypoint resolves each request's host (every name under the
/// wildcard shares its address).
pub(super) fn auto_addressed_hosts(spec: &ServiceEntrySpec) -> impl Iterator<Item = &str> {
    let dynamic = spec.resolution == Some(Resolution::DynamicDns);
    let given = spec.addresses.is_empty();
    spec.hosts
        .iter()
        .map(String::as_str)
        .filter(move |host| given && (dynamic || !host.starts_with('*')))
}

/// How old an entry is, for the order hosts are given addresses in: by
/// creation time (none last), then by namespace and name.
type Age<'e> = (bool, Option<&'e str>, &'e Key);

/// The addresses of every host of `entries` that Ambit gives one.
pub(super) fn allocate(entries: &OrdMap<Key, Arc<Config<ServiceEntrySpec>>>) -> AutoAddresses {
    // Each host once, at its oldest entry (entries without a creation time,
    // from a manifest directory, after the rest, by namespace and name).
    let mut oldest: BTreeMap<String, Age<'_>> = BTreeMap::new();
    let mut holders: BTreeMap<String, Vec<&Key>> = BTreeMap::new();
    for (key, entry) in entries {
        let created = entry.created.as_deref();
        for host in auto_addressed_hosts(&entry.spec) {
            let host = host.to_ascii_lowercase();
            let rank = (created.is_none(), created, key);
            oldest
                .entry(host.clone())
                .and_modify(|held| *held = (*held).min(rank))
                .or_insert(rank);
            holders.entry(host).or_default().push(key);
        }
    }
    let mut order: Vec<(&Age<'_>, &String)> =
        oldest.iter().map(|(host, rank)| (rank, host)).collect();
    order.sort();
    let mut taken = HashSet::new();
    let mut given = AutoAddresses::default();
    for (_, host) in order.into_iter().take(CAPACITY) {
        let mut address = auto_address(host);
        while !taken.insert(address) {
            address = next(address);
        }
        given.by_host.insert(host.clone(), address);
        let keys = holders[host].iter().map(|key| (*key).clone());
        given.entries.insert(address, keys.collect());
    }
    given
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::parse_manifests;
    use crate::model::Mesh;

    /// Two hosts whose names hash to one address (found by search).
    fn colliding() -> (String, String) {
        let mut seen = std::collections::HashMap::new();
        for i in 0.. {
            let host = format!("h{i}.example.com");
            if let Some(first) = seen.insert(auto_address(&host), host.clone()) {
                return (first, host);
            }
        }
        unreachable!()
    }

    fn entry(name: &str, host: &str, created: &str) -> String {
        format!(
            "{{apiVersion: networking.istio.io/v1, kind: ServiceEntry, metadata: {{name: {name}, namespace: shop, creationTimestamp: \"{created}\"}}, \
              spec: {{hosts: [{host}], ports: [{{number: 80, name: http}}], resolution: STATIC, endpoints: [{{address: 192.0.2.1}}]}}}}\n---\n"
        )
    }

    #[test]
    fn hosts_that_hash_alike_get_addresses_of_their_own_the_older_keeping_its() {
        let (first, second) = colliding();
        let hashed = auto_address(&first);
        // The newer entry named first: the older keeps the hashed address,
        // whichever order the proxy read them in.
        let older = entry("b-older", &second, "2026-01-01T00:00:00Z");
        let newer = entry("a-newer", &first, "2026-02-01T00:00:00Z");
        for manifests in [format!("{older}{newer}"), format!("{newer}{older}")] {
            let mesh = Mesh::from_resources(parse_manifests(&manifests).resources);
            assert_eq!(mesh.auto_address_of(&second), Some(hashed));
            let moved = mesh.auto_address_of(&first).unwrap();
            assert_eq!(moved, next(hashed));
            // Each address leads back to its own entry.
            let found = mesh.service_entry_at(moved.into(), 80, "shop").unwrap();
            assert_eq!(found.key, &Key::new("shop", "a-newer"));
            let found = mesh.service_entry_at(hashed.into(), 80, "shop").unwrap();
            assert_eq!(found.key, &Key::new("shop", "b-older"));
        }
    }

    #[test]
    fn the_next_address_skips_those_a_network_would_not_give() {
        assert_eq!(
            next(Ipv4Addr::new(240, 240, 3, 7)),
            Ipv4Addr::new(240, 240, 3, 8)
        );
        assert_eq!(
            next(Ipv4Addr::new(240, 240, 3, 254)),
            Ipv4Addr::new(240, 240, 4, 1)
        );
        assert_eq!(
            next(Ipv4Addr::new(240, 240, 255, 254)),
            Ipv4Addr::new(240, 240, 0, 1)
        );
    }
}
