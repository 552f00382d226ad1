//! A connection's id as ztunnel sends one on each CONNECT: a W3C trace
//! context (`traceparent`). The source's proxy makes one per connection and
//! the destination's logs the one it received, so the two sides' lines of
//! one connection (Ambit's or ztunnel's) share its trace id.

/// `traceparent` (<https://www.w3.org/TR/trace-context/>), version 00.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub parent_id: u64,
    pub flags: u8,
}

impl TraceParent {
    /// A new connection's: random ids (never all zero, which the
    /// specification makes invalid), not sampled.
    pub fn random() -> Self {
        Self {
            trace_id: fastrand::u128(1..),
            parent_id: fastrand::u64(1..),
            flags: 0,
        }
    }

    /// A header's value, if it is a valid version-00 `traceparent`.
    pub fn parse(value: &str) -> Option<Self> {
        let mut fields = value.split('-');
        let mut field = |len: usize| {
            fields
                .next()
                .filter(|field| field.len() == len && field.bytes().all(|b| b.is_ascii_hexdigit()))
        };
        let version = field(2)?;
        let trace_id = u128::from_str_radix(field(32)?, 16).ok()?;
        let parent_id = u64::from_str_radix(field(16)?, 16).ok()?;
        let flags = u8::from_str_radix(field(2)?, 16).ok()?;
        let valid = version == "00" && fields.next().is_none() && trace_id != 0 && parent_id != 0;
        valid.then_some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The trace id as logs show it: 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_is_written_and_read_as_the_specification_says() {
        // The specification's own example.
        let example = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(example).unwrap();
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.to_string(), example);
        let random = TraceParent::random();
        assert_eq!(TraceParent::parse(&random.to_string()), Some(random));
        assert_ne!(random, TraceParent::random());
        for invalid in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(invalid), None, "{invalid:?}");
        }
    }
}
