//! The waypoint's decisions, free of I/O: the mesh model compiled into
//! route tables ([`compile`]), a request matched to a route
//! ([`matching`]), and an endpoint chosen ([`lb`]). No tokio, hyper, h2 or
//! sockets here (`cargo xtask lint` checks it): everything is decided from
//! values passed in and tested without a network.

pub mod actions;
pub mod compile;
pub mod cors;
pub mod fault;
pub mod hash;
pub mod lb;
pub mod limits;
pub mod matching;
pub mod outlier;
pub mod retry;
pub mod sni;

pub use compile::gateway::{compile_gateway, GatewayTables, Listener, ServerMode, ServerTable};
pub use compile::{
    compile, left_out_destination_fields, left_out_fields, Backend, Binding, HttpRoute, Names,
    PortTable, Protocol, Resolve, RouteTables, Routed, LEFT_OUT,
};
pub use matching::{Arrival, Caller};
