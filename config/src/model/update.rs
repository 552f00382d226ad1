//! Changes to the model, one object at a time, each keeping the indexes in
//! step: only the entries of the object changed (and, for an EndpointSlice,
//! of its Service) are touched.

use std::collections::BTreeSet;

use imbl::{OrdMap, OrdSet};

use super::{
    address_block, addresses, qualified_hosts, AuthorizationPolicy, Config, EndpointSlice, Key,
    Mesh, Namespace, PeerAuthentication, Service, Workload, SERVICE_NAME_LABEL,
};
use crate::document::{ObjectRef, Resource};

impl Mesh {
    /// Adds or replaces one object.
    pub fn apply(&mut self, resource: Resource) {
        match resource {
            Resource::Namespace(object) => {
                let namespace = Namespace {
                    labels: object.metadata.labels,
                };
                self.namespaces.insert(object.metadata.name, namespace);
            }
            Resource::Pod(object) => {
                let key = Key::of(&object);
                let workload = Workload::from_pod(&object);
                self.unindex_workload(&key);
                for ip in workload.own_ips() {
                    add(&mut self.indexes.workload_by_ip, *ip, key.clone());
                }
                self.workloads.insert(key, workload);
            }
            Resource::Service(object) => {
                let key = Key::of(&object);
                let service = Service::from_object(&object);
                let old = self.services.get(&key).cloned();
                self.store_service(key, old, service);
            }
            Resource::EndpointSlice(object) => {
                let key = Key::of(&object);
                let service = object.metadata.labels.get(SERVICE_NAME_LABEL).cloned();
                let slice = EndpointSlice {
                    service,
                    body: object.spec,
                };
                let old = self.endpoint_slices.insert(key.clone(), slice.clone());
                self.reassign_slice(&key, old.as_ref(), Some(&slice));
            }
            Resource::VirtualService(object) => {
                let key = Key::of(&object);
                let config = Config::of(&object);
                let hosts = qualified_hosts(&config.spec.hosts, &key.namespace);
                let old = self.virtual_services.insert(key.clone(), config);
                let old = old.map(|old| qualified_hosts(&old.spec.hosts, &key.namespace));
                reindex(
                    &mut self.indexes.virtual_services_by_host,
                    &key,
                    old,
                    Some(hosts),
                );
            }
            Resource::DestinationRule(object) => {
                let key = Key::of(&object);
                let config = Config::of(&object);
                let host = qualified_hosts([&config.spec.host], &key.namespace);
                let old = self.destination_rules.insert(key.clone(), config);
                let old = old.map(|old| qualified_hosts([&old.spec.host], &key.namespace));
                reindex(
                    &mut self.indexes.destination_rules_by_host,
                    &key,
                    old,
                    Some(host),
                );
            }
            Resource::ServiceEntry(object) => {
                let key = Key::of(&object);
                let blocks: Vec<_> = object
                    .spec
                    .addresses
                    .iter()
                    .filter_map(|address| address_block(address))
                    .collect();
                match blocks.is_empty() {
                    true => self.indexes.entry_blocks.remove(&key),
                    false => self.indexes.entry_blocks.insert(key.clone(), blocks),
                };
                self.service_entries.insert(key, Config::of(&object));
                self.allocate_addresses();
            }
            Resource::Gateway(object) => {
                self.gateways.insert(Key::of(&object), Config::of(&object));
            }
            Resource::AuthorizationPolicy(object) => {
                self.authorization_policies.insert(
                    Key::of(&object),
                    AuthorizationPolicy::Valid(Config::of(&object)),
                );
            }
            Resource::MeshConfig(object) => {
                // Validated as it was read: its mode is known.
                let mode = object.spec.outbound_mode().unwrap_or_default();
                self.mesh_configs.insert(Key::of(&object), mode);
            }
            Resource::PeerAuthentication(object) => {
                self.peer_authentications.insert(
                    Key::of(&object),
                    PeerAuthentication::Valid(Config::of(&object)),
                );
            }
        }
    }

    /// Removes one object; false when the model did not hold it.
    pub fn delete(&mut self, object: &ObjectRef) -> bool {
        let key = Key::new(&object.namespace, &object.name);
        match object.kind.as_str() {
            "Namespace" => self.namespaces.remove(&object.name).is_some(),
            "Pod" => {
                self.unindex_workload(&key);
                self.workloads.remove(&key).is_some()
            }
            "Service" => {
                let Some(old) = self.services.remove(&key) else {
                    return false;
                };
                self.index_service_ports(&key, Some(&old), None);
                true
            }
            "EndpointSlice" => {
                let Some(old) = self.endpoint_slices.remove(&key) else {
                    return false;
                };
                self.reassign_slice(&key, Some(&old), None);
                true
            }
            "VirtualService" => {
                let Some(old) = self.virtual_services.remove(&key) else {
                    return false;
                };
                let old = qualified_hosts(&old.spec.hosts, &key.namespace);
                reindex(
                    &mut self.indexes.virtual_services_by_host,
                    &key,
                    Some(old),
                    None,
                );
                true
            }
            "DestinationRule" => {
                let Some(old) = self.destination_rules.remove(&key) else {
                    return false;
                };
                let old = qualified_hosts([&old.spec.host], &key.namespace);
                reindex(
                    &mut self.indexes.destination_rules_by_host,
                    &key,
                    Some(old),
                    None,
                );
                true
            }
            "ServiceEntry" => {
                self.indexes.entry_blocks.remove(&key);
                let held = self.service_entries.remove(&key).is_some();
                self.allocate_addresses();
                held
            }
            "Gateway" => self.gateways.remove(&key).is_some(),
            "AuthorizationPolicy" => self.authorization_policies.remove(&key).is_some(),
            "PeerAuthentication" => self.peer_authentications.remove(&key).is_some(),
            "ConfigMap" => self.mesh_configs.remove(&key).is_some(),
            _ => false,
        }
    }

    /// Records that the source holds `object` but it could not be read. An
    /// AuthorizationPolicy becomes a denial for its namespace (fail closed);
    /// any other kind keeps its last good version, if the model had one, and
    /// a PeerAuthentication with none makes its namespace STRICT.
    pub fn reject(&mut self, object: &ObjectRef, problems: Vec<String>) {
        let key = Key::new(&object.namespace, &object.name);
        match object.kind.as_str() {
            "AuthorizationPolicy" => {
                self.authorization_policies
                    .insert(key, AuthorizationPolicy::Invalid { problems });
            }
            "PeerAuthentication" => {
                let last_good = self.peer_authentications.get(&key);
                if !matches!(last_good, Some(PeerAuthentication::Valid(_))) {
                    self.peer_authentications
                        .insert(key, PeerAuthentication::Invalid { problems });
                }
            }
            _ => {}
        }
    }

    /// Makes the objects of `kinds` exactly those the source now holds: the
    /// objects read (`resources`) and those it holds but could not read
    /// (`rejected`). Used when a source reads everything again (a watch's
    /// relist, a directory re-read): objects that did not change keep their
    /// index entries, and the rest change one by one.
    pub fn replace(
        &mut self,
        kinds: &[&str],
        resources: Vec<Resource>,
        rejected: Vec<(ObjectRef, Vec<String>)>,
    ) {
        let held: BTreeSet<ObjectRef> = resources
            .iter()
            .map(|r| r.describe().1)
            .chain(rejected.iter().map(|(object, _)| object.clone()))
            .collect();
        self.in_batch(|mesh| {
            for object in mesh.object_refs() {
                if kinds.contains(&object.kind.as_str()) && !held.contains(&object) {
                    mesh.delete(&object);
                }
            }
            for resource in resources {
                mesh.apply(resource);
            }
        });
        for (object, problems) in rejected {
            self.reject(&object, problems);
        }
    }

    /// Runs `change`, giving ServiceEntry hosts their addresses once at
    /// its end rather than at each entry (the allocation reads them all).
    pub(super) fn in_batch(&mut self, change: impl FnOnce(&mut Self)) {
        self.indexes.in_batch = true;
        change(self);
        self.indexes.in_batch = false;
        self.allocate_addresses();
    }

    fn allocate_addresses(&mut self) {
        if !self.indexes.in_batch {
            self.indexes.auto_addresses = addresses::allocate(&self.service_entries);
        }
    }

    fn unindex_workload(&mut self, key: &Key) {
        if let Some(old) = self.workloads.get(key) {
            for ip in old.own_ips() {
                remove(&mut self.indexes.workload_by_ip, ip, key);
            }
        }
    }

    /// Moves a slice between the Services it belonged to and now belongs
    /// to, and resolves both Services' endpoints again.
    fn reassign_slice(
        &mut self,
        key: &Key,
        old: Option<&EndpointSlice>,
        new: Option<&EndpointSlice>,
    ) {
        let service_of = |slice: Option<&EndpointSlice>| {
            slice
                .and_then(|s| s.service.as_ref())
                .map(|service| Key::new(&key.namespace, service))
        };
        let (before, after) = (service_of(old), service_of(new));
        if let Some(service) = &before {
            remove(&mut self.indexes.slices_by_service, service, key);
            self.resolve_service(service);
        }
        if let Some(service) = after {
            add(
                &mut self.indexes.slices_by_service,
                service.clone(),
                key.clone(),
            );
            self.resolve_service(&service);
        }
    }

    /// Recomputes a Service's ports and endpoints from its slices.
    fn resolve_service(&mut self, key: &Key) {
        if let Some(old) = self.services.get(key).cloned() {
            self.store_service(key.clone(), Some(old.clone()), old);
        }
    }

    /// Resolves `service` against its slices, moves its VIP index entries
    /// from `old`'s ports to its own, and stores it.
    fn store_service(&mut self, key: Key, old: Option<Service>, mut service: Service) {
        let slice_keys = self.indexes.slices_by_service.get(&key).cloned();
        let slices: Vec<_> = slice_keys
            .iter()
            .flatten()
            .filter_map(|slice| self.endpoint_slices.get(slice))
            .map(|slice| &slice.body)
            .filter(|body| matches!(body.address_type.as_str(), "IPv4" | "IPv6"))
            .collect();
        service.resolve(&slices);
        self.index_service_ports(&key, old.as_ref(), Some(&service));
        self.services.insert(key, service);
    }

    fn index_service_ports(&mut self, key: &Key, old: Option<&Service>, new: Option<&Service>) {
        let index = &mut self.indexes.service_by_vip;
        let entries = |service: &Service| {
            let ports: Vec<(u16, u16)> = service
                .ports
                .iter()
                .map(|p| (p.port, p.target_port))
                .collect();
            service
                .vips
                .iter()
                .flat_map(move |vip| ports.clone().into_iter().map(move |p| (*vip, p)))
                .collect::<Vec<_>>()
        };
        for (vip, (port, target)) in old.map(entries).unwrap_or_default() {
            remove(index, &(vip, port), &(key.clone(), target));
        }
        for (vip, (port, target)) in new.map(entries).unwrap_or_default() {
            add(index, (vip, port), (key.clone(), target));
        }
    }
}

/// Moves `key` from the index entries of its old hosts to its new ones.
fn reindex(
    index: &mut OrdMap<String, OrdSet<Key>>,
    key: &Key,
    old: Option<OrdSet<String>>,
    new: Option<OrdSet<String>>,
) {
    for host in old.into_iter().flatten() {
        remove(index, &host, key);
    }
    for host in new.into_iter().flatten() {
        add(index, host, key.clone());
    }
}

fn add<K: Ord + Clone, V: Ord + Clone>(index: &mut OrdMap<K, OrdSet<V>>, key: K, value: V) {
    index.entry(key).or_default().insert(value);
}

fn remove<K: Ord + Clone, V: Ord + Clone>(index: &mut OrdMap<K, OrdSet<V>>, key: &K, value: &V) {
    if let Some(values) = index.get_mut(key) {
        values.remove(value);
        if values.is_empty() {
            index.remove(key);
        }
    }
}
