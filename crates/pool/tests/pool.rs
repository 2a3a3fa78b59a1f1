//! Black-box tests of the pool through its public API, with the fake
//! backend and a paused clock.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use esb_pool::{FunctionLimits, FunctionStatus, Pool, PoolConfig, PoolError, ThrottleReason};
use esb_runtimes_core::{
    ErrorKind, Invocation, InvocationOutcome, InvokeResult, RuntimeError, WorkerError,
};
use esb_test_support::{FakeBackend, FakeFailure, spec};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

const RESERVED: ThrottleReason = ThrottleReason::ReservedFunctionConcurrentInvocationLimitExceeded;
const GLOBAL: ThrottleReason = ThrottleReason::ConcurrentInvocationLimitExceeded;

fn inv(id: &str) -> Invocation {
    Invocation {
        request_id: id.to_string(),
        payload: Bytes::from(format!("\"{id}\"")),
        invoked_function_arn: "arn:aws:lambda:us-east-1:123456789012:function:f".to_string(),
        trace_id: None,
        client_context: None,
        cognito_identity: None,
        timeout: None,
    }
}

fn config() -> PoolConfig {
    PoolConfig {
        max_workers: 16,
        idle_timeout: Duration::from_secs(300),
        queue_timeout: Duration::from_secs(10),
        queue_len: 100,
        ..PoolConfig::default()
    }
}

fn limits(reserved: Option<u32>, min_warm: u32) -> FunctionLimits {
    FunctionLimits {
        reserved_concurrency: reserved,
        min_warm,
    }
}

fn setup(
    backend: FakeBackend,
    config: PoolConfig,
    fns: &[(&str, FunctionLimits)],
) -> (Arc<FakeBackend>, Pool) {
    let backend = Arc::new(backend);
    let pool = Pool::new(backend.clone(), config);
    for (name, l) in fns {
        pool.register(spec(name), l.clone());
    }
    (backend, pool)
}

fn body(res: &InvokeResult) -> String {
    match &res.outcome {
        InvocationOutcome::Success(b) => String::from_utf8_lossy(b).into_owned(),
        InvocationOutcome::Error { kind, .. } => format!("error {kind:?}"),
    }
}

fn status(pool: &Pool, name: &str) -> FunctionStatus {
    pool.status()
        .into_iter()
        .find(|s| s.name == name)
        .expect("function in status")
}

/// (warm, busy, starting, queued)
fn counts(pool: &Pool, name: &str) -> (usize, usize, usize, usize) {
    let s = status(pool, name);
    (s.warm, s.busy, s.starting, s.queued)
}

fn spawn_call(
    pool: &Pool,
    function: &str,
    id: &str,
) -> JoinHandle<Result<InvokeResult, PoolError>> {
    let pool = pool.clone();
    let function = function.to_string();
    let id = id.to_string();
    tokio::spawn(async move { pool.invoke(&function, inv(&id)).await })
}

/// Like `spawn_call`, also reporting when the call ended.
fn spawn_timed(
    pool: &Pool,
    function: &str,
    id: &str,
) -> JoinHandle<(Result<InvokeResult, PoolError>, Instant)> {
    let pool = pool.clone();
    let function = function.to_string();
    let id = id.to_string();
    tokio::spawn(async move {
        let r = pool.invoke(&function, inv(&id)).await;
        (r, Instant::now())
    })
}

#[tokio::test(start_paused = true)]
async fn sequential_calls_reuse_one_warm_worker() {
    let (backend, pool) = setup(FakeBackend::echo(), config(), &[("f", limits(None, 0))]);
    for i in 0..5 {
        let id = format!("req-{i}");
        let res = pool.invoke("f", inv(&id)).await.unwrap();
        assert_eq!(body(&res), format!("\"{id}\""));
    }
    assert_eq!(backend.started(), 1);
    assert_eq!(backend.worker(0).invocations(), 5);
    let s = status(&pool, "f");
    assert_eq!((s.warm, s.busy, s.starting), (1, 0, 0));
    assert_eq!(s.pids, vec![1000]);
    assert_eq!(s.limit, 16);
}

#[tokio::test(start_paused = true)]
async fn most_recently_used_worker_is_reused_first() {
    let (backend, pool) = setup(
        FakeBackend::echo().with_delay(Duration::from_millis(100)),
        config(),
        &[("f", limits(None, 0))],
    );
    let a = spawn_call(&pool, "f", "a");
    let b = spawn_call(&pool, "f", "b");
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    assert_eq!(backend.started(), 2);
    let before = [
        backend.worker(0).invocations(),
        backend.worker(1).invocations(),
    ];
    for i in 0..4 {
        pool.invoke("f", inv(&format!("s{i}"))).await.unwrap();
    }
    let after = [
        backend.worker(0).invocations(),
        backend.worker(1).invocations(),
    ];
    let gained = [after[0] - before[0], after[1] - before[1]];
    assert!(
        gained == [4, 0] || gained == [0, 4],
        "one worker serves all: {gained:?}"
    );
    assert_eq!(counts(&pool, "f"), (2, 0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn over_reserved_concurrency_one_call_waits_for_a_worker() {
    let (backend, pool) = setup(
        FakeBackend::echo().with_delay(Duration::from_millis(100)),
        config(),
        &[("f", limits(Some(2), 0))],
    );
    let t0 = Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|i| spawn_timed(&pool, "f", &format!("c{i}")))
        .collect();
    let mut ends = Vec::new();
    for c in calls {
        let (r, end) = c.await.unwrap();
        r.unwrap();
        ends.push(end - t0);
    }
    ends.sort();
    assert_eq!(
        backend.started(),
        2,
        "never more workers than the reserved concurrency"
    );
    assert_eq!(ends[0], Duration::from_millis(100));
    assert_eq!(ends[1], Duration::from_millis(100));
    assert_eq!(
        ends[2],
        Duration::from_millis(200),
        "the third waited for a worker"
    );
    assert_eq!(status(&pool, "f").limit, 2);
}

#[tokio::test(start_paused = true)]
async fn waiting_past_queue_timeout_is_throttled_by_reserved_limit() {
    let mut cfg = config();
    cfg.queue_timeout = Duration::from_secs(1);
    let (_backend, pool) = setup(
        FakeBackend::echo().with_delay(Duration::from_secs(2)),
        cfg,
        &[("f", limits(Some(1), 0))],
    );
    let first = spawn_call(&pool, "f", "a");
    sleep(Duration::from_millis(1)).await;
    let t0 = Instant::now();
    let err = pool.invoke("f", inv("b")).await.unwrap_err();
    assert!(matches!(err, PoolError::Throttled(RESERVED)), "{err:?}");
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
    assert_eq!(
        counts(&pool, "f").3,
        0,
        "the timed-out request left the queue"
    );
    first.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn reserved_zero_throttles_at_once() {
    let (backend, pool) = setup(FakeBackend::echo(), config(), &[("f", limits(Some(0), 0))]);
    let t0 = Instant::now();
    let err = pool.invoke("f", inv("a")).await.unwrap_err();
    assert!(matches!(err, PoolError::Throttled(RESERVED)), "{err:?}");
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert_eq!(backend.started(), 0);
    assert_eq!(status(&pool, "f").limit, 0);
}

#[tokio::test(start_paused = true)]
async fn full_queue_throttles_at_once() {
    let mut cfg = config();
    cfg.queue_len = 1;
    let (_backend, pool) = setup(
        FakeBackend::echo().with_delay(Duration::from_secs(1)),
        cfg,
        &[("f", limits(Some(1), 0))],
    );
    let a = spawn_call(&pool, "f", "a");
    sleep(Duration::from_millis(1)).await;
    let b = spawn_call(&pool, "f", "b");
    sleep(Duration::from_millis(1)).await;
    assert_eq!(counts(&pool, "f"), (0, 1, 0, 1));
    let t0 = Instant::now();
    let err = pool.invoke("f", inv("c")).await.unwrap_err();
    assert!(matches!(err, PoolError::Throttled(RESERVED)), "{err:?}");
    assert_eq!(t0.elapsed(), Duration::ZERO);
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn pool_wide_limit_throttles_with_its_own_reason() {
    let mut cfg = config();
    cfg.max_workers = 2;
    cfg.queue_timeout = Duration::from_secs(1);
    let (backend, pool) = setup(
        FakeBackend::echo().with_delay(Duration::from_secs(5)),
        cfg,
        &[("f", limits(None, 0)), ("g", limits(None, 0))],
    );
    let a = spawn_call(&pool, "f", "a");
    let b = spawn_call(&pool, "f", "b");
    sleep(Duration::from_millis(1)).await;
    let t0 = Instant::now();
    let err = pool.invoke("g", inv("c")).await.unwrap_err();
    assert!(matches!(err, PoolError::Throttled(GLOBAL)), "{err:?}");
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
    // Same for a third call of `f` itself.
    let err = pool.invoke("f", inv("d")).await.unwrap_err();
    assert!(matches!(err, PoolError::Throttled(GLOBAL)), "{err:?}");
    assert_eq!(backend.started(), 2);
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn pool_wide_limit_stops_another_functions_idle_worker() {
    let mut cfg = config();
    cfg.max_workers = 1;
    let (backend, pool) = setup(
        FakeBackend::echo(),
        cfg,
        &[("f", limits(None, 0)), ("g", limits(None, 0))],
    );
    pool.invoke("f", inv("a")).await.unwrap();
    assert_eq!(counts(&pool, "f"), (1, 0, 0, 0));
    let t0 = Instant::now();
    let res = pool.invoke("g", inv("b")).await.unwrap();
    assert_eq!(body(&res), "\"b\"");
    assert_eq!(
        t0.elapsed(),
        Duration::ZERO,
        "no wait for the queue timeout"
    );
    assert_eq!(counts(&pool, "f"), (0, 0, 0, 0));
    assert_eq!(counts(&pool, "g"), (1, 0, 0, 0));
    sleep(Duration::from_millis(1)).await;
    assert!(backend.worker(0).was_stopped());
}

#[tokio::test(start_paused = true)]
async fn request_waiting_on_pool_limit_gets_the_slot_of_a_finishing_worker() {
    let mut cfg = config();
    cfg.max_workers = 1;
    let (backend, pool) = setup(
        FakeBackend::echo().with_delay(Duration::from_millis(200)),
        cfg,
        &[("f", limits(None, 0)), ("g", limits(None, 0))],
    );
    let t0 = Instant::now();
    let a = spawn_call(&pool, "f", "a");
    sleep(Duration::from_millis(1)).await;
    let b = spawn_timed(&pool, "g", "b");
    a.await.unwrap().unwrap();
    let (r, end) = b.await.unwrap();
    assert_eq!(body(&r.unwrap()), "\"b\"");
    assert_eq!(end - t0, Duration::from_millis(400));
    assert_eq!(
        counts(&pool, "f"),
        (0, 0, 0, 0),
        "f's worker made room for g"
    );
    assert_eq!(counts(&pool, "g"), (1, 0, 0, 0));
    assert_eq!(backend.started(), 2);
}

#[tokio::test(start_paused = true)]
async fn released_worker_goes_to_waiters_in_arrival_order() {
    let (backend, pool) = setup(
        FakeBackend::echo().with_delay(Duration::from_millis(100)),
        config(),
        &[("f", limits(Some(1), 0))],
    );
    let mut calls = Vec::new();
    for id in ["a", "b", "c", "d"] {
        calls.push((id, spawn_timed(&pool, "f", id)));
        sleep(Duration::from_millis(1)).await;
    }
    let mut ends = Vec::new();
    for (id, call) in calls {
        let (r, end) = call.await.unwrap();
        assert_eq!(body(&r.unwrap()), format!("\"{id}\""));
        ends.push((end, id));
    }
    ends.sort();
    let order: Vec<_> = ends.iter().map(|(_, id)| *id).collect();
    assert_eq!(order, ["a", "b", "c", "d"]);
    assert_eq!(backend.started(), 1);
    assert_eq!(backend.worker(0).invocations(), 4);
}

#[tokio::test(start_paused = true)]
async fn crashed_idle_worker_is_replaced() {
    let (backend, pool) = setup(FakeBackend::echo(), config(), &[("f", limits(None, 0))]);
    pool.invoke("f", inv("a")).await.unwrap();
    backend.worker(0).kill();
    let res = pool.invoke("f", inv("b")).await.unwrap();
    assert_eq!(body(&res), "\"b\"");
    assert_eq!(backend.started(), 2);
    sleep(Duration::from_millis(1)).await;
    assert!(backend.worker(0).was_stopped());
    let s = status(&pool, "f");
    assert_eq!((s.warm, s.busy), (1, 0));
    assert_eq!(s.pids, vec![1001]);
}

#[tokio::test(start_paused = true)]
async fn worker_that_dies_during_an_invocation_is_dropped() {
    let backend = FakeBackend::echo().with_delay(Duration::from_secs(2));
    let backend = Arc::new(backend);
    let pool = Pool::new(backend.clone(), config());
    let mut short = spec("f");
    short.timeout = Duration::from_secs(1);
    pool.register(short, limits(None, 0));
    let res = pool.invoke("f", inv("a")).await.unwrap();
    assert!(matches!(
        res.outcome,
        InvocationOutcome::Error {
            kind: ErrorKind::Timeout,
            ..
        }
    ));
    assert!(!res.worker_alive);
    sleep(Duration::from_millis(1)).await;
    assert_eq!(counts(&pool, "f"), (0, 0, 0, 0));
    assert!(backend.worker(0).was_stopped());
    pool.invoke("f", inv("b")).await.unwrap();
    assert_eq!(backend.started(), 2);
}

#[tokio::test(start_paused = true)]
async fn gone_warm_worker_is_retried_once_on_a_new_worker() {
    let (backend, pool) = setup(FakeBackend::echo(), config(), &[("f", limits(None, 0))]);
    pool.invoke("f", inv("a")).await.unwrap();
    backend.worker(0).fail_next(FakeFailure::Gone);
    let res = pool.invoke("f", inv("b")).await.unwrap();
    assert_eq!(body(&res), "\"b\"");
    assert_eq!(backend.started(), 2);
    assert_eq!(backend.worker(1).invocations(), 1);
    sleep(Duration::from_millis(1)).await;
    assert!(backend.worker(0).was_stopped());
    assert_eq!(counts(&pool, "f"), (1, 0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn gone_fresh_worker_is_not_retried() {
    let (backend, pool) = setup(FakeBackend::echo(), config(), &[("f", limits(None, 0))]);
    backend.set_first_invoke_failure(Some(FakeFailure::Gone));
    let err = pool.invoke("f", inv("a")).await.unwrap_err();
    assert!(
        matches!(err, PoolError::Worker(WorkerError::Gone(_))),
        "{err:?}"
    );
    assert_eq!(backend.started(), 1);
    assert_eq!(counts(&pool, "f"), (0, 0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn transport_failure_is_not_retried_and_drops_the_worker() {
    let (backend, pool) = setup(FakeBackend::echo(), config(), &[("f", limits(None, 0))]);
    pool.invoke("f", inv("a")).await.unwrap();
    backend.worker(0).fail_next(FakeFailure::Transport);
    let err = pool.invoke("f", inv("b")).await.unwrap_err();
    assert!(
        matches!(err, PoolError::Worker(WorkerError::Transport { .. })),
        "{err:?}"
    );
    assert_eq!(
        backend.started(),
        1,
        "the function may have run: no second try"
    );
    sleep(Duration::from_millis(1)).await;
    assert!(backend.worker(0).was_stopped());
    assert_eq!(counts(&pool, "f"), (0, 0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn failed_cold_start_is_reported_and_frees_the_slot() {
    let (backend, pool) = setup(FakeBackend::echo(), config(), &[("f", limits(Some(1), 0))]);
    backend.set_fail_start(true);
    let err = pool.invoke("f", inv("a")).await.unwrap_err();
    match err {
        PoolError::Start(RuntimeError::Init { payload, .. }) => {
            assert!(String::from_utf8_lossy(&payload).contains("Runtime.ExitError"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(counts(&pool, "f"), (0, 0, 0, 0));
    backend.set_fail_start(false);
    let res = pool.invoke("f", inv("b")).await.unwrap();
    assert_eq!(body(&res), "\"b\"");
}

#[tokio::test(start_paused = true)]
async fn init_failure_during_a_code_edit_is_retried_once_on_the_new_code() {
    let (backend, pool) = setup(
        FakeBackend::echo().with_start_delay(Duration::from_millis(50)),
        config(),
        &[("f", limits(Some(1), 0))],
    );
    // An editor is writing the file: the worker that starts now fails init.
    let edit = pool.code_changing();
    backend.set_fail_start(true);
    let call = spawn_call(&pool, "f", "a");
    sleep(Duration::from_millis(100)).await;
    assert!(
        !call.is_finished(),
        "the failed start waits for the edit to settle"
    );
    // The reloader registers the new code, then the edit is over.
    backend.set_fail_start(false);
    let mut new = spec("f");
    new.code_hash = "edited".to_string();
    pool.register(new, limits(Some(1), 0));
    drop(edit);
    let res = call.await.unwrap().expect("served by the new code");
    assert_eq!(body(&res), "\"a\"");

    // Really broken code (no new spec registered during the edit) still
    // fails, once.
    let mut broken = spec("f");
    broken.code_hash = "broken".to_string();
    pool.register(broken, limits(Some(1), 0));
    let edit = pool.code_changing();
    backend.set_fail_start(true);
    let call = spawn_call(&pool, "f", "b");
    sleep(Duration::from_millis(100)).await;
    drop(edit);
    assert!(matches!(
        call.await.unwrap(),
        Err(PoolError::Start(RuntimeError::Init { .. }))
    ));
}

#[tokio::test(start_paused = true)]
async fn waiter_is_not_starved_by_a_failed_cold_start() {
    let (backend, pool) = setup(
        FakeBackend::echo().with_start_delay(Duration::from_millis(100)),
        config(),
        &[("f", limits(Some(1), 0))],
    );
    backend.set_fail_start(true);
    let t0 = Instant::now();
    let a = spawn_call(&pool, "f", "a");
    sleep(Duration::from_millis(10)).await;
    let b = spawn_timed(&pool, "f", "b");
    sleep(Duration::from_millis(10)).await;
    backend.set_fail_start(false);
    assert!(matches!(a.await.unwrap(), Err(PoolError::Start(_))));
    let (r, end) = b.await.unwrap();
    assert_eq!(body(&r.unwrap()), "\"b\"");
    assert_eq!(
        end - t0,
        Duration::from_millis(200),
        "b started right after a's failure"
    );
}

#[tokio::test(start_paused = true)]
async fn idle_workers_are_reaped_down_to_min_warm() {
    let mut cfg = config();
    cfg.idle_timeout = Duration::from_secs(60);
    let (backend, pool) = setup(
        FakeBackend::echo().with_delay(Duration::from_millis(10)),
        cfg,
        &[("f", limits(None, 1)), ("g", limits(None, 0))],
    );
    let calls: Vec<_> = (0..3)
        .map(|i| spawn_call(&pool, "f", &format!("c{i}")))
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    pool.invoke("g", inv("g")).await.unwrap();
    assert_eq!(counts(&pool, "f"), (3, 0, 0, 0));
    let reaper = pool.spawn_reaper();
    sleep(Duration::from_secs(30)).await;
    assert_eq!(counts(&pool, "f"), (3, 0, 0, 0), "not idle long enough yet");
    assert_eq!(counts(&pool, "g"), (1, 0, 0, 0));
    sleep(Duration::from_secs(32)).await;
    assert_eq!(counts(&pool, "f"), (1, 0, 0, 0), "min_warm is kept");
    assert_eq!(counts(&pool, "g"), (0, 0, 0, 0));
    assert_eq!(backend.stopped(), 3);
    pool.shutdown(Duration::from_secs(1)).await;
    tokio::time::timeout(Duration::from_secs(5), reaper)
        .await
        .expect("reaper ends at shutdown")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn prewarm_starts_min_warm_workers() {
    let (backend, pool) = setup(
        FakeBackend::echo().with_delay(Duration::from_millis(10)),
        config(),
        &[
            ("f", limits(None, 2)),
            ("g", limits(Some(1), 3)),
            ("h", limits(None, 0)),
        ],
    );
    pool.prewarm().await.unwrap();
    assert_eq!(counts(&pool, "f"), (2, 0, 0, 0));
    assert_eq!(
        counts(&pool, "g"),
        (1, 0, 0, 0),
        "min_warm is capped by the reserved concurrency"
    );
    assert_eq!(counts(&pool, "h"), (0, 0, 0, 0));
    assert_eq!(backend.started(), 3);
    let a = spawn_call(&pool, "f", "a");
    let b = spawn_call(&pool, "f", "b");
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    assert_eq!(backend.started(), 3, "pre-warmed workers served the calls");
}

#[tokio::test(start_paused = true)]
async fn prewarm_over_the_pool_limit_is_reported() {
    let mut cfg = config();
    cfg.max_workers = 1;
    let (backend, pool) = setup(
        FakeBackend::echo(),
        cfg,
        &[("f", limits(None, 1)), ("g", limits(None, 1))],
    );
    let err = pool.prewarm().await.unwrap_err();
    assert!(matches!(err, PoolError::Throttled(GLOBAL)), "{err:?}");
    assert_eq!(backend.started(), 1, "what fits is started");
    let warm: usize = pool.status().iter().map(|s| s.warm).sum();
    assert_eq!(warm, 1);
}

#[tokio::test(start_paused = true)]
async fn reaper_replaces_crashed_min_warm_workers() {
    let (backend, pool) = setup(FakeBackend::echo(), config(), &[("f", limits(None, 2))]);
    pool.prewarm().await.unwrap();
    let _reaper = pool.spawn_reaper();
    backend.worker(0).kill();
    sleep(Duration::from_millis(2100)).await;
    assert_eq!(counts(&pool, "f"), (2, 0, 0, 0));
    assert_eq!(backend.started(), 3);
    assert!(backend.worker(0).was_stopped());
    assert!(!status(&pool, "f").pids.contains(&1000));
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_running_calls_then_stops_everything() {
    let (backend, pool) = setup(
        FakeBackend::echo().with_delay(Duration::from_secs(1)),
        config(),
        &[("f", limits(Some(2), 0)), ("g", limits(None, 0))],
    );
    pool.invoke("g", inv("g")).await.unwrap();
    let t0 = Instant::now();
    let a = spawn_call(&pool, "f", "a");
    let b = spawn_call(&pool, "f", "b");
    sleep(Duration::from_millis(1)).await;
    let queued = spawn_call(&pool, "f", "c");
    sleep(Duration::from_millis(1)).await;
    assert_eq!(counts(&pool, "f"), (0, 2, 0, 1));
    pool.shutdown(Duration::from_secs(30)).await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_millis(1100),
        "waited for the running calls: {waited:?}"
    );
    assert!(matches!(
        queued.await.unwrap(),
        Err(PoolError::ShuttingDown)
    ));
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    assert_eq!(backend.stopped(), backend.started());
    assert_eq!(backend.started(), 3);
    assert!(matches!(
        pool.invoke("g", inv("late")).await,
        Err(PoolError::ShuttingDown)
    ));
    assert!(matches!(pool.prewarm().await, Err(PoolError::ShuttingDown)));
    for s in pool.status() {
        assert_eq!((s.warm, s.busy, s.starting), (0, 0, 0), "{s:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_busy_workers_after_the_grace() {
    let (backend, pool) = setup(
        FakeBackend::echo().with_delay(Duration::from_secs(10)),
        config(),
        &[("f", limits(None, 0))],
    );
    let a = spawn_call(&pool, "f", "a");
    sleep(Duration::from_millis(1)).await;
    let t0 = Instant::now();
    pool.shutdown(Duration::from_secs(1)).await;
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
    assert!(backend.worker(0).was_stopped());
    // The caller sees its worker die rather than hang.
    let res = a.await.unwrap().unwrap();
    assert!(!res.worker_alive);
    assert_eq!(counts(&pool, "f"), (0, 0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn caller_dropped_while_queued_leaks_no_slot() {
    let mut cfg = config();
    cfg.queue_len = 1;
    let (backend, pool) = setup(
        FakeBackend::echo().with_delay(Duration::from_secs(1)),
        cfg,
        &[("f", limits(Some(1), 0))],
    );
    let a = spawn_call(&pool, "f", "a");
    sleep(Duration::from_millis(1)).await;
    let dropped =
        tokio::time::timeout(Duration::from_millis(100), pool.invoke("f", inv("b"))).await;
    assert!(dropped.is_err());
    assert_eq!(
        counts(&pool, "f"),
        (0, 1, 0, 0),
        "the queue place was given back"
    );
    // The queue (length 1) accepts a new request.
    let c = spawn_call(&pool, "f", "c");
    a.await.unwrap().unwrap();
    assert_eq!(body(&c.await.unwrap().unwrap()), "\"c\"");
    assert_eq!(backend.started(), 1);
    assert_eq!(counts(&pool, "f"), (1, 0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn caller_dropped_during_cold_start_leaks_no_slot() {
    let (backend, pool) = setup(
        FakeBackend::echo().with_start_delay(Duration::from_secs(1)),
        config(),
        &[("f", limits(Some(1), 0))],
    );
    let dropped =
        tokio::time::timeout(Duration::from_millis(100), pool.invoke("f", inv("a"))).await;
    assert!(dropped.is_err());
    assert_eq!(counts(&pool, "f"), (0, 0, 1, 0));
    sleep(Duration::from_secs(1)).await;
    assert_eq!(
        counts(&pool, "f"),
        (1, 0, 0, 0),
        "the started worker joined the pool"
    );
    pool.invoke("f", inv("b")).await.unwrap();
    assert_eq!(backend.started(), 1);
}

#[tokio::test(start_paused = true)]
async fn caller_dropped_during_invoke_returns_the_worker_when_done() {
    let (backend, pool) = setup(
        FakeBackend::echo().with_delay(Duration::from_secs(1)),
        config(),
        &[("f", limits(Some(1), 0))],
    );
    let dropped =
        tokio::time::timeout(Duration::from_millis(100), pool.invoke("f", inv("a"))).await;
    assert!(dropped.is_err());
    assert_eq!(
        counts(&pool, "f"),
        (0, 1, 0, 0),
        "still busy with the invocation"
    );
    sleep(Duration::from_secs(1)).await;
    assert_eq!(counts(&pool, "f"), (1, 0, 0, 0));
    assert_eq!(
        backend.worker(0).invocations(),
        1,
        "the invocation ran to its end"
    );
    pool.invoke("f", inv("b")).await.unwrap();
    assert_eq!(backend.started(), 1);
}

#[tokio::test(start_paused = true)]
async fn status_counts_starting_busy_and_warm_workers() {
    let (_backend, pool) = setup(
        FakeBackend::echo()
            .with_delay(Duration::from_secs(1))
            .with_start_delay(Duration::from_millis(500)),
        config(),
        &[("f", limits(Some(3), 0)), ("g", limits(None, 0))],
    );
    let a = spawn_call(&pool, "f", "a");
    let b = spawn_call(&pool, "f", "b");
    sleep(Duration::from_millis(100)).await;
    let s = status(&pool, "f");
    assert_eq!((s.warm, s.busy, s.starting, s.limit), (0, 0, 2, 3));
    assert!(s.pids.is_empty());
    sleep(Duration::from_millis(500)).await;
    let s = status(&pool, "f");
    assert_eq!((s.warm, s.busy, s.starting), (0, 2, 0));
    assert_eq!(s.pids, vec![1000, 1001]);
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    assert_eq!(counts(&pool, "f"), (2, 0, 0, 0));
    let names: Vec<_> = pool.status().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["f", "g"]);
    assert_eq!(status(&pool, "g").limit, 16);
}

#[tokio::test(start_paused = true)]
async fn unknown_function_is_reported() {
    let (_backend, pool) = setup(FakeBackend::echo(), config(), &[("f", limits(None, 0))]);
    let err = pool.invoke("nope", inv("a")).await.unwrap_err();
    assert!(matches!(err, PoolError::UnknownFunction(ref n) if n == "nope"));
    assert!(pool.function("nope").is_none());
    assert_eq!(pool.function("f").unwrap().name, "f");
}

#[tokio::test(start_paused = true)]
async fn register_after_start_and_changed_spec_retires_old_workers() {
    let (backend, pool) = setup(FakeBackend::echo(), config(), &[("f", limits(None, 0))]);
    pool.invoke("f", inv("a")).await.unwrap();
    pool.register(spec("g"), limits(None, 0));
    pool.invoke("g", inv("b")).await.unwrap();
    let names: Vec<_> = pool.functions().iter().map(|s| s.name.clone()).collect();
    assert_eq!(names, ["f", "g"]);

    // Same spec again: the warm worker stays.
    pool.register(spec("f"), limits(None, 0));
    assert_eq!(counts(&pool, "f"), (1, 0, 0, 0));

    let mut changed = spec("f");
    changed.code_hash = "v2".to_string();
    pool.register(changed, limits(None, 0));
    assert_eq!(counts(&pool, "f"), (0, 0, 0, 0));
    assert_eq!(pool.function("f").unwrap().code_hash, "v2");
    pool.invoke("f", inv("c")).await.unwrap();
    assert_eq!(backend.started(), 3);
    sleep(Duration::from_millis(1)).await;
    assert!(backend.worker(0).was_stopped());
}

#[tokio::test(start_paused = true)]
async fn raising_the_limit_lets_a_queued_request_start() {
    let (_backend, pool) = setup(
        FakeBackend::echo().with_delay(Duration::from_secs(1)),
        config(),
        &[("f", limits(Some(1), 0))],
    );
    let t0 = Instant::now();
    let a = spawn_call(&pool, "f", "a");
    sleep(Duration::from_millis(1)).await;
    let b = spawn_timed(&pool, "f", "b");
    sleep(Duration::from_millis(1)).await;
    assert_eq!(counts(&pool, "f").3, 1);
    pool.register(spec("f"), limits(Some(2), 0));
    let (r, end) = b.await.unwrap();
    r.unwrap();
    assert_eq!(
        end - t0,
        Duration::from_millis(1002),
        "b did not wait for a"
    );
    a.await.unwrap().unwrap();
}

#[test]
fn throttle_reasons_use_lambda_names() {
    assert_eq!(
        RESERVED.as_str(),
        "ReservedFunctionConcurrentInvocationLimitExceeded"
    );
    assert_eq!(GLOBAL.to_string(), "ConcurrentInvocationLimitExceeded");
}

fn init_message(err: &PoolError) -> String {
    match err {
        PoolError::Start(RuntimeError::Init { payload, .. }) => {
            String::from_utf8_lossy(payload).into_owned()
        }
        other => panic!("expected an init error, got {other:?}"),
    }
}

/// W13: after three failed starts in a row, requests fail at once (no
/// start tried) with the last init error; after the cool-down one probe
/// starts, and its success closes the breaker.
#[tokio::test(start_paused = true)]
async fn w13_breaker_fails_fast_after_three_init_failures_then_recovers() {
    let (backend, pool) = setup(
        FakeBackend::echo().with_start_delay(Duration::from_millis(100)),
        config(),
        &[("f", limits(None, 0))],
    );
    backend.set_fail_start(true);
    for i in 0..3 {
        let t0 = Instant::now();
        let err = pool.invoke("f", inv(&format!("s{i}"))).await.unwrap_err();
        assert!(init_message(&err).contains("Runtime.ExitError"));
        assert_eq!(
            t0.elapsed(),
            Duration::from_millis(100),
            "start {i} was tried"
        );
    }
    let s = status(&pool, "f");
    assert_eq!((s.breaker.as_str(), s.init_failures), ("open", 3));
    assert_eq!(s.retry_in_ms, Some(10_000), "opened by the third failure");
    let t0 = Instant::now();
    let err = pool.invoke("f", inv("fast")).await.unwrap_err();
    assert_eq!(t0.elapsed(), Duration::ZERO, "failed without a start");
    let msg = init_message(&err);
    assert!(msg.contains("Runtime.ExitError"), "{msg}");
    assert!(msg.contains("init failed 3 times in a row"), "{msg}");
    assert_eq!(counts(&pool, "f"), (0, 0, 0, 0), "no slot held");
    // The function is fixed; the breaker lets a probe through only after
    // the cool-down.
    backend.set_fail_start(false);
    assert!(pool.invoke("f", inv("still")).await.is_err());
    sleep(Duration::from_secs(10)).await;
    assert_eq!(status(&pool, "f").breaker, "half-open");
    let res = pool.invoke("f", inv("probe")).await.unwrap();
    assert_eq!(body(&res), "\"probe\"");
    let s = status(&pool, "f");
    assert_eq!((s.breaker.as_str(), s.init_failures), ("ok", 0));
}

/// W13 half-open: while the probe start runs, other requests fail fast; a
/// failed probe opens the breaker for another full cool-down.
#[tokio::test(start_paused = true)]
async fn w13_half_open_lets_one_probe_through() {
    let (backend, pool) = setup(
        FakeBackend::echo().with_start_delay(Duration::from_millis(100)),
        config(),
        &[("f", limits(None, 0))],
    );
    backend.set_fail_start(true);
    for i in 0..3 {
        let _ = pool.invoke("f", inv(&format!("s{i}"))).await;
    }
    sleep(Duration::from_secs(10)).await;
    let probe = spawn_timed(&pool, "f", "probe");
    sleep(Duration::from_millis(10)).await;
    assert_eq!(status(&pool, "f").breaker, "half-open");
    let t0 = Instant::now();
    let other = pool.invoke("f", inv("other")).await.unwrap_err();
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert!(init_message(&other).contains("one attempt running now"));
    let (probe, _) = probe.await.unwrap();
    assert!(matches!(probe, Err(PoolError::Start(_))));
    let s = status(&pool, "f");
    assert_eq!((s.breaker.as_str(), s.init_failures), ("open", 4));
    assert_eq!(s.retry_in_ms, Some(10_000), "a full cool-down again");
}

/// W13: warm workers keep serving while starts are refused, and a
/// threshold of 0 turns the breaker off.
#[tokio::test(start_paused = true)]
async fn w13_breaker_gates_starts_only_and_can_be_turned_off() {
    let (backend, pool) = setup(
        FakeBackend::echo().with_delay(Duration::from_millis(50)),
        config(),
        &[("f", limits(None, 0))],
    );
    pool.invoke("f", inv("warm")).await.unwrap();
    backend.set_fail_start(true);
    // Four concurrent calls: one takes the warm worker, three must start.
    let calls: Vec<_> = (0..4)
        .map(|i| spawn_call(&pool, "f", &format!("c{i}")))
        .collect();
    let mut failed = 0;
    for c in calls {
        failed += usize::from(c.await.unwrap().is_err());
    }
    assert_eq!(failed, 3);
    assert_eq!(status(&pool, "f").breaker, "open");
    let res = pool.invoke("f", inv("again")).await.unwrap();
    assert_eq!(body(&res), "\"again\"", "warm worker still serves");

    let (backend, pool) = setup(
        FakeBackend::echo(),
        PoolConfig {
            breaker_threshold: 0,
            ..config()
        },
        &[("f", limits(None, 0))],
    );
    backend.set_fail_start(true);
    for i in 0..5 {
        let _ = pool.invoke("f", inv(&format!("s{i}"))).await;
    }
    assert_eq!(status(&pool, "f").breaker, "ok");
    backend.set_fail_start(false);
    pool.invoke("f", inv("ok")).await.unwrap();
}
