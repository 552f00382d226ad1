//! Istio's API as Ambit reads it: manifests in, typed objects out, with
//! every problem named by object and field path.
//!
//! [`document`] turns YAML manifests into [`document::Resource`]s, accepting
//! each kind under every version Istio serves and reporting unknown fields;
//! [`api`] holds the types and their validation: `networking.istio.io`
//! VirtualService, DestinationRule, ServiceEntry, Gateway,
//! `security.istio.io` AuthorizationPolicy, PeerAuthentication, and the
//! Kubernetes kinds the mesh is built from (Namespace, Pod, Service,
//! EndpointSlice). The mesh model built from them, and its sources, come next.

pub mod api;
pub mod document;
pub mod hosts;
pub mod model;
pub mod policy;
