//! `esb-supervisor`: the entrypoint of ESB's docker workers (see the
//! `esb_container_supervisor` library). Built as a static binary and bind-mounted
//! read-only into each container.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let config = match esb_container_supervisor::config_from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("esb-supervisor: {error}");
            return ExitCode::from(2);
        }
    };
    // One invocation at a time: a single-threaded runtime is enough and
    // starts faster.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("esb-supervisor: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(esb_container_supervisor::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("esb-supervisor: {error}");
            ExitCode::FAILURE
        }
    }
}
