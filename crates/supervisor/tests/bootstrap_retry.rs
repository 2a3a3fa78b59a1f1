//! The built-in Python bootstrap against a Runtime API that breaks its
//! connections on purpose: a `GET /next` cut off is sent again on a new
//! connection, a `POST /response` cut off is never sent again (the runtime
//! exits instead). A hand-written server, since the real one never breaks a
//! connection at the wrong moment.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use esb_runtimes_core::launch::PYTHON_BOOTSTRAP_SOURCE;

/// `python3`, or None; a missing interpreter fails the test under `CI=true`.
fn python() -> Option<&'static str> {
    let found = Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some("python3");
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "python3 is required under CI=true"
    );
    eprintln!("skipped: no python3");
    None
}

/// A directory with the built-in bootstrap and a trivial handler.
fn bootstrap_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("esb_bootstrap.py"), PYTHON_BOOTSTRAP_SOURCE).unwrap();
    std::fs::write(
        dir.join("app.py"),
        "def handler(event, context):\n    return {'ok': True}\n",
    )
    .unwrap();
    dir
}

/// Starts the bootstrap of `dir` as ESB does (`python -S`, a clean
/// environment) against the Runtime API at `addr`.
fn start_bootstrap(
    python: &str,
    dir: &std::path::Path,
    addr: &str,
    stderr: Stdio,
) -> std::process::Child {
    Command::new(python)
        .arg("-S")
        .arg(dir.join("esb_bootstrap.py"))
        .arg("app.handler")
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", addr)
        .env("LAMBDA_TASK_ROOT", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// Reads one request (head and Content-Length body); None at EOF.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<String> {
    let mut head = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(head.lines().next().unwrap_or_default().to_string())
}

const EVENT: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
Lambda-Runtime-Aws-Request-Id: req-1\r\nLambda-Runtime-Deadline-Ms: 99999999999999\r\n\
Lambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:000000000000:function:f\r\n\
Content-Length: 2\r\n\r\n{}";

#[test]
fn bootstrap_retries_next_but_never_resends_a_post() {
    let Some(python) = python() else { return };
    let dir = bootstrap_dir("esb-bootstrap-retry");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (seen_tx, seen) = mpsc::channel::<String>();
    // Connection 1: the first /next is cut off unanswered. Connection 2:
    // the retried /next gets an event, the /response is cut off unanswered.
    // Any later connection records what it is asked, and never answers.
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { return };
            let seen_tx = seen_tx.clone();
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                while let Some(line) = read_request(&mut reader) {
                    let _ = seen_tx.send(format!("conn{n}: {line}"));
                    if n == 1 && line.starts_with("GET") {
                        writer.write_all(EVENT.as_bytes()).unwrap();
                        continue;
                    }
                    if n <= 1 {
                        let _ = writer.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                }
            });
        }
    });

    let mut child = start_bootstrap(python, &dir, &addr, Stdio::piped());
    // The runtime must give up (exit) after the broken POST; poll for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "bootstrap did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "exit after a lost POST: {stderr}");

    let requests: Vec<String> = seen.try_iter().collect();
    let get = "GET /2018-06-01/runtime/invocation/next HTTP/1.1";
    let post = "POST /2018-06-01/runtime/invocation/req-1/response HTTP/1.1";
    assert_eq!(
        requests,
        vec![
            format!("conn0: {get}"),
            format!("conn1: {get}"),
            format!("conn1: {post}"),
        ],
        "the /next is retried once, the /response is sent exactly once; stderr: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

const ACCEPTED: &str = "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"status\":\"OK\"}";

/// The result's POST and the next `GET /next` go out in one write. When
/// the connection breaks after the POST was answered but before the GET
/// was, only the GET is sent again, on a new connection.
#[test]
fn bootstrap_pipelines_the_next_get_and_resends_only_it() {
    let Some(python) = python() else { return };
    let dir = bootstrap_dir("esb-bootstrap-pipe");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (seen_tx, seen) = mpsc::channel::<String>();
    // Connection 0: the first /next gets an event, its /response is
    // answered, the pipelined /next is read and the connection cut.
    // Later connections record what they are asked and never answer.
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { return };
            let seen_tx = seen_tx.clone();
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let mut gets = 0;
                while let Some(line) = read_request(&mut reader) {
                    let _ = seen_tx.send(format!("conn{n}: {line}"));
                    if n > 0 {
                        continue;
                    }
                    if line.starts_with("POST") {
                        writer.write_all(ACCEPTED.as_bytes()).unwrap();
                    } else if gets == 0 {
                        gets += 1;
                        writer.write_all(EVENT.as_bytes()).unwrap();
                    } else {
                        let _ = writer.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                }
            });
        }
    });

    let mut child = start_bootstrap(python, &dir, &addr, Stdio::null());
    let get = "GET /2018-06-01/runtime/invocation/next HTTP/1.1";
    let post = "POST /2018-06-01/runtime/invocation/req-1/response HTTP/1.1";
    let expected = vec![
        format!("conn0: {get}"),
        format!("conn0: {post}"),
        format!("conn0: {get}"),
        format!("conn1: {get}"),
    ];
    let mut requests = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while requests.len() < expected.len() && Instant::now() < deadline {
        if let Ok(r) = seen.recv_timeout(Duration::from_millis(100)) {
            requests.push(r);
        }
    }
    assert_eq!(
        requests, expected,
        "the POST is sent once, the cut-off GET again"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the runtime keeps waiting for its next event"
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
