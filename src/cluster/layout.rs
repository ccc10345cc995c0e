//! How the shared event stream is split over `--redis-partitions` streams,
//! and how their entries get one order.
//!
//! An event goes to the partition of its device (a stable hash of its
//! id; events without a device go to partition 0), so a device's events
//! keep their order. Each partition is a Redis stream with its own hash
//! tag, the tags chosen so that their slots are spread evenly over the
//! 16,384 of a Redis Cluster (and so over its primaries).
//!
//! One order over every partition: an [`EventId`] is
//! `ms << 16 | partition << 12 | seq` for the stream id `<ms>-<seq>` of an
//! entry of that partition (with one partition, `ms << 16 | seq`, as
//! before partitions existed). Every node publishes the entries of all
//! partitions in the order of these ids (see `merge.rs`), so a node's
//! ring, a `Last-Event-ID`, a forwarding checkpoint and a resume on any
//! node mean the same position in every partition at once: "after id X"
//! is, in partition q, everything whose id is above X.

use crate::event::wire::WireError;
use crate::event::{DeviceId, EventId};
use crate::redis_target::{RedisMode, RedisTarget};

/// Most partitions (`--redis-partitions`): their number lives in 4 bits
/// of an event id.
pub const MAX_PARTITIONS: usize = 16;

/// Redis Cluster's slots.
const SLOTS: u32 = 16_384;

/// How the stream is split, and what an event id says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    count: usize,
}

impl Layout {
    /// `count` partitions (1 to [`MAX_PARTITIONS`]).
    pub fn new(count: usize) -> Self {
        assert!(
            (1..=MAX_PARTITIONS).contains(&count),
            "1 to {MAX_PARTITIONS} partitions"
        );
        Self { count }
    }

    /// How many.
    pub fn count(self) -> usize {
        self.count
    }

    /// Whether there are several (the single stream keeps its old ids and
    /// needs no merge).
    pub fn is_split(self) -> bool {
        self.count > 1
    }

    /// The first sequence number within one millisecond that an id cannot
    /// hold: the append script moves on to the next millisecond before it
    /// (see `append.rs`).
    pub fn seq_limit(self) -> u64 {
        if self.is_split() {
            1 << 12
        } else {
            1 << 16
        }
    }

    /// The partition of an event about `device`.
    pub fn of(self, device: Option<&DeviceId>) -> usize {
        match device {
            Some(d) if self.is_split() => {
                (fnv1a(d.as_str().as_bytes()) % self.count as u64) as usize
            }
            _ => 0,
        }
    }

    /// The partition an id is of.
    pub fn partition_of(self, id: EventId) -> usize {
        if self.is_split() {
            ((id.as_u64() >> 12) & 0xf) as usize
        } else {
            0
        }
    }

    /// The event id of the entry `stream_id` of partition `p`.
    pub fn event_id(self, p: usize, stream_id: &str) -> Result<EventId, WireError> {
        let bad = || WireError::Id(stream_id.to_owned());
        let (ms, seq) = stream_id.split_once('-').ok_or_else(bad)?;
        let ms: u64 = ms.parse().map_err(|_| bad())?;
        let seq: u64 = seq.parse().map_err(|_| bad())?;
        if seq >= self.seq_limit() || ms >= 1 << 48 || p >= self.count {
            return Err(bad());
        }
        let part = if self.is_split() { (p as u64) << 12 } else { 0 };
        Ok(EventId::from_u64(ms << 16 | part | seq))
    }

    /// The stream id, in its partition, of an event id.
    pub fn stream_id(self, id: EventId) -> String {
        let raw = id.as_u64();
        format!("{}-{}", raw >> 16, raw & (self.seq_limit() - 1))
    }

    /// The stream id in partition `q` after which (exclusive) its entries
    /// are above `id` in the merged order.
    pub fn after_in(self, q: usize, id: EventId) -> String {
        let ms = id.unix_ms();
        let p = self.partition_of(id);
        if q == p {
            self.stream_id(id)
        } else if q > p {
            // Everything of this millisecond is above: after the previous one.
            match ms.checked_sub(1) {
                Some(before) => format!("{before}-{}", u64::MAX),
                None => "0-0".to_owned(),
            }
        } else {
            format!("{ms}-{}", u64::MAX)
        }
    }

    /// The stream id in partition `q` before which (exclusive) its
    /// entries are below `id` in the merged order.
    pub fn before_in(self, q: usize, id: EventId) -> String {
        let ms = id.unix_ms();
        let p = self.partition_of(id);
        if q == p {
            self.stream_id(id)
        } else if q > p {
            format!("{ms}-0")
        } else {
            format!("{}-0", ms + 1)
        }
    }

    /// Every id of a partition's entries to come is above this, once its
    /// primary's clock reads `clock_ms` and its mark (see `append.rs`) is
    /// `mark_ms`: they all have a millisecond of at least the clock's and
    /// above the mark.
    pub fn floor_after(clock_ms: u64, mark_ms: u64) -> EventId {
        EventId::from_u64((clock_ms.max(mark_ms + 1) << 16).saturating_sub(1))
    }

    /// The key `name` of partition `p`: with one partition, the target's
    /// own key (as before partitions); else in the partition's hash tag,
    /// spread evenly over a Redis Cluster's slots.
    pub fn key(self, target: &RedisTarget, p: usize, name: &str) -> String {
        if !self.is_split() {
            return target.key(name);
        }
        match target.mode() {
            RedisMode::Cluster => format!("{{{}}}:{name}", self.tag(target.prefix(), p)),
            _ => format!("{}:p{p}:{name}", target.prefix()),
        }
    }

    /// Partition `p`'s hash tag: `<prefix>.p<p>`, with a suffix when that
    /// is needed to land in the `p`-th of `count` equal slot ranges.
    fn tag(self, prefix: &str, p: usize) -> String {
        let lo = SLOTS * p as u32 / self.count as u32;
        let hi = SLOTS * (p as u32 + 1) / self.count as u32;
        let plain = format!("{prefix}.p{p}");
        if (lo..hi).contains(&slot(&plain)) {
            return plain;
        }
        // About `count` tries on average; bounded all the same.
        (0..1_000_000u32)
            .map(|k| format!("{prefix}.p{p}.{k}"))
            .find(|t| (lo..hi).contains(&slot(t)))
            .unwrap_or(plain)
    }
}

/// A Redis Cluster slot of a hash tag.
fn slot(tag: &str) -> u32 {
    u32::from(crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes())) % SLOTS
}

/// 64-bit FNV-1a: stable across versions and platforms (a partition must
/// not move when the gateway is upgraded), and cheap for short ids.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(mode: RedisMode) -> RedisTarget {
        let url = match mode {
            RedisMode::Cluster => "redis://127.0.0.1:7001,redis://127.0.0.1:7002",
            _ => "redis://127.0.0.1:6379",
        };
        let master = (mode == RedisMode::Sentinel).then_some("m");
        RedisTarget::new(mode, url, master, None, "rt").unwrap()
    }

    #[test]
    fn one_partition_keeps_the_ids_and_keys_of_before() {
        let l = Layout::new(1);
        assert_eq!(
            l.event_id(0, "5-7").unwrap(),
            EventId::from_u64(5 << 16 | 7)
        );
        assert_eq!(l.stream_id(EventId::from_u64(5 << 16 | 7)), "5-7");
        assert!(l.event_id(0, "5-65535").is_ok());
        assert!(l.event_id(0, "5-65536").is_err());
        let t = target(RedisMode::Cluster);
        assert_eq!(l.key(&t, 0, "events"), t.key("events"));
        assert_eq!(l.of(Some(&DeviceId::parse("mac:112233445566").unwrap())), 0);
    }

    #[test]
    fn ids_map_one_to_one_and_order_by_time_then_partition() {
        let l = Layout::new(6);
        for p in 0..6 {
            for sid in ["1700000000000-0", "1700000000000-4095", "1-1"] {
                let id = l.event_id(p, sid).unwrap();
                assert_eq!(l.partition_of(id), p);
                assert_eq!(l.stream_id(id), sid);
            }
        }
        assert!(l.event_id(6, "1-0").is_err(), "no seventh partition");
        assert!(l.event_id(0, "1-4096").is_err(), "12 bits of sequence");
        let a = l.event_id(5, "100-9").unwrap();
        let b = l.event_id(0, "101-0").unwrap();
        let c = l.event_id(2, "100-9").unwrap();
        assert!(c < a && a < b);
    }

    /// `after_in` and `before_in` cut each partition exactly where the
    /// merged order does, checked against every id of a small grid.
    #[test]
    fn the_bounds_in_each_partition_agree_with_the_merged_order() {
        let l = Layout::new(3);
        let cmp = |a: &str, b: &str| {
            let parse = |s: &str| {
                let (m, q) = s.split_once('-').unwrap();
                (m.parse::<u64>().unwrap(), q.parse::<u64>().unwrap())
            };
            parse(a).cmp(&parse(b))
        };
        let ids: Vec<(usize, String)> = (0..3)
            .flat_map(|p| {
                (10..13).flat_map(move |ms| (0..3).map(move |s| (p, format!("{ms}-{s}"))))
            })
            .collect();
        for (px, sx) in &ids {
            let x = l.event_id(*px, sx).unwrap();
            for (q, sq) in &ids {
                let y = l.event_id(*q, sq).unwrap();
                let after = cmp(sq, &l.after_in(*q, x)).is_gt();
                assert_eq!(after, y > x, "{q}/{sq} after {px}/{sx}");
                let before = cmp(sq, &l.before_in(*q, x)).is_lt();
                assert_eq!(before, y < x, "{q}/{sq} before {px}/{sx}");
            }
        }
    }

    #[test]
    fn devices_spread_and_stay_put() {
        let l = Layout::new(3);
        let mut seen = [0usize; 3];
        for n in 0..300u64 {
            let d = DeviceId::parse(&format!("mac:{n:012x}")).unwrap();
            let p = l.of(Some(&d));
            assert_eq!(p, l.of(Some(&d)));
            seen[p] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        assert_eq!(l.of(None), 0);
    }

    #[test]
    fn cluster_tags_land_on_evenly_spread_slots() {
        for count in [2, 3, 6, 16] {
            let l = Layout::new(count);
            let t = target(RedisMode::Cluster);
            for p in 0..count {
                let key = l.key(&t, p, "events");
                let tag = key[1..key.find('}').unwrap()].to_owned();
                let s = slot(&tag);
                assert!(
                    s >= SLOTS * p as u32 / count as u32
                        && s < SLOTS * (p as u32 + 1) / count as u32,
                    "{count}: {key} on slot {s}"
                );
                assert_eq!(l.key(&t, p, "mark"), format!("{{{tag}}}:mark"));
            }
        }
        let single = Layout::new(2).key(&target(RedisMode::Single), 1, "events");
        assert_eq!(single, "rt:p1:events");
    }

    #[test]
    fn the_floor_is_below_the_clocks_millisecond_and_above_the_marks() {
        let l = Layout::new(16);
        let f = Layout::floor_after(90, 100);
        assert!(l.event_id(15, "100-4095").unwrap() <= f);
        assert!(l.event_id(0, "101-0").unwrap() > f);
        let f = Layout::floor_after(200, 100);
        assert!(l.event_id(15, "199-4095").unwrap() <= f);
        assert!(l.event_id(0, "200-0").unwrap() > f);
    }
}
