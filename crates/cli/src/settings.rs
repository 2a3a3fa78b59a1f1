//! Flags shared by the commands, turned into the highest-precedence
//! settings layer; resolution (flags > `ESB_*` > `esb.toml` > defaults) is
//! `esb_config::load`, the same for every command (docs/configuration.md).

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
    /// Also SAM's one-string form `"Stage=prod Greeting='Hi there'"`.
    #[arg(long = "parameter-overrides", num_args = 1.., value_name = "K=V")]
    pub parameter_overrides: Vec<String>,
    /// SAM env vars JSON file: `{"Function": {"VAR": "v"}, "Parameters": {...}}`.
    #[arg(long = "env-vars", value_name = "FILE")]
    pub env_vars: Option<PathBuf>,
    #[command(flatten)]
    pub dir: DataDirArgs,
}

/// Where state lives: the flags every command has, template or not.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DataDirArgs {
    /// Configuration file (default: ./esb.toml when present).
    #[arg(long = "config", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Data directory for state, certificates and logs (default: .esb, or
    /// ESB_DATA_DIR, or data_dir in esb.toml).
    #[arg(long = "data-dir", value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

impl DataDirArgs {
    /// Resolves the settings with `flags` (more flags) on top.
    pub fn settings(&self, flags: SettingsLayer) -> anyhow::Result<Settings> {
        self.settings_with_samconfig(flags, None)
    }

    /// [`Self::settings`] with SAM's `samconfig.*` of the current directory
    /// read for `sections` (after `global`).
    pub fn settings_with_samconfig(
        &self,
        flags: SettingsLayer,
        sections: Option<&[&str]>,
    ) -> anyhow::Result<Settings> {
        let flags = flags.over(SettingsLayer {
            data_dir: self.data_dir.clone(),
            ..Default::default()
        });
        esb_config::load_with_samconfig(
            &flags,
            self.config.as_deref(),
            &esb_config::ProcessEnv,
            sections.map(|s| (std::path::Path::new("."), s)),
        )
        .context("invalid configuration")
    }
}

impl CommonArgs {
    /// Resolves the settings with `extra` (more flags) on top; SAM's
    /// `samconfig.*` `global` section is read too.
    pub fn settings(&self, extra: SettingsLayer) -> anyhow::Result<Settings> {
        self.settings_for(&[], extra)
    }

    /// [`Self::settings`] reading `samconfig.*` sections `sam_sections`
    /// (e.g. `local_start_api`) over its `global` one.
    pub fn settings_for(
        &self,
        sam_sections: &[&str],
        extra: SettingsLayer,
    ) -> anyhow::Result<Settings> {
        let parameters = if self.parameter_overrides.is_empty() {
            None
        } else {
            Some(esb_config::parse_parameter_overrides(
                &self.parameter_overrides,
            )?)
        };
        self.dir.settings_with_samconfig(
            extra.over(SettingsLayer {
                template: self.template.clone(),
                parameters,
                env_vars: self.env_vars.clone(),
                ..Default::default()
            }),
            Some(sam_sections),
        )
    }
}

/// Sets up logging to stderr with the configured filter.
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // obs: stderr, and forwarded to VictoriaLogs when configured.
        .with_writer(esb_services_logs::esb_log_writer)
        // No colour codes into a file or pipe (esb.log of a detached esb up).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
