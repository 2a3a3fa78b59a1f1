//! Lambda authorizer results: IAM policy documents (REST, HTTP payload 1.0)
//! and simple responses (HTTP payload 2.0), and a TTL cache for them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// What an authorizer decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Go ahead; `context` is what the authorizer returned.
    Allow {
        /// `principalId` (IAM responses).
        principal_id: Option<String>,
        /// `context` as returned.
        context: Map<String, Value>,
        /// The policy document, kept so a cached result is re-evaluated
        /// against each request's method ARN (as API Gateway does).
        policy: Option<Value>,
    },
    /// 403 with this API Gateway message.
    Deny(DenyKind),
    /// 401 `Unauthorized`.
    Unauthorized,
}

/// Which 403 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyKind {
    /// A matching `Deny` statement.
    Explicit,
    /// No matching `Allow`.
    Implicit,
    /// `isAuthorized: false`.
    Simple,
}

impl DenyKind {
    /// The body API Gateway sends.
    pub fn body(self) -> &'static str {
        match self {
            DenyKind::Explicit => {
                r#"{"Message":"User is not authorized to access this resource with an explicit deny"}"#
            }
            DenyKind::Implicit => r#"{"Message":"User is not authorized to access this resource"}"#,
            DenyKind::Simple => r#"{"message":"Forbidden"}"#,
        }
    }
}

/// The authorizer's answer was unusable (API Gateway answers 500).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid authorizer response: {0}")]
pub struct InvalidResponse(pub &'static str);

/// Glob match with `*` (any run, may cross `/`) and `?` (one character).
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Evaluates an IAM policy document against `method_arn`: any matching
/// Deny wins, else a matching Allow, else implicit deny.
pub fn evaluate_policy(policy: &Value, method_arn: &str) -> Decision {
    let statements = match policy.get("Statement") {
        Some(Value::Array(a)) => a.iter().collect::<Vec<_>>(),
        Some(obj @ Value::Object(_)) => vec![obj],
        _ => Vec::new(),
    };
    let mut allowed = false;
    for st in statements {
        let action_ok = strings(st.get("Action"))
            .iter()
            .any(|a| matches!(*a, "execute-api:Invoke" | "execute-api:*" | "*"));
        let resource_ok = strings(st.get("Resource"))
            .iter()
            .any(|r| glob(r, method_arn));
        if !(action_ok && resource_ok) {
            continue;
        }
        match st.get("Effect").and_then(Value::as_str) {
            Some(e) if e.eq_ignore_ascii_case("deny") => return Decision::Deny(DenyKind::Explicit),
            Some(e) if e.eq_ignore_ascii_case("allow") => allowed = true,
            _ => {}
        }
    }
    if allowed {
        Decision::Allow {
            principal_id: None,
            context: Map::new(),
            policy: None,
        }
    } else {
        Decision::Deny(DenyKind::Implicit)
    }
}

/// Parses an IAM-policy authorizer response (without evaluating it yet).
pub fn parse_policy_response(output: &Value) -> Result<Decision, InvalidResponse> {
    let obj = output.as_object().ok_or(InvalidResponse("not an object"))?;
    let principal = match obj.get("principalId") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(InvalidResponse("principalId missing")),
    };
    let policy = obj
        .get("policyDocument")
        .filter(|p| p.is_object())
        .ok_or(InvalidResponse("policyDocument missing"))?;
    let context = match obj.get("context") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(InvalidResponse("context is not an object")),
    };
    Ok(Decision::Allow {
        principal_id: Some(principal),
        context,
        policy: Some(policy.clone()),
    })
}

/// Re-evaluates a parsed (maybe cached) policy decision for `method_arn`.
pub fn apply_policy(decision: &Decision, method_arn: &str) -> Decision {
    match decision {
        Decision::Allow {
            policy: Some(policy),
            ..
        } => match evaluate_policy(policy, method_arn) {
            Decision::Allow { .. } => decision.clone(),
            deny => deny,
        },
        other => other.clone(),
    }
}

/// Parses a simple response (`{"isAuthorized": bool, "context": {...}}`).
pub fn parse_simple_response(output: &Value) -> Result<Decision, InvalidResponse> {
    match output.get("isAuthorized") {
        Some(Value::Bool(true)) => Ok(Decision::Allow {
            principal_id: None,
            context: output
                .get("context")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            policy: None,
        }),
        Some(Value::Bool(false)) => Ok(Decision::Deny(DenyKind::Simple)),
        _ => Err(InvalidResponse("isAuthorized is not a boolean")),
    }
}

/// REST context values are delivered as strings; objects and arrays are
/// not allowed there.
pub fn stringify_context(
    context: &Map<String, Value>,
) -> Result<Map<String, Value>, InvalidResponse> {
    context
        .iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Null => String::new(),
                _ => {
                    return Err(InvalidResponse(
                        "context values must be string, number or boolean",
                    ));
                }
            };
            Ok((k.clone(), Value::String(s)))
        })
        .collect()
}

/// Cached authorizer decisions with a TTL. Bounded; counts hits.
#[derive(Debug, Default)]
pub struct DecisionCache {
    map: Mutex<HashMap<String, (Decision, Instant)>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Most cached decisions.
pub const CACHE_MAX: usize = 10_000;

impl DecisionCache {
    /// A fresh decision for `key`, if cached.
    pub fn get(&self, key: &str, now: Instant) -> Option<Decision> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(key) {
            Some((d, until)) if *until > now => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(d.clone())
            }
            _ => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Stores a decision for `ttl` (nothing when zero).
    pub fn put(&self, key: String, decision: Decision, ttl: Duration, now: Instant) {
        if ttl.is_zero() {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CACHE_MAX {
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= CACHE_MAX {
                map.clear();
            }
        }
        map.insert(key, (decision, now + ttl));
    }

    /// (hits, misses) so far.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ARN: &str = "arn:aws:execute-api:us-east-1:123456789012:abc/Prod/GET/pets/42";

    #[test]
    fn glob_rules() {
        assert!(glob("arn:*", ARN));
        assert!(glob(
            "arn:aws:execute-api:us-east-1:123456789012:abc/Prod/GET/*",
            ARN
        ));
        assert!(glob("*/GET/pets/??", ARN));
        assert!(!glob("*/POST/*", ARN));
        assert!(!glob("*/pets/4", ARN));
        assert!(glob("*", ""));
    }

    #[test]
    fn deny_wins_over_allow() {
        let p = json!({"Statement": [
            {"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": "*"},
            {"Effect": "Deny", "Action": ["execute-api:Invoke"], "Resource": ["*/GET/pets/*"]}]});
        assert_eq!(evaluate_policy(&p, ARN), Decision::Deny(DenyKind::Explicit));
        let p = json!({"Statement": [{"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": "*/POST/*"}]});
        assert_eq!(evaluate_policy(&p, ARN), Decision::Deny(DenyKind::Implicit));
        let p = json!({"Statement": {"Effect": "Allow", "Action": "*", "Resource": ARN}});
        assert!(matches!(evaluate_policy(&p, ARN), Decision::Allow { .. }));
    }

    #[test]
    fn responses_parse_and_cached_policies_are_reevaluated() {
        let out = json!({"principalId": "u1", "policyDocument": {"Statement": [
            {"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": "*/GET/pets/*"}]},
            "context": {"tier": 2, "ok": true}});
        let d = parse_policy_response(&out).unwrap();
        assert!(matches!(apply_policy(&d, ARN), Decision::Allow { .. }));
        assert_eq!(
            apply_policy(&d, "arn:x/Prod/DELETE/pets/1"),
            Decision::Deny(DenyKind::Implicit)
        );
        assert!(parse_policy_response(&json!({"policyDocument": {}})).is_err());
        assert!(parse_simple_response(&json!({"isAuthorized": "yes"})).is_err());
        assert_eq!(
            parse_simple_response(&json!({"isAuthorized": false})).unwrap(),
            Decision::Deny(DenyKind::Simple)
        );
        let Decision::Allow { context, .. } = d else {
            panic!()
        };
        assert_eq!(stringify_context(&context).unwrap()["tier"], "2");
        assert!(stringify_context(json!({"a": [1]}).as_object().unwrap()).is_err());
    }

    #[test]
    fn cache_ttl_and_counts() {
        let c = DecisionCache::default();
        let t = Instant::now();
        c.put(
            "k".into(),
            Decision::Unauthorized,
            Duration::from_secs(10),
            t,
        );
        c.put("z".into(), Decision::Unauthorized, Duration::ZERO, t);
        assert_eq!(
            c.get("k", t + Duration::from_secs(5)),
            Some(Decision::Unauthorized)
        );
        assert_eq!(c.get("k", t + Duration::from_secs(11)), None);
        assert_eq!(c.get("z", t), None);
        assert_eq!(c.stats(), (1, 2));
    }
}
