//! Request ids (UUID v4 shaped) without a system call per request.
//!
//! `Uuid::new_v4` asks the kernel (`getrandom(2)`) for every id, and a
//! routed request needs two (the request id and the extended request id):
//! two system calls per request on the hot path (docs/benchmarks.md). Ids
//! must be unique, not secret (they are echoed to the caller and the
//! function), so the bits come from std's per-thread random SipHash keys
//! (seeded once per thread by the OS) over a process-wide counter.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use uuid::Uuid;

/// A fresh random (version 4, RFC 9562 variant) UUID.
pub(crate) fn new_v4() -> Uuid {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&random_u64().to_le_bytes());
    bytes[8..].copy_from_slice(&random_u64().to_le_bytes());
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    #[test]
    fn ids_are_v4_and_distinct() {
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let id = super::new_v4();
            assert_eq!(id.get_version_num(), 4);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            assert!(seen.insert(id), "duplicate id {id}");
        }
        // And across threads.
        let other: Vec<_> = std::thread::spawn(|| (0..1000).map(|_| super::new_v4()).collect())
            .join()
            .expect("thread");
        assert!(other.iter().all(|id| !seen.contains(id)));
    }
}
