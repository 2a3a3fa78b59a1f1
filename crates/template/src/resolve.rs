//! Local resolution: parameters, conditions, `Globals`, and every intrinsic
//! function, producing resources whose properties hold plain values only.

use std::collections::{HashMap, HashSet};

use crate::diag::{Diagnostic, DiagnosticKind, Locator, Severity};
use crate::node::Node;
use crate::options::ResolveOptions;

/// Collects diagnostics and locates them in the source.
pub(crate) struct Ctx<'a> {
    pub file: String,
    pub locator: Locator<'a>,
    pub diags: Vec<Diagnostic>,
}

impl Ctx<'_> {
    pub(crate) fn report(
        &mut self,
        severity: Severity,
        kind: DiagnosticKind,
        path: &str,
        message: impl Into<String>,
    ) {
        let (line, column) = match self.locator.locate(path) {
            Some((l, c)) => (Some(l), Some(c)),
            None => (None, None),
        };
        let d = Diagnostic {
            severity,
            kind,
            file: self.file.clone(),
            line,
            column,
            path: path.to_string(),
            message: message.into(),
        };
        // The same property can be resolved twice (a name, then the whole
        // resource): report it once.
        if !self.diags.contains(&d) {
            self.diags.push(d);
        }
    }

    pub(crate) fn error(&mut self, kind: DiagnosticKind, path: &str, message: impl Into<String>) {
        self.report(Severity::Error, kind, path, message);
    }

    pub(crate) fn warn(&mut self, kind: DiagnosticKind, path: &str, message: impl Into<String>) {
        self.report(Severity::Warning, kind, path, message);
    }
}

/// One resource as declared (after `Globals` were merged in).
pub(crate) struct Resource {
    pub id: String,
    pub rtype: String,
    pub props: Node,
    pub metadata: Node,
    pub condition: Option<String>,
}

/// The sections of a template, unresolved.
pub(crate) struct Sections {
    pub parameters: Vec<(String, Node)>,
    pub mappings: Node,
    pub conditions: Vec<(String, Node)>,
    pub resources: Vec<Resource>,
    pub globals: Node,
    pub outputs: Vec<(String, Node)>,
}

/// A resource whose properties were resolved.
pub(crate) struct Resolved {
    pub id: String,
    pub rtype: String,
    pub props: Node,
    pub metadata: Node,
}

/// Everything resolution produced for the model builder.
pub(crate) struct ResolvedTemplate {
    /// `Outputs` values, resolved.
    pub outputs: Vec<(String, String)>,
    /// Nested stacks that loaded: (logical id, model).
    pub children: Vec<(String, crate::model::AppModel)>,
    pub parameters: Vec<(String, Option<String>)>,
    pub resources: Vec<Resolved>,
    /// Resolved `Globals.Api` / `Globals.HttpApi`, for the implicit APIs.
    pub global_api: Node,
    pub global_http_api: Node,
    /// Function ARN and name → logical id, to recognise template functions
    /// in authorizers and notifications.
    pub function_ids: HashMap<String, String>,
    /// Layer ARN → logical id.
    pub layer_ids: HashMap<String, String>,
}

enum Miss {
    NotFound,
    Dropped,
    UnknownAttribute,
}

pub(crate) struct Resolver<'a, 'c> {
    opts: &'a ResolveOptions,
    t: &'a Sections,
    pub ctx: &'c mut Ctx<'a>,
    params: HashMap<String, Option<Node>>,
    cond_cache: HashMap<String, bool>,
    cond_stack: Vec<String>,
    active: HashMap<String, usize>,
    dropped: HashSet<String>,
    names: HashMap<String, String>,
    name_stack: Vec<String>,
    /// Directory of the template, for `AWS::Include` locations.
    pub base_dir: std::path::PathBuf,
    includes: usize,
    /// Templates from the root down to this one (cycle guard).
    pub chain: Vec<std::path::PathBuf>,
    /// Nested stacks by logical id; `None` when it could not be loaded.
    children: Vec<(String, Option<crate::NestedStack>)>,
}

/// Nested stacks deeper than this are not loaded.
const MAX_DEPTH: usize = 8;

fn is_stack(rtype: &str) -> bool {
    rtype == "AWS::Serverless::Application" || rtype == "AWS::CloudFormation::Stack"
}

impl<'a, 'c> Resolver<'a, 'c> {
    pub(crate) fn new(opts: &'a ResolveOptions, t: &'a Sections, ctx: &'c mut Ctx<'a>) -> Self {
        Resolver {
            opts,
            t,
            ctx,
            params: HashMap::new(),
            cond_cache: HashMap::new(),
            cond_stack: Vec::new(),
            active: HashMap::new(),
            dropped: HashSet::new(),
            names: HashMap::new(),
            name_stack: Vec::new(),
            base_dir: std::path::PathBuf::from("."),
            includes: 0,
            chain: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Runs every step in order: parameters, conditions, resource
    /// selection, then property resolution.
    pub(crate) fn run(mut self) -> ResolvedTemplate {
        let t = self.t;
        let parameters = self.parameters();

        for (name, _) in &t.conditions {
            self.condition(name, &format!("Conditions.{name}"));
        }

        let mut cdk_warned = false;
        for (i, r) in t.resources.iter().enumerate() {
            if r.rtype == "AWS::CDK::Metadata" {
                // CDK telemetry: never created locally. Its condition is often
                // left undeclared in trimmed templates; say so once.
                if let Some(c) = &r.condition
                    && !t.conditions.iter().any(|(n, _)| n == c)
                    && !cdk_warned
                {
                    cdk_warned = true;
                    self.ctx.warn(
                        DiagnosticKind::UnknownCondition,
                        &format!("Resources.{}.Condition", r.id),
                        format!("AWS::CDK::Metadata resources are ignored (their condition {c} is not declared)"),
                    );
                }
                self.dropped.insert(r.id.clone());
                continue;
            }
            let keep = match &r.condition {
                Some(c) => self.condition(c, &format!("Resources.{}.Condition", r.id)),
                None => true,
            };
            if keep {
                self.active.insert(r.id.clone(), i);
            } else {
                self.dropped.insert(r.id.clone());
            }
        }

        let mut function_ids = HashMap::new();
        let mut layer_ids = HashMap::new();
        for r in &t.resources {
            if !self.active.contains_key(&r.id) {
                continue;
            }
            match r.rtype.as_str() {
                "AWS::Serverless::Function" | "AWS::Lambda::Function" => {
                    if let Ok(arn) = self.get_att(&r.id, "Arn") {
                        function_ids.insert(arn, r.id.clone());
                    }
                    let name = self.base_name(&r.id);
                    function_ids.insert(name, r.id.clone());
                }
                "AWS::Serverless::LayerVersion" | "AWS::Lambda::LayerVersion" => {
                    let arn = self.ref_value(&r.id);
                    layer_ids.insert(arn, r.id.clone());
                }
                _ => {}
            }
        }

        let mut resources = Vec::new();
        for r in &t.resources {
            if !self.active.contains_key(&r.id) {
                continue;
            }
            let base = format!("Resources.{}", r.id);
            let raw = with_asset(&r.props, &r.metadata);
            let props = self
                .resolve(
                    raw.as_ref().unwrap_or(&r.props),
                    &format!("{base}.Properties"),
                )
                .unwrap_or(Node::Map(Vec::new()));
            let metadata = self
                .resolve(&r.metadata, &format!("{base}.Metadata"))
                .unwrap_or(Node::Null);
            resources.push(Resolved {
                id: r.id.clone(),
                rtype: r.rtype.clone(),
                props,
                metadata,
            });
        }

        let global_api = t
            .globals
            .get("Api")
            .and_then(|g| self.resolve(g, "Globals.Api"))
            .unwrap_or(Node::Null);
        let global_http_api = t
            .globals
            .get("HttpApi")
            .and_then(|g| self.resolve(g, "Globals.HttpApi"))
            .unwrap_or(Node::Null);

        // Outputs: kept for `GetAtt Child.Outputs.X` in a parent; a
        // dangling reference in them is something CloudFormation rejects.
        let mut outputs = Vec::new();
        for (name, out) in &t.outputs {
            let keep = match out.get("Condition").and_then(Node::as_str) {
                Some(c) => self.condition(c, &format!("Outputs.{name}.Condition")),
                None => true,
            };
            if keep
                && let Some(v) = out.get("Value")
                && let Some(value) = self.text(v, &format!("Outputs.{name}.Value"))
            {
                outputs.push((name.clone(), value));
            }
        }
        for r in &t.resources {
            if self.active.contains_key(&r.id) && is_stack(&r.rtype) {
                self.child(&r.id);
            }
        }
        let children = std::mem::take(&mut self.children)
            .into_iter()
            .filter_map(|(id, c)| c.map(|c| (id, c.app)))
            .collect();

        ResolvedTemplate {
            outputs,
            children,
            parameters,
            resources,
            global_api,
            global_http_api,
            function_ids,
            layer_ids,
        }
    }

    // ---- parameters ----------------------------------------------------

    fn parameters(&mut self) -> Vec<(String, Option<String>)> {
        let t = self.t;
        let mut used = Vec::new();
        for (name, def) in &t.parameters {
            let path = format!("Parameters.{name}");
            let ty = def.get("Type").and_then(Node::as_str).unwrap_or("String");
            let overridden = self.opts.override_for(name).map(str::to_string);
            let from_override = overridden.is_some();
            let raw = overridden.or_else(|| def.get("Default").and_then(Node::scalar_text));
            // CDK's deploy-time parameters: the bootstrap version (only its
            // Rules use it) and v1 asset parameters (only asset-replaced
            // properties use them) need no value locally.
            let cdk_only = name == "BootstrapVersion" || name.starts_with("AssetParameters");
            let raw = if cdk_only && !from_override {
                Some(
                    def.get("Default")
                        .and_then(Node::scalar_text)
                        .unwrap_or_default(),
                )
            } else if ty.starts_with("AWS::SSM::Parameter::Value") && !from_override {
                self.ctx.warn(
                    DiagnosticKind::MissingParameterValue,
                    &path,
                    format!(
                        "parameter {name} of type {ty} cannot be read offline; pass --parameter-overrides {name}=VALUE"
                    ),
                );
                None
            } else {
                if raw.is_none() {
                    self.ctx.warn(
                        DiagnosticKind::MissingParameterValue,
                        &path,
                        format!("parameter {name} has no Default and no override"),
                    );
                }
                raw
            };
            let list_type = ty == "CommaDelimitedList" || ty.starts_with("List<");
            let value = raw.as_ref().map(|v| {
                if list_type {
                    Node::List(
                        v.split(',')
                            .map(|s| Node::String(s.trim().to_string()))
                            .collect(),
                    )
                } else {
                    Node::String(v.clone())
                }
            });
            if let Some(v) = &raw {
                let items: Vec<String> = if list_type {
                    v.split(',').map(|s| s.trim().to_string()).collect()
                } else {
                    vec![v.clone()]
                };
                self.check_constraints(name, def, ty, &items, from_override, &path);
            }
            self.params.insert(name.clone(), value);
            used.push((name.clone(), raw));
        }
        for key in self.opts.parameter_overrides.keys() {
            if !t.parameters.iter().any(|(n, _)| n == key) {
                self.ctx.warn(
                    DiagnosticKind::UnknownParameter,
                    "Parameters",
                    format!("override for {key}, which the template does not declare"),
                );
            }
        }
        used
    }

    fn check_constraints(
        &mut self,
        name: &str,
        def: &Node,
        ty: &str,
        items: &[String],
        from_override: bool,
        path: &str,
    ) {
        let source = if from_override {
            " (from --parameter-overrides)"
        } else {
            ""
        };
        let mut problems = Vec::new();
        if let Some(Node::List(allowed)) = def.get("AllowedValues") {
            let allowed: Vec<String> = allowed.iter().filter_map(Node::scalar_text).collect();
            for v in items {
                if !allowed.contains(v) {
                    problems.push(format!(
                        "value {v:?}{source} of parameter {name} is not in AllowedValues [{}]",
                        allowed.join(", ")
                    ));
                }
            }
        }
        for v in items {
            let len = v.chars().count() as u64;
            if let Some(min) = def.get("MinLength").and_then(Node::as_u64)
                && len < min
            {
                problems.push(format!(
                    "value {v:?}{source} of parameter {name} is shorter than MinLength {min}"
                ));
            }
            if let Some(max) = def.get("MaxLength").and_then(Node::as_u64)
                && len > max
            {
                problems.push(format!(
                    "value {v:?}{source} of parameter {name} is longer than MaxLength {max}"
                ));
            }
            if ty == "Number" || ty == "List<Number>" {
                match v.trim().parse::<f64>() {
                    Err(_) => problems.push(format!(
                        "value {v:?}{source} of parameter {name} is not a number"
                    )),
                    Ok(n) => {
                        let bound = |k: &str| {
                            def.get(k)
                                .and_then(Node::scalar_text)
                                .and_then(|s| s.parse::<f64>().ok())
                        };
                        if let Some(min) = bound("MinValue")
                            && n < min
                        {
                            problems.push(format!(
                                "value {v}{source} of parameter {name} is below MinValue {min}"
                            ));
                        }
                        if let Some(max) = bound("MaxValue")
                            && n > max
                        {
                            problems.push(format!(
                                "value {v}{source} of parameter {name} is above MaxValue {max}"
                            ));
                        }
                    }
                }
            }
        }
        for p in problems {
            self.ctx.warn(DiagnosticKind::DisallowedValue, path, p);
        }
    }

    // ---- conditions ----------------------------------------------------

    /// Evaluates a named condition once; unknown names and cycles are errors.
    fn condition(&mut self, name: &str, path: &str) -> bool {
        if let Some(v) = self.cond_cache.get(name) {
            return *v;
        }
        if let Some(pos) = self.cond_stack.iter().position(|n| n == name) {
            let mut cycle: Vec<&str> = self.cond_stack[pos..].iter().map(String::as_str).collect();
            cycle.push(name);
            self.ctx.error(
                DiagnosticKind::CyclicReference,
                &format!("Conditions.{}", self.cond_stack[pos]),
                format!("cyclic condition: {}", cycle.join(" -> ")),
            );
            return false;
        }
        let t = self.t;
        let Some((_, expr)) = t.conditions.iter().find(|(n, _)| n == name) else {
            self.ctx.error(
                DiagnosticKind::UnknownCondition,
                path,
                format!("condition {name} is not declared in Conditions"),
            );
            self.cond_cache.insert(name.to_string(), false);
            return false;
        };
        self.cond_stack.push(name.to_string());
        let v = self.cond_expr(expr, &format!("Conditions.{name}"));
        self.cond_stack.pop();
        self.cond_cache.insert(name.to_string(), v);
        v
    }

    fn cond_expr(&mut self, node: &Node, path: &str) -> bool {
        match node {
            Node::Fn(f, arg) => match (f.as_str(), arg.as_ref()) {
                ("Fn::Equals", Node::List(items)) if items.len() == 2 => {
                    let a = self.resolve(&items[0], path);
                    let b = self.resolve(&items[1], path);
                    match (
                        a.as_ref().and_then(Node::scalar_text),
                        b.as_ref().and_then(Node::scalar_text),
                    ) {
                        (Some(a), Some(b)) => a == b,
                        _ => a == b,
                    }
                }
                ("Fn::And", Node::List(items)) => {
                    let mut all = true;
                    for i in items {
                        all &= self.cond_expr(i, path);
                    }
                    all
                }
                ("Fn::Or", Node::List(items)) => {
                    let mut any = false;
                    for i in items {
                        any |= self.cond_expr(i, path);
                    }
                    any
                }
                ("Fn::Not", Node::List(items)) if items.len() == 1 => {
                    !self.cond_expr(&items[0], path)
                }
                ("Condition", Node::String(name)) => self.condition(name, path),
                _ => {
                    let v = self.resolve(node, path);
                    self.expect_bool(v.as_ref(), path)
                }
            },
            other => {
                let v = Some(other.clone());
                self.expect_bool(v.as_ref(), path)
            }
        }
    }

    fn expect_bool(&mut self, v: Option<&Node>, path: &str) -> bool {
        match v.and_then(Node::as_bool) {
            Some(b) => b,
            None => {
                self.ctx.warn(
                    DiagnosticKind::InvalidValue,
                    path,
                    "condition does not evaluate to true or false; taken as false",
                );
                false
            }
        }
    }

    // ---- references ----------------------------------------------------

    /// The name a resource gets locally (function name, table name…),
    /// before it is dressed as an ARN or URL.
    fn base_name(&mut self, id: &str) -> String {
        if let Some(n) = self.names.get(id) {
            return n.clone();
        }
        let Some(&idx) = self.active.get(id) else {
            return id.to_string();
        };
        if let Some(pos) = self.name_stack.iter().position(|n| n == id) {
            let mut cycle: Vec<&str> = self.name_stack[pos..].iter().map(String::as_str).collect();
            cycle.push(id);
            self.ctx.error(
                DiagnosticKind::CyclicReference,
                &format!("Resources.{}", self.name_stack[pos]),
                format!("cyclic reference: {}", cycle.join(" -> ")),
            );
            return id.to_string();
        }
        let t = self.t;
        let r = &t.resources[idx];
        let prop = match r.rtype.as_str() {
            "AWS::Serverless::Function" | "AWS::Lambda::Function" => Some("FunctionName"),
            "AWS::Serverless::SimpleTable" | "AWS::DynamoDB::Table" => Some("TableName"),
            "AWS::S3::Bucket" => Some("BucketName"),
            "AWS::Serverless::LayerVersion" | "AWS::Lambda::LayerVersion" => Some("LayerName"),
            "AWS::SQS::Queue" => Some("QueueName"),
            "AWS::SNS::Topic" => Some("TopicName"),
            "AWS::Serverless::StateMachine" => Some("Name"),
            _ => None,
        };
        self.name_stack.push(id.to_string());
        let explicit = prop.and_then(|p| {
            let n = r.props.get(p)?;
            self.resolve(n, &format!("Resources.{id}.Properties.{p}"))
                .and_then(|v| v.scalar_text())
        });
        self.name_stack.pop();
        let name = explicit.unwrap_or_else(|| {
            if r.rtype == "AWS::S3::Bucket" {
                // Bucket names must be lower case; CloudFormation generates
                // `<stack>-<logicalid>-<random>`, ESB drops the random part.
                format!("{}-{}", self.opts.stack_name, id)
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
            } else {
                id.to_string()
            }
        });
        self.names.insert(id.to_string(), name.clone());
        name
    }

    fn arn(&self, service: &str, resource: &str) -> String {
        format!(
            "arn:{}:{service}:{}:{}:{resource}",
            self.opts.partition(),
            self.opts.region,
            self.opts.account_id
        )
    }

    fn rtype(&self, id: &str) -> Option<&'a str> {
        let t = self.t;
        self.active.get(id).map(|&i| t.resources[i].rtype.as_str())
    }

    /// What `!Ref` of an active resource gives.
    fn ref_value(&mut self, id: &str) -> String {
        let name = self.base_name(id);
        match self.rtype(id).unwrap_or("") {
            "AWS::Serverless::LayerVersion" | "AWS::Lambda::LayerVersion" => {
                self.arn("lambda", &format!("layer:{name}:1"))
            }
            "AWS::SQS::Queue" => format!(
                "https://sqs.{}.{}/{}/{name}",
                self.opts.region,
                self.opts.url_suffix(),
                self.opts.account_id
            ),
            "AWS::SNS::Topic" => self.arn("sns", &name),
            "AWS::Serverless::StateMachine" | "AWS::StepFunctions::StateMachine" => {
                self.arn("states", &format!("stateMachine:{name}"))
            }
            _ => name,
        }
    }

    fn try_ref(&mut self, name: &str) -> Result<Option<Node>, Miss> {
        let o = self.opts;
        let s = |v: &str| Ok(Some(Node::String(v.to_string())));
        match name {
            "AWS::NoValue" => return Ok(None),
            "AWS::Region" => return s(&o.region),
            "AWS::AccountId" => return s(&o.account_id),
            "AWS::StackName" => return s(&o.stack_name),
            "AWS::Partition" => return s(o.partition()),
            "AWS::URLSuffix" => return s(o.url_suffix()),
            "AWS::NotificationARNs" => return Ok(Some(Node::List(Vec::new()))),
            "AWS::StackId" => {
                let id = self.arn(
                    "cloudformation",
                    &format!(
                        "stack/{}/00000000-0000-0000-0000-000000000000",
                        o.stack_name
                    ),
                );
                return s(&id);
            }
            _ => {}
        }
        if let Some(v) = self.params.get(name) {
            return Ok(Some(
                v.clone().unwrap_or_else(|| Node::String(name.to_string())),
            ));
        }
        if self.active.contains_key(name) {
            return Ok(Some(Node::String(self.ref_value(name))));
        }
        if name == "ServerlessRestApi" || name == "ServerlessHttpApi" {
            return s(name);
        }
        // SAM generates `<Function>Role` for functions without a Role.
        if let Some(f) = name.strip_suffix("Role")
            && self.rtype(f) == Some("AWS::Serverless::Function")
        {
            return s(&format!("{}-role", self.base_name(f)));
        }
        if self.dropped.contains(name) {
            Err(Miss::Dropped)
        } else {
            Err(Miss::NotFound)
        }
    }

    fn get_att(&mut self, id: &str, attr: &str) -> Result<String, Miss> {
        let Some(rtype) = self.rtype(id) else {
            if let Some(f) = id.strip_suffix("Role")
                && self.rtype(f) == Some("AWS::Serverless::Function")
                && attr == "Arn"
            {
                let role = format!("{}-role", self.base_name(f));
                return Ok(format!(
                    "arn:{}:iam::{}:role/{role}",
                    self.opts.partition(),
                    self.opts.account_id
                ));
            }
            return Err(if self.dropped.contains(id) {
                Miss::Dropped
            } else {
                Miss::NotFound
            });
        };
        if is_stack(rtype)
            && let Some(out) = attr.strip_prefix("Outputs.")
        {
            self.child(id);
            return self
                .children
                .iter()
                .find(|(c, _)| c == id)
                .and_then(|(_, c)| c.as_ref())
                .and_then(|c| c.outputs.get(out).cloned())
                .ok_or(Miss::UnknownAttribute);
        }
        let name = self.base_name(id);
        let region = self.opts.region.clone();
        let v = match (rtype, attr) {
            ("AWS::Serverless::Function" | "AWS::Lambda::Function", "Arn") => {
                self.arn("lambda", &format!("function:{name}"))
            }
            ("AWS::Serverless::SimpleTable" | "AWS::DynamoDB::Table", "Arn") => {
                self.arn("dynamodb", &format!("table/{name}"))
            }
            ("AWS::Serverless::SimpleTable" | "AWS::DynamoDB::Table", "StreamArn") => self.arn(
                "dynamodb",
                &format!("table/{name}/stream/1970-01-01T00:00:00.000"),
            ),
            ("AWS::S3::Bucket", "Arn") => format!("arn:{}:s3:::{name}", self.opts.partition()),
            ("AWS::S3::Bucket", "DomainName") => format!("{name}.s3.{}", self.opts.url_suffix()),
            ("AWS::S3::Bucket", "RegionalDomainName") => {
                format!("{name}.s3.{region}.{}", self.opts.url_suffix())
            }
            ("AWS::S3::Bucket", "WebsiteURL") => {
                format!(
                    "http://{name}.s3-website-{region}.{}",
                    self.opts.url_suffix()
                )
            }
            ("AWS::SQS::Queue", "Arn") => self.arn("sqs", &name),
            ("AWS::SQS::Queue", "QueueName") => name,
            ("AWS::SQS::Queue", "QueueUrl") => self.ref_value(id),
            ("AWS::SNS::Topic", "TopicArn") => self.arn("sns", &name),
            ("AWS::SNS::Topic", "TopicName") => name,
            ("AWS::Serverless::LayerVersion" | "AWS::Lambda::LayerVersion", "Arn") => {
                self.ref_value(id)
            }
            // Reversible ids: the builder walks `ParentId` links with them.
            ("AWS::Serverless::Api" | "AWS::ApiGateway::RestApi", "RootResourceId") => {
                format!("{id}::root")
            }
            ("AWS::Serverless::Api" | "AWS::ApiGateway::RestApi", "RestApiId")
            | ("AWS::Serverless::HttpApi" | "AWS::ApiGatewayV2::Api", "ApiId")
            | ("AWS::ApiGateway::Resource", "ResourceId")
            | ("AWS::ApiGateway::Authorizer", "AuthorizerId")
            | ("AWS::ApiGatewayV2::Authorizer", "AuthorizerId")
            | ("AWS::ApiGatewayV2::Integration", "IntegrationId") => id.to_string(),
            ("AWS::Lambda::Url", "FunctionUrl") => {
                format!("https://{}.lambda-url.{region}.on.aws/", id.to_lowercase())
            }
            (
                "AWS::Serverless::HttpApi"
                | "AWS::ApiGatewayV2::Api"
                | "AWS::Serverless::Api"
                | "AWS::ApiGateway::RestApi",
                "ApiEndpoint",
            ) => format!(
                "https://{name}.execute-api.{region}.{}",
                self.opts.url_suffix()
            ),
            ("AWS::Cognito::UserPool", "Arn") => {
                self.arn("cognito-idp", &format!("userpool/{region}_{name}"))
            }
            ("AWS::Cognito::UserPool", "ProviderName") => {
                format!(
                    "cognito-idp.{region}.{}/{region}_{name}",
                    self.opts.url_suffix()
                )
            }
            ("AWS::Cognito::UserPool", "ProviderURL") => {
                format!(
                    "https://cognito-idp.{region}.{}/{region}_{name}",
                    self.opts.url_suffix()
                )
            }
            (_, "Arn") => {
                // SAM CLI synthesises an ARN for any resource; so do we.
                let service = rtype.split("::").nth(1).unwrap_or("unknown").to_lowercase();
                self.arn(&service, &name)
            }
            _ => return Err(Miss::UnknownAttribute),
        };
        Ok(v)
    }

    fn miss_message(&self, what: &str, target: &str, miss: Miss) -> String {
        match miss {
            Miss::NotFound => {
                format!("{what} names {target}, which is not a parameter or resource")
            }
            Miss::Dropped => {
                format!(
                    "{what} names {target}, which is not created because its Condition is false"
                )
            }
            Miss::UnknownAttribute => {
                format!("{what}: attribute cannot be resolved locally for {target}")
            }
        }
    }

    // ---- intrinsic functions -------------------------------------------

    /// Resolves a node; `None` means `AWS::NoValue` (remove the property).
    pub(crate) fn resolve(&mut self, node: &Node, path: &str) -> Option<Node> {
        match node {
            Node::Map(entries) => {
                let mut out = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    if let Some(r) = self.resolve(v, &format!("{path}.{k}")) {
                        out.push((k.clone(), r));
                    }
                }
                Some(Node::Map(out))
            }
            Node::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, v) in items.iter().enumerate() {
                    if let Some(r) = self.resolve(v, &format!("{path}.{i}")) {
                        out.push(r);
                    }
                }
                Some(Node::List(out))
            }
            Node::Fn(name, arg) => self.intrinsic(name, arg, path),
            other => Some(other.clone()),
        }
    }

    fn text(&mut self, node: &Node, path: &str) -> Option<String> {
        self.resolve(node, path).and_then(|n| n.scalar_text())
    }

    fn bad_args(&mut self, f: &str, path: &str, expected: &str) -> Option<Node> {
        self.ctx.warn(
            DiagnosticKind::InvalidValue,
            path,
            format!("{f} expects {expected}; left unresolved"),
        );
        Some(Node::String(String::new()))
    }

    fn intrinsic(&mut self, f: &str, arg: &Node, path: &str) -> Option<Node> {
        match f {
            "Ref" => {
                let Some(target) = self.text(arg, path) else {
                    return self.bad_args("Ref", path, "a name");
                };
                match self.try_ref(&target) {
                    Ok(v) => v,
                    Err(miss) => {
                        let msg = self.miss_message("!Ref", &target, miss);
                        self.ctx
                            .warn(DiagnosticKind::UnresolvedReference, path, msg);
                        Some(Node::String(target))
                    }
                }
            }
            "Fn::GetAtt" => {
                let (id, attr) = match arg {
                    Node::String(s) => match s.split_once('.') {
                        Some((a, b)) => (a.to_string(), b.to_string()),
                        None => return self.bad_args("!GetAtt", path, "Resource.Attribute"),
                    },
                    Node::List(items) if items.len() == 2 => {
                        match (self.text(&items[0], path), self.text(&items[1], path)) {
                            (Some(a), Some(b)) => (a, b),
                            _ => return self.bad_args("!GetAtt", path, "[Resource, Attribute]"),
                        }
                    }
                    _ => return self.bad_args("!GetAtt", path, "Resource.Attribute"),
                };
                match self.get_att(&id, &attr) {
                    Ok(v) => Some(Node::String(v)),
                    Err(miss) => {
                        let msg = self.miss_message("!GetAtt", &format!("{id}.{attr}"), miss);
                        self.ctx
                            .warn(DiagnosticKind::UnresolvedReference, path, msg);
                        Some(Node::String(format!("{id}.{attr}")))
                    }
                }
            }
            "Fn::Sub" => self.sub(arg, path),
            "Fn::Join" => {
                let Node::List(items) = arg else {
                    return self.bad_args("!Join", path, "[delimiter, [values]]");
                };
                if items.len() != 2 {
                    return self.bad_args("!Join", path, "[delimiter, [values]]");
                }
                let delim = self.text(&items[0], path).unwrap_or_default();
                let parts = match self.resolve(&items[1], path) {
                    Some(Node::List(v)) => v,
                    Some(other) => vec![other],
                    None => Vec::new(),
                };
                let parts: Vec<String> = parts
                    .iter()
                    .map(|p| p.scalar_text().unwrap_or_default())
                    .collect();
                Some(Node::String(parts.join(&delim)))
            }
            "Fn::Select" => {
                let Node::List(items) = arg else {
                    return self.bad_args("!Select", path, "[index, list]");
                };
                if items.len() != 2 {
                    return self.bad_args("!Select", path, "[index, list]");
                }
                let idx = self.resolve(&items[0], path).and_then(|n| n.as_u64());
                let list = match self.resolve(&items[1], path) {
                    Some(Node::List(v)) => v,
                    // Selecting from a value kept as data (`!GetAZs`,
                    // `!Cidr`) keeps the selection as data too.
                    Some(data @ Node::Map(_)) => {
                        let idx = self.resolve(&items[0], path).unwrap_or(Node::Null);
                        return Some(Node::Map(vec![(
                            f.to_string(),
                            Node::List(vec![idx, data]),
                        )]));
                    }
                    Some(Node::String(s)) => {
                        s.split(',').map(|p| Node::String(p.to_string())).collect()
                    }
                    _ => Vec::new(),
                };
                match idx.and_then(|i| list.get(i as usize)) {
                    Some(v) => Some(v.clone()),
                    None => self.bad_args("!Select", path, "an index inside the list"),
                }
            }
            "Fn::Split" => {
                let Node::List(items) = arg else {
                    return self.bad_args("!Split", path, "[delimiter, string]");
                };
                if items.len() != 2 {
                    return self.bad_args("!Split", path, "[delimiter, string]");
                }
                let delim = self.text(&items[0], path).unwrap_or_default();
                let s = self.text(&items[1], path).unwrap_or_default();
                if delim.is_empty() {
                    return Some(Node::List(vec![Node::String(s)]));
                }
                Some(Node::List(
                    s.split(delim.as_str())
                        .map(|p| Node::String(p.to_string()))
                        .collect(),
                ))
            }
            "Fn::If" => {
                let Node::List(items) = arg else {
                    return self.bad_args("!If", path, "[condition, then, else]");
                };
                if items.len() != 3 {
                    return self.bad_args("!If", path, "[condition, then, else]");
                }
                let Some(cond) = self.text(&items[0], path) else {
                    return self.bad_args("!If", path, "a condition name");
                };
                let branch = if self.condition(&cond, path) {
                    &items[1]
                } else {
                    &items[2]
                };
                self.resolve(branch, path)
            }
            "Fn::FindInMap" => {
                let Node::List(items) = arg else {
                    return self.bad_args("!FindInMap", path, "[map, key, key]");
                };
                if items.len() < 3 {
                    return self.bad_args("!FindInMap", path, "[map, key, key]");
                }
                let keys: Vec<String> = items[..3]
                    .iter()
                    .map(|k| self.text(k, path).unwrap_or_default())
                    .collect();
                let t = self.t;
                let found = t
                    .mappings
                    .get(&keys[0])
                    .and_then(|m| m.get(&keys[1]))
                    .and_then(|m| m.get(&keys[2]));
                match found {
                    Some(v) => self.resolve(v, path),
                    None => {
                        if let Some(default) = items.get(3).and_then(|d| d.get("DefaultValue")) {
                            return self.resolve(default, path);
                        }
                        self.ctx.warn(
                            DiagnosticKind::UnresolvedReference,
                            path,
                            format!(
                                "!FindInMap: mapping {} has no entry {}.{}",
                                keys[0], keys[1], keys[2]
                            ),
                        );
                        Some(Node::String(String::new()))
                    }
                }
            }
            "Fn::Equals" | "Fn::And" | "Fn::Or" | "Fn::Not" | "Condition" => {
                let node = Node::Fn(f.to_string(), Box::new(arg.clone()));
                Some(Node::Bool(self.cond_expr(&node, path)))
            }
            "Fn::ImportValue" => {
                let name = self.text(arg, path).unwrap_or_default();
                self.ctx.warn(
                    DiagnosticKind::UnresolvedReference,
                    path,
                    format!("!ImportValue {name} cannot be resolved offline"),
                );
                Some(Node::String(name))
            }
            "Fn::Transform" if arg.get("Name").and_then(Node::as_str) == Some("AWS::Include") => {
                self.include(arg, path)
            }
            _ => {
                // Base64, GetAZs, Cidr, Transform… are kept as data with
                // their arguments resolved.
                let inner = self.resolve(arg, path).unwrap_or(Node::Null);
                Some(Node::Map(vec![(f.to_string(), inner)]))
            }
        }
    }

    fn sub(&mut self, arg: &Node, path: &str) -> Option<Node> {
        let (template, vars) = match arg {
            Node::String(s) => (s.clone(), Vec::new()),
            Node::List(items) if items.len() == 2 => {
                let Some(tpl) = self.text(&items[0], path) else {
                    return self.bad_args("!Sub", path, "a string");
                };
                let mut vars = Vec::new();
                if let Node::Map(entries) = &items[1] {
                    for (k, v) in entries {
                        let text = self.text(v, path).unwrap_or_default();
                        vars.push((k.clone(), text));
                    }
                }
                (tpl, vars)
            }
            _ => return self.bad_args("!Sub", path, "a string or [string, {variables}]"),
        };
        let mut out = String::new();
        let mut rest = template.as_str();
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                out.push_str(&rest[start..]);
                rest = "";
                break;
            };
            let var = &after[..end];
            rest = &after[end + 1..];
            if let Some(literal) = var.strip_prefix('!') {
                // `${!Literal}` renders as `${Literal}`.
                out.push_str("${");
                out.push_str(literal);
                out.push('}');
                continue;
            }
            let name = var.trim();
            if name.starts_with("stageVariables.") {
                // Resolved by API Gateway per request, not by CloudFormation.
                out.push_str("${");
                out.push_str(var);
                out.push('}');
                continue;
            }
            if let Some((_, v)) = vars.iter().find(|(k, _)| k == name) {
                out.push_str(v);
                continue;
            }
            let looked = if !name.starts_with("AWS::") && name.contains('.') {
                let (id, attr) = name.split_once('.').unwrap_or((name, ""));
                self.get_att(id, attr)
                    .map(Some)
                    .map(|o| o.map(Node::String))
            } else {
                self.try_ref(name)
            };
            match looked {
                Ok(Some(v)) => out.push_str(&v.scalar_text().unwrap_or_default()),
                Ok(None) => {}
                Err(miss) => {
                    let msg = self.miss_message(&format!("!Sub variable ${{{name}}}"), name, miss);
                    self.ctx
                        .warn(DiagnosticKind::UnresolvedReference, path, msg);
                    out.push_str("${");
                    out.push_str(var);
                    out.push('}');
                }
            }
        }
        out.push_str(rest);
        Some(Node::String(out))
    }

    /// `Fn::Transform: {Name: AWS::Include, Parameters: {Location}}` with a
    /// local location: the snippet, read relative to the template and
    /// resolved like inline text. Remote locations and nested includes are
    /// warnings (the value becomes null).
    fn include(&mut self, arg: &Node, path: &str) -> Option<Node> {
        let location = arg
            .get("Parameters")
            .and_then(|p| p.get("Location"))
            .and_then(|l| self.text(l, path))
            .unwrap_or_default();
        let lower = location.to_ascii_lowercase();
        if lower.starts_with("s3://")
            || lower.starts_with("https://")
            || lower.starts_with("http://")
        {
            self.ctx.warn(
                DiagnosticKind::RemoteCode,
                path,
                format!("AWS::Include location {location} is remote; ESB cannot fetch it offline"),
            );
            return Some(Node::Null);
        }
        if self.includes > 0 {
            self.ctx.warn(
                DiagnosticKind::InvalidValue,
                path,
                "an AWS::Include snippet must not include another; ignored",
            );
            return Some(Node::Null);
        }
        let file = crate::build::abs_path(&self.base_dir, location.trim_start_matches("file://"));
        match crate::parse::read_node(&file) {
            Ok(node) => {
                self.includes += 1;
                let out = self.resolve(&node, path);
                self.includes -= 1;
                out
            }
            Err(e) => {
                self.ctx.warn(
                    DiagnosticKind::Io,
                    path,
                    format!("cannot read AWS::Include location {}: {e}", file.display()),
                );
                Some(Node::Null)
            }
        }
    }

    /// Loads the nested stack `id` once (local `Location` / `TemplateURL`
    /// only), passing its `Parameters` down resolved. Its warnings join this
    /// template's; its errors too (so the parent fails as on AWS).
    fn child(&mut self, id: &str) {
        if self.children.iter().any(|(c, _)| c == id) {
            return;
        }
        self.children.push((id.to_string(), None));
        let t = self.t;
        let Some(&idx) = self.active.get(id) else {
            return;
        };
        let r = &t.resources[idx];
        let key = if r.rtype == "AWS::Serverless::Application" {
            "Location"
        } else {
            "TemplateURL"
        };
        let at = format!("Resources.{id}.Properties.{key}");
        let raw = with_asset(&r.props, &r.metadata);
        let props = raw.as_ref().unwrap_or(&r.props);
        let location = props.get(key).and_then(|l| self.text(l, &at));
        let Some(location) = location.filter(|l| !l.is_empty()) else {
            self.ctx.warn(
                DiagnosticKind::NestedStack,
                &at,
                format!("nested stack {id} has no local {key} (a Serverless Application Repository app?); not loaded"),
            );
            return;
        };
        let lower = location.to_ascii_lowercase();
        if lower.starts_with("s3://")
            || lower.starts_with("https://")
            || lower.starts_with("http://")
        {
            self.ctx.warn(
                DiagnosticKind::NestedStack,
                &at,
                format!("nested stack {id} is at {location}; ESB cannot fetch it offline"),
            );
            return;
        }
        let path = crate::build::abs_path(&self.base_dir, location.trim_start_matches("file://"));
        if self.chain.contains(&path) {
            self.ctx.warn(
                DiagnosticKind::CyclicReference,
                &at,
                format!(
                    "nested stack {id} includes {} again (a cycle); not loaded",
                    path.display()
                ),
            );
            return;
        }
        if self.chain.len() >= MAX_DEPTH {
            self.ctx.warn(
                DiagnosticKind::NestedStack,
                &at,
                format!("nested stack {id} is deeper than {MAX_DEPTH} levels; not loaded"),
            );
            return;
        }
        let mut overrides = std::collections::BTreeMap::new();
        if let Some(Node::Map(params)) = props.get("Parameters") {
            for (k, v) in params {
                let value =
                    match self.resolve(v, &format!("Resources.{id}.Properties.Parameters.{k}")) {
                        Some(Node::List(items)) => items
                            .iter()
                            .filter_map(Node::scalar_text)
                            .collect::<Vec<_>>()
                            .join(","),
                        Some(n) => n.scalar_text().unwrap_or_default(),
                        None => continue,
                    };
                overrides.insert(k.clone(), value);
            }
        }
        let opts = ResolveOptions {
            region: self.opts.region.clone(),
            account_id: self.opts.account_id.clone(),
            stack_name: format!("{}-{id}", self.opts.stack_name),
            parameter_overrides: overrides,
        };
        let mut chain = self.chain.clone();
        chain.push(path.clone());
        let loaded = crate::load_nested(&path, &opts, chain);
        let (diags, stack) = match loaded {
            Ok((stack, warnings)) => (warnings, Some(stack)),
            Err(e) => (e.diagnostics, None),
        };
        for d in diags {
            if !self.ctx.diags.contains(&d) {
                self.ctx.diags.push(d);
            }
        }
        if let Some(slot) = self.children.iter_mut().find(|(c, _)| c == id) {
            slot.1 = stack;
        }
    }
}

/// CDK / SAM CLI asset metadata (`aws:asset:path` + `aws:asset:property`):
/// the named property (dotted path) replaced by the local asset path before
/// intrinsics are evaluated, so the S3 bucket/key refs it replaces never
/// matter. `None` when the resource has no such metadata.
fn with_asset(props: &Node, metadata: &Node) -> Option<Node> {
    let asset = metadata.get("aws:asset:path")?.as_str()?.to_string();
    let property = metadata.get("aws:asset:property")?.as_str()?.to_string();
    let mut out = match props {
        Node::Map(_) => props.clone(),
        _ => Node::Map(Vec::new()),
    };
    let keys: Vec<&str> = property.split('.').collect();
    set_path(&mut out, &keys, Node::String(asset));
    Some(out)
}

fn set_path(node: &mut Node, keys: &[&str], value: Node) {
    let Some((first, rest)) = keys.split_first() else {
        *node = value;
        return;
    };
    if !matches!(node, Node::Map(_)) {
        *node = Node::Map(Vec::new());
    }
    if let Node::Map(entries) = node {
        let idx = match entries.iter().position(|(k, _)| k == first) {
            Some(i) => i,
            None => {
                entries.push((first.to_string(), Node::Map(Vec::new())));
                entries.len() - 1
            }
        };
        if rest.is_empty() {
            entries[idx].1 = value;
        } else {
            set_path(&mut entries[idx].1, rest, value);
        }
    }
}
