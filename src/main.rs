//! The `ratatoskr` binary: parse configuration, install logging, run.

use std::process::ExitCode;

use ratatoskr::config::Config;

fn main() -> ExitCode {
    let config = match Config::from_args(std::env::args_os()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if let Err(e) = config.validate() {
        eprintln!("ratatoskr: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = ratatoskr::telemetry::init_tracing(config.log_format, &config.log) {
        eprintln!("ratatoskr: {e}");
        return ExitCode::from(2);
    }
    // Every subscriber is a socket: lift the soft file limit to the hard one.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(nofile = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ratatoskr: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listen = %config.listen, error = %e, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        let bound = listener
            .local_addr()
            .map_or_else(|_| config.listen.to_string(), |a| a.to_string());
        tracing::info!(listen = %bound, "listening");
        match ratatoskr::run(config, listener, ratatoskr::shutdown::signal()).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                ExitCode::FAILURE
            }
        }
    })
}
