//! Against a real containerd: a private daemon (its own root, state and
//! socket under a temporary directory, so it never meets the system's or
//! Docker's) started by the test. The docker runtime's backend runs over
//! [`ContainerdEngine`]: a worker container runs the `esb` container
//! supervisor with a `provided.al2023` bootstrap and answers an
//! invocation; it is hardened (no capabilities, no_new_privs, read-only
//! root, memory limit); a second backend adopts it by its labels; a kill
//! from outside arrives as an event; the janitor removes stopped and
//! unknown containers; removing the instance leaves no container, network
//! namespace or bridge.
//!
//! Needs root, `containerd`, `ctr`, `ip`, and the built `esb` and
//! `esb-fixture-rust-bootstrap` (`cargo build -p esb-cli -p
//! esb-fixture-rust-bootstrap`). Skipped without them, except with
//! `CI=true`, where that is a failure.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use esb_runtimes_containerd::{ContainerdEngine, ContainerdOptions, net};
use esb_runtimes_core::{FunctionSpec, Invocation, InvocationOutcome, RuntimeBackend};
use esb_runtimes_docker::engine::Engine;
use esb_runtimes_docker::{ContainerEventKind, DockerBackend, DockerOptions, SupervisorMount};

const IMAGE: &str = "esb-test/minimal:latest";

fn missing(what: &str) -> bool {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{what} is required with CI=true");
    }
    eprintln!("skipped: {what} is missing");
    true
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../target/debug")
}

struct Daemon {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("esb-ctrd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("c.sock");
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{1}\"\n[ttrpc]\n  address = \"{1}.ttrpc\"\n",
            dir.display(),
            socket.display()
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, dir, socket }
    }

    fn ctr(&self, namespace: &str, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", namespace])
            .args(args)
            .output()
            .expect("ctr");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.join("state"))
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// A minimal root file system: directories and the host's C library (the
// bootstrap is a dynamically linked Rust program).
fn tar_header(out: &mut Vec<u8>, name: &str, kind: u8, mode: u32, size: usize) {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(format!("{mode:07o}\0").as_bytes());
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    out.extend_from_slice(&h);
}

fn minimal_rootfs(libs: &[PathBuf]) -> Vec<u8> {
    let mut tar = Vec::new();
    for dir in [
        "etc/",
        "tmp/",
        "var/",
        "var/task/",
        "proc/",
        "sys/",
        "dev/",
        "esb/",
        "lib/",
        "lib/x86_64-linux-gnu/",
        "lib64/",
    ] {
        tar_header(&mut tar, dir, b'5', 0o755, 0);
    }
    let mut add = |path: &str, data: &[u8]| {
        tar_header(&mut tar, path, b'0', 0o755, data.len());
        tar.extend_from_slice(data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    };
    for lib in libs {
        let name = lib.file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(lib).unwrap();
        add(&format!("lib/x86_64-linux-gnu/{name}"), &data);
        if name.starts_with("ld-linux") {
            add(&format!("lib64/{name}"), &data);
        }
    }
    // The bootstrap needs libm as well as what the test links.
    let libm = Path::new("/lib/x86_64-linux-gnu/libm.so.6");
    if libm.exists() && !libs.iter().any(|l| l.ends_with("libm.so.6")) {
        add(
            "lib/x86_64-linux-gnu/libm.so.6",
            &std::fs::read(libm).unwrap(),
        );
    }
    add("etc/passwd", b"root:x:0:0::/root:/sbin/nologin\n");
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

fn spec(code_dir: &Path, name: &str) -> Arc<FunctionSpec> {
    Arc::new(FunctionSpec {
        name: name.to_string(),
        runtime: "provided.al2023".to_string(),
        handler: None,
        code_dir: code_dir.to_path_buf(),
        image: None,
        memory_mb: 128,
        timeout: Duration::from_secs(10),
        environment: BTreeMap::new(),
        region: "us-east-1".to_string(),
        account_id: "123456789012".to_string(),
        code_hash: "hash-1".to_string(),
    })
}

fn invocation(echo: &str) -> Invocation {
    Invocation {
        request_id: format!("req-{echo}"),
        payload: Bytes::from(format!("{{\"echo\":\"{echo}\"}}")),
        invoked_function_arn: "arn:aws:lambda:us-east-1:123456789012:function:Echo".to_string(),
        trace_id: None,
        client_context: None,
        cognito_identity: None,
        timeout: None,
    }
}

async fn poll<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn task_pid(daemon: &Daemon, ns: &str, id: &str) -> Option<u32> {
    daemon
        .ctr(ns, &["task", "ls"])
        .lines()
        .find(|l| l.starts_with(id))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_run_hardened_are_adopted_and_swept_on_containerd() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n");
    if root.ok() != Some(true) && missing("root") {
        return;
    }
    for tool in ["containerd", "ctr", "ip"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found && missing(tool) {
            return;
        }
    }
    let esb = std::env::var_os("ESB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("esb"));
    let bootstrap = target_dir().join("esb-fixture-rust-bootstrap");
    if (!esb.is_file() || !bootstrap.is_file())
        && missing("target/debug/esb and esb-fixture-rust-bootstrap")
    {
        return;
    }

    let daemon = Daemon::start();
    let ns = format!("esb-test-{}", std::process::id());
    let mut options = ContainerdOptions::new(&daemon.socket);
    options.namespace = ns.clone();
    options.state_dir = daemon.dir.join("esb-state");
    let engine = ContainerdEngine::connect(options).await.expect("connect");
    engine.ping().await.expect("ping");

    let own = SupervisorMount::this_executable().unwrap();
    let mount = SupervisorMount {
        exe: esb.clone(),
        loader: own.loader.clone(),
        libs: own.libs.clone(),
    };
    let rootfs = minimal_rootfs(&own.libs);
    engine
        .import_layers(
            IMAGE,
            &[&rootfs],
            &serde_json::json!({"config": {"Env": ["PATH=/usr/bin:/bin"]}}),
            HashMap::new(),
        )
        .await
        .expect("import the test image");
    let facts = engine.image_facts(IMAGE).await.expect("image facts");
    assert!(!facts.esb_image);
    assert!(daemon.ctr(&ns, &["images", "ls", "-q"]).contains(IMAGE));

    let code = daemon.dir.join("code");
    std::fs::create_dir_all(&code).unwrap();
    std::fs::copy(&bootstrap, code.join("bootstrap")).unwrap();
    let instance = format!("ctrtest{}", std::process::id());
    let make_options = || {
        let mut o = DockerOptions::new(instance.clone(), mount.clone());
        o.images
            .insert("provided.al2023".to_string(), IMAGE.to_string());
        o.cache_dir = daemon.dir.join("runtime");
        o
    };
    let engine_dyn: Arc<dyn Engine> = Arc::new(engine.clone());
    let first = DockerBackend::with_engine(engine_dyn.clone(), make_options())
        .await
        .unwrap();
    let spec = spec(&code, "Echo");

    // A worker starts and answers.
    let worker = first
        .start_worker(spec.clone())
        .await
        .expect("start worker");
    let result = worker.invoke(invocation("hello")).await.expect("invoke");
    let InvocationOutcome::Success(body) = &result.outcome else {
        panic!("not a response: {:?}", result.outcome);
    };
    let body: serde_json::Value = serde_json::from_slice(body).unwrap();
    let inner: serde_json::Value = serde_json::from_str(body["body"].as_str().unwrap()).unwrap();
    assert_eq!(inner["echo"], "hello");
    assert_eq!(inner["function"], "Echo");

    // It is listed with its address on the instance bridge.
    let label = format!("io.esb.instance={instance}");
    let listed = engine.list_containers(&label).await.unwrap();
    assert_eq!(listed.len(), 1);
    let container = &listed[0];
    assert!(container.running);
    let gateway = engine
        .network_gateway(&format!("esb-{instance}"))
        .await
        .unwrap()
        .unwrap();
    let ip = container.ip.expect("an address");
    assert_eq!(
        ip.to_string().rsplit_once('.').unwrap().0,
        gateway.to_string().rsplit_once('.').unwrap().0
    );

    // Hardened like a docker worker.
    let pid = task_pid(&daemon, &ns, &container.id).expect("task pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    assert!(status.contains("CapBnd:\t0000000000000000"), "{status}");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root_line = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap();
    assert!(
        root_line.split_whitespace().nth(5).unwrap().contains("ro"),
        "{root_line}"
    );
    assert!(
        mountinfo
            .lines()
            .any(|l| l.split_whitespace().nth(4) == Some("/tmp") && l.contains("tmpfs")),
        "no tmpfs /tmp"
    );

    // A second backend (a restarted agent) adopts it by its labels.
    let second = DockerBackend::with_engine(engine_dyn.clone(), make_options())
        .await
        .unwrap();
    let report = second.adopt_and_sync().await.unwrap();
    assert_eq!(report.adopted, vec![worker.id().to_string()]);
    let adopted = second.ensure_worker(&spec, &[]).await.unwrap();
    assert!(adopted.adopted);
    assert_eq!(adopted.worker_id, worker.id());

    // Killed from outside: the event arrives, the janitor removes it.
    let mut events = second.subscribe();
    daemon.ctr(&ns, &["task", "kill", "-s", "SIGKILL", &container.id]);
    let event = tokio::time::timeout(Duration::from_secs(20), events.recv())
        .await
        .expect("an exit event")
        .unwrap();
    assert_eq!(event.worker_id, worker.id());
    assert_eq!(event.kind, ContainerEventKind::Exited);
    second.sweep(Duration::from_secs(300)).await;
    poll("the stopped container to go", || {
        let engine = engine.clone();
        let label = label.clone();
        async move { engine.list_containers(&label).await.unwrap().is_empty() }
    })
    .await;
    assert!(!net::netns_path(&container.id).exists());

    // A container the sweeping agent does not know is removed too.
    let stray = first
        .start_worker(spec.clone())
        .await
        .expect("second worker");
    assert_eq!(engine.list_containers(&label).await.unwrap().len(), 1);
    second.sweep(Duration::from_secs(300)).await;
    assert!(engine.list_containers(&label).await.unwrap().is_empty());
    drop(stray);

    // Removing the instance leaves no container, namespace or bridge.
    let third = first
        .start_worker(spec.clone())
        .await
        .expect("third worker");
    let third_container = engine.list_containers(&label).await.unwrap()[0].id.clone();
    assert!(net::netns_path(&third_container).exists());
    let removed = first.remove_instance().await;
    assert!(removed >= 1);
    drop(third);
    assert!(engine.list_containers(&label).await.unwrap().is_empty());
    assert!(!net::netns_path(&third_container).exists());
    let bridge = net::bridge_name(&format!("esb-{instance}"));
    let link = Command::new("ip")
        .args(["link", "show", &bridge])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!link.success(), "bridge {bridge} is still there");
    drop(daemon);
}
