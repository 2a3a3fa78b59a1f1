//! `esb ps`: asks a running `esb up` (found through the instance file in
//! its data directory) for its functions and workers.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::up::Instance;

/// Arguments of `esb ps`.
#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// Data directory of the running `esb up` (default: .esb).
    #[arg(long = "data-dir", value_name = "DIR", default_value = ".esb")]
    pub data_dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `esb ps`.
pub async fn run(args: &PsArgs) -> anyhow::Result<ExitCode> {
    let instance = Instance::read(&args.data_dir)?;
    let client = instance.client()?;
    let url = format!("{}/_esb/status", instance.url);
    let resp = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("cannot reach esb up at {}", instance.url))?;
    if !resp.status().is_success() {
        anyhow::bail!("{url} answered {}", resp.status());
    }
    let status: Vec<esb_pool::FunctionStatus> = resp
        .json()
        .await
        .context("unexpected answer from /_esb/status")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![[
        "FUNCTION".to_string(),
        "WARM".into(),
        "BUSY".into(),
        "STARTING".into(),
        "LIMIT".into(),
        "PIDS".into(),
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
        ]);
    }
    print!("{}", crate::app::table(&rows));
    println!("instance pid {} at {}", instance.pid, instance.url);
    Ok(ExitCode::SUCCESS)
}
