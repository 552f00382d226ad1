//! What a pod's namespace needs so the agent can connect to the pod's app
//! with the client's address as source (a transparent socket), without
//! iptables:
//!
//! - `net.ipv4.tcp_fwmark_accept=1`: the app's accepted socket takes the mark
//!   of the agent's SYN, so all the app's replies carry `INBOUND_MARK_BIT`;
//! - a rule `fwmark INBOUND_MARK_BIT lookup INBOUND_TABLE` and, in that table,
//!   `local 0.0.0.0/0 dev lo` (and both for IPv6, `local ::/0`): marked
//!   replies are delivered locally, to the agent's transparent socket,
//!   instead of being routed out to the client;
//! - `net.ipv4.fwmark_reflect=1` and `net.ipv6.fwmark_reflect=1`: the
//!   kernel's own answers to a marked SYN (a reset from a port where the app
//!   does not listen, an ICMP error) carry its mark too, so they reach the
//!   agent at once; unmarked, they were routed out to the client's address
//!   and lost, and the agent's connect waited for its timeout (10 s) before
//!   the caller's connection was reset;
//! - `net.ipv4.tcp_migrate_req=1`: when a restarting agent closes its
//!   listeners, connections queued on them move to the new agent's.
//!
//! Unmarked traffic (the app's own, connections made before enrollment) is
//! untouched. Call these inside the pod's namespace (`Netns::run`).

use std::io;

use ambit_ebpf_common::INBOUND_MARK_BIT;

use super::netlink::{Netlink, NLMSG_ERROR, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};

/// Routing table for the agent's inbound replies (any unused number).
pub const INBOUND_TABLE: u8 = 133;
/// Rule priority: after `local` (0), before `main` (32766).
const RULE_PRIORITY: u32 = 32000;

const SYSCTLS: [(&str, &str); 4] = [
    ("/proc/sys/net/ipv4/tcp_fwmark_accept", "1"),
    ("/proc/sys/net/ipv4/fwmark_reflect", "1"),
    ("/proc/sys/net/ipv6/fwmark_reflect", "1"),
    ("/proc/sys/net/ipv4/tcp_migrate_req", "1"),
];

/// Sets up the current thread's namespace as described above; idempotent.
pub fn prepare_inbound_routing() -> io::Result<()> {
    for (path, value) in SYSCTLS {
        match std::fs::write(path, value) {
            // A kernel without IPv6 has no IPv6 settings, and needs none.
            Err(error)
                if error.kind() == io::ErrorKind::NotFound
                    && path.starts_with("/proc/sys/net/ipv6/") => {}
            written => {
                written.map_err(|error| io::Error::new(error.kind(), format!("{path}: {error}")))?
            }
        }
    }
    let socket = Netlink::open(nix::libc::NETLINK_ROUTE)?;
    create(&socket, RTM_NEWRULE, &rule_message(AF_INET))?;
    create(&socket, RTM_NEWROUTE, &route_message(AF_INET))?;
    // The same for IPv6 (a dual-stack pod's HBONE callers), where the
    // namespace has IPv6 at all.
    match create(&socket, RTM_NEWRULE, &rule_message(AF_INET6)) {
        Err(error) if error.raw_os_error() == Some(nix::libc::EAFNOSUPPORT) => Ok(()),
        created => {
            created?;
            create(&socket, RTM_NEWROUTE, &route_message(AF_INET6))
        }
    }
}

/// Sends one create request and waits for its acknowledgement; "already
/// exists" counts as done.
fn create(socket: &Netlink, kind: u16, body: &[u8]) -> io::Result<()> {
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    let reply = socket.request(kind, flags, body)?;
    match (reply.kind, reply.error) {
        (NLMSG_ERROR, Some(0)) => Ok(()),
        (NLMSG_ERROR, Some(errno)) if -errno == nix::libc::EEXIST => Ok(()),
        (NLMSG_ERROR, Some(errno)) => Err(io::Error::from_raw_os_error(-errno)),
        _ => Err(io::Error::other("netlink: unexpected reply")),
    }
}

// Netlink constants (linux/rtnetlink.h, linux/fib_rules.h).
const RTM_NEWROUTE: u16 = 24;
const RTM_NEWRULE: u16 = 32;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_HOST: u8 = 254;
const RTN_LOCAL: u8 = 2;
const RTA_OIF: u16 = 4;
const FR_ACT_TO_TBL: u8 = 1;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_FWMASK: u16 = 16;
const LOOPBACK_IFINDEX: u32 = 1;

/// `ip [-6] rule add pref 32000 fwmark 0x1000/0x1000 lookup 133`
fn rule_message(family: u8) -> Vec<u8> {
    // struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags.
    let mut body = vec![family, 0, 0, 0, INBOUND_TABLE, 0, 0, FR_ACT_TO_TBL];
    body.extend_from_slice(&0u32.to_ne_bytes());
    push_u32_attr(&mut body, FRA_PRIORITY, RULE_PRIORITY);
    push_u32_attr(&mut body, FRA_FWMARK, INBOUND_MARK_BIT);
    push_u32_attr(&mut body, FRA_FWMASK, INBOUND_MARK_BIT);
    body
}

/// `ip route add local 0.0.0.0/0 dev lo table 133` (`::/0` for IPv6)
fn route_message(family: u8) -> Vec<u8> {
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    let mut body = vec![
        family,
        0,
        0,
        0,
        INBOUND_TABLE,
        RTPROT_STATIC,
        RT_SCOPE_HOST,
        RTN_LOCAL,
    ];
    body.extend_from_slice(&0u32.to_ne_bytes());
    push_u32_attr(&mut body, RTA_OIF, LOOPBACK_IFINDEX);
    body
}

fn push_u32_attr(buf: &mut Vec<u8>, kind: u16, value: u32) {
    // struct rtattr { len: u16, type: u16 } then the value; 8 bytes, aligned.
    buf.extend_from_slice(&8u16.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&value.to_ne_bytes());
}
