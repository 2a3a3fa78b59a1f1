use std::sync::Arc;
use std::time::Duration;

use super::*;

fn sample(name: &str) -> FunctionSample {
    FunctionSample {
        name: name.to_string(),
        counters: Arc::new(FunctionCounters::default()),
        warm: 2,
        busy: 1,
        starting: 0,
        waiting: 3,
    }
}

fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

#[test]
fn function_counters_render_with_lambda_semantics() {
    let m = Metrics::new();
    let hello = sample("hello");
    {
        let c = &hello.counters;
        let _running = c.begin();
        c.finished(
            Duration::from_millis(3),
            Some(Duration::from_millis(120)),
            false,
        );
        c.finished(Duration::from_millis(7), None, true);
        c.failed();
        c.throttled();
        assert_eq!(c.concurrent.load(Ordering::Relaxed), 1);
    }
    assert_eq!(hello.counters.concurrent.load(Ordering::Relaxed), 0);
    let for_source = hello.clone();
    m.set_functions(move || vec![for_source.clone()]);
    m.set_async_queue(|| AsyncSample {
        depth: [("hello".to_string(), 4)].into_iter().collect(),
        oldest_age: Some(Duration::from_secs(9)),
    });
    let text = m.render();
    let get = |p: &str| line(&text, p).unwrap_or_else(|| panic!("{p} missing in\n{text}"));
    assert_eq!(
        get("esb_function_invocations_total{"),
        "esb_function_invocations_total{function=\"hello\"} 3"
    );
    assert_eq!(
        get("esb_function_errors_total{"),
        "esb_function_errors_total{function=\"hello\"} 2"
    );
    assert_eq!(
        get("esb_function_throttles_total{"),
        "esb_function_throttles_total{function=\"hello\"} 1"
    );
    assert_eq!(
        get("esb_function_cold_starts_total{"),
        "esb_function_cold_starts_total{function=\"hello\"} 1"
    );
    assert_eq!(
        get("esb_function_duration_seconds_count{"),
        "esb_function_duration_seconds_count{function=\"hello\"} 2"
    );
    assert!(
        text.contains("esb_function_duration_seconds_bucket{le=\"0.005\",function=\"hello\"} 1")
            || text.contains(
                "esb_function_duration_seconds_bucket{function=\"hello\",le=\"0.005\"} 1"
            ),
        "{text}"
    );
    assert!(
        text.contains("esb_function_workers{function=\"hello\",state=\"warm\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("esb_function_waiting_requests{function=\"hello\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("esb_async_queue_depth{function=\"hello\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("esb_async_queue_oldest_age_seconds 9"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE esb_function_concurrent_executions gauge"),
        "{text}"
    );
}

#[test]
fn routes_count_by_status_and_odd_codes_by_class() {
    let m = Metrics::new();
    let r = Arc::new(RouteCounters::new("Api", "GET /pets/{id}"));
    r.record(200, Duration::from_millis(1));
    r.record(200, Duration::from_millis(1));
    r.record(418, Duration::from_millis(1));
    r.record(999, Duration::from_millis(1));
    m.set_routes(vec![r]);
    let text = m.render();
    assert!(
        text.contains(
            "esb_gateway_requests_total{api=\"Api\",route=\"GET /pets/{id}\",status=\"200\"} 2"
        ),
        "{text}"
    );
    assert!(text.contains("status=\"4xx\"} 1"), "{text}");
    assert!(text.contains("status=\"other\"} 1"), "{text}");
    assert!(
        text.contains(
            "esb_gateway_request_duration_seconds_count{api=\"Api\",route=\"GET /pets/{id}\"} 4"
        ),
        "{text}"
    );
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::new();
    m.set_routes(vec![Arc::new(RouteCounters::new("a\"b", "GET /x\\y\n"))]);
    m.set_routes(vec![{
        let r = Arc::new(RouteCounters::new("a\"b", "GET /x\\y\n"));
        r.record(200, Duration::ZERO);
        r
    }]);
    let text = m.render();
    assert!(!text.contains("y\n\""), "{text}");
    assert!(text.contains("api=\"a\\\"b\""), "{text}");
}

#[test]
fn service_operations_are_bounded() {
    let s = Arc::new(ServiceCounters::new("s3"));
    s.record("GetObject", 200);
    s.record("GetObject", 404);
    for i in 0..1000 {
        s.record(&format!("Op{i}"), 200);
    }
    assert!(s.ops.read().len() <= 256);
    let m = Metrics::new();
    m.add_service(s);
    let text = m.render();
    assert!(
        text.contains(
            "esb_service_operations_total{service=\"s3\",operation=\"GetObject\",status=\"4xx\"} 1"
        ),
        "{text}"
    );
}

#[test]
fn process_gauges_are_present_on_linux() {
    let text = Metrics::new().render();
    if cfg!(target_os = "linux") {
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("process_open_fds "), "{text}");
    }
}
