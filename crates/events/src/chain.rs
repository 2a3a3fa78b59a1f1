//! Invocation chains and recursion detection.
//!
//! AWS's recursive loop detection follows a call chain through the X-Ray
//! trace header (`X-Amzn-Trace-Id`, with a `Lineage=` field) and stops it
//! after 16 hops. ESB does the same with a [`ChainContext`]: a chain id (the
//! trace `Root`) and the depth of the invocation inside that chain.
//!
//! The carrier is the trace header because stock clients already forward it:
//! the Runtime API hands `Lambda-Runtime-Trace-Id` to the runtime client,
//! which sets `_X_AMZN_TRACE_ID`, and botocore (and the other SDKs) copy that
//! variable into an `X-Amzn-Trace-Id` header on every outgoing call made
//! from inside a function. So a function that calls `lambda.invoke` (or writes
//! to S3 whose notification invokes it again) brings the chain back without
//! any change to its code.

use std::fmt;

/// Deepest allowed invocation in one chain: the 17th hop is stopped, as AWS does.
pub const MAX_CHAIN_DEPTH: u32 = 16;

/// Header that carries the chain on HTTP requests into ESB (Invoke API,
/// S3, DynamoDB) and, as `Lambda-Runtime-Trace-Id` / `_X_AMZN_TRACE_ID`, into
/// a worker.
pub const TRACE_HEADER: &str = "X-Amzn-Trace-Id";

/// Where an invocation sits in its call chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChainContext {
    /// Chain id: an X-Ray style root id (`1-<8 hex>-<24 hex>`), kept across hops.
    pub chain_id: String,
    /// 1 for an invocation started from outside (a client, a schedule), then +1 per hop.
    pub depth: u32,
}

/// A chain went deeper than [`MAX_CHAIN_DEPTH`]; the invocation must not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "recursive invocation loop detected: chain {chain_id} reached depth {depth} (limit {MAX_CHAIN_DEPTH})"
)]
pub struct RecursionError {
    /// The chain that looped.
    pub chain_id: String,
    /// The depth the refused invocation would have had.
    pub depth: u32,
}

impl ChainContext {
    /// A new chain for an invocation that has no caller inside ESB (depth 1).
    pub fn root() -> Self {
        Self {
            chain_id: new_root_id(),
            depth: 1,
        }
    }

    /// The context of an invocation made *by* the invocation `self`
    /// (a nested `lambda.invoke`, a destination, a trigger fired by its write).
    ///
    /// Fails, and logs one warning, when the new depth passes
    /// [`MAX_CHAIN_DEPTH`].
    pub fn next_hop(&self) -> Result<ChainContext, RecursionError> {
        let depth = self.depth.saturating_add(1);
        if depth > MAX_CHAIN_DEPTH {
            tracing::warn!(
                chain_id = %self.chain_id,
                depth,
                "recursive invocation loop stopped: chain passed {MAX_CHAIN_DEPTH} calls"
            );
            return Err(RecursionError {
                chain_id: self.chain_id.clone(),
                depth,
            });
        }
        Ok(ChainContext {
            chain_id: self.chain_id.clone(),
            depth,
        })
    }

    /// Checks this context itself (for a context decoded from a header).
    pub fn check(&self) -> Result<(), RecursionError> {
        if self.depth > MAX_CHAIN_DEPTH {
            tracing::warn!(chain_id = %self.chain_id, depth = self.depth,
                "recursive invocation loop stopped: chain passed {MAX_CHAIN_DEPTH} calls");
            return Err(RecursionError {
                chain_id: self.chain_id.clone(),
                depth: self.depth,
            });
        }
        Ok(())
    }

    /// Encodes as an X-Ray trace header value:
    /// `Root=1-5f84c7a4-…;Sampled=0;Lineage=esb:<depth>`.
    pub fn to_header_value(&self) -> String {
        format!(
            "Root={};Sampled=0;Lineage=esb:{}",
            self.chain_id, self.depth
        )
    }

    /// Decodes a trace header value. Returns `None` when it has no `Root`.
    ///
    /// A header without a `Lineage` (a trace started by a client's own X-Ray
    /// SDK) is the first hop: depth 1. A `Lineage=<hash>:<n>` from another
    /// tool counts `n` as the depth. The value is client-controlled: nothing
    /// here panics or allocates more than the input.
    pub fn from_header_value(value: &str) -> Option<ChainContext> {
        let mut root = None;
        let mut depth = 1u32;
        for part in value.split(';') {
            let (k, v) = match part.trim().split_once('=') {
                Some(kv) => kv,
                None => continue,
            };
            match k.trim() {
                "Root" if !v.is_empty() && v.len() <= 64 => root = Some(v.trim().to_string()),
                "Lineage" => {
                    if let Some(n) = v.rsplit(':').next().and_then(|n| n.trim().parse().ok()) {
                        depth = n;
                    }
                }
                _ => {}
            }
        }
        root.map(|chain_id| ChainContext {
            chain_id,
            depth: depth.max(1),
        })
    }

    /// The context for a new invocation whose caller sent `header`
    /// (the `X-Amzn-Trace-Id` value, if any): one hop below the caller, or a
    /// new root when there was no usable header.
    pub fn for_incoming(header: Option<&str>) -> Result<ChainContext, RecursionError> {
        match header.and_then(ChainContext::from_header_value) {
            Some(caller) => caller.next_hop(),
            None => Ok(ChainContext::root()),
        }
    }
}

impl fmt::Display for ChainContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_header_value())
    }
}

fn new_root_id() -> String {
    let secs = chrono::Utc::now().timestamp().max(0) as u64;
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("1-{:08x}-{}", secs & 0xffff_ffff, &rand[..24])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let c = ChainContext::root();
        assert_eq!(c.depth, 1);
        assert!(c.chain_id.starts_with("1-") && c.chain_id.len() == 35);
        let h = c.to_header_value();
        assert_eq!(ChainContext::from_header_value(&h), Some(c.clone()));
        let n = c.next_hop().expect("depth 2 is allowed");
        assert_eq!(n.depth, 2);
        assert_eq!(n.chain_id, c.chain_id);
    }

    #[test]
    fn foreign_headers() {
        let c = ChainContext::from_header_value(
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
        )
        .expect("root present");
        assert_eq!(c.depth, 1);
        let c = ChainContext::from_header_value("Root=1-a-b;Lineage=a87bd80c:7").expect("root");
        assert_eq!(c.depth, 7);
        assert_eq!(ChainContext::from_header_value("Sampled=1"), None);
        assert_eq!(ChainContext::from_header_value(""), None);
        assert_eq!(ChainContext::from_header_value(";;==;Lineage=:x"), None);
    }

    #[test]
    fn seventeenth_hop_is_stopped() {
        let mut c = ChainContext::root();
        for _ in 1..MAX_CHAIN_DEPTH {
            c = c.next_hop().expect("within limit");
        }
        assert_eq!(c.depth, 16);
        let err = c.next_hop().expect_err("17th call must be refused");
        assert_eq!(err.depth, 17);
        assert_eq!(err.chain_id, c.chain_id);
        let incoming = ChainContext::for_incoming(Some(&c.to_header_value()));
        assert!(incoming.is_err());
        let fresh = ChainContext::for_incoming(None).expect("root");
        assert_eq!(fresh.depth, 1);
    }
}
