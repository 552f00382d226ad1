//! DNS messages, as far as the mesh needs them (RFC 1035): the A query
//! for a ServiceEntry host the agent or a waypoint resolves and the
//! addresses in the answer, and an answer the agent builds for a query of
//! a name it knows. The codec is pure, bytes in and bytes out; [`resolve`]
//! sends the query and [`Resolver`] keeps the answers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
/// Header flags: a response, recursion desired and available.
const RESPONSE: u16 = 0x8000;
const RECURSION_DESIRED: u16 = 0x0100;
const RECURSION_AVAILABLE: u16 = 0x0080;
/// The largest message over UDP without EDNS.
pub const MAX_UDP_MESSAGE: usize = 512;
/// How long a resolver has to answer, and how often it is asked.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
const RESOLVE_TRIES: usize = 2;

/// A question of a query: its id, name (lower case, no final dot) and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub id: u16,
    pub name: String,
    pub qtype: u16,
}

/// An A query for `name`, recursion desired.
pub fn query(id: u16, name: &str) -> Result<Vec<u8>, String> {
    let mut message = Vec::with_capacity(32 + name.len());
    message.extend_from_slice(&id.to_be_bytes());
    message.extend_from_slice(&RECURSION_DESIRED.to_be_bytes());
    message.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question
    encode_name(name, &mut message)?;
    message.extend_from_slice(&TYPE_A.to_be_bytes());
    message.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(message)
}

fn encode_name(name: &str, out: &mut Vec<u8>) -> Result<(), String> {
    for label in name.trim_end_matches('.').split('.') {
        let length = u8::try_from(label.len())
            .ok()
            .filter(|length| (1..=63).contains(length))
            .ok_or_else(|| format!("{name:?} is not a DNS name"))?;
        out.push(length);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    Ok(())
}

/// The question of a query (its first), or `None` when `message` is not
/// a query Ambit can read.
pub fn parse_query(message: &[u8]) -> Option<Question> {
    let mut reader = Reader::new(message);
    let id = reader.u16()?;
    let flags = reader.u16()?;
    let questions = reader.u16()?;
    reader.skip(6)?;
    if flags & RESPONSE != 0 || questions == 0 {
        return None;
    }
    let name = reader.name()?;
    let qtype = reader.u16()?;
    Some(Question {
        id,
        name: name.to_ascii_lowercase(),
        qtype,
    })
}

/// The answer to `query` (its first question, echoed) with those of these
/// addresses it asks for: IPv4 ones for A, IPv6 ones for AAAA (none: an
/// empty answer, NOERROR, as for any other type), each for `ttl` seconds.
pub fn answer(query: &[u8], addresses: &[IpAddr], ttl: u32) -> Option<Vec<u8>> {
    let mut reader = Reader::new(query);
    let id = reader.u16()?;
    let flags = reader.u16()?;
    reader.skip(8)?;
    let question_start = reader.at;
    reader.name()?;
    let qtype = reader.u16()?;
    reader.skip(2)?;
    let question = &query[question_start..reader.at];
    let addresses: Vec<&IpAddr> = (addresses.iter())
        .filter(|address| match address {
            IpAddr::V4(_) => qtype == TYPE_A,
            IpAddr::V6(_) => qtype == TYPE_AAAA,
        })
        .collect();
    let count = u16::try_from(addresses.len()).ok()?;
    let mut message = Vec::with_capacity(12 + question.len() + 16 * addresses.len());
    message.extend_from_slice(&id.to_be_bytes());
    let flags = RESPONSE | (flags & RECURSION_DESIRED) | RECURSION_AVAILABLE;
    message.extend_from_slice(&flags.to_be_bytes());
    message.extend_from_slice(&1u16.to_be_bytes());
    message.extend_from_slice(&count.to_be_bytes());
    message.extend_from_slice(&[0, 0, 0, 0]);
    message.extend_from_slice(question);
    for address in addresses {
        let (kind, data) = match address {
            IpAddr::V4(address) => (TYPE_A, address.octets().to_vec()),
            IpAddr::V6(address) => (TYPE_AAAA, address.octets().to_vec()),
        };
        // The name, as a pointer to the question's (offset 12).
        message.extend_from_slice(&[0xc0, 12]);
        message.extend_from_slice(&kind.to_be_bytes());
        message.extend_from_slice(&CLASS_IN.to_be_bytes());
        message.extend_from_slice(&ttl.to_be_bytes());
        message.extend_from_slice(&(data.len() as u16).to_be_bytes());
        message.extend_from_slice(&data);
    }
    Some(message)
}

/// The A records of the answer to the query `id`, with the least TTL
/// among them; an error names what is wrong (another id, a failure code,
/// a truncated or malformed message).
pub fn addresses(message: &[u8], id: u16) -> Result<(Vec<Ipv4Addr>, u32), String> {
    let malformed = || "a malformed answer".to_string();
    let mut reader = Reader::new(message);
    if reader.u16().ok_or_else(malformed)? != id {
        return Err("an answer to another query".into());
    }
    let flags = reader.u16().ok_or_else(malformed)?;
    match flags & 0x000f {
        0 => {}
        3 => return Err("no such name".into()),
        code => return Err(format!("the server failed the query (code {code})")),
    }
    let questions = reader.u16().ok_or_else(malformed)?;
    let answers = reader.u16().ok_or_else(malformed)?;
    reader.skip(4).ok_or_else(malformed)?;
    for _ in 0..questions {
        reader.name().ok_or_else(malformed)?;
        reader.skip(4).ok_or_else(malformed)?;
    }
    let mut found = Vec::new();
    let mut least_ttl = u32::MAX;
    for _ in 0..answers {
        reader.name().ok_or_else(malformed)?;
        let kind = reader.u16().ok_or_else(malformed)?;
        let _class = reader.u16().ok_or_else(malformed)?;
        let ttl = reader.u32().ok_or_else(malformed)?;
        let length = usize::from(reader.u16().ok_or_else(malformed)?);
        let data = reader.take(length).ok_or_else(malformed)?;
        // A CNAME's target is answered in the A records that follow it.
        if let (TYPE_A, [a, b, c, d]) = (kind, data) {
            found.push(Ipv4Addr::new(*a, *b, *c, *d));
            least_ttl = least_ttl.min(ttl);
        }
    }
    Ok((found, least_ttl))
}

/// Asks `server` for the A records of `name`: the addresses and how long
/// they hold.
pub async fn resolve(server: SocketAddr, name: &str) -> std::io::Result<(Vec<Ipv4Addr>, u32)> {
    let id = fastrand::u16(..);
    let message = query(id, name).map_err(std::io::Error::other)?;
    let answered = exchange(server, &message).await?;
    addresses(&answered, id)
        .map_err(|error| std::io::Error::other(format!("{name} at the resolver {server}: {error}")))
}

/// A UDP socket of `server`'s family, on any address and port of it.
pub async fn udp_socket_for(server: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let unspecified = match server {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    tokio::net::UdpSocket::bind(unspecified).await
}

/// Sends the query `message` to `server` over UDP (twice at most, each
/// within two seconds) and returns its answer (the message with the same
/// id; anything else is dropped).
pub async fn exchange(server: SocketAddr, message: &[u8]) -> std::io::Result<Vec<u8>> {
    let id = message
        .get(..2)
        .ok_or_else(|| std::io::Error::other("no DNS message"))?;
    let socket = udp_socket_for(server).await?;
    socket.connect(server).await?;
    let mut buffer = [0u8; MAX_UDP_MESSAGE];
    for _ in 0..RESOLVE_TRIES {
        socket.send(message).await?;
        let received = tokio::time::timeout(RESOLVE_TIMEOUT, async {
            loop {
                let n = socket.recv(&mut buffer).await?;
                if buffer[..n].get(..2) == Some(id) {
                    return Ok::<_, std::io::Error>(buffer[..n].to_vec());
                }
            }
        })
        .await;
        if let Ok(answered) = received {
            return answered;
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("the resolver {server} did not answer"),
    ))
}

/// Names resolved for ServiceEntries of `resolution: DNS` (and, at a
/// waypoint, the hosts of DYNAMIC_DNS requests), each kept as
/// long as its answer says (between 1 and 300 seconds).
pub struct Resolver {
    /// The node's resolver; none: names cannot be resolved.
    server: Option<SocketAddr>,
    kept: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, Vec<Ipv4Addr>)>>,
}

/// The most names kept at once.
const MAX_KEPT: usize = 4096;

impl Resolver {
    pub fn new(server: Option<SocketAddr>) -> Self {
        Self {
            server,
            kept: std::sync::Mutex::default(),
        }
    }

    /// The resolver asked, if one is known.
    pub fn server(&self) -> Option<SocketAddr> {
        self.server
    }

    /// The IPv4 addresses of `name`.
    pub async fn addresses(&self, name: &str) -> Result<Vec<Ipv4Addr>, String> {
        let now = std::time::Instant::now();
        {
            let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((until, addresses)) = kept.get(name) {
                if *until > now {
                    return Ok(addresses.clone());
                }
            }
        }
        let server = self
            .server
            .ok_or_else(|| format!("{name}: no resolver is known (--dns-server)"))?;
        let (addresses, ttl) = resolve(server, name).await.map_err(|e| e.to_string())?;
        let ttl = Duration::from_secs(u64::from(ttl.clamp(1, 300)));
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() >= MAX_KEPT {
            kept.clear();
        }
        kept.insert(name.to_string(), (now + ttl, addresses.clone()));
        Ok(addresses)
    }
}

/// The machine's resolver: the first `nameserver` of /etc/resolv.conf.
pub fn system_nameserver() -> Option<SocketAddr> {
    nameserver(&std::fs::read_to_string("/etc/resolv.conf").ok()?)
}

/// The first `nameserver` of a resolv.conf, at port 53.
pub fn nameserver(resolv_conf: &str) -> Option<SocketAddr> {
    resolv_conf.lines().find_map(|line| {
        let address = line.trim().strip_prefix("nameserver")?.trim();
        let ip: std::net::IpAddr = address.parse().ok()?;
        Some(SocketAddr::new(ip, 53))
    })
}

/// Big-endian fields off a message, names with their compression pointers.
struct Reader<'a> {
    message: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(message: &'a [u8]) -> Self {
        Self { message, at: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let taken = self.message.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(taken)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(drop)
    }

    fn u16(&mut self) -> Option<u16> {
        let bytes = self.take(2)?;
        Some(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        let bytes = self.take(4)?;
        Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// A name at the reader's place (moved past it), pointers followed
    /// (backwards only, so a loop cannot run forever).
    fn name(&mut self) -> Option<String> {
        let mut labels: Vec<String> = Vec::new();
        let mut at = self.at;
        let mut jumped = false;
        loop {
            let length = *self.message.get(at)?;
            match length {
                0 => {
                    if !jumped {
                        self.at = at + 1;
                    }
                    return Some(labels.join("."));
                }
                l if l & 0xc0 == 0xc0 => {
                    let target =
                        usize::from(u16::from_be_bytes([l & 0x3f, *self.message.get(at + 1)?]));
                    if target >= at {
                        return None;
                    }
                    if !jumped {
                        self.at = at + 2;
                        jumped = true;
                    }
                    at = target;
                }
                l if l <= 63 => {
                    let label = self.message.get(at + 1..at + 1 + usize::from(l))?;
                    labels.push(std::str::from_utf8(label).ok()?.to_string());
                    at += 1 + usize::from(l);
                }
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_answered_and_the_answer_read() {
        let asked = query(0x1234, "API.external.example.").unwrap();
        let question = parse_query(&asked).unwrap();
        assert_eq!(
            question,
            Question {
                id: 0x1234,
                name: "api.external.example".into(),
                qtype: TYPE_A,
            }
        );
        let addresses_given = [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)];
        let ipv6: IpAddr = "fd00:96::60".parse().unwrap();
        let known: Vec<IpAddr> = (addresses_given.iter().copied().map(IpAddr::from))
            .chain([ipv6])
            .collect();
        // An A question gets the IPv4 addresses only.
        let answered = answer(&asked, &known, 30).unwrap();
        assert_eq!(
            addresses(&answered, 0x1234).unwrap(),
            (addresses_given.to_vec(), 30)
        );
        assert_eq!(
            addresses(&answered, 0x4321).unwrap_err(),
            "an answer to another query"
        );
        // An answer is not a query.
        assert_eq!(parse_query(&answered), None);
        let empty = answer(&asked, &[], 30).unwrap();
        assert!(addresses(&empty, 0x1234).unwrap().0.is_empty());
        // An AAAA question gets the IPv6 one, as an AAAA record (type,
        // class, TTL, length, address at the end of the message).
        let mut asked6 = asked.clone();
        let at = asked6.len() - 4;
        asked6[at..at + 2].copy_from_slice(&TYPE_AAAA.to_be_bytes());
        let answered6 = answer(&asked6, &known, 30).unwrap();
        assert_eq!(answered6[6..8], 1u16.to_be_bytes(), "one record");
        let IpAddr::V6(ipv6) = ipv6 else {
            unreachable!("an IPv6 address")
        };
        let record = &answered6[answered6.len() - 28..];
        assert_eq!(record[..4], [0xc0, 12, 0, 28]);
        assert_eq!(record[10..12], 16u16.to_be_bytes());
        assert_eq!(record[12..], ipv6.octets());
    }

    #[test]
    fn the_nodes_resolver_is_its_first_nameserver() {
        let conf = "# generated\nsearch cluster.local\nnameserver 10.96.0.10\nnameserver 8.8.8.8\n";
        assert_eq!(nameserver(conf), Some("10.96.0.10:53".parse().unwrap()));
        assert_eq!(nameserver("search x\n"), None);
    }

    #[test]
    fn failures_and_malformed_messages_are_named() {
        let asked = query(7, "gone.example").unwrap();
        let mut failed = answer(&asked, &[], 0).unwrap();
        failed[3] |= 3; // NXDOMAIN
        assert_eq!(addresses(&failed, 7).unwrap_err(), "no such name");
        let answered = answer(&asked, &[Ipv4Addr::LOCALHOST.into()], 5).unwrap();
        for cut in [1, 11, 20, answered.len() - 1] {
            assert!(addresses(&answered[..cut], 7).is_err(), "{cut}");
        }
        // A pointer forward (or to itself) could loop: refused.
        let mut looped = asked.clone();
        looped.truncate(12);
        looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(parse_query(&looped), None);
        assert!(query(1, "a..b").is_err());
        assert!(query(1, &"x".repeat(64)).is_err());
    }
}
