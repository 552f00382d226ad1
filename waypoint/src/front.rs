//! Where traffic reaches the waypoint: HBONE from the node agents.

pub mod hbone;
