//! Fuzzes the template loader (YAML or JSON text to the app model, with
//! the K3 size and depth limits): any input gives a model or located
//! errors, never a panic. The first byte picks JSON or YAML.
#![no_main]

use std::path::Path;

use esb_template::{ResolveOptions, parse_str};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((flag, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let name = if flag & 1 == 1 { "t.json" } else { "t.yaml" };
    match parse_str(&text, name, Path::new("/nonexistent-fuzz"), &ResolveOptions::new()) {
        Ok(_) => {}
        Err(e) => assert!(!e.diagnostics.is_empty(), "an error names at least one problem"),
    }
});
