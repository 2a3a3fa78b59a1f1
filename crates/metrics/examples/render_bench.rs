//! How long `/metrics` takes to render for 100 functions with 100 routes:
//! `cargo run --release -p esb-metrics --example render_bench`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use esb_metrics::{FunctionCounters, FunctionSample, Metrics, RouteCounters};

fn main() {
    let m = Metrics::new();
    let functions: Vec<FunctionSample> = (0..100)
        .map(|i| {
            let counters = Arc::new(FunctionCounters::default());
            for _ in 0..50 {
                counters.finished(Duration::from_millis(i % 40), None, i % 7 == 0);
            }
            FunctionSample {
                name: format!("function-{i}"),
                counters,
                warm: 2,
                busy: 1,
                starting: 0,
                waiting: 0,
            }
        })
        .collect();
    m.set_functions(move || functions.clone());
    let routes = (0..100)
        .map(|i| {
            let r = Arc::new(RouteCounters::new("Api", format!("GET /r{i}/{{id}}")));
            r.record(200, Duration::from_millis(2));
            r.record(404, Duration::from_millis(1));
            r
        })
        .collect();
    m.set_routes(routes);
    let runs = 300;
    let mut times = Vec::with_capacity(runs);
    let mut bytes = 0;
    for _ in 0..runs {
        let t = Instant::now();
        bytes = m.render().len();
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "render: 100 functions, 100 routes, {bytes} bytes: median {:?}, p90 {:?}, best {:?}",
        times[runs / 2],
        times[runs * 9 / 10],
        times[0]
    );
}
