//! Ambit's BPF programs: traffic capture for enrolled pods.
//!
//! Outbound: `connect4` and `connect6` (cgroup) send a TCP connect from an
//! enrolled pod's network namespace to the node agent's listener in that
//! namespace (on `127.0.0.1`, or `[::1]` for a native IPv6 destination) and
//! record the original destination under the socket's cookie; `sockops`
//! re-files it under the source port once the kernel has picked one, which is
//! what the agent sees when it accepts.
//!
//! DNS: a pod's queries to port 53 go to the agent's DNS proxy in its
//! namespace (UDP by `dns_query4`/`dns_query6` and `connect4`/`connect6`,
//! TCP by `connect4`/`connect6`), and `dns_answer4`/`dns_answer6` make the
//! answers come from the server asked.
//!
//! Inbound: `inbound_lookup` (sk_lookup, one attachment per enrolled pod's
//! namespace) hands new TCP connections to a pod's ports to the agent's
//! inbound listener of their family, and refuses them while the agent has
//! none.
//!
//! Relay: `relay_verdict` (sk_skb stream verdict) forwards what a plain
//! TCP connection's socket receives out of its peer socket, inside the
//! kernel, once the agent has paired the two.
#![no_std]
#![no_main]

use core::ffi::c_void;
use core::ptr::{addr_of, addr_of_mut};

use ambit_ebpf_common::{
    Addr4, Addr6, ConnectionKey, RelayState, AGENT_MARK, AGENT_MARK_MASK, AGENT_PORTS, DNS_PORT,
    DNS_PROXY_PORT, HBONE_PORT, MAX_PENDING_CONNECTIONS, MAX_PODS, MAX_RELAYED_SOCKETS,
    RELAY_BUDGET, RELEASE_PENDING,
};
use aya_ebpf::{
    bindings::BPF_SOCK_OPS_TCP_CONNECT_CB,
    helpers::{
        bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_map_delete_elem, bpf_map_lookup_elem,
        bpf_sk_release,
        generated::{bpf_probe_read_kernel, bpf_skc_to_tcp_sock},
    },
    macros::{cgroup_sock_addr, map, sk_lookup, sock_ops, stream_verdict},
    maps::{HashMap, LruHashMap, RingBuf, SockHash},
    programs::{SkBuffContext, SkLookupContext, SockAddrContext, SockOpsContext},
    EbpfContext,
};

#[map]
static REDIRECTS: HashMap<u64, Addr4> = HashMap::pinned(MAX_PODS, 0);

#[map]
static CONNECTING: LruHashMap<u64, Addr4> = LruHashMap::pinned(MAX_PENDING_CONNECTIONS, 0);

#[map]
static ORIGINAL_DST: LruHashMap<ConnectionKey, Addr4> =
    LruHashMap::pinned(MAX_PENDING_CONNECTIONS, 0);

#[map]
static CONNECTING6: LruHashMap<u64, Addr6> = LruHashMap::pinned(MAX_PENDING_CONNECTIONS, 0);

#[map]
static ORIGINAL_DST6: LruHashMap<ConnectionKey, Addr6> =
    LruHashMap::pinned(MAX_PENDING_CONNECTIONS, 0);

#[map]
static INBOUND_LISTENERS: SockHash<u32> = SockHash::pinned(MAX_PODS, 0);

#[map]
static INBOUND_LISTENERS6: SockHash<[u32; 4]> = SockHash::pinned(MAX_PODS, 0);

#[map]
static AGENT_SOURCES: HashMap<Addr4, u8> = HashMap::pinned(MAX_PENDING_CONNECTIONS, 0);

#[map]
static AGENT_SOURCES6: HashMap<Addr6, u8> = HashMap::pinned(MAX_PENDING_CONNECTIONS, 0);

#[map]
static DNS_SERVERS: LruHashMap<u64, Addr4> = LruHashMap::pinned(MAX_PENDING_CONNECTIONS, 0);

#[map]
static DNS_SERVERS6: LruHashMap<u64, Addr6> = LruHashMap::pinned(MAX_PENDING_CONNECTIONS, 0);

// Not pinned: relayed sockets belong to the agent process that holds them.
#[map]
static RELAY_PEERS: SockHash<u64> = SockHash::with_max_entries(MAX_RELAYED_SOCKETS, 0);

#[map]
static RELAYED: SockHash<u64> = SockHash::with_max_entries(MAX_RELAYED_SOCKETS, 0);

#[map]
static RELAY_STATES: HashMap<u64, RelayState> = HashMap::with_max_entries(MAX_RELAYED_SOCKETS, 0);

#[map]
static RELAY_HANDOVERS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// Lets the connect proceed.
const ALLOW: i32 = 1;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;
/// `::ffff:0:0/96`: the third 32-bit word of an IPv4-mapped IPv6 address,
/// in network byte order read as a little-endian u32.
const V4_MAPPED_PREFIX: u32 = 0xffff_0000;
/// 127.0.0.0/8 in network byte order, read as a little-endian u32.
const LOOPBACK_NET: u32 = 0x0000_007f;
const LOOPBACK_MASK: u32 = 0x0000_00ff;
/// The last 32-bit word of `::1`, in network byte order read as a
/// little-endian u32.
const IPV6_LOOPBACK_WORD: u32 = 0x0100_0000;
/// sk_lookup and sk_skb verdict: carry on (with the assigned socket or the
/// redirect, if any).
const SK_PASS: u32 = 1;
/// sk_skb verdict: free the buffer; sk_lookup: refuse the connection.
const SK_DROP: u32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands connect4 a valid, writable bpf_sock_addr.
    let sock_addr = unsafe { &mut *ctx.sock_addr };
    let mut ip = sock_addr.user_ip4;
    if capture(&ctx, &mut ip, &mut sock_addr.user_port) {
        sock_addr.user_ip4 = ip;
    }
    ALLOW
}

/// IPv6 sockets reach IPv4 services through IPv4-mapped addresses
/// (`::ffff:a.b.c.d`), as Java and dual-stack runtimes do: those are
/// captured like connect4's. Native IPv6 destinations: see `capture6`.
#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands connect6 a valid, writable bpf_sock_addr.
    let sock_addr = unsafe { &mut *ctx.sock_addr };
    let ip6 = user_ip6(sock_addr);
    if !is_v4_mapped(ip6) {
        capture6(&ctx, ip6);
        return ALLOW;
    }
    let mut ip = ip6[3];
    if capture(&ctx, &mut ip, &mut sock_addr.user_port) {
        sock_addr.user_ip6[3] = ip;
    }
    ALLOW
}

fn is_v4_mapped(ip6: [u32; 4]) -> bool {
    ip6[0] == 0 && ip6[1] == 0 && ip6[2] == V4_MAPPED_PREFIX
}

/// A connect (TCP, or UDP to port 53) or a UDP send to port 53 to a native
/// IPv6 address (`ip6` as `bpf_sock_addr` holds it) from an enrolled
/// namespace: as `capture` does for IPv4, to the agent's listener (its DNS
/// proxy for port 53) on the namespace's `[::1]`, the destination recorded.
/// The pod's own loopback, other UDP, the agent's sockets and pods outside
/// the mesh are left alone.
fn capture6(ctx: &SockAddrContext, ip6: [u32; 4]) {
    // SAFETY: the kernel hands sock_addr programs a full socket in `sk`.
    let (sock_type, mark, port) = unsafe {
        let sock_addr = &*ctx.sock_addr;
        let sk = &*sock_addr.__bindgen_anon_1.sk;
        (sk.type_, sk.mark, sock_addr.user_port)
    };
    // The network-order port is in the low 16 bits.
    let dns = port as u16 == DNS_PORT.to_be();
    let local =
        ip6[0] == 0 && ip6[1] == 0 && ip6[2] == 0 && (ip6[3] == 0 || ip6[3] == IPV6_LOOPBACK_WORD);
    if !(sock_type == SOCK_STREAM || (sock_type == SOCK_DGRAM && dns))
        || local
        || mark & AGENT_MARK_MASK == AGENT_MARK
    {
        return;
    }
    // SAFETY: the helper accepts the program's context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out before the map can change.
    let Some(target) = (unsafe { REDIRECTS.get(netns_cookie) }).copied() else {
        return;
    };
    // SAFETY: the kernel hands connect6 a valid, writable bpf_sock_addr.
    let sock_addr = unsafe { &mut *ctx.sock_addr };
    let original = Addr6 {
        ip: ip6,
        // The network-order port is in the low 16 bits.
        port: sock_addr.user_port as u16,
        _pad: 0,
    };
    // SAFETY: the helper accepts the program's context.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let to_port = if dns {
        // A full map only loses where an answer shows it came from: the
        // resolver drops that one answer and asks again.
        if sock_type == SOCK_DGRAM {
            let _ = DNS_SERVERS6.insert(socket_cookie, original, 0);
        }
        DNS_PROXY_PORT.to_be()
    } else {
        // A full map only loses the original destination: the agent then
        // refuses that one connection.
        let _ = CONNECTING6.insert(socket_cookie, original, 0);
        target.port
    };
    set_ip6(sock_addr, [0, 0, 0, IPV6_LOOPBACK_WORD]);
    sock_addr.user_port = u32::from(to_port);
}

/// Word by word: the verifier allows only fixed offsets into the context,
/// not a copy through a pointer into it.
#[inline(always)]
fn user_ip6(sock_addr: &aya_ebpf::bindings::bpf_sock_addr) -> [u32; 4] {
    // SAFETY: each is a field of the context the kernel handed in.
    let word = |i: usize| unsafe { core::ptr::read_volatile(addr_of!(sock_addr.user_ip6[i])) };
    [word(0), word(1), word(2), word(3)]
}

/// Word by word: the context takes 32-bit stores.
fn set_ip6(sock_addr: &mut aya_ebpf::bindings::bpf_sock_addr, ip6: [u32; 4]) {
    for (i, word) in ip6.into_iter().enumerate() {
        // SAFETY: a field of the context the kernel handed in.
        unsafe { core::ptr::write_volatile(addr_of_mut!(sock_addr.user_ip6[i]), word) };
    }
}

/// A UDP `sendto`/`sendmsg` with an address: a DNS query is sent to the
/// agent's DNS proxy, as `connect4` sends a connected socket's.
#[cgroup_sock_addr(sendmsg4)]
pub fn dns_query4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands sendmsg4 a valid, writable bpf_sock_addr.
    let sock_addr = unsafe { &mut *ctx.sock_addr };
    let mut ip = sock_addr.user_ip4;
    if capture(&ctx, &mut ip, &mut sock_addr.user_port) {
        sock_addr.user_ip4 = ip;
    }
    ALLOW
}

/// [`dns_query4`] for IPv6 sockets. The kernel sends a query to an
/// IPv4-mapped address (a dual-stack socket's to the cluster's DNS) as
/// IPv4, through sendmsg4: [`dns_query4`] captures it.
#[cgroup_sock_addr(sendmsg6)]
pub fn dns_query6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands sendmsg6 a valid bpf_sock_addr.
    let ip6 = user_ip6(unsafe { &*ctx.sock_addr });
    if !is_v4_mapped(ip6) {
        capture6(&ctx, ip6);
    }
    ALLOW
}

/// [`dns_answer4`] for IPv6 sockets, whose answers to queries sent to an
/// IPv4-mapped address come through here too: those servers were recorded
/// by [`dns_query4`], and answer as their mapped address.
#[cgroup_sock_addr(recvmsg6)]
pub fn dns_answer6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands recvmsg6 a valid, writable bpf_sock_addr.
    let sock_addr = unsafe { &mut *ctx.sock_addr };
    let Some(cookie) = proxy_answer(&ctx, sock_addr) else {
        return ALLOW;
    };
    // SAFETY: the value is copied out before the map can change.
    let native = unsafe { DNS_SERVERS6.get(cookie) }.copied();
    let asked = native.map(|server| (server.ip, server.port)).or_else(|| {
        // SAFETY: as above.
        let server = unsafe { DNS_SERVERS.get(cookie) }.copied()?;
        Some(([0, 0, V4_MAPPED_PREFIX, server.ip], server.port))
    });
    if let Some((ip, port)) = asked {
        set_ip6(sock_addr, ip);
        sock_addr.user_port = u32::from(port);
    }
    ALLOW
}

/// For a receive from the agent's DNS proxy, the socket's cookie.
fn proxy_answer(
    ctx: &SockAddrContext,
    sock_addr: &aya_ebpf::bindings::bpf_sock_addr,
) -> Option<u64> {
    if sock_addr.user_port as u16 != DNS_PROXY_PORT.to_be() {
        return None;
    }
    // SAFETY: the helper accepts the program's context.
    Some(unsafe { bpf_get_socket_cookie(ctx.as_ptr()) })
}

/// A UDP receive: an answer from the agent's DNS proxy is shown as from
/// the server the socket asked (resolvers drop answers from elsewhere).
#[cgroup_sock_addr(recvmsg4)]
pub fn dns_answer4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands recvmsg4 a valid, writable bpf_sock_addr.
    let sock_addr = unsafe { &mut *ctx.sock_addr };
    // SAFETY: the value is copied out before the map can change.
    let asked = |cookie| unsafe { DNS_SERVERS.get(cookie) }.copied();
    if let Some(server) = proxy_answer(&ctx, sock_addr).and_then(asked) {
        sock_addr.user_ip4 = server.ip;
        sock_addr.user_port = u32::from(server.port);
    }
    ALLOW
}

/// For a connect (TCP, or UDP to port 53) or a UDP send to port 53 from an
/// enrolled namespace to an IPv4 address `ip` (with `port` as
/// `bpf_sock_addr` holds it): rewrites both to the agent's listener (its
/// DNS proxy for port 53) and records the original destination. Returns
/// whether it did.
fn capture(ctx: &SockAddrContext, ip: &mut u32, port: &mut u32) -> bool {
    // SAFETY: the kernel hands sock_addr programs a full socket in `sk`.
    let (sock_type, mark) = unsafe {
        let sk = &*(*ctx.sock_addr).__bindgen_anon_1.sk;
        (sk.type_, sk.mark)
    };
    // The network-order port is in the low 16 bits.
    let dns = *port as u16 == DNS_PORT.to_be();
    // Other UDP, loopback and the agent's own sockets stay where they are.
    if !(sock_type == SOCK_STREAM || (sock_type == SOCK_DGRAM && dns))
        || *ip & LOOPBACK_MASK == LOOPBACK_NET
        || mark & AGENT_MARK_MASK == AGENT_MARK
    {
        return false;
    }
    // SAFETY: both helpers accept the program's context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out before the map can change.
    let Some(target) = (unsafe { REDIRECTS.get(netns_cookie) }).copied() else {
        return false;
    };
    let original = Addr4 {
        ip: *ip,
        // The network-order port is in the low 16 bits.
        port: *port as u16,
        _pad: 0,
    };
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if dns {
        // A full map only loses where an answer shows it came from: the
        // resolver drops that one answer and asks again.
        if sock_type == SOCK_DGRAM {
            let _ = DNS_SERVERS.insert(socket_cookie, original, 0);
        }
        *ip = target.ip;
        *port = u32::from(DNS_PROXY_PORT.to_be());
        return true;
    }
    // A full map only loses the original destination: the agent then
    // refuses that one connection.
    let _ = CONNECTING.insert(socket_cookie, original, 0);
    *ip = target.ip;
    *port = u32::from(target.port);
    true
}

#[sock_ops]
pub fn record_original_dst(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_TCP_CONNECT_CB {
        file_original_dst(&ctx);
    }
    0
}

fn file_original_dst(ctx: &SockOpsContext) {
    // SAFETY: both helpers accept a sock_ops context.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // local_port is in host byte order.
    let key = || {
        ConnectionKey::new(
            unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
            ctx.local_port() as u16,
        )
    };
    // SAFETY: each value is copied out before its entry is removed.
    if let Some(original) = (unsafe { CONNECTING.get(socket_cookie) }).copied() {
        let _ = CONNECTING.remove(socket_cookie);
        let _ = ORIGINAL_DST.insert(key(), original, 0);
    } else if ctx.family() == AF_INET6 {
        if let Some(original) = (unsafe { CONNECTING6.get(socket_cookie) }).copied() {
            let _ = CONNECTING6.remove(socket_cookie);
            let _ = ORIGINAL_DST6.insert(key(), original, 0);
        }
    }
}

#[sk_lookup]
pub fn inbound_lookup(ctx: SkLookupContext) -> u32 {
    // SAFETY: the kernel hands sk_lookup a valid bpf_sk_lookup.
    let lookup = unsafe { &*ctx.lookup };
    if lookup.protocol != IPPROTO_TCP {
        return SK_PASS;
    }
    if lookup.family != AF_INET {
        return inbound_lookup6(&ctx, lookup);
    }
    // Never steered: the pod calling itself, the agent's own ports, and the
    // agent's connections to the app (recorded by their source address).
    if lookup.remote_ip4 == lookup.local_ip4 || is_agent_port(lookup.local_port) {
        return SK_PASS;
    }
    let source = Addr4 {
        ip: lookup.remote_ip4,
        port: lookup.remote_port,
        _pad: 0,
    };
    // SAFETY: only whether the key exists is read.
    if unsafe { AGENT_SOURCES.get(source) }.is_some() {
        return SK_PASS;
    }
    // This program is attached only to enrolled pods' namespaces, and
    // outlives the agent (its link is pinned): with no listener of the
    // agent's for the address, the connection is refused, never handed to
    // the app around the mesh's policy. (Another program's choice of a
    // socket, as during an agent's restart, still wins over this refusal.)
    match INBOUND_LISTENERS.redirect_sk_lookup(&ctx, lookup.local_ip4, 0) {
        Ok(()) => SK_PASS,
        Err(_) => SK_DROP,
    }
}

/// Over IPv6 as over IPv4 (a dual-stack pod): the pod calling itself, the
/// agent's HBONE listener (the pod's own 15008) and the agent's connections
/// to the app (recorded) pass; anything else goes to the agent's IPv6
/// inbound listener for the address, or is refused without one.
fn inbound_lookup6(ctx: &SkLookupContext, lookup: &aya_ebpf::bindings::bpf_sk_lookup) -> u32 {
    if lookup.remote_ip6 == lookup.local_ip6 || lookup.local_port == u32::from(HBONE_PORT) {
        return SK_PASS;
    }
    // Word by word: the verifier allows only fixed offsets into the context,
    // not a copy through a pointer into it.
    // SAFETY: each is a field of the context the kernel handed in.
    let remote = |i: usize| unsafe { core::ptr::read_volatile(addr_of!(lookup.remote_ip6[i])) };
    let local = |i: usize| unsafe { core::ptr::read_volatile(addr_of!(lookup.local_ip6[i])) };
    let source = Addr6 {
        ip: [remote(0), remote(1), remote(2), remote(3)],
        port: lookup.remote_port,
        _pad: 0,
    };
    // SAFETY: only whether the key exists is read.
    if unsafe { AGENT_SOURCES6.get(source) }.is_some() {
        return SK_PASS;
    }
    let pod = [local(0), local(1), local(2), local(3)];
    match INBOUND_LISTENERS6.redirect_sk_lookup(ctx, pod, 0) {
        Ok(()) => SK_PASS,
        Err(_) => SK_DROP,
    }
}

#[stream_verdict]
pub fn relay_verdict(ctx: SkBuffContext) -> u32 {
    // A bare FIN, already handled by TCP: the agent passes the half-close
    // on itself. Redirected, it would fail the peer with EPIPE (the kernel
    // takes sending nothing for a broken pipe).
    if ctx.len() == 0 {
        return SK_DROP;
    }
    // SAFETY: the helper accepts an sk_skb context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // The agent files a state before the socket joins; without one (never
    // expected) the bytes stay with the socket.
    let Some(state) = RELAY_STATES.get_ptr_mut(cookie) else {
        return SK_PASS;
    };
    // SAFETY: a map value, valid for this program run; runs for one socket
    // do not overlap (the kernel holds the socket's lock).
    let state = unsafe { &mut *state };
    let len = u64::from(ctx.len());
    // Past the budget the agent is told, once, and takes the socket back;
    // meanwhile the bytes keep going (never left with the socket, where
    // they would be lost when it leaves the relay). The peer's delivery is
    // only looked up once the budget could be reached at all.
    if state.notified == 0
        && state.forwarded + len > RELAY_BUDGET
        && (state.peer_written_before + state.forwarded + len)
            .saturating_sub(peer_delivered(cookie))
            > RELAY_BUDGET
        && RELAY_HANDOVERS.output::<u64>(cookie, 0).is_ok()
    {
        state.notified = 1;
    }
    // Egress redirect: out of the peer, as if the agent had written it.
    // Without a peer (the agent took it away when it took the pair back)
    // SK_PASS keeps the bytes on this socket, where the agent reads them.
    if RELAY_PEERS.redirect_skb(&ctx, cookie, 0) == i64::from(SK_PASS) {
        state.forwarded += len;
    }
    SK_PASS
}

/// See `TCP_BYTES_ACKED_OFFSET_GLOBAL`; set by the agent at load.
#[no_mangle]
static TCP_BYTES_ACKED_OFFSET: u32 = 0;

/// Bytes the far end has acknowledged on the peer of the relayed socket
/// `cookie` (its `tcp_sock.bytes_acked`); 0 when they cannot be read, which
/// counts everything forwarded as undelivered.
fn peer_delivered(cookie: u64) -> u64 {
    // SAFETY: a sockhash lookup from a program returns the socket with a
    // reference taken, or null.
    let peer = unsafe {
        bpf_map_lookup_elem(
            addr_of!(RELAY_PEERS) as *mut c_void,
            addr_of!(cookie) as *const c_void,
        )
    };
    if peer.is_null() {
        return 0;
    }
    // SAFETY: `peer` is the socket the lookup returned; the helper returns
    // null unless it is a TCP socket.
    let tcp = unsafe { bpf_skc_to_tcp_sock(peer) };
    let mut acked: u64 = 0;
    if !tcp.is_null() {
        // SAFETY: a read-only constant the agent set at load.
        let offset = unsafe { core::ptr::read_volatile(&TCP_BYTES_ACKED_OFFSET) };
        // SAFETY: the helper checks the kernel address and writes at most 8
        // bytes to `acked`, which outlives the call.
        let read = unsafe {
            bpf_probe_read_kernel(
                addr_of_mut!(acked) as *mut c_void,
                8,
                (tcp as *const u8).wrapping_add(offset as usize) as *const c_void,
            )
        };
        if read != 0 {
            acked = 0;
        }
    }
    // SAFETY: the lookup's reference, released once.
    unsafe { bpf_sk_release(peer) };
    acked
}

#[map]
static RELAY_RELEASES: HashMap<u64, i64> = HashMap::with_max_entries(MAX_RELAYED_SOCKETS, 0);

/// `struct bpf_iter__tcp`, the context of a TCP iterator.
#[repr(C)]
struct IterTcpContext {
    meta: *mut c_void,
    sk_common: *mut c_void,
    uid: u32,
}

/// See `RELAY_RELEASE_PROGRAM`. aya-ebpf has no macro for iterators: the
/// section name is the kernel's.
#[no_mangle]
#[link_section = "iter/tcp"]
fn relay_release(ctx: *mut IterTcpContext) -> i32 {
    // SAFETY: the kernel passes a valid context; the socket may be null
    // (the end of the iteration).
    let sk = unsafe { (*ctx).sk_common };
    if sk.is_null() {
        return 0;
    }
    // SAFETY: a socket pointer the verifier has typed.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    let Some(pending) = RELAY_RELEASES.get_ptr_mut(cookie) else {
        return 0;
    };
    // SAFETY: a map value, valid for this program run.
    let pending = unsafe { &mut *pending };
    if *pending != RELEASE_PENDING {
        return 0;
    }
    // SAFETY: the map and the key outlive the call.
    *pending = unsafe {
        bpf_map_delete_elem(
            &RELAYED as *const _ as *mut c_void,
            &cookie as *const u64 as *const c_void,
        )
    };
    0
}

fn is_agent_port(port: u32) -> bool {
    let mut i = 0;
    while i < AGENT_PORTS.len() {
        if u32::from(AGENT_PORTS[i]) == port {
            return true;
        }
        i += 1;
    }
    false
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
