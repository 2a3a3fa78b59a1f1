//! Flags shared by the commands that load a template, turned into the
//! highest-precedence settings layer (flags > `ESB_*` > `esb.toml` >
//! defaults; see docs/configuration.md).

use std::path::PathBuf;

use anyhow::Context;
use esb_config::{Settings, SettingsLayer};

/// Template and configuration flags.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// SAM template (default: template.yaml).
    #[arg(short = 't', long = "template")]
    pub template: Option<PathBuf>,
    /// Template parameter values: `Key=Value` or
    /// `ParameterKey=Key,ParameterValue=Value` (repeatable).
    #[arg(long = "parameter-overrides", num_args = 1.., value_name = "K=V")]
    pub parameter_overrides: Vec<String>,
    /// Configuration file (default: ./esb.toml when present).
    #[arg(long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory for state, certificates and logs (default: .esb).
    #[arg(long = "data-dir", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl CommonArgs {
    /// The flags' layer.
    pub fn layer(&self) -> anyhow::Result<SettingsLayer> {
        let parameters = if self.parameter_overrides.is_empty() {
            None
        } else {
            Some(esb_config::parse_parameter_overrides(
                &self.parameter_overrides,
            )?)
        };
        Ok(SettingsLayer {
            template: self.template.clone(),
            data_dir: self.data_dir.clone(),
            parameters,
            ..Default::default()
        })
    }

    /// Resolves the settings with `extra` (more flags) on top.
    pub fn settings(&self, extra: SettingsLayer) -> anyhow::Result<Settings> {
        let mut flags = self.layer()?;
        merge_into(&mut flags, extra);
        let env = esb_config::from_env(&esb_config::ProcessEnv)?;
        let file_path = self
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from("esb.toml"));
        if self.config.is_some() && !file_path.exists() {
            anyhow::bail!("configuration file {} does not exist", file_path.display());
        }
        let file = esb_config::load_file(&file_path)?;
        Settings::resolve(&[&flags, &env, &file]).context("invalid configuration")
    }
}

/// Copies every field set in `extra` into `base`.
fn merge_into(base: &mut SettingsLayer, extra: SettingsLayer) {
    macro_rules! take {
        ($($f:ident),*) => { $( if extra.$f.is_some() { base.$f = extra.$f; } )* };
    }
    take!(
        template,
        listen,
        http,
        tls_cert,
        tls_key,
        data_dir,
        runtime,
        max_workers,
        idle_timeout,
        queue_timeout,
        queue_len,
        shutdown_grace,
        region,
        account_id,
        stack_name,
        python,
        python_bootstrap,
        parameters,
        log_level,
        s3_enabled,
        s3_listen,
        s3_endpoint,
        dynamodb_enabled,
        dynamodb_listen,
        dynamodb_endpoint,
        access_key_id,
        api_keys,
        jwt_issuer,
        login_path,
        secret_access_key
    );
}

/// Sets up logging to stderr with the configured filter.
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
