//! The `scopegate` binary: parse the command line, initialise logging, run until a signal.

use std::process::ExitCode;

use clap::Parser;
use scopegate::cli::{Cli, Command, RulesCommand};
use scopegate::rules::document;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Rules(RulesCommand::Validate { file }) => validate(&file),
    }
}

fn serve(args: scopegate::cli::ServeArgs) -> ExitCode {
    let _flush_logs_on_exit = scopegate::telemetry::init_tracing(args.log_format);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.worker_threads {
        runtime.worker_threads(usize::from(threads));
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("scopegate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(scopegate::app::run(args, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "scopegate stopped");
            eprintln!("scopegate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn validate(file: &std::path::Path) -> ExitCode {
    match document::load_file(file) {
        Ok(rules) => {
            println!(
                "{}: ok ({} routes, {} scopes, {} issuers, {} revocations)",
                file.display(),
                rules.routes.len(),
                rules.scopes.len(),
                rules.issuers.len(),
                rules.revoked_jti.len()
                    + rules.revoked_subjects.len()
                    + rules.revoked_clients.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
