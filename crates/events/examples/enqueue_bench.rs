//! Measures durable enqueue throughput and enqueue-to-invoke latency.
//!
//! `cargo run --release -p esb-events --example enqueue_bench [events] [concurrency]`
//! Runs in a temporary directory on the same disk as the system temp dir
//! (set TMPDIR to measure another disk).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use esb_events::dynamodb::{ItemChange, StreamRecordBuilder, StreamViewType};
use esb_events::stream::{StartingPosition, StreamLog, StreamMapping, StreamPoller};
use esb_events::{ChainContext, EventMeta, EventQueue, InvokeOutcome, Invoker, QueueConfig};

struct Stamp(Mutex<Vec<(String, Instant)>>);

#[async_trait::async_trait]
impl Invoker for Stamp {
    async fn invoke(&self, _f: &str, _p: Bytes, id: &str, _c: &ChainContext) -> InvokeOutcome {
        self.0
            .lock()
            .expect("lock")
            .push((id.to_string(), Instant::now()));
        InvokeOutcome::Success {
            response: Bytes::new(),
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let total: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let conc: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(256);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = QueueConfig {
        capacity: total + 10,
        ..QueueConfig::default()
    };
    let q = EventQueue::open(dir.path(), cfg).expect("open");
    let payload = Bytes::from(format!("{{\"body\":\"{}\"}}", "x".repeat(200)));

    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let q = Arc::clone(&q);
        let p = payload.clone();
        let n = total / conc;
        tasks.push(tokio::spawn(async move {
            for _ in 0..n {
                q.enqueue("bench", p.clone(), EventMeta::default())
                    .await
                    .expect("accepted");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let el = start.elapsed();
    let n = (total / conc) * conc;
    println!(
        "throughput: {n} durable enqueues, {conc} concurrent callers, {el:?} -> {:.0} events/s",
        n as f64 / el.as_secs_f64()
    );

    // Latency: one event at a time, enqueue call -> invoker called.
    let stamp = Arc::new(Stamp(Mutex::new(Vec::new())));
    q.start_dispatcher(stamp.clone());
    while q.stats().depth > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stamp.0.lock().expect("lock").clear();
    let mut lat = Vec::new();
    for _ in 0..300 {
        let t0 = Instant::now();
        let id = q
            .enqueue("bench", payload.clone(), EventMeta::default())
            .await
            .expect("ok")
            .to_string();
        let ack = t0.elapsed();
        let seen = loop {
            if let Some(t) = stamp
                .0
                .lock()
                .expect("lock")
                .iter()
                .find(|s| s.0 == id)
                .map(|s| s.1)
            {
                break t;
            }
            tokio::task::yield_now().await;
        };
        lat.push((ack, seen - t0));
    }
    let mut acks: Vec<_> = lat.iter().map(|l| l.0).collect();
    let mut runs: Vec<_> = lat.iter().map(|l| l.1).collect();
    acks.sort();
    runs.sort();
    let p = |v: &[Duration], q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    println!(
        "single enqueue ack (fsync) p50 {:?} p99 {:?}",
        p(&acks, 0.5),
        p(&acks, 0.99)
    );
    println!(
        "enqueue -> invoker called  p50 {:?} p99 {:?}",
        p(&runs, 0.5),
        p(&runs, 0.99)
    );

    // DynamoDB stream: append (durable) -> poller invokes the function.
    let sdir = tempfile::tempdir().expect("tempdir");
    let builder = StreamRecordBuilder::new(
        "T",
        StreamViewType::NewAndOldImages,
        "123456789012",
        "us-east-1",
        "2026-01-01T00:00:00.000",
    );
    let log = StreamLog::open(sdir.path(), builder, 64 << 20).expect("stream log");
    let seen = Arc::new(Stamp(Mutex::new(Vec::new())));
    StreamPoller::new(
        log.clone(),
        StreamMapping::new("fn", StartingPosition::TrimHorizon),
        seen.clone(),
    )
    .spawn();
    let mut lat = Vec::new();
    for i in 0..200 {
        let change = ItemChange {
            keys: serde_json::json!({"pk": {"S": format!("k{i}")}}),
            old: None,
            new: Some(serde_json::json!({"pk": {"S": format!("k{i}")}})),
        };
        let before = seen.0.lock().expect("lock").len();
        let t0 = Instant::now();
        log.append(&change).await.expect("append");
        while seen.0.lock().expect("lock").len() == before {
            tokio::task::yield_now().await;
        }
        lat.push(t0.elapsed());
    }
    lat.sort();
    println!(
        "stream write -> function invoked p50 {:?} p99 {:?}",
        p(&lat, 0.5),
        p(&lat, 0.99)
    );
}
