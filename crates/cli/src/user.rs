//! `esb user add/remove/list`: manages the built-in user pool in the data
//! directory (`users.json`, 0600). A running `esb up` sees changes at the
//! next login.

use std::io::BufRead as _;
use std::process::ExitCode;

use anyhow::Context;

use crate::settings::DataDirArgs;

/// Arguments of `esb user`.
#[derive(Debug, clap::Args)]
pub struct UserArgs {
    #[command(flatten)]
    pub dir: DataDirArgs,
    #[command(subcommand)]
    pub command: UserCommand,
}

/// `esb user` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Add a user; the password is read from stdin (one line), never from
    /// the command line.
    Add {
        /// User name.
        username: String,
        /// Group (`cognito:groups`), repeatable.
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Remove a user.
    Remove {
        /// User name.
        username: String,
    },
    /// List users and their groups.
    List,
}

/// Runs `esb user ...`.
pub fn run(args: &UserArgs) -> anyhow::Result<ExitCode> {
    let data_dir = args.dir.settings(Default::default())?.data_dir;
    if matches!(args.command, UserCommand::Add { .. }) {
        esb_app::files::create_private_dir(&data_dir)?;
    }
    let mut store = esb_auth::UserStore::load(&data_dir)?;
    match &args.command {
        UserCommand::Add { username, groups } => {
            let mut password = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut password)
                .context("cannot read the password from stdin")?;
            let password = password.trim_end_matches(['\r', '\n']);
            store.add(username, password, groups)?;
            println!("added user {username}");
        }
        UserCommand::Remove { username } => {
            store.remove(username)?;
            println!("removed user {username}");
        }
        UserCommand::List => {
            let mut rows = vec![["USERNAME".to_string(), "GROUPS".to_string()]];
            for u in store.users() {
                rows.push([u.username.clone(), u.groups.join(",")]);
            }
            print!("{}", crate::app::table(&rows));
        }
    }
    Ok(ExitCode::SUCCESS)
}
