//! Types and names shared between the BPF programs (`no_std`) and the node
//! agent.
//!
//! Every map type is `#[repr(C)]`, has explicit padding and a size assertion,
//! so both sides agree on the layout byte for byte.
#![no_std]

/// Program: cgroup `connect4`, sends enrolled pods' outbound TCP connections
/// to the agent and records where they were going.
pub const CONNECT4_PROGRAM: &str = "connect4";
/// Program: cgroup `connect6`, the same for IPv6 sockets: IPv4-mapped
/// addresses as IPv4, native IPv6 to the agent's listener on `[::1]`.
pub const CONNECT6_PROGRAM: &str = "connect6";
/// Program: cgroup `sendmsg4`, sends an enrolled pod's DNS queries over
/// UDP (to any server's port 53) to the agent's DNS proxy in its namespace.
pub const DNS_QUERY_PROGRAM: &str = "dns_query4";
/// Program: cgroup `recvmsg4`, makes the DNS proxy's answers come from the
/// server the pod asked, as its resolver checks.
pub const DNS_ANSWER_PROGRAM: &str = "dns_answer4";
/// Program: cgroup `sendmsg6`, the same for DNS queries to IPv6 servers.
pub const DNS_QUERY6_PROGRAM: &str = "dns_query6";
/// Program: cgroup `recvmsg6`, the same as `dns_answer4` for them.
pub const DNS_ANSWER6_PROGRAM: &str = "dns_answer6";
/// Map: socket cookie of a pod's UDP socket -> the DNS server it asked
/// (`Addr4`), for `dns_answer4`.
pub const DNS_SERVERS_MAP: &str = "DNS_SERVERS";
/// Map: [`DNS_SERVERS_MAP`] for IPv6 servers (`Addr6`), for `dns_answer6`.
pub const DNS_SERVERS6_MAP: &str = "DNS_SERVERS6";
/// The agent's DNS proxy in each enrolled pod's namespace, on the
/// loopback address of its outbound listener (UDP and TCP), and on `[::1]`
/// for queries to IPv6 servers.
pub const DNS_PROXY_PORT: u16 = 15053;
/// DNS.
pub const DNS_PORT: u16 = 53;
/// Program: cgroup `sock_ops`, files the recorded destination under the
/// connection's source port once the kernel has chosen it.
pub const SOCKOPS_PROGRAM: &str = "record_original_dst";
/// Program: `sk_lookup`, attached to each enrolled pod's network namespace,
/// steers inbound TCP connections to the agent's inbound listener.
pub const INBOUND_LOOKUP_PROGRAM: &str = "inbound_lookup";
/// Program: `sk_skb` stream verdict on every socket in `RELAYED_MAP`, sends
/// the bytes each receives straight out of its peer socket.
pub const RELAY_VERDICT_PROGRAM: &str = "relay_verdict";

/// Map: network-namespace cookie of an enrolled pod -> where its outbound
/// connections go (`Addr4`).
pub const REDIRECTS_MAP: &str = "REDIRECTS";
/// Map: socket cookie -> original destination, between connect and the
/// kernel choosing a source port (`Addr4`).
pub const CONNECTING_MAP: &str = "CONNECTING";
/// Map: `ConnectionKey` -> original destination of a redirected connection
/// (`Addr4`); the agent reads and deletes the entry when it accepts.
pub const ORIGINAL_DST_MAP: &str = "ORIGINAL_DST";
/// Map: [`CONNECTING_MAP`] for native IPv6 destinations (`Addr6`).
pub const CONNECTING6_MAP: &str = "CONNECTING6";
/// Map: [`ORIGINAL_DST_MAP`] for connections accepted on the agent's IPv6
/// listener (`Addr6`): a source port of `[::1]` may be in use on
/// `127.0.0.1` by another connection at once.
pub const ORIGINAL_DST6_MAP: &str = "ORIGINAL_DST6";
/// Map: pod IPv4 address (network order) -> the agent's inbound listener in
/// that pod's namespace (a sockhash).
pub const INBOUND_LISTENERS_MAP: &str = "INBOUND_LISTENERS";
/// Map: [`INBOUND_LISTENERS_MAP`] by a pod's IPv6 address (four
/// network-order words, as `Addr6` holds them) -> the agent's IPv6 inbound
/// listener in that pod's namespace.
pub const INBOUND_LISTENERS6_MAP: &str = "INBOUND_LISTENERS6";
/// Map: source address (`Addr4`) of a connection the agent is opening to a
/// local app -> 1. `inbound_lookup` leaves such connections alone: to it they
/// look like any other caller, since the agent uses the caller's address.
pub const AGENT_SOURCES_MAP: &str = "AGENT_SOURCES";
/// Map: [`AGENT_SOURCES_MAP`] for IPv6 sources (`Addr6`).
pub const AGENT_SOURCES6_MAP: &str = "AGENT_SOURCES6";
/// Map: socket cookie -> that socket's peer in a relay pair (a sockhash):
/// where `relay_verdict` sends what the socket receives.
pub const RELAY_PEERS_MAP: &str = "RELAY_PEERS";
/// Map: socket cookie -> the socket itself (a sockhash). `relay_verdict` is
/// attached here, so a socket is relayed in the kernel while it is a member;
/// a pair joins only once both peers are filed in `RELAY_PEERS_MAP`.
pub const RELAYED_MAP: &str = "RELAYED";
/// Map: socket cookie -> `RelayState` of a relayed socket.
pub const RELAY_STATES_MAP: &str = "RELAY_STATES";
/// Ring buffer: cookies (u64) of relayed sockets that reached
/// `RELAY_BUDGET`; the kernel keeps forwarding their bytes until the agent
/// takes the socket back (`RELAY_RELEASE_PROGRAM`).
pub const RELAY_HANDOVERS_MAP: &str = "RELAY_HANDOVERS";
/// Program: a TCP iterator (`iter/tcp`) that takes the sockets filed in
/// `RELAY_RELEASES_MAP` out of `RELAYED_MAP`. The kernel runs it for each
/// socket with the socket's lock held, so no verdict can run on the socket
/// while it leaves: nothing it received is lost. (A delete from user space
/// can race a verdict, which then drops the bytes it was given.)
pub const RELAY_RELEASE_PROGRAM: &str = "relay_release";
/// Map: socket cookie -> `RELEASE_PENDING` until `relay_release` has run
/// for the socket, then the delete's result (0, or a negative errno).
pub const RELAY_RELEASES_MAP: &str = "RELAY_RELEASES";
/// See `RELAY_RELEASES_MAP`.
pub const RELEASE_PENDING: i64 = i64::MAX;

/// Most enrolled pods one node can hold.
pub const MAX_PODS: u32 = 4096;
/// Most redirected connections between connect and accept at once.
pub const MAX_PENDING_CONNECTIONS: u32 = 65536;
/// Most sockets relayed in the kernel at once (two per connection); the
/// agent relays further connections in user space.
pub const MAX_RELAYED_SOCKETS: u32 = 65536;
/// Bytes a socket may have forwarded in the kernel that its peer has not
/// yet delivered (had acknowledged by the far end) before the agent is told
/// to take the pair back. The kernel's redirect has no back-pressure (the
/// bytes wait in the peer's queue, however slow its reader), so bulk
/// transfers and stalled readers move on to the agent's splice relay, which
/// has; exchanges that keep up, however long-lived, stay in the kernel,
/// where they cost no wakeup of the agent.
pub const RELAY_BUDGET: u64 = 4 << 20;
/// Global (u32) of the relay verdict: the byte offset of `bytes_acked` in
/// the kernel's `struct tcp_sock`, which the agent reads from the kernel's
/// BTF (it differs between kernel builds).
pub const TCP_BYTES_ACKED_OFFSET_GLOBAL: &str = "TCP_BYTES_ACKED_OFFSET";

/// Socket mark of every socket the agent opens in a pod's namespace: such
/// sockets are never captured. Checked under `AGENT_MARK_MASK`.
pub const AGENT_MARK: u32 = 0x539;
pub const AGENT_MARK_MASK: u32 = 0xfff;
/// Extra mark bit of the agent's connections to a local app (inbound): the
/// app's replies carry it too, and a routing rule delivers them locally to the
/// agent's transparent socket.
pub const INBOUND_MARK_BIT: u32 = 0x1000;

/// Ports of the agent's own listeners, never steered to the inbound listener:
/// admin, outbound, inbound, HBONE, metrics, readiness, DNS.
pub const AGENT_PORTS: [u16; 7] = [15000, 15001, 15006, HBONE_PORT, 15020, 15021, 15053];
/// The agent's HBONE listener in each pod, as Istio's.
pub const HBONE_PORT: u16 = 15008;

/// An IPv4 address and port, both in network byte order as the kernel's
/// socket structures hold them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addr4 {
    pub ip: u32,
    pub port: u16,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<Addr4>() == 8);

impl Addr4 {
    /// From an address's octets and a host-order port.
    pub const fn new(ip: [u8; 4], port: u16) -> Self {
        Self {
            ip: u32::from_ne_bytes(ip),
            port: port.to_be(),
            _pad: 0,
        }
    }

    pub const fn octets(&self) -> [u8; 4] {
        self.ip.to_ne_bytes()
    }

    /// The port in host order.
    pub const fn port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// An IPv6 address and port, both in network byte order as the kernel's
/// socket structures hold them (the address as four 32-bit words).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addr6 {
    pub ip: [u32; 4],
    pub port: u16,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<Addr6>() == 20);

impl Addr6 {
    /// From an address's octets and a host-order port.
    pub const fn new(ip: [u8; 16], port: u16) -> Self {
        Self {
            ip: [word(&ip, 0), word(&ip, 4), word(&ip, 8), word(&ip, 12)],
            port: port.to_be(),
            _pad: 0,
        }
    }

    pub const fn octets(&self) -> [u8; 16] {
        let [a, b, c, d] = self.ip;
        let (a, b, c, d) = (
            a.to_ne_bytes(),
            b.to_ne_bytes(),
            c.to_ne_bytes(),
            d.to_ne_bytes(),
        );
        [
            a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1],
            d[2], d[3],
        ]
    }

    /// The port in host order.
    pub const fn port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// The four bytes of `ip` from `at`, as the kernel's words hold them.
const fn word(ip: &[u8; 16], at: usize) -> u32 {
    u32::from_ne_bytes([ip[at], ip[at + 1], ip[at + 2], ip[at + 3]])
}

/// What the relay verdict keeps per socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayState {
    /// Bytes forwarded in the kernel.
    pub forwarded: u64,
    /// Bytes the peer socket had been given to send when the pair joined:
    /// from then on it sends only what this socket forwards, so what it has
    /// not delivered is this plus `forwarded` less its `bytes_acked`.
    pub peer_written_before: u64,
    /// 1 once the budget was reached and the agent told.
    pub notified: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<RelayState>() == 24);

/// Identifies a redirected connection as the agent sees it on accept: the
/// client's namespace and its source port (the address is always loopback).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionKey {
    pub netns_cookie: u64,
    /// Host byte order.
    pub port: u16,
    pub _pad: [u8; 6],
}

const _: () = assert!(core::mem::size_of::<ConnectionKey>() == 16);

impl ConnectionKey {
    pub const fn new(netns_cookie: u64, port: u16) -> Self {
        Self {
            netns_cookie,
            port,
            _pad: [0; 6],
        }
    }
}

// SAFETY: each is `repr(C)`, has no implicit padding, and every bit
// pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Addr4 {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Addr6 {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for ConnectionKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for RelayState {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_in_network_byte_order() {
        let addr = Addr4::new([10, 244, 1, 2], 15001);
        assert_eq!(addr.ip.to_ne_bytes(), [10, 244, 1, 2]);
        assert_eq!(addr.port.to_ne_bytes(), 15001u16.to_be_bytes());
        assert_eq!((addr.octets(), addr.port()), ([10, 244, 1, 2], 15001));
        let octets: [u8; 16] = core::array::from_fn(|i| i as u8);
        let addr = Addr6::new(octets, 15008);
        assert_eq!(addr.ip[0].to_ne_bytes(), [0, 1, 2, 3]);
        assert_eq!(addr.ip[3].to_ne_bytes(), [12, 13, 14, 15]);
        assert_eq!(addr.port.to_ne_bytes(), 15008u16.to_be_bytes());
        assert_eq!((addr.octets(), addr.port()), (octets, 15008));
    }
}
