//! Raw CloudFormation APIs: `AWS::ApiGateway::RestApi` with its
//! `Resource` tree, `Method`s, `Stage`/`Deployment` and `Authorizer`s;
//! `AWS::ApiGatewayV2::Api` (quick create too) with its `Route`s,
//! `Integration`s, `Stage`s and `Authorizer`s. `Ref`/`GetAtt` of these
//! resources resolve to logical ids (`<Api>::root` for the root resource),
//! which is how the links are followed here.

use std::collections::HashMap;

use super::*;

/// The resources of one type whose `key` property names `api`.
fn of_api<'r>(
    rt: &'r ResolvedTemplate,
    rtype: &'r str,
    key: &'r str,
    api: &'r str,
) -> impl Iterator<Item = &'r Resolved> + 'r {
    rt.resources
        .iter()
        .filter(move |r| r.rtype == rtype && text(&r.props, key).as_deref() == Some(api))
}

impl Builder<'_, '_> {
    /// Every raw CloudFormation API into `model.apis`; returns their routes.
    pub(super) fn cfn_apis(
        &mut self,
        rt: &ResolvedTemplate,
        index: &FunctionIndex,
        model: &mut AppModel,
    ) -> Vec<Route> {
        let mut routes = Vec::new();
        for r in &rt.resources {
            match r.rtype.as_str() {
                "AWS::ApiGateway::RestApi" => self.rest_api(r, rt, index, model, &mut routes),
                "AWS::ApiGatewayV2::Api" => self.http_api(r, rt, index, model, &mut routes),
                _ => {}
            }
        }
        routes
    }

    /// `Body` / `BodyS3Location` of a raw API.
    fn cfn_body(&mut self, api: &mut Api, r: &Resolved, index: &FunctionIndex) -> Vec<Route> {
        let at = format!("Resources.{}.Properties", r.id);
        let doc = match (r.props.get("Body"), r.props.get("BodyS3Location")) {
            (Some(b), _) => Some((b.clone(), "Body")),
            (None, Some(l)) => self
                .read_document(l, &format!("{at}.BodyS3Location"))
                .map(|d| (d, "BodyS3Location")),
            (None, None) => None,
        };
        let Some((doc, key)) = doc else {
            return Vec::new();
        };
        let mut out = self.openapi(api, &doc, &format!("{at}.{key}"), index);
        for route in &mut out {
            route.source = RouteSource::Body;
        }
        out
    }

    fn rest_api(
        &mut self,
        r: &Resolved,
        rt: &ResolvedTemplate,
        index: &FunctionIndex,
        model: &mut AppModel,
        routes: &mut Vec<Route>,
    ) {
        let id = r.id.as_str();
        let at = format!("Resources.{id}");
        // Stage: an AWS::ApiGateway::Stage, else a Deployment's StageName.
        let stage = of_api(rt, "AWS::ApiGateway::Stage", "RestApiId", id).next();
        let deployment = of_api(rt, "AWS::ApiGateway::Deployment", "RestApiId", id)
            .find(|d| d.props.get("StageName").is_some());
        let (stage_name, stage_variables) = match (stage, deployment) {
            (Some(s), _) => (
                text(&s.props, "StageName").unwrap_or_else(|| "prod".into()),
                string_map(s.props.get("Variables")),
            ),
            (None, Some(d)) => (
                text(&d.props, "StageName").unwrap_or_else(|| "prod".into()),
                string_map(
                    d.props
                        .get("StageDescription")
                        .and_then(|s| s.get("Variables")),
                ),
            ),
            (None, None) => {
                self.ctx.warn(
                    K::InvalidValue,
                    &at,
                    "REST API has no Stage or Deployment with a StageName (not invocable on AWS); served under stage prod",
                );
                ("prod".into(), Default::default())
            }
        };
        let mut api = Api {
            logical_id: id.to_string(),
            kind: ApiKind::Rest,
            implicit: false,
            source: RouteSource::Cloudformation,
            stack: String::new(),
            base_path: None,
            function_url: None,
            stage_name,
            auth: ApiAuth::default(),
            cors: None,
            binary_media_types: list(r.props.get("BinaryMediaTypes"))
                .iter()
                .map(|t| t.replace("~1", "/"))
                .collect(),
            stage_variables,
        };
        for a in of_api(rt, "AWS::ApiGateway::Authorizer", "RestApiId", id) {
            if let Some(z) = self.cfn_authorizer(a, ApiKind::Rest, index) {
                api.auth.authorizers.push(z);
            }
        }
        let body = self.cfn_body(&mut api, r, index);
        routes.extend(body);

        // The resource tree: id -> (parent id, path part).
        let tree: HashMap<&str, (String, String)> =
            of_api(rt, "AWS::ApiGateway::Resource", "RestApiId", id)
                .map(|res| {
                    (
                        res.id.as_str(),
                        (
                            text(&res.props, "ParentId").unwrap_or_default(),
                            text(&res.props, "PathPart").unwrap_or_default(),
                        ),
                    )
                })
                .collect();
        let root = format!("{id}::root");
        for m in of_api(rt, "AWS::ApiGateway::Method", "RestApiId", id) {
            let mat = format!("Resources.{}.Properties", m.id);
            let resource = text(&m.props, "ResourceId").unwrap_or_default();
            let Some(path) = self.resource_path(&resource, &root, &tree, &mat) else {
                continue;
            };
            let method = text(&m.props, "HttpMethod")
                .unwrap_or_default()
                .to_ascii_uppercase();
            if !METHODS.contains(&method.as_str()) {
                self.ctx.warn(
                    K::InvalidRoute,
                    &format!("{mat}.HttpMethod"),
                    format!("unknown HTTP method {method:?}; ignored"),
                );
                continue;
            }
            let integ = m.props.get("Integration").cloned().unwrap_or(Node::Null);
            let ty = text(&integ, "Type")
                .unwrap_or_default()
                .to_ascii_uppercase();
            let (target, function) = match ty.as_str() {
                "AWS_PROXY" => {
                    let uri = text(&integ, "Uri").unwrap_or_default();
                    self.function_target(&uri, &format!("{mat}.Integration.Uri"), index)
                }
                "MOCK" if method == "OPTIONS" => {
                    // CORS preflight written as a mock (CDK, Serverless):
                    // the gateway answers preflight from the API's CORS.
                    if api.cors.is_none() {
                        api.cors = mock_cors(&integ);
                    }
                    continue;
                }
                other => {
                    let ty = if other.is_empty() { "(none)" } else { other };
                    self.ctx.warn(
                        K::UnsupportedIntegration,
                        &format!("{mat}.Integration.Type"),
                        format!("integration type {ty} is not run by ESB; the route answers 500"),
                    );
                    (
                        unavailable(&format!("integration type {ty} is not run by ESB")),
                        String::new(),
                    )
                }
            };
            let auth_type = text(&m.props, "AuthorizationType")
                .unwrap_or_else(|| "NONE".into())
                .to_ascii_uppercase();
            let authorizer = match auth_type.as_str() {
                "AWS_IAM" => "AWS_IAM".to_string(),
                "CUSTOM" | "COGNITO_USER_POOLS" => {
                    text(&m.props, "AuthorizerId").unwrap_or_else(|| "NONE".into())
                }
                _ => "NONE".to_string(),
            };
            routes.push(Route {
                method,
                path,
                api: id.to_string(),
                api_kind: ApiKind::Rest,
                stage: api.stage_name.clone(),
                auth: RouteAuth {
                    authorizer,
                    api_key_required: m
                        .props
                        .get("ApiKeyRequired")
                        .and_then(Node::as_bool)
                        .unwrap_or(false),
                    authorization_scopes: list(m.props.get("AuthorizationScopes")),
                },
                payload_format_version: None,
                function,
                function_name: target_name(&target),
                event: String::new(),
                target,
                source: RouteSource::Cloudformation,
                stack: String::new(),
            });
        }
        model.apis.push(api);
    }

    /// The path of a `Resource` by walking `ParentId` up to the root.
    fn resource_path(
        &mut self,
        resource: &str,
        root: &str,
        tree: &HashMap<&str, (String, String)>,
        at: &str,
    ) -> Option<String> {
        let mut parts = Vec::new();
        let mut cur = resource.to_string();
        while cur != root {
            let Some((parent, part)) = tree.get(cur.as_str()) else {
                self.ctx.warn(
                    K::UnresolvedReference,
                    &format!("{at}.ResourceId"),
                    format!("resource {cur:?} is not an AWS::ApiGateway::Resource of this API; method ignored"),
                );
                return None;
            };
            parts.push(part.clone());
            if parts.len() > tree.len() {
                self.ctx.warn(
                    K::CyclicReference,
                    &format!("{at}.ResourceId"),
                    "the resource tree has a cycle; method ignored",
                );
                return None;
            }
            cur = parent.clone();
        }
        parts.reverse();
        let path = format!("/{}", parts.join("/"));
        if let Some(problem) = path_problem(&path) {
            self.ctx
                .warn(K::InvalidRoute, at, format!("{problem}; method ignored"));
            return None;
        }
        Some(path)
    }

    fn cfn_authorizer(
        &mut self,
        a: &Resolved,
        kind: ApiKind,
        index: &FunctionIndex,
    ) -> Option<Authorizer> {
        let p = &a.props;
        let at = format!("Resources.{}.Properties", a.id);
        let ty = text(p, "Type")
            .or_else(|| text(p, "AuthorizerType"))
            .unwrap_or_default()
            .to_ascii_uppercase();
        let uri = text(p, "AuthorizerUri");
        let (function, function_name) = match &uri {
            Some(u) => match index.lookup(u) {
                Some((c, l)) => (Some(l.to_string()), Some(c.to_string())),
                None => {
                    self.ctx.warn(
                        K::UnresolvedReference,
                        &format!("{at}.AuthorizerUri"),
                        format!("authorizer {} names no function of this template", a.id),
                    );
                    (None, None)
                }
            },
            None => (None, None),
        };
        let sources = match p.get("IdentitySource") {
            Some(Node::String(s)) => s
                .split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect(),
            other => list(other),
        };
        let rest = kind == ApiKind::Rest;
        let jwt = p.get("JwtConfiguration").cloned().unwrap_or(Node::Null);
        let kind = match ty.as_str() {
            "TOKEN" => AuthorizerKind::LambdaToken,
            "REQUEST" => AuthorizerKind::LambdaRequest,
            "COGNITO_USER_POOLS" => AuthorizerKind::CognitoUserPool,
            "JWT" => AuthorizerKind::Jwt,
            other => {
                self.ctx.warn(
                    K::InvalidValue,
                    &format!("{at}.Type"),
                    format!("authorizer type {other:?} is not TOKEN, REQUEST, COGNITO_USER_POOLS or JWT; ignored"),
                );
                return None;
            }
        };
        Some(Authorizer {
            name: a.id.clone(),
            kind,
            function,
            function_name,
            function_arn: uri,
            identity_sources: if sources.is_empty() && kind == AuthorizerKind::Jwt {
                vec!["$request.header.Authorization".into()]
            } else if sources.is_empty() && rest {
                vec!["method.request.header.Authorization".into()]
            } else {
                sources
            },
            validation_expression: text(p, "IdentityValidationExpression"),
            ttl_seconds: p
                .get("AuthorizerResultTtlInSeconds")
                .and_then(Node::as_u64)
                .map(|t| t.min(3600) as u32)
                .unwrap_or(if rest { 300 } else { 0 }),
            user_pool_arns: list(p.get("ProviderARNs")),
            jwt_issuer: text(&jwt, "Issuer"),
            jwt_audience: list(jwt.get("Audience")),
            authorization_scopes: Vec::new(),
            payload_format_version: text(p, "AuthorizerPayloadFormatVersion"),
            enable_simple_responses: p
                .get("EnableSimpleResponses")
                .and_then(Node::as_bool)
                .unwrap_or(false),
        })
    }

    fn http_api(
        &mut self,
        r: &Resolved,
        rt: &ResolvedTemplate,
        index: &FunctionIndex,
        model: &mut AppModel,
        routes: &mut Vec<Route>,
    ) {
        let id = r.id.as_str();
        let at = format!("Resources.{id}.Properties");
        let protocol = text(&r.props, "ProtocolType").unwrap_or_else(|| "HTTP".into());
        if !protocol.eq_ignore_ascii_case("HTTP") {
            self.ctx.warn(
                K::UnknownResourceType,
                &format!("{at}.ProtocolType"),
                format!("{protocol} APIs are not served by ESB; ignored"),
            );
            return;
        }
        let stage = of_api(rt, "AWS::ApiGatewayV2::Stage", "ApiId", id).next();
        let mut api = Api {
            logical_id: id.to_string(),
            kind: ApiKind::Http,
            implicit: false,
            source: RouteSource::Cloudformation,
            stack: String::new(),
            base_path: None,
            function_url: None,
            stage_name: stage
                .and_then(|s| text(&s.props, "StageName"))
                .unwrap_or_else(|| "$default".into()),
            auth: ApiAuth::default(),
            cors: r.props.get("CorsConfiguration").and_then(http_cors),
            binary_media_types: Vec::new(),
            stage_variables: stage
                .map(|s| string_map(s.props.get("StageVariables")))
                .unwrap_or_default(),
        };
        for a in of_api(rt, "AWS::ApiGatewayV2::Authorizer", "ApiId", id) {
            if let Some(z) = self.cfn_authorizer(a, ApiKind::Http, index) {
                api.auth.authorizers.push(z);
            }
        }
        let body = self.cfn_body(&mut api, r, index);
        routes.extend(body);

        // Quick create: Target (+ RouteKey) on the Api itself.
        if let Some(target) = text(&r.props, "Target") {
            let key = text(&r.props, "RouteKey").unwrap_or_else(|| "$default".into());
            let integration = Node::Map(vec![
                ("IntegrationType".into(), Node::String("AWS_PROXY".into())),
                ("IntegrationUri".into(), Node::String(target)),
                ("PayloadFormatVersion".into(), Node::String("2.0".into())),
            ]);
            if let Some(route) = self.v2_route(
                &api,
                &key,
                Some(&integration),
                &Node::Null,
                &format!("{at}.Target"),
                index,
            ) {
                routes.push(route);
            }
        }

        let integrations: HashMap<&str, &Node> =
            of_api(rt, "AWS::ApiGatewayV2::Integration", "ApiId", id)
                .map(|i| (i.id.as_str(), &i.props))
                .collect();
        for route in of_api(rt, "AWS::ApiGatewayV2::Route", "ApiId", id) {
            let rat = format!("Resources.{}.Properties", route.id);
            let key = text(&route.props, "RouteKey").unwrap_or_default();
            let integration = text(&route.props, "Target").and_then(|t| {
                let iid = t.strip_prefix("integrations/").unwrap_or(&t).to_string();
                integrations.get(iid.as_str()).copied()
            });
            if integration.is_none() {
                self.ctx.warn(
                    K::UnresolvedReference,
                    &format!("{rat}.Target"),
                    "route has no Target naming an AWS::ApiGatewayV2::Integration of this API; it answers 500",
                );
            }
            if let Some(out) = self.v2_route(&api, &key, integration, &route.props, &rat, index) {
                routes.push(out);
            }
        }
        model.apis.push(api);
    }

    /// One HTTP API route from its route key, integration and route props.
    fn v2_route(
        &mut self,
        api: &Api,
        key: &str,
        integration: Option<&Node>,
        props: &Node,
        at: &str,
        index: &FunctionIndex,
    ) -> Option<Route> {
        let (method, path) = if key == "$default" {
            ("ANY".to_string(), "$default".to_string())
        } else {
            match key.split_once(' ') {
                Some((m, p)) => (m.trim().to_ascii_uppercase(), p.trim().to_string()),
                None => {
                    self.ctx.warn(
                        K::InvalidRoute,
                        &format!("{at}.RouteKey"),
                        format!("route key {key:?} is not \"METHOD /path\" or $default; ignored"),
                    );
                    return None;
                }
            }
        };
        if path != "$default"
            && let Some(problem) = path_problem(&path)
        {
            self.ctx.warn(
                K::InvalidRoute,
                &format!("{at}.RouteKey"),
                format!("{problem}; ignored"),
            );
            return None;
        }
        if !METHODS.contains(&method.as_str()) {
            self.ctx.warn(
                K::InvalidRoute,
                &format!("{at}.RouteKey"),
                format!("unknown HTTP method {method:?}; ignored"),
            );
            return None;
        }
        let (target, function, payload) = match integration {
            None => (unavailable("Internal server error"), String::new(), None),
            Some(i) => {
                let ty = text(i, "IntegrationType")
                    .unwrap_or_default()
                    .to_ascii_uppercase();
                let uri = text(i, "IntegrationUri").unwrap_or_default();
                let payload = Some(payload_version(i.get("PayloadFormatVersion")));
                if ty == "AWS_PROXY" && !uri.starts_with("http") {
                    let (t, f) = self.function_target(&uri, at, index);
                    (t, f, payload)
                } else {
                    let ty = if ty == "AWS_PROXY" {
                        "HTTP_PROXY".to_string()
                    } else {
                        ty
                    };
                    self.ctx.warn(
                        K::UnsupportedIntegration,
                        at,
                        format!("integration type {ty} is not run by ESB; the route answers 500"),
                    );
                    (
                        unavailable(&format!("integration type {ty} is not run by ESB")),
                        String::new(),
                        payload,
                    )
                }
            }
        };
        let auth_type = text(props, "AuthorizationType")
            .unwrap_or_else(|| "NONE".into())
            .to_ascii_uppercase();
        let authorizer = match auth_type.as_str() {
            "AWS_IAM" => "AWS_IAM".to_string(),
            "JWT" | "CUSTOM" => text(props, "AuthorizerId").unwrap_or_else(|| "NONE".into()),
            _ => "NONE".to_string(),
        };
        Some(Route {
            method,
            path,
            api: api.logical_id.clone(),
            api_kind: ApiKind::Http,
            stage: api.stage_name.clone(),
            auth: RouteAuth {
                authorizer,
                api_key_required: false,
                authorization_scopes: list(props.get("AuthorizationScopes")),
            },
            payload_format_version: payload,
            function,
            function_name: target_name(&target),
            event: String::new(),
            target,
            source: RouteSource::Cloudformation,
            stack: String::new(),
        })
    }
}

/// The canonical function name of a target (empty when unavailable).
pub(super) fn target_name(t: &RouteTarget) -> String {
    match t {
        RouteTarget::Function { name } => name.clone(),
        RouteTarget::Unavailable { .. } => String::new(),
    }
}

/// CORS settings from a mock OPTIONS integration's static response headers.
fn mock_cors(integ: &Node) -> Option<Cors> {
    let Some(Node::List(responses)) = integ.get("IntegrationResponses") else {
        return None;
    };
    cors_from_headers(responses.first()?.get("ResponseParameters")?)
}

/// CORS settings from static `method.response.header.Access-Control-*`
/// values (`"'*'"`).
pub(super) fn cors_from_headers(params: &Node) -> Option<Cors> {
    let h = |name: &str| {
        text(params, &format!("method.response.header.{name}"))
            .map(|v| unquote_list(&v))
            .unwrap_or_default()
    };
    let origins = h("Access-Control-Allow-Origin");
    if origins.is_empty() {
        return None;
    }
    Some(Cors {
        allow_origins: origins,
        allow_methods: h("Access-Control-Allow-Methods"),
        allow_headers: h("Access-Control-Allow-Headers"),
        expose_headers: h("Access-Control-Expose-Headers"),
        allow_credentials: h("Access-Control-Allow-Credentials")
            .first()
            .is_some_and(|v| v == "true"),
        max_age: h("Access-Control-Max-Age")
            .first()
            .and_then(|v| v.parse().ok()),
    })
}
