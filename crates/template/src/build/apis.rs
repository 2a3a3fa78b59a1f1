//! SAM APIs, their authorizers, and the routes events declare.

use std::collections::HashMap;

use super::*;

impl Builder<'_, '_> {
    pub(super) fn routes(&mut self, pending: Vec<PendingRoute>, model: &mut AppModel) {
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
            if let Some((merge, keys)) = self.bodies.get(&p.api) {
                let on_body = keys.contains(&(p.method.clone(), p.path.clone()));
                if p.kind == ApiKind::Rest && !merge {
                    self.ctx.warn(
                        K::InvalidRoute,
                        &format!("{}.Properties.Path", p.at),
                        format!(
                            "API {} has a DefinitionBody without MergeDefinitions: true, so AWS does not add this event's route; not served",
                            p.api
                        ),
                    );
                    continue;
                }
                if on_body {
                    if p.kind == ApiKind::Rest {
                        // MergeDefinitions: the event's operation replaces
                        // the document's.
                        model.routes.retain(|r| {
                            !(r.api == p.api && r.method == p.method && r.path == p.path)
                        });
                    } else {
                        // HTTP: the document's integration wins.
                        continue;
                    }
                }
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
                target: RouteTarget::Function {
                    name: p.function_name.clone(),
                },
                function_name: p.function_name,
                event: p.event,
                source: RouteSource::Event,
                stack: String::new(),
            });
        }
    }

    pub(super) fn api(
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
            source: RouteSource::Event,
            stack: String::new(),
            base_path: None,
            function_url: None,
            stage_name,
            auth,
            cors,
            binary_media_types: binary,
            stage_variables: vars,
        }
    }

    pub(super) fn authorizer(
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
            function_name: None,
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

    /// `DefinitionBody` / `DefinitionUri` of a SAM API: its routes, and
    /// the API registered as document-defined for SAM events.
    pub(super) fn sam_body(
        &mut self,
        api: &mut Api,
        r: &Resolved,
        index: &FunctionIndex,
    ) -> Vec<Route> {
        let at = format!("Resources.{}.Properties", r.id);
        let merge = r
            .props
            .get("MergeDefinitions")
            .and_then(Node::as_bool)
            .unwrap_or(false);
        let doc = match (r.props.get("DefinitionBody"), r.props.get("DefinitionUri")) {
            (Some(_), Some(_)) => {
                self.ctx.warn(
                    K::InvalidValue,
                    &format!("{at}.DefinitionUri"),
                    "DefinitionBody and DefinitionUri are both set; using DefinitionBody",
                );
                r.props
                    .get("DefinitionBody")
                    .cloned()
                    .map(|d| (d, "DefinitionBody"))
            }
            (Some(b), None) => Some((b.clone(), "DefinitionBody")),
            (None, Some(u)) => self
                .read_document(u, &format!("{at}.DefinitionUri"))
                .map(|d| (d, "DefinitionUri")),
            (None, None) => None,
        };
        let Some((doc, key)) = doc else {
            if r.props.get("DefinitionUri").is_some() {
                // Unreadable document: no SAM event is added either.
                self.bodies
                    .insert(api.logical_id.clone(), (false, Default::default()));
            }
            return Vec::new();
        };
        if key == "DefinitionBody" && !matches!(doc, Node::Map(_)) {
            self.ctx.warn(
                K::InvalidValue,
                &format!("{at}.DefinitionBody"),
                "DefinitionBody is not a mapping (an AWS::Include that could not be read?); ignored",
            );
            return Vec::new();
        }
        let routes = self.openapi(api, &doc, &format!("{at}.{key}"), index);
        let keys = routes
            .iter()
            .map(|r| (r.method.clone(), r.path.clone()))
            .collect();
        self.bodies.insert(
            api.logical_id.clone(),
            (merge && key == "DefinitionBody", keys),
        );
        api.source = RouteSource::Body;
        routes
    }
}
