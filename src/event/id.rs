//! Event ids: monotonic, sortable, and meaningful across restarts.
//!
//! An id is a `u64` made of the milliseconds since the Unix epoch in the high
//! 48 bits and a 16-bit sequence in the low bits. It is rendered as 16
//! lowercase hex digits so that the text form sorts like the number, which
//! lets `Last-Event-ID` be compared without knowing how it was produced, and a
//! process that restarts keeps issuing ids greater than the ones it issued
//! before (as long as the clock does not go back by more than the gap).

use std::fmt;
use std::str::FromStr;

/// The identifier of one accepted event, unique and increasing within a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId(u64);

impl EventId {
    /// Wraps a raw value (used by tests and the replay ring).
    pub const fn from_u64(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw numeric value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The millisecond this id was issued in (ids are `unix_ms << 16 | seq`).
    pub const fn unix_ms(self) -> u64 {
        self.0 >> 16
    }

    /// The smallest id that could be issued at `unix_ms`.
    pub const fn floor_at(unix_ms: u64) -> Self {
        Self(unix_ms << 16)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex().as_str())
    }
}

impl EventId {
    /// The id's text: 16 lowercase hexadecimal digits. Written for every
    /// event (its frame, its 202), so it is made by hand, not through the
    /// formatter's padding machinery.
    pub fn hex(self) -> HexId {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 16];
        let mut v = self.0;
        for d in out.iter_mut().rev() {
            *d = DIGITS[(v & 15) as usize];
            v >>= 4;
        }
        HexId(out)
    }
}

/// An [`EventId`]'s text, on the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HexId([u8; 16]);

impl HexId {
    /// The digits.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hexadecimal digits are ASCII")
    }
}

/// Why a text could not be read as an [`EventId`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("an event id is 1 to 16 hexadecimal digits")]
pub struct ParseEventIdError;

impl FromStr for EventId {
    type Err = ParseEventIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseEventIdError);
        }
        u64::from_str_radix(s, 16)
            .map(EventId)
            .map_err(|_| ParseEventIdError)
    }
}

/// Issues strictly increasing ids; not thread-safe by itself (the hub owns one
/// under its sequencing lock, with the ring, so that id order and ring order
/// agree; its shards keep delivery in that order).
#[derive(Debug, Default)]
pub struct IdGenerator {
    last: u64,
}

impl IdGenerator {
    /// Never hands out `floor` or anything below it again (a high-water
    /// mark from before a restart, in case the clock went back).
    pub fn raise_floor(&mut self, floor: EventId) {
        self.last = self.last.max(floor.0);
    }

    /// The last id handed out (or the floor).
    pub fn last(&self) -> EventId {
        EventId(self.last)
    }

    /// The next id for an event received at `unix_ms`: the time-based floor, or
    /// one more than the last id if the clock has not moved (or went back).
    pub fn next(&mut self, unix_ms: u64) -> EventId {
        let candidate = EventId::floor_at(unix_ms).0;
        self.last = candidate.max(self.last.saturating_add(1));
        EventId(self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_text_is_sixteen_lowercase_digits_as_the_formatter_writes_them() {
        for v in [0, 1, 0xabc, 0x0123_4567_89ab_cdef, u64::MAX] {
            let id = EventId::from_u64(v);
            assert_eq!(id.hex().as_str(), format!("{v:016x}"));
            assert_eq!(id.to_string(), format!("{v:016x}"));
        }
    }

    #[test]
    fn text_form_sorts_like_the_number() {
        let a = EventId(0x0000_0001_0000_ffff);
        let b = EventId(0x0000_0001_0001_0000);
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
        assert_eq!(a.to_string().len(), 16);
        assert_eq!(a.to_string().parse::<EventId>(), Ok(a));
    }

    #[test]
    fn generator_is_strictly_increasing_even_when_the_clock_goes_back() {
        let mut g = IdGenerator::default();
        let a = g.next(1_000);
        let b = g.next(1_000);
        let c = g.next(999);
        let d = g.next(2_000);
        assert!(a < b && b < c && c < d);
        assert_eq!(d, EventId::floor_at(2_000));
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in ["", "xyz", "12345678901234567", "-1", "0x12"] {
            assert!(bad.parse::<EventId>().is_err(), "{bad}");
        }
        assert_eq!("ff".parse::<EventId>(), Ok(EventId(255)));
    }
}
