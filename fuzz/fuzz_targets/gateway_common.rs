//! A route table shared by the gateway targets: a REST API (stage `Prod`,
//! binary media types), an HTTP API with payload 2.0 and one with 1.0, with
//! literal, parameter, greedy, `ANY` and `$default` routes.

use esb_gateway::{
    ApiConfig, ApiKind, GatewayConfig, PayloadVersion, RouteAuth, RouteConfig, RouteTarget,
};

pub fn api(id: &str, kind: ApiKind, stage: Option<&str>) -> ApiConfig {
    ApiConfig {
        id: id.to_string(),
        kind,
        stage_name: stage.map(str::to_string),
        binary_media_types: vec!["image/png".to_string(), "*/*".to_string()],
        cors: None,
        stage_variables: Default::default(),
        api_id: None,
        authorizers: Vec::new(),
        base_path: None,
    }
}

pub fn route(api: &str, method: &str, path: &str, v2: bool) -> RouteConfig {
    RouteConfig {
        api_id: api.to_string(),
        method: method.to_string(),
        path: path.to_string(),
        target: RouteTarget::Function("f".to_string()),
        payload_version: if v2 { PayloadVersion::V2 } else { PayloadVersion::V1 },
        auth: RouteAuth::None,
        api_key_required: false,
        scopes: Vec::new(),
    }
}

pub fn apis() -> Vec<ApiConfig> {
    vec![
        api("Rest", ApiKind::Rest, Some("Prod")),
        api("Http", ApiKind::Http, None),
        api("Http1", ApiKind::Http, Some("v1")),
    ]
}

pub fn default_config() -> GatewayConfig {
    GatewayConfig {
        apis: apis(),
        routes: vec![
            route("Rest", "GET", "/pets", false),
            route("Rest", "GET", "/pets/{id}", false),
            route("Rest", "ANY", "/files/{proxy+}", false),
            route("Rest", "POST", "/a/{b}/c/{d}", false),
            route("Http", "GET", "/items/{id}", true),
            route("Http", "ANY", "/{proxy+}", true),
            route("Http", "GET", "$default", true),
            route("Http1", "PUT", "/old/{x}", false),
        ],
        ..Default::default()
    }
}
