//! The `esb` binary: argument parsing and dispatch only. Each subcommand's
//! arguments and `run` live in its own module; the work itself is done by
//! the library crates (template, gateway, pool, runtimes).

mod app;
mod bench;
#[cfg(feature = "docker")]
mod build;
mod detach;
#[cfg(feature = "docker")]
mod docker;
mod events;
mod generate;
mod invoke;
mod logs;
mod ps;
mod settings;
mod up;
mod user;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// ESB — Edge Serverless Box: run an AWS SAM application locally.
#[derive(Debug, Parser)]
#[command(name = "esb", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the template: gateway (API routes + Invoke API) and worker pool.
    Up(up::UpArgs),
    /// Stop an `esb up` started with --detach (or any, by its data dir).
    Down(detach::DownArgs),
    /// Run one invocation of a function and print its response.
    Invoke(invoke::InvokeArgs),
    /// Print (and follow) the functions' stored log lines.
    Logs(logs::LogsArgs),
    /// List the functions of a running `esb up` and their workers.
    Ps(ps::PsArgs),
    /// Event sources of a running `esb up` (`trigger FUNCTION SCHEDULE`).
    Events(events::EventsArgs),
    /// Manage the built-in user pool (login endpoint users).
    User(user::UserArgs),
    /// Check a template and list its functions and routes.
    Validate(validate::ValidateArgs),
    /// Write the original system's functions.yml and routing.yml.
    Generate(generate::GenerateArgs),
    /// Benchmark helper: time warm invocations through the pool, no HTTP.
    #[command(hide = true)]
    BenchDirect(bench::BenchDirectArgs),
    /// Compute-plane agent for the docker runtime: holds the engine socket,
    /// serves worker operations over gRPC.
    #[cfg(feature = "docker")]
    Agent(esb_agent::AgentArgs),
    /// Build the template's `PackageType: Image` functions (Metadata.Dockerfile).
    #[cfg(feature = "docker")]
    Build(build::BuildArgs),
    /// Offline runtime base images (`esb images build python3.11`).
    #[cfg(feature = "docker")]
    Images(build::ImagesArgs),
    /// Print a shell completion script (`esb completions bash > /etc/bash_completion.d/esb`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// `esb container-supervisor` (or the executable named `esb-supervisor`):
/// the entrypoint of docker worker containers, which mount this binary.
#[cfg(feature = "docker")]
fn is_container_supervisor() -> bool {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    args.next().is_some_and(|a| a == esb_agent::SUPERVISOR_ARG)
        || std::path::Path::new(&argv0).file_name() == Some("esb-supervisor".as_ref())
}

fn main() -> ExitCode {
    #[cfg(feature = "docker")]
    if is_container_supervisor() {
        return esb_agent::run_container_supervisor();
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Validate(args) => validate::run(args),
        Command::User(args) => user::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Up(args) => runtime().and_then(|rt| rt.block_on(up::run(args))),
        Command::Invoke(args) => runtime().and_then(|rt| rt.block_on(invoke::run(args))),
        Command::Logs(args) => logs::run(args),
        Command::Down(args) => detach::down(args),
        Command::Ps(args) => runtime().and_then(|rt| rt.block_on(ps::run(args))),
        Command::Events(args) => runtime().and_then(|rt| rt.block_on(events::run(args))),
        Command::BenchDirect(args) => runtime().and_then(|rt| rt.block_on(bench::run(args))),
        #[cfg(feature = "docker")]
        Command::Agent(args) => runtime().and_then(|rt| rt.block_on(docker::run_agent(args))),
        #[cfg(feature = "docker")]
        Command::Build(args) => runtime().and_then(|rt| rt.block_on(build::run(args))),
        #[cfg(feature = "docker")]
        Command::Images(args) => runtime().and_then(|rt| rt.block_on(build::run_images(args))),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(*shell, &mut Cli::command(), "esb", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// The settings table (esb-config) names each setting's flag; `esb up`
    /// must have every one of them, so the docs table cannot drift.
    #[test]
    fn up_has_every_flag_the_settings_table_names() {
        let cli = Cli::command();
        let up = cli.find_subcommand("up").expect("esb up");
        let longs: Vec<String> = up
            .get_arguments()
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .collect();
        for info in esb_config::SETTINGS {
            if let Some(flag) = info.flag {
                assert!(
                    longs.iter().any(|l| l == flag),
                    "esb up has no {flag} (setting {})",
                    info.key
                );
            }
        }
    }

    /// Every command that reads state takes --data-dir and --config.
    #[test]
    fn state_commands_take_data_dir_and_config() {
        let cli = Cli::command();
        for name in ["up", "down", "invoke", "logs", "ps", "user", "validate"] {
            let cmd = cli.find_subcommand(name).expect(name);
            for flag in ["data-dir", "config"] {
                assert!(
                    cmd.get_arguments().any(|a| a.get_long() == Some(flag)),
                    "esb {name} has no --{flag}"
                );
            }
        }
    }
}
