//! Local resolution: parameters, conditions, `Globals`, and every intrinsic
//! function, producing resources whose properties hold plain values only.

mod intrinsics;
mod nested;
mod params;
mod refs;

use std::collections::{HashMap, HashSet};

use crate::diag::{Diagnostic, DiagnosticKind, Locator, Severity};
use crate::node::Node;
use crate::options::ResolveOptions;

/// Collects diagnostics and locates them in the source.
pub(crate) struct Ctx<'a> {
    pub file: String,
    pub locator: Locator<'a>,
    pub diags: Vec<Diagnostic>,
}

impl Ctx<'_> {
    pub(crate) fn report(
        &mut self,
        severity: Severity,
        kind: DiagnosticKind,
        path: &str,
        message: impl Into<String>,
    ) {
        let (line, column) = match self.locator.locate(path) {
            Some((l, c)) => (Some(l), Some(c)),
            None => (None, None),
        };
        let d = Diagnostic {
            severity,
            kind,
            file: self.file.clone(),
            line,
            column,
            path: path.to_string(),
            message: message.into(),
        };
        // The same property can be resolved twice (a name, then the whole
        // resource): report it once.
        if !self.diags.contains(&d) {
            self.diags.push(d);
        }
    }

    pub(crate) fn error(&mut self, kind: DiagnosticKind, path: &str, message: impl Into<String>) {
        self.report(Severity::Error, kind, path, message);
    }

    pub(crate) fn warn(&mut self, kind: DiagnosticKind, path: &str, message: impl Into<String>) {
        self.report(Severity::Warning, kind, path, message);
    }
}

/// One resource as declared (after `Globals` were merged in).
pub(crate) struct Resource {
    pub id: String,
    pub rtype: String,
    pub props: Node,
    pub metadata: Node,
    pub condition: Option<String>,
}

/// The sections of a template, unresolved.
pub(crate) struct Sections {
    pub parameters: Vec<(String, Node)>,
    pub mappings: Node,
    pub conditions: Vec<(String, Node)>,
    pub resources: Vec<Resource>,
    pub globals: Node,
    pub outputs: Vec<(String, Node)>,
}

/// A resource whose properties were resolved.
pub(crate) struct Resolved {
    pub id: String,
    pub rtype: String,
    pub props: Node,
    pub metadata: Node,
}

/// Everything resolution produced for the model builder.
pub(crate) struct ResolvedTemplate {
    /// `Outputs` values, resolved.
    pub outputs: Vec<(String, String)>,
    /// Nested stacks that loaded: (logical id, model).
    pub children: Vec<(String, crate::model::AppModel)>,
    pub parameters: Vec<(String, Option<String>)>,
    pub resources: Vec<Resolved>,
    /// Resolved `Globals.Api` / `Globals.HttpApi`, for the implicit APIs.
    pub global_api: Node,
    pub global_http_api: Node,
    /// Function ARN and name → logical id, to recognise template functions
    /// in authorizers and notifications.
    pub function_ids: HashMap<String, String>,
    /// Layer ARN → logical id.
    pub layer_ids: HashMap<String, String>,
}

pub(super) enum Miss {
    NotFound,
    Dropped,
    UnknownAttribute,
}

pub(crate) struct Resolver<'a, 'c> {
    opts: &'a ResolveOptions,
    t: &'a Sections,
    pub ctx: &'c mut Ctx<'a>,
    params: HashMap<String, Option<Node>>,
    cond_cache: HashMap<String, bool>,
    cond_stack: Vec<String>,
    active: HashMap<String, usize>,
    dropped: HashSet<String>,
    names: HashMap<String, String>,
    name_stack: Vec<String>,
    /// Directory of the template, for `AWS::Include` locations.
    pub base_dir: std::path::PathBuf,
    includes: usize,
    /// Templates from the root down to this one (cycle guard).
    pub chain: Vec<std::path::PathBuf>,
    /// Nested stacks by logical id; `None` when it could not be loaded.
    children: Vec<(String, Option<crate::NestedStack>)>,
}

/// Nested stacks deeper than this are not loaded.
pub(super) const MAX_DEPTH: usize = 8;

pub(super) fn is_stack(rtype: &str) -> bool {
    rtype == "AWS::Serverless::Application" || rtype == "AWS::CloudFormation::Stack"
}

impl<'a, 'c> Resolver<'a, 'c> {
    pub(crate) fn new(opts: &'a ResolveOptions, t: &'a Sections, ctx: &'c mut Ctx<'a>) -> Self {
        Resolver {
            opts,
            t,
            ctx,
            params: HashMap::new(),
            cond_cache: HashMap::new(),
            cond_stack: Vec::new(),
            active: HashMap::new(),
            dropped: HashSet::new(),
            names: HashMap::new(),
            name_stack: Vec::new(),
            base_dir: std::path::PathBuf::from("."),
            includes: 0,
            chain: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Runs every step in order: parameters, conditions, resource
    /// selection, then property resolution.
    pub(crate) fn run(mut self) -> ResolvedTemplate {
        let t = self.t;
        let parameters = self.parameters();

        for (name, _) in &t.conditions {
            self.condition(name, &format!("Conditions.{name}"));
        }

        let mut cdk_warned = false;
        for (i, r) in t.resources.iter().enumerate() {
            if r.rtype == "AWS::CDK::Metadata" {
                // CDK telemetry: never created locally. Its condition is often
                // left undeclared in trimmed templates; say so once.
                if let Some(c) = &r.condition
                    && !t.conditions.iter().any(|(n, _)| n == c)
                    && !cdk_warned
                {
                    cdk_warned = true;
                    self.ctx.warn(
                        DiagnosticKind::UnknownCondition,
                        &format!("Resources.{}.Condition", r.id),
                        format!("AWS::CDK::Metadata resources are ignored (their condition {c} is not declared)"),
                    );
                }
                self.dropped.insert(r.id.clone());
                continue;
            }
            let keep = match &r.condition {
                Some(c) => self.condition(c, &format!("Resources.{}.Condition", r.id)),
                None => true,
            };
            if keep {
                self.active.insert(r.id.clone(), i);
            } else {
                self.dropped.insert(r.id.clone());
            }
        }

        let mut function_ids = HashMap::new();
        let mut layer_ids = HashMap::new();
        for r in &t.resources {
            if !self.active.contains_key(&r.id) {
                continue;
            }
            match r.rtype.as_str() {
                "AWS::Serverless::Function" | "AWS::Lambda::Function" => {
                    if let Ok(arn) = self.get_att(&r.id, "Arn") {
                        function_ids.insert(arn, r.id.clone());
                    }
                    let name = self.base_name(&r.id);
                    function_ids.insert(name, r.id.clone());
                }
                "AWS::Serverless::LayerVersion" | "AWS::Lambda::LayerVersion" => {
                    let arn = self.ref_value(&r.id);
                    layer_ids.insert(arn, r.id.clone());
                }
                _ => {}
            }
        }

        let mut resources = Vec::new();
        for r in &t.resources {
            if !self.active.contains_key(&r.id) {
                continue;
            }
            let base = format!("Resources.{}", r.id);
            let raw = intrinsics::with_asset(&r.props, &r.metadata);
            let props = self
                .resolve(
                    raw.as_ref().unwrap_or(&r.props),
                    &format!("{base}.Properties"),
                )
                .unwrap_or(Node::Map(Vec::new()));
            let metadata = self
                .resolve(&r.metadata, &format!("{base}.Metadata"))
                .unwrap_or(Node::Null);
            resources.push(Resolved {
                id: r.id.clone(),
                rtype: r.rtype.clone(),
                props,
                metadata,
            });
        }

        let global_api = t
            .globals
            .get("Api")
            .and_then(|g| self.resolve(g, "Globals.Api"))
            .unwrap_or(Node::Null);
        let global_http_api = t
            .globals
            .get("HttpApi")
            .and_then(|g| self.resolve(g, "Globals.HttpApi"))
            .unwrap_or(Node::Null);

        // Outputs: kept for `GetAtt Child.Outputs.X` in a parent; a
        // dangling reference in them is something CloudFormation rejects.
        let mut outputs = Vec::new();
        for (name, out) in &t.outputs {
            let keep = match out.get("Condition").and_then(Node::as_str) {
                Some(c) => self.condition(c, &format!("Outputs.{name}.Condition")),
                None => true,
            };
            if keep
                && let Some(v) = out.get("Value")
                && let Some(value) = self.text(v, &format!("Outputs.{name}.Value"))
            {
                outputs.push((name.clone(), value));
            }
        }
        for r in &t.resources {
            if self.active.contains_key(&r.id) && is_stack(&r.rtype) {
                self.child(&r.id);
            }
        }
        let children = std::mem::take(&mut self.children)
            .into_iter()
            .filter_map(|(id, c)| c.map(|c| (id, c.app)))
            .collect();

        ResolvedTemplate {
            outputs,
            children,
            parameters,
            resources,
            global_api,
            global_http_api,
            function_ids,
            layer_ids,
        }
    }
}
