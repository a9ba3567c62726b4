//! The `scopegate` binary: parse the command line into a `Config`, initialise logging, run until
//! a signal, drain. The other subcommands run in `scopegate::commands`.

use std::process::ExitCode;

use scopegate::cli::{Cli, Command, ServeArgs};
use scopegate::commands;

/// See [`scopegate::allocator`].
#[global_allocator]
static ALLOCATOR: scopegate::allocator::Allocator = scopegate::allocator::Allocator;

fn main() -> ExitCode {
    // Before anything uses jsonwebtoken: its process-wide provider is fixed at first use.
    scopegate::token::rsa_keys::install();
    let cli = Cli::try_parse_args(std::env::args_os()).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Rules(command) => commands::rules(command),
        Command::Lockdown(command) => commands::lockdown(command),
        Command::Audit(command) => commands::audit(command),
        Command::Revocations(command) => commands::revocations(command),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match args.into_config() {
        Ok(config) => config,
        Err(e) => return fail("invalid configuration", &e),
    };
    let _flush_logs_on_exit = match scopegate::telemetry::init_tracing(config.log_format) {
        Ok(guard) => guard,
        Err(e) => return fail("cannot start the log writer", &e),
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.worker_threads {
        runtime.worker_threads(threads);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail("cannot start the runtime", &e),
    };
    match runtime.block_on(scopegate::app::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "scopegate stopped");
            fail("stopped", &e)
        }
    }
}

fn fail(what: &str, error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("scopegate: {what}: {error}");
    ExitCode::FAILURE
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
