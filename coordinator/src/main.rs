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
    #[arg(long, env = "PLEXUS_COORDINATOR_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log format: text, or json for one JSON object per line.
    #[arg(long, env = plexus_ops::LOG_FORMAT_ENV, default_value = "text")]
    log_format: plexus_ops::LogFormat,
    /// The same as --log-format json (kept for older unit files).
    #[arg(long, hide = true)]
    json_logs: bool,
    /// Without a command, the coordinator runs.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// With the coordinator stopped: record in the audit log that the
    /// stored log no longer extends its last signed checkpoint (entries
    /// edited, deleted or truncated, a database restored from an older
    /// backup), so that start-up accepts it again. Deleted entries are
    /// written back as `audit.missing`; an `audit.repair` entry names the
    /// old checkpoint, the log's head, the first bad entry and the reason.
    AuditRepair {
        /// Why (an incident ticket, who restored what): kept in the log.
        #[arg(long)]
        reason: String,
    },
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        // One line, each cause once, no backtrace: for the operator.
        eprintln!("error: {}", plexus_ops::error_text(e.as_ref()));
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    plexus_ops::logging::init(if args.json_logs {
        plexus_ops::LogFormat::Json
    } else {
        args.log_format
    });
    let Some(path) = args.config.as_deref() else {
        anyhow::bail!(
            "say which coordinator.toml to use with --config PATH (or PLEXUS_COORDINATOR_CONFIG)"
        );
    };
    let config = plexus_coordinator::CoordinatorConfig::load(path)?;
    if let Some(Command::AuditRepair { reason }) = args.command {
        return audit_repair(&config, &reason).await;
    }
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

async fn audit_repair(
    config: &plexus_coordinator::CoordinatorConfig,
    reason: &str,
) -> anyhow::Result<()> {
    let by = plexus_ops::local_user();
    let r = plexus_coordinator::audit_repair::repair(config, &by, reason).await?;
    println!(
        "recorded the break as audit entry {}: {}\nold checkpoint: {}\nnew checkpoint: {} entries, root {}{}\nthe coordinator starts again; nodes that witnessed the old log refuse jobs until their operators run `plexus-node witness reset`",
        r.seq,
        r.break_,
        r.old
            .map(|c| format!("{} entries, root {}", c.head.size, c.head.root))
            .unwrap_or_else(|| "none".into()),
        r.new.head.size,
        r.new.head.root,
        if r.filled.is_empty() {
            String::new()
        } else {
            format!("\ndeleted entries written back as audit.missing: {:?}", r.filled)
        }
    );
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Args::command().debug_assert();
    }
}
