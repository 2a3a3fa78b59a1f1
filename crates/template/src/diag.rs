//! Located diagnostics (errors and warnings) and the source-text locator
//! that turns a property path into a line and column.

use std::fmt;

use serde::Serialize;

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The app cannot run: no model is produced.
    Error,
    /// CloudFormation would reject it, but a local run can go on.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// What a diagnostic is about, so callers can match on the cause instead of
/// the message text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiagnosticKind {
    /// The file is not valid YAML or JSON.
    Syntax,
    /// The file cannot be read.
    Io,
    /// The template, `Resources` or a resource is not a mapping, or a
    /// resource has no `Type`.
    NotAMapping,
    /// A YAML tag that is not a CloudFormation intrinsic.
    UnknownTag,
    /// A zip function without `Handler`.
    MissingHandler,
    /// A zip function without `Runtime`.
    MissingRuntime,
    /// A function without code (`CodeUri`, `InlineCode`, `ImageUri` or image
    /// build metadata).
    MissingCode,
    /// A route with a bad path template or method.
    InvalidRoute,
    /// Two routes with the same API, method and path.
    DuplicateRoute,
    /// A `Condition` name that is not declared.
    UnknownCondition,
    /// A condition or resource name that refers back to itself.
    CyclicReference,
    /// A `Ref`, `GetAtt`, `Sub` variable, mapping key or authorizer that
    /// names nothing; or an `ImportValue`.
    UnresolvedReference,
    /// A parameter with neither a default nor an override.
    MissingParameterValue,
    /// An override for a parameter the template does not declare.
    UnknownParameter,
    /// A value outside a parameter's `AllowedValues` or bounds.
    DisallowedValue,
    /// A property with the wrong shape (the default is used instead).
    InvalidValue,
    /// A layer that is not defined in this template.
    RemoteLayer,
    /// Code that lives in S3, which ESB cannot fetch offline.
    RemoteCode,
    /// A resource type ESB does not know.
    UnknownResourceType,
    /// A function event type SAM does not know.
    UnknownEventType,
    /// Two functions with the same `FunctionName`.
    DuplicateFunctionName,
    /// A `Globals` key SAM does not allow.
    UnsupportedGlobal,
    /// An API integration ESB does not run (mock, HTTP, AWS service).
    UnsupportedIntegration,
    /// A nested stack that cannot be loaded (remote, missing, cyclic, too deep).
    NestedStack,
    /// A property (or `Globals`/event key) SAM does not know for that
    /// resource or event type; the message names the nearest known one.
    UnknownProperty,
    /// A file over the size limit or nested deeper than the depth limit.
    TooLarge,
}

/// One finding, located in the template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// What kind of problem this is.
    pub kind: DiagnosticKind,
    /// The template file, as the caller named it.
    pub file: String,
    /// 1-based line, when it could be located.
    pub line: Option<usize>,
    /// 1-based column, when it could be located.
    pub column: Option<usize>,
    /// Dotted property path, e.g. `Resources.Fn.Properties.Handler`; empty
    /// for whole-file problems.
    pub path: String,
    /// Lower-case human message.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}: ", self.severity)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// The template cannot be turned into a runnable app; carries every error
/// found (at least one).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct TemplateError {
    /// The errors, in template order.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Finds the line and column of a property path in the source text by
/// following the keys down the indentation (serde_norway gives no per-node
/// positions). Flow mappings on one line are searched too.
pub(crate) struct Locator<'a> {
    lines: Vec<&'a str>,
}

impl<'a> Locator<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Locator {
            lines: text.lines().collect(),
        }
    }

    /// Indentation of the outermost keys: 0 in YAML, usually 2 in JSON.
    fn top_indent(&self) -> usize {
        self.lines
            .iter()
            .map(|l| (l, l.trim()))
            .find(|(_, t)| !t.is_empty() && !t.starts_with('#') && *t != "{" && *t != "---")
            .map_or(0, |(l, _)| indent_of(l))
    }

    /// Line and column (1-based) of the deepest key of `path` that can be
    /// found; `None` when not even the first key is there.
    pub(crate) fn locate(&self, path: &str) -> Option<(usize, usize)> {
        let mut found: Option<(usize, usize)> = None;
        // (line index, column index) of the parent key, and its indentation.
        let mut parent: Option<(usize, usize, usize)> = None;
        for seg in path.split('.').filter(|s| !s.is_empty()) {
            if seg.bytes().all(|b| b.is_ascii_digit()) {
                // List indices have no key to find; stay on the parent.
                continue;
            }
            match self.find_key(seg, parent) {
                Some((line, col)) => {
                    let indent = indent_of(self.lines[line]);
                    parent = Some((line, col, indent));
                    found = Some((line + 1, col + 1));
                }
                None => break,
            }
        }
        found
    }

    /// Searches for `key:` below `parent`: first on the rest of the parent's
    /// line (flow style), then on following lines indented deeper than it.
    fn find_key(&self, key: &str, parent: Option<(usize, usize, usize)>) -> Option<(usize, usize)> {
        let (start, parent_indent) = match parent {
            Some((line, col, indent)) => {
                if let Some(c) = find_key_in_line(self.lines[line], key, col + 1)
                    && c > col
                {
                    return Some((line, c));
                }
                (line + 1, Some(indent))
            }
            None => (0, None),
        };
        for (i, text) in self.lines.iter().enumerate().skip(start) {
            let trimmed = text.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = indent_of(text);
            if let Some(pi) = parent_indent {
                if indent <= pi && !trimmed.starts_with('-') && !trimmed.starts_with('}') {
                    return None;
                }
                if indent < pi {
                    return None;
                }
            }
            if let Some(c) = find_key_in_line(text, key, 0) {
                // Top-level keys sit at the template's outer indentation.
                if parent_indent.is_none() && indent != self.top_indent() {
                    continue;
                }
                return Some((i, c));
            }
        }
        None
    }
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Column (0-based byte index) of `key:` or `"key":` in `line` at or after
/// `from`, when the key starts a mapping entry (after indentation, `- `,
/// `{` or `,`).
fn find_key_in_line(line: &str, key: &str, from: usize) -> Option<usize> {
    let candidates = [
        format!("{key}:"),
        format!("\"{key}\":"),
        format!("'{key}':"),
        format!("\"{key}\" :"),
    ];
    let mut best: Option<usize> = None;
    for pat in &candidates {
        let mut search = from.min(line.len());
        while let Some(off) = line.get(search..).and_then(|s| s.find(pat.as_str())) {
            let pos = search + off;
            let before = line[..pos].trim_end();
            let ok = before.is_empty()
                || before.ends_with('-')
                || before.ends_with('{')
                || before.ends_with(',');
            let after = &line[pos + pat.len()..];
            let ends = after.is_empty() || after.starts_with(' ') || after.starts_with('\t');
            if ok && (ends || pat.starts_with('"') || pat.starts_with('\'')) {
                best = Some(best.map_or(pos, |b| b.min(pos)));
                break;
            }
            search = pos + 1;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "\
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.h
      Events:
        Hello:
          Type: Api
          Properties: {Path: /x, Method: get}
  Other:
    Properties:
      Handler: b
";

    #[test]
    fn locates_nested_keys() {
        let loc = Locator::new(SRC);
        assert_eq!(loc.locate("Resources.Fn.Properties.Handler"), Some((5, 7)));
        assert_eq!(
            loc.locate("Resources.Other.Properties.Handler"),
            Some((12, 7))
        );
    }

    #[test]
    fn locates_keys_in_flow_mappings() {
        let loc = Locator::new(SRC);
        assert_eq!(
            loc.locate("Resources.Fn.Properties.Events.Hello.Properties.Method"),
            Some((9, 34))
        );
    }

    #[test]
    fn a_missing_key_falls_back_to_its_parent() {
        let loc = Locator::new(SRC);
        assert_eq!(loc.locate("Resources.Fn.Properties.CodeUri"), Some((4, 5)));
    }

    #[test]
    fn display_has_the_compiler_shape() {
        let d = Diagnostic {
            severity: Severity::Error,
            kind: DiagnosticKind::MissingHandler,
            file: "template.yaml".into(),
            line: Some(12),
            column: Some(7),
            path: "Resources.Foo.Properties.Handler".into(),
            message: "zip function has no Handler".into(),
        };
        assert_eq!(
            d.to_string(),
            "template.yaml:12:7: error: Resources.Foo.Properties.Handler: zip function has no Handler"
        );
    }
}
