//! Where traffic reaches the proxy: HBONE from the node agents (waypoint
//! mode), or a gateway's own listeners (gateway mode).

mod credentials;
pub mod gateway;
pub mod hbone;

pub use credentials::{Credentials, Secrets};
