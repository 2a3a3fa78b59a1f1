//! From resolved resources to the typed [`AppModel`], with the checks that
//! decide whether the app can run (handlers, code, route paths, duplicates).

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

const EVENT_TYPES: &[&str] = &[
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

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "ANY",
];

/// A route before its API is known.
struct PendingRoute {
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
}

fn text(n: &Node, key: &str) -> Option<String> {
    n.get(key).and_then(Node::scalar_text)
}

fn list(n: Option<&Node>) -> Vec<String> {
    match n {
        Some(Node::List(items)) => items.iter().filter_map(Node::scalar_text).collect(),
        Some(Node::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn string_map(n: Option<&Node>) -> BTreeMap<String, String> {
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
fn unquote_list(s: &str) -> Vec<String> {
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

fn rest_cors(n: &Node) -> Option<Cors> {
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

fn http_cors(n: &Node) -> Option<Cors> {
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

    pub(crate) fn build(mut self, rt: ResolvedTemplate) -> AppModel {
        let mut model = AppModel {
            base_dir: self.base_dir.clone(),
            parameters: rt.parameters.iter().cloned().collect(),
            ..AppModel::default()
        };
        let layer_arns: HashMap<&str, &str> = rt
            .layer_ids
            .iter()
            .map(|(arn, id)| (id.as_str(), arn.as_str()))
            .collect();

        // Data resources and explicit APIs first: functions refer to them.
        for r in &rt.resources {
            match r.rtype.as_str() {
                "AWS::Serverless::Function" => {}
                "AWS::Serverless::Api" => {
                    let api = self.api(&r.id, ApiKind::Rest, &r.props, false, &rt.function_ids);
                    model.apis.push(api);
                }
                "AWS::Serverless::HttpApi" => {
                    let api = self.api(&r.id, ApiKind::Http, &r.props, false, &rt.function_ids);
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
                "AWS::Serverless::LayerVersion" => {
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

        let mut pending = Vec::new();
        for r in &rt.resources {
            if r.rtype == "AWS::Serverless::Function" {
                let f = self.function(r, &rt.layer_ids);
                self.events(&f, &mut pending, &mut model, &rt.function_ids);
                model.functions.push(f);
            }
        }

        for (implicit, kind, globals) in [
            ("ServerlessRestApi", ApiKind::Rest, &rt.global_api),
            ("ServerlessHttpApi", ApiKind::Http, &rt.global_http_api),
        ] {
            if pending.iter().any(|p| p.api == implicit) && model.api(implicit).is_none() {
                let api = self.api(implicit, kind, globals, true, &rt.function_ids);
                model.apis.push(api);
            }
        }

        self.routes(pending, &mut model);

        let mut seen: HashMap<String, String> = HashMap::new();
        for f in &model.functions {
            if let Some(first) = seen.get(&f.name) {
                self.ctx.warn(
                    K::DuplicateFunctionName,
                    &format!("Resources.{}.Properties.FunctionName", f.logical_id),
                    format!("function name {:?} is also used by {first}", f.name),
                );
            } else {
                seen.insert(f.name.clone(), f.logical_id.clone());
            }
        }
        model
    }

    fn function(&mut self, r: &Resolved, layer_ids: &HashMap<String, String>) -> Function {
        let p = &r.props;
        let at = format!("Resources.{}.Properties", r.id);
        let name = text(p, "FunctionName").unwrap_or_else(|| r.id.clone());
        let image = text(p, "PackageType").is_some_and(|t| t.eq_ignore_ascii_case("Image"));
        // An image brings its own runtime; its handler is ImageConfig.Command[0]
        // (as SAM CLI sets it), whatever Globals say.
        let (runtime, handler) = if image {
            let cmd = p
                .get("ImageConfig")
                .map(|c| list(c.get("Command")))
                .unwrap_or_default();
            (None, cmd.into_iter().next())
        } else {
            (text(p, "Runtime"), text(p, "Handler"))
        };
        let code = if image {
            let md = &r.metadata;
            let image_uri = text(p, "ImageUri");
            let dockerfile = text(md, "Dockerfile");
            if image_uri.is_none() && dockerfile.is_none() {
                self.ctx.error(
                    K::MissingCode,
                    &format!("{at}.ImageUri"),
                    "image function has no ImageUri and no Metadata.Dockerfile",
                );
            }
            let cfg = p.get("ImageConfig").cloned().unwrap_or(Node::Null);
            FunctionCode::Image {
                image_uri,
                dockerfile,
                docker_context: text(md, "DockerContext").map(|c| abs_path(&self.base_dir, &c)),
                docker_tag: text(md, "DockerTag"),
                entry_point: list(cfg.get("EntryPoint")),
                command: list(cfg.get("Command")),
                working_directory: text(&cfg, "WorkingDirectory"),
            }
        } else {
            if handler.is_none() {
                self.ctx.error(
                    K::MissingHandler,
                    &format!("{at}.Handler"),
                    "zip function has no Handler",
                );
            }
            if runtime.is_none() {
                self.ctx.error(
                    K::MissingRuntime,
                    &format!("{at}.Runtime"),
                    "zip function has no Runtime",
                );
            }
            match (p.get("CodeUri"), text(p, "InlineCode")) {
                (Some(Node::Map(_)), _) => {
                    let c = p.get("CodeUri").cloned().unwrap_or(Node::Null);
                    let uri = format!(
                        "s3://{}/{}",
                        text(&c, "Bucket").unwrap_or_default(),
                        text(&c, "Key").unwrap_or_default()
                    );
                    self.remote_code(&format!("{at}.CodeUri"), &uri)
                }
                (Some(c), _) => match c.scalar_text() {
                    Some(uri) if uri.starts_with("s3://") => {
                        self.remote_code(&format!("{at}.CodeUri"), &uri)
                    }
                    Some(dir) => FunctionCode::Zip {
                        code_uri: abs_path(&self.base_dir, &dir),
                    },
                    None => {
                        self.ctx.error(
                            K::MissingCode,
                            &format!("{at}.CodeUri"),
                            "CodeUri is not a path",
                        );
                        FunctionCode::Inline {
                            code: String::new(),
                        }
                    }
                },
                (None, Some(source)) => FunctionCode::Inline { code: source },
                (None, None) => {
                    self.ctx.error(
                        K::MissingCode,
                        &format!("{at}.CodeUri"),
                        "zip function has no CodeUri and no InlineCode",
                    );
                    FunctionCode::Inline {
                        code: String::new(),
                    }
                }
            }
        };

        let mut environment = BTreeMap::new();
        if let Some(Node::Map(vars)) = p.get("Environment").and_then(|e| e.get("Variables")) {
            for (k, v) in vars {
                let value = match v {
                    Node::String(_) | Node::Number(_) | Node::Bool(_) => {
                        v.scalar_text().unwrap_or_default()
                    }
                    _ => {
                        // SAM CLI passes an empty string for values it cannot
                        // turn into text.
                        self.ctx.warn(
                            K::InvalidValue,
                            &format!("{at}.Environment.Variables.{k}"),
                            format!("environment variable {k} is not a string; set to \"\""),
                        );
                        String::new()
                    }
                };
                environment.insert(k.clone(), value);
            }
        }

        let mut layers = Vec::new();
        for (i, arn) in list(p.get("Layers")).into_iter().enumerate() {
            let layer = layer_ids.get(&arn).cloned();
            if layer.is_none() && arn.starts_with("arn:") {
                self.ctx.warn(
                    K::RemoteLayer,
                    &format!("{at}.Layers.{i}"),
                    format!("layer {arn} is not defined in this template; ESB cannot download it"),
                );
            }
            layers.push(FunctionLayer { arn, layer });
        }

        let memory_size = self.u32_prop(p, "MemorySize", &at).unwrap_or(128);
        let timeout = self.u32_prop(p, "Timeout", &at).unwrap_or(3);
        let reserved = self.u32_prop(p, "ReservedConcurrentExecutions", &at);
        let provisioned = match p.get("ProvisionedConcurrencyConfig") {
            Some(c) => self.u32_prop(
                c,
                "ProvisionedConcurrentExecutions",
                &format!("{at}.ProvisionedConcurrencyConfig"),
            ),
            None => None,
        };
        let ephemeral = match p.get("EphemeralStorage") {
            Some(e) => self.u32_prop(e, "Size", &format!("{at}.EphemeralStorage")),
            None => None,
        };
        let function_url = p.get("FunctionUrlConfig").map(|u| FunctionUrl {
            auth_type: text(u, "AuthType").unwrap_or_else(|| "NONE".into()),
            invoke_mode: text(u, "InvokeMode").unwrap_or_else(|| "BUFFERED".into()),
            cors: u.get("Cors").and_then(http_cors),
        });
        let architectures = match list(p.get("Architectures")) {
            a if a.is_empty() => vec!["x86_64".to_string()],
            a => a,
        };

        let mut events = Vec::new();
        match p.get("Events") {
            Some(Node::Map(evs)) => {
                for (name, ev) in evs {
                    let kind = text(ev, "Type").unwrap_or_default();
                    events.push(Event {
                        name: name.clone(),
                        kind,
                        properties: ev
                            .get("Properties")
                            .map_or(serde_json::Value::Null, Node::to_json),
                    });
                }
            }
            Some(_) => self.ctx.warn(
                K::InvalidValue,
                &format!("{at}.Events"),
                "Events is not a mapping; ignored",
            ),
            None => {}
        }

        Function {
            logical_id: r.id.clone(),
            name,
            runtime,
            handler,
            code,
            memory_size,
            timeout,
            environment,
            layers,
            architectures,
            reserved_concurrent_executions: reserved,
            provisioned_concurrency: provisioned,
            auto_publish_alias: text(p, "AutoPublishAlias"),
            function_url,
            ephemeral_storage: ephemeral.unwrap_or(512),
            events,
        }
    }

    fn remote_code(&mut self, at: &str, uri: &str) -> FunctionCode {
        self.ctx.warn(
            K::RemoteCode,
            at,
            format!("code at {uri} is in S3; ESB cannot fetch it offline"),
        );
        FunctionCode::S3 {
            uri: uri.to_string(),
        }
    }

    fn events(
        &mut self,
        f: &Function,
        pending: &mut Vec<PendingRoute>,
        model: &mut AppModel,
        function_ids: &HashMap<String, String>,
    ) {
        for ev in &f.events {
            let at = format!("Resources.{}.Properties.Events.{}", f.logical_id, ev.name);
            let props = Node::from_json(ev.properties.clone());
            let pat = format!("{at}.Properties");
            match ev.kind.as_str() {
                "Api" | "HttpApi" => {
                    let rest = ev.kind == "Api";
                    let (api_key, implicit, kind) = if rest {
                        ("RestApiId", "ServerlessRestApi", ApiKind::Rest)
                    } else {
                        ("ApiId", "ServerlessHttpApi", ApiKind::Http)
                    };
                    let api = text(&props, api_key).unwrap_or_else(|| implicit.to_string());
                    let (path, method) = match (text(&props, "Path"), text(&props, "Method")) {
                        (Some(p), Some(m)) => (p, m.to_ascii_uppercase()),
                        (None, None) if !rest => ("$default".to_string(), "ANY".to_string()),
                        (p, _) => {
                            let missing = if p.is_none() { "Path" } else { "Method" };
                            self.ctx.error(
                                K::InvalidRoute,
                                &format!("{pat}.{missing}"),
                                format!("{} event has no {missing}", ev.kind),
                            );
                            continue;
                        }
                    };
                    let method = if method == "X-AMAZON-APIGATEWAY-ANY-METHOD" {
                        "ANY".to_string()
                    } else {
                        method
                    };
                    if path != "$default"
                        && let Some(problem) = path_problem(&path)
                    {
                        self.ctx
                            .error(K::InvalidRoute, &format!("{pat}.Path"), problem);
                        continue;
                    }
                    if !METHODS.contains(&method.as_str()) {
                        self.ctx.error(
                            K::InvalidRoute,
                            &format!("{pat}.Method"),
                            format!("unknown HTTP method {method}"),
                        );
                        continue;
                    }
                    let payload_format_version = if rest {
                        None
                    } else {
                        Some(match text(&props, "PayloadFormatVersion").as_deref() {
                            None | Some("2.0") | Some("2") => "2.0".to_string(),
                            Some("1.0") | Some("1") => "1.0".to_string(),
                            Some(other) => {
                                self.ctx.warn(
                                    K::DisallowedValue,
                                    &format!("{pat}.PayloadFormatVersion"),
                                    format!("PayloadFormatVersion {other:?} is not 1.0 or 2.0; using 2.0"),
                                );
                                "2.0".to_string()
                            }
                        })
                    };
                    pending.push(PendingRoute {
                        api,
                        kind,
                        method,
                        path,
                        auth: props.get("Auth").cloned().unwrap_or(Node::Null),
                        payload_format_version,
                        function: f.logical_id.clone(),
                        function_name: f.name.clone(),
                        event: ev.name.clone(),
                        at: at.clone(),
                    });
                }
                "Schedule" | "ScheduleV2" => {
                    let key = if ev.kind == "Schedule" {
                        "Schedule"
                    } else {
                        "ScheduleExpression"
                    };
                    let Some(expression) = text(&props, key) else {
                        self.ctx.warn(
                            K::InvalidValue,
                            &format!("{pat}.{key}"),
                            format!("{} event has no {key}; ignored", ev.kind),
                        );
                        continue;
                    };
                    let enabled = match (
                        props.get("Enabled").and_then(Node::as_bool),
                        text(&props, "State"),
                    ) {
                        (Some(b), _) => b,
                        (None, Some(s)) => !s.eq_ignore_ascii_case("DISABLED"),
                        (None, None) => true,
                    };
                    model.schedules.push(Schedule {
                        function: f.logical_id.clone(),
                        event: ev.name.clone(),
                        kind: ev.kind.clone(),
                        expression,
                        timezone: text(&props, "ScheduleExpressionTimezone"),
                        input: text(&props, "Input"),
                        enabled,
                    });
                }
                "S3" => {
                    let bucket = text(&props, "Bucket").unwrap_or_default();
                    let arn = self.function_arn(f, function_ids);
                    let (prefix, suffix) = key_filter(props.get("Filter"));
                    let note = BucketNotification {
                        events: list(props.get("Events")),
                        function: Some(f.logical_id.clone()),
                        function_arn: arn,
                        prefix,
                        suffix,
                    };
                    match model.buckets.iter_mut().find(|b| b.name == bucket || b.logical_id == bucket) {
                        Some(b) => b.notifications.push(note),
                        None => self.ctx.warn(
                            K::UnresolvedReference,
                            &format!("{pat}.Bucket"),
                            format!("S3 event bucket {bucket:?} is not an AWS::S3::Bucket in this template"),
                        ),
                    }
                }
                other if EVENT_TYPES.contains(&other) => {}
                other => self.ctx.warn(
                    K::UnknownEventType,
                    &format!("{at}.Type"),
                    format!("unknown event type {other:?}; kept as data"),
                ),
            }
        }
    }

    fn function_arn(&self, f: &Function, function_ids: &HashMap<String, String>) -> String {
        function_ids
            .iter()
            .find(|(k, v)| *v == &f.logical_id && k.starts_with("arn:"))
            .map(|(k, _)| k.clone())
            .unwrap_or_default()
    }

    fn routes(&mut self, pending: Vec<PendingRoute>, model: &mut AppModel) {
        let mut seen: HashMap<(String, String, String), String> = HashMap::new();
        for p in pending {
            let api = model.api(&p.api).cloned();
            match &api {
                None => self.ctx.warn(
                    K::UnresolvedReference,
                    &format!(
                        "{}.Properties.{}",
                        p.at,
                        if p.kind == ApiKind::Rest {
                            "RestApiId"
                        } else {
                            "ApiId"
                        }
                    ),
                    format!("API {} is not declared in this template", p.api),
                ),
                Some(a) if a.kind != p.kind => self.ctx.warn(
                    K::UnresolvedReference,
                    &format!("{}.Type", p.at),
                    format!(
                        "event of kind {:?} attached to {:?} API {}",
                        p.kind, a.kind, a.logical_id
                    ),
                ),
                _ => {}
            }
            let key = (p.api.clone(), p.method.clone(), p.path.clone());
            if let Some(first) = seen.get(&key) {
                self.ctx.error(
                    K::DuplicateRoute,
                    &format!("{}.Properties.Path", p.at),
                    format!(
                        "duplicate route {} {} on API {}: also defined by {first}",
                        p.method, p.path, p.api
                    ),
                );
                continue;
            }
            seen.insert(key, p.at.clone());

            let default_auth = api.as_ref().map(|a| a.auth.clone()).unwrap_or_default();
            let authorizer = text(&p.auth, "Authorizer")
                .or(default_auth.default_authorizer.clone())
                .unwrap_or_else(|| "NONE".to_string());
            if authorizer != "NONE"
                && authorizer != "AWS_IAM"
                && api.is_some()
                && !default_auth
                    .authorizers
                    .iter()
                    .any(|a| a.name == authorizer)
            {
                self.ctx.warn(
                    K::UnresolvedReference,
                    &format!("{}.Properties.Auth.Authorizer", p.at),
                    format!("authorizer {authorizer} is not defined on API {}", p.api),
                );
            }
            let api_key_required = p
                .auth
                .get("ApiKeyRequired")
                .and_then(Node::as_bool)
                .unwrap_or(default_auth.api_key_required);
            let stage = api.as_ref().map_or_else(
                || {
                    if p.kind == ApiKind::Rest {
                        "Prod".to_string()
                    } else {
                        "$default".to_string()
                    }
                },
                |a| a.stage_name.clone(),
            );
            model.routes.push(Route {
                method: p.method,
                path: p.path,
                api: p.api,
                api_kind: p.kind,
                stage,
                auth: RouteAuth {
                    authorizer,
                    api_key_required,
                    authorization_scopes: list(p.auth.get("AuthorizationScopes")),
                },
                payload_format_version: p.payload_format_version,
                function: p.function,
                function_name: p.function_name,
                event: p.event,
            });
        }
    }

    fn api(
        &mut self,
        id: &str,
        kind: ApiKind,
        p: &Node,
        implicit: bool,
        function_ids: &HashMap<String, String>,
    ) -> Api {
        let at = if implicit {
            format!(
                "Globals.{}",
                if kind == ApiKind::Rest {
                    "Api"
                } else {
                    "HttpApi"
                }
            )
        } else {
            format!("Resources.{id}.Properties")
        };
        let stage_name = match (text(p, "StageName"), kind) {
            (Some(s), _) if !implicit => s,
            (_, ApiKind::Http) => "$default".to_string(),
            (_, ApiKind::Rest) => {
                if !implicit {
                    self.ctx.warn(
                        K::InvalidValue,
                        &format!("{at}.StageName"),
                        "AWS::Serverless::Api requires StageName; using Prod",
                    );
                }
                "Prod".to_string()
            }
        };
        let auth_node = p.get("Auth").cloned().unwrap_or(Node::Null);
        let mut authorizers = Vec::new();
        if let Some(Node::Map(entries)) = auth_node.get("Authorizers") {
            for (name, a) in entries {
                let apath = format!("{at}.Auth.Authorizers.{name}");
                match self.authorizer(name, a, kind, function_ids) {
                    Some(x) => authorizers.push(x),
                    None => self.ctx.warn(
                        K::InvalidValue,
                        &apath,
                        format!("authorizer {name} has no FunctionArn, UserPoolArn or JwtConfiguration; ignored"),
                    ),
                }
            }
        }
        let auth = ApiAuth {
            default_authorizer: text(&auth_node, "DefaultAuthorizer"),
            api_key_required: auth_node
                .get("ApiKeyRequired")
                .and_then(Node::as_bool)
                .unwrap_or(false),
            authorizers,
        };
        if let Some(d) = &auth.default_authorizer
            && d != "AWS_IAM"
            && d != "NONE"
            && !auth.authorizers.iter().any(|a| &a.name == d)
        {
            self.ctx.warn(
                K::UnresolvedReference,
                &format!("{at}.Auth.DefaultAuthorizer"),
                format!("DefaultAuthorizer {d} is not one of the API's Authorizers"),
            );
        }
        let (cors, binary, vars) = match kind {
            ApiKind::Rest => (
                p.get("Cors").and_then(rest_cors),
                list(p.get("BinaryMediaTypes"))
                    .iter()
                    .map(|t| t.replace("~1", "/"))
                    .collect(),
                string_map(p.get("Variables")),
            ),
            ApiKind::Http => (
                p.get("CorsConfiguration").and_then(http_cors),
                Vec::new(),
                string_map(p.get("StageVariables")),
            ),
        };
        Api {
            logical_id: id.to_string(),
            kind,
            implicit,
            stage_name,
            auth,
            cors,
            binary_media_types: binary,
            stage_variables: vars,
        }
    }

    fn authorizer(
        &mut self,
        name: &str,
        a: &Node,
        kind: ApiKind,
        function_ids: &HashMap<String, String>,
    ) -> Option<Authorizer> {
        let identity = a.get("Identity").cloned().unwrap_or(Node::Null);
        let function_arn = text(a, "FunctionArn");
        let function = function_arn
            .as_ref()
            .and_then(|arn| function_ids.get(arn).cloned());
        let mut out = Authorizer {
            name: name.to_string(),
            kind: AuthorizerKind::LambdaToken,
            function,
            function_arn: function_arn.clone(),
            identity_sources: Vec::new(),
            validation_expression: text(&identity, "ValidationExpression"),
            ttl_seconds: identity
                .get("ReauthorizeEvery")
                .and_then(Node::as_u64)
                .map(|t| t.min(3600) as u32)
                .unwrap_or(if kind == ApiKind::Rest { 300 } else { 0 }),
            user_pool_arns: Vec::new(),
            jwt_issuer: None,
            jwt_audience: Vec::new(),
            authorization_scopes: list(a.get("AuthorizationScopes")),
            payload_format_version: None,
            enable_simple_responses: false,
        };
        let sources = |prefix: [&str; 4]| -> Vec<String> {
            let mut v = Vec::new();
            for (key, pre) in ["Headers", "QueryStrings", "StageVariables", "Context"]
                .iter()
                .zip(prefix)
            {
                for x in list(identity.get(key)) {
                    v.push(format!("{pre}{x}"));
                }
            }
            v
        };
        match kind {
            ApiKind::Rest => {
                if a.get("UserPoolArn").is_some() {
                    out.kind = AuthorizerKind::CognitoUserPool;
                    out.user_pool_arns = list(a.get("UserPoolArn"));
                    let header =
                        text(&identity, "Header").unwrap_or_else(|| "Authorization".into());
                    out.identity_sources = vec![format!("method.request.header.{header}")];
                } else if function_arn.is_some() {
                    let request = text(a, "FunctionPayloadType")
                        .is_some_and(|t| t.eq_ignore_ascii_case("REQUEST"));
                    if request {
                        out.kind = AuthorizerKind::LambdaRequest;
                        out.identity_sources = sources([
                            "method.request.header.",
                            "method.request.querystring.",
                            "stageVariables.",
                            "context.",
                        ]);
                    } else {
                        let header =
                            text(&identity, "Header").unwrap_or_else(|| "Authorization".into());
                        out.identity_sources = vec![format!("method.request.header.{header}")];
                    }
                } else {
                    return None;
                }
            }
            ApiKind::Http => {
                if let Some(jwt) = a.get("JwtConfiguration") {
                    out.kind = AuthorizerKind::Jwt;
                    out.jwt_issuer = text(jwt, "issuer").or_else(|| text(jwt, "Issuer"));
                    out.jwt_audience = list(jwt.get("audience").or_else(|| jwt.get("Audience")));
                    out.identity_sources = vec![
                        text(a, "IdentitySource")
                            .unwrap_or_else(|| "$request.header.Authorization".into()),
                    ];
                } else if function_arn.is_some() {
                    out.kind = AuthorizerKind::LambdaRequest;
                    out.identity_sources = sources([
                        "$request.header.",
                        "$request.querystring.",
                        "$stageVariables.",
                        "$context.",
                    ]);
                    out.payload_format_version = text(a, "AuthorizerPayloadFormatVersion");
                    out.enable_simple_responses = a
                        .get("EnableSimpleResponses")
                        .and_then(Node::as_bool)
                        .unwrap_or(false);
                } else {
                    return None;
                }
            }
        }
        Some(out)
    }

    fn table(&mut self, r: &Resolved) -> Table {
        let p = &r.props;
        let at = format!("Resources.{}.Properties", r.id);
        let name = text(p, "TableName").unwrap_or_else(|| r.id.clone());
        let keys = |n: Option<&Node>| -> Vec<KeyElement> {
            match n {
                Some(Node::List(items)) => items
                    .iter()
                    .map(|k| KeyElement {
                        attribute_name: text(k, "AttributeName").unwrap_or_default(),
                        key_type: text(k, "KeyType").unwrap_or_else(|| "HASH".into()),
                    })
                    .collect(),
                _ => Vec::new(),
            }
        };
        let indexes = |n: Option<&Node>| -> Vec<SecondaryIndex> {
            match n {
                Some(Node::List(items)) => items
                    .iter()
                    .map(|i| {
                        let proj = i.get("Projection").cloned().unwrap_or(Node::Null);
                        SecondaryIndex {
                            index_name: text(i, "IndexName").unwrap_or_default(),
                            key_schema: keys(i.get("KeySchema")),
                            projection_type: text(&proj, "ProjectionType")
                                .unwrap_or_else(|| "ALL".into()),
                            non_key_attributes: list(proj.get("NonKeyAttributes")),
                        }
                    })
                    .collect(),
                _ => Vec::new(),
            }
        };
        if r.rtype == "AWS::Serverless::SimpleTable" {
            let pk = p.get("PrimaryKey").cloned().unwrap_or(Node::Null);
            let key = text(&pk, "Name").unwrap_or_else(|| "id".into());
            let ty = match text(&pk, "Type").as_deref() {
                Some("Number") => "N",
                Some("Binary") => "B",
                _ => "S",
            };
            return Table {
                logical_id: r.id.clone(),
                name,
                resource_type: r.rtype.clone(),
                key_schema: vec![KeyElement {
                    attribute_name: key.clone(),
                    key_type: "HASH".into(),
                }],
                attribute_definitions: vec![AttributeDefinition {
                    attribute_name: key,
                    attribute_type: ty.into(),
                }],
                global_secondary_indexes: Vec::new(),
                local_secondary_indexes: Vec::new(),
                billing_mode: if p.get("ProvisionedThroughput").is_some() {
                    "PROVISIONED".into()
                } else {
                    "PAY_PER_REQUEST".into()
                },
                stream_view_type: None,
                ttl_attribute: None,
            };
        }
        let key_schema = keys(p.get("KeySchema"));
        if key_schema.is_empty() {
            self.ctx.warn(
                K::InvalidValue,
                &format!("{at}.KeySchema"),
                "table has no KeySchema",
            );
        }
        let attribute_definitions = match p.get("AttributeDefinitions") {
            Some(Node::List(items)) => items
                .iter()
                .map(|a| AttributeDefinition {
                    attribute_name: text(a, "AttributeName").unwrap_or_default(),
                    attribute_type: text(a, "AttributeType").unwrap_or_else(|| "S".into()),
                })
                .collect(),
            _ => Vec::new(),
        };
        let ttl = p
            .get("TimeToLiveSpecification")
            .cloned()
            .unwrap_or(Node::Null);
        Table {
            logical_id: r.id.clone(),
            name,
            resource_type: r.rtype.clone(),
            key_schema,
            attribute_definitions,
            global_secondary_indexes: indexes(p.get("GlobalSecondaryIndexes")),
            local_secondary_indexes: indexes(p.get("LocalSecondaryIndexes")),
            billing_mode: text(p, "BillingMode").unwrap_or_else(|| "PROVISIONED".into()),
            stream_view_type: p
                .get("StreamSpecification")
                .and_then(|s| text(s, "StreamViewType")),
            ttl_attribute: ttl
                .get("Enabled")
                .and_then(Node::as_bool)
                .unwrap_or(false)
                .then(|| text(&ttl, "AttributeName"))
                .flatten(),
        }
    }

    fn bucket(&mut self, r: &Resolved, function_ids: &HashMap<String, String>) -> Bucket {
        let p = &r.props;
        let name = text(p, "BucketName").unwrap_or_else(|| {
            format!("{}-{}", self.stack_name, r.id)
                .to_lowercase()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect()
        });
        let mut notifications = Vec::new();
        if let Some(Node::List(items)) = p
            .get("NotificationConfiguration")
            .and_then(|n| n.get("LambdaConfigurations"))
        {
            for c in items {
                let arn = text(c, "Function").unwrap_or_default();
                let (prefix, suffix) = key_filter(c.get("Filter"));
                notifications.push(BucketNotification {
                    events: list(c.get("Event")),
                    function: function_ids.get(&arn).cloned(),
                    function_arn: arn,
                    prefix,
                    suffix,
                });
            }
        }
        Bucket {
            logical_id: r.id.clone(),
            name,
            notifications,
        }
    }

    fn layer(&mut self, r: &Resolved, arn: String) -> Layer {
        let p = &r.props;
        let at = format!("Resources.{}.Properties.ContentUri", r.id);
        let content = match p.get("ContentUri") {
            Some(c @ Node::Map(_)) => {
                let uri = format!(
                    "s3://{}/{}",
                    text(c, "Bucket").unwrap_or_default(),
                    text(c, "Key").unwrap_or_default()
                );
                Some(self.remote_code(&at, &uri))
            }
            Some(c) => c.scalar_text().map(|s| {
                if s.starts_with("s3://") {
                    self.remote_code(&at, &s)
                } else {
                    FunctionCode::Zip {
                        code_uri: abs_path(&self.base_dir, &s),
                    }
                }
            }),
            None => None,
        };
        Layer {
            logical_id: r.id.clone(),
            name: text(p, "LayerName").unwrap_or_else(|| r.id.clone()),
            arn,
            content,
            compatible_runtimes: list(p.get("CompatibleRuntimes")),
        }
    }
}

/// `Filter.S3Key.Rules` → (prefix, suffix).
fn key_filter(filter: Option<&Node>) -> (Option<String>, Option<String>) {
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
