//! `plexus-node --config node.toml` runs the node; `plexus-node approve` and
//! `plexus-node review ...` are the hospital data steward's commands.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use plexus_node::review::{cli, ReviewQueue, Verdict};
use plexus_node::NodeConfig;

#[derive(Parser)]
#[command(
    version,
    about = "Plexus node: answers pooled queries with aggregates from this hospital's data"
)]
struct Args {
    /// Path to node.toml.
    #[arg(long, env = "PLEXUS_NODE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log format: text, or json for one JSON object per line.
    #[arg(long, env = plexus_ops::LOG_FORMAT_ENV, default_value = "text", global = true)]
    log_format: plexus_ops::LogFormat,
    /// The same as --log-format json (kept for older unit files).
    #[arg(long, hide = true)]
    json_logs: bool,
    /// Without a command, the node runs.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node (the default).
    Run,
    /// Approve a version of a study's definition, by the hash `plexus study
    /// show ID` prints; the running node takes it from its next job.
    Approve {
        #[arg(long)]
        study: String,
        /// SHA-256 of the definition (64 hex characters).
        #[arg(long, required_unless_present = "model", conflicts_with = "model")]
        hash: Option<String>,
        /// Approve a prediction model of the study instead, by the hash
        /// `plexus model list --study ID` prints.
        #[arg(long)]
        model: Option<String>,
        /// Why, or on whose request, kept with the approval.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Sign a checkpoint of the local job log and of the privacy ledger now
    /// (they are also signed every node.audit_checkpoint_secs while they
    /// grow) and print the job log's.
    Checkpoint,
    /// The coordinator's audit log as this node witnessed it.
    Witness {
        #[command(subcommand)]
        command: WitnessCommand,
    },
    /// The release gate: results held for the data steward.
    Review {
        #[command(subcommand)]
        command: ReviewCommand,
    },
}

#[derive(Subcommand)]
enum WitnessCommand {
    /// What this node witnessed: the newest checkpoint, a break if any,
    /// and earlier resets.
    Show,
    /// After a break (a fork, a truncation, a bad signature): forget the
    /// witnessed checkpoint and take the next one the coordinator shows.
    /// Only once the network admin has explained the break (a restored
    /// backup, an `audit-repair`); the reason is kept in the file.
    Reset {
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum ReviewCommand {
    /// Results waiting for a decision.
    List {
        /// Also the decided ones.
        #[arg(long)]
        all: bool,
    },
    /// One held result, exactly as it would leave.
    Show {
        job: String,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Release a held result.
    Approve { job: String },
    /// Refuse a held result; the reason reaches the researcher.
    Reject {
        job: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = dispatch(args) {
        // One line, each cause once, no backtrace: for the operator.
        eprintln!("error: {}", plexus_ops::error_text(e.as_ref()));
        std::process::exit(1);
    }
}

fn dispatch(args: Args) -> anyhow::Result<()> {
    let Some(path) = args.config.clone() else {
        anyhow::bail!("say which node.toml to use with --config PATH (or PLEXUS_NODE_CONFIG)");
    };
    let config = NodeConfig::load(&path)?;
    let now = || chrono::Utc::now().timestamp_millis();
    let by = plexus_node::policy::local_user();
    match args.command {
        None | Some(Command::Run) => run(
            config,
            if args.json_logs {
                plexus_ops::LogFormat::Json
            } else {
                args.log_format
            },
        ),
        Some(Command::Approve {
            study,
            hash,
            model,
            note,
        }) => {
            let (what, hash, done) = match (hash, model) {
                (_, Some(m)) => {
                    let done = plexus_node::policy::approve_model(&config, &study, &m, &by, &note)?;
                    ("model", m, done)
                }
                (Some(h), None) => {
                    let done = plexus_node::policy::approve(&config, &study, &h, &by, &note)?;
                    ("definition", h, done)
                }
                (None, None) => {
                    anyhow::bail!("say what to approve: --hash DEFINITION or --model HASH")
                }
            };
            println!(
                "{} {what} {} of study \"{study}\"; approved {what}s now: {}",
                if done.recorded {
                    "approved"
                } else {
                    "already approved:"
                },
                hash.trim().to_ascii_lowercase(),
                done.hashes.into_iter().collect::<Vec<_>>().join(", ")
            );
            Ok(())
        }
        Some(Command::Checkpoint) => {
            let state = &config.node.state_dir;
            let log = plexus_node::log::JobLog::open_to_sign(state, &config.node.id)?;
            let c = log.checkpoint()?;
            println!("{}", serde_json::to_string_pretty(&c)?);
            eprintln!(
                "signed a checkpoint of {} entries into {}; auditors check it with `plexus audit verify --node-log {}`",
                c.head.size,
                state.join(plexus_node::log::CHECKPOINT_FILE).display(),
                state.display()
            );
            let ledger = plexus_node::ledger::Ledger::open_to_sign(state, &config.node.id)?;
            // Stdout keeps the job log's checkpoint alone, as before.
            let c = ledger.checkpoint()?;
            eprintln!(
                "signed a checkpoint of the privacy ledger's {} records (last hash {}) into {}",
                c.head.size,
                c.head.root,
                state
                    .join(plexus_node::ledger::LEDGER_CHECKPOINT_FILE)
                    .display()
            );
            Ok(())
        }
        Some(Command::Witness { command }) => {
            let dir = &config.node.state_dir;
            match command {
                WitnessCommand::Show => {
                    let w = plexus_node::witness::Witnessed::load(dir)?;
                    println!("{}", serde_json::to_string_pretty(&w)?);
                }
                WitnessCommand::Reset { reason } => {
                    let r = plexus_node::witness::reset(dir, &by, &reason)?;
                    println!(
                        "reset the witnessed checkpoint in {}{}{}; the node takes the next checkpoint the coordinator shows (a running node from its next job)",
                        dir.join(plexus_node::witness::WITNESS_FILE).display(),
                        r.forgot
                            .map(|c| format!(", forgetting the one of {} entries", c.head.size))
                            .unwrap_or_default(),
                        r.cleared
                            .map(|b| format!(", clearing the break {}", b.rule.name()))
                            .unwrap_or_default(),
                    );
                }
            }
            Ok(())
        }
        Some(Command::Review { command }) => {
            let queue = ReviewQueue::open(&config.node.state_dir)?;
            let out = match command {
                ReviewCommand::List { all } => cli::list(&queue, all, now())?,
                ReviewCommand::Show { job, output } => {
                    let entry = queue.entry(&job)?;
                    match output {
                        Output::Text => cli::show_text(&entry)?,
                        Output::Json => serde_json::to_string_pretty(&cli::show_json(&entry)?)?,
                    }
                }
                ReviewCommand::Approve { job } => {
                    cli::decide(&queue, &job, Verdict::Approved, "", &by, now())?
                }
                ReviewCommand::Reject { job, reason } => {
                    cli::decide(&queue, &job, Verdict::Rejected, &reason, &by, now())?
                }
            };
            println!("{out}");
            Ok(())
        }
    }
}

fn run(config: NodeConfig, log_format: plexus_ops::LogFormat) -> anyhow::Result<()> {
    plexus_ops::logging::init(log_format);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
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
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::spawn(async move {
                term.recv().await;
                token.cancel();
            });
        }
        plexus_node::run(config, shutdown).await?;
        Ok(())
    })
}
