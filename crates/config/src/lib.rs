//! ESB configuration: one [`Settings`] value built from layers with the
//! precedence flags > `ESB_*` environment > `esb.toml` > defaults.
//!
//! Owns the list of settings, their defaults, parsing of `esb.toml` and of
//! `ESB_*` variables. The environment is read through the [`Env`] trait so
//! tests pass a map instead of touching the process environment.
//!
//! Must not: start anything, bind ports or read any file but `esb.toml`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Errors while reading configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `esb.toml` could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `esb.toml` is not valid TOML or has an unknown key.
    #[error("{path}: {message}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said (with line and column).
        message: String,
    },
    /// An `ESB_*` variable has a value of the wrong type.
    #[error("environment variable {name}={value:?}: {message}")]
    Env {
        /// Variable name.
        name: String,
        /// Its value.
        value: String,
        /// What is wrong.
        message: String,
    },
    /// A setting has a value that cannot work.
    #[error("setting {name}: {message}")]
    Invalid {
        /// Setting name (as in `esb.toml`).
        name: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Which sandbox backend runs workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Local child processes (default; no Docker needed).
    #[default]
    Process,
    /// Docker containers through the agent.
    Docker,
}

impl std::str::FromStr for RuntimeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "process" => Ok(Self::Process),
            "docker" => Ok(Self::Docker),
            other => Err(format!(
                "unknown runtime {other:?} (expected process or docker)"
            )),
        }
    }
}

/// Which Python runtime client runs `python3.x` functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PythonBootstrap {
    /// `awslambdaric` when importable, else the built-in one.
    #[default]
    Auto,
    /// Always the built-in standard-library bootstrap.
    Builtin,
    /// Always `python -m awslambdaric` (fails when not installed).
    Awslambdaric,
}

impl std::str::FromStr for PythonBootstrap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "builtin" => Ok(Self::Builtin),
            "awslambdaric" => Ok(Self::Awslambdaric),
            other => Err(format!(
                "unknown python bootstrap {other:?} (expected auto, builtin or awslambdaric)"
            )),
        }
    }
}

/// One layer of settings: every field optional. `esb.toml`, the
/// environment and the flags each produce one; [`Settings::resolve`] merges
/// them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct SettingsLayer {
    /// Template path.
    pub template: Option<PathBuf>,
    /// Gateway listen address.
    pub listen: Option<SocketAddr>,
    /// Serve plain HTTP instead of HTTPS.
    pub http: Option<bool>,
    /// User-provided TLS certificate (PEM).
    pub tls_cert: Option<PathBuf>,
    /// User-provided TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Sandbox backend.
    pub runtime: Option<RuntimeKind>,
    /// Most workers alive at once.
    pub max_workers: Option<usize>,
    /// Idle worker lifetime (humantime: `5m`, `30s`).
    #[serde(default, with = "opt_duration")]
    pub idle_timeout: Option<Duration>,
    /// How long a request waits for a busy function.
    #[serde(default, with = "opt_duration")]
    pub queue_timeout: Option<Duration>,
    /// Requests that may wait per function.
    pub queue_len: Option<usize>,
    /// Grace period for in-flight requests on shutdown.
    #[serde(default, with = "opt_duration")]
    pub shutdown_grace: Option<Duration>,
    /// AWS region functions see.
    pub region: Option<String>,
    /// Account id in ARNs.
    pub account_id: Option<String>,
    /// `AWS::StackName`.
    pub stack_name: Option<String>,
    /// Python interpreter for `python3.x` functions.
    pub python: Option<PathBuf>,
    /// Python runtime client choice.
    pub python_bootstrap: Option<PythonBootstrap>,
    /// Template parameter overrides.
    pub parameters: Option<BTreeMap<String, String>>,
    /// Log filter (tracing `EnvFilter` syntax).
    pub log_level: Option<String>,
    /// Serve the embedded S3 endpoint.
    pub s3_enabled: Option<bool>,
    /// Embedded S3 listen address.
    pub s3_listen: Option<SocketAddr>,
    /// External S3 endpoint URL given to workers instead of the embedded one.
    pub s3_endpoint: Option<String>,
    /// Serve the embedded DynamoDB endpoint.
    pub dynamodb_enabled: Option<bool>,
    /// Embedded DynamoDB listen address.
    pub dynamodb_listen: Option<SocketAddr>,
    /// External DynamoDB endpoint URL given to workers instead.
    pub dynamodb_endpoint: Option<String>,
    /// Access key id of the box's credentials (S3, DynamoDB, workers).
    pub access_key_id: Option<String>,
    /// Secret access key of the box's credentials.
    pub secret_access_key: Option<String>,
    /// API keys accepted in `x-api-key` (replacing the generated one).
    pub api_keys: Option<Vec<String>>,
    /// `iss` of the tokens the built-in user pool issues.
    pub jwt_issuer: Option<String>,
    /// Path of the login endpoint.
    pub login_path: Option<String>,
}

/// The resolved settings with every default applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// Template path (default `template.yaml`).
    pub template: PathBuf,
    /// Gateway listen address (default `127.0.0.1:8443`).
    pub listen: SocketAddr,
    /// Plain HTTP instead of HTTPS (default false).
    pub http: bool,
    /// TLS certificate; generated into the data directory when unset.
    pub tls_cert: Option<PathBuf>,
    /// TLS key; generated into the data directory when unset.
    pub tls_key: Option<PathBuf>,
    /// Data directory (default `.esb`).
    pub data_dir: PathBuf,
    /// Sandbox backend (default `process`).
    pub runtime: RuntimeKind,
    /// Most workers alive at once (default 64).
    pub max_workers: usize,
    /// Idle worker lifetime (default 5 minutes, as the original system).
    pub idle_timeout: Duration,
    /// Wait for a busy function before 429 (default 10 s).
    pub queue_timeout: Duration,
    /// Requests that may wait per function (default 100).
    pub queue_len: usize,
    /// Shutdown grace period (default 10 s).
    pub shutdown_grace: Duration,
    /// Region (default `us-east-1`).
    pub region: String,
    /// Account id (default `123456789012`).
    pub account_id: String,
    /// Stack name (default `esb`).
    pub stack_name: String,
    /// Python interpreter (default: `python3.11`/`python3` on `PATH`).
    pub python: Option<PathBuf>,
    /// Python runtime client (default `auto`).
    pub python_bootstrap: PythonBootstrap,
    /// Template parameter overrides.
    pub parameters: BTreeMap<String, String>,
    /// Log filter (default `info`).
    pub log_level: String,
    /// Serve the embedded S3 endpoint (default true; false when
    /// `s3_endpoint` is set).
    pub s3_enabled: bool,
    /// Embedded S3 listen address (default `127.0.0.1:9000`).
    pub s3_listen: SocketAddr,
    /// External S3 endpoint URL for workers (default: none).
    pub s3_endpoint: Option<String>,
    /// Serve the embedded DynamoDB endpoint (default true; false when
    /// `dynamodb_endpoint` is set).
    pub dynamodb_enabled: bool,
    /// Embedded DynamoDB listen address (default `127.0.0.1:8001`).
    pub dynamodb_listen: SocketAddr,
    /// External DynamoDB endpoint URL for workers (default: none).
    pub dynamodb_endpoint: Option<String>,
    /// Box access key id (default: generated into the data directory).
    pub access_key_id: Option<String>,
    /// Box secret access key (default: generated into the data directory).
    #[serde(skip_serializing)]
    pub secret_access_key: Option<String>,
    /// API keys from configuration (default: one generated into the data
    /// directory).
    #[serde(skip_serializing)]
    pub api_keys: Vec<String>,
    /// Issuer of built-in tokens (default `https://esb.local`).
    pub jwt_issuer: String,
    /// Login endpoint path (default `/user/auth/ver1.0`, as the original).
    pub login_path: String,
}

impl Settings {
    /// Merges layers, highest precedence first (flags, env, file), over the
    /// defaults, and checks the result.
    pub fn resolve(layers: &[&SettingsLayer]) -> Result<Self, ConfigError> {
        macro_rules! pick {
            ($field:ident) => {
                layers.iter().find_map(|l| l.$field.clone())
            };
        }
        // Parameters merge key by key, higher layers winning.
        let mut parameters = BTreeMap::new();
        for layer in layers.iter().rev() {
            if let Some(p) = &layer.parameters {
                parameters.extend(p.clone());
            }
        }
        let settings = Self {
            template: pick!(template).unwrap_or_else(|| PathBuf::from("template.yaml")),
            listen: pick!(listen).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443))),
            http: pick!(http).unwrap_or(false),
            tls_cert: pick!(tls_cert),
            tls_key: pick!(tls_key),
            data_dir: pick!(data_dir).unwrap_or_else(|| PathBuf::from(".esb")),
            runtime: pick!(runtime).unwrap_or_default(),
            max_workers: pick!(max_workers).unwrap_or(64),
            idle_timeout: pick!(idle_timeout).unwrap_or(Duration::from_secs(300)),
            queue_timeout: pick!(queue_timeout).unwrap_or(Duration::from_secs(10)),
            queue_len: pick!(queue_len).unwrap_or(100),
            shutdown_grace: pick!(shutdown_grace).unwrap_or(Duration::from_secs(10)),
            region: pick!(region).unwrap_or_else(|| "us-east-1".into()),
            account_id: pick!(account_id).unwrap_or_else(|| "123456789012".into()),
            stack_name: pick!(stack_name).unwrap_or_else(|| "esb".into()),
            python: pick!(python),
            python_bootstrap: pick!(python_bootstrap).unwrap_or_default(),
            parameters,
            log_level: pick!(log_level).unwrap_or_else(|| "info".into()),
            s3_enabled: pick!(s3_enabled).unwrap_or(pick!(s3_endpoint).is_none()),
            s3_listen: pick!(s3_listen).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9000))),
            s3_endpoint: pick!(s3_endpoint),
            dynamodb_enabled: pick!(dynamodb_enabled).unwrap_or(pick!(dynamodb_endpoint).is_none()),
            dynamodb_listen: pick!(dynamodb_listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8001))),
            dynamodb_endpoint: pick!(dynamodb_endpoint),
            access_key_id: pick!(access_key_id),
            secret_access_key: pick!(secret_access_key),
            api_keys: pick!(api_keys).unwrap_or_default(),
            jwt_issuer: pick!(jwt_issuer).unwrap_or_else(|| "https://esb.local".into()),
            login_path: pick!(login_path).unwrap_or_else(|| "/user/auth/ver1.0".into()),
        };
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if !self.login_path.starts_with('/') {
            return Err(ConfigError::Invalid {
                name: "login_path",
                message: format!("{:?} must start with /", self.login_path),
            });
        }
        if self.api_keys.iter().any(|k| k.trim().is_empty()) {
            return Err(ConfigError::Invalid {
                name: "api_keys",
                message: "an API key is empty".into(),
            });
        }
        if self.max_workers == 0 {
            return Err(ConfigError::Invalid {
                name: "max_workers",
                message: "must be at least 1".into(),
            });
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid {
                name: "tls_cert",
                message: "tls_cert and tls_key must be given together".into(),
            });
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err(ConfigError::Invalid {
                name: "access_key_id",
                message: "access_key_id and secret_access_key must be given together".into(),
            });
        }
        for (name, url) in [
            ("s3_endpoint", &self.s3_endpoint),
            ("dynamodb_endpoint", &self.dynamodb_endpoint),
        ] {
            if let Some(url) = url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(ConfigError::Invalid {
                    name,
                    message: format!("{url:?} is not an http:// or https:// URL"),
                });
            }
        }
        if self.account_id.len() != 12 || !self.account_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ConfigError::Invalid {
                name: "account_id",
                message: format!("{:?} is not a 12-digit account id", self.account_id),
            });
        }
        Ok(())
    }
}

/// Reads `esb.toml` at `path`; a missing file is an empty layer.
pub fn load_file(path: &Path) -> Result<SettingsLayer, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SettingsLayer::default()),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    parse_file(&text, path)
}

/// Parses the text of an `esb.toml`.
pub fn parse_file(text: &str, path: &Path) -> Result<SettingsLayer, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Toml {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// Source of environment variables (the process environment, or a map in
/// tests).
pub trait Env {
    /// The value of `name`, if set and valid UTF-8.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// The `ESB_*` variables each setting reads, in documentation order.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("ESB_TEMPLATE", "template"),
    ("ESB_LISTEN", "listen"),
    ("ESB_HTTP", "http"),
    ("ESB_TLS_CERT", "tls_cert"),
    ("ESB_TLS_KEY", "tls_key"),
    ("ESB_DATA_DIR", "data_dir"),
    ("ESB_RUNTIME", "runtime"),
    ("ESB_MAX_WORKERS", "max_workers"),
    ("ESB_IDLE_TIMEOUT", "idle_timeout"),
    ("ESB_QUEUE_TIMEOUT", "queue_timeout"),
    ("ESB_QUEUE_LEN", "queue_len"),
    ("ESB_SHUTDOWN_GRACE", "shutdown_grace"),
    ("ESB_REGION", "region"),
    ("ESB_ACCOUNT_ID", "account_id"),
    ("ESB_STACK_NAME", "stack_name"),
    ("ESB_PYTHON", "python"),
    ("ESB_PYTHON_BOOTSTRAP", "python_bootstrap"),
    ("ESB_LOG", "log_level"),
    ("ESB_S3", "s3_enabled"),
    ("ESB_S3_LISTEN", "s3_listen"),
    ("ESB_S3_ENDPOINT", "s3_endpoint"),
    ("ESB_DYNAMODB", "dynamodb_enabled"),
    ("ESB_DYNAMODB_LISTEN", "dynamodb_listen"),
    ("ESB_DYNAMODB_ENDPOINT", "dynamodb_endpoint"),
    ("ESB_ACCESS_KEY_ID", "access_key_id"),
    ("ESB_SECRET_ACCESS_KEY", "secret_access_key"),
    ("ESB_API_KEYS", "api_keys"),
    ("ESB_JWT_ISSUER", "jwt_issuer"),
    ("ESB_LOGIN_PATH", "login_path"),
];

/// Builds the environment layer from `ESB_*` variables.
pub fn from_env(env: &dyn Env) -> Result<SettingsLayer, ConfigError> {
    fn parse<T: std::str::FromStr>(env: &dyn Env, name: &str) -> Result<Option<T>, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match env.var(name) {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => v.parse::<T>().map(Some).map_err(|e| ConfigError::Env {
                name: name.into(),
                message: e.to_string(),
                value: v,
            }),
        }
    }
    fn duration(env: &dyn Env, name: &str) -> Result<Option<Duration>, ConfigError> {
        match env.var(name) {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => humantime::parse_duration(&v)
                .map(Some)
                .map_err(|e| ConfigError::Env {
                    name: name.into(),
                    message: e.to_string(),
                    value: v,
                }),
        }
    }
    fn boolean(env: &dyn Env, name: &str) -> Result<Option<bool>, ConfigError> {
        match env.var(name).as_deref() {
            None | Some("") => Ok(None),
            Some("1" | "true" | "yes" | "on") => Ok(Some(true)),
            Some("0" | "false" | "no" | "off") => Ok(Some(false)),
            Some(v) => Err(ConfigError::Env {
                name: name.into(),
                value: v.into(),
                message: "expected true or false".into(),
            }),
        }
    }
    Ok(SettingsLayer {
        template: parse(env, "ESB_TEMPLATE")?,
        listen: parse(env, "ESB_LISTEN")?,
        http: boolean(env, "ESB_HTTP")?,
        tls_cert: parse(env, "ESB_TLS_CERT")?,
        tls_key: parse(env, "ESB_TLS_KEY")?,
        data_dir: parse(env, "ESB_DATA_DIR")?,
        runtime: parse(env, "ESB_RUNTIME")?,
        max_workers: parse(env, "ESB_MAX_WORKERS")?,
        idle_timeout: duration(env, "ESB_IDLE_TIMEOUT")?,
        queue_timeout: duration(env, "ESB_QUEUE_TIMEOUT")?,
        queue_len: parse(env, "ESB_QUEUE_LEN")?,
        shutdown_grace: duration(env, "ESB_SHUTDOWN_GRACE")?,
        region: parse(env, "ESB_REGION")?,
        account_id: parse(env, "ESB_ACCOUNT_ID")?,
        stack_name: parse(env, "ESB_STACK_NAME")?,
        python: parse(env, "ESB_PYTHON")?,
        python_bootstrap: parse(env, "ESB_PYTHON_BOOTSTRAP")?,
        parameters: None,
        log_level: parse(env, "ESB_LOG")?,
        s3_enabled: boolean(env, "ESB_S3")?,
        s3_listen: parse(env, "ESB_S3_LISTEN")?,
        s3_endpoint: parse(env, "ESB_S3_ENDPOINT")?,
        dynamodb_enabled: boolean(env, "ESB_DYNAMODB")?,
        dynamodb_listen: parse(env, "ESB_DYNAMODB_LISTEN")?,
        dynamodb_endpoint: parse(env, "ESB_DYNAMODB_ENDPOINT")?,
        access_key_id: parse(env, "ESB_ACCESS_KEY_ID")?,
        secret_access_key: parse(env, "ESB_SECRET_ACCESS_KEY")?,
        api_keys: env
            .var("ESB_API_KEYS")
            .filter(|v| !v.is_empty())
            .map(|v| v.split(',').map(|k| k.trim().to_string()).collect()),
        jwt_issuer: parse(env, "ESB_JWT_ISSUER")?,
        login_path: parse(env, "ESB_LOGIN_PATH")?,
    })
}

/// Parses `--parameter-overrides` values: `K=V` or CloudFormation's
/// `ParameterKey=K,ParameterValue=V`.
pub fn parse_parameter_overrides(
    items: &[String],
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for item in items {
        if let Some(rest) = item.strip_prefix("ParameterKey=") {
            let Some((key, value)) = rest.split_once(",ParameterValue=") else {
                return Err(ConfigError::Invalid {
                    name: "parameter_overrides",
                    message: format!("{item:?}: expected ParameterKey=K,ParameterValue=V"),
                });
            };
            out.insert(key.to_string(), value.to_string());
        } else if let Some((key, value)) = item.split_once('=') {
            if key.is_empty() {
                return Err(ConfigError::Invalid {
                    name: "parameter_overrides",
                    message: format!("{item:?}: empty parameter name"),
                });
            }
            out.insert(key.to_string(), value.to_string());
        } else {
            return Err(ConfigError::Invalid {
                name: "parameter_overrides",
                message: format!("{item:?}: expected KEY=VALUE"),
            });
        }
    }
    Ok(out)
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let s = Settings::resolve(&[]).unwrap();
        assert_eq!(s.listen, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(s.idle_timeout, Duration::from_secs(300));
        assert_eq!(s.runtime, RuntimeKind::Process);
        assert!(!s.http);
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let file = parse_file(
            "listen = \"127.0.0.1:1000\"\nmax_workers = 3\nidle_timeout = \"30s\"\nregion = \"eu-west-1\"\n",
            Path::new("esb.toml"),
        )
        .unwrap();
        let envl = from_env(&env(&[
            ("ESB_LISTEN", "127.0.0.1:2000"),
            ("ESB_MAX_WORKERS", "5"),
        ]))
        .unwrap();
        let flags = SettingsLayer {
            listen: Some("127.0.0.1:3000".parse().unwrap()),
            ..Default::default()
        };
        let s = Settings::resolve(&[&flags, &envl, &file]).unwrap();
        assert_eq!(s.listen, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(s.max_workers, 5);
        assert_eq!(s.idle_timeout, Duration::from_secs(30));
        assert_eq!(s.region, "eu-west-1");
    }

    #[test]
    fn unknown_key_in_file_is_named() {
        let err = parse_file("listne = \"x\"\n", Path::new("esb.toml")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("esb.toml"), "{text}");
        assert!(text.contains("listne"), "{text}");
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let err = from_env(&env(&[("ESB_MAX_WORKERS", "many")])).unwrap_err();
        assert!(err.to_string().contains("ESB_MAX_WORKERS"), "{err}");
        let err = from_env(&env(&[("ESB_IDLE_TIMEOUT", "soon")])).unwrap_err();
        assert!(err.to_string().contains("ESB_IDLE_TIMEOUT"), "{err}");
    }

    #[test]
    fn invalid_combinations_are_refused() {
        let layer = SettingsLayer {
            tls_cert: Some("c.pem".into()),
            ..Default::default()
        };
        assert!(Settings::resolve(&[&layer]).is_err());
        let layer = SettingsLayer {
            account_id: Some("12".into()),
            ..Default::default()
        };
        assert!(Settings::resolve(&[&layer]).is_err());
    }

    #[test]
    fn parameter_overrides_both_forms() {
        let p = parse_parameter_overrides(&[
            "Stage=prod".into(),
            "ParameterKey=Greeting,ParameterValue=Hi there".into(),
        ])
        .unwrap();
        assert_eq!(p["Stage"], "prod");
        assert_eq!(p["Greeting"], "Hi there");
        assert!(parse_parameter_overrides(&["novalue".into()]).is_err());
    }

    #[test]
    fn services_default_on_and_an_external_endpoint_replaces_them() {
        let s = Settings::resolve(&[]).unwrap();
        assert!(s.s3_enabled && s.dynamodb_enabled);
        assert_eq!(s.s3_listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(s.dynamodb_listen, "127.0.0.1:8001".parse().unwrap());
        let envl = from_env(&env(&[
            ("ESB_S3_ENDPOINT", "http://minio:9000"),
            ("ESB_DYNAMODB", "false"),
        ]))
        .unwrap();
        let s = Settings::resolve(&[&envl]).unwrap();
        assert!(
            !s.s3_enabled,
            "an external S3 endpoint disables the embedded one"
        );
        assert_eq!(s.s3_endpoint.as_deref(), Some("http://minio:9000"));
        assert!(!s.dynamodb_enabled);
        let bad = SettingsLayer {
            dynamodb_endpoint: Some("localhost:8000".into()),
            ..Default::default()
        };
        assert!(Settings::resolve(&[&bad]).is_err());
        let half = SettingsLayer {
            access_key_id: Some("AKID".into()),
            ..Default::default()
        };
        assert!(Settings::resolve(&[&half]).is_err());
    }

    #[test]
    fn auth_settings_from_file_and_env() {
        let file = parse_file(
            "api_keys = [\"k-from-file-0123456789\"]\nlogin_path = \"/login\"\n",
            Path::new("esb.toml"),
        )
        .unwrap();
        let envl = from_env(&env(&[(
            "ESB_API_KEYS",
            "a-0123456789abcdef, b-0123456789abcdef",
        )]))
        .unwrap();
        let s = Settings::resolve(&[&envl, &file]).unwrap();
        assert_eq!(s.api_keys, vec!["a-0123456789abcdef", "b-0123456789abcdef"]);
        assert_eq!(s.login_path, "/login");
        assert_eq!(s.jwt_issuer, "https://esb.local");
        let bad = SettingsLayer {
            login_path: Some("login".into()),
            ..Default::default()
        };
        assert!(Settings::resolve(&[&bad]).is_err());
    }

    #[test]
    fn parameters_merge_by_key() {
        let file = SettingsLayer {
            parameters: Some(env(&[("A", "file"), ("B", "file")])),
            ..Default::default()
        };
        let flags = SettingsLayer {
            parameters: Some(env(&[("A", "flag")])),
            ..Default::default()
        };
        let s = Settings::resolve(&[&flags, &file]).unwrap();
        assert_eq!(s.parameters["A"], "flag");
        assert_eq!(s.parameters["B"], "file");
    }
}
