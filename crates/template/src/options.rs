//! What the caller decides about resolution: pseudo parameter values and
//! parameter overrides.

use std::collections::BTreeMap;

/// Options for resolving a template locally. Defaults: region `us-east-1`,
/// account `123456789012`, stack name `esb`, no overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolveOptions {
    /// `AWS::Region`.
    pub region: String,
    /// `AWS::AccountId`.
    pub account_id: String,
    /// `AWS::StackName`.
    pub stack_name: String,
    /// Parameter overrides (`--parameter-overrides`, `esb.toml`); they win
    /// over the template's defaults.
    pub parameter_overrides: BTreeMap<String, String>,
}

impl Default for ResolveOptions {
    fn default() -> Self {
        ResolveOptions {
            region: "us-east-1".to_string(),
            account_id: "123456789012".to_string(),
            stack_name: "esb".to_string(),
            parameter_overrides: BTreeMap::new(),
        }
    }
}

impl ResolveOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `AWS::Region`.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// Sets `AWS::AccountId`.
    pub fn account_id(mut self, account_id: impl Into<String>) -> Self {
        self.account_id = account_id.into();
        self
    }

    /// Sets `AWS::StackName`.
    pub fn stack_name(mut self, stack_name: impl Into<String>) -> Self {
        self.stack_name = stack_name.into();
        self
    }

    /// Adds one parameter override (replacing an earlier one for the key).
    pub fn parameter(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.parameter_overrides.insert(key.into(), value.into());
        self
    }

    /// Adds overrides parsed by [`parse_parameter_overrides`].
    pub fn parameters(mut self, overrides: impl IntoIterator<Item = (String, String)>) -> Self {
        self.parameter_overrides.extend(overrides);
        self
    }

    /// The override for `key`, if any.
    pub fn override_for(&self, key: &str) -> Option<&str> {
        self.parameter_overrides.get(key).map(String::as_str)
    }

    /// `AWS::Partition`, derived from the region as AWS does.
    pub fn partition(&self) -> &'static str {
        if self.region.starts_with("cn-") {
            "aws-cn"
        } else if self.region.starts_with("us-gov-") {
            "aws-us-gov"
        } else {
            "aws"
        }
    }

    /// `AWS::URLSuffix`.
    pub fn url_suffix(&self) -> &'static str {
        if self.region.starts_with("cn-") {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        }
    }
}

/// A malformed `--parameter-overrides` entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid parameter override {0:?}: expected KEY=VALUE or ParameterKey=KEY,ParameterValue=VALUE"
)]
pub struct OverrideError(pub String);

/// Parses SAM CLI style overrides. Each argument may hold several entries
/// separated by spaces (`"A=1 B=2"`), each either `KEY=VALUE` or
/// `ParameterKey=KEY,ParameterValue=VALUE`; values may be quoted.
pub fn parse_parameter_overrides<S: AsRef<str>>(
    args: &[S],
) -> Result<Vec<(String, String)>, OverrideError> {
    let mut out = Vec::new();
    for arg in args {
        for token in split_tokens(arg.as_ref()) {
            if let Some(rest) = token.strip_prefix("ParameterKey=") {
                let (key, value) = rest
                    .split_once(",ParameterValue=")
                    .ok_or_else(|| OverrideError(token.clone()))?;
                if key.is_empty() {
                    return Err(OverrideError(token.clone()));
                }
                out.push((key.to_string(), unquote(value)));
            } else {
                let (key, value) = token
                    .split_once('=')
                    .ok_or_else(|| OverrideError(token.clone()))?;
                if key.is_empty() {
                    return Err(OverrideError(token.clone()));
                }
                out.push((key.to_string(), unquote(value)));
            }
        }
    }
    Ok(out)
}

/// Splits on whitespace outside single or double quotes.
fn split_tokens(s: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match quote {
            Some(q) if c == q => {
                quote = None;
                cur.push(c);
            }
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                cur.push(c);
            }
            None if c.is_whitespace() => {
                if !cur.is_empty() {
                    tokens.push(std::mem::take(&mut cur));
                }
            }
            None => cur.push(c),
        }
    }
    if !cur.is_empty() {
        tokens.push(cur);
    }
    tokens
}

fn unquote(v: &str) -> String {
    let b = v.as_bytes();
    if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[b.len() - 1] == b[0] {
        v[1..v.len() - 1].to_string()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_override_forms_parse() {
        let got = parse_parameter_overrides(&[
            "Stage=prod",
            "ParameterKey=Memory,ParameterValue=512",
            "A=1 B='two words'",
        ])
        .unwrap();
        assert_eq!(
            got,
            vec![
                ("Stage".into(), "prod".into()),
                ("Memory".into(), "512".into()),
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
            ]
        );
    }

    #[test]
    fn a_value_may_contain_equals_signs() {
        let got = parse_parameter_overrides(&["Q=a=b"]).unwrap();
        assert_eq!(got, vec![("Q".into(), "a=b".into())]);
    }

    #[test]
    fn malformed_overrides_are_refused() {
        assert!(parse_parameter_overrides(&["novalue"]).is_err());
        assert!(parse_parameter_overrides(&["=x"]).is_err());
        assert!(parse_parameter_overrides(&["ParameterKey=A"]).is_err());
    }

    #[test]
    fn the_last_override_wins_and_partition_follows_region() {
        let o = ResolveOptions::new()
            .parameter("A", "1")
            .parameter("A", "2")
            .region("cn-north-1");
        assert_eq!(o.override_for("A"), Some("2"));
        assert_eq!(o.partition(), "aws-cn");
        assert_eq!(ResolveOptions::new().partition(), "aws");
    }
}
