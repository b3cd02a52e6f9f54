//! `plexus`: the command line for researchers, auditors and network admins,
//! and `plexus demo`.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use plexus::audit;
use plexus::commands;
use plexus::output::{Format, Report};
use plexus::pki;
use plexus::verbs::{self, Family, QueryOptions, Ties};
use plexus_client::ConnectArgs;

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
    #[cfg_attr(
        not(feature = "demo"),
        command(
            about = "Not in this build (it needs the demo feature): run a coordinator and three synthetic hospitals in this process"
        ),
        allow(dead_code)
    )]
    Demo {
        /// Patients per hospital.
        #[arg(long, default_value_t = 5000)]
        patients: usize,
        /// Seed of the synthetic data.
        #[arg(long, default_value_t = 2026)]
        seed: u64,
        /// Keep the demo's files (certificates, data, database) in this folder.
        #[arg(long, visible_alias = "dir")]
        keep: Option<PathBuf>,
        /// Keep the network running for the CLI, Python and R instead of
        /// running the demo's queries: prints how to connect and writes it
        /// to connect.json in the folder.
        #[arg(long)]
        serve: bool,
    },
    /// Write synthetic hospitals' patient, consent and opt-out files for a
    /// trial network (the demo's patients, without running anything).
    #[cfg_attr(
        not(feature = "demo"),
        command(
            about = "Not in this build (it needs the demo feature): write synthetic hospitals' files for a trial network"
        ),
        allow(dead_code)
    )]
    Synth {
        /// Folder to write to: each site goes to OUT/sites/<name>/.
        #[arg(long)]
        out: PathBuf,
        /// Hospitals: hospital-a, hospital-b, ...
        #[arg(long, default_value_t = 3)]
        sites: usize,
        /// Patients per hospital.
        #[arg(long, default_value_t = 5000)]
        patients: usize,
        /// Format of every patient file; by default as the demo: every
        /// third site (hospital-c, ...) CSV, the others Parquet.
        #[arg(long, value_enum)]
        format: Option<SynthFormat>,
        /// Seed of the synthetic data (the same seed, the same patients).
        #[arg(long, default_value_t = 2026)]
        seed: u64,
    },
    /// Development certificate authority (rcgen): for trials and tests, not production.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Studies: list those you may see, show one's definition and hash,
    /// register one (network admin).
    Study {
        #[command(subcommand)]
        command: StudyCommand,
    },
    /// Prediction models of a study: register one (an ONNX file, or a
    /// model a query fitted), list them with the hashes hospitals approve.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Show the network data dictionary's variables (the embedded one, or --file).
    Dictionary {
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Submit a pooled query and print its result.
    Query {
        #[arg(long)]
        study: String,
        /// Query as JSON, the tree or the text form ("where", "formula"; see
        /// docs/src/reference/query-format.md and query-syntax.md).
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
        /// Save a trained model (a gbdt's result): ONNX when the path ends
        /// in .onnx, the model's JSON otherwise.
        #[arg(long, value_name = "PATH")]
        save_model: Option<PathBuf>,
    },
    /// Count the patients in a cohort.
    Count {
        #[command(flatten)]
        options: QueryOptions,
    },
    /// Mean, variance and standard deviation of a numeric variable.
    Summary {
        /// The numeric variable.
        variable: String,
        /// Summarise for each level of this categorical or boolean variable
        /// (from the embedded dictionary), each level added to the cohort.
        /// Each level is its own query and spends its own privacy budget.
        #[arg(long, value_name = "CATVAR")]
        by: Option<String>,
        #[command(flatten)]
        options: QueryOptions,
    },
    /// Two-way contingency table of two categorical or boolean variables.
    Table {
        row: String,
        column: String,
        #[command(flatten)]
        options: QueryOptions,
    },
    /// Generalised linear model from an R formula, e.g. "death ~ age + smoking".
    Glm {
        /// The model: OUTCOME ~ TERM + TERM ("- 1" drops the intercept).
        formula: String,
        /// Error distribution and link, as R's glm (identity, logit, log).
        #[arg(long, value_enum, default_value_t = Family::Gaussian)]
        family: Family,
        #[command(flatten)]
        options: QueryOptions,
    },
    /// Cox proportional hazards (stratified by site), e.g.
    /// "Surv(followup_days, death) ~ age + smoking".
    Cox {
        /// The model: Surv(TIME, EVENT) ~ TERM + TERM.
        formula: String,
        /// How tied event times are handled (efron without it, as R's coxph).
        #[arg(long, value_enum)]
        ties: Option<Ties>,
        #[command(flatten)]
        options: QueryOptions,
    },
    /// Kaplan-Meier curves on a public time grid, with a log-rank test
    /// between groups, e.g. "Surv(followup_days, death) ~ smoking".
    Km {
        /// The curves: Surv(TIME, EVENT) ~ GROUP, or ~ 1 for one curve.
        formula: String,
        /// The time grid: FROM:TO:STEP (e.g. 0:1826:30) or points (0,365,730).
        #[arg(long)]
        grid: String,
        /// Also draw the curves to an .svg or .png file.
        #[arg(long)]
        plot: Option<PathBuf>,
        #[command(flatten)]
        options: QueryOptions,
    },
    /// Fetch one of your queries by its id (printed by `plexus query` and
    /// in errors), waiting for it to finish: also after a coordinator
    /// restart or failover interrupted the wait.
    Result {
        /// The query's id.
        id: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        output: Format,
        /// How long to wait for a query still running (0: answer at once).
        #[arg(long, default_value_t = 120)]
        wait_secs: u64,
        /// Also draw the result to an .svg or .png file.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Save a trained model (a gbdt's result): ONNX when the path ends
        /// in .onnx, the model's JSON otherwise.
        #[arg(long, value_name = "PATH")]
        save_model: Option<PathBuf>,
    },
    /// Nodes known to the coordinator and whether they are live; with
    /// --wait, first wait until the nodes wanted are live.
    #[command(group(clap::ArgGroup::new("wanted").args(["count", "nodes"]).requires("wait")))]
    Nodes {
        /// Wait (also while the coordinator starts) until --count nodes or
        /// every one of --nodes is live; exit non-zero after --timeout,
        /// naming the nodes that are not.
        #[arg(long, requires = "wanted")]
        wait: bool,
        /// With --wait: at least this many live nodes.
        #[arg(long)]
        count: Option<usize>,
        /// With --wait: these nodes live (comma-separated).
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
        /// With --wait: how long to wait (60s, 2m, 500ms; a bare number is seconds).
        #[arg(long, default_value = "60s", value_parser = plexus::wait::parse_timeout, requires = "wait")]
        timeout: Duration,
    },
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
    /// Create a CA in --dir (ca.pem, ca.key), its empty revocation list
    /// (crl.pem) and the coordinator's job-signing key pair.
    Init {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        #[arg(long)]
        force: bool,
        /// Days the revocation list is valid (refresh it with `plexus pki crl`).
        #[arg(long, default_value_t = plexus_tls::CRL_VALIDITY_DAYS)]
        days: u32,
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
    /// Revoke a certificate and rewrite crl.pem: by NAME (every certificate
    /// issued to it) or by --serial (one certificate, e.g. the old one after
    /// a rotation).
    #[command(group(clap::ArgGroup::new("target").required(true).args(["name", "serial"])))]
    Revoke {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// The name the certificate was issued to, e.g. hospital-b.
        name: Option<String>,
        /// The certificate's serial (hex, as `plexus pki list` shows it).
        #[arg(long)]
        serial: Option<String>,
        /// unspecified, key-compromise, affiliation-changed, superseded or
        /// cessation-of-operation.
        #[arg(long, default_value = "unspecified")]
        reason: plexus_tls::RevocationReason,
        /// Days the new revocation list is valid.
        #[arg(long, default_value_t = plexus_tls::CRL_VALIDITY_DAYS)]
        days: u32,
    },
    /// Re-sign crl.pem with the same revocations and a fresh validity: run it
    /// before the list in use expires (an expired list refuses everyone).
    Crl {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// Days the new revocation list is valid.
        #[arg(long, default_value_t = plexus_tls::CRL_VALIDITY_DAYS)]
        days: u32,
    },
    /// List the certificates this CA issued, with serials and revocations.
    List {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum StudyCommand {
    /// Register (or update) a study from a TOML file.
    Register {
        #[arg(long)]
        file: PathBuf,
    },
    /// List the studies you may see: a researcher those they belong to,
    /// admins and auditors every registered one.
    List,
    /// A study's definition and the hash hospitals approve it by: as
    /// registered (ID), or from a study file (--file).
    Show {
        id: Option<String>,
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Register a model with a study (a network admin or one of its
    /// researchers): an ONNX file with its inputs mapped to dictionary
    /// variables, or the model a finished glm (binomial) or gbdt query
    /// fitted. Registering a name again replaces the model, and hospitals
    /// must approve its new hash.
    Register {
        #[arg(long)]
        study: String,
        #[arg(long)]
        name: String,
        /// The ONNX file.
        #[arg(
            long,
            conflicts_with = "from_query",
            required_unless_present = "from_query"
        )]
        file: Option<PathBuf>,
        /// The columns of the model's input in order, comma-separated: a
        /// dictionary variable (numeric as it is, boolean as 0/1) or one
        /// level of a categorical one ("smoking=current").
        #[arg(long, value_delimiter = ',', requires = "file")]
        inputs: Vec<String>,
        /// The output holding the probability (default: the first float
        /// output of one or two columns).
        #[arg(long, requires = "file")]
        output: Option<String>,
        /// The id of a finished query whose fitted model to register.
        #[arg(long)]
        from_query: Option<String>,
    },
    /// The models registered with a study, with the hash each hospital
    /// approves (`plexus-node approve --study ID --model HASH`).
    List {
        #[arg(long)]
        study: String,
        #[arg(long, value_enum, default_value = "table")]
        output: Format,
    },
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
    /// Check the whole log against its latest signed checkpoint, and that it
    /// extends a checkpoint you saved earlier; or check a node's job log.
    Verify {
        /// The coordinator's public signing key you pinned (default:
        /// coordinator-signing.pub in --pki).
        #[arg(long)]
        log_key: Option<PathBuf>,
        /// A checkpoint saved earlier with --save: prove the log extends it.
        #[arg(long)]
        since: Option<PathBuf>,
        /// Save the checkpoint verified now, for the next --since.
        #[arg(long)]
        save: Option<PathBuf>,
        /// Have the coordinator sign a checkpoint of the log as it is now.
        #[arg(long)]
        fresh: bool,
        /// Verify a node's job log instead: its state folder or jobs.log.jsonl.
        #[arg(long)]
        node_log: Option<PathBuf>,
        /// The node's audit key (node-audit-signing.pub) you pinned.
        #[arg(long, requires = "node_log")]
        node_key: Option<PathBuf>,
        /// A node's witnessed-checkpoint.json (its state folder holds it),
        /// to check the log against what that hospital witnessed; the
        /// checkpoints signed into the nodes' answers are always checked.
        #[arg(long)]
        witnessed: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = Report::Text)]
        output: Report,
    },
    /// Print and check the inclusion proof of one entry (its # in `audit log`).
    Prove {
        entry: u64,
        #[arg(long)]
        log_key: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Report::Text)]
        output: Report,
    },
    /// Compare a node's job log with the coordinator's record of the jobs it
    /// sent that node; report any job one side has and the other not.
    Reconcile {
        /// The node's state folder or its jobs.log.jsonl.
        #[arg(long)]
        node_log: PathBuf,
        /// The node's id.
        #[arg(long)]
        node: String,
        #[arg(long, value_enum, default_value_t = Report::Text)]
        output: Report,
    },
    /// Check what each node signed for a query: certificate, signature, statement.
    Evidence {
        query_id: String,
        #[arg(long, value_enum, default_value_t = Report::Text)]
        output: Report,
    },
    /// Export the log as FHIR R4 AuditEvent resources (NDJSON).
    Export {
        #[arg(long, value_enum, default_value_t = ExportFormat::Fhir)]
        format: ExportFormat,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        study: Option<String>,
        #[arg(long)]
        who: Option<String>,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SynthFormat {
    Parquet,
    Csv,
}

#[cfg(feature = "demo")]
impl From<SynthFormat> for plexus_sandbox::synth::DataFormat {
    fn from(f: SynthFormat) -> Self {
        match f {
            SynthFormat::Parquet => plexus_sandbox::synth::DataFormat::Parquet,
            SynthFormat::Csv => plexus_sandbox::synth::DataFormat::Csv,
        }
    }
}

/// What `plexus demo` and `plexus synth` say in a build without the demo
/// feature: they need the sandbox, which links both daemons, DataFusion and
/// sqlx, and the CLI researchers install leaves it out.
#[cfg(not(feature = "demo"))]
const WITHOUT_DEMO: &str = "plexus demo is not in this build (it runs both daemons in this process): build plexus with the demo feature, e.g. `cargo run --locked -p plexus --features demo -- demo`";
#[cfg(not(feature = "demo"))]
const WITHOUT_SYNTH: &str = "plexus synth is not in this build (it comes with the demo's synthetic data): build plexus with the demo feature, e.g. `cargo run --locked -p plexus --features demo -- synth --out DIR`";

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    /// FHIR R4 AuditEvent, one resource a line.
    Fhir,
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
        // Messages may quote what a coordinator, a node or a file held.
        eprintln!(
            "error: {}",
            plexus::output::safe_text(&plexus_ops::error_text(e.as_ref()))
        );
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        #[cfg(not(feature = "demo"))]
        Command::Demo { .. } => anyhow::bail!(WITHOUT_DEMO),
        #[cfg(not(feature = "demo"))]
        Command::Synth { .. } => anyhow::bail!(WITHOUT_SYNTH),
        #[cfg(feature = "demo")]
        Command::Demo {
            patients,
            seed,
            keep,
            serve,
        } => {
            plexus::demo::run(plexus::demo::DemoOptions {
                patients_per_site: patients,
                seed,
                keep,
                serve,
            })
            .await
        }
        #[cfg(feature = "demo")]
        Command::Synth {
            out,
            sites,
            patients,
            format,
            seed,
        } => {
            let opts = plexus::synth_command::SynthOptions {
                out,
                sites,
                patients,
                format: format.map(Into::into),
                seed,
            };
            let written = plexus::synth_command::write(&opts)?;
            print!("{}", plexus::synth_command::report(&opts, &written));
            Ok(())
        }
        Command::Pki { command } => match command {
            PkiCommand::Init { dir, force, days } => pki::init(&dir, force, days),
            PkiCommand::Issue {
                dir,
                role,
                name,
                dns,
                ip,
            } => pki::issue(&dir, role, &name, &dns, &ip),
            PkiCommand::Revoke {
                dir,
                name,
                serial,
                reason,
                days,
            } => {
                let target = match (name, serial) {
                    (Some(name), None) => plexus_tls::RevokeTarget::Name(name),
                    (None, Some(serial)) => plexus_tls::RevokeTarget::Serial(serial),
                    _ => unreachable!("clap requires exactly one of NAME and --serial"),
                };
                pki::revoke(&dir, target, reason, days)
            }
            PkiCommand::Crl { dir, days } => pki::crl(&dir, days),
            PkiCommand::List { dir } => pki::list(&dir),
        },
        Command::Study { command } => match command {
            StudyCommand::Register { file } => commands::study_register(&cli.conn, &file).await,
            StudyCommand::List => commands::studies(&cli.conn).await,
            StudyCommand::Show { id, file } => {
                commands::study_show(&cli.conn, id.as_deref(), file.as_deref()).await
            }
        },
        Command::Model { command } => match command {
            ModelCommand::Register {
                study,
                name,
                file,
                inputs,
                output,
                from_query,
            } => {
                commands::model_register(
                    &cli.conn,
                    &study,
                    &name,
                    file.as_deref(),
                    inputs,
                    output,
                    from_query,
                )
                .await
            }
            ModelCommand::List { study, output } => {
                commands::model_list(&cli.conn, &study, output).await
            }
        },
        Command::Dictionary { file } => commands::dictionary(file.as_deref()),
        Command::Query {
            study,
            file,
            output,
            wait_secs,
            plot,
            save_model,
        } => {
            commands::query(
                &cli.conn,
                &study,
                &file,
                output,
                Duration::from_secs(wait_secs),
                plot.as_deref(),
                save_model.as_deref(),
            )
            .await
        }
        Command::Count { options } => verbs::run(&cli.conn, &options, verbs::count(), None).await,
        Command::Summary {
            variable,
            by: None,
            options,
        } => verbs::run(&cli.conn, &options, verbs::summary(&variable), None).await,
        Command::Summary {
            variable,
            by: Some(by),
            options,
        } => verbs::summary_by(&cli.conn, &options, &variable, &by).await,
        Command::Table {
            row,
            column,
            options,
        } => verbs::run(&cli.conn, &options, verbs::table(&row, &column), None).await,
        Command::Glm {
            formula,
            family,
            options,
        } => verbs::run(&cli.conn, &options, verbs::glm(&formula, family), None).await,
        Command::Cox {
            formula,
            ties,
            options,
        } => verbs::run(&cli.conn, &options, verbs::cox(&formula, ties), None).await,
        Command::Km {
            formula,
            grid,
            plot,
            options,
        } => {
            let grid = verbs::parse_grid(&grid)?;
            let analysis = verbs::kaplan_meier(&formula, &grid);
            verbs::run(&cli.conn, &options, analysis, plot.as_deref()).await
        }
        Command::Result {
            id,
            output,
            wait_secs,
            plot,
            save_model,
        } => {
            commands::result(
                &cli.conn,
                &id,
                Duration::from_secs(wait_secs),
                output,
                plot.as_deref(),
                save_model.as_deref(),
            )
            .await
        }
        Command::Nodes { wait: false, .. } => commands::nodes(&cli.conn).await,
        Command::Nodes {
            wait: true,
            count,
            nodes,
            timeout,
        } => {
            let wanted = match count {
                Some(n) => plexus::wait::Wanted::Count(n),
                None => plexus::wait::Wanted::Nodes(nodes),
            };
            let listing = plexus::wait::wait(&cli.conn, &wanted, timeout).await?;
            println!("{}", commands::nodes_table(&listing));
            Ok(())
        }
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
            AuditCommand::Verify {
                log_key,
                since,
                save,
                fresh,
                node_log,
                node_key,
                witnessed,
                output,
            } => {
                let args = audit::VerifyArgs {
                    log_key,
                    since,
                    save,
                    fresh,
                    node_log,
                    node_key,
                    witnessed,
                    output,
                };
                audit::cmd_verify(&cli.conn, args).await
            }
            AuditCommand::Prove {
                entry,
                log_key,
                output,
            } => audit::cmd_prove(&cli.conn, log_key.as_deref(), entry, output).await,
            AuditCommand::Reconcile {
                node_log,
                node,
                output,
            } => audit::cmd_reconcile(&cli.conn, &node_log, &node, output).await,
            AuditCommand::Evidence { query_id, output } => {
                audit::cmd_evidence(&cli.conn, &query_id, output).await
            }
            AuditCommand::Export {
                format: ExportFormat::Fhir,
                out,
                study,
                who,
                since,
                until,
            } => {
                let filter = audit::Filter {
                    study,
                    who,
                    since: since.as_deref().map(commands::parse_time).transpose()?,
                    until: until.as_deref().map(commands::parse_time).transpose()?,
                };
                audit::cmd_export_fhir(&cli.conn, filter, out.as_deref()).await
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Command {
        Cli::try_parse_from(std::iter::once("plexus").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .command
    }

    #[test]
    fn query_verbs_parse() {
        let Command::Glm {
            formula,
            family,
            options,
        } = parse(&[
            "glm",
            "--study",
            "aaa-outcomes",
            "death ~ age + smoking",
            "--family",
            "binomial",
            "--where",
            "age >= 65",
            "--rho",
            "0.05",
        ])
        else {
            panic!("not glm")
        };
        assert_eq!(formula, "death ~ age + smoking");
        assert_eq!(family, Family::Binomial);
        assert_eq!(options.study, "aaa-outcomes");
        assert_eq!(options.cohort.as_deref(), Some("age >= 65"));
        assert_eq!(options.rho, Some(0.05));

        let Command::Km {
            formula,
            grid,
            plot,
            options,
        } = parse(&[
            "km",
            "--study",
            "s",
            "Surv(followup_days, death) ~ smoking",
            "--grid",
            "0:1826:30",
            "--plot",
            "km.png",
            "--output",
            "json",
            "--by-site",
        ])
        else {
            panic!("not km")
        };
        assert_eq!(formula, "Surv(followup_days, death) ~ smoking");
        assert_eq!(grid, "0:1826:30");
        assert_eq!(plot, Some(PathBuf::from("km.png")));
        assert!(options.by_site);
        assert_eq!(options.output, plexus::output::Format::Json);

        let Command::Summary { variable, by, .. } =
            parse(&["summary", "bmi", "--by", "smoking", "--study", "s"])
        else {
            panic!("not summary")
        };
        assert_eq!((variable.as_str(), by.as_deref()), ("bmi", Some("smoking")));
        assert!(matches!(
            parse(&["cox", "--study", "s", "Surv(t, e) ~ x", "--ties", "breslow"]),
            Command::Cox {
                ties: Some(Ties::Breslow),
                ..
            }
        ));
        assert!(matches!(
            parse(&["table", "smoking", "death", "--study", "s"]),
            Command::Table { .. }
        ));
        assert!(matches!(
            parse(&["count", "--study", "s", "--where", "diabetes"]),
            Command::Count { .. }
        ));
        // The study is required; a km needs its grid.
        assert!(Cli::try_parse_from(["plexus", "count"]).is_err());
        assert!(Cli::try_parse_from(["plexus", "km", "--study", "s", "Surv(t, e) ~ 1"]).is_err());
    }
}
