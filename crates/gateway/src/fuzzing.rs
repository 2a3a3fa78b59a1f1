//! Entry points for the fuzz targets in `fuzz/` (`router`, `event_builder`,
//! `response_mapper`): thin wrappers over crate-private code so the targets
//! drive exactly what a request goes through. Not a stable API (hidden
//! from the docs); nothing in ESB calls it.

use chrono::{TimeZone, Utc};
use http::{HeaderMap, Method, Response, Version};

use crate::auth::Granted;
use crate::config::{ApiKind, GatewayConfig};
use crate::event::{EventInput, build_event};
use crate::query::Query;
use crate::response::{Body, MalformedResponse, map_v1, map_v2};
use crate::router::{RequestPath, Router, RouterError};

/// A compiled route table.
pub struct FuzzRouter {
    router: Router,
}

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The path was refused before routing (400: bad UTF-8, dot segment).
    Refused,
    /// No route fits (403 / 404).
    NoRoute,
    /// A route fits: its key and decoded path parameters.
    Found {
        /// `GET /pets/{id}`, `$default` …
        route_key: String,
        /// Decoded path parameters, in template order.
        params: Vec<(String, String)>,
    },
}

impl FuzzRouter {
    /// Compiles the routes of `config`.
    pub fn new(config: &GatewayConfig) -> Result<Self, RouterError> {
        Router::new(config).map(|router| Self { router })
    }

    /// Looks `method` and the raw (not decoded) `path` up.
    pub fn find(&self, method: &Method, path: &str) -> Lookup {
        let Ok(parsed) = RequestPath::parse(path) else {
            return Lookup::Refused;
        };
        match self.router.find(Some(method), &parsed) {
            Ok(m) => Lookup::Found {
                route_key: m.route.route_key.clone(),
                params: m
                    .path_params
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), v.clone()))
                    .collect(),
            },
            Err(_) => Lookup::NoRoute,
        }
    }

    /// The event a routed request would get (`None` when no route fits),
    /// built from arbitrary request parts.
    #[allow(clippy::too_many_arguments)]
    pub fn event(
        &self,
        method: &Method,
        path: &str,
        raw_query: &str,
        headers: &HeaderMap,
        body: &[u8],
        source_ip: &str,
        domain_name: &str,
        http2: bool,
    ) -> Option<Result<Vec<u8>, serde_json::Error>> {
        let parsed = RequestPath::parse(path).ok()?;
        let m = self.router.find(Some(method), &parsed).ok()?;
        let query = Query::parse(raw_query);
        let granted = Granted::default();
        let input = EventInput {
            method,
            raw_path: path,
            path_without_stage: m.path_without_stage,
            raw_query,
            query: &query,
            granted: &granted,
            headers,
            version: if http2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            },
            body,
            source_ip,
            request_id: "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            extended_request_id: "fuzz",
            time: Utc.timestamp_opt(1_700_000_000, 0).single()?,
            api: m.api,
            route: m.route,
            path_params: &m.path_params,
            domain_name,
            forwarded_proto: "http",
            forwarded_port: 80,
            trace_header: "Root=1-00000000-000000000000000000000000",
            account_id: "123456789012",
        };
        Some(build_event(&input))
    }

    /// The kind of API the matched route belongs to.
    pub fn api_kind(&self, method: &Method, path: &str) -> Option<ApiKind> {
        let parsed = RequestPath::parse(path).ok()?;
        let m = self.router.find(Some(method), &parsed).ok()?;
        Some(m.api.config.kind)
    }
}

/// Maps a function's answer to the HTTP response, as the integration does:
/// `v2` for HTTP API payload 2.0, else payload 1.0 (`strict` for REST,
/// `decode_base64` whether an `isBase64Encoded` body is decoded).
pub fn map_response(
    payload: &[u8],
    v2: bool,
    strict: bool,
    decode_base64: bool,
) -> Result<Response<Body>, MalformedResponse> {
    let mapped = if v2 {
        map_v2(payload)?
    } else {
        map_v1(payload, strict, decode_base64)?
    };
    Ok(mapped.into_response())
}
