//! The `ratatoskr` binary: parse configuration, install logging, open the
//! store, bind, run. A fatal start-up error is one plain line on stderr
//! and a non-zero exit: 2 for configuration, 1 for everything else.

use std::process::ExitCode;
use std::sync::Arc;

use ratatoskr::config::Config;
use ratatoskr::state::store::Store;

use ratatoskr::cli::fatal;

/// Runs a subcommand that parses its own arguments and runs one future
/// on a single-threaded runtime: 0 when it succeeds, else `what: error`
/// and 1.
fn tool<A, F, E>(args: &[std::ffi::OsString], what: &str, run: impl FnOnce(A) -> F) -> ExitCode
where
    A: clap::Parser,
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let args = match A::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fatal(1, format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fatal(1, format!("{what}: {e}")),
    }
}

/// Leaves out of stderr only the panic of the thread that probes a damaged
/// store file (the start reports it as one line); every other panic is
/// printed by the default hook as always. Set once, before any thread.
fn quiet_store_probe_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() != Some(ratatoskr::state::store::OPEN_THREAD) {
            default(info);
        }
    }));
}

fn main() -> ExitCode {
    quiet_store_probe_panics();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some("new-api-key") => {
            return ratatoskr::cli::new_api_key::run(args.get(2).and_then(|a| a.to_str()))
        }
        // A webhook receiver that prints what it gets (`ratatoskr::cli::sink`).
        Some("sink") => return tool(&args[1..], "sink", ratatoskr::cli::sink::run),
        // Exit 0 when the local `/health` answers 200: the image's
        // HEALTHCHECK (`ratatoskr::cli::healthcheck`).
        Some("healthcheck") => {
            return tool(
                &args[1..],
                "unhealthy",
                |a: ratatoskr::cli::healthcheck::HealthcheckArgs| async move {
                    ratatoskr::cli::healthcheck::probe(&a).await
                },
            )
        }
        _ => {}
    }
    let config = match Config::from_args(&args) {
        Ok(c) => c,
        Err(e) => match ratatoskr::config::explain_error(&e, &args) {
            Some(message) => return fatal(2, message),
            None => e.exit(),
        },
    };
    if let Err(e) = config.validate() {
        return fatal(2, e);
    }
    if let Err(e) = ratatoskr::telemetry::init_tracing(config.log_format, &config.log) {
        return fatal(2, e);
    }
    // Every subscriber is a socket: lift the soft file limit to the hard one.
    match ratatoskr::server::raise_descriptor_limit() {
        Ok(n) => tracing::debug!(nofile = ?n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
    // The store first: a damaged one must stop the start before it binds.
    // A cluster node keeps nothing on local disk: its store is the Redis.
    let opened = match config.redis_target().transpose() {
        Ok(Some(target)) => Store::open_redis(target),
        Ok(None) => Store::open(config.store, &config.data_dir),
        Err(e) => return fatal(2, e),
    };
    let store = match opened {
        Ok(s) => Arc::new(s),
        Err(e) => return fatal(1, e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fatal(1, format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(l) => l,
            Err(e) => return fatal(1, format!("cannot listen on {}: {e}", config.listen)),
        };
        let bound = listener
            .local_addr()
            .map_or_else(|_| config.listen.to_string(), |a| a.to_string());
        tracing::info!(listen = %bound, "listening");
        match ratatoskr::run_with_store(config, store, listener, ratatoskr::shutdown::signal())
            .await
        {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => fatal(1, format!("cannot start: {e}")),
        }
    })
}
