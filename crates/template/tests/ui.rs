//! Golden tests: each `tests/ui/<name>.yaml` (or `<name>.template.json`)
//! is loaded; a template that loads is compared with `<name>.json` (the
//! model plus warnings), one that fails with `<name>.err` (the error text).
//! Run with `BLESS=1` to (re)write the expected files.
//!
//! A template may start with comment lines that set options:
//! `# overrides: K=V ParameterKey=K2,ParameterValue=V2` and
//! `# options: region=eu-west-1 account=111122223333 stack=shop`.
//! Absolute paths are replaced by `$DIR` so the files are machine-independent.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::fs;
use std::path::{Path, PathBuf};

use esb_template::{ResolveOptions, load, parse_parameter_overrides};

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui")
}

fn cases() -> Vec<(String, PathBuf)> {
    let mut cases: Vec<(String, PathBuf)> = fs::read_dir(ui_dir())
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            let file = path.file_name()?.to_str()?.to_string();
            let name = file
                .strip_suffix(".yaml")
                .or_else(|| file.strip_suffix(".template.json"))?
                .to_string();
            Some((name, path))
        })
        .collect();
    cases.sort();
    cases
}

fn options(text: &str) -> ResolveOptions {
    let mut opts = ResolveOptions::new();
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        if let Some(rest) = line.strip_prefix("# overrides:") {
            opts = opts.parameters(parse_parameter_overrides(&[rest.trim()]).unwrap());
        }
        if let Some(rest) = line.strip_prefix("# options:") {
            for kv in rest.split_whitespace() {
                let (k, v) = kv.split_once('=').unwrap();
                opts = match k {
                    "region" => opts.region(v),
                    "account" => opts.account_id(v),
                    "stack" => opts.stack_name(v),
                    other => panic!("unknown option {other}"),
                };
            }
        }
    }
    opts
}

/// What a case produces: (expected file extension, contents).
fn run(path: &Path) -> (&'static str, String) {
    let text = fs::read_to_string(path).unwrap();
    let dir = ui_dir().display().to_string();
    match load(path, &options(&text)) {
        Ok(loaded) => {
            let json = serde_json::to_string_pretty(&loaded).unwrap();
            ("json", json.replace(&dir, "$DIR") + "\n")
        }
        Err(e) => ("err", e.to_string().replace(&dir, "$DIR") + "\n"),
    }
}

#[test]
fn ui() {
    let bless = std::env::var_os("BLESS").is_some();
    let cases = cases();
    assert!(
        cases.len() >= 15,
        "expected at least 15 ui cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for (name, path) in &cases {
        let (ext, got) = run(path);
        let expected_path = ui_dir().join(format!("{name}.{ext}"));
        let other = ui_dir().join(format!(
            "{name}.{}",
            if ext == "json" { "err" } else { "json" }
        ));
        if bless {
            fs::write(&expected_path, &got).unwrap();
            let _ = fs::remove_file(&other);
            continue;
        }
        match fs::read_to_string(&expected_path) {
            Ok(want) if want == got => {}
            Ok(want) => failures.push(format!(
                "{name}: output differs from {}\n--- expected\n{want}\n--- got\n{got}",
                expected_path.display()
            )),
            Err(_) => failures.push(format!(
                "{name}: produced .{ext} but {} is missing (expected .{}?)\n{got}",
                expected_path.display(),
                if ext == "json" { "err" } else { "json" }
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(run with BLESS=1 to accept)",
        failures.join("\n\n")
    );
}

/// Short tags and their long forms must mean exactly the same thing.
#[test]
fn short_tags_and_long_forms_give_the_same_model() {
    let short = load(&ui_dir().join("short_tags.yaml"), &ResolveOptions::new()).unwrap();
    let long = load(&ui_dir().join("long_forms.yaml"), &ResolveOptions::new()).unwrap();
    assert_eq!(short.app.functions, long.app.functions);
    assert_eq!(short.app.routes, long.app.routes);
    assert_eq!(short.app.tables, long.app.tables);
    assert_eq!(short.app.buckets, long.app.buckets);
    let msgs = |w: &[esb_template::Diagnostic]| {
        w.iter()
            .map(|d| (d.kind, d.message.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(msgs(&short.warnings), msgs(&long.warnings));
}

/// The JSON template is the same app as its YAML twin.
#[test]
fn json_template_matches_its_yaml_twin() {
    let json = load(
        &ui_dir().join("json_template.template.json"),
        &ResolveOptions::new(),
    )
    .unwrap();
    let yaml = load(
        &ui_dir().join("json_template_twin.yaml"),
        &ResolveOptions::new(),
    )
    .unwrap();
    assert_eq!(json.app, yaml.app);
}
