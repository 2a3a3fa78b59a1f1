//! Event builders: the REST proxy event (v1, also HTTP API payload 1.0) and
//! the HTTP API payload 2.0, serialized straight from borrowed request data.

use std::borrow::Cow;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use http::{HeaderMap, Method, Version};
use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq, Serializer};

use crate::auth::Granted;
use crate::config::{ApiKind, PayloadVersion};
use crate::query::Query;
use crate::router::{Api, Route};

/// What the event builder needs from one request.
pub(crate) struct EventInput<'a> {
    pub method: &'a Method,
    /// The path as received (stage prefix included, base path stripped,
    /// not decoded).
    pub raw_path: &'a str,
    /// The path without the stage prefix (not decoded).
    pub path_without_stage: &'a str,
    /// Query string without `?`, `""` when none.
    pub raw_query: &'a str,
    /// The same, parsed.
    pub query: &'a Query,
    /// What the auth checks grant (`requestContext.authorizer`,
    /// `identity.apiKey`).
    pub granted: &'a Granted,
    pub headers: &'a HeaderMap,
    pub version: Version,
    pub body: &'a [u8],
    pub source_ip: &'a str,
    pub request_id: &'a str,
    pub extended_request_id: &'a str,
    pub time: DateTime<Utc>,
    pub api: &'a Api,
    pub route: &'a Route,
    pub path_params: &'a [(&'a str, String)],
    /// Host name the client used (no port).
    pub domain_name: &'a str,
    /// `X-Forwarded-Proto` / `X-Forwarded-Port` values.
    pub forwarded_proto: &'a str,
    pub forwarded_port: u16,
    /// `X-Amzn-Trace-Id` to add when the client sent none.
    pub trace_header: &'a str,
    pub account_id: &'a str,
}

/// Builds the event JSON for the route's payload version.
pub(crate) fn build_event(input: &EventInput<'_>) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(1024 + input.body.len() * 4 / 3);
    match input.route.config.payload_version {
        PayloadVersion::V1 => V1(input).serialize(&mut serde_json::Serializer::new(&mut out))?,
        PayloadVersion::V2 => V2(input).serialize(&mut serde_json::Serializer::new(&mut out))?,
    }
    Ok(out)
}

/// `dd/MMM/yyyy:HH:mm:ss +0000`.
pub(crate) fn request_time(time: &DateTime<Utc>) -> String {
    time.format("%d/%b/%Y:%H:%M:%S +0000").to_string()
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

fn header_str(value: &http::HeaderValue) -> Cow<'_, str> {
    match value.to_str() {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(value.as_bytes()),
    }
}

/// `Content-Type` → `type/subtype`, lower-cased, without parameters.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
    let media = value.split(';').next()?.trim();
    (!media.is_empty()).then(|| media.to_ascii_lowercase())
}

/// Whether `media` (lower case) matches one of the REST API's binary media
/// types (`image/png`, `image/*`, `*/*`).
pub(crate) fn matches_binary_type(media: &str, binary_types: &[String]) -> bool {
    binary_types.iter().any(|pattern| {
        let pattern = pattern.trim().to_ascii_lowercase();
        if pattern == "*/*" {
            return true;
        }
        match pattern.strip_suffix("/*") {
            Some(prefix) => media
                .split_once('/')
                .is_some_and(|(kind, _)| kind == prefix),
            None => pattern == media,
        }
    })
}

/// HTTP API rule: text only when the body is UTF-8 and the content type is
/// text-like.
fn is_text_media(media: &str) -> bool {
    let Some((kind, sub)) = media.split_once('/') else {
        return false;
    };
    kind == "text"
        || sub == "json"
        || sub.ends_with("+json")
        || sub == "xml"
        || sub.ends_with("+xml")
        || media == "application/x-www-form-urlencoded"
        || media == "application/javascript"
}

/// The body as it goes into the event: text, or base64 and `true`.
fn event_body<'a>(input: &EventInput<'a>) -> (Option<Cow<'a, str>>, bool) {
    if input.body.is_empty() {
        return (None, false);
    }
    let text = std::str::from_utf8(input.body).ok();
    let media = media_type(input.headers);
    let binary = match input.api.config.kind {
        ApiKind::Rest => media
            .as_deref()
            .is_some_and(|m| matches_binary_type(m, &input.api.config.binary_media_types)),
        ApiKind::Http | ApiKind::FunctionUrl => !media.as_deref().is_some_and(is_text_media),
    };
    match text {
        Some(text) if !binary => (Some(Cow::Borrowed(text)), false),
        // Bodies that are not UTF-8 cannot travel as JSON text.
        _ => (
            Some(Cow::Owned(
                base64::engine::general_purpose::STANDARD.encode(input.body),
            )),
            true,
        ),
    }
}

/// `content-type` → `Content-Type`, as HTTP/1.1 clients usually send it.
/// hyper hands names over in lower case; HTTP/2 clients send lower case, so
/// those stay as they are (as on AWS).
fn title_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        if upper {
            out.push(c.to_ascii_uppercase());
        } else {
            out.push(c);
        }
        upper = c == '-';
    }
    out
}

/// Headers as the function sees them: name, all values in order. Adds the
/// headers API Gateway adds.
fn collect_headers<'a>(
    input: &EventInput<'a>,
    lower: bool,
) -> Vec<(Cow<'a, str>, Vec<Cow<'a, str>>)> {
    let mut out: Vec<(Cow<'a, str>, Vec<Cow<'a, str>>)> =
        Vec::with_capacity(input.headers.keys_len() + 4);
    let keep_case = lower || input.version == Version::HTTP_2;
    let name_of = |name: &'static str, lower_name: &'a str| -> Cow<'a, str> {
        if keep_case {
            Cow::Borrowed(lower_name)
        } else {
            Cow::Borrowed(name)
        }
    };
    let mut saw_xff = false;
    let mut saw_trace = false;
    for name in input.headers.keys() {
        let lname = name.as_str();
        if lname == "x-forwarded-port" || lname == "x-forwarded-proto" {
            continue;
        }
        let mut values: Vec<Cow<'a, str>> =
            input.headers.get_all(name).iter().map(header_str).collect();
        if lname == "x-forwarded-for" {
            saw_xff = true;
            if let Some(last) = values.last_mut() {
                *last = Cow::Owned(format!("{last}, {}", input.source_ip));
            }
        }
        saw_trace |= lname == "x-amzn-trace-id";
        let shown = if keep_case {
            Cow::Borrowed(lname)
        } else {
            Cow::Owned(title_case(lname))
        };
        out.push((shown, values));
    }
    if !saw_trace {
        out.push((
            name_of("X-Amzn-Trace-Id", "x-amzn-trace-id"),
            vec![Cow::Borrowed(input.trace_header)],
        ));
    }
    if !saw_xff {
        out.push((
            name_of("X-Forwarded-For", "x-forwarded-for"),
            vec![Cow::Borrowed(input.source_ip)],
        ));
    }
    out.push((
        name_of("X-Forwarded-Port", "x-forwarded-port"),
        vec![Cow::Owned(input.forwarded_port.to_string())],
    ));
    out.push((
        name_of("X-Forwarded-Proto", "x-forwarded-proto"),
        vec![Cow::Borrowed(input.forwarded_proto)],
    ));
    out
}

fn user_agent<'a>(input: &EventInput<'a>) -> Option<Cow<'a, str>> {
    input.headers.get(http::header::USER_AGENT).map(header_str)
}

fn domain_prefix(domain: &str) -> &str {
    domain.split('.').next().unwrap_or(domain)
}

/// Serializes `(name, value)` pairs as a JSON object.
struct Pairs<'s, K, V>(&'s [(K, V)]);

impl<K: AsRef<str>, V: Serialize> Serialize for Pairs<'_, K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k.as_ref(), v)?;
        }
        map.end()
    }
}

/// Name → last value.
struct LastValues<'s, K, V>(&'s [(K, Vec<V>)]);

impl<K: AsRef<str>, V: AsRef<str>> Serialize for LastValues<'_, K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, values) in self.0 {
            if let Some(last) = values.last() {
                map.serialize_entry(k.as_ref(), last.as_ref())?;
            }
        }
        map.end()
    }
}

/// Name → all values as an array.
struct AllValues<'s, K, V>(&'s [(K, Vec<V>)]);

impl<K: AsRef<str>, V: AsRef<str>> Serialize for AllValues<'_, K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, values) in self.0 {
            map.serialize_entry(k.as_ref(), &StrSeq(values))?;
        }
        map.end()
    }
}

struct StrSeq<'s, V>(&'s [V]);

impl<V: AsRef<str>> Serialize for StrSeq<'_, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for v in self.0 {
            seq.serialize_element(v.as_ref())?;
        }
        seq.end()
    }
}

/// Name → values joined with `,`.
struct JoinedValues<'s, K, V>(&'s [(K, Vec<V>)]);

impl<K: AsRef<str>, V: AsRef<str>> Serialize for JoinedValues<'_, K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, values) in self.0 {
            if values.len() == 1 {
                map.serialize_entry(k.as_ref(), values[0].as_ref())?;
            } else {
                let joined: Vec<&str> = values.iter().map(AsRef::as_ref).collect();
                map.serialize_entry(k.as_ref(), &joined.join(","))?;
            }
        }
        map.end()
    }
}

struct V1<'i, 'a>(&'i EventInput<'a>);

impl Serialize for V1<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let input = self.0;
        let api = input.api;
        let headers = collect_headers(input, false);
        let query = &input.query.0;
        let (body, is_base64) = event_body(input);
        let user_agent = user_agent(input);
        let is_http_api = api.config.kind.is_http_like();
        let context_path: Cow<'_, str> =
            if is_http_api || input.raw_path != input.path_without_stage {
                Cow::Borrowed(input.raw_path)
            } else {
                Cow::Owned(format!("/{}{}", api.stage, input.path_without_stage))
            };

        let mut map = s.serialize_map(None)?;
        if is_http_api {
            map.serialize_entry("version", "1.0")?;
        }
        map.serialize_entry("resource", &input.route.resource)?;
        map.serialize_entry("path", input.path_without_stage)?;
        map.serialize_entry("httpMethod", input.method.as_str())?;
        map.serialize_entry("headers", &LastValues(&headers))?;
        map.serialize_entry("multiValueHeaders", &AllValues(&headers))?;
        if query.is_empty() {
            map.serialize_entry("queryStringParameters", &())?;
            map.serialize_entry("multiValueQueryStringParameters", &())?;
        } else {
            map.serialize_entry("queryStringParameters", &LastValues(query))?;
            map.serialize_entry("multiValueQueryStringParameters", &AllValues(query))?;
        }
        if input.path_params.is_empty() {
            map.serialize_entry("pathParameters", &())?;
        } else {
            map.serialize_entry("pathParameters", &Pairs(input.path_params))?;
        }
        if api.config.stage_variables.is_empty() {
            map.serialize_entry("stageVariables", &())?;
        } else {
            map.serialize_entry("stageVariables", &api.config.stage_variables)?;
        }
        map.serialize_entry(
            "requestContext",
            &V1Context {
                input,
                path: &context_path,
                user_agent: user_agent.as_deref(),
            },
        )?;
        map.serialize_entry("body", &body)?;
        map.serialize_entry("isBase64Encoded", &is_base64)?;
        map.end()
    }
}

struct V1Context<'i, 'a> {
    input: &'i EventInput<'a>,
    path: &'i str,
    user_agent: Option<&'i str>,
}

impl Serialize for V1Context<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let input = self.input;
        let api = input.api;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("accountId", input.account_id)?;
        map.serialize_entry("apiId", &api.api_id)?;
        if let Some(authorizer) = &input.granted.authorizer {
            map.serialize_entry("authorizer", authorizer)?;
        }
        map.serialize_entry("deploymentId", &api.api_id[..6.min(api.api_id.len())])?;
        map.serialize_entry("domainName", input.domain_name)?;
        map.serialize_entry("domainPrefix", domain_prefix(input.domain_name))?;
        map.serialize_entry("extendedRequestId", input.extended_request_id)?;
        map.serialize_entry("httpMethod", input.method.as_str())?;
        map.serialize_entry(
            "identity",
            &Identity {
                source_ip: input.source_ip,
                user_agent: self.user_agent,
                api_key: input.granted.api_key.as_deref(),
            },
        )?;
        map.serialize_entry("path", self.path)?;
        map.serialize_entry("protocol", protocol(input.version))?;
        map.serialize_entry("requestId", input.request_id)?;
        map.serialize_entry("requestTime", &request_time(&input.time))?;
        map.serialize_entry("requestTimeEpoch", &input.time.timestamp_millis())?;
        map.serialize_entry("resourceId", &api.api_id[4.min(api.api_id.len())..])?;
        map.serialize_entry("resourcePath", &input.route.resource)?;
        map.serialize_entry("stage", &api.stage)?;
        map.end()
    }
}

struct Identity<'a> {
    source_ip: &'a str,
    user_agent: Option<&'a str>,
    api_key: Option<&'a str>,
}

impl Serialize for Identity<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(14))?;
        map.serialize_entry("accessKey", &())?;
        map.serialize_entry("accountId", &())?;
        map.serialize_entry("apiKey", &self.api_key)?;
        for key in [
            "apiKeyId",
            "caller",
            "cognitoAuthenticationProvider",
            "cognitoAuthenticationType",
            "cognitoIdentityId",
            "cognitoIdentityPoolId",
            "principalOrgId",
        ] {
            map.serialize_entry(key, &())?;
        }
        map.serialize_entry("sourceIp", self.source_ip)?;
        map.serialize_entry("user", &())?;
        map.serialize_entry("userAgent", &self.user_agent)?;
        map.serialize_entry("userArn", &())?;
        map.end()
    }
}

struct V2<'i, 'a>(&'i EventInput<'a>);

impl Serialize for V2<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let input = self.0;
        let api = input.api;
        let mut headers = collect_headers(input, true);
        let mut cookies: Vec<Cow<'_, str>> = Vec::new();
        if let Some(pos) = headers.iter().position(|(n, _)| n == "cookie") {
            let (_, values) = headers.remove(pos);
            for value in values {
                for pair in value.split(';') {
                    let pair = pair.trim();
                    if !pair.is_empty() {
                        cookies.push(Cow::Owned(pair.to_string()));
                    }
                }
            }
        }
        let query = &input.query.0;
        let (body, is_base64) = event_body(input);
        let user_agent = user_agent(input);

        let mut map = s.serialize_map(None)?;
        map.serialize_entry("version", "2.0")?;
        map.serialize_entry("routeKey", &input.route.route_key)?;
        map.serialize_entry("rawPath", input.raw_path)?;
        map.serialize_entry("rawQueryString", input.raw_query)?;
        if !cookies.is_empty() {
            map.serialize_entry("cookies", &StrSeq(&cookies))?;
        }
        map.serialize_entry("headers", &JoinedValues(&headers))?;
        if !query.is_empty() {
            map.serialize_entry("queryStringParameters", &JoinedValues(query))?;
        }
        if !input.path_params.is_empty() {
            map.serialize_entry("pathParameters", &Pairs(input.path_params))?;
        }
        if !api.config.stage_variables.is_empty() {
            map.serialize_entry("stageVariables", &api.config.stage_variables)?;
        }
        map.serialize_entry(
            "requestContext",
            &V2Context {
                input,
                user_agent: user_agent.as_deref().unwrap_or(""),
            },
        )?;
        if let Some(body) = &body {
            map.serialize_entry("body", body)?;
        }
        map.serialize_entry("isBase64Encoded", &is_base64)?;
        map.end()
    }
}

struct V2Context<'i, 'a> {
    input: &'i EventInput<'a>,
    user_agent: &'i str,
}

impl Serialize for V2Context<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let input = self.input;
        let api = input.api;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("accountId", input.account_id)?;
        map.serialize_entry("apiId", &api.api_id)?;
        if let Some(authorizer) = &input.granted.authorizer {
            map.serialize_entry("authorizer", authorizer)?;
        }
        map.serialize_entry("domainName", input.domain_name)?;
        map.serialize_entry("domainPrefix", domain_prefix(input.domain_name))?;
        map.serialize_entry(
            "http",
            &V2Http {
                method: input.method.as_str(),
                path: input.raw_path,
                protocol: protocol(input.version),
                source_ip: input.source_ip,
                user_agent: self.user_agent,
            },
        )?;
        map.serialize_entry("requestId", input.request_id)?;
        map.serialize_entry("routeKey", &input.route.route_key)?;
        map.serialize_entry("stage", &api.stage)?;
        map.serialize_entry("time", &request_time(&input.time))?;
        map.serialize_entry("timeEpoch", &input.time.timestamp_millis())?;
        map.end()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct V2Http<'a> {
    method: &'a str,
    path: &'a str,
    protocol: &'a str,
    source_ip: &'a str,
    user_agent: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiConfig, GatewayConfig, GatewaySettings, RouteAuth, RouteConfig};
    use crate::router::{RequestPath, Router};
    use serde_json::{Value, json};

    struct Req {
        method: Method,
        path: &'static str,
        query: &'static str,
        headers: Vec<(&'static str, &'static str)>,
        body: Vec<u8>,
        version: Version,
    }

    fn req(method: Method, path: &'static str, query: &'static str) -> Req {
        Req {
            method,
            path,
            query,
            headers: vec![("host", "localhost:3000"), ("user-agent", "curl/8.5.0")],
            body: Vec::new(),
            version: Version::HTTP_11,
        }
    }

    fn event(api: ApiConfig, route_path: &str, version: PayloadVersion, r: Req) -> Value {
        event_granted(api, route_path, version, r, &Granted::default())
    }

    fn event_granted(
        api: ApiConfig,
        route_path: &str,
        version: PayloadVersion,
        r: Req,
        granted: &Granted,
    ) -> Value {
        let api_id = api.id.clone();
        let router = Router::new(&GatewayConfig {
            apis: vec![api],
            routes: vec![RouteConfig {
                api_id,
                method: "ANY".into(),
                path: route_path.into(),
                target: crate::config::RouteTarget::Function("f".into()),
                payload_version: version,
                auth: RouteAuth::None,
                api_key_required: false,
                scopes: Vec::new(),
            }],
            settings: GatewaySettings::default(),
            ..Default::default()
        })
        .unwrap();
        let path = RequestPath::parse(r.path).unwrap();
        let m = router.find(Some(&r.method), &path).unwrap();
        let mut headers = HeaderMap::new();
        for (k, v) in &r.headers {
            headers.append(
                http::HeaderName::from_static(k),
                http::HeaderValue::from_static(v),
            );
        }
        let time = DateTime::parse_from_rfc3339("2026-11-22T04:20:23.456Z")
            .unwrap()
            .with_timezone(&Utc);
        let query = Query::parse(r.query);
        let input = EventInput {
            method: &r.method,
            raw_path: r.path,
            path_without_stage: m.path_without_stage,
            raw_query: r.query,
            query: &query,
            granted,
            headers: &headers,
            version: r.version,
            body: &r.body,
            source_ip: "127.0.0.1",
            request_id: "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            extended_request_id: "JJbxmHc7IAMFdUw=",
            time,
            api: m.api,
            route: m.route,
            path_params: &m.path_params,
            domain_name: "localhost",
            forwarded_proto: "http",
            forwarded_port: 3000,
            trace_header: "Root=1-00000000-000000000000000000000000",
            account_id: "123456789012",
        };
        serde_json::from_slice(&build_event(&input).unwrap()).unwrap()
    }

    #[test]
    fn v1_rest_event_fields() {
        let mut r = req(
            Method::GET,
            "/Prod/pets/42",
            "sort=asc&tag=a&tag=b&q=a+b%20c&flag",
        );
        r.headers.push(("x-multi", "one"));
        r.headers.push(("x-multi", "two"));
        let e = event(
            ApiConfig::new("Api", ApiKind::Rest),
            "/pets/{id}",
            PayloadVersion::V1,
            r,
        );
        assert_eq!(e["resource"], "/pets/{id}");
        assert_eq!(e["path"], "/pets/42");
        assert_eq!(e["httpMethod"], "GET");
        assert!(e.get("version").is_none());
        assert_eq!(e["headers"]["Host"], "localhost:3000");
        assert_eq!(e["headers"]["User-Agent"], "curl/8.5.0");
        assert_eq!(e["headers"]["X-Multi"], "two");
        assert_eq!(e["multiValueHeaders"]["X-Multi"], json!(["one", "two"]));
        assert_eq!(e["headers"]["X-Forwarded-For"], "127.0.0.1");
        assert_eq!(e["headers"]["X-Forwarded-Port"], "3000");
        assert_eq!(e["headers"]["X-Forwarded-Proto"], "http");
        assert_eq!(
            e["queryStringParameters"],
            json!({"sort": "asc", "tag": "b", "q": "a b c", "flag": ""})
        );
        assert_eq!(
            e["multiValueQueryStringParameters"],
            json!({"sort": ["asc"], "tag": ["a", "b"], "q": ["a b c"], "flag": [""]})
        );
        assert_eq!(e["pathParameters"], json!({"id": "42"}));
        assert_eq!(e["stageVariables"], Value::Null);
        assert_eq!(e["body"], Value::Null);
        assert_eq!(e["isBase64Encoded"], false);
        let rc = &e["requestContext"];
        assert_eq!(rc["accountId"], "123456789012");
        assert_eq!(rc["apiId"].as_str().unwrap().len(), 10);
        assert_eq!(rc["domainName"], "localhost");
        assert_eq!(rc["domainPrefix"], "localhost");
        assert_eq!(rc["extendedRequestId"], "JJbxmHc7IAMFdUw=");
        assert_eq!(rc["httpMethod"], "GET");
        assert_eq!(rc["identity"]["sourceIp"], "127.0.0.1");
        assert_eq!(rc["identity"]["userAgent"], "curl/8.5.0");
        assert_eq!(rc["identity"]["apiKey"], Value::Null);
        assert_eq!(rc["identity"].as_object().unwrap().len(), 14);
        assert_eq!(rc["path"], "/Prod/pets/42");
        assert_eq!(rc["protocol"], "HTTP/1.1");
        assert_eq!(rc["requestId"], "c6af9ac6-7b61-11e6-9a41-93e8deadbeef");
        assert_eq!(rc["requestTime"], "22/Nov/2026:04:20:23 +0000");
        assert_eq!(rc["requestTimeEpoch"], 1_795_321_223_456_i64);
        assert_eq!(rc["resourcePath"], "/pets/{id}");
        assert_eq!(rc["stage"], "Prod");
        assert!(rc.get("authorizer").is_none());
    }

    #[test]
    fn v1_unprefixed_request_still_shows_stage_in_context_path() {
        let mut api = ApiConfig::new("Api", ApiKind::Rest);
        api.stage_variables.insert("env".into(), "dev".into());
        let e = event(api, "/", PayloadVersion::V1, req(Method::GET, "/", ""));
        assert_eq!(e["path"], "/");
        assert_eq!(e["requestContext"]["path"], "/Prod/");
        assert_eq!(e["pathParameters"], Value::Null);
        assert_eq!(e["queryStringParameters"], Value::Null);
        assert_eq!(e["multiValueQueryStringParameters"], Value::Null);
        assert_eq!(e["stageVariables"], json!({"env": "dev"}));
    }

    #[test]
    fn v1_binary_body_follows_binary_media_types() {
        let mut api = ApiConfig::new("Api", ApiKind::Rest);
        api.binary_media_types = vec!["image/*".into()];
        let mut r = req(Method::POST, "/up", "");
        r.headers.push(("content-type", "image/png"));
        r.body = b"abc".to_vec();
        let e = event(api.clone(), "/up", PayloadVersion::V1, r);
        assert_eq!(e["body"], "YWJj");
        assert_eq!(e["isBase64Encoded"], true);

        let mut r = req(Method::POST, "/up", "");
        r.headers
            .push(("content-type", "text/plain; charset=utf-8"));
        r.body = "héllo".as_bytes().to_vec();
        let e = event(api.clone(), "/up", PayloadVersion::V1, r);
        assert_eq!(e["body"], "héllo");
        assert_eq!(e["isBase64Encoded"], false);

        // Not UTF-8: base64 whatever the type says.
        let mut r = req(Method::POST, "/up", "");
        r.body = vec![0xff, 0x00];
        let e = event(api, "/up", PayloadVersion::V1, r);
        assert_eq!(e["body"], "/wA=");
        assert_eq!(e["isBase64Encoded"], true);
    }

    #[test]
    fn auth_results_are_written_by_the_builder() {
        let granted = Granted {
            authorizer: Some(json!({"principalId": "u1", "tenant": "t"})),
            api_key: Some("k-123".into()),
        };
        let e = event_granted(
            ApiConfig::new("Api", ApiKind::Rest),
            "/x",
            PayloadVersion::V1,
            req(Method::GET, "/x", "token=a+b"),
            &granted,
        );
        let rc = &e["requestContext"];
        assert_eq!(
            rc["authorizer"],
            json!({"principalId": "u1", "tenant": "t"})
        );
        assert_eq!(rc["identity"]["apiKey"], "k-123");
        assert_eq!(rc["identity"].as_object().unwrap().len(), 14);
        assert_eq!(e["queryStringParameters"]["token"], "a b");

        let granted = Granted {
            authorizer: Some(json!({"lambda": {"role": "admin"}})),
            api_key: None,
        };
        let e = event_granted(
            ApiConfig::new("Http", ApiKind::Http),
            "/x",
            PayloadVersion::V2,
            req(Method::GET, "/x", ""),
            &granted,
        );
        assert_eq!(
            e["requestContext"]["authorizer"],
            json!({"lambda": {"role": "admin"}})
        );
    }

    #[test]
    fn binary_type_patterns() {
        let types = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches_binary_type("image/png", &types(&["image/png"])));
        assert!(matches_binary_type("image/png", &types(&["image/*"])));
        assert!(matches_binary_type("text/plain", &types(&["*/*"])));
        assert!(!matches_binary_type("text/plain", &types(&["image/*"])));
        assert!(!matches_binary_type("imagex/png", &types(&["image/*"])));
    }

    #[test]
    fn v2_http_event_fields() {
        let mut r = req(Method::POST, "/orders/7", "x=1&x=2&y=%41");
        r.headers.push(("cookie", "session=abc123; theme=dark"));
        r.headers.push(("cookie", "c=3"));
        r.headers.push(("x-custom", "one"));
        r.headers.push(("x-custom", "two"));
        r.headers.push(("content-type", "application/json"));
        r.body = br#"{"qty": 3}"#.to_vec();
        let e = event(
            ApiConfig::new("Http", ApiKind::Http),
            "/orders/{id}",
            PayloadVersion::V2,
            r,
        );
        assert_eq!(e["version"], "2.0");
        assert_eq!(e["routeKey"], "ANY /orders/{id}");
        assert_eq!(e["rawPath"], "/orders/7");
        assert_eq!(e["rawQueryString"], "x=1&x=2&y=%41");
        assert_eq!(e["cookies"], json!(["session=abc123", "theme=dark", "c=3"]));
        assert!(e["headers"].get("cookie").is_none());
        assert_eq!(e["headers"]["x-custom"], "one,two");
        assert_eq!(e["headers"]["host"], "localhost:3000");
        assert_eq!(e["headers"]["x-forwarded-proto"], "http");
        assert_eq!(e["queryStringParameters"], json!({"x": "1,2", "y": "A"}));
        assert_eq!(e["pathParameters"], json!({"id": "7"}));
        assert!(e.get("stageVariables").is_none());
        assert_eq!(e["body"], r#"{"qty": 3}"#);
        assert_eq!(e["isBase64Encoded"], false);
        let rc = &e["requestContext"];
        assert_eq!(rc["http"]["method"], "POST");
        assert_eq!(rc["http"]["path"], "/orders/7");
        assert_eq!(rc["http"]["protocol"], "HTTP/1.1");
        assert_eq!(rc["http"]["sourceIp"], "127.0.0.1");
        assert_eq!(rc["http"]["userAgent"], "curl/8.5.0");
        assert_eq!(rc["routeKey"], "ANY /orders/{id}");
        assert_eq!(rc["stage"], "$default");
        assert_eq!(rc["time"], "22/Nov/2026:04:20:23 +0000");
        assert_eq!(rc["timeEpoch"], 1_795_321_223_456_i64);
        assert_eq!(rc["requestId"], "c6af9ac6-7b61-11e6-9a41-93e8deadbeef");
        assert!(rc.get("authorizer").is_none());
    }

    #[test]
    fn v2_omits_absent_fields_and_base64s_non_text() {
        let e = event(
            ApiConfig::new("Http", ApiKind::Http),
            "/x",
            PayloadVersion::V2,
            req(Method::GET, "/x", ""),
        );
        for key in [
            "cookies",
            "queryStringParameters",
            "pathParameters",
            "stageVariables",
            "body",
        ] {
            assert!(e.get(key).is_none(), "{key} present");
        }
        assert_eq!(e["rawQueryString"], "");

        let mut r = req(Method::POST, "/x", "");
        r.headers.push(("content-type", "application/octet-stream"));
        r.body = b"hi".to_vec();
        let e = event(
            ApiConfig::new("Http", ApiKind::Http),
            "/x",
            PayloadVersion::V2,
            r,
        );
        assert_eq!(e["body"], "aGk=");
        assert_eq!(e["isBase64Encoded"], true);

        let mut r = req(Method::POST, "/x", "");
        r.headers.push(("content-type", "application/vnd.api+json"));
        r.body = b"{}".to_vec();
        let e = event(
            ApiConfig::new("Http", ApiKind::Http),
            "/x",
            PayloadVersion::V2,
            r,
        );
        assert_eq!(e["body"], "{}");
        assert_eq!(e["isBase64Encoded"], false);
    }

    #[test]
    fn unicode_path_keeps_raw_path_and_decodes_parameters() {
        let e = event(
            ApiConfig::new("Http", ApiKind::Http),
            "/café/{name}",
            PayloadVersion::V2,
            req(Method::GET, "/caf%C3%A9/J%C3%BCrgen", ""),
        );
        assert_eq!(e["rawPath"], "/caf%C3%A9/J%C3%BCrgen");
        assert_eq!(e["routeKey"], "ANY /café/{name}");
        assert_eq!(e["pathParameters"], json!({"name": "Jürgen"}));
    }

    #[test]
    fn http_api_payload_v1_has_version_and_http2_keeps_lower_case() {
        let mut r = req(Method::GET, "/x", "");
        r.version = Version::HTTP_2;
        let e = event(
            ApiConfig::new("Http", ApiKind::Http),
            "/x",
            PayloadVersion::V1,
            r,
        );
        assert_eq!(e["version"], "1.0");
        assert_eq!(e["headers"]["user-agent"], "curl/8.5.0");
        assert_eq!(e["requestContext"]["stage"], "$default");
        assert_eq!(e["requestContext"]["protocol"], "HTTP/2.0");
    }
}
