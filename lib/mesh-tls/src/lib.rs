//! Mutual TLS as workloads of the mesh, for the proxies that speak for
//! them (the node agent for its pods, the waypoint for itself): keys made
//! here and certified by the CA ([`ca_client`]), kept and renewed
//! ([`certificates`]), and HBONE in mutual TLS ([`hbone`]). Private keys
//! never leave the process.

pub mod ca_client;
pub mod ca_protocol;
pub mod certificates;
pub mod config;
pub mod hbone;
pub mod records;
