//! The `chatd` command line: parses flags and hands over to the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use chatd::Config;

#[derive(Parser)]
#[command(
    name = "chatd",
    version,
    about = "An async TCP echo and line-protocol chat server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the line protocol (and optionally echo) until Ctrl-C or SIGTERM.
    Serve(Config),
    /// List this machine's network interfaces and addresses (for `serve --interface`).
    Interfaces,
    /// Load a server (chatd, or Redis for `ping`) and report throughput, latency and failures.
    Load(Box<chatd_load::LoadArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Interfaces => interfaces(),
        Command::Serve(config) => serve(config),
        Command::Load(args) => match chatd_load::main(*args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn interfaces() -> anyhow::Result<()> {
    let list = chatd::net::interfaces()?;
    let width = list.iter().map(|i| i.name.len()).max().unwrap_or(0).max(9);
    println!("{:width$}  ADDRESS", "INTERFACE");
    for i in list {
        println!("{:width$}  {}", i.name, i.ip);
    }
    Ok(())
}

fn serve(config: Config) -> anyhow::Result<()> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        chatd::run(config, shutdown).await
    })
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        tracing::error!("cannot listen for SIGINT/SIGTERM");
        return;
    };
    tokio::select! {
        _ = int.recv() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
    shutdown.cancel();
}
