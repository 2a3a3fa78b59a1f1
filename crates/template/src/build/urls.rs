//! Lambda function URLs (`AWS::Lambda::Url`, SAM `FunctionUrlConfig`):
//! each becomes an API with `base_path = /lambda-url/<function name>` and the
//! routes `ANY /` and `ANY /{proxy+}` (payload 2.0, no stage), which the
//! gateway serves as its `FunctionUrl` kind.

use super::*;

impl Builder<'_, '_> {
    pub(super) fn function_urls(&mut self, rt: &ResolvedTemplate, model: &mut AppModel) {
        let index = FunctionIndex::new(&model.functions);
        let mut url_ids: Vec<(String, String)> = Vec::new();
        for r in rt
            .resources
            .iter()
            .filter(|r| r.rtype == "AWS::Lambda::Url")
        {
            let at = format!("Resources.{}.Properties", r.id);
            let arn = text(&r.props, "TargetFunctionArn").unwrap_or_default();
            let Some((name, _)) = index.lookup(&arn) else {
                self.ctx.warn(
                    K::UnresolvedReference,
                    &format!("{at}.TargetFunctionArn"),
                    format!(
                        "function URL target {arn:?} is not a function of this template; ignored"
                    ),
                );
                continue;
            };
            let name = name.to_string();
            let Some(f) = model.functions.iter_mut().find(|f| f.name == name) else {
                continue;
            };
            if f.function_url.is_some() {
                continue; // SAM's FunctionUrlConfig already generated it.
            }
            f.function_url = Some(FunctionUrl {
                auth_type: text(&r.props, "AuthType").unwrap_or_else(|| "NONE".into()),
                invoke_mode: text(&r.props, "InvokeMode").unwrap_or_else(|| "BUFFERED".into()),
                cors: r.props.get("Cors").and_then(http_cors),
            });
            url_ids.push((name, r.id.clone()));
        }
        for f in &model.functions {
            let Some(url) = &f.function_url else { continue };
            let id = url_ids
                .iter()
                .find(|(n, _)| n == &f.name)
                .map(|(_, id)| id.clone())
                .unwrap_or_else(|| format!("{}Url", f.logical_id));
            let authorizer = if url.auth_type.eq_ignore_ascii_case("AWS_IAM") {
                "AWS_IAM"
            } else {
                "NONE"
            };
            model.apis.push(Api {
                logical_id: id.clone(),
                kind: ApiKind::Http,
                implicit: false,
                source: RouteSource::FunctionUrl,
                stack: String::new(),
                base_path: Some(format!("/lambda-url/{}", f.name)),
                function_url: Some(f.name.clone()),
                stage_name: "$default".into(),
                auth: ApiAuth::default(),
                cors: url.cors.clone(),
                binary_media_types: Vec::new(),
                stage_variables: Default::default(),
            });
            for path in ["/", "/{proxy+}"] {
                model.routes.push(Route {
                    method: "ANY".into(),
                    path: path.into(),
                    api: id.clone(),
                    api_kind: ApiKind::Http,
                    stage: "$default".into(),
                    auth: RouteAuth {
                        authorizer: authorizer.into(),
                        api_key_required: false,
                        authorization_scopes: Vec::new(),
                    },
                    payload_format_version: Some("2.0".into()),
                    function: f.logical_id.clone(),
                    function_name: f.name.clone(),
                    event: String::new(),
                    target: RouteTarget::Function {
                        name: f.name.clone(),
                    },
                    source: RouteSource::FunctionUrl,
                    stack: String::new(),
                });
            }
        }
    }
}
