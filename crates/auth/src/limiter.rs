//! Brute-force brake for logins and API keys (robustness A8–A9): after
//! [`FREE_FAILURES`] failures from one source within the window, that source
//! is refused with 429 and a `Retry-After` that doubles per further failure
//! (capped). The table is bounded; when full, the stalest entry goes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed before slowing down.
pub const FREE_FAILURES: u32 = 5;
/// Failures older than this are forgotten.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Longest lock-out.
pub const MAX_LOCK: Duration = Duration::from_secs(300);
/// Most sources tracked.
pub const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// Failure counts per source address.
#[derive(Debug, Default)]
pub struct Limiter {
    table: Mutex<HashMap<IpAddr, Entry>>,
}

impl Limiter {
    /// `Some(retry_after_secs)` when `source` must wait.
    pub fn check(&self, source: IpAddr, now: Instant) -> Option<u64> {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let until = table.get(&source)?.locked_until?;
        (until > now).then(|| (until - now).as_secs().max(1))
    }

    /// Records a failure; returns the lock-out it caused, if any.
    pub fn failure(&self, source: IpAddr, now: Instant) -> Option<u64> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if table.len() >= MAX_ENTRIES && !table.contains_key(&source) {
            table.retain(|_, e| now.duration_since(e.last) < WINDOW);
            if table.len() >= MAX_ENTRIES
                && let Some(oldest) = table.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| *k)
            {
                table.remove(&oldest);
            }
        }
        let e = table.entry(source).or_insert(Entry {
            failures: 0,
            last: now,
            locked_until: None,
        });
        if now.duration_since(e.last) >= WINDOW {
            e.failures = 0;
            e.locked_until = None;
        }
        e.failures = e.failures.saturating_add(1);
        e.last = now;
        if e.failures >= FREE_FAILURES {
            let exp = (e.failures - FREE_FAILURES).min(16);
            let lock = Duration::from_secs(1u64 << exp).min(MAX_LOCK);
            e.locked_until = Some(now + lock);
            return Some(lock.as_secs());
        }
        None
    }

    /// Forgets a source after a success.
    pub fn success(&self, source: IpAddr) {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&source);
    }

    /// Sources tracked now.
    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a8_locks_after_free_failures_and_backs_off() {
        let l = Limiter::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t = Instant::now();
        for _ in 0..FREE_FAILURES - 1 {
            assert_eq!(l.failure(ip, t), None);
        }
        assert_eq!(l.check(ip, t), None);
        assert_eq!(l.failure(ip, t), Some(1));
        assert_eq!(l.check(ip, t), Some(1));
        assert_eq!(l.check(other, t), None);
        assert_eq!(l.failure(ip, t), Some(2));
        assert_eq!(l.check(ip, t + Duration::from_secs(3)), None);
        l.success(ip);
        assert_eq!(l.check(ip, t), None);
    }

    #[test]
    fn a8_table_is_bounded() {
        let l = Limiter::default();
        let t = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 50) {
            l.failure(IpAddr::from(i.to_be_bytes()), t);
        }
        assert!(l.len() <= MAX_ENTRIES);
    }
}
