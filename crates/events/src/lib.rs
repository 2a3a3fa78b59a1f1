//! ESB's asynchronous invocations and event sources.
//!
//! Owns: the durable `Event` queue ([`EventQueue`]: write-ahead log with group
//! commit, retries with AWS's back-off, event age, destinations, dead-letter
//! queue), invocation chains and recursion detection ([`ChainContext`]),
//! schedules (`rate(...)`, `cron(...)`, [`schedule`]), and the event payloads and
//! filters of the S3 and DynamoDB Streams sources ([`s3`], [`dynamodb`]).
//!
//! Must not: run functions itself (it asks an [`Invoker`], implemented by the
//! app over the pool), parse HTTP, or know how workers are started. It writes
//! only under the directory it is given.
//!
//! See `docs/events.md` for the guarantees and the wiring.
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use esb_events::{ChainContext, EventMeta, EventQueue, InvokeOutcome, Invoker, QueueConfig};
//!
//! struct Pool; // the app implements this over the worker pool
//! #[async_trait::async_trait]
//! impl Invoker for Pool {
//!     async fn invoke(&self, _f: &str, _p: Bytes, _id: &str, _c: &ChainContext) -> InvokeOutcome {
//!         InvokeOutcome::Success { response: Bytes::new() }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! # let dir = tempfile::tempdir().unwrap();
//! let queue = EventQueue::open(dir.path(), QueueConfig::default()).expect("open");
//! queue.start_dispatcher(Arc::new(Pool));
//! // Invoke API, InvocationType=Event: 202 once this returns Ok.
//! let id = queue
//!     .enqueue("my-function", Bytes::from_static(b"{}"), EventMeta::new("invoke", None))
//!     .await
//!     .expect("accepted");
//! println!("queued {id}, depth {}", queue.stats().depth);
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod chain;
pub mod config;
pub mod dynamodb;
#[cfg(feature = "dynoxide")]
pub mod dynoxide_feed;
pub mod invoker;
pub mod queue;
pub mod s3;
pub mod schedule;
mod store;
pub mod stream;

pub use chain::{ChainContext, MAX_CHAIN_DEPTH, RecursionError, TRACE_HEADER};
pub use config::{ConfigError, EventInvokeConfig, QueueConfig, Target};
pub use invoker::{InvokeOutcome, Invoker};
pub use queue::{EnqueueError, EventId, EventMeta, EventQueue, OpenError, QueueStats};
