//! The embedded DynamoDB endpoint: `dynoxide` (DynamoDB's JSON API on one
//! SQLite file) behind a small front that verifies SigV4 against the box's
//! credentials, since dynoxide only checks that signature material is
//! present.
//!
//! Owns: the public listener and its SigV4 check (with `esb-sigv4`), the
//! request-body limit, the dedicated thread and single-threaded runtime that
//! dynoxide runs on (it does its SQLite work synchronously on the runtime
//! thread, so it must not share the gateway's workers), the TTL sweep, the
//! start-up check of the database file and idempotent creation of the
//! template's tables.
//!
//! Must not: re-implement DynamoDB operations (dynoxide's dispatcher and
//! error envelopes are what clients see), know about templates (callers
//! pass [`TableSpec`]s), or log credentials.
#![forbid(unsafe_code)]

mod front;
mod server;
mod streams;
mod tables;

pub use front::{OperationObserver, auth_error_response, map_auth_error};
pub use server::{DynamoConfig, DynamoError, DynamoServer, ensure_tables};
pub use streams::StreamIdentity;
pub use tables::{IndexSpec, KeySpec, TableSpec, create_table_request};
