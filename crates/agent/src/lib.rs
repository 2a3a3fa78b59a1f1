//! The ESB agent: the compute-plane process that alone opens the container
//! engine socket and serves the runtime operations over gRPC (tonic):
//! `EnsureWorker`, `DestroyWorker`, `ListWorkers`, `Health` and a
//! `WatchEvents` stream (exited, OOM-killed). On start it runs Adopt & Sync
//! and a janitor ([`esb_runtimes_docker`]).
//!
//! [`AgentBackend`] is the other side: a [`RuntimeBackend`] the pool uses
//! exactly like a local backend. It asks the agent (local or on another
//! machine) for workers, then sends invocations straight to each worker's
//! supervisor: the warm path never goes through the agent.
//!
//! Must not: accept client traffic or hold pool policy.
#![forbid(unsafe_code)]

pub mod proto {
    //! Generated gRPC types (`proto/agent.proto`).
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("esb.agent.v1");
}

mod backend;
mod server;

pub use backend::AgentBackend;
pub use server::{AgentArgs, AgentError, AgentService, run};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use esb_runtimes_core::FunctionSpec;

/// Metadata key marking a `FAILED_PRECONDITION` status as a Lambda init
/// error (the status message is the error JSON).
pub const INIT_ERROR_KEY: &str = "esb-init-error";

/// Converts a spec to its protobuf form.
pub fn spec_to_proto(spec: &FunctionSpec) -> proto::FunctionSpec {
    proto::FunctionSpec {
        name: spec.name.clone(),
        runtime: spec.runtime.clone(),
        handler: spec.handler.clone(),
        code_dir: spec.code_dir.to_string_lossy().into_owned(),
        image: spec.image.clone(),
        memory_mb: spec.memory_mb,
        timeout_ms: u64::try_from(spec.timeout.as_millis()).unwrap_or(u64::MAX),
        environment: spec.environment.clone().into_iter().collect(),
        region: spec.region.clone(),
        account_id: spec.account_id.clone(),
        code_hash: spec.code_hash.clone(),
    }
}

/// Converts a protobuf spec back.
pub fn spec_from_proto(spec: proto::FunctionSpec) -> FunctionSpec {
    FunctionSpec {
        name: spec.name,
        runtime: spec.runtime,
        handler: spec.handler,
        code_dir: PathBuf::from(spec.code_dir),
        image: spec.image,
        memory_mb: spec.memory_mb,
        timeout: Duration::from_millis(spec.timeout_ms),
        environment: spec.environment.into_iter().collect::<BTreeMap<_, _>>(),
        region: spec.region,
        account_id: spec.account_id,
        code_hash: spec.code_hash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_through_protobuf() {
        let spec = FunctionSpec {
            name: "hello".to_string(),
            runtime: "python3.11".to_string(),
            handler: Some("app.handler".to_string()),
            code_dir: PathBuf::from("/srv/hello"),
            image: None,
            memory_mb: 256,
            timeout: Duration::from_millis(2500),
            environment: BTreeMap::from([("A".to_string(), "1".to_string())]),
            region: "eu-west-1".to_string(),
            account_id: "123456789012".to_string(),
            code_hash: "abc".to_string(),
        };
        assert_eq!(spec_from_proto(spec_to_proto(&spec)), spec);
    }
}
