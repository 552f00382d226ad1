//! Whether the current thread's network namespace holds a TCP connection,
//! asked of the kernel's socket table (sock_diag, as `ss` does).

use std::io;
use std::net::{IpAddr, SocketAddr};

use nix::libc;

use super::netlink::{Netlink, NLM_F_REQUEST};

// linux/sock_diag.h, linux/inet_diag.h
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const INET_DIAG_NOCOOKIE: u32 = !0;
const ALL_STATES: u32 = !0;

/// Whether a TCP socket here has the local address `local` and is
/// connected to `remote`, in any state up to TIME_WAIT (never, for two
/// addresses of different families).
pub fn holds_tcp_connection(local: SocketAddr, remote: SocketAddr) -> io::Result<bool> {
    if local.is_ipv4() != remote.is_ipv4() {
        return Ok(false);
    }
    let socket = Netlink::open(libc::NETLINK_SOCK_DIAG)?;
    let reply = socket.request(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, &request(local, remote))?;
    match (reply.kind, reply.error) {
        (SOCK_DIAG_BY_FAMILY, None) => Ok(true),
        (_, Some(errno)) if -errno == libc::ENOENT => Ok(false),
        (_, Some(errno)) => Err(io::Error::from_raw_os_error(-errno)),
        _ => Err(io::Error::other("sock_diag: unexpected reply")),
    }
}

/// `struct inet_diag_req_v2` asking for exactly one socket.
fn request(local: SocketAddr, remote: SocketAddr) -> Vec<u8> {
    let family = match local {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // family, protocol, extensions, padding, states.
    let mut body = vec![family as u8, libc::IPPROTO_TCP as u8, 0, 0];
    body.extend_from_slice(&ALL_STATES.to_ne_bytes());
    // struct inet_diag_sockid: ports and addresses in network order.
    body.extend_from_slice(&local.port().to_be_bytes());
    body.extend_from_slice(&remote.port().to_be_bytes());
    for address in [local.ip(), remote.ip()] {
        let mut field = [0u8; 16];
        match address {
            IpAddr::V4(address) => field[..4].copy_from_slice(&address.octets()),
            IpAddr::V6(address) => field = address.octets(),
        }
        body.extend_from_slice(&field);
    }
    body.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    body.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    body.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};

    #[test]
    fn finds_a_connection_both_ways_and_not_a_made_up_one_in_either_family() {
        for loopback in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ] {
            let listener = TcpListener::bind((loopback, 0)).unwrap();
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (_server, _) = listener.accept().unwrap();
            let (local, remote) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
            assert!(
                holds_tcp_connection(local, remote).unwrap(),
                "the client's end over {loopback}"
            );
            assert!(
                holds_tcp_connection(remote, local).unwrap(),
                "the server's end over {loopback}"
            );
            let elsewhere = SocketAddr::new(local.ip(), local.port().wrapping_add(1));
            assert!(!holds_tcp_connection(elsewhere, remote).unwrap());
        }
    }
}
