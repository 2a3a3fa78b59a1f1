//! `esb logs`: prints the stored log lines of a function (or all), and with
//! `-f` follows new ones, from the data directory of `esb up`. Lines of
//! several functions come from several files; both the stored lines and
//! the followed ones are printed in time order (followed lines are held
//! [`HOLD`] so that the lines of one poll, read file by file, are merged by
//! their timestamps first).

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
        let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, LogRecord)>();
        let follow_dir = dir.clone();
        let follow_fn = function.map(str::to_string);
        let follower = std::thread::spawn(move || {
            esb_services_logs::follow(
                &follow_dir,
                follow_fn.as_deref(),
                Duration::from_millis(200),
                |r| tx.send((std::time::Instant::now(), r.clone())).is_ok(),
            )
        });
        let mut pending: Vec<(std::time::Instant, LogRecord)> = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(item) => pending.push(item),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    drain_in_order(&mut pending, None, &mut |r| {
                        if wanted(r) {
                            print(r)
                        }
                    });
                    break;
                }
            }
            drain_in_order(&mut pending, Some(HOLD), &mut |r| {
                if wanted(r) {
                    print(r)
                }
            });
        }
        match follower.join() {
            Ok(result) => result?,
            Err(_) => anyhow::bail!("the log follower failed"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How long a followed line waits for lines of other functions read in
/// the same poll (the poll interval plus slack).
const HOLD: Duration = Duration::from_millis(300);

/// Prints, in timestamp order, the pending records received at least
/// `hold` ago (all of them when `hold` is `None`).
fn drain_in_order(
    pending: &mut Vec<(std::time::Instant, LogRecord)>,
    hold: Option<Duration>,
    print: &mut dyn FnMut(&LogRecord),
) {
    let now = std::time::Instant::now();
    let (mut ready, rest): (Vec<_>, Vec<_>) = pending
        .drain(..)
        .partition(|(at, _)| hold.is_none_or(|h| now.duration_since(*at) >= h));
    *pending = rest;
    // Stable: lines with one timestamp keep their file order.
    ready.sort_by(|a, b| a.1.ts.cmp(&b.1.ts));
    for (_, r) in &ready {
        print(r);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ts: &str, function: &str) -> LogRecord {
        serde_json::from_value(serde_json::json!({
            "ts": ts, "function": function, "worker": "w", "request_id": null, "line": "x"
        }))
        .unwrap()
    }

    #[test]
    fn followed_lines_of_several_files_print_in_time_order() {
        let old = std::time::Instant::now() - Duration::from_secs(1);
        // One poll reads file a, then file b.
        let mut pending = vec![
            (old, record("2026-01-01T00:00:00.300Z", "a")),
            (old, record("2026-01-01T00:00:00.100Z", "b")),
            (old, record("2026-01-01T00:00:00.200Z", "a")),
            (
                std::time::Instant::now(),
                record("2026-01-01T00:00:00.050Z", "c"),
            ),
        ];
        let mut printed = Vec::new();
        drain_in_order(&mut pending, Some(HOLD), &mut |r| {
            printed.push(r.ts.clone())
        });
        assert_eq!(
            printed,
            [
                "2026-01-01T00:00:00.100Z",
                "2026-01-01T00:00:00.200Z",
                "2026-01-01T00:00:00.300Z"
            ]
        );
        assert_eq!(
            pending.len(),
            1,
            "the fresh line waits for its poll's others"
        );
        drain_in_order(&mut pending, None, &mut |r| printed.push(r.ts.clone()));
        assert_eq!(printed.len(), 4);
    }
}
