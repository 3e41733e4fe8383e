//! A group's load: commands proposed through this node per second, over a
//! sliding window of whole seconds, and a sample of the keys they touched.
//! Read by `stockctl shard list` and by the load-split trigger, which splits
//! where the sampled load is (a hot SKU ends up alone in its range).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Instant;

/// Seconds of history the rate is taken over.
pub const LOAD_WINDOW_S: u64 = 10;

/// Counts per second for the last [`LOAD_WINDOW_S`] seconds (a ring indexed
/// by second since the meter started).
pub struct LoadMeter {
    started: Instant,
    buckets: Mutex<[(u64, u64); LOAD_WINDOW_S as usize]>,
}

impl Default for LoadMeter {
    fn default() -> Self {
        Self::new()
    }
}

impl LoadMeter {
    pub fn new() -> Self {
        Self { started: Instant::now(), buckets: Mutex::new([(u64::MAX, 0); LOAD_WINDOW_S as usize]) }
    }

    fn second(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Counts `commands` at this second.
    pub fn record(&self, commands: u64) {
        self.record_at(self.second(), commands);
    }

    fn record_at(&self, second: u64, commands: u64) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut buckets[(second % LOAD_WINDOW_S) as usize];
        if slot.0 != second {
            *slot = (second, 0);
        }
        slot.1 += commands;
    }

    /// Commands per second over the last full seconds of the window (the
    /// current, partial second left out; fewer seconds while the meter is
    /// younger than the window).
    pub fn per_second(&self) -> f64 {
        self.per_second_at(self.second())
    }

    fn per_second_at(&self, now: u64) -> f64 {
        let full = now.min(LOAD_WINDOW_S - 1);
        if full == 0 {
            return 0.0;
        }
        let from = now - full;
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let total: u64 = buckets.iter().filter(|(second, _)| *second != u64::MAX && *second >= from && *second < now).map(|(_, n)| n).sum();
        total as f64 / full as f64
    }
}

/// One proposal in this many has its key sampled.
pub const SAMPLE_EVERY: u64 = 8;
/// Most distinct keys one sample holds (later new keys are not counted
/// until the sample is taken).
pub const SAMPLE_KEYS_MAX: usize = 4096;

/// Counts of the keys of every `SAMPLE_EVERY`-th proposal since the last
/// [`KeySampler::take`].
#[derive(Default)]
pub struct KeySampler {
    seen: AtomicU64,
    counts: Mutex<BTreeMap<String, u64>>,
}

impl KeySampler {
    /// Offers one proposal's key; most calls only count.
    pub fn offer(&self, key: Option<&str>) {
        if !self.seen.fetch_add(1, Ordering::Relaxed).is_multiple_of(SAMPLE_EVERY) {
            return;
        }
        let Some(key) = key else { return };
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(key) {
            *n += 1;
        } else if counts.len() < SAMPLE_KEYS_MAX {
            counts.insert(key.to_owned(), 1);
        }
    }

    /// The sample since the last call, and a new one started.
    pub fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.counts.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sampler_counts_one_key_in_every_few_and_stays_bounded() {
        let sampler = KeySampler::default();
        for i in 0..(SAMPLE_EVERY * 100) {
            sampler.offer(Some(if i % 2 == 0 { "hot" } else { "cold" }));
        }
        let sample = sampler.take();
        assert_eq!(sample.values().sum::<u64>(), 100);
        assert!(sampler.take().is_empty(), "taken");
        for i in 0..(SAMPLE_EVERY * (SAMPLE_KEYS_MAX as u64 + 10)) {
            sampler.offer(Some(&format!("k{i}")));
        }
        assert_eq!(sampler.take().len(), SAMPLE_KEYS_MAX);
    }

    #[test]
    fn the_rate_covers_the_full_seconds_of_the_window_only() {
        let meter = LoadMeter::new();
        assert_eq!(meter.per_second_at(0), 0.0);
        meter.record_at(0, 30);
        meter.record_at(1, 10);
        meter.record_at(2, 999); // the current second: not counted yet
        assert_eq!(meter.per_second_at(2), 20.0);
        // Later, the old seconds leave the window and their slots are reused.
        for s in 3..20 {
            meter.record_at(s, 5);
        }
        assert_eq!(meter.per_second_at(20), 5.0);
        // A quiet group decays to nothing.
        assert_eq!(meter.per_second_at(40), 0.0);
    }
}
