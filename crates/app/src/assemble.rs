//! [`assemble`]: template + settings (+ the running services' endpoints and
//! the auth state) into the parts that run — function specs with their
//! environment and code hash, pool limits, the gateway configuration and the
//! backend choice. Pure apart from writing inline code into the data
//! directory; [`crate::startup`] starts what it returns.

use std::path::Path;
use std::sync::Arc;

use esb_config::{RuntimeKind, Settings};

use crate::error::AppError;
use crate::functions::{FunctionSet, WorkerContext, function_specs};
use crate::gateway::{GatewayRoutes, gateway_config};

/// Which backend runs the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// Local child processes, in this process.
    Process,
    /// Containers, through the agent that holds the engine socket.
    Docker,
}

/// Everything `esb up` runs, before anything is started.
#[derive(Debug)]
pub struct Assembly {
    /// Function specs and limits (and the functions left out, with why).
    pub functions: FunctionSet,
    /// Pool limits.
    pub pool: esb_pool::PoolConfig,
    /// APIs, routes, authorizers; auth always set.
    pub gateway: GatewayRoutes,
    /// The backend the settings ask for.
    pub backend: BackendChoice,
}

/// Turns the template and settings into the running parts. `ctx` says
/// what workers are told about the gateway and the data services.
pub fn assemble(
    app: &esb_template::AppModel,
    settings: &Settings,
    data_dir: &Path,
    ctx: &WorkerContext<'_>,
    auth: Arc<esb_auth::Auth>,
) -> Result<Assembly, AppError> {
    Ok(Assembly {
        functions: function_specs(app, settings, data_dir, ctx)?,
        pool: crate::backend::pool_config(settings),
        gateway: gateway_config(app, settings, auth),
        backend: match settings.runtime {
            RuntimeKind::Process => BackendChoice::Process,
            // containerd is the docker runtime with the agent's engine
            // set to containerd.
            RuntimeKind::Docker | RuntimeKind::Containerd => BackendChoice::Docker,
        },
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;

    const TEMPLATE: &str = r#"
AWSTemplateFormatVersion: '2010-09-09'
Transform: AWS::Serverless-2016-10-31
Resources:
  Hello:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: src/
      Handler: app.handler
      Runtime: python3.11
      ReservedConcurrentExecutions: 2
      Environment:
        Variables:
          GREETING: hi
          AWS_ENDPOINT_URL_S3: http://mine:1
      Events:
        Get:
          Type: Api
          Properties:
            Path: /hello
            Method: get
"#;

    #[test]
    fn assembles_specs_limits_routes_and_auth_from_a_template() {
        let root = std::env::temp_dir().join(format!("esb-assemble-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::write(
            root.join("src/app.py"),
            "def handler(e, c):\n    return 1\n",
        )
        .unwrap();
        std::fs::write(root.join("template.yaml"), TEMPLATE).unwrap();
        let data = crate::files::create_private_dir(&root.join("data")).unwrap();
        let settings = esb_config::Settings::resolve(&[&esb_config::SettingsLayer {
            template: Some(root.join("template.yaml")),
            max_workers: Some(3),
            ..Default::default()
        }])
        .unwrap();
        let loaded = crate::template::load_template(&settings).unwrap();
        let auth = Arc::new(esb_auth::Auth::open(&esb_auth::AuthConfig::new(&data)).unwrap());
        let ctx = WorkerContext {
            lambda_endpoint: "https://127.0.0.1:8443",
            ca_bundle: None,
            service_env: BTreeMap::from([
                (
                    "AWS_ENDPOINT_URL_S3".to_string(),
                    "http://127.0.0.1:9000".to_string(),
                ),
                ("AWS_ACCESS_KEY_ID".to_string(), "AKIDEXAMPLE".to_string()),
            ]),
            iam: None,
        };
        let built = |ctx: &WorkerContext<'_>| {
            assemble(&loaded.app, &settings, &data, ctx, auth.clone()).unwrap()
        };
        let a = built(&ctx);
        assert_eq!(a.backend, BackendChoice::Process);
        assert_eq!(a.pool.max_workers, 3);
        let (spec, limits) = &a.functions.functions[0];
        assert_eq!(spec.name, "Hello");
        assert_eq!(limits.reserved_concurrency, Some(2));
        let env = &spec.environment;
        assert_eq!(env["AWS_ENDPOINT_URL_LAMBDA"], "https://127.0.0.1:8443");
        assert_eq!(env["GREETING"], "hi");
        assert_eq!(env["AWS_ACCESS_KEY_ID"], "AKIDEXAMPLE");
        assert_eq!(
            env["AWS_ENDPOINT_URL_S3"], "http://mine:1",
            "the function's own variable wins"
        );
        assert_eq!(spec.code_hash.len(), 64);
        assert!(
            matches!(a.gateway.config.auth, esb_gateway::GatewayAuth::Enforced(_)),
            "the gateway never runs without auth"
        );
        assert_eq!(a.gateway.config.routes.len(), 1);
        assert_eq!(a.gateway.config.routes[0].path, "/hello");
        // The same inputs give the same hash; an edit of the handler does not.
        assert_eq!(
            built(&ctx).functions.functions[0].0.code_hash,
            spec.code_hash
        );
        std::fs::write(
            root.join("src/app.py"),
            "def handler(e, c):\n    return 2\n",
        )
        .unwrap();
        assert_ne!(
            built(&ctx).functions.functions[0].0.code_hash,
            spec.code_hash
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn env_vars_file_sets_parameters_then_the_functions_own() {
        let root = std::env::temp_dir().join(format!("esb-envvars-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::write(
            root.join("src/app.py"),
            "def handler(e, c):\n    return 1\n",
        )
        .unwrap();
        std::fs::write(root.join("template.yaml"), TEMPLATE).unwrap();
        std::fs::write(
            root.join("env.json"),
            r#"{"Parameters": {"GREETING": "from-params", "SHARED": 1},
                "Hello": {"GREETING": "from-function", "AWS_ENDPOINT_URL_S3": null},
                "Nope": {"X": "y"}}"#,
        )
        .unwrap();
        let data = crate::files::create_private_dir(&root.join("data")).unwrap();
        let settings = |env_vars: Option<PathBuf>| {
            esb_config::Settings::resolve(&[&esb_config::SettingsLayer {
                template: Some(root.join("template.yaml")),
                env_vars,
                ..Default::default()
            }])
            .unwrap()
        };
        let s = settings(Some(root.join("env.json")));
        let loaded = crate::template::load_template(&s).unwrap();
        let set = function_specs(&loaded.app, &s, &data, &WorkerContext::default()).unwrap();
        let env = &set.functions[0].0.environment;
        assert_eq!(env["GREETING"], "from-function");
        assert_eq!(env["SHARED"], "1");
        assert!(!env.contains_key("AWS_ENDPOINT_URL_S3"), "null removes");
        assert!(
            set.warnings.iter().any(|w| w.contains("\"Nope\"")),
            "{:?}",
            set.warnings
        );
        let plain = function_specs(
            &loaded.app,
            &settings(None),
            &data,
            &WorkerContext::default(),
        )
        .unwrap();
        assert_eq!(plain.functions[0].0.environment["GREETING"], "hi");
        assert_ne!(plain.functions[0].0.code_hash, set.functions[0].0.code_hash);
        // A broken file is an error naming the file.
        std::fs::write(root.join("env.json"), "{").unwrap();
        let err = function_specs(&loaded.app, &s, &data, &WorkerContext::default()).unwrap_err();
        assert!(err.to_string().contains("env.json"), "{err}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
