//! OpenAPI 2.0 / 3.0 documents (`DefinitionBody`, `DefinitionUri`, `Body`,
//! `BodyS3Location`) into routes, authorizers, CORS and binary media types,
//! following API Gateway's import rules (`x-amazon-apigateway-*`
//! extensions). Hand-written because the documents are already parsed
//! template nodes and only the API Gateway extensions matter; a general
//! OpenAPI crate would validate what API Gateway ignores.

use std::collections::HashMap;

use super::cfn_apigw::cors_from_headers as mock_cors;
use super::*;

/// Operation keys of a path item and the method each means.
const OPERATIONS: &[(&str, &str)] = &[
    ("get", "GET"),
    ("put", "PUT"),
    ("post", "POST"),
    ("delete", "DELETE"),
    ("options", "OPTIONS"),
    ("head", "HEAD"),
    ("patch", "PATCH"),
    ("x-amazon-apigateway-any-method", "ANY"),
];

/// What a security scheme of the document is.
enum Scheme {
    Authorizer,
    Iam,
    ApiKey,
    Other,
}

impl Builder<'_, '_> {
    /// Reads an OpenAPI document that lives in a local file (`DefinitionUri`,
    /// `BodyS3Location`), relative to the template's directory. Intrinsics
    /// are not evaluated in such files (as on AWS); `None` with a warning
    /// when it is remote or unreadable.
    pub(super) fn read_document(&mut self, value: &Node, at: &str) -> Option<Node> {
        let path = match value {
            Node::String(s) => s.clone(),
            Node::Map(_) => {
                let uri = format!(
                    "s3://{}/{}",
                    text(value, "Bucket").unwrap_or_default(),
                    text(value, "Key").unwrap_or_default()
                );
                self.ctx.warn(
                    K::RemoteCode,
                    at,
                    format!("API definition at {uri} is in S3; ESB cannot fetch it offline"),
                );
                return None;
            }
            _ => return None,
        };
        if path.starts_with("s3://") || path.starts_with("https://") || path.starts_with("http://")
        {
            self.ctx.warn(
                K::RemoteCode,
                at,
                format!("API definition at {path} is remote; ESB cannot fetch it offline"),
            );
            return None;
        }
        let file = abs_path(&self.base_dir, path.trim_start_matches("file://"));
        match crate::parse::read_node(&file) {
            Ok(n) => Some(n),
            Err(e) => {
                self.ctx.warn(
                    K::Io,
                    at,
                    format!("cannot read API definition {}: {e}", file.display()),
                );
                None
            }
        }
    }

    /// Adds the document's settings to `api` and returns its routes.
    pub(super) fn openapi(
        &mut self,
        api: &mut Api,
        doc: &Node,
        at: &str,
        index: &FunctionIndex,
    ) -> Vec<Route> {
        let v3 = doc.get("openapi").is_some();
        if api.kind == ApiKind::Http && doc.get("swagger").is_some() {
            self.ctx.warn(
                K::InvalidValue,
                &format!("{at}.swagger"),
                "HTTP APIs import OpenAPI 3.0 only; reading this Swagger 2.0 document anyway",
            );
        }
        if api.kind == ApiKind::Rest {
            for t in list(doc.get("x-amazon-apigateway-binary-media-types")) {
                let t = t.replace("~1", "/");
                if !api.binary_media_types.contains(&t) {
                    api.binary_media_types.push(t);
                }
            }
        }
        if api.cors.is_none()
            && let Some(c) = doc.get("x-amazon-apigateway-cors")
        {
            api.cors = Some(Cors {
                allow_origins: list(c.get("allowOrigins")),
                allow_methods: list(c.get("allowMethods")),
                allow_headers: list(c.get("allowHeaders")),
                expose_headers: list(c.get("exposeHeaders")),
                allow_credentials: c
                    .get("allowCredentials")
                    .and_then(Node::as_bool)
                    .unwrap_or(false),
                max_age: c.get("maxAge").and_then(Node::as_u64),
            });
        }

        // Security schemes.
        let (schemes_node, schemes_at) = if v3 {
            (
                doc.get("components").and_then(|c| c.get("securitySchemes")),
                format!("{at}.components.securitySchemes"),
            )
        } else {
            (
                doc.get("securityDefinitions"),
                format!("{at}.securityDefinitions"),
            )
        };
        let mut schemes: HashMap<String, Scheme> = HashMap::new();
        if let Some(Node::Map(entries)) = schemes_node {
            for (name, s) in entries {
                let sat = format!("{schemes_at}.{name}");
                let kind = self.security_scheme(api, name, s, &sat, index);
                schemes.insert(name.clone(), kind);
            }
        }
        if doc.get("security").is_some() {
            self.ctx.warn(
                K::InvalidValue,
                &format!("{at}.security"),
                "document-level security is not applied by API Gateway's import; set security on each operation",
            );
        }

        let integrations = doc
            .get("components")
            .and_then(|c| c.get("x-amazon-apigateway-integrations"));
        let mut routes = Vec::new();
        let Some(Node::Map(paths)) = doc.get("paths") else {
            return routes;
        };
        for (raw_path, item) in paths {
            let pat = format!("{at}.paths.{raw_path}");
            let path = if raw_path == "$default" || raw_path == "/$default" {
                if api.kind != ApiKind::Http {
                    self.ctx.warn(
                        K::InvalidRoute,
                        &pat,
                        "$default routes exist on HTTP APIs only; ignored",
                    );
                    continue;
                }
                "$default".to_string()
            } else {
                if let Some(problem) = path_problem(raw_path) {
                    self.ctx
                        .warn(K::InvalidRoute, &pat, format!("{problem}; ignored"));
                    continue;
                }
                raw_path.clone()
            };
            let Node::Map(ops) = item else { continue };
            for (key, op) in ops {
                let Some((_, method)) =
                    OPERATIONS.iter().find(|(k, _)| k.eq_ignore_ascii_case(key))
                else {
                    continue;
                };
                let oat = format!("{pat}.{key}");
                let mut integration = op.get("x-amazon-apigateway-integration").cloned();
                if let Some(r) = integration.as_ref().and_then(|i| text(i, "$ref")) {
                    let name = r.rsplit('/').next().unwrap_or_default();
                    integration = integrations.and_then(|i| i.get(name)).cloned();
                    if integration.is_none() {
                        self.ctx.warn(
                            K::UnresolvedReference,
                            &format!("{oat}.x-amazon-apigateway-integration"),
                            format!("integration {r} is not defined under components"),
                        );
                    }
                }
                if *method == "OPTIONS"
                    && let Some(i) = &integration
                    && text(i, "type").is_some_and(|t| t.eq_ignore_ascii_case("mock"))
                {
                    // CORS preflight written as a mock (SAM `Cors`, CDK):
                    // the gateway answers preflight from the API's CORS.
                    if api.cors.is_none() {
                        api.cors = i
                            .get("responses")
                            .and_then(|r| r.get("default"))
                            .and_then(|d| d.get("responseParameters"))
                            .and_then(mock_cors);
                    }
                    continue;
                }
                let (target, function, payload) =
                    self.integration_target(api.kind, integration.as_ref(), &oat, index);
                let auth = self.operation_auth(op, &schemes, api, &oat);
                routes.push(Route {
                    method: method.to_string(),
                    path: path.clone(),
                    api: api.logical_id.clone(),
                    api_kind: api.kind,
                    stage: api.stage_name.clone(),
                    auth,
                    payload_format_version: payload,
                    function,
                    function_name: target_name(&target),
                    event: String::new(),
                    target,
                    source: RouteSource::Body,
                    stack: String::new(),
                });
            }
        }
        routes
    }

    /// The route target of an `x-amazon-apigateway-integration`, the
    /// function's logical id, and the payload version (HTTP APIs).
    fn integration_target(
        &mut self,
        kind: ApiKind,
        integration: Option<&Node>,
        at: &str,
        index: &FunctionIndex,
    ) -> (RouteTarget, String, Option<String>) {
        let iat = format!("{at}.x-amazon-apigateway-integration");
        let payload = (kind == ApiKind::Http)
            .then(|| payload_version(integration.and_then(|i| i.get("payloadFormatVersion"))));
        let Some(i) = integration else {
            self.ctx.warn(
                K::InvalidRoute,
                at,
                "operation has no x-amazon-apigateway-integration; it answers 500",
            );
            return (unavailable("Internal server error"), String::new(), payload);
        };
        let ty = text(i, "type").unwrap_or_default();
        if !ty.eq_ignore_ascii_case("aws_proxy") {
            let ty = if ty.is_empty() {
                "(none)".to_string()
            } else {
                ty.to_ascii_uppercase()
            };
            self.ctx.warn(
                K::UnsupportedIntegration,
                &format!("{iat}.type"),
                format!("integration type {ty} is not run by ESB; the route answers 500"),
            );
            return (
                unavailable(&format!("integration type {ty} is not run by ESB")),
                String::new(),
                payload,
            );
        }
        let uri = text(i, "uri").unwrap_or_default();
        let (target, function) = self.function_target(&uri, &format!("{iat}.uri"), index);
        (target, function, payload)
    }

    /// Finds the template function an integration URI names.
    pub(super) fn function_target(
        &mut self,
        uri: &str,
        at: &str,
        index: &FunctionIndex,
    ) -> (RouteTarget, String) {
        match index.lookup(uri) {
            Some((canonical, logical)) => (
                RouteTarget::Function {
                    name: canonical.to_string(),
                },
                logical.to_string(),
            ),
            None => {
                self.ctx.warn(
                    K::UnresolvedReference,
                    at,
                    format!(
                        "integration {uri:?} names no function of this template; the route answers 500"
                    ),
                );
                (unavailable("Internal server error"), String::new())
            }
        }
    }

    fn security_scheme(
        &mut self,
        api: &mut Api,
        name: &str,
        s: &Node,
        at: &str,
        index: &FunctionIndex,
    ) -> Scheme {
        let authtype = text(s, "x-amazon-apigateway-authtype").unwrap_or_default();
        let Some(a) = s.get("x-amazon-apigateway-authorizer") else {
            if authtype.eq_ignore_ascii_case("awsSigv4") {
                return Scheme::Iam;
            }
            if text(s, "type").is_some_and(|t| t == "apiKey") {
                return Scheme::ApiKey;
            }
            return Scheme::Other;
        };
        let ty = text(a, "type").unwrap_or_default().to_ascii_lowercase();
        let uri = text(a, "authorizerUri");
        let (function, function_name) = match &uri {
            Some(u) => match index.lookup(u) {
                Some((c, l)) => (Some(l.to_string()), Some(c.to_string())),
                None => {
                    self.ctx.warn(
                        K::UnresolvedReference,
                        &format!("{at}.x-amazon-apigateway-authorizer.authorizerUri"),
                        format!("authorizer {name} names no function of this template"),
                    );
                    (None, None)
                }
            },
            None => (None, None),
        };
        let sources = |v: Option<&Node>| -> Vec<String> {
            match v {
                Some(Node::String(s)) => s
                    .split(',')
                    .map(|x| x.trim().to_string())
                    .filter(|x| !x.is_empty())
                    .collect(),
                other => list(other),
            }
        };
        let header = text(s, "name").unwrap_or_else(|| "Authorization".into());
        let rest = api.kind == ApiKind::Rest;
        let mut out = Authorizer {
            name: name.to_string(),
            kind: AuthorizerKind::LambdaToken,
            function,
            function_name,
            function_arn: uri,
            identity_sources: Vec::new(),
            validation_expression: text(a, "identityValidationExpression"),
            ttl_seconds: a
                .get("authorizerResultTtlInSeconds")
                .and_then(Node::as_u64)
                .map(|t| t.min(3600) as u32)
                .unwrap_or(if rest { 300 } else { 0 }),
            user_pool_arns: Vec::new(),
            jwt_issuer: None,
            jwt_audience: Vec::new(),
            authorization_scopes: Vec::new(),
            payload_format_version: text(a, "authorizerPayloadFormatVersion"),
            enable_simple_responses: a
                .get("enableSimpleResponses")
                .and_then(Node::as_bool)
                .unwrap_or(false),
        };
        match ty.as_str() {
            "token" => {
                out.identity_sources = vec![format!("method.request.header.{header}")];
            }
            "request" => {
                out.kind = AuthorizerKind::LambdaRequest;
                out.identity_sources = sources(a.get("identitySource"));
            }
            "cognito_user_pools" => {
                out.kind = AuthorizerKind::CognitoUserPool;
                out.user_pool_arns = list(a.get("providerARNs"));
                out.identity_sources = vec![format!("method.request.header.{header}")];
            }
            "jwt" => {
                out.kind = AuthorizerKind::Jwt;
                let c = a.get("jwtConfiguration").cloned().unwrap_or(Node::Null);
                out.jwt_issuer = text(&c, "issuer");
                out.jwt_audience = list(c.get("audience"));
                out.identity_sources = match sources(a.get("identitySource")) {
                    v if v.is_empty() => vec!["$request.header.Authorization".into()],
                    v => v,
                };
            }
            other => {
                self.ctx.warn(
                    K::InvalidValue,
                    &format!("{at}.x-amazon-apigateway-authorizer.type"),
                    format!("authorizer type {other:?} is not token, request, cognito_user_pools or jwt; ignored"),
                );
                return Scheme::Other;
            }
        }
        api.auth.authorizers.retain(|x| x.name != name);
        api.auth.authorizers.push(out);
        Scheme::Authorizer
    }

    /// An operation's `security`: one authorizer (or IAM), and `api_key`
    /// beside it meaning "and an API key".
    fn operation_auth(
        &mut self,
        op: &Node,
        schemes: &HashMap<String, Scheme>,
        api: &Api,
        at: &str,
    ) -> RouteAuth {
        let mut auth = RouteAuth {
            authorizer: "NONE".to_string(),
            api_key_required: false,
            authorization_scopes: Vec::new(),
        };
        let Some(Node::List(reqs)) = op.get("security") else {
            return auth;
        };
        for req in reqs {
            let Node::Map(entries) = req else { continue };
            for (name, scopes) in entries {
                match schemes.get(name) {
                    Some(Scheme::ApiKey) if api.kind == ApiKind::Rest => {
                        auth.api_key_required = true;
                    }
                    Some(Scheme::Iam) => auth.authorizer = "AWS_IAM".into(),
                    Some(Scheme::Authorizer) => {
                        auth.authorizer = name.clone();
                        auth.authorization_scopes = list(Some(scopes));
                    }
                    Some(_) => {}
                    None => self.ctx.warn(
                        K::UnresolvedReference,
                        &format!("{at}.security"),
                        format!("security scheme {name} is not declared in the document"),
                    ),
                }
            }
        }
        auth
    }
}

/// A route target that answers 500 with `message`.
pub(super) fn unavailable(message: &str) -> RouteTarget {
    RouteTarget::Unavailable {
        status: 500,
        message: message.to_string(),
    }
}

/// `payloadFormatVersion` as `"1.0"` or `"2.0"` (written as a string or a
/// number; absent means 2.0).
pub(super) fn payload_version(v: Option<&Node>) -> String {
    match v.and_then(Node::scalar_text).as_deref() {
        Some("1.0") | Some("1") => "1.0".into(),
        _ => "2.0".into(),
    }
}
