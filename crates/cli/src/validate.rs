//! `esb validate`: "would this deploy?". Loads the template, prints its
//! functions and routes as tables, then any warnings. Exit 0 only when the
//! template is clean; errors and warnings both give exit 1. What `esb up`
//! tolerates as a warning because only one function suffers (no handler,
//! runtime or code; two functions with one `FunctionName`) is an error
//! here, printed to stderr. The checking and rendering live in
//! `esb-template`; this file only wires them up.

use std::path::PathBuf;
use std::process::ExitCode;

use esb_config::SettingsLayer;
use esb_template::{Diagnostic, DiagnosticKind, ResolveOptions, Severity};

use crate::settings::CommonArgs;

/// Arguments of `esb validate`.
#[derive(Debug, Clone, clap::Args)]
pub struct ValidateArgs {
    /// Template, overrides and configuration file.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Print the whole app model and the warnings (or the errors) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The template to load and the resolution options, from flags > env >
/// `esb.toml` > defaults. Without `-t` (and no configured template),
/// `template.yaml`, `template.yml` and `template.json` are tried in turn.
pub fn template_and_options(common: &CommonArgs) -> anyhow::Result<(PathBuf, ResolveOptions)> {
    let settings = common.settings_for(&["validate"], SettingsLayer::default())?;
    let mut template = settings.template.clone();
    if common.template.is_none()
        && !template.exists()
        && let Some(found) = esb_template::find_template(std::path::Path::new("."))
    {
        template = found;
    }
    Ok((template, esb_app::template::resolve_options(&settings)))
}

/// Writes to stdout; a closed pipe (`esb validate | head`) is not an error.
pub(crate) fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Runs `esb validate`.
pub fn run(args: &ValidateArgs) -> anyhow::Result<ExitCode> {
    let (template, opts) = template_and_options(&args.common)?;
    match esb_template::load(&template, &opts) {
        Err(err) => {
            eprintln!("{err}");
            if args.json {
                #[derive(serde::Serialize)]
                struct Errors<'a> {
                    errors: &'a [Diagnostic],
                }
                let body = Errors {
                    errors: &err.diagnostics,
                };
                emit(&format!("{}\n", serde_json::to_string_pretty(&body)?))?;
            }
            eprintln!(
                "{}: {} error(s); the template cannot run",
                template.display(),
                err.diagnostics.len()
            );
            Ok(ExitCode::FAILURE)
        }
        Ok(mut loaded) => {
            let strict = promote_strict(&mut loaded.warnings);
            // What would fail at the first request (missing code folder or
            // handler module, unsupported runtime) fails validation.
            let mut problems = esb_app::checks::problems(&template, &loaded.app);
            // ... and so does a runtime whose interpreter version the
            // machine lacks (process runtime; docker runs it in an image).
            let settings = args
                .common
                .settings_for(&["validate"], SettingsLayer::default())?;
            if settings.runtime == esb_config::RuntimeKind::Process {
                let options = esb_app::checks::launch_options(&settings);
                problems.extend(loaded.app.functions.iter().filter_map(|f| {
                    esb_app::checks::function_problem(&template, f)
                        .is_none()
                        .then(|| esb_app::checks::host_problem(&template, f, &options))
                        .flatten()
                }));
            }
            for p in &problems {
                eprintln!("error: {p}");
            }
            for d in loaded
                .warnings
                .iter()
                .filter(|d| d.severity == Severity::Error)
            {
                eprintln!("{d}");
            }
            if strict > 0 {
                eprintln!(
                    "{}: {strict} error(s); `esb up` would serve the rest, but this would not deploy",
                    template.display()
                );
            }
            if args.json {
                emit(&format!("{}\n", serde_json::to_string_pretty(&loaded)?))?;
            } else {
                emit(&render_report(&loaded.app, &loaded.warnings))?;
            }
            if !problems.is_empty() {
                eprintln!(
                    "{}: {} function(s) cannot run",
                    template.display(),
                    problems.len()
                );
                Ok(ExitCode::FAILURE)
            } else if loaded.warnings.is_empty() {
                if !args.json {
                    emit(&format!("\n{}: ok\n", template.display()))?;
                }
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "{}: {} warning(s); CloudFormation would reject this template",
                    template.display(),
                    loaded.warnings.len()
                );
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// Marks the diagnostics that `esb up` lives with but a deploy would not
/// (a function that cannot run, a duplicated `FunctionName`) as errors;
/// returns how many.
fn promote_strict(diags: &mut [Diagnostic]) -> usize {
    let mut n = 0;
    for d in diags.iter_mut() {
        if matches!(
            d.kind,
            DiagnosticKind::MissingHandler
                | DiagnosticKind::MissingRuntime
                | DiagnosticKind::MissingCode
                | DiagnosticKind::DuplicateFunctionName
        ) {
            d.severity = Severity::Error;
            n += 1;
        }
    }
    n
}

/// The text report: tables, then the warnings, one per line.
fn render_report(app: &esb_template::AppModel, warnings: &[Diagnostic]) -> String {
    let mut out = esb_template::output::render_summary(app);
    if !warnings.is_empty() {
        out.push_str(&format!("\nWarnings ({})\n", warnings.len()));
        for w in warnings {
            out.push_str(&format!("{w}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lists_tables_then_warnings() {
        let text = "\
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      Runtime: python3.12
      Handler: app.handler
      CodeUri: src/
      Environment: {Variables: {X: !Ref Nowhere}}
      Events:
        Get: {Type: Api, Properties: {Path: /x, Method: get}}
";
        let loaded = esb_template::parse_str(
            text,
            "template.yaml",
            std::path::Path::new("/app"),
            &ResolveOptions::default(),
        )
        .unwrap();
        let report = render_report(&loaded.app, &loaded.warnings);
        let functions = report.find("Functions (1)").unwrap();
        let routes = report.find("Routes (1)").unwrap();
        let warnings = report.find("Warnings (1)").unwrap();
        assert!(functions < routes && routes < warnings, "{report}");
        assert!(
            report.contains(
                "template.yaml:8:33: warning: Resources.Fn.Properties.Environment.Variables.X"
            ),
            "{report}"
        );
    }

    #[test]
    fn unrunnable_functions_and_duplicate_names_are_errors_here() {
        let text = "\
Resources:
  A:
    Type: AWS::Serverless::Function
    Properties: {Runtime: python3.12, CodeUri: src/, FunctionName: same}
  B:
    Type: AWS::Serverless::Function
    Properties: {Runtime: python3.12, Handler: app.h, CodeUri: src/, FunctionName: same}
  C:
    Type: AWS::Serverless::Function
    Properties: {Runtime: python3.12, Handler: app.h, CodeUri: src/, Environment: {Variables: {X: !Ref Nowhere}}}
";
        let mut loaded = esb_template::parse_str(
            text,
            "template.yaml",
            std::path::Path::new("/app"),
            &ResolveOptions::default(),
        )
        .unwrap();
        assert_eq!(
            promote_strict(&mut loaded.warnings),
            2,
            "{:?}",
            loaded.warnings
        );
        let kinds: Vec<_> = loaded
            .warnings
            .iter()
            .map(|d| (d.kind, d.severity))
            .collect();
        assert!(kinds.contains(&(DiagnosticKind::MissingHandler, Severity::Error)));
        assert!(kinds.contains(&(DiagnosticKind::DuplicateFunctionName, Severity::Error)));
        assert!(kinds.contains(&(DiagnosticKind::UnresolvedReference, Severity::Warning)));
    }
}
