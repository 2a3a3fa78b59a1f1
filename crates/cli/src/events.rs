//! `esb events trigger FUNCTION SCHEDULE`: fires one occurrence of a
//! template schedule now, through the running `esb up`'s durable event
//! queue (an `Event` invocation with the scheduled event as payload).

use std::process::ExitCode;

use crate::settings::CommonArgs;

/// Arguments of `esb events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    #[command(subcommand)]
    pub command: EventsCommand,
}

/// `esb events` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum EventsCommand {
    /// Fire one occurrence of a schedule (`Schedule`/`ScheduleV2` event name) now.
    Trigger {
        /// Function (FunctionName or logical id).
        function: String,
        /// The schedule's event name under the function's `Events`.
        schedule: String,
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// Runs `esb events ...`.
pub async fn run(args: &EventsArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        EventsCommand::Trigger {
            function,
            schedule,
            common,
        } => {
            let settings = common.settings(Default::default())?;
            let plan = esb_app::Plan::parse(settings)?;
            let (name, payload) = esb_app::events::trigger_payload(
                &plan.loaded.app,
                &plan.settings,
                function,
                schedule,
            )?;
            let instance = esb_app::Instance::read(&plan.settings.data_dir)?;
            let client = esb_app::remote::instance_client(&instance)?;
            let creds = esb_app::remote::signing_credentials(
                Some(&plan.settings.data_dir),
                &esb_config::ProcessEnv,
            );
            let id = esb_app::remote::enqueue_remote(&client, &instance.url, &name, payload, creds)
                .await?;
            println!("queued {name} ({schedule}): request id {id}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
