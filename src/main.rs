//! The `chatd` command line: parses flags and hands over to the library.

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use chatd::logging::{eprint_line, print_line};
use chatd::Config;

#[derive(Parser)]
#[command(
    name = "chatd",
    version,
    about = "An async TCP chat server: a line protocol for telnet and nc, an HTTP facade with a \
             chat page, an IRC door for IRC clients, and RFC 862 echo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve chat on the line protocol (telnet, nc), over HTTP (JSON, live events, a chat
    /// page) and IRC, and optionally echo, until Ctrl-C or SIGTERM.
    Serve(Box<Config>),
    /// List this machine's network interfaces and addresses (for `serve --interface`).
    Interfaces,
    /// Load a server (chatd, or Redis for `ping`) and report throughput, latency and failures.
    Load(Box<chatd_load::LoadArgs>),
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let log_file = match &cli.command {
        Command::Serve(config) => config.log_file.clone(),
        _ => None,
    };
    if let Err(e) = chatd::logging::init_to(log_file.as_deref()) {
        let path = log_file.unwrap_or_default();
        eprint_line(&format!(
            "chatd: cannot open the log file {}: {e}",
            path.display()
        ));
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Interfaces => interfaces(),
        Command::Serve(config) => match matches.subcommand_matches("serve").map(flag_conflicts) {
            Some(Err(e)) => Err(e),
            _ => serve(*config),
        },
        Command::Load(args) => match chatd_load::main(*args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint_line(&format!("chatd: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

fn interfaces() -> anyhow::Result<()> {
    let list = chatd::interfaces()?;
    let width = list.iter().map(|i| i.name.len()).max().unwrap_or(0).max(9);
    print_line(&format!("{:width$}  ADDRESS", "INTERFACE"));
    for i in list {
        print_line(&format!("{:width$}  {}", i.name, i.ip));
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

/// `--bind` and `--interface` both choose the address; say where each came from, so that a
/// `CHATD_BIND` left in the environment is not reported as a flag the user never typed.
fn flag_conflicts(serve: &ArgMatches) -> anyhow::Result<()> {
    let source = |id: &str| serve.value_source(id);
    let (Some(bind), Some(interface)) = (source("bind"), source("interface")) else {
        return Ok(());
    };
    if bind == ValueSource::DefaultValue {
        return Ok(());
    }
    let said = |id: &str, env: &str, source: ValueSource| {
        let value = serve
            .get_raw(id)
            .and_then(|mut v| v.next())
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        if source == ValueSource::EnvVariable {
            format!("{env}={value} (from the environment)")
        } else {
            format!("--{id} {value}")
        }
    };
    let bind_said = said("bind", "CHATD_BIND", bind);
    let interface_said = said("interface", "CHATD_INTERFACE", interface);
    let fix = match (bind, interface) {
        (ValueSource::EnvVariable, _) => "unset CHATD_BIND, or leave out --interface",
        (_, ValueSource::EnvVariable) => "unset CHATD_INTERFACE, or leave out --bind",
        _ => "give one of them",
    };
    anyhow::bail!("{bind_said} and {interface_said} both choose the address to listen on: {fix}")
}

/// A stop signal this soon after the first is the same request delivered twice, not a person
/// insisting: `timeout` and some supervisors send it to the process and to its group, and a
/// terminal's Ctrl-C reaches every process of the foreground group.
const SAME_STOP_REQUEST: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether a stop signal arriving now, while stopping since `first` (if at all), means "exit
/// at once".
fn insists(first: Option<std::time::Instant>) -> bool {
    first.is_some_and(|first| first.elapsed() >= SAME_STOP_REQUEST)
}

/// Cancels `shutdown` on SIGINT, SIGTERM or SIGHUP (closing the terminal chatd runs in; with
/// `--log-file`, SIGHUP reopens the log file instead, as logrotate expects); a
/// second one while shutting down (at least [`SAME_STOP_REQUEST`] after the first) exits at
/// once. SIGUSR1 and SIGUSR2 are logged and ignored rather than killing the server.
#[cfg(unix)]
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let listen =
        |kind: SignalKind| signal(kind).map_err(|e| tracing::error!(error = %e, "cannot handle signals"));
    // Started with SIGHUP ignored (`nohup chatd serve &`): it is meant to outlive the terminal.
    let hangup_ignored = ignored_at_start(libc::SIGHUP);
    let (Ok(mut int), Ok(mut term), Ok(mut hup), Ok(mut usr1), Ok(mut usr2)) = (
        listen(SignalKind::interrupt()),
        listen(SignalKind::terminate()),
        listen(SignalKind::hangup()),
        listen(SignalKind::user_defined1()),
        listen(SignalKind::user_defined2()),
    ) else {
        return;
    };
    let mut stopping = None;
    loop {
        let name = tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
            _ = hup.recv() => {
                // With --log-file, SIGHUP is logrotate's: the file is opened again.
                if let Some(reopened) = chatd::logging::reopen_log_file() {
                    match reopened {
                        Ok(path) => tracing::info!("SIGHUP received: reopened the log file {}", path.display()),
                        Err(e) => tracing::error!(error = %e, "SIGHUP received: cannot reopen the log file; still writing to the old one"),
                    }
                    continue;
                }
                if hangup_ignored {
                    tracing::info!("SIGHUP received and ignored (chatd was started with it ignored, as by nohup)");
                    continue;
                }
                "SIGHUP"
            }
            _ = usr1.recv() => { tracing::info!("SIGUSR1 received and ignored"); continue }
            _ = usr2.recv() => { tracing::info!("SIGUSR2 received and ignored"); continue }
        };
        if insists(stopping) {
            tracing::warn!("{name} received again: exiting now");
            std::process::exit(130);
        }
        if stopping.is_some() {
            tracing::info!("{name} received again at once: still stopping (send it again to exit now)");
            continue;
        }
        stopping = Some(std::time::Instant::now());
        tracing::info!("{name} received");
        shutdown.cancel();
    }
}

/// Whether `signal` was set to be ignored by whoever started chatd.
#[cfg(unix)]
fn ignored_at_start(signal: libc::c_int) -> bool {
    // SAFETY: sigaction with a null new action only reads the current one into `old`.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Cancels `shutdown` on Ctrl-C (the only signal there is off Unix); a
/// second one exits at once.
#[cfg(not(unix))]
async fn stop_on_signal(shutdown: CancellationToken) {
    let mut stopping = None;
    loop {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot handle Ctrl-C");
            return;
        }
        if insists(stopping) {
            tracing::warn!("Ctrl-C received again: exiting now");
            std::process::exit(130);
        }
        if stopping.is_some() {
            continue;
        }
        stopping = Some(std::time::Instant::now());
        tracing::info!("Ctrl-C received");
        shutdown.cancel();
    }
}
