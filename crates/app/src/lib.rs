//! ESB's assembly: turns a template and resolved settings into the running
//! parts — function specs (environment, content hash), pool limits, the
//! gateway configuration (APIs, routes, authorizers, always with auth),
//! the data services and the backend ([`assemble()`]) — and starts them in
//! four steps (parse → build → spawn → drain; [`startup`]).
//!
//! One module per job. Must not: parse command-line arguments or print
//! (it returns what a caller shows: warnings, credentials, endpoints).
#![forbid(unsafe_code)]

pub mod assemble;
pub mod auth;
pub mod backend;
pub mod checks;
pub mod code_hash;
pub mod env_vars;
pub mod error;
pub mod events;
pub mod files;
pub mod functions;
pub mod gateway;
pub mod iam;
pub mod instance;
pub mod invoke;
pub mod live;
pub mod observability;
pub mod reload;
pub mod remote;
pub mod services;
pub mod startup;
pub mod table;
pub mod template;
pub mod zip_build;

pub use assemble::{Assembly, BackendChoice, assemble};
pub use error::AppError;
pub use instance::Instance;
pub use startup::{Built, Plan, Running, SpawnOptions, shutdown_signal};
pub use table::table;
