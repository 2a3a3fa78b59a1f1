//! SAM CLI's project configuration, `samconfig.toml` (or `samconfig.yaml` /
//! `samconfig.yml`), read for the settings ESB shares with SAM: the
//! template (`template_file`), `parameter_overrides`, `env_vars` and
//! `region`, from the `default` environment's `global` section overlaid by
//! the command's section (`local_start_api` for `esb up`, `local_invoke`
//! for `esb invoke`, `validate`). Other keys are SAM's own and are ignored.
//! Relative paths are relative to the file's directory.
//!
//! Must not: read anything but those files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{ConfigError, SettingsLayer};

/// The file names tried, in order.
pub const FILE_NAMES: [&str; 3] = ["samconfig.toml", "samconfig.yaml", "samconfig.yml"];

#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    default: BTreeMap<String, Section>,
}

#[derive(Debug, Default, Deserialize)]
struct Section {
    #[serde(default)]
    parameters: Params,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct Params {
    template_file: Option<String>,
    template: Option<String>,
    parameter_overrides: Option<OneOrMany>,
    env_vars: Option<String>,
    region: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The settings layer from the first `samconfig.*` in `dir` (an empty layer
/// when there is none), taking `global` then each of `sections` in order
/// (later ones win).
pub fn load(dir: &Path, sections: &[&str]) -> Result<SettingsLayer, ConfigError> {
    for name in FILE_NAMES {
        let path = dir.join(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let file: File = if name.ends_with(".toml") {
            toml::from_str(&text).map_err(|e| ConfigError::Toml {
                path: path.clone(),
                message: e.to_string().trim_end().to_string(),
            })?
        } else {
            serde_norway::from_str(&text).map_err(|e| ConfigError::Toml {
                path: path.clone(),
                message: e.to_string(),
            })?
        };
        return layer(&file, dir, sections, &path);
    }
    Ok(SettingsLayer::default())
}

fn layer(
    file: &File,
    dir: &Path,
    sections: &[&str],
    path: &Path,
) -> Result<SettingsLayer, ConfigError> {
    let mut out = SettingsLayer::default();
    for section in std::iter::once("global").chain(sections.iter().copied()) {
        let Some(s) = file.default.get(section) else {
            continue;
        };
        let p = &s.parameters;
        let rel = |v: &String| -> PathBuf { dir.join(v) };
        let parameters = match &p.parameter_overrides {
            None => None,
            Some(OneOrMany::One(v)) => {
                Some(crate::parse_parameter_overrides(std::slice::from_ref(v)))
            }
            Some(OneOrMany::Many(v)) => Some(crate::parse_parameter_overrides(v)),
        }
        .transpose()
        .map_err(|e| ConfigError::Toml {
            path: path.to_path_buf(),
            message: format!("[default.{section}.parameters] parameter_overrides: {e}"),
        })?;
        let this = SettingsLayer {
            template: p.template_file.as_ref().or(p.template.as_ref()).map(rel),
            env_vars: p.env_vars.as_ref().map(rel),
            region: p.region.clone(),
            parameters,
            ..Default::default()
        };
        out = this.over(out);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("esb-samconfig-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn toml_global_then_command_section() {
        let dir = scratch("toml");
        std::fs::write(
            dir.join("samconfig.toml"),
            r#"version = 0.1
[default.global.parameters]
stack_name = "app"
region = "eu-west-1"
parameter_overrides = "Stage=dev Greeting=\"Hi there\""
[default.local_start_api.parameters]
parameter_overrides = ["Stage=prod"]
env_vars = "env.json"
template_file = "sub/template.yaml"
[default.deploy.parameters]
capabilities = "CAPABILITY_IAM"
"#,
        )
        .unwrap();
        let l = load(&dir, &["local_start_api"]).unwrap();
        let p = l.parameters.unwrap();
        assert_eq!(p["Stage"], "prod");
        assert_eq!(p["Greeting"], "Hi there", "global keys merge by key");
        assert_eq!(l.env_vars.unwrap(), dir.join("env.json"));
        assert_eq!(l.template.unwrap(), dir.join("sub/template.yaml"));
        assert_eq!(l.region.as_deref(), Some("eu-west-1"));
        // Another command sees only global.
        let l = load(&dir, &["local_invoke"]).unwrap();
        assert_eq!(l.parameters.unwrap()["Stage"], "dev");
        assert!(l.env_vars.is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn yaml_and_absent_and_broken() {
        let dir = scratch("yaml");
        assert_eq!(
            load(&dir, &["local_invoke"]).unwrap(),
            SettingsLayer::default()
        );
        std::fs::write(
            dir.join("samconfig.yaml"),
            "version: 0.1\ndefault:\n  local_invoke:\n    parameters:\n      parameter_overrides: ParameterKey=Stage,ParameterValue=qa\n      env_vars: e.json\n",
        )
        .unwrap();
        let l = load(&dir, &["local_invoke"]).unwrap();
        assert_eq!(l.parameters.unwrap()["Stage"], "qa");
        assert_eq!(l.env_vars.unwrap(), dir.join("e.json"));
        std::fs::write(dir.join("samconfig.toml"), "[default.global\n").unwrap();
        let err = load(&dir, &[]).unwrap_err().to_string();
        assert!(err.contains("samconfig.toml"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
