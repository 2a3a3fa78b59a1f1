//! Identity sources in API Gateway notation (REST
//! `method.request.header.X`, `method.request.querystring.q`,
//! `stageVariables.v`, `context.*`; HTTP API `$request.header.X`,
//! `$request.querystring.q`, `$stageVariables.v`, `$context.*`).

use super::RouteRequest;

/// The default identity source (TOKEN authorizers, JWT authorizers).
pub(crate) const AUTHORIZATION_HEADER: &str = "method.request.header.Authorization";

/// The values of `sources` (the `Authorization` header when empty), `None`
/// when one is missing or empty.
pub(crate) fn values(
    sources: &[String],
    req: &RouteRequest<'_, '_, '_, '_>,
) -> Option<Vec<String>> {
    if sources.is_empty() {
        return one(AUTHORIZATION_HEADER, req).map(|v| vec![v]);
    }
    sources.iter().map(|s| one(s, req)).collect()
}

fn one(source: &str, req: &RouteRequest<'_, '_, '_, '_>) -> Option<String> {
    let s = source.trim();
    let parts = req.ctx.parts;
    let m = req.m;
    let v = if let Some(h) = s
        .strip_prefix("method.request.header.")
        .or_else(|| s.strip_prefix("$request.header."))
    {
        req.ctx.header(&h.to_ascii_lowercase()).map(str::to_string)
    } else if let Some(q) = s
        .strip_prefix("method.request.querystring.")
        .or_else(|| s.strip_prefix("$request.querystring."))
    {
        req.query.last(q).map(str::to_string)
    } else if let Some(n) = s
        .strip_prefix("stageVariables.")
        .or_else(|| s.strip_prefix("$stageVariables."))
    {
        m.api.config.stage_variables.get(n).cloned()
    } else if s == "$context.routeKey" || s == "context.resourcePath" {
        Some(m.route.route_key.clone())
    } else if s == "$context.httpMethod" || s == "context.httpMethod" {
        Some(parts.method.to_string())
    } else {
        None
    };
    v.filter(|v| !v.is_empty())
}
