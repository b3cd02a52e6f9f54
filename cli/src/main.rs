//! `plexus`: the command line for researchers, auditors and network admins,
//! and `plexus demo`.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use plexus::client::ConnectArgs;
use plexus::commands;
use plexus::output::Format;

#[derive(Parser)]
#[command(
    name = "plexus",
    version,
    about = "Pool statistics across hospitals without pooling patients"
)]
struct Cli {
    #[command(flatten)]
    conn: ConnectArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a coordinator and three synthetic hospitals in this process and query them.
    Demo {
        /// Patients per hospital.
        #[arg(long, default_value_t = 5000)]
        patients: usize,
        /// Seed of the synthetic data.
        #[arg(long, default_value_t = 2026)]
        seed: u64,
        /// Keep the demo's files (certificates, data, database) in this folder.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
    /// Benchmark: federated against centralised latency over three nodes (use --release).
    Bench {
        /// Patients per hospital.
        #[arg(long, default_value_t = 1_000_000)]
        patients: usize,
        /// Timed repetitions per query.
        #[arg(long, default_value_t = 7)]
        repetitions: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Keep the generated files here.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Patients per hospital in the secure-aggregation comparison
        /// (its own networks of 3 and 20 hospitals).
        #[arg(long, default_value_t = 100_000)]
        secure_patients: usize,
        /// Run only the secure-aggregation comparison.
        #[arg(long)]
        secure_only: bool,
    },
    /// Development certificate authority (rcgen): for trials and tests, not production.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Network admin: studies.
    Study {
        #[command(subcommand)]
        command: StudyCommand,
    },
    /// List the studies you can query.
    Studies,
    /// Show the network data dictionary's variables (the embedded one, or --file).
    Dictionary {
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Submit a pooled query and print its result.
    Query {
        #[arg(long)]
        study: String,
        /// Query as JSON (see README, "Query format").
        #[arg(long)]
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        output: Format,
        /// How long to wait for the result.
        #[arg(long, default_value_t = 120)]
        wait_secs: u64,
        /// Also draw the result (Kaplan-Meier curves, histograms) to an
        /// .svg or .png file.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Nodes known to the coordinator and whether they are live.
    Nodes,
    /// A study's privacy budget: spent, remaining and each node's ledger.
    Budget {
        #[arg(long)]
        study: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Auditors: the coordinator's audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create a CA in --dir (ca.pem, ca.key).
    Init {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate whose SAN carries a role and a name.
    Issue {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        #[arg(long)]
        role: plexus_tls::Role,
        #[arg(long)]
        name: String,
        /// DNS names for a server certificate (the coordinator's).
        #[arg(long)]
        dns: Vec<String>,
        /// IP addresses for a server certificate.
        #[arg(long)]
        ip: Vec<IpAddr>,
    },
}

#[derive(Subcommand)]
enum StudyCommand {
    /// Register (or update) a study from a TOML file.
    Register {
        #[arg(long)]
        file: PathBuf,
    },
    /// List registered studies.
    List,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// List audit entries.
    Log {
        #[arg(long)]
        study: Option<String>,
        #[arg(long)]
        who: Option<String>,
        /// YYYY-MM-DD or RFC 3339.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo {
            patients,
            seed,
            keep,
        } => {
            plexus::demo::run(plexus::demo::DemoOptions {
                patients_per_site: patients,
                seed,
                keep,
            })
            .await
        }
        Command::Bench {
            patients,
            repetitions,
            seed,
            dir,
            secure_patients,
            secure_only,
        } => {
            plexus::bench::run(plexus::bench::BenchOptions {
                patients_per_site: patients,
                repetitions: repetitions.max(1),
                seed,
                dir,
                secure_patients_per_site: secure_patients,
                secure_only,
            })
            .await
        }
        Command::Pki { command } => match command {
            PkiCommand::Init { dir, force } => commands::pki_init(&dir, force),
            PkiCommand::Issue {
                dir,
                role,
                name,
                dns,
                ip,
            } => commands::pki_issue(&dir, role, &name, &dns, &ip),
        },
        Command::Study { command } => match command {
            StudyCommand::Register { file } => commands::study_register(&cli.conn, &file).await,
            StudyCommand::List => commands::studies(&cli.conn).await,
        },
        Command::Studies => commands::studies(&cli.conn).await,
        Command::Dictionary { file } => commands::dictionary(file.as_deref()),
        Command::Query {
            study,
            file,
            output,
            wait_secs,
            plot,
        } => {
            commands::query(
                &cli.conn,
                &study,
                &file,
                output,
                Duration::from_secs(wait_secs),
                plot.as_deref(),
            )
            .await
        }
        Command::Nodes => commands::nodes(&cli.conn).await,
        Command::Budget { study, output } => commands::budget(&cli.conn, &study, output).await,
        Command::Audit { command } => match command {
            AuditCommand::Log {
                study,
                who,
                since,
                until,
                limit,
                output,
            } => commands::audit_log(&cli.conn, study, who, since, until, limit, output).await,
        },
    }
}
