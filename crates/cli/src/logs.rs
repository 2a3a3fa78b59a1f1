//! `esb logs`: prints the stored log lines of a function (or all), and with
//! `-f` follows new ones, from the data directory of `esb up`.

use std::process::ExitCode;
use std::time::Duration;

use esb_services_logs::LogRecord;

use crate::settings::DataDirArgs;

/// Arguments of `esb logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Function name (default: every function).
    pub function: Option<String>,
    /// Keep printing new lines as they arrive.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// How many of the newest stored lines to print first.
    #[arg(short = 'n', long = "lines", default_value_t = 100)]
    pub lines: usize,
    /// Only lines of this request id.
    #[arg(long = "request-id", value_name = "ID")]
    pub request_id: Option<String>,
    /// Print the stored JSON records.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub dir: DataDirArgs,
}

/// Runs `esb logs`.
pub fn run(args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let settings = args.dir.settings(Default::default())?;
    let data_dir = settings.data_dir.clone();
    let dir = data_dir.join("logs");
    if !dir.exists() {
        anyhow::bail!(
            "no logs in {} (has `esb up --data-dir {}` run?)",
            dir.display(),
            data_dir.display()
        );
    }
    let wanted = |r: &LogRecord| {
        args.request_id
            .as_deref()
            .is_none_or(|id| r.request_id.as_deref() == Some(id))
    };
    let print = |r: &LogRecord| {
        if args.json {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        } else {
            println!("{} [{}] {}", r.ts, r.function, r.line);
        }
    };
    let function = args.function.as_deref();
    if let Some(name) = function
        && !known_function(&dir, &settings, name)
    {
        let mut have: Vec<String> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_suffix(".jsonl"))
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default();
        have.sort();
        anyhow::bail!(
            "no function {name:?}: it has no logs in {} and is not in {} (functions with logs: {})",
            dir.display(),
            settings.template.display(),
            if have.is_empty() {
                "none".to_string()
            } else {
                have.join(", ")
            }
        );
    }
    let records = esb_services_logs::read(&dir, function, usize::MAX)?;
    let records: Vec<&LogRecord> = records.iter().filter(|r| wanted(r)).collect();
    let skip = records.len().saturating_sub(args.lines);
    for r in &records[skip..] {
        print(r);
    }
    if args.follow {
        esb_services_logs::follow(&dir, function, Duration::from_millis(200), |r| {
            if wanted(r) {
                print(r);
            }
            true
        })?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `name` has a log file or is a function of the configured
/// template (which may not have logged yet).
fn known_function(dir: &std::path::Path, settings: &esb_config::Settings, name: &str) -> bool {
    let file = esb_services_logs::file_name(name);
    if dir.join(&file).exists() || dir.join(format!("{file}.1")).exists() {
        return true;
    }
    esb_app::template::load_template(settings).is_ok_and(|loaded| {
        loaded
            .app
            .functions
            .iter()
            .any(|f| f.name == name || f.logical_id == name || f.aliases.iter().any(|a| a == name))
    })
}
