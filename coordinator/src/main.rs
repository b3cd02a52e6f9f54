//! `plexus-coordinator --config coordinator.toml`
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "Plexus coordinator: pools statistics from hospital nodes"
)]
struct Args {
    /// Path to coordinator.toml.
    #[arg(long, env = "PLEXUS_COORDINATOR_CONFIG")]
    config: PathBuf,
    /// Log format: text, or json for one JSON object per line.
    #[arg(long, env = plexus_ops::LOG_FORMAT_ENV, default_value = "text")]
    log_format: plexus_ops::LogFormat,
    /// The same as --log-format json (kept for older unit files).
    #[arg(long, hide = true)]
    json_logs: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    plexus_ops::logging::init(if args.json_logs {
        plexus_ops::LogFormat::Json
    } else {
        args.log_format
    });
    let config = plexus_coordinator::CoordinatorConfig::load(&args.config)?;
    let listener = tokio::net::TcpListener::bind(config.coordinator.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.coordinator.listen))?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        token.cancel();
    });
    plexus_coordinator::run(config, listener, shutdown).await?;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
