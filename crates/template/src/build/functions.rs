//! `AWS::Serverless::Function` and `AWS::Lambda::Function` (and SAM
//! events) into model functions. A function that cannot run is a located
//! warning and carries the reason in `Function::unavailable`.

use std::collections::{BTreeMap, HashMap};

use super::*;

impl Builder<'_, '_> {
    pub(super) fn function(
        &mut self,
        r: &Resolved,
        layer_ids: &HashMap<String, String>,
    ) -> Function {
        let lambda = r.rtype == "AWS::Lambda::Function";
        let normalized;
        let p = if lambda {
            normalized = self.lambda_props(r);
            &normalized
        } else {
            &r.props
        };
        let at = format!("Resources.{}.Properties", r.id);
        let code_at = if lambda {
            format!("{at}.Code")
        } else {
            format!("{at}.CodeUri")
        };
        let mut unavailable: Option<String> = None;
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
                let why = "image function has no ImageUri and no Metadata.Dockerfile";
                self.ctx
                    .warn(K::MissingCode, &format!("{at}.ImageUri"), why);
                unavailable = Some(why.to_string());
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
                let why = "zip function has no Handler";
                self.ctx
                    .warn(K::MissingHandler, &format!("{at}.Handler"), why);
                unavailable.get_or_insert_with(|| why.to_string());
            }
            if runtime.is_none() {
                let why = "zip function has no Runtime";
                self.ctx
                    .warn(K::MissingRuntime, &format!("{at}.Runtime"), why);
                unavailable.get_or_insert_with(|| why.to_string());
            }
            match (p.get("CodeUri"), text(p, "InlineCode")) {
                (Some(Node::Map(_)), _) => {
                    let c = p.get("CodeUri").cloned().unwrap_or(Node::Null);
                    let uri = format!(
                        "s3://{}/{}",
                        text(&c, "Bucket").unwrap_or_default(),
                        text(&c, "Key").unwrap_or_default()
                    );
                    unavailable.get_or_insert_with(|| format!("code at {uri} is in S3"));
                    self.remote_code(&code_at, &uri)
                }
                (Some(c), _) => match c.scalar_text() {
                    Some(uri) if uri.starts_with("s3://") => {
                        unavailable.get_or_insert_with(|| format!("code at {uri} is in S3"));
                        self.remote_code(&code_at, &uri)
                    }
                    Some(dir) => FunctionCode::Zip {
                        code_uri: abs_path(&self.base_dir, &dir),
                    },
                    None => {
                        let why = "CodeUri is not a path";
                        self.ctx.warn(K::MissingCode, &code_at, why);
                        unavailable.get_or_insert_with(|| why.to_string());
                        FunctionCode::Inline {
                            code: String::new(),
                        }
                    }
                },
                (None, Some(source)) => FunctionCode::Inline { code: source },
                (None, None) => {
                    let why = if lambda {
                        "function has no Code"
                    } else {
                        "zip function has no CodeUri and no InlineCode"
                    };
                    self.ctx.warn(K::MissingCode, &code_at, why);
                    unavailable.get_or_insert_with(|| why.to_string());
                    FunctionCode::Inline {
                        code: String::new(),
                    }
                }
            }
        };
        // Code a generated template points at (CDK asset, plain
        // CloudFormation path, Serverless artifact) must be there; a SAM
        // CodeUri may still be waiting for `sam build`, so it is not checked.
        let generated = lambda || r.metadata.get("aws:asset:path").is_some();
        if generated
            && let FunctionCode::Zip { code_uri } = &code
            && !code_uri.exists()
        {
            let why = format!("code at {} does not exist", code_uri.display());
            self.ctx.warn(K::MissingCode, &code_at, why.clone());
            unavailable.get_or_insert(why);
        }
        let code_is_zip = matches!(&code, FunctionCode::Zip { code_uri }
            if code_uri.extension().is_some_and(|e| e.eq_ignore_ascii_case("zip")));

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
            event_invoke_config: p.get("EventInvokeConfig").map(Node::to_json),
            dead_letter_queue: p
                .get("DeadLetterQueue")
                .or_else(|| p.get("DeadLetterConfig"))
                .map(Node::to_json),
            aliases: cdk_function_id(&r.metadata).into_iter().collect(),
            stack: String::new(),
            resource_type: r.rtype.clone(),
            code_is_zip,
            unavailable,
            permissions: FunctionPermissions::default(),
        }
    }

    /// `AWS::Lambda::Function` properties in the SAM shape `function` reads:
    /// `Code.ZipFile` → `InlineCode`, `Code.ImageUri` → `ImageUri` (+
    /// `PackageType: Image`), a `Code` path (before packaging, or set from
    /// CDK asset metadata) → `CodeUri`, `Code.S3Bucket/S3Key` → the
    /// Serverless Framework artifact next to the template when it is there,
    /// else an S3 `CodeUri`.
    fn lambda_props(&mut self, r: &Resolved) -> Node {
        let Node::Map(entries) = &r.props else {
            return r.props.clone();
        };
        let mut out: Vec<(String, Node)> = entries
            .iter()
            .filter(|(k, _)| k != "Code")
            .cloned()
            .collect();
        match r.props.get("Code") {
            Some(Node::String(path)) => out.push(("CodeUri".into(), Node::String(path.clone()))),
            Some(code @ Node::Map(_)) => {
                if let Some(z) = code.get("ZipFile") {
                    out.push(("InlineCode".into(), z.clone()));
                } else if let Some(uri) = code.get("ImageUri") {
                    out.push(("ImageUri".into(), uri.clone()));
                    if r.props.get("PackageType").is_none() {
                        out.push(("PackageType".into(), Node::String("Image".into())));
                    }
                } else {
                    let bucket = text(code, "S3Bucket").unwrap_or_default();
                    let key = text(code, "S3Key").unwrap_or_default();
                    let artifact = key.rsplit('/').next().unwrap_or_default();
                    let local = (!artifact.is_empty() && artifact.ends_with(".zip"))
                        .then(|| self.base_dir.join(artifact))
                        .filter(|p| p.is_file());
                    let uri = match local {
                        Some(p) => p.display().to_string(),
                        None => format!("s3://{bucket}/{key}"),
                    };
                    out.push(("CodeUri".into(), Node::String(uri)));
                }
            }
            _ => {}
        }
        Node::Map(out)
    }

    pub(super) fn remote_code(&mut self, at: &str, uri: &str) -> FunctionCode {
        self.ctx.warn(
            K::RemoteCode,
            at,
            format!("code at {uri} is in S3; ESB cannot fetch it offline"),
        );
        FunctionCode::S3 {
            uri: uri.to_string(),
        }
    }

    pub(super) fn events(
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
                        input_path: None,
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

    pub(super) fn function_arn(
        &self,
        f: &Function,
        function_ids: &HashMap<String, String>,
    ) -> String {
        function_ids
            .iter()
            .find(|(k, v)| *v == &f.logical_id && k.starts_with("arn:"))
            .map(|(k, _)| k.clone())
            .unwrap_or_default()
    }
}

/// The friendly id CDK output gives a function (as SAM CLI derives it):
/// from `aws:cdk:path` `Stack/Name/Resource` (2–3 components), `Name`.
fn cdk_function_id(metadata: &Node) -> Option<String> {
    let path = text(metadata, "aws:cdk:path")?;
    let parts: Vec<&str> = path.split('/').collect();
    if !(2..=3).contains(&parts.len()) {
        return None;
    }
    let id = if parts[parts.len() - 1] == "Resource" {
        parts[parts.len() - 2]
    } else {
        parts[parts.len() - 1]
    };
    (parts.len() == 3 || parts[parts.len() - 1] != "Resource").then(|| id.to_string())
}
