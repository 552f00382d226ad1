//! Listeners on every address of the host or pod, in whichever families it
//! has: the default of every port a proxy or the CA serves to others, so
//! they serve IPv4-only, dual-stack and IPv6-only clusters alike.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Socket, Type};

/// Every address: IPv6's unspecified one, on which [`tcp_listener`] takes
/// IPv4 too.
pub const EVERY_ADDRESS: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
/// Connections the kernel completes before they are accepted, as tokio's
/// own `bind` asks.
pub const BACKLOG: i32 = 1024;

/// A non-blocking TCP listener on `addr`, with SO_REUSEPORT if asked (a
/// process taking over from another binds beside it). On
/// [`EVERY_ADDRESS`] it takes IPv4 as well, whatever
/// `net.ipv6.bindv6only` says, and where the kernel has no IPv6 at all it
/// listens on IPv4's unspecified address instead.
pub fn tcp_listener(
    addr: SocketAddr,
    backlog: i32,
    reuse_port: bool,
) -> io::Result<std::net::TcpListener> {
    let every = addr.ip() == EVERY_ADDRESS;
    let socket = match Socket::new(Domain::for_address(addr), Type::STREAM, None) {
        Err(error) if every && error.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            let ipv4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port());
            return tcp_listener(ipv4, backlog, reuse_port);
        }
        socket => socket?,
    };
    if every {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn every_address_takes_both_families_on_one_port() {
        let listener = tcp_listener(SocketAddr::new(EVERY_ADDRESS, 0), 16, false).unwrap();
        let port = listener.local_addr().unwrap().port();
        for loopback in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ] {
            TcpStream::connect((loopback, port)).unwrap();
        }
    }

    #[test]
    fn a_given_address_is_the_only_one_served() {
        let listener = tcp_listener("127.0.0.1:0".parse().unwrap(), 16, true).unwrap();
        let port = listener.local_addr().unwrap().port();
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        assert!(TcpStream::connect((Ipv6Addr::LOCALHOST, port)).is_err());
    }
}
