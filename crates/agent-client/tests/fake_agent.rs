//! The client side of the agent (what `esb up --runtime docker` links)
//! against the in-process fake agent: what it asks for, what it lists, how
//! it follows an agent that restarts, what shutdown gives back.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use esb_agent_client::testing::{AgentCall, FakeAgent};
use esb_agent_client::{AgentBackend, ImageBuild};
use esb_runtimes_core::{FunctionSpec, RuntimeBackend, WorkerEvent};

fn spec(name: &str) -> Arc<FunctionSpec> {
    Arc::new(FunctionSpec {
        name: name.to_string(),
        runtime: "python3.11".to_string(),
        handler: Some("app.handler".to_string()),
        code_dir: PathBuf::from("/srv/code"),
        image: None,
        memory_mb: 128,
        timeout: Duration::from_secs(3),
        environment: Default::default(),
        region: "us-east-1".to_string(),
        account_id: "123456789012".to_string(),
        code_hash: "h1".to_string(),
    })
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_client_follows_a_restarted_agent_and_never_takes_a_held_worker_twice() {
    let first = FakeAgent::new("boot1", "127.0.0.1:9");
    let running = first.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = running.addr;
    let client = AgentBackend::connect(&format!("http://{addr}"), Duration::from_secs(5))
        .await
        .unwrap();
    let held = client.start_worker(spec("f")).await.unwrap();
    assert_eq!(held.id(), "boot1-w1");
    let listed = client.list_workers().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].function.as_str(), listed[0].state.as_str()),
        ("f", "running")
    );

    // The agent dies and a new one comes up on the same address, having
    // adopted the worker this client holds plus one nobody holds.
    running.kill().await;
    let second = FakeAgent::new("boot2", "127.0.0.1:9");
    second.adopt("boot1-w1", "f");
    second.adopt("spare", "f");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let _task = loop {
        match second.serve(addr).await {
            Ok(running) => break running,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "rebind: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let mut events = client.events().unwrap();
    let next = client.start_worker(spec("f")).await.unwrap();
    assert_eq!(
        next.id(),
        "spare",
        "the held worker is excluded, the spare adopted"
    );
    assert!(second.calls().contains(&AgentCall::Ensure {
        function: "f".to_string(),
        exclude: vec!["boot1-w1".to_string()],
    }));
    let states: Vec<(String, String)> = client
        .list_workers()
        .await
        .unwrap()
        .into_iter()
        .map(|w| (w.id, w.state))
        .collect();
    assert_eq!(
        states,
        vec![
            ("boot1-w1".to_string(), "running".to_string()),
            ("spare".to_string(), "running".to_string())
        ]
    );

    // Its events reach the client once it re-subscribed.
    eventually("client re-subscribed", || second.watchers() > 0).await;
    second.kill("boot1-w1");
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        event,
        WorkerEvent::Exited {
            worker_id: "boot1-w1".to_string(),
            function: "f".to_string()
        }
    );
    eventually("held worker marked dead", || !held.is_alive()).await;
    assert!(next.is_alive());

    // Shutdown gives back what this client holds, nothing else.
    second.adopt("someone-elses", "g");
    client.shutdown().await;
    assert_eq!(second.worker_ids(), vec!["someone-elses".to_string()]);
}

#[tokio::test]
async fn builds_are_asked_of_the_agent() {
    let agent = FakeAgent::new("b", "127.0.0.1:9");
    let running = agent.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = running.addr;
    let client = AgentBackend::connect(&format!("http://{addr}"), Duration::from_secs(5))
        .await
        .unwrap();
    let job = ImageBuild {
        function: "f".to_string(),
        context: PathBuf::from("/ctx"),
        dockerfile: "Dockerfile".to_string(),
        tag: "f:latest".to_string(),
    };
    let (built, output) = client.build_image(&job, true).await.unwrap();
    assert!(built);
    assert_eq!(output, vec!["built f:latest".to_string()]);
    client.build_base_image("python3.11", false).await.unwrap();
    assert_eq!(
        agent.calls(),
        vec![
            AgentCall::BuildImage("f:latest".to_string()),
            AgentCall::BuildBaseImage("python3.11".to_string())
        ]
    );
}
