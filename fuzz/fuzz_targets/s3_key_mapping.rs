//! Fuzzes the S3 key mapping: any key the access check accepts maps to one
//! fixed-size name in the bucket's object directory (never a path outside
//! it), distinct keys map to distinct names, and listing arbitrary key sets
//! with arbitrary prefixes, delimiters and resume points returns each entry
//! once, in byte order, within the page size.
#![no_main]

use std::collections::BTreeSet;

use esb_services_s3::keymap::{OBJECTS_DIR, list_page, storage_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\u{1}');
    let prefix = parts.next().unwrap_or("").to_string();
    let delimiter = parts.next().map(str::to_string);
    let after = parts.next().map(str::to_string);
    let max = data.first().map_or(3, |b| usize::from(*b % 8));
    let keys: BTreeSet<String> = parts
        .filter(|k| esb_services_s3::check_key(k).is_ok())
        .map(str::to_string)
        .collect();
    let mut names = BTreeSet::new();
    for key in &keys {
        let stored = storage_key(key);
        let (dir, name) = stored.split_once('/').expect("one separator");
        assert_eq!(dir, OBJECTS_DIR);
        assert_eq!(name.len(), 64);
        assert!(name.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(names.insert(name.to_string()), "two keys share a file");
    }
    // Walk every page: entries strictly increase, none repeats.
    let mut resume = after.clone();
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..=keys.len() + 1 {
        let page = list_page(&keys, &prefix, delimiter.as_deref(), resume.as_deref(), max);
        assert!(page.keys.len() + page.prefixes.len() <= max);
        for k in &page.keys {
            assert!(keys.contains(k) && k.starts_with(&prefix));
        }
        for p in &page.prefixes {
            assert!(p.starts_with(&prefix));
        }
        let mut entries: Vec<String> = page.keys.iter().chain(&page.prefixes).cloned().collect();
        entries.sort();
        if let (Some(last), Some(first)) = (seen.last(), entries.first()) {
            assert!(first > last, "pages overlap");
        }
        seen.extend(entries);
        if !page.truncated {
            break;
        }
        resume = page.last;
    }
});
