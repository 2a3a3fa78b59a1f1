//! Per-function credentials and identity policies: what a function may do
//! on ESB's S3, DynamoDB and Invoke API, evaluated as AWS evaluates the
//! identity-based policies of a function's execution role.
//!
//! Owns:
//! * the policy model and its evaluation ([`policy`]: `Effect`,
//!   `Action`/`NotAction`, `Resource`/`NotResource` with `*` and `?`,
//!   explicit deny wins, default deny; `Condition` is not evaluated: the
//!   statement applies as if it held, and loading warns naming the keys);
//! * SAM policy templates ([`templates`]) and AWS managed policies
//!   ([`managed`]) expanded to statements;
//! * which action and resource a request needs ([`actions`]);
//! * per-function credentials derived from the box's secret ([`keys`]);
//! * [`Iam`]: the compiled policies of every function, keyed by its access
//!   key id, the decision per request (cached per function), the `warn` log
//!   line and the `enforce` refusal in AWS's wording.
//!
//! Must not: do I/O, know how a service answers (the services turn a
//! [`Denied`] into their own error shape), or evaluate resource policies,
//! SCPs, permission boundaries or session policies (none exist locally).
//!
//! The box's own key (`credentials.json`) is the administrator: every call
//! signed with it is allowed. A call signed with a function's key is that
//! function's role.
#![forbid(unsafe_code)]

pub mod actions;
pub mod keys;
pub mod managed;
pub mod pattern;
pub mod policy;
pub mod templates;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde_json::Value;

pub use actions::Need;
pub use keys::FunctionCredentials;
pub use policy::{Decision, Statement};

/// Partition, region and account that ARNs are built with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArnContext {
    /// `aws`, `aws-cn`, `aws-us-gov`.
    pub partition: String,
    /// `us-east-1`.
    pub region: String,
    /// 12 digits.
    pub account_id: String,
}

impl ArnContext {
    /// The context for `region` (its partition follows from it) and
    /// `account_id`.
    pub fn new(region: &str, account_id: &str) -> Self {
        let partition = if region.starts_with("cn-") {
            "aws-cn"
        } else if region.starts_with("us-gov-") {
            "aws-us-gov"
        } else {
            "aws"
        };
        Self {
            partition: partition.to_string(),
            region: region.to_string(),
            account_id: account_id.to_string(),
        }
    }
}

/// How policies are applied (`iam_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Not evaluated: every call with a valid signature is allowed.
    Off,
    /// Evaluated; a call AWS would refuse succeeds and is logged once.
    #[default]
    Warn,
    /// Evaluated; a call AWS would refuse is refused as AWS does.
    Enforce,
}

/// One entry of a function's permissions, as the template gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicySource {
    /// An AWS managed policy, by name or ARN.
    Managed(String),
    /// A SAM policy template with its parameters (resolved to local names).
    Template {
        /// `DynamoDBCrudPolicy`.
        name: String,
        /// `{TableName: orders}`.
        parameters: BTreeMap<String, String>,
    },
    /// A policy document (inline `Statement`s, a role's `Policies[]`, a
    /// template's `AWS::IAM::ManagedPolicy`).
    Document {
        /// Where it comes from, for messages (`inline policy 1`,
        /// `role AppRole policy readers`).
        name: String,
        /// The document.
        document: Value,
    },
}

/// What the template says about one function's permissions.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionPermissions {
    /// Canonical function name.
    pub function: String,
    /// Its execution role's name (the principal in messages).
    pub role_name: String,
    /// Every policy of the role.
    pub policies: Vec<PolicySource>,
    /// The function's role is defined outside the template (an ARN): its
    /// permissions are unknown and every call is allowed.
    pub external_role: Option<String>,
}

/// Who signed a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The box's own credentials (or an unknown key the caller verified
    /// some other way): allowed everything.
    Admin,
    /// A function's credentials.
    Function(String),
}

/// A refused call, with AWS's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Denied {
    /// The function whose credentials signed the call.
    pub function: String,
    /// `dynamodb:PutItem`.
    pub action: String,
    /// The resource ARN.
    pub resource: String,
    /// A `Deny` statement applied (else no statement allowed).
    pub explicit: bool,
    /// `User: arn:aws:sts::...:assumed-role/<role>/<function> is not
    /// authorized to perform: <action> on resource: <resource> because
    /// no identity-based policy allows the <action> action`.
    pub message: String,
}

/// Most cached decisions per function; the cache starts over past it (an
/// S3 key per object would otherwise grow it without bound).
const CACHE_LIMIT: usize = 4096;

struct Entry {
    function: String,
    secret: String,
    principal_arn: String,
    statements: Vec<Statement>,
    /// Permissions unknown (role outside the template): allow everything.
    unknown: bool,
    /// `action\nresource` → decision. Also dedupes `warn` log lines.
    cache: Mutex<HashMap<String, Decision>>,
}

#[derive(Default)]
struct State {
    by_key: HashMap<String, Arc<Entry>>,
}

/// The functions' credentials and compiled policies. Cheap per request: a
/// read lock, a hash lookup and (on a cache miss) a scan of the function's
/// statements.
pub struct Iam {
    mode: Mode,
    ctx: ArnContext,
    box_secret: String,
    state: RwLock<Arc<State>>,
}

impl std::fmt::Debug for Iam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Iam")
            .field("mode", &self.mode)
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

impl Iam {
    /// No function loaded yet. `box_secret` is the box's secret access key:
    /// function credentials are derived from it.
    pub fn new(mode: Mode, ctx: ArnContext, box_secret: &str) -> Self {
        Self {
            mode,
            ctx,
            box_secret: box_secret.to_string(),
            state: RwLock::new(Arc::new(State::default())),
        }
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The ARN context.
    pub fn arn_context(&self) -> &ArnContext {
        &self.ctx
    }

    /// The credentials `function` gets (the same at every start with the
    /// same box secret).
    pub fn credentials(&self, function: &str) -> FunctionCredentials {
        keys::derive(&self.box_secret, function)
    }

    /// Compiles every function's policies and makes their credentials
    /// valid, replacing what was loaded before (a reload). Returns the
    /// warnings (unknown templates or managed policies, conditions,
    /// unusable statements), each naming its function.
    pub fn load(&self, functions: &[FunctionPermissions]) -> Vec<String> {
        let mut warnings = Vec::new();
        let mut state = State::default();
        for f in functions {
            let mut own = Vec::new();
            let statements = compile(&f.policies, &self.ctx, &mut own);
            if let Some(role) = &f.external_role {
                own.push(format!(
                    "role {role} is not defined in the template; its permissions are unknown and every call is allowed"
                ));
            }
            warnings.extend(
                own.into_iter()
                    .map(|w| format!("warning: iam: function {}: {w}", f.function)),
            );
            let creds = self.credentials(&f.function);
            let entry = Entry {
                function: f.function.clone(),
                secret: creds.secret_access_key,
                principal_arn: format!(
                    "arn:{}:sts::{}:assumed-role/{}/{}",
                    self.ctx.partition, self.ctx.account_id, f.role_name, f.function
                ),
                statements,
                unknown: f.external_role.is_some(),
                cache: Mutex::new(HashMap::new()),
            };
            state.by_key.insert(creds.access_key_id, Arc::new(entry));
        }
        *self.state.write() = Arc::new(state);
        warnings
    }

    fn entry(&self, access_key_id: &str) -> Option<Arc<Entry>> {
        self.state.read().by_key.get(access_key_id).cloned()
    }

    /// The secret of a function's access key id (`None` for any other
    /// key: the caller checks the box's own).
    pub fn secret_for(&self, access_key_id: &str) -> Option<String> {
        self.entry(access_key_id).map(|e| e.secret.clone())
    }

    /// Who `access_key_id` is.
    pub fn principal(&self, access_key_id: &str) -> Principal {
        match self.entry(access_key_id) {
            Some(e) => Principal::Function(e.function.clone()),
            None => Principal::Admin,
        }
    }

    /// Checks one permission; see [`Iam::check_all`].
    pub fn check(&self, access_key_id: &str, action: &str, resource: &str) -> Result<(), Denied> {
        if self.mode == Mode::Off {
            return Ok(());
        }
        let Some(entry) = self.entry(access_key_id) else {
            return Ok(());
        };
        self.decide(&entry, action, resource)
    }

    /// Checks every permission a request needs, for the caller that signed
    /// it with `access_key_id`. The box's key (any key that is not a
    /// function's) is allowed everything. `warn` logs each refused
    /// (function, action, resource) once and allows; `enforce` refuses
    /// with the first permission missing.
    pub fn check_all(&self, access_key_id: &str, needs: &[Need]) -> Result<(), Denied> {
        if self.mode == Mode::Off {
            return Ok(());
        }
        let Some(entry) = self.entry(access_key_id) else {
            return Ok(());
        };
        for n in needs {
            self.decide(&entry, &n.action, &n.resource)?;
        }
        Ok(())
    }

    /// Whether `access_key_id` is a function's key and evaluation is on
    /// (callers skip building [`Need`]s otherwise).
    pub fn evaluates(&self, access_key_id: &str) -> bool {
        self.mode != Mode::Off && self.entry(access_key_id).is_some_and(|e| !e.unknown)
    }

    fn decide(&self, entry: &Entry, action: &str, resource: &str) -> Result<(), Denied> {
        if entry.unknown {
            return Ok(());
        }
        let key = format!("{action}\n{resource}");
        let (decision, fresh) = {
            let mut cache = entry.cache.lock();
            match cache.get(&key) {
                Some(d) => (d.clone(), false),
                None => {
                    let d = policy::evaluate(&entry.statements, action, resource);
                    if cache.len() >= CACHE_LIMIT {
                        cache.clear();
                    }
                    cache.insert(key, d.clone());
                    (d, true)
                }
            }
        };
        let explicit = match decision {
            Decision::Allow => return Ok(()),
            Decision::ImplicitDeny => None,
            Decision::ExplicitDeny(source) => Some(source),
        };
        if self.mode == Mode::Warn {
            if fresh {
                let why = match &explicit {
                    Some(source) => format!("an explicit Deny in {source} refuses it"),
                    None => format!(
                        "no policy allows it; on AWS it needs {}",
                        needed(&self.ctx, action, resource)
                    ),
                };
                tracing::warn!(
                    target: "esb::iam",
                    function = %entry.function,
                    action,
                    resource,
                    "iam: function {} is not allowed {action} on {resource} ({why}); allowed because iam_mode is warn, AWS would refuse it",
                    entry.function
                );
            }
            return Ok(());
        }
        let message = match &explicit {
            Some(_) => format!(
                "User: {} is not authorized to perform: {action} on resource: {resource} with an explicit deny in an identity-based policy",
                entry.principal_arn
            ),
            None => format!(
                "User: {} is not authorized to perform: {action} on resource: {resource} because no identity-based policy allows the {action} action",
                entry.principal_arn
            ),
        };
        tracing::info!(
            target: "esb::iam",
            function = %entry.function,
            action,
            resource,
            "iam: refused {action} on {resource} for function {}",
            entry.function
        );
        Err(Denied {
            function: entry.function.clone(),
            action: action.to_string(),
            resource: resource.to_string(),
            explicit: explicit.is_some(),
            message,
        })
    }
}

/// What a function's `Policies` would need for `action` on `resource`: a
/// SAM policy template when a common one fits, else a statement.
pub fn needed(ctx: &ArnContext, action: &str, resource: &str) -> String {
    match templates::suggest(action, resource, ctx) {
        Some(t) => format!("a policy such as `{t}`"),
        None => format!(
            "a statement such as `{{Effect: Allow, Action: {action}, Resource: {resource}}}`"
        ),
    }
}

/// Compiles a function's policy sources into statements.
pub fn compile(
    sources: &[PolicySource],
    ctx: &ArnContext,
    warnings: &mut Vec<String>,
) -> Vec<Statement> {
    let mut out = Vec::new();
    for source in sources {
        match source {
            PolicySource::Managed(name) => match managed::document(name) {
                Some(doc) => {
                    let label = managed::managed_name(name).unwrap_or(name);
                    out.extend(policy::parse_document(&doc, label, warnings));
                }
                None => warnings.push(format!(
                    "managed policy {name} is not known to ESB; its permissions are not evaluated (what it grants is denied in enforce mode)"
                )),
            },
            PolicySource::Template { name, parameters } => {
                match templates::expand(name, parameters, ctx) {
                    Ok(doc) => out.extend(policy::parse_document(&doc, name, warnings)),
                    Err(e) => warnings.push(format!(
                        "{e} (what it grants is denied in enforce mode)"
                    )),
                }
            }
            PolicySource::Document { name, document } => {
                out.extend(policy::parse_document(document, name, warnings));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
