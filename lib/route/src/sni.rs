//! The server name a TLS client asks for, read from the first bytes of its
//! connection (the ClientHello's `server_name` extension), so a gateway
//! can choose a server, or pass the connection on whole, before any TLS.

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientHello {
    /// A ClientHello, naming this server (none: it names no server).
    Complete(Option<String>),
    /// A ClientHello has begun; its end is not read yet.
    Incomplete,
    /// Not a TLS ClientHello.
    NotTls,
}

/// TLS record type of handshake messages, and the ClientHello's type.
const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
/// The `server_name` extension and its one name type (host_name).
const SERVER_NAME: u16 = 0;
const HOST_NAME: u8 = 0;
/// The largest ClientHello read: the handshake message may span records,
/// but not without end.
pub const MAX_CLIENT_HELLO: usize = 64 << 10;

/// Reads the ClientHello at the start of `bytes`.
pub fn client_hello(bytes: &[u8]) -> ClientHello {
    // The handshake message, joined from the records that carry it.
    let mut message = Vec::new();
    let mut rest = bytes;
    loop {
        if rest.len() < 5 {
            return ClientHello::Incomplete;
        }
        if rest[0] != HANDSHAKE || rest[1] != 3 {
            return ClientHello::NotTls;
        }
        let length = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        let Some(fragment) = rest.get(5..5 + length) else {
            return ClientHello::Incomplete;
        };
        message.extend_from_slice(fragment);
        rest = &rest[5 + length..];
        if message.len() >= 4 {
            if message[0] != CLIENT_HELLO {
                return ClientHello::NotTls;
            }
            let wanted = 4
                + (usize::from(message[1]) << 16
                    | usize::from(message[2]) << 8
                    | usize::from(message[3]));
            if message.len() >= wanted {
                return match server_name(&message[4..wanted]) {
                    Some(name) => ClientHello::Complete(name),
                    None => ClientHello::NotTls,
                };
            }
            if wanted > MAX_CLIENT_HELLO {
                return ClientHello::NotTls;
            }
        }
    }
}

/// The host name of a ClientHello's body, or `None` when it is malformed.
fn server_name(body: &[u8]) -> Option<Option<String>> {
    let mut reader = Reader(body);
    reader.take(2 + 32)?; // version, random
    let session = reader.u8()?;
    reader.take(usize::from(session))?;
    let suites = reader.u16()?;
    reader.take(usize::from(suites))?;
    let compression = reader.u8()?;
    reader.take(usize::from(compression))?;
    if reader.0.is_empty() {
        return Some(None); // no extensions
    }
    let length = reader.u16()?;
    let mut extensions = Reader(reader.take(usize::from(length))?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let length = extensions.u16()?;
        let data = extensions.take(usize::from(length))?;
        if kind != SERVER_NAME {
            continue;
        }
        let mut list = Reader(data);
        let length = list.u16()?;
        let mut names = Reader(list.take(usize::from(length))?);
        while !names.0.is_empty() {
            let kind = names.u8()?;
            let length = names.u16()?;
            let name = names.take(usize::from(length))?;
            if kind == HOST_NAME {
                let name = std::str::from_utf8(name).ok()?;
                return Some(Some(name.to_ascii_lowercase()));
            }
        }
    }
    Some(None)
}

/// Big-endian fields off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(taken)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let bytes = self.take(2)?;
        Some(u16::from_be_bytes([bytes[0], bytes[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as a client writes it, naming `name` (if any), with
    /// an extension before the name, in one record or split over several
    /// records of `split` bytes.
    fn hello(name: Option<&str>, split: usize) -> Vec<u8> {
        let mut extensions = vec![0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]; // ec_point_formats
        if let Some(name) = name {
            let name = name.as_bytes();
            let entry_len = u16::try_from(name.len() + 3).unwrap();
            let ext_len = entry_len + 2;
            extensions.extend_from_slice(&SERVER_NAME.to_be_bytes());
            extensions.extend_from_slice(&ext_len.to_be_bytes());
            extensions.extend_from_slice(&entry_len.to_be_bytes());
            extensions.push(HOST_NAME);
            extensions.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
            extensions.extend_from_slice(name);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]); // random
        body.push(0); // no session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&u16::try_from(extensions.len()).unwrap().to_be_bytes());
        body.extend_from_slice(&extensions);
        let mut message = vec![CLIENT_HELLO, 0];
        message.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        message.extend_from_slice(&body);
        message
            .chunks(split)
            .flat_map(|fragment| {
                let mut record = vec![HANDSHAKE, 3, 1];
                record.extend_from_slice(&u16::try_from(fragment.len()).unwrap().to_be_bytes());
                record.extend_from_slice(fragment);
                record
            })
            .collect()
    }

    #[test]
    fn the_server_name_is_read_once_the_whole_hello_is() {
        let bytes = hello(Some("Shop.Example.com"), 1 << 14);
        assert_eq!(
            client_hello(&bytes),
            ClientHello::Complete(Some("shop.example.com".into()))
        );
        for cut in [0, 3, 5, 20, bytes.len() - 1] {
            assert_eq!(
                client_hello(&bytes[..cut]),
                ClientHello::Incomplete,
                "{cut}"
            );
        }
        // Records that follow (the client's early data) change nothing.
        let mut more = bytes.clone();
        more.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
        assert_eq!(
            client_hello(&more),
            ClientHello::Complete(Some("shop.example.com".into()))
        );
    }

    #[test]
    fn a_hello_split_over_records_or_naming_no_server_is_read() {
        let split = hello(Some("a.example"), 10);
        assert_eq!(
            client_hello(&split),
            ClientHello::Complete(Some("a.example".into()))
        );
        assert_eq!(
            client_hello(&hello(None, 1 << 14)),
            ClientHello::Complete(None)
        );
    }

    #[test]
    fn plaintext_and_malformed_hellos_are_not_tls() {
        assert_eq!(client_hello(b"GET / HTTP/1.1\r\n\r\n"), ClientHello::NotTls);
        let mut bad = hello(Some("a.example"), 1 << 14);
        // The extensions claim more bytes than the message holds: their
        // length follows the record and message headers (9 bytes), the
        // version and random (34), session id, suites and compression (7).
        bad[50..52].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(client_hello(&bad), ClientHello::NotTls);
        // A handshake message that is no ClientHello.
        let mut server_hello = hello(Some("a.example"), 1 << 14);
        server_hello[5] = 2;
        assert_eq!(client_hello(&server_hello), ClientHello::NotTls);
    }
}
