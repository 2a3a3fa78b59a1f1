//! The supervisor: one per worker. It starts the function's runtime
//! process from a [`LaunchPlan`](esb_runtimes_core::launch::LaunchPlan),
//! serves it the Lambda Runtime API on `127.0.0.1:<ephemeral port>`, hands
//! it invocations one at a time, captures its stdout/stderr per request
//! (with START/END/REPORT lines), enforces the timeout by killing the
//! process group, and turns init failures and crashes into Lambda's error
//! payloads.
//!
//! One file per job: [`config`] (what a worker needs), `supervisor` (start,
//! init, stop), `invoke` (one invocation and its log lines), `rendezvous`
//! (the hand-off between `invoke` and the Runtime API), `server` (the
//! Runtime API over HTTP/1.1), `process` (spawn, reap, kill, memory),
//! `logs` (stdout/stderr capture), [`containment`] (a cgroup per worker:
//! kill every descendant, limits, leftovers of a dead ESB) and [`sandbox`]
//! (the default when root: own network namespace with the Runtime API and
//! relays, own mount and IPC namespaces, one unprivileged uid per worker).
//!
//! Must not: know about routes, auth, pools or HTTP callers; decide when
//! workers start or stop (the pool does).

pub mod config;
pub mod containment;
mod invoke;
mod logs;
mod process;
mod rendezvous;
pub mod sandbox;
mod server;
mod supervisor;

pub use config::{DEFAULT_INIT_TIMEOUT, SupervisorConfig};
pub use process::describe_exit;
pub use supervisor::Supervisor;

/// Largest buffered response a runtime may post (RIE's 6 MiB + 100 bytes);
/// larger ones get 413 and the caller `Function.ResponseSizeTooLarge`.
pub const MAX_RESPONSE_SIZE: usize = server::MAX_RESPONSE_BYTES;
