//! From resolved resources to the typed [`AppModel`], with the checks that
//! decide whether the app can run (handlers, code, route paths, duplicates).

mod apis;
mod cfn_apigw;
mod data;
mod eventbridge;
mod functions;
mod nested;
mod openapi;
mod policies;
mod urls;

use cfn_apigw::target_name;
use openapi::{payload_version, unavailable};

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use crate::diag::DiagnosticKind as K;
use crate::model::*;
use crate::node::Node;
use crate::resolve::{Ctx, Resolved, ResolvedTemplate};

const SAM_TYPES: &[&str] = &[
    "AWS::Serverless::Function",
    "AWS::Serverless::Api",
    "AWS::Serverless::HttpApi",
    "AWS::Serverless::SimpleTable",
    "AWS::Serverless::LayerVersion",
    "AWS::Serverless::StateMachine",
    "AWS::Serverless::Application",
    "AWS::Serverless::Connector",
    "AWS::Serverless::GraphQLApi",
    "AWS::Serverless::CapacityProvider",
];

pub(super) const EVENT_TYPES: &[&str] = &[
    "Api",
    "HttpApi",
    "S3",
    "SNS",
    "SQS",
    "Kinesis",
    "DynamoDB",
    "Schedule",
    "ScheduleV2",
    "CloudWatchEvent",
    "EventBridgeRule",
    "CloudWatchLogs",
    "IoTRule",
    "AlexaSkill",
    "Cognito",
    "MSK",
    "MQ",
    "SelfManagedKafka",
    "DocumentDB",
];

pub(super) const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "ANY",
];

/// A route before its API is known.
pub(super) struct PendingRoute {
    api: String,
    kind: ApiKind,
    method: String,
    path: String,
    auth: Node,
    payload_format_version: Option<String>,
    function: String,
    function_name: String,
    event: String,
    /// Dotted path of the event, for diagnostics.
    at: String,
}

pub(crate) struct Builder<'x, 'a> {
    pub ctx: &'x mut Ctx<'a>,
    pub base_dir: PathBuf,
    pub stack_name: String,
    /// APIs defined by a document: (has `MergeDefinitions`, method+path
    /// pairs the document defines), for SAM events pointing at them.
    pub bodies: HashMap<String, (bool, std::collections::HashSet<(String, String)>)>,
}

/// Template functions by every name an integration may use for them.
pub(super) struct FunctionIndex {
    /// `FunctionName`, canonical name, alias → (canonical name, logical id).
    by_name: HashMap<String, (String, String)>,
    /// Logical id → (canonical name, logical id).
    by_logical: HashMap<String, (String, String)>,
}

impl FunctionIndex {
    pub(super) fn new(functions: &[Function]) -> Self {
        let mut by_name = HashMap::new();
        let mut by_logical = HashMap::new();
        for f in functions {
            let v = (f.name.clone(), f.logical_id.clone());
            by_logical.entry(f.logical_id.clone()).or_insert(v.clone());
            by_name.entry(f.name.clone()).or_insert(v.clone());
            for a in &f.aliases {
                by_name.entry(a.clone()).or_insert(v.clone());
            }
        }
        FunctionIndex {
            by_name,
            by_logical,
        }
    }

    /// The function an integration URI, ARN or name means:
    /// (canonical name, logical id).
    pub(super) fn lookup(&self, uri: &str) -> Option<(&str, &str)> {
        let name = function_name_in(uri)?;
        self.by_name
            .get(name)
            .or_else(|| self.by_logical.get(name))
            .map(|(c, l)| (c.as_str(), l.as_str()))
    }
}

/// The function name inside an invocation URI
/// (`…/functions/<arn>/invocations`), a function ARN (qualifier dropped),
/// a partial ARN, or a plain name.
pub(super) fn function_name_in(uri: &str) -> Option<&str> {
    let mut s = uri.trim();
    if let Some(i) = s.find("/functions/") {
        s = &s[i + "/functions/".len()..];
        for end in ["/response-streaming-invocations", "/invocations"] {
            if let Some(j) = s.find(end) {
                s = &s[..j];
                break;
            }
        }
    }
    // `${Fn.Arn}` / `${Fn.Alias}` left in a file intrinsics are not
    // evaluated in (SAM CLI accepts them in DefinitionUri documents).
    if let Some(inner) = s.strip_prefix("${").and_then(|x| x.strip_suffix('}')) {
        let id = inner
            .strip_suffix(".Arn")
            .or_else(|| inner.strip_suffix(".Alias"))
            .unwrap_or(inner);
        return (!id.is_empty() && !id.contains(['/', ':', '.'])).then_some(id);
    }
    if let Some(i) = s.find(":function:") {
        s = &s[i + ":function:".len()..];
    } else if s.starts_with("arn:") || s.contains("://") {
        return None;
    }
    let s = s.split(':').next().unwrap_or(s);
    (!s.is_empty() && !s.contains('/')).then_some(s)
}

pub(super) fn text(n: &Node, key: &str) -> Option<String> {
    n.get(key).and_then(Node::scalar_text)
}

pub(super) fn list(n: Option<&Node>) -> Vec<String> {
    match n {
        Some(Node::List(items)) => items.iter().filter_map(Node::scalar_text).collect(),
        Some(Node::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

pub(super) fn string_map(n: Option<&Node>) -> BTreeMap<String, String> {
    match n {
        Some(Node::Map(e)) => e
            .iter()
            .map(|(k, v)| (k.clone(), v.scalar_text().unwrap_or_default()))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// Joins `rel` to `base` and removes `.` and `..` without touching the disk.
pub(crate) fn abs_path(base: &Path, rel: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in base.join(rel).components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// REST CORS values are quoted header values: `"'GET,POST'"`.
pub(super) fn unquote_list(s: &str) -> Vec<String> {
    let s = s.trim();
    let s = s
        .strip_prefix('\'')
        .and_then(|x| x.strip_suffix('\''))
        .unwrap_or(s);
    s.split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

pub(super) fn rest_cors(n: &Node) -> Option<Cors> {
    match n {
        Node::String(s) => Some(Cors {
            allow_origins: unquote_list(s),
            ..Cors::default()
        }),
        Node::Map(_) => Some(Cors {
            allow_origins: text(n, "AllowOrigin")
                .map(|s| unquote_list(&s))
                .unwrap_or_default(),
            allow_methods: text(n, "AllowMethods")
                .map(|s| unquote_list(&s))
                .unwrap_or_default(),
            allow_headers: text(n, "AllowHeaders")
                .map(|s| unquote_list(&s))
                .unwrap_or_default(),
            expose_headers: Vec::new(),
            allow_credentials: n
                .get("AllowCredentials")
                .and_then(Node::as_bool)
                .unwrap_or(false),
            max_age: text(n, "MaxAge").and_then(|s| unquote_list(&s).first()?.parse().ok()),
        }),
        _ => None,
    }
}

pub(super) fn http_cors(n: &Node) -> Option<Cors> {
    match n {
        Node::Bool(true) => Some(Cors {
            allow_origins: vec!["*".into()],
            allow_methods: vec!["*".into()],
            allow_headers: vec!["*".into()],
            ..Cors::default()
        }),
        Node::Map(_) => Some(Cors {
            allow_origins: list(n.get("AllowOrigins")),
            allow_methods: list(n.get("AllowMethods")),
            allow_headers: list(n.get("AllowHeaders")),
            expose_headers: list(n.get("ExposeHeaders")),
            allow_credentials: n
                .get("AllowCredentials")
                .and_then(Node::as_bool)
                .unwrap_or(false),
            max_age: n.get("MaxAge").and_then(Node::as_u64),
        }),
        _ => None,
    }
}

/// Checks an API Gateway path template; returns the problem, if any.
pub(crate) fn path_problem(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return Some(format!("route path {path:?} must start with '/'"));
    }
    if path == "/" {
        return None;
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        if seg.is_empty() {
            return Some(format!("route path {path:?} has an empty segment"));
        }
        if !seg.contains('{') && !seg.contains('}') {
            continue;
        }
        let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
            return Some(format!(
                "route path {path:?}: segment {seg:?} must be a whole {{param}} with balanced braces"
            ));
        };
        if inner.contains('{') || inner.contains('}') {
            return Some(format!("route path {path:?}: unbalanced braces in {seg:?}"));
        }
        let name = inner.strip_suffix('+').unwrap_or(inner);
        if name.is_empty() {
            return Some(format!("route path {path:?} has an empty parameter name"));
        }
        if inner.ends_with('+') && i + 1 != segments.len() {
            return Some(format!(
                "route path {path:?}: greedy {seg} is only allowed as the last segment"
            ));
        }
    }
    None
}

impl Builder<'_, '_> {
    fn u32_prop(&mut self, n: &Node, key: &str, at: &str) -> Option<u32> {
        let v = n.get(key)?;
        match v.as_u64().and_then(|x| u32::try_from(x).ok()) {
            Some(x) => Some(x),
            None => {
                self.ctx.warn(
                    K::InvalidValue,
                    &format!("{at}.{key}"),
                    format!("{key} must be a whole number; using the default"),
                );
                None
            }
        }
    }

    pub(crate) fn build(mut self, mut rt: ResolvedTemplate) -> AppModel {
        let mut model = AppModel {
            base_dir: self.base_dir.clone(),
            parameters: rt.parameters.iter().cloned().collect(),
            outputs: rt.outputs.iter().cloned().collect(),
            ..AppModel::default()
        };
        let layer_arns: HashMap<&str, &str> = rt
            .layer_ids
            .iter()
            .map(|(arn, id)| (id.as_str(), arn.as_str()))
            .collect();

        // Functions first: everything else points at them.
        for r in &rt.resources {
            if matches!(
                r.rtype.as_str(),
                "AWS::Serverless::Function" | "AWS::Lambda::Function"
            ) {
                let f = self.function(r, &rt.layer_ids);
                model.functions.push(f);
            }
        }
        self.name_functions(&mut model.functions);
        self.permissions(&rt, &mut model.functions);
        let index = FunctionIndex::new(&model.functions);

        let mut body_routes = Vec::new();
        for r in &rt.resources {
            match r.rtype.as_str() {
                "AWS::Serverless::Function" | "AWS::Lambda::Function" => {}
                "AWS::Lambda::EventInvokeConfig" => {
                    // FunctionName: a name, a logical id's Ref, or an ARN.
                    let target = text(&r.props, "FunctionName").unwrap_or_default();
                    let short = target.rsplit(":function:").next().unwrap_or(&target);
                    let short = short.split(':').next().unwrap_or(short).to_string();
                    match model
                        .functions
                        .iter_mut()
                        .find(|f| f.name == short || f.logical_id == short)
                    {
                        Some(f) => f.event_invoke_config = Some(r.props.to_json()),
                        None => self.ctx.warn(
                            K::InvalidValue,
                            &format!("Resources.{}.Properties.FunctionName", r.id),
                            format!("EventInvokeConfig for unknown function {target:?}; ignored"),
                        ),
                    }
                }
                "AWS::Serverless::Api" | "AWS::Serverless::HttpApi" => {
                    let kind = if r.rtype == "AWS::Serverless::Api" {
                        ApiKind::Rest
                    } else {
                        ApiKind::Http
                    };
                    let mut api = self.api(&r.id, kind, &r.props, false, &rt.function_ids);
                    let routes = self.sam_body(&mut api, r, &index);
                    body_routes.extend(routes);
                    model.apis.push(api);
                }
                "AWS::Serverless::SimpleTable" | "AWS::DynamoDB::Table" => {
                    let t = self.table(r);
                    model.tables.push(t);
                }
                "AWS::S3::Bucket" => {
                    let b = self.bucket(r, &rt.function_ids);
                    model.buckets.push(b);
                }
                "AWS::Serverless::LayerVersion" | "AWS::Lambda::LayerVersion" => {
                    let arn = layer_arns
                        .get(r.id.as_str())
                        .map(|s| s.to_string())
                        .unwrap_or_default();
                    let l = self.layer(r, arn);
                    model.layers.push(l);
                }
                other => {
                    let known_sam = SAM_TYPES.contains(&other);
                    let parts: Vec<&str> = other.split("::").collect();
                    let well_formed = (parts.len() == 3
                        && parts.iter().all(|p| !p.is_empty())
                        && (parts[0] == "AWS" || parts[0] == "Alexa"))
                        || (parts.len() == 2 && parts[0] == "Custom" && !parts[1].is_empty());
                    if (other.starts_with("AWS::Serverless::") && !known_sam) || !well_formed {
                        self.ctx.warn(
                            K::UnknownResourceType,
                            &format!("Resources.{}.Type", r.id),
                            format!("unknown resource type {other}; ignored"),
                        );
                    }
                    model.other_resources.push(OtherResource {
                        logical_id: r.id.clone(),
                        resource_type: other.to_string(),
                    });
                }
            }
        }

        // Schedule rules and Scheduler schedules that target functions.
        self.eventbridge(&rt, &index, &mut model);

        // Raw CloudFormation APIs (RestApi + Resource/Method, ApiGatewayV2).
        let cfn_routes = self.cfn_apis(&rt, &index, &mut model);
        body_routes.extend(cfn_routes);

        let mut pending = Vec::new();
        let functions = std::mem::take(&mut model.functions);
        for f in &functions {
            self.events(f, &mut pending, &mut model, &rt.function_ids);
        }
        model.functions = functions;

        for (implicit, kind, globals) in [
            ("ServerlessRestApi", ApiKind::Rest, &rt.global_api),
            ("ServerlessHttpApi", ApiKind::Http, &rt.global_http_api),
        ] {
            if pending.iter().any(|p| p.api == implicit) && model.api(implicit).is_none() {
                let api = self.api(implicit, kind, globals, true, &rt.function_ids);
                model.apis.push(api);
            }
        }

        model.routes = body_routes;
        self.routes(pending, &mut model);
        self.function_urls(&rt, &mut model);
        let children = std::mem::take(&mut rt.children);
        for (id, child) in children {
            self.merge_child(&id, child, &mut model);
        }
        for api in &mut model.apis {
            for a in &mut api.auth.authorizers {
                if a.function_name.is_none()
                    && let Some(l) = &a.function
                {
                    a.function_name = index.by_logical.get(l).map(|(c, _)| c.clone());
                }
            }
        }
        model
    }

    /// Gives every function a unique canonical name: its `FunctionName`
    /// when set and not taken, else its logical id (then the name is only
    /// a warning: each function keeps its own routes).
    pub(super) fn name_functions(&mut self, functions: &mut [Function]) {
        let mut taken: HashMap<String, String> = HashMap::new();
        for f in functions.iter_mut() {
            if f.name != f.logical_id {
                f.aliases.insert(0, f.logical_id.clone());
            }
            match taken.get(&f.name) {
                Some(first) => {
                    self.ctx.warn(
                        K::DuplicateFunctionName,
                        &format!("Resources.{}.Properties.FunctionName", f.logical_id),
                        format!(
                            "function name {:?} is also used by {first}; this one is called {} locally",
                            f.name, f.logical_id
                        ),
                    );
                    f.aliases.clear();
                    f.name = f.logical_id.clone();
                }
                None => {
                    taken.insert(f.name.clone(), f.logical_id.clone());
                }
            }
        }
        // An alias never names another function.
        let names: std::collections::HashSet<String> =
            functions.iter().map(|f| f.name.clone()).collect();
        let mut seen_alias = std::collections::HashSet::new();
        for f in functions.iter_mut() {
            let own = f.name.clone();
            f.aliases
                .retain(|a| a != &own && !names.contains(a) && seen_alias.insert(a.clone()));
        }
    }
}

/// `Filter.S3Key.Rules` → (prefix, suffix).
pub(super) fn key_filter(filter: Option<&Node>) -> (Option<String>, Option<String>) {
    let mut prefix = None;
    let mut suffix = None;
    if let Some(Node::List(rules)) = filter
        .and_then(|f| f.get("S3Key"))
        .and_then(|k| k.get("Rules"))
    {
        for r in rules {
            let name = text(r, "Name").unwrap_or_default().to_ascii_lowercase();
            match name.as_str() {
                "prefix" => prefix = text(r, "Value"),
                "suffix" => suffix = text(r, "Value"),
                _ => {}
            }
        }
    }
    (prefix, suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_paths_pass() {
        for p in [
            "/",
            "/hello",
            "/items/{id}",
            "/items/{id}/parts/{part}",
            "/{proxy+}",
            "/a/{rest+}",
        ] {
            assert_eq!(path_problem(p), None, "{p}");
        }
    }

    #[test]
    fn bad_paths_are_explained() {
        assert!(
            path_problem("hello")
                .unwrap()
                .contains("must start with '/'")
        );
        assert!(path_problem("/a/{id").unwrap().contains("balanced braces"));
        assert!(
            path_problem("/a/{}")
                .unwrap()
                .contains("empty parameter name")
        );
        assert!(
            path_problem("/{proxy+}/x")
                .unwrap()
                .contains("last segment")
        );
        assert!(path_problem("/a//b").unwrap().contains("empty segment"));
    }

    #[test]
    fn function_names_are_found_in_every_uri_form() {
        for (uri, name) in [
            (
                "arn:aws:apigateway:us-east-1:lambda:path/2015-03-31/functions/arn:aws:lambda:us-east-1:123456789012:function:orders/invocations",
                Some("orders"),
            ),
            (
                "arn:aws:apigateway:us-east-1:lambda:path/2015-03-31/functions/arn:aws:lambda:us-east-1:123456789012:function:orders:live/invocations",
                Some("orders"),
            ),
            (
                "arn:aws:apigateway:us-east-1:lambda:path/2021-11-15/functions/arn:aws:lambda:us-east-1:1:function:s/response-streaming-invocations",
                Some("s"),
            ),
            (
                "arn:aws:lambda:us-east-1:123456789012:function:orders",
                Some("orders"),
            ),
            ("123456789012:function:orders", Some("orders")),
            ("orders", Some("orders")),
            ("orders:prod", Some("orders")),
            (
                "arn:${AWS::Partition}:apigateway:${AWS::Region}:lambda:path/2015-03-31/functions/${GetOrder.Arn}/invocations",
                Some("GetOrder"),
            ),
            ("arn:aws:sqs:us-east-1:1:queue", None),
            ("https://example.com/x", None),
            ("", None),
        ] {
            assert_eq!(function_name_in(uri), name, "{uri}");
        }
    }

    #[test]
    fn abs_path_is_lexical() {
        assert_eq!(
            abs_path(Path::new("/t/app"), "./src/../lib/"),
            PathBuf::from("/t/app/lib")
        );
    }

    #[test]
    fn rest_cors_values_lose_their_quotes() {
        let n = Node::Map(vec![
            ("AllowOrigin".into(), Node::String("'*'".into())),
            ("AllowMethods".into(), Node::String("'GET, POST'".into())),
            ("MaxAge".into(), Node::String("'600'".into())),
        ]);
        let c = rest_cors(&n).unwrap();
        assert_eq!(c.allow_origins, vec!["*"]);
        assert_eq!(c.allow_methods, vec!["GET", "POST"]);
        assert_eq!(c.max_age, Some(600));
    }
}
