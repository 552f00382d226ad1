//! The CA's one request, as Istio's proxies and CAs speak it: Istio's
//! `istio.v1.auth.IstioCertificateService/CreateCertificate`, gRPC over
//! HTTP/2 on the CA's TLS port, the caller authenticated by its bearer
//! token. A node agent asks for its pods' identities as ztunnel does, with
//! `ImpersonatedIdentity` in the request's metadata; a proxy for one
//! workload names its identity in the signing request only. The answer's chain is
//! the leaf, its intermediates, then the root, as istiod sends it.
//!
//! Three small messages need no protobuf compiler: they are encoded here,
//! with protobuf's wire format, and any field they do not know is skipped.

use bytes::{BufMut, Bytes, BytesMut};

pub const CREATE_CERTIFICATE_PATH: &str =
    "/istio.v1.auth.IstioCertificateService/CreateCertificate";
/// The metadata key naming the identity a node proxy asks for.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// `IstioCertificateRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateRequest {
    /// A PKCS#10 request for the caller's own key, PEM (field 1).
    pub csr: String,
    /// How long the certificate should live, in seconds; 0: the CA's
    /// choice (field 3).
    pub validity_seconds: i64,
    /// The identity asked for on a workload's behalf (field 4, the
    /// `google.protobuf.Struct` metadata's `ImpersonatedIdentity`).
    pub impersonated_identity: Option<String>,
}

/// `IstioCertificateResponse`: PEM certificates, leaf first, root last
/// (field 1, repeated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateResponse {
    pub cert_chain: Vec<String>,
}

/// gRPC's status codes that the CA answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcCode {
    Ok = 0,
    InvalidArgument = 3,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Unauthenticated = 16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed gRPC message: {0}")]
pub struct DecodeError(&'static str);

// Protobuf's wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LENGTH_DELIMITED: u8 = 2;
const FIXED32: u8 = 5;

impl CertificateRequest {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        put_bytes(&mut out, 1, self.csr.as_bytes());
        if self.validity_seconds != 0 {
            put_key(&mut out, 3, VARINT);
            // int64: two's complement as a 64-bit varint.
            put_varint(&mut out, self.validity_seconds as u64);
        }
        if let Some(identity) = &self.impersonated_identity {
            // Value { string_value (3) }
            let mut value = BytesMut::new();
            put_bytes(&mut value, 3, identity.as_bytes());
            // Struct.fields (1): a map entry { key (1), value (2) }
            let mut entry = BytesMut::new();
            put_bytes(&mut entry, 1, IMPERSONATED_IDENTITY.as_bytes());
            put_bytes(&mut entry, 2, &value);
            let mut metadata = BytesMut::new();
            put_bytes(&mut metadata, 1, &entry);
            put_bytes(&mut out, 4, &metadata);
        }
        out.freeze()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut request = Self::default();
        for field in Fields(bytes) {
            match field? {
                (1, Field::Bytes(csr)) => request.csr = text(csr)?,
                (3, Field::Varint(seconds)) => request.validity_seconds = seconds as i64,
                (4, Field::Bytes(metadata)) => {
                    if let Some(identity) = struct_string(metadata, IMPERSONATED_IDENTITY)? {
                        request.impersonated_identity = Some(identity);
                    }
                }
                _ => {}
            }
        }
        Ok(request)
    }
}

impl CertificateResponse {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        for certificate in &self.cert_chain {
            put_bytes(&mut out, 1, certificate.as_bytes());
        }
        out.freeze()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut response = Self::default();
        for field in Fields(bytes) {
            if let (1, Field::Bytes(certificate)) = field? {
                response.cert_chain.push(text(certificate)?);
            }
        }
        Ok(response)
    }
}

/// A message as gRPC frames it on the stream: uncompressed, its length
/// first.
pub fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// The one message of a unary call's body.
pub fn unframe(body: &[u8]) -> Result<&[u8], DecodeError> {
    let [compressed, a, b, c, d, message @ ..] = body else {
        return Err(DecodeError("shorter than gRPC's frame header"));
    };
    if *compressed != 0 {
        return Err(DecodeError("compressed, which was not offered"));
    }
    let length = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
    message
        .get(..length)
        .filter(|_| message.len() == length)
        .ok_or(DecodeError("its length is not the frame's"))
}

/// `grpc-message` as gRPC carries it: percent-encoded beyond printable
/// ASCII.
pub fn encode_message(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b' '..=b'~' if byte != b'%' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// [`encode_message`] undone; a malformed escape is kept as it is.
pub fn decode_message(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn put_key(out: &mut BytesMut, field: u32, wire_type: u8) {
    put_varint(out, u64::from(field << 3 | u32::from(wire_type)));
}

fn put_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

fn put_bytes(out: &mut BytesMut, field: u32, bytes: &[u8]) {
    put_key(out, field, LENGTH_DELIMITED);
    put_varint(out, bytes.len() as u64);
    out.put_slice(bytes);
}

fn text(bytes: &[u8]) -> Result<String, DecodeError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError("a string that is not UTF-8"))
}

/// The string value of `key` in a `google.protobuf.Struct`.
fn struct_string(message: &[u8], key: &str) -> Result<Option<String>, DecodeError> {
    for field in Fields(message) {
        let (1, Field::Bytes(entry)) = field? else {
            continue;
        };
        let (mut name, mut value) = (None, None);
        for part in Fields(entry) {
            match part? {
                (1, Field::Bytes(bytes)) => name = Some(bytes),
                (2, Field::Bytes(bytes)) => value = Some(bytes),
                _ => {}
            }
        }
        if name != Some(key.as_bytes()) {
            continue;
        }
        for kind in Fields(value.unwrap_or_default()) {
            if let (3, Field::Bytes(string)) = kind? {
                return text(string).map(Some);
            }
        }
    }
    Ok(None)
}

/// One field's value, by wire type.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// A message's fields, in order, as (number, value).
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Field<'a>), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let field = self.field();
        if field.is_err() {
            // Nothing after a malformed field can be read.
            self.0 = &[];
        }
        Some(field)
    }
}

impl<'a> Fields<'a> {
    fn field(&mut self) -> Result<(u32, Field<'a>), DecodeError> {
        let key = self.varint()?;
        let number =
            u32::try_from(key >> 3).map_err(|_| DecodeError("a field number too large"))?;
        let value = match (key & 7) as u8 {
            VARINT => Field::Varint(self.varint()?),
            LENGTH_DELIMITED => {
                let length = usize::try_from(self.varint()?)
                    .map_err(|_| DecodeError("a length too large"))?;
                Field::Bytes(self.take(length)?)
            }
            FIXED64 => {
                self.take(8)?;
                Field::Fixed
            }
            FIXED32 => {
                self.take(4)?;
                Field::Fixed
            }
            _ => return Err(DecodeError("an unknown wire type")),
        };
        Ok((number, value))
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self
                .0
                .split_first()
                .ok_or(DecodeError("a varint cut short"))?;
            self.0 = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError("a varint over ten bytes"))
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8], DecodeError> {
        if length > self.0.len() {
            return Err(DecodeError("a field longer than its message"));
        }
        let (taken, rest) = self.0.split_at(length);
        self.0 = rest;
        Ok(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reads_back_as_it_was_written_with_its_wire_bytes_as_protobufs() {
        let request = CertificateRequest {
            csr: "CSR".into(),
            validity_seconds: 86400,
            impersonated_identity: Some("spiffe://td/ns/a/sa/b".into()),
        };
        let encoded = request.encode();
        // csr: key 1/LEN, 3 bytes; validity: key 3/VARINT, 86400 as a varint.
        assert_eq!(&encoded[..5], b"\x0a\x03CSR");
        assert_eq!(&encoded[5..9], b"\x18\x80\xa3\x05");
        assert_eq!(CertificateRequest::decode(&encoded).unwrap(), request);
        let bare = CertificateRequest {
            csr: "x".into(),
            ..Default::default()
        };
        assert_eq!(CertificateRequest::decode(&bare.encode()).unwrap(), bare);
    }

    #[test]
    fn unknown_fields_are_skipped_and_malformed_input_is_refused() {
        let mut with_more = BytesMut::new();
        put_key(&mut with_more, 9, FIXED64);
        with_more.put_u64(7);
        put_key(&mut with_more, 10, VARINT);
        put_varint(&mut with_more, 300);
        with_more.extend_from_slice(
            &CertificateResponse {
                cert_chain: vec!["leaf".into(), "root".into()],
            }
            .encode(),
        );
        put_key(&mut with_more, 11, FIXED32);
        with_more.put_u32(1);
        let response = CertificateResponse::decode(&with_more).unwrap();
        assert_eq!(response.cert_chain, ["leaf", "root"]);
        for (bytes, why) in [
            (&b"\x0a\x05abc"[..], "a field longer than its message"),
            (&b"\x0a"[..], "a varint cut short"),
            (&b"\x0b"[..], "an unknown wire type"),
            (&b"\x0a\x01\xff"[..], "a string that is not UTF-8"),
        ] {
            assert_eq!(CertificateResponse::decode(bytes), Err(DecodeError(why)));
        }
    }

    #[test]
    fn status_messages_are_percent_encoded_beyond_printable_ascii() {
        let text = "no pod runs as spiffe://td/ns/a/sa/b: 100% sure, naïve";
        let encoded = encode_message(text);
        assert_eq!(
            encoded,
            "no pod runs as spiffe://td/ns/a/sa/b: 100%25 sure, na%C3%AFve"
        );
        assert_eq!(decode_message(&encoded), text);
        assert_eq!(decode_message("50%"), "50%");
    }

    #[test]
    fn a_message_is_framed_as_grpc_frames_it() {
        let framed = frame(b"abc");
        assert_eq!(&framed[..], b"\x00\x00\x00\x00\x03abc");
        assert_eq!(unframe(&framed).unwrap(), b"abc");
        assert!(unframe(b"\x01\x00\x00\x00\x00").is_err());
        assert!(unframe(b"\x00\x00\x00\x00\x05abc").is_err());
        assert!(unframe(b"\x00\x00").is_err());
    }
}
