//! Where a field sits in one of the running kernel's structures, read from
//! its BTF (`/sys/kernel/btf/vmlinux`). The relay verdict reads a field of
//! `struct tcp_sock` whose offset changes between kernel builds; Rust BPF
//! programs have no CO-RE relocations, so the agent finds the offset here
//! and hands it to the program as a constant.
//!
//! Only what the search needs is decoded: each type record's size (to step
//! to the next), struct and union members, and the chain from a member's
//! type to the integer behind it.

/// Why a field's offset could not be found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF (bad magic or header)")]
    Header,
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("type {0} has unknown kind {1}")]
    UnknownKind(u32, u32),
    #[error("no struct {0}")]
    NoStruct(String),
    #[error("struct {structure} has no field {field}")]
    NoField { structure: String, field: String },
    #[error("{structure}.{field} is not a {size}-byte integer at a byte offset")]
    WrongShape {
        structure: String,
        field: String,
        size: u32,
    },
}

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
/// `struct btf_type`: name offset, info, size or type.
const TYPE_LEN: usize = 12;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// The byte offset of `structure.field`, which must be an integer of `size`
/// bytes; fields of anonymous struct or union members count as the
/// structure's own, as in C.
pub fn field_offset(btf: &[u8], structure: &str, field: &str, size: u32) -> Result<u32, BtfError> {
    let types = Types::parse(btf)?;
    let id = types
        .find(|record| {
            record.kind() == KIND_STRUCT && types.name(record.name_offset()) == Some(structure)
        })
        .ok_or_else(|| BtfError::NoStruct(structure.into()))?;
    let (bits, type_id) = types.member(id, field).ok_or_else(|| BtfError::NoField {
        structure: structure.into(),
        field: field.into(),
    })?;
    if bits % 8 != 0 || types.integer_size(type_id) != Some(size) {
        return Err(BtfError::WrongShape {
            structure: structure.into(),
            field: field.into(),
            size,
        });
    }
    Ok(bits / 8)
}

/// The type and string sections, with where each type record starts (type
/// ids count from 1).
struct Types<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    starts: Vec<usize>,
}

/// One type record: the common part, then `vlen` kind-specific entries.
struct Record<'a>(&'a [u8]);

impl Record<'_> {
    fn word(&self, index: usize) -> u32 {
        u32_at(self.0, index * 4).unwrap_or(0)
    }
    fn name_offset(&self) -> u32 {
        self.word(0)
    }
    fn kind(&self) -> u32 {
        (self.word(1) >> 24) & 0x1f
    }
    fn vlen(&self) -> usize {
        (self.word(1) & 0xffff) as usize
    }
    /// Member offsets hold a bitfield's width in the top byte.
    fn kind_flag(&self) -> bool {
        self.word(1) >> 31 == 1
    }
    /// The size, for integers, structs and unions; else the type referred to.
    fn size_or_type(&self) -> u32 {
        self.word(2)
    }
}

impl<'a> Types<'a> {
    fn parse(btf: &'a [u8]) -> Result<Self, BtfError> {
        let header = |index: usize| u32_at(btf, 8 + index * 4).ok_or(BtfError::Header);
        if btf.get(..2) != Some(&MAGIC.to_ne_bytes()[..]) {
            return Err(BtfError::Header);
        }
        let header_len = u32_at(btf, 4).ok_or(BtfError::Header)? as usize;
        let section = |offset: u32, len: u32| {
            let start = header_len.checked_add(offset as usize)?;
            btf.get(start..start.checked_add(len as usize)?)
        };
        if header_len < HEADER_LEN {
            return Err(BtfError::Header);
        }
        let types = section(header(0)?, header(1)?).ok_or(BtfError::Header)?;
        let strings = section(header(2)?, header(3)?).ok_or(BtfError::Header)?;
        let mut starts = Vec::new();
        let mut at = 0;
        while at < types.len() {
            let record = Record(
                types
                    .get(at..at + TYPE_LEN)
                    .ok_or(BtfError::Truncated(at))?,
            );
            // Each kind's entries after the common part, as in the
            // kernel's btf.h.
            let entries = match record.kind() {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * record.vlen(),
                KIND_ENUM | KIND_FUNC_PROTO => 8 * record.vlen(),
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                kind => return Err(BtfError::UnknownKind(starts.len() as u32 + 1, kind)),
            };
            starts.push(at);
            at += TYPE_LEN + entries;
        }
        if at != types.len() {
            return Err(BtfError::Truncated(types.len()));
        }
        Ok(Self {
            types,
            strings,
            starts,
        })
    }

    fn record(&self, id: u32) -> Option<Record<'a>> {
        let start = *self.starts.get((id as usize).checked_sub(1)?)?;
        let end = self
            .starts
            .get(id as usize)
            .copied()
            .unwrap_or(self.types.len());
        Some(Record(&self.types[start..end]))
    }

    fn name(&self, offset: u32) -> Option<&'a str> {
        let tail = self.strings.get(offset as usize..)?;
        let end = tail.iter().position(|&byte| byte == 0)?;
        std::str::from_utf8(&tail[..end]).ok()
    }

    /// The id of the first type record `wanted` accepts.
    fn find(&self, wanted: impl Fn(&Record<'a>) -> bool) -> Option<u32> {
        (1..=self.starts.len() as u32).find(|&id| self.record(id).is_some_and(|r| wanted(&r)))
    }

    /// The bit offset and type of the member `name` of the struct or union
    /// `id`, looking into anonymous members.
    fn member(&self, id: u32, name: &str) -> Option<(u32, u32)> {
        let record = self.record(id)?;
        (0..record.vlen()).find_map(|index| {
            let word = |n| record.word(3 + index * 3 + n);
            let (name_offset, type_id, offset) = (word(0), word(1), word(2));
            let bits = if record.kind_flag() {
                offset & 0x00ff_ffff
            } else {
                offset
            };
            match self.name(name_offset) {
                Some(member) if member == name => Some((bits, type_id)),
                Some("") => {
                    let inner = self.record(type_id)?;
                    if !matches!(inner.kind(), KIND_STRUCT | KIND_UNION) {
                        return None;
                    }
                    let (inner_bits, inner_type) = self.member(type_id, name)?;
                    Some((bits + inner_bits, inner_type))
                }
                _ => None,
            }
        })
    }

    /// The size of the integer behind `id`, through typedefs and qualifiers.
    fn integer_size(&self, mut id: u32) -> Option<u32> {
        // A bound on the chain: BTF from a broken kernel could loop.
        for _ in 0..32 {
            let record = self.record(id)?;
            match record.kind() {
                KIND_INT => return Some(record.size_or_type()),
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = record.size_or_type();
                }
                _ => return None,
            }
        }
        None
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF from type records (as words) and a string section.
    fn btf(types: &[&[u32]], strings: &[u8]) -> Vec<u8> {
        let types: Vec<u8> = types
            .iter()
            .flat_map(|record| record.iter())
            .flat_map(|word| word.to_ne_bytes())
            .collect();
        let mut out = Vec::new();
        out.extend(MAGIC.to_ne_bytes());
        out.extend([1, 0]);
        for word in [HEADER_LEN as u32, 0, types.len() as u32, types.len() as u32] {
            out.extend(word.to_ne_bytes());
        }
        out.extend((strings.len() as u32).to_ne_bytes());
        out.extend(types);
        out.extend(strings);
        out
    }

    const fn info(kind: u32, vlen: u32) -> u32 {
        kind << 24 | vlen
    }

    /// Strings: 1 "tcp_sock", 10 "bytes_acked", 22 "u64", 26 "snd_una",
    /// 34 "other".
    const STRINGS: &[u8] = b"\0tcp_sock\0bytes_acked\0u64\0snd_una\0other\0";

    fn kernel_like() -> Vec<u8> {
        btf(
            &[
                // 1: unsigned long long, 8 bytes.
                &[0, info(KIND_INT, 0), 8, 64],
                // 2: typedef u64 -> 1.
                &[22, info(KIND_TYPEDEF, 0), 1],
                // 3: int, 4 bytes.
                &[0, info(KIND_INT, 0), 4, 32],
                // 4: an anonymous struct { u64 bytes_acked at bit 64 }.
                &[0, info(KIND_STRUCT, 1), 16, 10, 2, 64],
                // 5: struct tcp_sock { int snd_una at 0; anonymous at bit 128 }.
                &[1, info(KIND_STRUCT, 2), 32, 26, 3, 0, 0, 4, 128],
                // 6: struct other { int bytes_acked at 0 }.
                &[34, info(KIND_STRUCT, 1), 4, 10, 3, 0],
            ],
            STRINGS,
        )
    }

    #[test]
    fn a_field_in_an_anonymous_member_is_found_through_the_typedef() {
        assert_eq!(
            field_offset(&kernel_like(), "tcp_sock", "bytes_acked", 8),
            Ok(24)
        );
    }

    #[test]
    fn a_missing_structure_or_field_or_a_field_of_another_size_is_named() {
        let btf = kernel_like();
        assert_eq!(
            field_offset(&btf, "udp_sock", "bytes_acked", 8),
            Err(BtfError::NoStruct("udp_sock".into()))
        );
        let error = field_offset(&btf, "tcp_sock", "bytes_sent", 8).unwrap_err();
        assert_eq!(error.to_string(), "struct tcp_sock has no field bytes_sent");
        let error = field_offset(&btf, "other", "bytes_acked", 8).unwrap_err();
        assert_eq!(
            error.to_string(),
            "other.bytes_acked is not a 8-byte integer at a byte offset"
        );
    }

    #[test]
    fn damaged_btf_is_refused() {
        let btf = kernel_like();
        assert_eq!(
            field_offset(&btf[..10], "tcp_sock", "bytes_acked", 8),
            Err(BtfError::Header)
        );
        let mut unknown = btf.clone();
        unknown[HEADER_LEN + 7] = 0x1f;
        assert_eq!(
            field_offset(&unknown, "tcp_sock", "bytes_acked", 8),
            Err(BtfError::UnknownKind(1, 0x1f))
        );
    }

    #[test]
    fn the_running_kernel_has_tcp_sock_bytes_acked() {
        let btf = std::fs::read("/sys/kernel/btf/vmlinux")
            .expect("the kernel's BTF at /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF)");
        let offset = field_offset(&btf, "tcp_sock", "bytes_acked", 8).unwrap();
        // Past the embedded inet_connection_sock, which is over 1 KiB.
        assert!((1024..4096).contains(&offset), "{offset}");
    }
}
