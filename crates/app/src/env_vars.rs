//! SAM's `--env-vars` file: a JSON object with one object of variables per
//! function (keyed by logical id, `FunctionName`, canonical name or alias)
//! and `Parameters` for every function. Values may be strings, numbers or
//! booleans (written as JSON writes them); `null` removes a variable.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{AppError, Context};

/// The parsed file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnvVars {
    /// `Parameters`: for every function.
    pub all: BTreeMap<String, Option<String>>,
    /// Per function key.
    pub functions: BTreeMap<String, BTreeMap<String, Option<String>>>,
}

impl EnvVars {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, AppError> {
        let text = std::fs::read(path)
            .context(|| format!("cannot read env vars file {}", path.display()))?;
        Self::parse(&text).map_err(|m| AppError::Refused(format!("{}: {m}", path.display())))
    }

    /// Parses the file's text; the error says which key is wrong.
    pub fn parse(text: &[u8]) -> Result<Self, String> {
        let root: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let serde_json::Value::Object(root) = root else {
            return Err("expected a JSON object of functions".into());
        };
        let mut out = EnvVars::default();
        for (key, vars) in root {
            let serde_json::Value::Object(vars) = vars else {
                return Err(format!("{key:?}: expected an object of variables"));
            };
            let mut map = BTreeMap::new();
            for (name, value) in vars {
                let value = match value {
                    serde_json::Value::String(s) => Some(s),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    serde_json::Value::Bool(b) => Some(b.to_string()),
                    serde_json::Value::Null => None,
                    _ => {
                        return Err(format!(
                            "{key}.{name}: a value must be a string, number, boolean or null"
                        ));
                    }
                };
                map.insert(name, value);
            }
            if key == "Parameters" {
                out.all = map;
            } else {
                out.functions.insert(key, map);
            }
        }
        Ok(out)
    }

    /// Applies the file to a function's environment: `Parameters` first,
    /// then the function's own entries (every key naming it).
    pub fn apply(&self, f: &esb_template::Function, env: &mut BTreeMap<String, String>) {
        let mut set = |vars: &BTreeMap<String, Option<String>>| {
            for (k, v) in vars {
                match v {
                    Some(v) => {
                        env.insert(k.clone(), v.clone());
                    }
                    None => {
                        env.remove(k);
                    }
                }
            }
        };
        set(&self.all);
        let keys = std::iter::once(&f.logical_id)
            .chain(std::iter::once(&f.name))
            .chain(f.aliases.iter());
        let mut seen = Vec::new();
        for key in keys {
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            if let Some(vars) = self.functions.get(key) {
                set(vars);
            }
        }
    }

    /// Keys that name no function of `app` (the caller warns: a typo).
    pub fn unknown_keys(&self, app: &esb_template::AppModel) -> Vec<String> {
        self.functions
            .keys()
            .filter(|k| {
                !app.functions
                    .iter()
                    .any(|f| &f.logical_id == *k || &f.name == *k || f.aliases.contains(k))
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sams_format_and_refuses_nested_values() {
        let e = EnvVars::parse(
            br#"{"Parameters": {"STAGE": "dev", "N": 3}, "Hello": {"STAGE": "fn", "DEBUG": true, "X": null}}"#,
        )
        .unwrap();
        assert_eq!(e.all["STAGE"].as_deref(), Some("dev"));
        assert_eq!(e.all["N"].as_deref(), Some("3"));
        assert_eq!(e.functions["Hello"]["DEBUG"].as_deref(), Some("true"));
        assert_eq!(e.functions["Hello"]["X"], None);
        let err = EnvVars::parse(br#"{"Hello": {"A": [1]}}"#).unwrap_err();
        assert!(err.contains("Hello.A"), "{err}");
        assert!(EnvVars::parse(br#"[1]"#).is_err());
        assert!(EnvVars::parse(br#"{"Hello": "x"}"#).is_err());
        assert!(EnvVars::parse(b"{").is_err());
    }
}
