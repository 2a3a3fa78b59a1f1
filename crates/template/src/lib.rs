//! SAM / CloudFormation template understanding for ESB.
//!
//! This crate owns: parsing YAML (with the short-form tags `!Ref`, `!Sub`,
//! `!GetAtt`…) and JSON templates; SAM `Globals` merging; `Parameters`
//! (defaults and overrides), `Conditions`, `Mappings` and pseudo
//! parameters; local resolution of intrinsic functions; and the typed
//! [`AppModel`] (functions, routes, APIs, authorizers, tables, buckets,
//! layers, schedules) with located [`Diagnostic`]s. It also renders the
//! model for `esb validate` (text tables) and `esb generate`
//! (`functions.yml` / `routing.yml` contents).
//!
//! It must not do I/O beyond reading the template and the files it names
//! (nested templates, OpenAPI documents, `AWS::Include` snippets): no
//! network, no process or container work, and no writing except
//! [`unpack_zip`], which the app calls explicitly to unpack a function's
//! local `.zip` code. Writing generated files is the CLI's job.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod archive;
mod build;
mod diag;
mod limits;
mod node;
mod options;
mod parse;
mod props;
mod resolve;

pub mod model;
pub mod output;

use std::path::{Path, PathBuf};

pub use archive::{UnpackError, unpack_zip};
pub use diag::{Diagnostic, DiagnosticKind, Severity, TemplateError};
pub use model::*;
pub use options::{OverrideError, ResolveOptions, parse_parameter_overrides};

use diag::Locator;
use resolve::{Ctx, Resolver};

/// A template that can run: its model and the warnings found on the way.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Loaded {
    /// The resolved application.
    pub app: AppModel,
    /// Warnings (never errors), in the order found.
    pub warnings: Vec<Diagnostic>,
}

/// The file names `esb` looks for when no template is named, in order.
pub const DEFAULT_TEMPLATE_NAMES: &[&str] = &["template.yaml", "template.yml", "template.json"];

/// Finds the default template in `dir` (`template.yaml`, then `.yml`, then
/// `.json`).
pub fn find_template(dir: &Path) -> Option<PathBuf> {
    DEFAULT_TEMPLATE_NAMES
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// Reads and resolves the template at `path`. Relative code paths are
/// resolved against the template's directory (made absolute).
pub fn load(path: &Path, opts: &ResolveOptions) -> Result<Loaded, TemplateError> {
    let root = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    load_with(path, opts, vec![build::abs_path(&root, ".")])
}

/// A nested stack as its parent sees it.
pub(crate) struct NestedStack {
    pub app: AppModel,
    pub outputs: std::collections::HashMap<String, String>,
}

/// Loads a nested template (`chain` = the templates above it, itself last).
pub(crate) fn load_nested(
    path: &Path,
    opts: &ResolveOptions,
    chain: Vec<PathBuf>,
) -> Result<(NestedStack, Vec<Diagnostic>), TemplateError> {
    let loaded = load_with(path, opts, chain)?;
    let outputs = loaded
        .app
        .outputs
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok((
        NestedStack {
            app: loaded.app,
            outputs,
        },
        loaded.warnings,
    ))
}

fn load_with(
    path: &Path,
    opts: &ResolveOptions,
    chain: Vec<PathBuf>,
) -> Result<Loaded, TemplateError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| TemplateError {
        diagnostics: vec![Diagnostic {
            severity: Severity::Error,
            kind: DiagnosticKind::Io,
            file: file.clone(),
            line: None,
            column: None,
            path: String::new(),
            message: format!("cannot read template: {e}"),
        }],
    })?;
    let parent = path.parent().unwrap_or(Path::new("."));
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let base_dir = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
    let base_dir = build::abs_path(&base_dir, ".");
    parse_inner(&text, &file, &base_dir, opts, chain)
}

/// Resolves template text. `file_name` is used in diagnostics and picks
/// JSON parsing when it ends in `.json`; `base_dir` anchors relative paths.
pub fn parse_str(
    text: &str,
    file_name: &str,
    base_dir: &Path,
    opts: &ResolveOptions,
) -> Result<Loaded, TemplateError> {
    parse_inner(text, file_name, base_dir, opts, Vec::new())
}

fn parse_inner(
    text: &str,
    file_name: &str,
    base_dir: &Path,
    opts: &ResolveOptions,
    chain: Vec<PathBuf>,
) -> Result<Loaded, TemplateError> {
    let mut ctx = Ctx {
        file: file_name.to_string(),
        locator: Locator::new(text),
        diags: Vec::new(),
    };
    let json = file_name.ends_with(".json") || text.trim_start().starts_with('{');
    let sections = parse::parse_tree(text, json, &mut ctx).and_then(|root| {
        let description = root.get("Description").and_then(node::Node::scalar_text);
        let transform = match root.get("Transform") {
            Some(node::Node::List(items)) => {
                items.iter().filter_map(node::Node::scalar_text).collect()
            }
            Some(t) => t.scalar_text().into_iter().collect(),
            None => Vec::new(),
        };
        parse::sections(root, &mut ctx).map(|s| (s, description, transform))
    });
    let Some((sections, description, transform)) = sections else {
        return Err(split(ctx.diags).0);
    };
    if ctx.diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(split(ctx.diags).0);
    }
    let mut resolver = Resolver::new(opts, &sections, &mut ctx);
    resolver.base_dir = base_dir.to_path_buf();
    resolver.chain = chain;
    let resolved = resolver.run();
    let builder = build::Builder {
        ctx: &mut ctx,
        base_dir: base_dir.to_path_buf(),
        stack_name: opts.stack_name.clone(),
        bodies: Default::default(),
    };
    let mut app = builder.build(resolved);
    app.description = description;
    app.transform = transform;
    let (errors, warnings) = split(ctx.diags);
    if !errors.diagnostics.is_empty() {
        return Err(errors);
    }
    Ok(Loaded { app, warnings })
}

fn split(mut diags: Vec<Diagnostic>) -> (TemplateError, Vec<Diagnostic>) {
    // Source order reads best; whole-file problems (no line) come first.
    diags.sort_by_key(|d| (d.line, d.column));
    let (errors, warnings): (Vec<_>, Vec<_>) = diags
        .into_iter()
        .partition(|d| d.severity == Severity::Error);
    (
        TemplateError {
            diagnostics: errors,
        },
        warnings,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_template_prefers_yaml_then_yml_then_json() {
        let dir = std::env::temp_dir().join(format!("esb-find-template-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(find_template(&dir), None);
        std::fs::write(dir.join("template.json"), "{}").unwrap();
        assert_eq!(find_template(&dir), Some(dir.join("template.json")));
        std::fs::write(dir.join("template.yml"), "").unwrap();
        assert_eq!(find_template(&dir), Some(dir.join("template.yml")));
        std::fs::write(dir.join("template.yaml"), "").unwrap();
        assert_eq!(find_template(&dir), Some(dir.join("template.yaml")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_file_is_a_located_io_error() {
        let err = load(
            Path::new("/nonexistent/template.yaml"),
            &ResolveOptions::new(),
        )
        .unwrap_err();
        assert_eq!(err.diagnostics[0].kind, DiagnosticKind::Io);
        assert!(
            err.to_string()
                .starts_with("/nonexistent/template.yaml: error: cannot read template")
        );
    }

    #[test]
    fn pseudo_parameter_defaults() {
        let text = "Resources:\n  Q:\n    Type: AWS::SQS::Queue\n    Properties:\n      QueueName: !Sub '${AWS::StackName}-${AWS::Region}-${AWS::AccountId}-${AWS::Partition}'\n";
        let loaded = parse_str(text, "t.yaml", Path::new("/"), &ResolveOptions::new()).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let custom = ResolveOptions::new()
            .stack_name("shop")
            .region("us-gov-west-1");
        let text = "Resources:\n  F:\n    Type: AWS::Serverless::Function\n    Properties:\n      InlineCode: x\n      Runtime: python3.12\n      Handler: !Sub '${AWS::StackName}.${AWS::Partition}'\n";
        let loaded = parse_str(text, "t.yaml", Path::new("/"), &custom).unwrap();
        assert_eq!(
            loaded.app.functions[0].handler.as_deref(),
            Some("shop.aws-us-gov")
        );
        let loaded = parse_str(text, "t.yaml", Path::new("/"), &ResolveOptions::new()).unwrap();
        assert_eq!(loaded.app.functions[0].handler.as_deref(), Some("esb.aws"));
    }
}
