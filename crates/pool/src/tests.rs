//! The pool's books under a storm of calls, cancellations and crashes.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::sync::Arc;
use std::time::Duration;

use esb_runtimes_core::{Invocation, WorkerError};

use crate::{FunctionLimits, Pool, PoolConfig, PoolError};
use esb_test_support::{FakeBackend, spec};

fn inv(id: u64) -> Invocation {
    Invocation {
        request_id: format!("req-{id}"),
        payload: id.to_string().into_bytes().into(),
        invoked_function_arn: String::new(),
        trace_id: None,
        client_context: None,
        cognito_identity: None,
        timeout: None,
    }
}

/// The pool-wide count equals the sum of the functions' slots, and
/// nothing is left busy, starting or queued.
fn assert_quiet_and_consistent(pool: &Pool) {
    let inner = &pool.inner;
    let mut live = 0;
    for f in inner.all_functions() {
        let st = f.lock();
        assert_eq!(st.busy(), 0, "{}", st.spec.name);
        assert_eq!(st.starting, 0, "{}", st.spec.name);
        assert!(st.waiters.is_empty(), "{}", st.spec.name);
        assert!(st.live() <= st.cap(inner.config.max_workers));
        live += st.live();
    }
    let total = inner.global.lock().total;
    assert_eq!(total, live, "pool-wide count matches the workers");
    assert!(total <= inner.config.max_workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_with_cancellations_and_crashes_keeps_the_books_straight() {
    let backend = Arc::new(FakeBackend::echo().with_delay(Duration::from_millis(2)));
    let pool = Pool::new(
        backend.clone(),
        PoolConfig {
            max_workers: 4,
            idle_timeout: Duration::from_millis(30),
            queue_timeout: Duration::from_millis(40),
            queue_len: 6,
            ..PoolConfig::default()
        },
    );
    let fns = [
        (
            "a",
            FunctionLimits {
                reserved_concurrency: Some(2),
                min_warm: 0,
            },
        ),
        (
            "b",
            FunctionLimits {
                reserved_concurrency: None,
                min_warm: 0,
            },
        ),
        (
            "c",
            FunctionLimits {
                reserved_concurrency: Some(3),
                min_warm: 1,
            },
        ),
    ];
    for (name, limits) in &fns {
        pool.register(spec(name), limits.clone());
    }
    let reaper = pool.spawn_reaper();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut tasks = Vec::new();
    for i in 0..600u64 {
        let r = next();
        let name = fns[(r % 3) as usize].0;
        let p = pool.clone();
        let cancel_after = (r >> 8) % 4 == 0;
        tasks.push(tokio::spawn(async move {
            let call = p.invoke(name, inv(i));
            if cancel_after {
                let _ = tokio::time::timeout(Duration::from_millis(1), call).await;
            } else {
                match call.await {
                    Ok(_)
                    | Err(PoolError::Throttled(_))
                    | Err(PoolError::Worker(WorkerError::Gone(_))) => {}
                    Err(other) => panic!("unexpected {other:?}"),
                }
            }
        }));
        if (r >> 16) % 50 == 0 {
            let started = backend.started();
            if started > 0 {
                backend.worker((r >> 24) as usize % started).kill();
            }
        }
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Let cancelled invocations finish and the reaper settle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_quiet_and_consistent(&pool);
    // Still serving: parallel calls of one function run, evicting the
    // others' idle workers as needed (`c` keeps its `min_warm`).
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let p = pool.clone();
            tokio::spawn(async move { p.invoke("b", inv(1000 + i)).await })
        })
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    pool.shutdown(Duration::from_secs(1)).await;
    reaper.await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(backend.stopped(), backend.started(), "every worker stopped");
}
