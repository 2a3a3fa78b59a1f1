//! The side of the ESB agent that the gateway process links: the gRPC wire
//! types (`proto/agent.proto`, client and server stubs), the conversions
//! between them and the runtime types, [`AgentBackend`] (the
//! [`RuntimeBackend`] `esb up --runtime docker` gives the pool) and the
//! host-side client of a worker's supervisor ([`SupervisorClient`],
//! [`ContainerWorker`]): invocations go straight to each worker, never
//! through the agent.
//!
//! Must not: depend on bollard or open the container engine socket, directly
//! or through a dependency (checked by `scripts/check-boundaries.sh`); the
//! server over the engine is `esb-agent`.
//!
//! [`RuntimeBackend`]: esb_runtimes_core::RuntimeBackend
#![forbid(unsafe_code)]

pub mod proto {
    //! Generated gRPC types (`proto/agent.proto`).
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("esb.agent.v1");
}

pub mod auth;
mod backend;
pub mod logs;
pub mod nodes;
pub mod supervisor_client;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use auth::AgentToken;
pub use backend::AgentBackend;
pub use nodes::{Node, NodeSet};
pub use supervisor_client::{CallError, ContainerWorker, SupervisorClient, WorkerOwner};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use esb_runtimes_core::FunctionSpec;

/// Metadata key marking a `FAILED_PRECONDITION` status as a Lambda init
/// error (the status message is the error JSON).
pub const INIT_ERROR_KEY: &str = "esb-init-error";

/// One image to build for a `PackageType: Image` function (the agent's
/// `BuildImage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBuild {
    /// Function it is for (for messages).
    pub function: String,
    /// Build context directory (`Metadata.DockerContext`), a path on the
    /// agent's machine.
    pub context: PathBuf,
    /// Dockerfile path relative to the context (`Metadata.Dockerfile`).
    pub dockerfile: String,
    /// Image tag to give it (`<function-lowercase>:<DockerTag or latest>`).
    pub tag: String,
}

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
