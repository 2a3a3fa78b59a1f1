//! `esb ps`: asks a running `esb up` (found through the instance file in
//! its data directory) for its functions and workers.

use std::process::ExitCode;

use esb_app::Instance;

use crate::settings::DataDirArgs;

/// Arguments of `esb ps`.
#[derive(Debug, clap::Args)]
pub struct PsArgs {
    #[command(flatten)]
    pub dir: DataDirArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The start circuit breaker's state: `ok`, `open (retry in 7.5s, 3
/// failed starts)`, `half-open`.
fn state(f: &esb_pool::FunctionStatus) -> String {
    match (f.breaker.as_str(), f.retry_in_ms) {
        ("open", Some(ms)) => format!(
            "open (retry in {:.1}s, {} failed starts)",
            ms as f64 / 1000.0,
            f.init_failures
        ),
        ("ok", _) if f.init_failures > 0 => format!("ok ({} failed starts)", f.init_failures),
        (other, _) => other.to_string(),
    }
}

/// Runs `esb ps`.
pub async fn run(args: &PsArgs) -> anyhow::Result<ExitCode> {
    let data_dir = args.dir.settings(Default::default())?.data_dir;
    let instance = Instance::read(&data_dir)?;
    let status = esb_app::remote::status(&instance).await?;
    let events = esb_app::remote::event_queue_status(&instance).await?;
    if args.json {
        let out = serde_json::json!({"functions": status, "event_queue": events});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![[
        "FUNCTION".to_string(),
        "WARM".into(),
        "BUSY".into(),
        "STARTING".into(),
        "LIMIT".into(),
        "PIDS".into(),
        // Last: its value may hold spaces.
        "STATE".into(),
    ]];
    for f in &status {
        rows.push([
            f.name.clone(),
            f.warm.to_string(),
            f.busy.to_string(),
            f.starting.to_string(),
            f.limit.to_string(),
            f.pids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
            state(f),
        ]);
    }
    print!("{}", crate::app::table(&rows));
    let depth = events
        .get("depth")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    let oldest = events
        .get("oldest_age_ms")
        .and_then(serde_json::Value::as_u64)
        .map_or_else(
            || "-".to_string(),
            |ms| format!("{:.1}s", ms as f64 / 1000.0),
        );
    let in_flight = events
        .get("in_flight")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    println!("event queue: {depth} held ({in_flight} running), oldest {oldest}");
    println!("instance pid {} at {}", instance.pid, instance.url);
    Ok(ExitCode::SUCCESS)
}
