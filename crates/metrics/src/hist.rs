//! A lock-free histogram: one atomic per bucket, the sum in microseconds.
//!
//! `prometheus-client`'s own `Histogram` takes a lock on every
//! observation; ESB observes on every request, so it keeps fixed buckets in
//! atomics and hands the cumulative counts to `prometheus-client`'s encoder
//! at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency buckets: 1 ms to 15 minutes, the
/// range of a Lambda invocation.
pub const LATENCY_BOUNDS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 900.0,
];

const N: usize = LATENCY_BOUNDS.len();

/// Bucket bounds in microseconds, for the comparison on the hot path.
const BOUNDS_US: [u64; N] = {
    let mut out = [0u64; N];
    let mut i = 0;
    while i < N {
        out[i] = (LATENCY_BOUNDS[i] * 1_000_000.0) as u64;
        i += 1;
    }
    out
};

/// Durations in [`LATENCY_BOUNDS`] buckets (plus `+Inf`).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts; the last one is `+Inf`.
    buckets: [AtomicU64; N + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one duration: two relaxed atomic adds.
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS_US.iter().position(|b| us <= *b).unwrap_or(N);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// `(sum in seconds, count, per-bucket (upper bound, count) pairs)`;
    /// the counts are not cumulative (the text encoder adds them up).
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(N + 1);
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Ordering::Relaxed);
            total += n;
            let bound = LATENCY_BOUNDS.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, n));
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1_000_000.0;
        (sum, total, buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_duration_lands_in_one_bucket() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(2000));
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 3);
        assert!((sum - 2000.0035).abs() < 1e-6);
        assert_eq!(buckets[0], (0.001, 1));
        assert_eq!(buckets[2], (0.005, 1));
        assert_eq!(buckets[N - 1].1, 0);
        assert_eq!(buckets[N], (f64::INFINITY, 1));
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 3);
    }
}
