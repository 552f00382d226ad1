//! Ambit's BPF programs.
//!
//! `connect4` (cgroup/connect4) sends the outbound TCP connections of
//! enrolled pods to the node agent: a pod is enrolled when its network
//! namespace's cookie is a key of `REDIRECTS`, and the value says where its
//! connections go.
#![no_std]
#![no_main]

use ambit_ebpf_common::{Redirect, MAX_REDIRECTS};
use aya_ebpf::{
    bindings::bpf_sock_addr, helpers::bpf_get_netns_cookie, macros::cgroup_sock_addr, macros::map,
    maps::HashMap, programs::SockAddrContext,
};

/// Network-namespace cookie of an enrolled pod -> where its connections go.
#[map]
static REDIRECTS: HashMap<u64, Redirect> = HashMap::with_max_entries(MAX_REDIRECTS, 0);

/// Lets the connection proceed (the other return value, 0, refuses it).
const ALLOW: i32 = 1;
const SOCK_STREAM: u32 = 1;
/// 127.0.0.0/8 in network byte order, read as a little-endian u32.
const LOOPBACK_NET: u32 = 0x0000_007f;
const LOOPBACK_MASK: u32 = 0x0000_00ff;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands a valid, writable bpf_sock_addr to connect4.
    let sock_addr = unsafe { &mut *ctx.sock_addr };
    // SAFETY: bpf_get_netns_cookie accepts the program's context pointer.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    redirect(sock_addr, netns_cookie);
    ALLOW
}

fn redirect(sock_addr: &mut bpf_sock_addr, netns_cookie: u64) {
    // UDP (DNS, for one) and loopback traffic stay where they are.
    if sock_addr.type_ != SOCK_STREAM || sock_addr.user_ip4 & LOOPBACK_MASK == LOOPBACK_NET {
        return;
    }
    // SAFETY: the value is only read, and copied before the map can change.
    let Some(target) = (unsafe { REDIRECTS.get(netns_cookie) }).copied() else {
        return;
    };
    sock_addr.user_ip4 = target.ip4;
    sock_addr.user_port = u32::from(target.port);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
