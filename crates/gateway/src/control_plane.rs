//! Lambda control-plane reads on the Invoke API listener, so `aws lambda
//! list-functions --endpoint-url ...` and SDK tooling that lists or
//! describes functions work: `ListFunctions`, `GetFunctionConfiguration`
//! and `GetAccountSettings` (`GetFunction` is in `invoke_api`). Signed with
//! SigV4 exactly as the Invoke API; answers in Lambda's JSON shapes. The
//! function's environment is never returned (it holds the box's
//! credentials). Writes (create, update, delete) are not served.

use base64::Engine as _;
use http::{HeaderValue, Method, Response, StatusCode};
use serde_json::{Value, json};

use esb_runtimes_core::FunctionSpec;

use crate::auth::sigv4;
use crate::context::Ctx;
use crate::error::{Rejection, Shape, json_response};
use crate::query::Query;
use crate::response::Body;

/// A recognised control-plane read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ControlCall {
    /// `GET /2015-03-31/functions/`.
    ListFunctions,
    /// `GET /2015-03-31/functions/{name}/configuration`.
    GetFunctionConfiguration(String),
    /// `GET /2016-08-19/account-settings/`.
    GetAccountSettings,
}

/// Recognises the paths; `None` for anything else.
pub(crate) fn parse(method: &Method, path: &str) -> Option<ControlCall> {
    if *method != Method::GET {
        return None;
    }
    match path {
        "/2015-03-31/functions/" | "/2015-03-31/functions" => Some(ControlCall::ListFunctions),
        "/2016-08-19/account-settings/" | "/2016-08-19/account-settings" => {
            Some(ControlCall::GetAccountSettings)
        }
        _ => {
            let name = path
                .strip_prefix("/2015-03-31/functions/")?
                .strip_suffix("/configuration")?;
            (!name.is_empty() && !name.contains('/'))
                .then(|| ControlCall::GetFunctionConfiguration(name.to_string()))
        }
    }
}

/// Answers one call (signature checked first).
pub(crate) fn handle(ctx: &Ctx<'_>, call: ControlCall) -> Response<Body> {
    let mut r = match run(ctx, call) {
        Ok(r) => r,
        Err(rejection) => rejection.into_response(Shape::Lambda),
    };
    if let Ok(v) = HeaderValue::from_str(ctx.request_id) {
        r.headers_mut().insert("x-amzn-requestid", v);
    }
    r
}

fn run(ctx: &Ctx<'_>, call: ControlCall) -> Result<Response<Body>, Rejection> {
    let query = Query::parse(ctx.parts.uri.query().unwrap_or(""));
    sigv4::check_invoke(ctx, &query, &[])?;
    let invoker = &ctx.state.inner.invoker;
    Ok(match call {
        ControlCall::ListFunctions => {
            let mut specs = invoker.functions();
            specs.sort_by(|a, b| a.name.cmp(&b.name));
            // Pagination: Marker is the last name returned, MaxItems the
            // page size (AWS: at most 50).
            let max = query
                .last("MaxItems")
                .and_then(|m| m.parse::<usize>().ok())
                .map_or(50, |m| m.clamp(1, 50));
            let after = query.last("Marker").unwrap_or("");
            let rest: Vec<_> = specs
                .iter()
                .filter(|s| after.is_empty() || s.name.as_str() > after)
                .collect();
            let page: Vec<Value> = rest.iter().take(max).map(|s| configuration(s)).collect();
            let next = (rest.len() > max).then(|| rest[max - 1].name.clone());
            json_response(
                StatusCode::OK,
                json!({"Functions": page, "NextMarker": next}).to_string(),
            )
        }
        ControlCall::GetFunctionConfiguration(name) => {
            let (spec, _) = crate::invoke_api::resolve(ctx, &name, &query)?;
            json_response(StatusCode::OK, configuration(&spec).to_string())
        }
        ControlCall::GetAccountSettings => {
            let count = invoker.functions().len();
            json_response(
                StatusCode::OK,
                json!({
                    "AccountLimit": {
                        "TotalCodeSize": 80_530_636_800_u64,
                        "CodeSizeUnzipped": 262_144_000,
                        "CodeSizeZipped": 52_428_800,
                        "ConcurrentExecutions": 1000,
                        "UnreservedConcurrentExecutions": 1000
                    },
                    "AccountUsage": {"TotalCodeSize": 0, "FunctionCount": count}
                })
                .to_string(),
            )
        }
    })
}

/// Lambda's `FunctionConfiguration` for a registered function.
pub(crate) fn configuration(spec: &FunctionSpec) -> Value {
    json!({
        "FunctionName": spec.name,
        "FunctionArn": spec.arn(),
        "Runtime": spec.runtime,
        "Role": format!("arn:aws:iam::{}:role/esb-local", spec.account_id),
        "Handler": spec.handler,
        "CodeSize": 0,
        "Description": "",
        "Timeout": spec.timeout.as_secs(),
        "MemorySize": spec.memory_mb,
        "LastModified": "1970-01-01T00:00:00.000+0000",
        "CodeSha256": code_sha256(&spec.code_hash),
        "Version": "$LATEST",
        "TracingConfig": {"Mode": "PassThrough"},
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": if spec.image.is_some() { "Image" } else { "Zip" },
        "Architectures": ["x86_64"],
        "EphemeralStorage": {"Size": 512}
    })
}

/// Lambda's `CodeSha256` is base64; ESB's content hash is hex SHA-256.
fn code_sha256(hex: &str) -> String {
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect();
    match bytes {
        Some(b) if !b.is_empty() => base64::engine::general_purpose::STANDARD.encode(b),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_read_paths_only() {
        assert_eq!(
            parse(&Method::GET, "/2015-03-31/functions/"),
            Some(ControlCall::ListFunctions)
        );
        assert_eq!(
            parse(&Method::GET, "/2015-03-31/functions/f/configuration"),
            Some(ControlCall::GetFunctionConfiguration("f".into()))
        );
        assert_eq!(
            parse(&Method::GET, "/2016-08-19/account-settings/"),
            Some(ControlCall::GetAccountSettings)
        );
        assert_eq!(parse(&Method::POST, "/2015-03-31/functions/"), None);
        assert_eq!(parse(&Method::GET, "/2015-03-31/functions/f"), None);
        assert_eq!(
            parse(&Method::GET, "/2015-03-31/functions/a/b/configuration"),
            None
        );
    }

    #[test]
    fn code_sha256_is_base64_of_the_hex_hash() {
        assert_eq!(code_sha256("00ff"), "AP8=");
        assert_eq!(code_sha256("zz"), "");
    }
}
