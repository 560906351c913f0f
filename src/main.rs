//! The `outage-relay` binary: parses the command line and runs a subcommand.

use std::process::ExitCode;

use clap::Parser;
use outage_relay::cli::{Cli, Command, ServeArgs};
use outage_relay::config::Config;
use outage_relay::route::Registry;
use tokio_util::sync::CancellationToken;

/// Exit code for a configuration that cannot run (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("outage-relay: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let shutdown = shutdown_on_signal();
        match cli.command {
            Command::Serve(args) => serve(args, shutdown).await,
            Command::DnoSink(args) => outage_relay::tools::sink::run(args, shutdown)
                .await
                .map(|_| ExitCode::SUCCESS),
            Command::Publish(args) => outage_relay::tools::publish::run(args)
                .await
                .map(|_| ExitCode::SUCCESS),
            Command::Health(args) => Ok(outage_relay::tools::health::run(args).await),
            Command::CheckConfig(args) => check_config(args),
            Command::Bench(args) => outage_relay::bench::run(args, shutdown).await,
            Command::Report(args) => outage_relay::report::run(args).await,
            Command::Replay(args) => outage_relay::replay::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("outage-relay: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The effective configuration; one that cannot run is reported (the same way for `serve` and
/// `check-config`) and becomes exit code [`EXIT_CONFIG`].
fn effective_config(args: ServeArgs) -> Result<Config, ExitCode> {
    args.into_config().map_err(|err| {
        eprintln!("outage-relay: {err}");
        ExitCode::from(EXIT_CONFIG)
    })
}

async fn serve(args: ServeArgs, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
    let config = match effective_config(args) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    outage_relay::telemetry::install_prometheus(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    outage_relay::server::run(config, listener, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// `check-config`: validates the configuration, the registry and the TLS files `serve` would
/// load, then prints the effective configuration. A bad registry fails (exit 1) with its bad
/// lines, a bad TLS file with its name and the reason.
fn check_config(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = match effective_config(args) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let devices = match &config.registry {
        Some(path) => Registry::load(path)?.len(),
        None => 0,
    };
    outage_relay::security::tls::check_files(&config)?;
    print!(
        "{}",
        outage_relay::tools::check_config::render(&config, devices)?
    );
    Ok(ExitCode::SUCCESS)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTAGE_RELAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

/// A token cancelled on SIGINT or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(err) => {
                        tracing::error!(%err, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        trigger.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        trigger.cancel();
    });
    token
}
