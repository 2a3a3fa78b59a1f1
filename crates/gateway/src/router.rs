//! Route matching: one segment trie per API, mounted at the API's stage
//! prefixes.
//!
//! Matching walks only the branches whose segments fit the request path, so
//! its cost grows with the path's depth and the number of branches that
//! fit, not with the number of routes. Among the routes that fit, the most
//! specific wins (see [`Rank`]); docs/gateway.md states the rules.

use std::borrow::Cow;
use std::collections::HashMap;

use http::Method;
use percent_encoding::percent_decode_str;

use crate::config::{ApiConfig, ApiKind, GatewayConfig, RouteConfig, derive_api_id};

/// A configuration that cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouterError {
    /// A route names an API that is not declared.
    #[error("route {method} {path} names unknown api {api}")]
    UnknownApi {
        /// API logical id.
        api: String,
        /// Route method.
        method: String,
        /// Route path.
        path: String,
    },
    /// A path template is not valid.
    #[error("invalid path template {path:?}: {reason}")]
    InvalidPath {
        /// The template.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A method is not an HTTP method.
    #[error("invalid method {0:?}")]
    InvalidMethod(String),
}

/// A request path that must be refused before routing (400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    /// Percent-decoding gave bytes that are not UTF-8.
    #[error("path is not valid UTF-8 after percent-decoding")]
    InvalidUtf8,
    /// `.` or `..` segment, or a NUL byte.
    #[error("path contains a dot segment or a NUL byte")]
    Forbidden,
}

/// One segment of a request path: where it starts in the raw path and its
/// decoded text.
#[derive(Debug)]
pub(crate) struct Segment<'a> {
    /// Byte offset of the segment's leading `/` in the raw path.
    pub raw_start: usize,
    pub decoded: Cow<'a, str>,
}

/// A request path split into decoded segments. Empty segments (`//`, a
/// trailing `/`) are dropped, as the canonical path would have none.
#[derive(Debug)]
pub(crate) struct RequestPath<'a> {
    pub raw: &'a str,
    pub segments: Vec<Segment<'a>>,
}

impl<'a> RequestPath<'a> {
    pub(crate) fn parse(raw: &'a str) -> Result<Self, PathError> {
        let mut segments = Vec::new();
        let mut pos = 0;
        for piece in raw.split('/') {
            let start = pos;
            pos += piece.len() + 1;
            if piece.is_empty() {
                continue;
            }
            let decoded = percent_decode_str(piece)
                .decode_utf8()
                .map_err(|_| PathError::InvalidUtf8)?;
            // `%2f` and `%5c` decode inside a segment; a dot segment
            // hidden behind them is refused too (robustness H5).
            if decoded.contains('\0')
                || decoded
                    .split(['/', '\\'])
                    .any(|part| part == "." || part == "..")
            {
                return Err(PathError::Forbidden);
            }
            // `start` is the offset of the piece; its `/` is one byte before.
            segments.push(Segment {
                raw_start: start.saturating_sub(1),
                decoded,
            });
        }
        Ok(Self { raw, segments })
    }

    /// The raw path from segment `index` on (`/` when nothing is left).
    pub(crate) fn raw_from(&self, index: usize) -> &'a str {
        match self.segments.get(index) {
            Some(seg) => &self.raw[seg.raw_start..],
            None => "/",
        }
    }
}

/// A compiled route.
#[derive(Debug)]
pub(crate) struct Route {
    pub config: RouteConfig,
    /// `None` for `ANY`.
    pub method: Option<Method>,
    /// Normalised template (`/pets/{id}`), or `$default`.
    pub resource: String,
    /// `GET /pets/{id}`, `ANY /{proxy+}` or `$default`.
    pub route_key: String,
}

/// A compiled API.
#[derive(Debug)]
pub(crate) struct Api {
    pub index: usize,
    pub config: ApiConfig,
    /// `requestContext.apiId`.
    pub api_id: String,
    /// `requestContext.stage`.
    pub stage: String,
    /// Path prefixes the API is served under (decoded segments).
    mounts: Vec<Vec<String>>,
    tree: Node,
    default_route: Option<usize>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Default)]
struct Methods {
    exact: Vec<(Method, usize)>,
    any: Option<usize>,
}

impl Methods {
    /// The route for `method`: an exact entry, else `ANY`. `None` as query
    /// means "any method at all" (used to find the API owning a path).
    fn lookup(&self, method: Option<&Method>) -> Option<(usize, bool)> {
        match method {
            Some(method) => {
                if let Some((_, idx)) = self.exact.iter().find(|(m, _)| m == method) {
                    return Some((*idx, true));
                }
                if ANY_METHODS.contains(method) {
                    return self.any.map(|idx| (idx, false));
                }
                None
            }
            None => self
                .exact
                .first()
                .map(|(_, idx)| (*idx, true))
                .or(self.any.map(|idx| (idx, false))),
        }
    }

    fn insert(&mut self, method: Option<&Method>, route: usize) -> bool {
        match method {
            Some(method) => {
                if self.exact.iter().any(|(m, _)| m == method) {
                    return false;
                }
                self.exact.push((method.clone(), route));
            }
            None => {
                if self.any.is_some() {
                    return false;
                }
                self.any = Some(route);
            }
        }
        true
    }
}

/// The methods `ANY` stands for (API Gateway's list).
const ANY_METHODS: [Method; 7] = [
    Method::DELETE,
    Method::GET,
    Method::HEAD,
    Method::OPTIONS,
    Method::PATCH,
    Method::POST,
    Method::PUT,
];

#[derive(Debug, Default)]
struct Node {
    literal: HashMap<String, Node>,
    params: Vec<(String, Node)>,
    greedy: Option<(String, Methods)>,
    methods: Methods,
}

/// Segment kinds, ordered by specificity.
const LITERAL: u8 = 3;
const PARAM: u8 = 2;
const GREEDY: u8 = 1;

/// How specific a match is; the greatest wins. Field order is priority:
/// no greedy segment beats greedy beats `$default`; then segment by
/// segment literal > parameter > greedy; then an exact method beats `ANY`;
/// then a route reached through its API's own URL (not the unprefixed REST
/// convenience mount); then the earlier API.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    tier: u8,
    kinds: Vec<u8>,
    exact_method: bool,
    /// False for a REST route reached without its stage prefix (ESB's
    /// `sam local` convenience): where it clashes with an HTTP API route of
    /// the same specificity the HTTP API wins, since the REST route stays
    /// reachable under `/{StageName}`.
    native: bool,
    earlier_api: std::cmp::Reverse<usize>,
}

/// A route that fits the request.
#[derive(Debug)]
pub(crate) struct RouteMatch<'r, 'p> {
    pub api: &'r Api,
    pub route: &'r Route,
    /// Decoded path parameters, in template order.
    pub path_params: Vec<(&'r str, String)>,
    /// The raw path without the stage prefix.
    pub path_without_stage: &'p str,
}

impl RouteMatch<'_, '_> {
    /// A route declared for this path, not a greedy or `$default` catch-all
    /// (ESB's own endpoints hide only those).
    pub(crate) fn is_explicit(&self) -> bool {
        self.route.resource != "$default" && !self.route.resource.contains("+}")
    }
}

/// Why no route fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NoRoute {
    /// Which API's "no route" answer to give.
    pub kind: ApiKind,
}

#[derive(Debug, Default)]
pub(crate) struct Router {
    pub apis: Vec<Api>,
}

struct Best<'r> {
    rank: Rank,
    api: &'r Api,
    route: usize,
    captures: Vec<Capture<'r>>,
    prefix_len: usize,
}

#[derive(Clone, Copy)]
struct Capture<'r> {
    name: &'r str,
    start: usize,
    end: usize,
}

impl Router {
    pub(crate) fn new(config: &GatewayConfig) -> Result<Self, RouterError> {
        let mut apis: Vec<Api> = config
            .apis
            .iter()
            .enumerate()
            .map(|(index, api)| compile_api(index, api, config.settings.rest_unprefixed))
            .collect();
        for route in &config.routes {
            let Some(api) = apis.iter_mut().find(|a| a.config.id == route.api_id) else {
                return Err(RouterError::UnknownApi {
                    api: route.api_id.clone(),
                    method: route.method.clone(),
                    path: route.path.clone(),
                });
            };
            add_route(api, route)?;
        }
        Ok(Self { apis })
    }

    /// The kind of the first declared API (whose error shape answers
    /// requests no API claims); HTTP when there is none.
    pub(crate) fn first_kind(&self) -> ApiKind {
        self.apis.first().map_or(ApiKind::Http, |a| a.config.kind)
    }

    /// The most specific route for `method` and `path`. `method: None`
    /// finds the route that would own the path for some method (CORS).
    pub(crate) fn find<'r, 'p>(
        &'r self,
        method: Option<&Method>,
        path: &RequestPath<'p>,
    ) -> Result<RouteMatch<'r, 'p>, NoRoute> {
        let mut best: Option<Best<'r>> = None;
        for api in &self.apis {
            for mount in &api.mounts {
                if !mount_fits(mount, path) {
                    continue;
                }
                let mut walk = Walk {
                    api,
                    segments: &path.segments[mount.len()..],
                    method,
                    kinds: vec![LITERAL; mount.len()],
                    captures: Vec::new(),
                    prefix_len: mount.len(),
                    best: &mut best,
                };
                walk.node(&api.tree, 0);
            }
            if let Some(default) = api.default_route {
                // $default answers any path under the API's longest fitting
                // mount.
                let prefix_len = api
                    .mounts
                    .iter()
                    .filter(|m| mount_fits(m, path))
                    .map(Vec::len)
                    .max();
                if let Some(prefix_len) = prefix_len {
                    let rank = Rank {
                        tier: 0,
                        kinds: Vec::new(),
                        exact_method: false,
                        native: true,
                        earlier_api: std::cmp::Reverse(api.index),
                    };
                    if best.as_ref().is_none_or(|b| rank > b.rank) {
                        best = Some(Best {
                            rank,
                            api,
                            route: default,
                            captures: Vec::new(),
                            prefix_len,
                        });
                    }
                }
            }
        }
        match best {
            Some(best) => {
                let path_params = best
                    .captures
                    .iter()
                    .map(|c| {
                        let segs = &path.segments[best.prefix_len..][c.start..c.end];
                        let value = if segs.len() == 1 {
                            segs[0].decoded.to_string()
                        } else {
                            segs.iter()
                                .map(|s| s.decoded.as_ref())
                                .collect::<Vec<_>>()
                                .join("/")
                        };
                        (c.name, value)
                    })
                    .collect();
                Ok(RouteMatch {
                    api: best.api,
                    route: &best.api.routes[best.route],
                    path_params,
                    path_without_stage: path.raw_from(best.prefix_len),
                })
            }
            None => Err(NoRoute {
                kind: self.no_route_kind(path),
            }),
        }
    }

    /// Which API kind answers an unrouted request: the API whose routes
    /// know the path (wrong method), else the API whose stage prefix the
    /// path starts with, else the first declared API (HTTP-style 404 when
    /// there is none).
    fn no_route_kind(&self, path: &RequestPath<'_>) -> ApiKind {
        if let Some(kind) = self.find_any_method(path) {
            return kind;
        }
        for api in &self.apis {
            if api
                .mounts
                .iter()
                .any(|m| !m.is_empty() && mount_fits(m, path))
            {
                return api.config.kind;
            }
        }
        self.apis.first().map_or(ApiKind::Http, |a| a.config.kind)
    }

    fn find_any_method(&self, path: &RequestPath<'_>) -> Option<ApiKind> {
        // Avoid recursion through `find`'s error path.
        let mut best: Option<Best<'_>> = None;
        for api in &self.apis {
            for mount in &api.mounts {
                if !mount_fits(mount, path) {
                    continue;
                }
                let mut walk = Walk {
                    api,
                    segments: &path.segments[mount.len()..],
                    method: None,
                    kinds: vec![LITERAL; mount.len()],
                    captures: Vec::new(),
                    prefix_len: mount.len(),
                    best: &mut best,
                };
                walk.node(&api.tree, 0);
            }
        }
        best.map(|b| b.api.config.kind)
    }
}

fn mount_fits(mount: &[String], path: &RequestPath<'_>) -> bool {
    mount.len() <= path.segments.len()
        && mount
            .iter()
            .zip(&path.segments)
            .all(|(m, s)| m == s.decoded.as_ref())
}

struct Walk<'r, 'a, 'b> {
    api: &'r Api,
    segments: &'a [Segment<'a>],
    method: Option<&'a Method>,
    kinds: Vec<u8>,
    captures: Vec<Capture<'r>>,
    prefix_len: usize,
    best: &'b mut Option<Best<'r>>,
}

impl<'r> Walk<'r, '_, '_> {
    fn node(&mut self, node: &'r Node, depth: usize) {
        if depth == self.segments.len() {
            if let Some((route, exact)) = node.methods.lookup(self.method) {
                self.offer(2, route, exact);
            }
            return;
        }
        let segment = self.segments[depth].decoded.as_ref();
        if let Some(child) = node.literal.get(segment) {
            self.kinds.push(LITERAL);
            self.node(child, depth + 1);
            self.kinds.pop();
        }
        for (name, child) in &node.params {
            self.kinds.push(PARAM);
            self.captures.push(Capture {
                name,
                start: depth,
                end: depth + 1,
            });
            self.node(child, depth + 1);
            self.captures.pop();
            self.kinds.pop();
        }
        if let Some((name, methods)) = &node.greedy
            && let Some((route, exact)) = methods.lookup(self.method)
        {
            self.kinds.push(GREEDY);
            self.captures.push(Capture {
                name,
                start: depth,
                end: self.segments.len(),
            });
            self.offer(1, route, exact);
            self.captures.pop();
            self.kinds.pop();
        }
    }

    fn offer(&mut self, tier: u8, route: usize, exact_method: bool) {
        let rank = Rank {
            tier,
            kinds: self.kinds.clone(),
            exact_method,
            native: !(self.api.config.kind == ApiKind::Rest && self.prefix_len == 0),
            earlier_api: std::cmp::Reverse(self.api.index),
        };
        if self.best.as_ref().is_none_or(|b| rank > b.rank) {
            *self.best = Some(Best {
                rank,
                api: self.api,
                route,
                captures: self.captures.clone(),
                prefix_len: self.prefix_len,
            });
        }
    }
}

fn compile_api(index: usize, config: &ApiConfig, rest_unprefixed: bool) -> Api {
    let api_id = config
        .api_id
        .clone()
        .unwrap_or_else(|| derive_api_id(&config.id));
    let (stage, mut mounts) = match config.kind {
        ApiKind::Rest => {
            let stage = config
                .stage_name
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "Prod".to_string());
            let mut mounts = Vec::new();
            if rest_unprefixed {
                mounts.push(Vec::new());
            }
            mounts.push(vec![stage.clone()]);
            (stage, mounts)
        }
        ApiKind::Http => match config.stage_name.as_deref() {
            None | Some("") | Some("$default") => ("$default".to_string(), vec![Vec::new()]),
            Some(name) => (name.to_string(), vec![Vec::new(), vec![name.to_string()]]),
        },
        ApiKind::FunctionUrl => ("$default".to_string(), vec![Vec::new()]),
    };
    // A base path is the API's only way in.
    if let Some(base) = &config.base_path {
        mounts = vec![
            base.split('/')
                .filter(|s| !s.is_empty())
                .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
                .collect(),
        ];
    }
    Api {
        index,
        config: config.clone(),
        api_id,
        stage,
        mounts,
        tree: Node::default(),
        default_route: None,
        routes: Vec::new(),
    }
}

/// A route's method; `None` for `ANY`.
fn parse_route_method(text: &str) -> Result<Option<Method>, RouterError> {
    let upper = text.to_ascii_uppercase();
    if upper == "ANY" || upper == "X-AMAZON-APIGATEWAY-ANY-METHOD" {
        return Ok(None);
    }
    Method::from_bytes(upper.as_bytes())
        .map(Some)
        .map_err(|_| RouterError::InvalidMethod(text.to_string()))
}

fn add_route(api: &mut Api, config: &RouteConfig) -> Result<(), RouterError> {
    let index = api.routes.len();
    if config.path == "$default" {
        if api.default_route.is_some() {
            tracing::warn!(api = %api.config.id, "duplicate $default route ignored");
            return Ok(());
        }
        api.routes.push(Route {
            config: config.clone(),
            method: None,
            resource: "$default".to_string(),
            route_key: "$default".to_string(),
        });
        api.default_route = Some(index);
        return Ok(());
    }
    let method = parse_route_method(&config.method)?;
    let invalid = |reason| RouterError::InvalidPath {
        path: config.path.clone(),
        reason,
    };
    if !config.path.starts_with('/') {
        return Err(invalid("must start with '/'"));
    }
    let pieces: Vec<&str> = config.path.split('/').filter(|s| !s.is_empty()).collect();
    let resource = format!("/{}", pieces.join("/"));
    // A function URL has one catch-all route, which its events call
    // `$default` whatever path the model gives it.
    let route_key = if api.config.kind == ApiKind::FunctionUrl {
        "$default".to_string()
    } else {
        format!(
            "{} {}",
            method.as_ref().map_or("ANY", Method::as_str),
            resource
        )
    };
    let mut node = &mut api.tree;
    let mut inserted = false;
    for (i, piece) in pieces.iter().enumerate() {
        if let Some(inner) = piece.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            if let Some(name) = inner.strip_suffix('+') {
                if i + 1 != pieces.len() {
                    return Err(invalid("a greedy {name+} must be the last segment"));
                }
                if name.is_empty() {
                    return Err(invalid("empty parameter name"));
                }
                let (_, methods) = node
                    .greedy
                    .get_or_insert_with(|| (name.to_string(), Methods::default()));
                inserted = methods.insert(method.as_ref(), index);
                break;
            }
            if inner.is_empty() || inner.contains(['{', '}']) {
                return Err(invalid("bad parameter name"));
            }
            let pos = match node.params.iter().position(|(n, _)| n == inner) {
                Some(pos) => pos,
                None => {
                    node.params.push((inner.to_string(), Node::default()));
                    node.params.len() - 1
                }
            };
            node = &mut node.params[pos].1;
        } else {
            if piece.contains(['{', '}']) {
                return Err(invalid("parameters must be whole segments"));
            }
            let literal = percent_decode_str(piece).decode_utf8_lossy().into_owned();
            node = node.literal.entry(literal).or_default();
        }
        if i + 1 == pieces.len() {
            inserted = node.methods.insert(method.as_ref(), index);
        }
    }
    if pieces.is_empty() {
        inserted = node.methods.insert(method.as_ref(), index);
    }
    if !inserted {
        tracing::warn!(api = %api.config.id, route = %route_key, "duplicate route ignored (first one wins)");
        return Ok(());
    }
    api.routes.push(Route {
        config: config.clone(),
        method,
        resource,
        route_key,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GatewaySettings, PayloadVersion, RouteAuth};

    fn route(api: &str, method: &str, path: &str, function: &str) -> RouteConfig {
        RouteConfig {
            api_id: api.into(),
            method: method.into(),
            path: path.into(),
            target: crate::config::RouteTarget::Function(function.into()),
            payload_version: PayloadVersion::V2,
            auth: RouteAuth::None,
            api_key_required: false,
            scopes: Vec::new(),
        }
    }

    fn router(apis: Vec<ApiConfig>, routes: Vec<RouteConfig>) -> Router {
        Router::new(&GatewayConfig {
            apis,
            routes,
            settings: GatewaySettings::default(),
            ..Default::default()
        })
        .unwrap()
    }

    /// (function, params) of the match, or the error kind.
    fn hit(
        r: &Router,
        method: &str,
        path: &str,
    ) -> Result<(String, Vec<(String, String)>), ApiKind> {
        let path = RequestPath::parse(path).unwrap();
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        r.find(Some(&method), &path)
            .map(|m| {
                (
                    m.route
                        .config
                        .target
                        .function()
                        .unwrap_or_default()
                        .to_string(),
                    m.path_params
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.clone()))
                        .collect(),
                )
            })
            .map_err(|e| e.kind)
    }

    fn f(r: &Router, method: &str, path: &str) -> String {
        match hit(r, method, path) {
            Ok((f, _)) => f,
            Err(kind) => format!("none:{kind:?}"),
        }
    }

    #[test]
    fn http_api_documented_priority_example() {
        let r = router(
            vec![ApiConfig::new("H", ApiKind::Http)],
            vec![
                route("H", "GET", "/pets/dog/1", "literal"),
                route("H", "GET", "/pets/dog/{id}", "param"),
                route("H", "GET", "/pets/{proxy+}", "pets-greedy"),
                route("H", "ANY", "/{proxy+}", "any-greedy"),
                route("H", "ANY", "$default", "default"),
            ],
        );
        let table = [
            ("GET", "/pets/dog/1", "literal"),
            ("GET", "/pets/dog/2", "param"),
            ("GET", "/pets/cat/1", "pets-greedy"),
            ("POST", "/test/5", "any-greedy"),
            ("POST", "/pets/dog/1", "any-greedy"),
            ("GET", "/", "default"),
        ];
        for (method, path, want) in table {
            assert_eq!(f(&r, method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn literal_beats_param_beats_greedy_and_exact_beats_any() {
        let r = router(
            vec![ApiConfig::new("R", ApiKind::Rest)],
            vec![
                route("R", "GET", "/a/b", "lit"),
                route("R", "ANY", "/a/b", "lit-any"),
                route("R", "GET", "/a/{x}", "param"),
                route("R", "GET", "/a/{p+}", "greedy"),
                route("R", "GET", "/{x}/c/d", "deep-param"),
                route("R", "GET", "/", "root"),
            ],
        );
        let table = [
            ("GET", "/a/b", "lit"),
            ("PUT", "/a/b", "lit-any"),
            ("GET", "/a/z", "param"),
            ("GET", "/a/z/y", "greedy"),
            // A full match anywhere in the tree beats a greedy one.
            ("GET", "/a/c/d", "deep-param"),
            ("GET", "/", "root"),
            ("GET", "/a/b/", "lit"),
            ("GET", "//a//b", "lit"),
            ("GET", "/Prod/a/b", "lit"),
            ("TRACE", "/a/b", "none:Rest"),
            ("POST", "/a/z", "none:Rest"),
            ("GET", "/nothing", "none:Rest"),
        ];
        for (method, path, want) in table {
            assert_eq!(f(&r, method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn greedy_captures_rest_and_does_not_match_its_root() {
        let r = router(
            vec![ApiConfig::new("H", ApiKind::Http)],
            vec![route("H", "ANY", "/files/{proxy+}", "files")],
        );
        assert_eq!(
            hit(&r, "GET", "/files/a/b%20c/d").unwrap().1,
            vec![("proxy".to_string(), "a/b c/d".to_string())]
        );
        assert_eq!(f(&r, "GET", "/files"), "none:Http");
        assert_eq!(f(&r, "GET", "/files/"), "none:Http");
    }

    #[test]
    fn unicode_and_percent_encoded_paths_match_decoded() {
        let r = router(
            vec![ApiConfig::new("H", ApiKind::Http)],
            vec![
                route("H", "GET", "/café/{name}", "cafe"),
                route("H", "GET", "/a%20b", "space"),
            ],
        );
        let (function, params) = hit(&r, "GET", "/caf%C3%A9/J%C3%BCrgen%2Fx").unwrap();
        assert_eq!(function, "cafe");
        assert_eq!(params, vec![("name".to_string(), "Jürgen/x".to_string())]);
        assert_eq!(f(&r, "GET", "/café/x"), "cafe");
        assert_eq!(f(&r, "GET", "/a b"), "space");
        assert_eq!(f(&r, "GET", "/a%20b"), "space");
    }

    #[test]
    fn bad_paths_are_refused() {
        assert_eq!(
            RequestPath::parse("/a/%FF").unwrap_err(),
            PathError::InvalidUtf8
        );
        assert_eq!(
            RequestPath::parse("/a/../b").unwrap_err(),
            PathError::Forbidden
        );
        assert_eq!(
            RequestPath::parse("/a/%2e%2e/b").unwrap_err(),
            PathError::Forbidden
        );
        assert_eq!(
            RequestPath::parse("/recho/%2e%2e%2f%2e%2e%2fetc%2fpasswd").unwrap_err(),
            PathError::Forbidden
        );
        assert_eq!(
            RequestPath::parse("/a/..%5cb").unwrap_err(),
            PathError::Forbidden
        );
        assert!(RequestPath::parse("/a/%252e%252e/x..y").is_ok());
        assert_eq!(
            RequestPath::parse("/a%00").unwrap_err(),
            PathError::Forbidden
        );
    }

    #[test]
    fn stages_and_several_apis() {
        let mut rest = ApiConfig::new("Rest", ApiKind::Rest);
        rest.stage_name = Some("dev".into());
        let mut staged = ApiConfig::new("Staged", ApiKind::Http);
        staged.stage_name = Some("v1".into());
        let r = router(
            vec![rest, ApiConfig::new("Http", ApiKind::Http), staged],
            vec![
                route("Rest", "GET", "/shared", "rest-shared"),
                route("Http", "GET", "/shared", "http-shared"),
                route("Http", "GET", "/{x}", "http-param"),
                route("Rest", "GET", "/only-rest/{id}", "rest-only"),
                route("Staged", "GET", "/staged", "staged"),
            ],
        );
        // Same path in a REST and an HTTP API: without a stage prefix the
        // HTTP API wins (the REST route stays reachable under /dev).
        assert_eq!(f(&r, "GET", "/shared"), "http-shared");
        assert_eq!(f(&r, "GET", "/dev/shared"), "rest-shared");
        // More specific beats declaration order.
        assert_eq!(f(&r, "GET", "/only-rest"), "http-param");
        assert_eq!(f(&r, "GET", "/dev/only-rest/1"), "rest-only");
        assert_eq!(f(&r, "GET", "/only-rest/1"), "rest-only");
        assert_eq!(f(&r, "GET", "/v1/staged"), "staged");
        assert_eq!(f(&r, "GET", "/staged"), "staged");
        let path = RequestPath::parse("/dev/only-rest/1").unwrap();
        let m = r.find(Some(&Method::GET), &path).unwrap();
        assert_eq!(m.api.stage, "dev");
        assert_eq!(m.path_without_stage, "/only-rest/1");
        assert_eq!(m.route.resource, "/only-rest/{id}");
        // Unknown path: the stage prefix decides the error kind.
        assert_eq!(f(&r, "GET", "/dev/x/y/z"), "none:Rest");
        assert_eq!(f(&r, "GET", "/v1/x/y/z"), "none:Http");
        assert_eq!(f(&r, "GET", "/x/y/z"), "none:Rest");
    }

    #[test]
    fn base_path_is_required_and_stripped() {
        let mut url = ApiConfig::new("Url", ApiKind::FunctionUrl);
        url.base_path = Some("/lambda-url/my-fn".into());
        let r = router(
            vec![url],
            vec![
                route("Url", "ANY", "/{proxy+}", "my-fn"),
                route("Url", "ANY", "/", "my-fn-root"),
            ],
        );
        let path = RequestPath::parse("/lambda-url/my-fn/a/b").unwrap();
        let m = r.find(Some(&Method::GET), &path).unwrap();
        assert_eq!(m.path_without_stage, "/a/b");
        assert_eq!(m.api.stage, "$default");
        assert_eq!(f(&r, "GET", "/lambda-url/my-fn"), "my-fn-root");
        // Without the prefix nothing matches.
        assert_eq!(f(&r, "GET", "/a/b"), "none:FunctionUrl");
        assert_eq!(f(&r, "GET", "/lambda-url/other/a"), "none:FunctionUrl");
    }

    #[test]
    fn base_path_replaces_rest_stage_mounts() {
        let mut rest = ApiConfig::new("R", ApiKind::Rest);
        rest.base_path = Some("/v1".into());
        let r = router(vec![rest], vec![route("R", "GET", "/pets", "pets")]);
        assert_eq!(f(&r, "GET", "/v1/pets"), "pets");
        assert_eq!(f(&r, "GET", "/pets"), "none:Rest");
        assert_eq!(f(&r, "GET", "/Prod/pets"), "none:Rest");
    }

    #[test]
    fn invalid_templates_are_config_errors() {
        for path in ["/a/{p+}/b", "/res{id}", "no-slash", "/{}"] {
            let err = Router::new(&GatewayConfig {
                apis: vec![ApiConfig::new("A", ApiKind::Rest)],
                routes: vec![route("A", "GET", path, "f")],
                settings: GatewaySettings::default(),
                ..Default::default()
            })
            .unwrap_err();
            assert!(
                matches!(err, RouterError::InvalidPath { .. }),
                "{path}: {err}"
            );
        }
        let err = Router::new(&GatewayConfig {
            apis: vec![],
            routes: vec![route("Missing", "GET", "/a", "f")],
            settings: GatewaySettings::default(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, RouterError::UnknownApi { .. }));
    }

    #[test]
    fn many_routes_match_without_scanning() {
        let routes: Vec<_> = (0..5000)
            .map(|i| route("A", "GET", &format!("/r{i}/{{id}}"), &format!("f{i}")))
            .collect();
        let r = router(vec![ApiConfig::new("A", ApiKind::Http)], routes);
        assert_eq!(
            hit(&r, "GET", "/r4999/7").unwrap(),
            (
                "f4999".to_string(),
                vec![("id".to_string(), "7".to_string())]
            )
        );
    }
}
