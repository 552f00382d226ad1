//! Source ports for the agent's connections to a pod's apps, which it makes
//! from each caller's own address.
//!
//! - Parity: a caller's Linux kernel picks connect ports of its range's
//!   low parity first (even, in the default 32768-60999), so the agent
//!   takes the other parity first, as bind does. Its connection from
//!   caller:port to the app is, in the pod's namespace, the mirror of a
//!   connection from the caller itself on that port; sharing a port, the
//!   SYN of one lands on the other's socket and is dropped until that one
//!   ends.
//! - Speed: these connections leave their ports in TIME_WAIT for a minute
//!   (the agent passes the caller's half-close on, so it closes first).
//!   Bound to port 0, each had the kernel search for a free port, and once
//!   a half of the range was taken (about 14,000 connections in a minute
//!   from one caller) every bind scanned that whole half under its locks:
//!   4 ms per connection on the runtime thread; a burst of 1,000
//!   connections slowed from 0.3 s to 4 s. The agent walks the range
//!   itself, on from the last port it took: ports leave TIME_WAIT in the
//!   order they were taken, so the first port tried is nearly always free.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use socket2::Socket;

const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
/// Ports tried before the kernel is left to search.
const MAX_TRIES: usize = 64;

/// One pod's source ports.
pub struct SourcePorts {
    /// The pod namespace's ephemeral range, read on first use: by then the
    /// runtime has applied the pod's sysctls. `None` if it could not be
    /// read; the kernel then picks.
    range: OnceLock<Option<EphemeralPorts>>,
    /// Ports handed out so far (from a start of its own): the next port's
    /// place in its half of the range.
    next: AtomicU32,
}

impl Default for SourcePorts {
    fn default() -> Self {
        // A restarted agent starts elsewhere than the one before it, whose
        // ports may still be in TIME_WAIT.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.subsec_nanos());
        Self {
            range: OnceLock::new(),
            next: AtomicU32::new(start),
        }
    }
}

impl SourcePorts {
    /// Binds `socket` to `ip` and a free port of the range. Must run inside
    /// the pod's namespace, whose range it reads.
    pub fn bind(&self, socket: &Socket, ip: IpAddr) -> io::Result<()> {
        let range = self.range.get_or_init(|| {
            EphemeralPorts::read()
                .inspect_err(|error| {
                    tracing::warn!(%error, "cannot read the pod's ephemeral port range; the kernel picks source ports")
                })
                .ok()
        });
        if let Some(range) = range {
            for half in [Half::OtherThanCallers, Half::Callers] {
                for port in range.ports_from(&self.next, half).take(MAX_TRIES) {
                    match socket.bind(&SocketAddr::new(ip, port).into()) {
                        Err(error) if error.kind() == io::ErrorKind::AddrInUse => continue,
                        bound => return bound,
                    }
                }
            }
        }
        socket.bind(&SocketAddr::new(ip, 0).into())
    }
}

/// The ports the kernel hands out for connections, as a namespace's sysctls
/// set them.
#[derive(Debug, PartialEq, Eq)]
struct EphemeralPorts {
    range: RangeInclusive<u16>,
    reserved: Vec<RangeInclusive<u16>>,
}

impl EphemeralPorts {
    fn read() -> io::Result<Self> {
        let range = std::fs::read_to_string(PORT_RANGE)?;
        let reserved = std::fs::read_to_string(RESERVED_PORTS)?;
        Self::parse(&range, &reserved).map_err(io::Error::other)
    }

    /// From `ip_local_port_range` ("32768\t60999") and
    /// `ip_local_reserved_ports` ("8080,9000-9010", or empty).
    fn parse(range: &str, reserved: &str) -> Result<Self, String> {
        let port = |text: &str| {
            text.trim()
                .parse::<u16>()
                .map_err(|_| format!("{text:?} is not a port"))
        };
        let Some((first, last)) = range.split_once(char::is_whitespace) else {
            return Err(format!("{range:?} is not a port range"));
        };
        let (first, last) = (port(first)?, port(last)?);
        if first == 0 || first > last {
            return Err(format!("{range:?} is not a port range"));
        }
        let reserved = reserved
            .trim()
            .split(',')
            .filter(|entry| !entry.is_empty())
            .map(|entry| match entry.split_once('-') {
                Some((low, high)) => Ok(port(low)?..=port(high)?),
                None => port(entry).map(|port| port..=port),
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            range: first..=last,
            reserved,
        })
    }

    /// The range's ports in `half`, from `next` on, round and round,
    /// skipping the reserved; each port handed out moves `next` past it, so
    /// callers at once never try the same port.
    fn ports_from<'a>(&'a self, next: &'a AtomicU32, half: Half) -> impl Iterator<Item = u16> + 'a {
        let (low, high) = (u32::from(*self.range.start()), u32::from(*self.range.end()));
        let first = low + half as u32;
        let count = if first > high {
            0
        } else {
            (high - first) / 2 + 1
        };
        std::iter::repeat_with(move || {
            let port = first + 2 * (next.fetch_add(1, Ordering::Relaxed) % count);
            u16::try_from(port).expect("within a range of u16 ports")
        })
        .take(count as usize)
        .filter(|port| !self.reserved.iter().any(|reserved| reserved.contains(port)))
    }
}

/// A half of the range, by parity: a caller's kernel connects from ports
/// of the range's low parity first.
#[derive(Debug, Clone, Copy)]
enum Half {
    Callers = 0,
    OtherThanCallers = 1,
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::{Domain, Type};

    #[test]
    fn sysctls_are_read_and_bad_ones_named() {
        assert_eq!(
            EphemeralPorts::parse("32768\t60999\n", "\n"),
            Ok(EphemeralPorts {
                range: 32768..=60999,
                reserved: vec![],
            })
        );
        assert_eq!(
            EphemeralPorts::parse("1024 2048", "1500,1600-1700\n")
                .unwrap()
                .reserved,
            vec![1500..=1500, 1600..=1700]
        );
        for (range, reserved) in [
            ("60999 32768", ""),
            ("0 10", ""),
            ("32768", ""),
            ("1 2", "x"),
        ] {
            let error = EphemeralPorts::parse(range, reserved).unwrap_err();
            assert!(error.contains(range) || error.contains(reserved), "{error}");
        }
    }

    #[test]
    fn ports_go_round_the_half_from_the_last_one_taken_past_reserved_ones() {
        let ports = EphemeralPorts::parse("100 110", "103-105").unwrap();
        let next = AtomicU32::new(1);
        let taken: Vec<u16> = ports.ports_from(&next, Half::OtherThanCallers).collect();
        assert_eq!(taken, [107, 109, 101]);
        // Another caller carries on where that one stopped.
        assert_eq!(
            ports.ports_from(&next, Half::OtherThanCallers).next(),
            Some(107)
        );
        let callers: Vec<u16> = ports.ports_from(&next, Half::Callers).collect();
        assert_eq!(callers, [106, 108, 110, 100, 102]);
        let one_port = EphemeralPorts::parse("100 100", "").unwrap();
        assert_eq!(
            one_port.ports_from(&next, Half::OtherThanCallers).count(),
            0
        );
    }

    #[test]
    fn a_port_in_use_is_passed_over_and_then_the_kernel_picks() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let ports = SourcePorts {
            range: OnceLock::from(Some(EphemeralPorts {
                range: port..=port,
                reserved: vec![],
            })),
            next: AtomicU32::new(0),
        };
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        ports
            .bind(&socket, std::net::Ipv4Addr::LOCALHOST.into())
            .unwrap();
        let bound = socket.local_addr().unwrap().as_socket().unwrap().port();
        assert_ne!(bound, port);
        assert_eq!(ports.next.load(Ordering::Relaxed), 1, "tried once");
    }
}
