//! The node's PostgreSQL data source: a hospital's clinical data warehouse
//! (OMOP-style person and event tables) read through a connection pool.
//!
//! The mapping is checked against the catalogue at start-up
//! ([`catalog`]); queries compile to SQL with catalogue-quoted identifiers
//! and bound values ([`sql`]); counts, histograms and tables are aggregated
//! inside the database ([`compute`]). Every connection runs with
//! `default_transaction_read_only = on` and a `statement_timeout`, which
//! the node checks at start-up.
//!
//! When the database cannot be reached the node keeps running: jobs fail
//! with an `unavailable` error naming the database, heartbeats report the
//! node degraded, and the pool reconnects by itself once the database is
//! back.

mod atlas;
mod catalog;
mod compute;
pub mod config;
mod sql;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::NaiveDate;
use plexus_core::models::fit::Iteration;
use plexus_core::{Dictionary, Error, ErrorCode, Purpose, Query, RawStats, Result};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{PgPool, Row};

pub use config::{
    ConceptItem, ConceptSet, ConsentTables, PersonTable, Pick, SslMode, VariableSource,
    WarehouseConfig,
};
pub(crate) use sql::Param;

use super::config::ConsentConfig;
use super::consent::ConsentSource;
use super::models::{Limits, ModelCache};
use super::source::StudyScope;
use catalog::{Column, ConsentCatalog, Table, Var};

/// Where consent comes from on a warehouse node.
enum Consent {
    Tables(ConsentCatalog),
    Files(ConsentSource),
}

pub struct Warehouse {
    pool: PgPool,
    /// `host:port`, for messages.
    host: String,
    dict: Arc<Dictionary>,
    person: Table,
    id: Column,
    vars: BTreeMap<String, Var>,
    consent: Consent,
    /// Tables whose change counters make the default snapshot.
    tables: Vec<String>,
    snapshot_query: Option<String>,
    models: ModelCache,
    /// The last snapshot and health seen, for heartbeats.
    state: Mutex<(String, Option<String>)>,
    timeout: Duration,
    /// What the mapping check found at start-up.
    findings: catalog::Findings,
    /// With `study_concept_sets`: the tables a study's own concept sets
    /// are read from, the vocabulary that expands them, and the sets
    /// expanded so far (by their definition, for the process's life, as
    /// the mapping's sets are expanded once at start-up).
    domains: BTreeMap<plexus_core::timeline::Domain, catalog::DomainTable>,
    vocabulary: Option<catalog::Vocabulary>,
    expanded: Mutex<BTreeMap<String, Arc<Vec<i64>>>>,
}

impl std::fmt::Debug for Warehouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warehouse")
            .field("host", &self.host)
            .field("variables", &self.variables())
            .finish_non_exhaustive()
    }
}

/// A database error as the node reports it: unreachable or too slow is
/// `unavailable` with what to check; anything else is a `data` error whose
/// detail (which may quote data) stays in the node's log.
pub(crate) fn db_error(host: &str, e: sqlx::Error) -> Error {
    use sqlx::Error as E;
    match &e {
        E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::Protocol(_) | E::WorkerCrashed => {
            Error::unavailable(format!(
                "the hospital database at {host} is unreachable ({e}): check that PostgreSQL is running and reachable from the node and that data.postgres.url is right"
            ))
        }
        E::Database(d) => {
            let code = d.code().unwrap_or_default().to_string();
            match code.as_str() {
                // Out-of-range arithmetic over some patient's value: the
                // message is the same whatever the value or the statement.
                c if c.starts_with("22") => {
                    tracing::warn!(host, code, error = %d.message(), "warehouse query hit a value out of range");
                    Error::data(format!(
                        "the hospital database at {host} could not compute the query over the mapped values (a value out of range; see the node log): the hospital should check the mapped columns"
                    ))
                }
                "57014" => Error::unavailable(format!(
                    "the hospital database at {host} cancelled the query after data.postgres.statement_timeout_ms; raise the timeout or check the database's load and indexes"
                )),
                c if c.starts_with("57P") || c.starts_with("08") || c.starts_with("53") => {
                    Error::unavailable(format!(
                        "the hospital database at {host} is unavailable ({}): check that PostgreSQL is running and accepts connections",
                        d.message()
                    ))
                }
                c if c.starts_with("28") => Error::unavailable(format!(
                    "the hospital database at {host} refused the node's login ({}): check the role and its password (data.postgres.url, password_file or password_env)",
                    d.message()
                )),
                "42501" => Error::data(format!(
                    "the node's role may not read a mapped table at {host} ({}): grant SELECT as in deploy/postgres/readonly-role.sql",
                    d.message()
                )),
                _ => {
                    tracing::warn!(host, code, error = %d.message(), "warehouse query failed");
                    Error::data(format!(
                        "the hospital database at {host} could not answer the query (SQLSTATE {code}; see the node log): check the mapping under [data.postgres] against the tables"
                    ))
                }
            }
        }
        _ => {
            tracing::warn!(host, error = %e, "warehouse call failed");
            Error::unavailable(format!(
                "the hospital database at {host} could not be used ({e}): check that PostgreSQL is running and that data.postgres.url is right"
            ))
        }
    }
}

fn read_secret(path: &std::path::Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
        .map_err(|e| {
            Error::invalid(format!(
                "cannot read {what} {} ({e}); check the path and that the node's user may read it",
                path.display()
            ))
        })
}

/// Connection settings from the config: URL, password, TLS, and the
/// session settings every connection starts with.
pub fn connect_options(cfg: &WarehouseConfig) -> Result<PgConnectOptions> {
    let url = match (&cfg.url, &cfg.url_file) {
        (Some(u), _) => u.clone(),
        (None, Some(p)) => read_secret(p, "data.postgres.url_file")?,
        (None, None) => return Err(Error::invalid("data.postgres.url is missing")),
    };
    let mut opts = PgConnectOptions::from_str(url.trim()).map_err(|e| {
        // The URL may hold a password: never quote it.
        Error::invalid(format!(
            "data.postgres.url is not a postgres:// URL ({}); write postgres://user@host:port/database",
            match e {
                sqlx::Error::Configuration(_) => "cannot parse it",
                _ => "invalid",
            }
        ))
    })?;
    if let Some(p) = &cfg.password_file {
        opts = opts.password(&read_secret(p, "data.postgres.password_file")?);
    }
    if let Some(var) = &cfg.password_env {
        let pw = std::env::var(var).map_err(|_| {
            Error::invalid(format!(
                "data.postgres.password_env names {var}, which is not set in the node's environment"
            ))
        })?;
        opts = opts.password(&pw);
    }
    if let Some(m) = cfg.sslmode {
        opts = opts.ssl_mode(match m {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        });
    }
    if let Some(ca) = &cfg.ca {
        opts = opts.ssl_root_cert(ca);
    }
    // Dates of timestamptz columns are taken in UTC, whatever the server's
    // default time zone, so a window's edges do not move with it.
    Ok(opts.application_name("plexus-node").options([
        ("default_transaction_read_only", "on".to_string()),
        ("statement_timeout", cfg.statement_timeout_ms.to_string()),
        ("TimeZone", "UTC".to_string()),
    ]))
}

impl Warehouse {
    /// Connects, checks the session is read only, and checks the mapping
    /// against the catalogue; refuses to start with an error naming the
    /// field when something does not fit.
    pub(crate) async fn open(
        cfg: &WarehouseConfig,
        consent_files: &ConsentConfig,
        dict: Arc<Dictionary>,
    ) -> Result<Self> {
        cfg.validate()?;
        let opts = connect_options(cfg)?;
        let host = format!("{}:{}", opts.get_host(), opts.get_port());
        let timeout = Duration::from_millis(cfg.connect_timeout_ms);
        let pool = PgPoolOptions::new()
            .max_connections(cfg.pool_size)
            .acquire_timeout(timeout)
            .connect_with(opts)
            .await
            .map_err(|e| db_error(&host, e))?;
        let ro: String = sqlx::query_scalar("SHOW transaction_read_only")
            .fetch_one(&pool)
            .await
            .map_err(|e| db_error(&host, e))?;
        if ro != "on" {
            return Err(Error::invalid(format!(
                "sessions at {host} are not read only although the node asks for default_transaction_read_only = on (a connection pooler may drop start-up options); connect to PostgreSQL directly or set it for the role: ALTER ROLE ... SET default_transaction_read_only = on"
            )));
        }
        let (person, id) = catalog::person(&pool, &host, cfg).await?;
        let mut findings = catalog::Findings::default();
        let (vars, events) =
            catalog::map_variables(&pool, &host, cfg, &person, &id, &dict, &mut findings).await?;
        for n in &findings.notices {
            tracing::warn!(host = %host, "{n}");
        }
        for n in &findings.local {
            tracing::warn!(host = %host, "{n} (kept in this log only: it says something about the patients)");
        }
        let consent = match &cfg.consent {
            Some(t) => Consent::Tables(catalog::consent(&pool, &host, cfg, t).await?),
            None => {
                consent_files.validate()?;
                Consent::Files(ConsentSource::open(consent_files).await?)
            }
        };
        let (domains, domain_tables, vocabulary) = if cfg.study_concept_sets {
            let (d, t) = catalog::domains(&pool, &host, cfg).await?;
            (
                d,
                t,
                Some(catalog::Vocabulary::load(&pool, &host, cfg).await?),
            )
        } else {
            (BTreeMap::new(), Vec::new(), None)
        };
        let mut tables: Vec<&Table> = vec![&person];
        tables.extend(events.iter());
        tables.extend(domain_tables.iter());
        if let Consent::Tables(c) = &consent {
            tables.extend(c.tables.iter());
        }
        // In mapping order, each table once (a domain table may be mapped too).
        let mut names: Vec<String> = Vec::new();
        for t in &tables {
            let n = t.ident.sql().to_string();
            if !names.contains(&n) {
                names.push(n);
            }
        }
        let wh = Warehouse {
            pool,
            host,
            dict,
            person,
            id,
            vars,
            consent,
            tables: names,
            snapshot_query: cfg.snapshot_query.clone(),
            models: ModelCache::new(),
            state: Mutex::new((String::new(), None)),
            timeout,
            findings,
            domains,
            vocabulary,
            expanded: Mutex::new(BTreeMap::new()),
        };
        wh.check_categories().await?;
        wh.check_writable(cfg.refuse_writable_role).await?;
        let snap = wh.fresh_snapshot().await?;
        wh.state.lock().expect("state lock").0 = snap;
        Ok(wh)
    }

    pub fn variables(&self) -> Vec<String> {
        self.vars.keys().cloned().collect()
    }

    /// The mapping's start-up notices decided on the configuration and the
    /// vocabulary alone, which the node may report to the coordinator.
    pub fn notices(&self) -> &[String] {
        &self.findings.notices
    }

    /// Start-up findings that depend on patient data: for the node's own
    /// log and the hospital's checks, never sent.
    pub fn local_findings(&self) -> &[String] {
        &self.findings.local
    }

    /// The last snapshot taken (refreshed by [`Self::refresh`]).
    pub fn snapshot(&self) -> String {
        self.state.lock().expect("state lock").0.clone()
    }

    /// `None` when the database answered the last check, else why not.
    pub fn health(&self) -> Option<String> {
        self.state.lock().expect("state lock").1.clone()
    }

    /// Probes the database and records its snapshot and health.
    pub async fn refresh(&self) -> Option<String> {
        let probe = tokio::time::timeout(self.timeout, self.fresh_snapshot()).await;
        let result = match probe {
            Ok(r) => r,
            Err(_) => Err(Error::unavailable(format!(
                "the hospital database at {} did not answer within {} ms: check that PostgreSQL is running and reachable from the node",
                self.host,
                self.timeout.as_millis()
            ))),
        };
        let mut state = self.state.lock().expect("state lock");
        match result {
            Ok(s) => {
                if state.1.is_some() {
                    tracing::info!(host = %self.host, "the hospital database answers again");
                }
                *state = (s, None);
            }
            Err(e) => {
                if state.1.is_none() {
                    tracing::warn!(host = %self.host, error = %e, "the hospital database is unavailable; the node reports itself degraded");
                }
                state.1 = Some(e.message);
            }
        }
        state.1.clone()
    }

    /// A failed query also marks the node degraded until the next probe.
    fn note(&self, r: &Result<RawStats>) {
        if let Err(e) = r {
            if e.code == ErrorCode::Unavailable {
                self.state.lock().expect("state lock").1 = Some(e.message.clone());
            }
        }
    }

    /// Something that changes when the data changes: the configured
    /// `snapshot_query`'s first row, or the tables' insert/update/delete
    /// counters from `pg_stat_user_tables` (which PostgreSQL publishes
    /// within about a second of a commit), plus the consent files' stamps.
    async fn fresh_snapshot(&self) -> Result<String> {
        let mut text = match &self.snapshot_query {
            Some(q) => {
                let row = sqlx::query(q)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| db_error(&self.host, e))?;
                match row {
                    Some(r) => {
                        let cols = r.len();
                        (0..cols)
                            .map(|i| r.try_get::<Option<String>, _>(i).ok().flatten().unwrap_or_default())
                            .collect::<Vec<_>>()
                            .join("\0")
                    }
                    None => String::new(),
                }
            }
            None => sqlx::query_scalar::<_, Option<String>>(
                "SELECT string_agg(relid::regclass::text || ':' || n_tup_ins || ':' || n_tup_upd || ':' || n_tup_del, ',' ORDER BY relid) \
                 FROM pg_stat_user_tables WHERE relid = ANY($1::text[]::regclass[])",
            )
            .bind(&self.tables)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error(&self.host, e))?
            .unwrap_or_default(),
        };
        if let Consent::Files(c) = &self.consent {
            for p in c.paths() {
                let s = super::files::stamp(p, "consent file")?;
                text.push_str(&format!("\n{}\0{}\0{}", p.display(), s.len, s.modified_ns));
            }
        }
        Ok(plexus_core::hash::sha256_hex(text.as_bytes()))
    }

    /// Warns (or refuses, with `refuse_writable_role`) when the node's role
    /// could write to a mapped table. The node's own sessions are read only
    /// whatever the role may do, so by default this is a warning: a
    /// hospital may grant SELECT-only later without blocking the network.
    async fn check_writable(&self, refuse: bool) -> Result<()> {
        let writable: Vec<String> = sqlx::query_scalar(
            "SELECT t FROM unnest($1::text[]) AS t \
             WHERE has_table_privilege(t, 'INSERT') OR has_table_privilege(t, 'UPDATE') \
                OR has_table_privilege(t, 'DELETE') OR has_table_privilege(t, 'TRUNCATE')",
        )
        .bind(&self.tables)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(&self.host, e))?;
        if writable.is_empty() {
            return Ok(());
        }
        let msg = format!(
            "the node's database role may write to {} at {}; give the node a role with SELECT only (deploy/postgres/readonly-role.sql)",
            writable.join(", "),
            self.host
        );
        if refuse {
            return Err(Error::invalid(format!(
                "{msg}, or unset data.postgres.refuse_writable_role"
            )));
        }
        tracing::warn!("{msg}; the node's sessions are read only regardless");
        Ok(())
    }

    /// Every category in a mapped text column is one the dictionary lists,
    /// and every code of a boolean held as codes one its mapping declares.
    async fn check_categories(&self) -> Result<()> {
        for (name, var) in &self.vars {
            let mut params = sql::Params::default();
            let (v, allowed) = match (var.kind, &var.booleans) {
                (plexus_core::VarType::Categorical, _) => (
                    sql::value(var, self.id.ident.sql(), &mut params),
                    self.dict.get(name)?.categories.clone(),
                ),
                (plexus_core::VarType::Boolean, Some(b)) => (
                    format!(
                        "({})::text",
                        sql::raw(var, self.id.ident.sql(), &mut params)
                    ),
                    b.declared(),
                ),
                _ => continue,
            };
            let allowed_param = params.push(sql::Param::Texts(allowed), "text[]");
            let text = format!(
                "SELECT DISTINCT x FROM (SELECT {v} AS x FROM {} p{}) s WHERE x IS NOT NULL AND NOT (x = ANY({allowed_param})) LIMIT 3",
                self.person.ident.sql(),
                params.joins()
            );
            let bad: Vec<String> = params
                .bind(sqlx::query(&text))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error(&self.host, e))?
                .iter()
                .map(|r| format!("{:?}", r.get::<String, _>(0)))
                .collect();
            if bad.is_empty() {
                continue;
            }
            return Err(Error::data(match &var.booleans {
                Some(b) => format!(
                    "variable \"{name}\" holds values that are in none of its lists (e.g. {}); data.postgres.variables.{name} declares {}: add each value to the list it belongs to (missing_values for unknowns), or fix the data",
                    bad.join(", "),
                    b.described()
                ),
                None => format!(
                    "variable \"{name}\" holds values that are not categories of the dictionary (e.g. {}; allowed: {}); fix the data or map another column",
                    bad.join(", "),
                    self.dict.get(name)?.categories.join(", ")
                ),
            }));
        }
        Ok(())
    }

    /// Runs one query (or one regression round) as `DataSource::compute`
    /// does for files, with the same results.
    pub async fn compute(
        &self,
        query: &Query,
        purpose: &Purpose,
        today: NaiveDate,
        limits: Limits,
        iteration: Option<&Iteration>,
    ) -> Result<RawStats> {
        let study = StudyScope::network(self.dict.clone());
        self.compute_in(&study, query, purpose, today, limits, iteration)
            .await
    }

    /// One of a study's own concept sets as the presence of a row of its
    /// domain's table (with the row's date, for the study's windows),
    /// expanded with the vocabulary the first time it is asked. Refused,
    /// naming the set and the rule, when the hospital does not take a
    /// study's concept sets.
    pub(crate) async fn study_set(
        &self,
        name: &str,
        set: &plexus_core::timeline::StudyConceptSet,
    ) -> Result<Var> {
        let at = format!("the study's concept set \"{name}\"");
        let (Some(vocabulary), Some(d)) = (&self.vocabulary, self.domains.get(&set.domain)) else {
            return Err(Error::policy(format!(
                "{at} is read from this node's OMOP tables, which the hospital has not opened to a study's own concept sets (data.postgres.study_concept_sets = true in node.toml); ask the hospital, or use the dictionary's variables"
            )));
        };
        let key = serde_json::to_string(set).expect("a concept set serialises");
        let cached = self.expanded.lock().expect("sets lock").get(&key).cloned();
        let ids = match cached {
            Some(ids) => ids,
            None => {
                let listed = config::ConceptSet::of(&set.concepts, &set.exclude, set.descendants);
                let ids = vocabulary
                    .expand(&self.pool, &self.host, &listed, &at)
                    .await?;
                let ids = Arc::new(ids);
                self.expanded
                    .lock()
                    .expect("sets lock")
                    .insert(key, ids.clone());
                ids
            }
        };
        Ok(Var {
            kind: plexus_core::VarType::Boolean,
            source: catalog::Source::Event {
                table: d.table.clone(),
                person: d.person.clone(),
                concept: Some((d.concept.clone(), ids.to_vec())),
                value: None,
                pick: config::Pick::Latest,
                dated: Some(d.date.clone()),
                text_ids: d.text_ids,
            },
            booleans: None,
            levels: None,
            age_at: None,
        })
    }

    /// [`Self::compute`] for a job of a study that may derive variables
    /// of its own (`study`), built here from this node's mapping.
    pub async fn compute_in(
        &self,
        study: &StudyScope,
        query: &Query,
        purpose: &Purpose,
        today: NaiveDate,
        limits: Limits,
        iteration: Option<&Iteration>,
    ) -> Result<RawStats> {
        let r = async {
            let scope = compute::Scope::new(self, study, query).await?;
            compute::run(&scope, query, purpose, today, limits, iteration).await
        }
        .await;
        self.note(&r);
        r
    }
}
