//! Types shared between the BPF programs (`no_std`) and the node agent.
//!
//! Every type is `#[repr(C)]`, has explicit padding and a size assertion, so
//! both sides agree on the layout byte for byte.
#![no_std]

/// Name of the map from a network-namespace cookie to where that
/// namespace's outbound TCP connections are sent.
pub const REDIRECTS_MAP: &str = "REDIRECTS";

/// Name of the cgroup `connect4` program.
pub const CONNECT4_PROGRAM: &str = "connect4";

/// Most namespaces one node can redirect at once.
pub const MAX_REDIRECTS: u32 = 4096;

/// Where a redirected connection goes. Address and port are in network
/// byte order, as the kernel's `bpf_sock_addr` holds them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redirect {
    pub ip4: u32,
    pub port: u16,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<Redirect>() == 8);

impl Redirect {
    /// Builds a redirect from a host-order address and port.
    pub const fn new(ip4: [u8; 4], port: u16) -> Self {
        Self {
            ip4: u32::from_ne_bytes(ip4),
            port: port.to_be(),
            _pad: 0,
        }
    }
}

// SAFETY: `Redirect` is `repr(C)`, has no implicit padding and every bit
// pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Redirect {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_is_in_network_byte_order() {
        let r = Redirect::new([10, 244, 1, 2], 15001);
        assert_eq!(r.ip4.to_ne_bytes(), [10, 244, 1, 2]);
        assert_eq!(r.port.to_ne_bytes(), 15001u16.to_be_bytes());
    }
}
