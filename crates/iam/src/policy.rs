//! Identity-policy documents and their evaluation, as AWS evaluates the
//! identity-based policies of one role: a statement applies when its
//! `Action` (or `NotAction`) and `Resource` (or `NotResource`) match the
//! request; an applying `Deny` wins over everything, else an applying
//! `Allow` allows, else the request is implicitly denied.
//!
//! `Condition` blocks are not evaluated: the statement is treated as if the
//! condition held (an `Allow` allows, a `Deny` denies) and loading warns
//! naming the keys. `Principal` in an identity policy is ignored.

use std::sync::Arc;

use serde_json::Value;

use crate::pattern::Pattern;

/// `Effect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Grants.
    Allow,
    /// Refuses, whatever else grants.
    Deny,
}

/// `Action`/`NotAction` or `Resource`/`NotResource`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    /// Any of these.
    Any(Vec<Pattern>),
    /// None of these.
    NoneOf(Vec<Pattern>),
}

impl Matcher {
    fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Any(ps) => ps.iter().any(|p| p.matches(value)),
            Matcher::NoneOf(ps) => !ps.iter().any(|p| p.matches(value)),
        }
    }
}

/// One compiled statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// `Sid`, if any.
    pub sid: Option<String>,
    /// `Effect`.
    pub effect: Effect,
    actions: Matcher,
    resources: Matcher,
    /// The `Condition` keys (not evaluated).
    pub condition_keys: Vec<String>,
    /// Where the statement comes from (`DynamoDBReadPolicy`, `AmazonS3FullAccess`,
    /// `inline policy 2`, `role MyRole policy reader`).
    pub source: Arc<str>,
}

impl Statement {
    /// Whether the statement applies to `action` on `resource`.
    pub fn applies(&self, action: &str, resource: &str) -> bool {
        self.actions.matches(action) && self.resources.matches(resource)
    }
}

/// The outcome of evaluating a set of statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// An `Allow` applies and no `Deny` does.
    Allow,
    /// No statement allows.
    ImplicitDeny,
    /// A `Deny` applies; its source.
    ExplicitDeny(Arc<str>),
}

/// Evaluates `statements` for one request.
pub fn evaluate(statements: &[Statement], action: &str, resource: &str) -> Decision {
    let mut allowed = false;
    for s in statements {
        if !s.applies(action, resource) {
            continue;
        }
        match s.effect {
            Effect::Deny => return Decision::ExplicitDeny(s.source.clone()),
            Effect::Allow => allowed = true,
        }
    }
    if allowed {
        Decision::Allow
    } else {
        Decision::ImplicitDeny
    }
}

/// Compiles a policy document (`{"Version": ..., "Statement": [...]}`, or
/// a single statement object, or a list of statements). Statements that
/// cannot be used are skipped with a warning in `warnings`; so are the
/// condition keys of those that are kept.
pub fn parse_document(doc: &Value, source: &str, warnings: &mut Vec<String>) -> Vec<Statement> {
    let source: Arc<str> = Arc::from(source);
    let statements: Vec<&Value> = match doc {
        Value::Object(map) => match map.get("Statement") {
            Some(Value::Array(items)) => items.iter().collect(),
            Some(one @ Value::Object(_)) => vec![one],
            Some(_) => {
                warnings.push(format!(
                    "{source}: Statement must be an object or a list; the policy grants nothing"
                ));
                return Vec::new();
            }
            None if map.contains_key("Effect") => vec![doc],
            None => {
                warnings.push(format!(
                    "{source}: policy document has no Statement; it grants nothing"
                ));
                return Vec::new();
            }
        },
        Value::Array(items) => items.iter().collect(),
        _ => {
            warnings.push(format!(
                "{source}: a policy document must be an object; it grants nothing"
            ));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, s) in statements.into_iter().enumerate() {
        match parse_statement(s, &source) {
            Ok(st) => {
                if !st.condition_keys.is_empty() {
                    warnings.push(format!(
                        "{source}: statement {}{} has Condition keys ESB does not evaluate ({}); it applies as if they held",
                        i + 1,
                        st.sid
                            .as_deref()
                            .map(|s| format!(" ({s})"))
                            .unwrap_or_default(),
                        st.condition_keys.join(", ")
                    ));
                }
                out.push(st);
            }
            Err(why) => warnings.push(format!("{source}: statement {} is skipped: {why}", i + 1)),
        }
    }
    out
}

fn parse_statement(s: &Value, source: &Arc<str>) -> Result<Statement, String> {
    let Value::Object(map) = s else {
        return Err("a statement must be an object".into());
    };
    let effect = match map.get("Effect").and_then(Value::as_str) {
        Some("Allow") => Effect::Allow,
        Some("Deny") => Effect::Deny,
        Some(other) => return Err(format!("Effect {other:?} is not Allow or Deny")),
        None => return Err("no Effect".into()),
    };
    let actions = matcher(map.get("Action"), map.get("NotAction"), "Action", true)?;
    let resources = matcher(
        map.get("Resource"),
        map.get("NotResource"),
        "Resource",
        false,
    )?;
    let mut condition_keys = Vec::new();
    if let Some(cond) = map.get("Condition") {
        match cond {
            Value::Object(ops) => {
                for (op, keys) in ops {
                    match keys {
                        Value::Object(k) => condition_keys.extend(k.keys().cloned()),
                        _ => condition_keys.push(op.clone()),
                    }
                }
            }
            _ => condition_keys.push("Condition".into()),
        }
    }
    Ok(Statement {
        sid: map.get("Sid").and_then(Value::as_str).map(str::to_string),
        effect,
        actions,
        resources,
        condition_keys,
        source: source.clone(),
    })
}

fn matcher(
    yes: Option<&Value>,
    not: Option<&Value>,
    name: &str,
    ignore_case: bool,
) -> Result<Matcher, String> {
    let compile = |v: &Value| -> Result<Vec<Pattern>, String> {
        let texts: Vec<&str> = match v {
            Value::String(s) => vec![s.as_str()],
            Value::Array(items) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .ok_or_else(|| format!("{name} entries must be strings"))
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(format!("{name} must be a string or a list of strings")),
        };
        Ok(texts
            .into_iter()
            .map(|t| {
                if ignore_case {
                    Pattern::new_ignore_case(t)
                } else {
                    Pattern::new(t)
                }
            })
            .collect())
    };
    match (yes, not) {
        (Some(_), Some(_)) => Err(format!("both {name} and Not{name}")),
        (Some(v), None) => Ok(Matcher::Any(compile(v)?)),
        (None, Some(v)) => Ok(Matcher::NoneOf(compile(v)?)),
        (None, None) => Err(format!("no {name} or Not{name}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(doc: Value) -> (Vec<Statement>, Vec<String>) {
        let mut w = Vec::new();
        let s = parse_document(&doc, "test", &mut w);
        (s, w)
    }

    #[test]
    fn default_deny_allow_and_explicit_deny_wins() {
        let (s, w) = parse(json!({
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "dynamodb:*", "Resource": "*"},
                {"Sid": "NoDeletes", "Effect": "Deny", "Action": ["dynamodb:DeleteItem"],
                 "Resource": "arn:aws:dynamodb:us-east-1:123456789012:table/orders"}
            ]
        }));
        assert!(w.is_empty(), "{w:?}");
        let t = "arn:aws:dynamodb:us-east-1:123456789012:table/orders";
        assert_eq!(evaluate(&s, "dynamodb:GetItem", t), Decision::Allow);
        assert!(matches!(
            evaluate(&s, "dynamodb:DeleteItem", t),
            Decision::ExplicitDeny(_)
        ));
        assert_eq!(
            evaluate(
                &s,
                "dynamodb:DeleteItem",
                "arn:aws:dynamodb:us-east-1:123456789012:table/other"
            ),
            Decision::Allow
        );
        assert_eq!(evaluate(&s, "s3:GetObject", "*"), Decision::ImplicitDeny);
        assert_eq!(evaluate(&[], "s3:GetObject", "*"), Decision::ImplicitDeny);
    }

    #[test]
    fn action_names_are_case_insensitive() {
        let (s, _) = parse(
            json!({"Statement": {"Effect": "Allow", "Action": "S3:getobject", "Resource": "*"}}),
        );
        assert_eq!(
            evaluate(&s, "s3:GetObject", "arn:aws:s3:::b/k"),
            Decision::Allow
        );
    }

    #[test]
    fn not_action_and_not_resource() {
        let (s, _) = parse(json!({"Statement": [
            {"Effect": "Allow", "NotAction": "s3:Delete*", "NotResource": "arn:aws:s3:::secret/*"}
        ]}));
        assert_eq!(
            evaluate(&s, "s3:GetObject", "arn:aws:s3:::b/k"),
            Decision::Allow
        );
        assert_eq!(
            evaluate(&s, "s3:DeleteObject", "arn:aws:s3:::b/k"),
            Decision::ImplicitDeny
        );
        assert_eq!(
            evaluate(&s, "s3:GetObject", "arn:aws:s3:::secret/k"),
            Decision::ImplicitDeny
        );
    }

    #[test]
    fn conditions_are_warned_about_and_assumed_to_hold() {
        let (s, w) = parse(json!({"Statement": [
            {"Sid": "Ip", "Effect": "Deny", "Action": "s3:*", "Resource": "*",
             "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}, "Bool": {"aws:SecureTransport": "false"}}}
        ]}));
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("aws:SourceIp") && w[0].contains("aws:SecureTransport"),
            "{w:?}"
        );
        assert!(matches!(
            evaluate(&s, "s3:GetObject", "x"),
            Decision::ExplicitDeny(_)
        ));
    }

    #[test]
    fn broken_statements_are_skipped_with_a_reason() {
        let (s, w) = parse(json!({"Statement": [
            {"Effect": "Permit", "Action": "s3:*", "Resource": "*"},
            {"Effect": "Allow", "Resource": "*"},
            {"Effect": "Allow", "Action": "s3:*", "NotAction": "s3:Get*", "Resource": "*"},
            {"Effect": "Allow", "Action": "s3:*"},
            {"Effect": "Allow", "Action": [1], "Resource": "*"},
            "nonsense",
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": ["arn:aws:s3:::b/*"]}
        ]}));
        assert_eq!(s.len(), 1);
        assert_eq!(w.len(), 6, "{w:?}");
        assert!(w[0].contains("Permit"));
        let (s, w) = parse(json!("text"));
        assert!(s.is_empty() && w.len() == 1);
        let (s, w) = parse(json!({"Version": "2012-10-17"}));
        assert!(s.is_empty() && w.len() == 1);
    }

    #[test]
    fn a_bare_statement_or_a_list_is_accepted() {
        let (s, _) = parse(json!({"Effect": "Allow", "Action": "s3:*", "Resource": "*"}));
        assert_eq!(s.len(), 1);
        let (s, _) = parse(json!([{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]));
        assert_eq!(s.len(), 1);
    }
}
