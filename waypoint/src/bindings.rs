//! What a waypoint serves: the Services bound to it and the routing and
//! destination policy that applies to each, as its config dump shows them.

use ambit_config::document::qualify_host;
use ambit_config::model::{Key, Mesh, WaypointRef};
use serde::Serialize;

/// One Service the waypoint serves.
#[derive(Serialize, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Binding {
    pub service: Key,
    pub host: String,
    /// The VirtualServices for the host the waypoint sees (by `exportTo`), in order.
    pub virtual_services: Vec<Key>,
    pub destination_rules: Vec<Key>,
}

/// The Services bound to `waypoint`, in name order.
pub fn bindings(mesh: &Mesh, waypoint: &WaypointRef) -> Vec<Binding> {
    let from_namespace = &waypoint.0.namespace;
    mesh.services_bound_to(waypoint)
        .into_iter()
        .map(|service| {
            let host = qualify_host(&service.name, &service.namespace);
            Binding {
                service: service.clone(),
                virtual_services: keys(mesh.virtual_services_for(&host, from_namespace)),
                destination_rules: keys(mesh.destination_rules_for(&host, from_namespace)),
                host,
            }
        })
        .collect()
}

fn keys<T>(found: Vec<(&Key, T)>) -> Vec<Key> {
    found.into_iter().map(|(key, _)| key.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambit_config::document::parse_manifests;

    #[test]
    fn a_waypoint_serves_its_bound_services_with_their_routes() {
        let parsed = parse_manifests(
            r#"
{apiVersion: v1, kind: Namespace, metadata: {name: shop, labels: {istio.io/use-waypoint: waypoint}}}
---
{apiVersion: v1, kind: Service, metadata: {name: cart, namespace: shop}, spec: {clusterIP: 10.96.0.1}}
---
{apiVersion: v1, kind: Service, metadata: {name: pay, namespace: shop, labels: {istio.io/use-waypoint: none}}, spec: {clusterIP: 10.96.0.2}}
---
{apiVersion: networking.istio.io/v1, kind: VirtualService, metadata: {name: cart, namespace: shop},
 spec: {hosts: [cart], http: [{route: [{destination: {host: cart, subset: v1}}]}]}}
---
{apiVersion: networking.istio.io/v1, kind: DestinationRule, metadata: {name: cart, namespace: shop},
 spec: {host: cart.shop.svc.cluster.local, subsets: [{name: v1, labels: {version: v1}}]}}
---
{apiVersion: networking.istio.io/v1, kind: VirtualService, metadata: {name: pay, namespace: shop},
 spec: {hosts: [pay], http: [{route: [{destination: {host: pay}}]}]}}
"#,
        );
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        let mesh = Mesh::from_resources(parsed.resources);
        let waypoint = WaypointRef(Key::new("shop", "waypoint"));
        assert_eq!(
            bindings(&mesh, &waypoint),
            [Binding {
                service: Key::new("shop", "cart"),
                host: "cart.shop.svc.cluster.local".into(),
                virtual_services: vec![Key::new("shop", "cart")],
                destination_rules: vec![Key::new("shop", "cart")],
            }]
        );
        assert!(bindings(&mesh, &WaypointRef(Key::new("other", "waypoint"))).is_empty());
    }
}
