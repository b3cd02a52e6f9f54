//! `plexus-node --config node.toml`
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "Plexus node: answers pooled queries with aggregates from this hospital's data"
)]
struct Args {
    /// Path to node.toml.
    #[arg(long, env = "PLEXUS_NODE_CONFIG")]
    config: PathBuf,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    json_logs: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if args.json_logs {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let config = plexus_node::NodeConfig::load(&args.config)?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested");
        token.cancel();
    });
    #[cfg(unix)]
    {
        let token = shutdown.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            term.recv().await;
            token.cancel();
        });
    }
    plexus_node::run(config, shutdown).await?;
    Ok(())
}
