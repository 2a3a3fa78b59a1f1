//! Fuzzes the route table and path lookup: the first lines of the input
//! (`R <method> <path> <api 0-2>`) declare routes (the table may refuse
//! them, never panic); the other lines (`<method> <path>`) are looked up.
//! A found route's parameters are named in its route key.
#![no_main]

#[path = "gateway_common.rs"]
mod common;

use esb_gateway::fuzzing::{FuzzRouter, Lookup};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut config = common::default_config();
    let mut lookups = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("R"), Some(method), Some(path)) => {
                let api = ["Rest", "Http", "Http1"][parts
                    .next()
                    .and_then(|a| a.parse::<usize>().ok())
                    .unwrap_or(0)
                    % 3];
                config
                    .routes
                    .push(common::route(api, method, path, api == "Http"));
            }
            (Some(method), Some(path), _) => lookups.push((method.to_string(), path.to_string())),
            _ => {}
        }
    }
    let Ok(router) = FuzzRouter::new(&config) else {
        return;
    };
    for (method, path) in lookups {
        let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
            continue;
        };
        if let Lookup::Found { route_key, params } = router.find(&method, &path) {
            for (name, _) in &params {
                assert!(
                    route_key.contains(&format!("{{{name}")),
                    "{route_key} has no parameter {name}"
                );
            }
        }
    }
});
