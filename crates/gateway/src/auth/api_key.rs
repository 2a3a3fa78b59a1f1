//! API keys (`x-api-key`), with the per-source brute-force brake
//! (robustness A7, A8): a source that failed too often gets 429 and
//! `Retry-After` before its key is even compared.

use std::time::Instant;

use esb_auth::Auth;

use crate::context::Ctx;
use crate::error::Rejection;

/// Checks the request's API key. `Ok` is the key (shown in REST events).
pub(crate) fn check(auth: &Auth, ctx: &Ctx<'_>) -> Result<String, Rejection> {
    let now = Instant::now();
    let source = ctx.peer.ip();
    if let Some(retry_after) = auth.limiter.check(source, now) {
        return Err(Rejection::TooManyAttempts { retry_after });
    }
    let presented = ctx.header("x-api-key");
    if auth.check_api_key(presented) {
        return Ok(presented.unwrap_or_default().to_string());
    }
    if let Some(retry_after) = auth.limiter.failure(source, now) {
        return Err(Rejection::TooManyAttempts { retry_after });
    }
    Err(Rejection::Forbidden)
}
