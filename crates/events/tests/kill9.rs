//! kill -9 during a burst of enqueues loses no acknowledged event.
//!
//! The test re-runs its own binary as a child (`ESB_EVENTS_CHILD_DIR` set):
//! the child enqueues from many tasks and prints `ACK <id>` after each
//! `enqueue` returned. The parent SIGKILLs it mid-burst, reopens the queue and
//! checks every acknowledged id is delivered.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use esb_events::{ChainContext, EventMeta, EventQueue, InvokeOutcome, Invoker, QueueConfig};

const CHILD_ENV: &str = "ESB_EVENTS_CHILD_DIR";

struct Collect(Mutex<Vec<String>>);

#[async_trait::async_trait]
impl Invoker for Collect {
    async fn invoke(
        &self,
        _f: &str,
        _p: Bytes,
        request_id: &str,
        _c: &ChainContext,
    ) -> InvokeOutcome {
        self.0.lock().expect("lock").push(request_id.to_string());
        InvokeOutcome::Success {
            response: Bytes::new(),
        }
    }
}

fn child(dir: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let q = EventQueue::open(dir, QueueConfig::default()).expect("open");
        let out = Arc::new(Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for t in 0..64 {
            let q = Arc::clone(&q);
            let out = Arc::clone(&out);
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let id = q
                        .enqueue(
                            "f",
                            Bytes::from(format!("{{\"t\":{t},\"i\":{i}}}")),
                            EventMeta::default(),
                        )
                        .await
                        .expect("accepted");
                    let mut o = out.lock().expect("lock");
                    writeln!(o, "ACK {id}").expect("stdout");
                    o.flush().expect("flush");
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

#[test]
fn kill_9_mid_burst_loses_no_acknowledged_event() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut acked = HashSet::new();
    for round in 0..2 {
        let mut proc = Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "kill_9_mid_burst_loses_no_acknowledged_event",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = proc.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let target = acked.len() + 3000;
        while acked.len() < target {
            let line = lines.next().expect("child stopped early").expect("line");
            if let Some(id) = line.strip_prefix("ACK ") {
                acked.insert(id.to_string());
            }
        }
        proc.kill().expect("SIGKILL"); // std's kill is SIGKILL on unix
        // Ids printed before the kill landed are acknowledged too.
        for line in lines.map_while(Result::ok) {
            if let Some(id) = line.strip_prefix("ACK ") {
                acked.insert(id.to_string());
            }
        }
        let status = proc.wait().expect("wait");
        assert!(
            !status.success(),
            "round {round}: child must have been killed"
        );
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let q = EventQueue::open(dir.path(), QueueConfig::default()).expect("reopen");
        let depth = q.stats().depth;
        assert!(
            depth >= acked.len(),
            "queue holds {depth} < {} acknowledged",
            acked.len()
        );
        let inv = Arc::new(Collect(Mutex::new(Vec::new())));
        q.start_dispatcher(inv.clone());
        let deadline = Instant::now() + Duration::from_secs(60);
        while q.stats().depth > 0 {
            assert!(Instant::now() < deadline, "not drained: {:?}", q.stats());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let delivered: HashSet<String> = inv.0.lock().expect("lock").iter().cloned().collect();
        let missing: Vec<_> = acked.difference(&delivered).collect();
        assert!(
            missing.is_empty(),
            "{} acknowledged events lost, e.g. {:?}",
            missing.len(),
            missing.first()
        );
        eprintln!(
            "{} acknowledged, {} delivered after two kill -9",
            acked.len(),
            delivered.len()
        );
    });
}
