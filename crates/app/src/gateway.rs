//! The gateway configuration from the template: APIs, routes (with their
//! payload version and auth), authorizers and CORS, plus the auth state.
//! There is no way to build one without auth.

use std::sync::Arc;
use std::time::Duration;

use esb_config::Settings;
use esb_gateway::{
    ApiConfig, ApiKind, GatewayAuth, GatewayConfig, PayloadVersion, RouteAuth, RouteConfig,
    RouteTarget,
};

/// The gateway configuration and what could not be configured.
#[derive(Debug)]
pub struct GatewayRoutes {
    /// The configuration to serve.
    pub config: GatewayConfig,
    /// One line per authorizer that cannot be served.
    pub warnings: Vec<String>,
}

/// The gateway's view of the template: APIs, routes, authorizers, and the
/// box's auth (keys, users, tokens), which every configuration carries.
pub fn gateway_config(
    app: &esb_template::AppModel,
    settings: &Settings,
    auth: Arc<esb_auth::Auth>,
) -> GatewayRoutes {
    let mut warnings = Vec::new();
    let apis = app
        .apis
        .iter()
        .map(|a| {
            let kind = match a.kind {
                esb_template::ApiKind::Rest => ApiKind::Rest,
                esb_template::ApiKind::Http if a.function_url.is_some() => ApiKind::FunctionUrl,
                esb_template::ApiKind::Http => ApiKind::Http,
            };
            let mut api = ApiConfig::new(a.logical_id.clone(), kind);
            // A function URL has no stage: it is served under its base path.
            if kind != ApiKind::FunctionUrl {
                api.stage_name = Some(a.stage_name.clone());
            }
            api.base_path = a.base_path.clone();
            api.binary_media_types = a.binary_media_types.clone();
            api.stage_variables = a.stage_variables.clone();
            api.authorizers = a
                .auth
                .authorizers
                .iter()
                .filter_map(|z| authorizer_config(app, z, &mut warnings))
                .collect();
            api.cors = a.cors.as_ref().map(|c| esb_gateway::CorsConfig {
                allow_origins: c.allow_origins.clone(),
                allow_methods: c.allow_methods.clone(),
                allow_headers: c.allow_headers.clone(),
                expose_headers: c.expose_headers.clone(),
                max_age: c.max_age,
                allow_credentials: c.allow_credentials,
            });
            api
        })
        .collect();
    let routes = app
        .routes
        .iter()
        .map(|r| {
            let payload_version = match (r.api_kind, r.payload_format_version.as_deref()) {
                (esb_template::ApiKind::Rest, _) | (_, Some("1.0")) => PayloadVersion::V1,
                _ => PayloadVersion::V2,
            };
            // AWS_IAM stays a named authorizer; the gateway checks SigV4.
            let auth = if !r.auth.authorizer.is_empty() && r.auth.authorizer != "NONE" {
                RouteAuth::Authorizer(r.auth.authorizer.clone())
            } else if r.auth.api_key_required {
                RouteAuth::ApiKey
            } else {
                RouteAuth::None
            };
            RouteConfig {
                api_id: r.api.clone(),
                method: r.method.clone(),
                path: r.path.clone(),
                target: match &r.target {
                    esb_template::RouteTarget::Function { name } => {
                        match app.functions.iter().find(|f| &f.name == name) {
                            // Only this route fails, naming the cause.
                            Some(f) if f.unavailable.is_some() => RouteTarget::Unavailable {
                                status: 500,
                                message: format!(
                                    "function {name} cannot run: {}",
                                    f.unavailable.as_deref().unwrap_or_default()
                                ),
                            },
                            _ => RouteTarget::Function(name.clone()),
                        }
                    }
                    esb_template::RouteTarget::Unavailable { status, message } => {
                        RouteTarget::Unavailable {
                            status: *status,
                            message: message.clone(),
                        }
                    }
                },
                payload_version,
                auth,
                api_key_required: r.auth.api_key_required,
                scopes: r.auth.authorization_scopes.clone(),
            }
        })
        .collect();
    let config = GatewayConfig {
        apis,
        routes,
        settings: esb_gateway::GatewaySettings {
            account_id: settings.account_id.clone(),
            region: settings.region.clone(),
            drain_timeout: settings.shutdown_grace,
            login_path: settings.login_path.clone(),
            listener: crate::services::listener_limits(settings),
            ..Default::default()
        },
        // Always set: the Invoke API and key/authorizer routes are never open.
        auth: GatewayAuth::Enforced(auth),
        function_aliases: app.function_aliases(),
    };
    GatewayRoutes { config, warnings }
}

/// A template authorizer in the gateway's terms; `None` (with a warning)
/// when it cannot be served.
fn authorizer_config(
    app: &esb_template::AppModel,
    a: &esb_template::Authorizer,
    warnings: &mut Vec<String>,
) -> Option<esb_gateway::AuthorizerConfig> {
    use esb_gateway::AuthorizerKind as K;
    use esb_template::AuthorizerKind as T;
    // The canonical name: logical ids repeat across nested stacks.
    let function = || {
        a.function_name.clone().or_else(|| {
            let id = a.function.as_deref()?;
            app.functions
                .iter()
                .find(|f| f.logical_id == id)
                .map(|f| f.name.clone())
        })
    };
    let kind = match a.kind {
        T::CognitoUserPool => K::Cognito,
        T::Jwt => K::Jwt {
            issuer: a.jwt_issuer.clone(),
            audience: a.jwt_audience.clone(),
        },
        T::LambdaToken | T::LambdaRequest => {
            let Some(function) = function() else {
                warnings.push(format!(
                    "warning: authorizer {}: its function is not in the template; routes using it answer 500",
                    a.name
                ));
                return None;
            };
            K::Lambda {
                function,
                token: a.kind == T::LambdaToken,
                payload_v2: a.payload_format_version.as_deref() == Some("2.0"),
                simple_responses: a.enable_simple_responses,
            }
        }
    };
    Some(esb_gateway::AuthorizerConfig {
        name: a.name.clone(),
        kind,
        identity_sources: a.identity_sources.clone(),
        ttl: Duration::from_secs(a.ttl_seconds.min(3600).into()),
    })
}
