//! The embedded S3 endpoint: the S3 REST protocol from `s3s`, objects stored
//! as files by `s3s-fs` under one root directory behind a key mapping
//! (`keymap`: hashed file names, keys kept beside them, so every valid key
//! round-trips), SigV4 checked against the box's credentials.
//!
//! Owns: the S3 listener (its own port; s3s must not be mounted under a
//! path prefix) with its timeouts and connection limit (`esb-net`,
//! re-exported as `listener` for the DynamoDB endpoint), the request-body limit in front of s3s,
//! the key checks that keep every object inside its bucket directory,
//! virtual-hosted-style host parsing, the write hook (`notify`), start-up checks of the data directory
//! and idempotent creation of the template's buckets.
//!
//! Must not: re-implement S3 protocol handling that s3s provides, know about
//! templates or functions (callers pass bucket names), or log credentials.
#![forbid(unsafe_code)]

mod access;
mod host;
pub mod keymap;
/// The listener machinery, shared with the gateway and DynamoDB (`esb-net`).
pub use esb_net as listener;
mod notify;
mod ops;
mod server;

pub use access::{KeyError, check_key};
pub use host::LocalHosts;
pub use notify::{HookSlot, ObjectWrite, WriteHook, WriteKind};
pub use ops::OperationObserver;
pub use server::{S3Config, S3Error, S3Server, ensure_buckets, valid_bucket_name};
