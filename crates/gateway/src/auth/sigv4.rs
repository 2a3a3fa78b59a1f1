//! SigV4 checks with the box's credentials: `AWS_IAM` routes (service
//! `execute-api`) and the Invoke API (service `lambda`; unsigned loopback
//! calls pass in dev mode).

use std::net::IpAddr;
use std::time::SystemTime;

use http::HeaderValue;
use http::header::{AUTHORIZATION, HOST};

use esb_auth::Auth;

use super::RouteRequest;
use crate::config::GatewayAuth;
use crate::context::Ctx;
use crate::error::{Rejection, SignatureRefusal};
use crate::query::Query;

/// An `AWS_IAM` route's check.
pub(crate) fn check_route(
    auth: &Auth,
    req: &RouteRequest<'_, '_, '_, '_>,
) -> Result<(), Rejection> {
    verify(auth, req.ctx, req.body)
        .and_then(|v| v.require_service("execute-api"))
        .map_err(|e| {
            tracing::info!(request_id = req.ctx.request_id, "iam auth refused: {e}");
            Rejection::Forbidden
        })
}

/// The Invoke API's check. [`GatewayAuth::Open`] lets every call in,
/// [`GatewayAuth::DenyAll`] none. Returns the access key id that signed
/// the call (`None` when unsigned calls are let in).
pub(crate) fn check_invoke(
    ctx: &Ctx<'_>,
    query: &Query,
    body: &[u8],
) -> Result<Option<String>, Rejection> {
    let auth = match &ctx.state.inner.auth {
        GatewayAuth::Open => return Ok(None),
        GatewayAuth::DenyAll => {
            tracing::info!(
                request_id = ctx.request_id,
                "invoke api refused: auth is deny-all"
            );
            return Err(Rejection::Signature(SignatureRefusal::Missing));
        }
        GatewayAuth::Enforced(auth) => auth,
    };
    let signed =
        ctx.parts.headers.contains_key(AUTHORIZATION) || query.last("X-Amz-Signature").is_some();
    if !signed && auth.dev() && is_loopback(ctx.peer.ip()) {
        return Ok(None);
    }
    verify(auth, ctx, body)
        .and_then(|v| v.require_service("lambda").map(|()| v))
        .map(|v| Some(v.access_key_id))
        .map_err(|e| {
            tracing::info!(request_id = ctx.request_id, source = %ctx.peer.ip(), "invoke api signature refused: {e}");
            Rejection::Signature(SignatureRefusal::from(&e))
        })
}

/// A check for another AWS API ESB serves on this listener (`logs`):
/// like [`check_invoke`], signed for `service`.
pub(crate) fn check_service(ctx: &Ctx<'_>, body: &[u8], service: &str) -> Result<(), String> {
    let auth = match &ctx.state.inner.auth {
        GatewayAuth::Open => return Ok(()),
        GatewayAuth::DenyAll => return Err("auth is deny-all".into()),
        GatewayAuth::Enforced(auth) => auth,
    };
    if !ctx.parts.headers.contains_key(AUTHORIZATION) && auth.dev() && is_loopback(ctx.peer.ip()) {
        return Ok(());
    }
    verify(auth, ctx, body)
        .and_then(|v| v.require_service(service))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A function's policies for an Invoke API call it signed (`action` on
/// the target's ARN): `None` when allowed, else Lambda's
/// `AccessDeniedException` (403) with AWS's message. Calls signed with
/// the box's key, and unsigned ones let in, are allowed.
pub(crate) fn invoke_denied(
    ctx: &Ctx<'_>,
    signer: Option<&str>,
    action: &str,
    function: &str,
    qualifier: Option<&str>,
) -> Option<http::Response<crate::response::Body>> {
    let GatewayAuth::Enforced(auth) = &ctx.state.inner.auth else {
        return None;
    };
    let (iam, signer) = (auth.iam()?, signer?);
    if !iam.evaluates(signer) {
        return None;
    }
    let arn = esb_iam::actions::function_arn(iam.arn_context(), function, qualifier);
    let denied = iam.check(signer, action, &arn).err()?;
    let body =
        serde_json::json!({"Type": "User", "Message": denied.message, "message": denied.message});
    let mut r = crate::error::json_response(http::StatusCode::FORBIDDEN, body.to_string());
    r.headers_mut().insert(
        "x-amzn-errortype",
        HeaderValue::from_static("AccessDeniedException"),
    );
    Some(r)
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn verify(
    auth: &Auth,
    ctx: &Ctx<'_>,
    body: &[u8],
) -> Result<esb_sigv4::Verified, esb_sigv4::SigV4Error> {
    let parts = ctx.parts;
    let host_from_authority = (!parts.headers.contains_key(HOST))
        .then(|| parts.uri.authority())
        .flatten()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    // HTTP/2 carries the host in :authority; only then copy the headers.
    let with_host;
    let headers = match host_from_authority {
        Some(host) => {
            let mut h = parts.headers.clone();
            h.insert(HOST, host);
            with_host = h;
            &with_host
        }
        None => &parts.headers,
    };
    esb_sigv4::verify(
        parts.method.as_str(),
        parts.uri.path(),
        parts.uri.query().unwrap_or(""),
        headers,
        esb_sigv4::Payload::Body(body),
        |akid| auth.lookup_secret(akid),
        SystemTime::now(),
    )
}
