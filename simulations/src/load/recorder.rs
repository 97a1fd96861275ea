//! What a run measures: one monotonic clock, HDR latency histograms, the deliveries of one
//! publish run (per sequence number, per connection, per target label and per second) and
//! errors by code.
//!
//! Definitions follow the neutral bench (shared/bench, "How it measures"): a delivery is a
//! frame carrying `~b~SEQ~SENT_US~`; every delivery's latency is recorded (duplicates
//! included); a duplicate is a sequence number the connection already saw; lost is counted
//! against acknowledged events only.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Publisher and subscribers live in one process, so one monotonic clock stamps the send
/// and the arrival: latency needs no clock sync.
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the process's first call.
pub fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Highest latency a histogram tells apart (one hour, in µs); larger values count as it.
const LATENCY_MAX_US: u64 = 3_600_000_000;
/// Per-second histograms are many: coarser (2 significant digits, 60 s at most).
const SECOND_LATENCY_MAX_US: u64 = 60_000_000;
/// Seconds of timeline kept; later deliveries count in the last second.
pub const TIMELINE_SECONDS_MAX: usize = 3_600;
/// Distinct error keys kept; further ones count under "other".
const ERROR_KEYS_MAX: usize = 64;
/// Recorder shards: connections record under one of them, so readers on different
/// threads rarely wait for each other.
const SHARDS: usize = 8;

/// A latency histogram in microseconds (3 significant digits).
#[derive(Clone)]
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist::new()
    }
}

impl Hist {
    pub fn new() -> Hist {
        match Histogram::new_with_max(LATENCY_MAX_US, 3) {
            Ok(h) => Hist(h),
            Err(_) => unreachable!("3 significant digits up to an hour is a valid histogram"),
        }
    }

    pub fn record(&mut self, us: u64) {
        self.0.saturating_record(us);
    }

    pub fn add(&mut self, other: &Hist) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn summary(&self) -> Summary {
        Summary::of(&self.0)
    }
}

/// Percentiles of a histogram, in milliseconds (all 0 when `count` is 0).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Summary {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    fn of<T: hdrhistogram::Counter>(h: &Histogram<T>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Summary {
            count: h.len(),
            min_ms: ms(h.min()),
            mean_ms: h.mean().round() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// One bit per sequence number (or member): which ones a connection has seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    bits: u64,
    words: Vec<u64>,
}

impl Seen {
    pub fn new(bits: u64) -> Seen {
        Seen {
            bits,
            words: vec![0; bits.div_ceil(64) as usize],
        }
    }

    /// Sets bit `i`; true when it was not set before. Out of range: false.
    pub fn insert(&mut self, i: u64) -> bool {
        if i >= self.bits {
            return false;
        }
        let Some(word) = self.words.get_mut((i / 64) as usize) else {
            return false;
        };
        let mask = 1u64 << (i % 64);
        let new = *word & mask == 0;
        *word |= mask;
        new
    }

    pub fn remove(&mut self, i: u64) -> bool {
        let Some(word) = self.words.get_mut((i / 64) as usize) else {
            return false;
        };
        let mask = 1u64 << (i % 64);
        let had = *word & mask != 0;
        *word &= !mask;
        had
    }

    pub fn contains(&self, i: u64) -> bool {
        self.words
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }

    pub fn len(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

/// Errors by code ("http 401", "pusher:error 4301", "close 4100", "connect timeout" …)
/// and per second of the run.
pub struct Errors {
    start_us: u64,
    inner: Mutex<ErrorCounts>,
}

#[derive(Default)]
struct ErrorCounts {
    by_code: BTreeMap<String, u64>,
    per_second: Vec<u64>,
}

impl Errors {
    pub fn new(start_us: u64) -> Errors {
        Errors {
            start_us,
            inner: Mutex::new(ErrorCounts::default()),
        }
    }

    pub fn count(&self, key: &str) {
        self.add(key, 1);
    }

    pub fn add(&self, key: &str, n: u64) {
        if n == 0 {
            return;
        }
        let second = second_of(self.start_us, now_us());
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let key = if inner.by_code.contains_key(key) || inner.by_code.len() < ERROR_KEYS_MAX {
            key
        } else {
            "other"
        };
        *inner.by_code.entry(key.to_owned()).or_default() += n;
        if inner.per_second.len() <= second {
            inner.per_second.resize(second + 1, 0);
        }
        inner.per_second[second] += n;
    }

    pub fn by_code(&self) -> BTreeMap<String, u64> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_code
            .clone()
    }

    /// Errors whose key starts with `prefix`.
    pub fn total_of(&self, prefix: &str) -> u64 {
        self.by_code()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    }

    pub fn per_second(&self) -> Vec<u64> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .per_second
            .clone()
    }
}

fn second_of(start_us: u64, at_us: u64) -> usize {
    ((at_us.saturating_sub(start_us) / 1_000_000) as usize).min(TIMELINE_SECONDS_MAX - 1)
}

/// Who received a delivery: the connection's shard, its target label, the channel index
/// it subscribed to, and the sequence numbers it sent itself (client events; never echoed).
#[derive(Clone, Debug)]
pub struct Receiver {
    pub index: usize,
    pub label: usize,
    pub channel: u64,
    pub own: Range<u64>,
}

/// The deliveries of one publish run: sequence numbers `first..first + count`.
pub struct Recorder {
    first: u64,
    count: u64,
    /// Event `seq` goes to channel `seq % modulo` (0: one channel).
    modulo: u64,
    /// Timeline seconds count from here (the scenario's start).
    start_us: u64,
    /// Unique receivers of each sequence number.
    per_seq: Vec<AtomicU32>,
    shards: Vec<Mutex<Shard>>,
    deliveries: AtomicU64,
    unique: AtomicU64,
    duplicates: AtomicU64,
    misrouted: AtomicU64,
    out_of_range: AtomicU64,
    echoed: AtomicU64,
    last_us: AtomicU64,
}

struct Shard {
    by_label: Vec<Hist>,
    seconds: Vec<Option<SecondStats>>,
}

struct SecondStats {
    delivered: u64,
    latency: Histogram<u32>,
}

/// What a run's totals come to once it is over.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    pub deliveries: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub misrouted: u64,
    pub out_of_range: u64,
    pub echoed: u64,
    pub last_us: u64,
}

/// One second of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Second {
    pub second: usize,
    pub delivered: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

impl Recorder {
    pub fn new(seqs: Range<u64>, modulo: u64, labels: usize, start_us: u64) -> Recorder {
        let count = seqs.end.saturating_sub(seqs.start);
        Recorder {
            first: seqs.start,
            count,
            modulo,
            start_us,
            per_seq: (0..count).map(|_| AtomicU32::new(0)).collect(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        by_label: vec![Hist::new(); labels.max(1)],
                        seconds: Vec::new(),
                    })
                })
                .collect(),
            deliveries: AtomicU64::new(0),
            unique: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            misrouted: AtomicU64::new(0),
            out_of_range: AtomicU64::new(0),
            echoed: AtomicU64::new(0),
            last_us: AtomicU64::new(0),
        }
    }

    /// A connection's record of what it saw in this run.
    pub fn seen(&self) -> Seen {
        Seen::new(self.count)
    }

    pub fn unique(&self) -> u64 {
        self.unique.load(Ordering::Relaxed)
    }

    /// One frame carrying `seq` sent at `sent_us`, received by `who` at `now`.
    pub fn deliver(&self, who: &Receiver, seen: &mut Seen, seq: u64, sent_us: u64, now: u64) {
        let latency = now.saturating_sub(sent_us);
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        self.last_us.fetch_max(now, Ordering::Relaxed);
        let mut fresh = false;
        if !(self.first..self.first + self.count).contains(&seq) {
            self.out_of_range.fetch_add(1, Ordering::Relaxed);
        } else if who.own.contains(&seq) {
            self.echoed.fetch_add(1, Ordering::Relaxed);
        } else {
            if self.modulo > 0 && seq % self.modulo != who.channel {
                self.misrouted.fetch_add(1, Ordering::Relaxed);
            }
            let i = seq - self.first;
            if seen.insert(i) {
                fresh = true;
                self.unique.fetch_add(1, Ordering::Relaxed);
                if let Some(n) = self.per_seq.get(i as usize) {
                    n.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            }
        }
        let second = second_of(self.start_us, now);
        let Some(shard) = self.shards.get(who.index % SHARDS) else {
            return;
        };
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = shard.by_label.get_mut(who.label) {
            h.record(latency);
        }
        if shard.seconds.len() <= second {
            shard.seconds.resize_with(second + 1, || None);
        }
        if let Some(slot) = shard.seconds.get_mut(second) {
            let stats = slot.get_or_insert_with(SecondStats::new);
            stats.delivered += u64::from(fresh);
            stats.latency.saturating_record(latency);
        }
    }

    /// Unique receivers of `seq`.
    pub fn receivers(&self, seq: u64) -> u64 {
        seq.checked_sub(self.first)
            .and_then(|i| self.per_seq.get(i as usize))
            .map_or(0, |n| u64::from(n.load(Ordering::Relaxed)))
    }

    pub fn totals(&self) -> Totals {
        Totals {
            deliveries: self.deliveries.load(Ordering::Relaxed),
            unique: self.unique.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            misrouted: self.misrouted.load(Ordering::Relaxed),
            out_of_range: self.out_of_range.load(Ordering::Relaxed),
            echoed: self.echoed.load(Ordering::Relaxed),
            last_us: self.last_us.load(Ordering::Relaxed),
        }
    }

    /// Latency of every delivery, and per target label.
    pub fn latency(&self) -> (Hist, Vec<Hist>) {
        let mut all = Hist::new();
        let mut by_label: Vec<Hist> = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            if by_label.is_empty() {
                by_label = vec![Hist::new(); shard.by_label.len()];
            }
            for (sum, h) in by_label.iter_mut().zip(&shard.by_label) {
                sum.add(h);
                all.add(h);
            }
        }
        (all, by_label)
    }

    /// Unique deliveries and latency per second since the scenario's start, with the
    /// errors of each second.
    pub fn timeline(&self, errors: &Errors) -> Vec<Second> {
        let mut merged: Vec<Option<SecondStats>> = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            if merged.len() < shard.seconds.len() {
                merged.resize_with(shard.seconds.len(), || None);
            }
            for (sum, s) in merged.iter_mut().zip(&shard.seconds) {
                if let Some(s) = s {
                    let sum = sum.get_or_insert_with(SecondStats::new);
                    sum.delivered += s.delivered;
                    let _ = sum.latency.add(&s.latency);
                }
            }
        }
        timeline(merged, errors)
    }
}

impl SecondStats {
    fn new() -> SecondStats {
        match Histogram::new_with_max(SECOND_LATENCY_MAX_US, 2) {
            Ok(latency) => SecondStats {
                delivered: 0,
                latency,
            },
            Err(_) => unreachable!("2 significant digits up to a minute is a valid histogram"),
        }
    }
}

/// Seconds with deliveries or errors, in order.
fn timeline(seconds: Vec<Option<SecondStats>>, errors: &Errors) -> Vec<Second> {
    let errors = errors.per_second();
    let len = seconds.len().max(errors.len());
    let mut seconds = seconds.into_iter();
    (0..len)
        .map(|second| {
            let stats = seconds.next().flatten();
            let summary = stats.as_ref().map(|s| Summary::of(&s.latency));
            Second {
                second,
                delivered: stats.as_ref().map_or(0, |s| s.delivered),
                p50_ms: summary.map_or(0.0, |s| s.p50_ms),
                p99_ms: summary.map_or(0.0, |s| s.p99_ms),
                errors: errors.get(second).copied().unwrap_or(0),
            }
        })
        .filter(|s| s.delivered > 0 || s.errors > 0)
        .collect()
}

/// The errors-only timeline of a scenario without deliveries.
pub fn error_timeline(errors: &Errors) -> Vec<Second> {
    timeline(Vec::new(), errors)
}

/// Reads `~b~SEQ~SENT_US~` anywhere in a frame's text without a JSON parse (the hot path;
/// the same prefix as the neutral bench's events).
pub fn parse_mark(text: &str) -> Option<(u64, u64)> {
    let at = text.find(MARK)?;
    let mut parts = text[at + MARK.len()..].splitn(3, '~');
    let seq = parts.next()?.parse().ok()?;
    let sent = parts.next()?.parse().ok()?;
    parts.next()?;
    Some((seq, sent))
}

/// The start of a measured event's data.
pub const MARK: &str = "~b~";

/// A measured event's data: `~b~SEQ~SENT_US~` padded with `x` to `payload_bytes` as the
/// neutral bench pads it (`payload_bytes - 24` of padding).
pub fn event_data(seq: u64, sent_us: u64, payload_bytes: usize) -> String {
    let pad = payload_bytes.saturating_sub(24);
    let mut data = String::with_capacity(32 + pad);
    data.push_str(MARK);
    data.push_str(&format!("{seq}~{sent_us}~"));
    data.extend(std::iter::repeat_n('x', pad));
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_mark_anywhere() {
        let text = r#"{"event":"bench","channel":"c","data":"~b~42~123456~xxxx"}"#;
        assert_eq!(parse_mark(text), Some((42, 123456)));
        assert_eq!(parse_mark(r#"{"data":"\"~b~7~9~\""}"#), Some((7, 9)));
        assert_eq!(parse_mark(r#"{"event":"pusher:ping","data":{}}"#), None);
        assert_eq!(parse_mark("~b~x~1~"), None);
        assert_eq!(parse_mark(&event_data(3, 4, 100)), Some((3, 4)));
        assert_eq!(event_data(3, 4, 30), "~b~3~4~xxxxxx");
    }

    #[test]
    fn counts_unique_duplicate_misrouted_echoed_and_out_of_range() {
        let r = Recorder::new(10..20, 2, 1, 0);
        let mut seen = r.seen();
        let who = Receiver {
            index: 0,
            label: 0,
            channel: 0,
            own: 18..20,
        };
        r.deliver(&who, &mut seen, 10, 0, 1_000);
        r.deliver(&who, &mut seen, 10, 0, 2_000);
        r.deliver(&who, &mut seen, 11, 0, 3_000);
        r.deliver(&who, &mut seen, 25, 0, 4_000);
        r.deliver(&who, &mut seen, 19, 0, 5_000);
        let t = r.totals();
        assert_eq!(
            (t.deliveries, t.unique, t.duplicates, t.misrouted),
            (5, 2, 1, 1)
        );
        assert_eq!((t.out_of_range, t.echoed), (1, 1));
        assert_eq!(
            (r.receivers(10), r.receivers(12), r.receivers(3)),
            (1, 0, 0)
        );
        let (all, by_label) = r.latency();
        assert_eq!((all.summary().count, by_label[0].summary().count), (5, 5));
        let tl = r.timeline(&Errors::new(0));
        assert_eq!(tl.len(), 1);
        assert_eq!(tl[0].delivered, 2);
    }

    #[test]
    fn bitset_and_percentiles() {
        let mut s = Seen::new(100);
        assert!(s.insert(99) && !s.insert(99) && !s.insert(100));
        assert!(s.contains(99) && s.remove(99) && !s.contains(99));
        let mut h = Hist::new();
        for us in 1..=10_000 {
            h.record(us);
        }
        let sum = h.summary();
        assert!((sum.p50_ms - 5.0).abs() < 0.01 && (sum.p99_ms - 9.9).abs() < 0.01);
    }

    #[test]
    fn error_keys_are_bounded() {
        let e = Errors::new(0);
        for i in 0..100 {
            e.count(&format!("http {i}"));
        }
        let by = e.by_code();
        assert_eq!(by.len(), ERROR_KEYS_MAX + 1);
        assert_eq!(by["other"], 100 - ERROR_KEYS_MAX as u64);
    }
}
