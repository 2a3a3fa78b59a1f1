//! `esb generate`: writes the original system's `functions.yml` and
//! `routing.yml` from the template (format: docs/generate.md). The contents
//! come from `esb_template::output`; this file only writes them, each via a
//! temporary file and a rename, so a failure leaves no partial output.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::settings::CommonArgs;
use crate::validate::{emit, template_and_options};

/// Arguments of `esb generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// Template, overrides and configuration file.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Directory to write functions.yml and routing.yml into (created when
    /// missing).
    #[arg(short = 'o', long = "output-dir", value_name = "DIR")]
    pub output_dir: PathBuf,
}

/// Runs `esb generate`.
pub fn run(args: &GenerateArgs) -> anyhow::Result<ExitCode> {
    let (template, opts) = template_and_options(&args.common)?;
    let loaded = match esb_template::load(&template, &opts) {
        Ok(l) => l,
        Err(err) => {
            eprintln!("{err}");
            eprintln!("{}: nothing written", template.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    // Warnings do not stop generation (a local run lives with them).
    for w in &loaded.warnings {
        eprintln!("{w}");
    }
    let name = template.file_name().map_or_else(
        || template.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let files = esb_template::output::generate(&loaded.app, &name)?;
    let written = write_all(&args.output_dir, &files)?;
    let mut report = String::new();
    for path in written {
        report.push_str(&format!("wrote {}\n", path.display()));
    }
    report.push_str(&format!(
        "{} function(s), {} route(s)\n",
        loaded.app.functions.len(),
        loaded.app.routes.len()
    ));
    emit(&report)?;
    Ok(ExitCode::SUCCESS)
}

/// Creates `dir` and writes every file: all contents go to temporary files
/// first, and only when all of them are on disk are they renamed into
/// place. On failure the temporary files are removed.
fn write_all(
    dir: &Path,
    files: &[esb_template::output::GeneratedFile],
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let staged = files
        .iter()
        .map(|f| esb_app::files::Staged::write(&dir.join(f.name), f.contents.as_bytes(), 0o644))
        .collect::<Result<Vec<_>, _>>()?;
    let mut written = Vec::new();
    for file in staged {
        written.push(file.commit()?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use esb_template::output::GeneratedFile;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("esb-generate-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn writes_both_files_and_leaves_no_temporaries() {
        let dir = scratch("ok").join("nested");
        let files = vec![
            GeneratedFile {
                name: "functions.yml",
                contents: "functions: {}\n".into(),
            },
            GeneratedFile {
                name: "routing.yml",
                contents: "routes: []\n".into(),
            },
        ];
        let written = write_all(&dir, &files).unwrap();
        assert_eq!(written.len(), 2);
        assert_eq!(
            std::fs::read_to_string(dir.join("routing.yml")).unwrap(),
            "routes: []\n"
        );
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }

    #[test]
    fn a_failed_write_leaves_the_old_files_untouched() {
        let dir = scratch("fail");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("functions.yml"), "old\n").unwrap();
        // A directory where the second temporary file must go makes its
        // creation fail.
        std::fs::create_dir_all(dir.join(format!(".routing.yml.tmp-{}", std::process::id())))
            .unwrap();
        let files = vec![
            GeneratedFile {
                name: "functions.yml",
                contents: "new\n".into(),
            },
            GeneratedFile {
                name: "routing.yml",
                contents: "routes: []\n".into(),
            },
        ];
        assert!(write_all(&dir, &files).is_err());
        assert_eq!(
            std::fs::read_to_string(dir.join("functions.yml")).unwrap(),
            "old\n"
        );
        assert!(!dir.join("routing.yml").exists());
        assert!(
            !dir.join(format!(".functions.yml.tmp-{}", std::process::id()))
                .exists()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
