//! The ESB agent: the compute-plane process that alone opens the container
//! engine socket and serves the runtime operations over gRPC (tonic):
//! `EnsureWorker`, `DestroyWorker`, `ListWorkers`, `Health`, a
//! `WatchEvents` stream (exited, OOM-killed), `BuildImage` and
//! `BuildBaseImage`. On start it runs Adopt & Sync and a janitor
//! ([`esb_runtimes_docker`]). Run as the hidden `esb agent` subcommand.
//! The engine is Docker's (bollard) or containerd's (`--engine
//! containerd`, [`esb_runtimes_containerd`]); everything above the
//! engine is the same.
//!
//! The other side (wire types, the client [`esb_agent_client::AgentBackend`]
//! the pool uses) is `esb-agent-client`, which has no bollard: only this
//! crate links the engine APIs (bollard, containerd-client).
//!
//! Must not: accept client traffic or hold pool policy.
#![forbid(unsafe_code)]

pub mod limits;
pub mod publish;
mod server;
pub mod stage;

pub use server::{AgentArgs, AgentError, AgentService, CHILD_TOKEN_ENV, run};

/// The argument under which `esb` runs as the in-container supervisor
/// (the entrypoint the agent gives every worker container).
pub use esb_runtimes_docker::entry::SUPERVISOR_ARG;

/// Runs the in-container supervisor (`esb container-supervisor`): the
/// process the agent starts as every worker container's entrypoint.
pub fn run_container_supervisor() -> std::process::ExitCode {
    esb_container_supervisor::main_from_env()
}
