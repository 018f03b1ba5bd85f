//! The `push-to-k8s` binary: command line, configuration, logging, client,
//! signals. With no arguments it runs the controller; `status` and `plan`
//! look at the cluster and write nothing ([`push_to_k8s::inspect`]).
//!
//! Exit status of the controller: 0 after a clean shutdown (SIGTERM/SIGINT),
//! 2 for bad usage, a bad setting or a source namespace that does not exist
//! (nothing is written first), 1 for anything else. `status` and `plan`: see
//! [`push_to_k8s::operate::cli::USAGE`].

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use push_to_k8s::operate::cli::{self, Command};
use push_to_k8s::operate::config::{Config, LogFormat};
use push_to_k8s::operate::demo;
use push_to_k8s::operate::logging;
use push_to_k8s::{controller, inspect};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::util::SubscriberInitExt;

fn main() -> ExitCode {
    // First, before anything else: bad usage or a bad setting stops us here.
    let command = match cli::parse(std::env::args_os().skip(1)) {
        Ok(Command::Help) => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(command) => command,
        Err(e) => {
            eprintln!("push-to-k8s: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = match Config::from_env() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // `status` and `plan` print their answer on stdout; only warnings on stderr.
    let quiet = command != Command::Daemon;
    init_logging(&cfg, if quiet { "warn" } else { "info" });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match command {
        Command::Daemon => runtime.block_on(run(cfg)),
        _ => runtime.block_on(inspect::run(&cfg, &command)),
    };
    runtime.shutdown_timeout(Duration::from_secs(1));
    ExitCode::from(code)
}

fn init_logging(cfg: &Config, level: &str) {
    let base = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => v,
        _ if cfg.debug => format!("{level},push_to_k8s=debug"),
        _ => level.to_string(),
    };
    let ansi = std::io::stderr().is_terminal();
    match cfg.log_format {
        LogFormat::Json => logging::subscriber(&base, std::io::stderr, ansi, true).init(),
        LogFormat::Text => logging::subscriber(&base, std::io::stderr, ansi, false).init(),
    }
}

async fn run(cfg: Config) -> u8 {
    let client = match demo::client(&cfg).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return e.exit_code();
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    let task = controller::run(cfg, client, shutdown.clone());
    // The loop stops taking events at once; give the write in flight a few
    // seconds to finish, then abandon it (a restart converges from the caches).
    let result = tokio::select! {
        r = task => r,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(Duration::from_secs(8)).await } => {
            tracing::warn!("shutdown grace period over; abandoning the write in flight");
            return 0;
        }
    };
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            0
        }
        Err(e) => {
            eprintln!("push-to-k8s: {e}");
            e.exit_code() as u8
        }
    }
}

async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
