//! Persistent coordinator state: studies, queries, jobs and the audit log,
//! in SQLite (the default, one coordinator) or PostgreSQL (production, and
//! active/standby coordinators sharing one database) through sqlx. A
//! restart loses nothing that was acknowledged.
//!
//! One `Store` holds either pool; every statement is written once, with
//! `$1`-style parameters both databases read, and [`on_pool`] runs it on
//! whichever pool is open, each arm compiled for its own driver (so rows
//! decode natively; sqlx's `Any` driver would copy every value of a
//! million-row audit read through its own types and cannot set SQLite's
//! journal options).

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use plexus_core::StudyDefinition;

use crate::error::Result;

/// The SQLSTATE the PostgreSQL fencing trigger raises when a coordinator
/// writes under an epoch that is no longer the lease's.
pub const FENCED_SQLSTATE: &str = "PX001";

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the open pool, compiled once per
/// database.
macro_rules! on_pool_raw {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// [`on_pool`] for a statement that writes: on SQLite with group commit,
/// through the one writing connection (see [`Store::writer`]).
macro_rules! on_writer {
    ($store:expr, $pool:ident => $body:expr) => {{
        let store: &Store = &$store;
        let r: Result<_> = async {
            match (&store.pool, &store.writer) {
                (Pool::Sqlite(_), Some($pool)) => $body,
                (Pool::Sqlite($pool), None) => $body,
                (Pool::Postgres($pool), _) => $body,
            }
        }
        .await;
        r.map_err(|e| store.named(e))
    }};
}

/// [`on_pool_raw`] for a body that returns a [`Result`]: a database error
/// comes back naming the database it came from.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {{
        let store: &Store = &$store;
        let r: Result<_> = async { on_pool_raw!(store, $pool => $body) }.await;
        r.map_err(|e| store.named(e))
    }};
}

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryStatus {
    Pending,
    Succeeded,
    Failed,
}

impl QueryStatus {
    fn as_str(self) -> &'static str {
        match self {
            QueryStatus::Pending => "pending",
            QueryStatus::Succeeded => "succeeded",
            QueryStatus::Failed => "failed",
        }
    }
    fn parse(s: &str) -> Self {
        match s {
            "succeeded" => QueryStatus::Succeeded,
            "failed" => QueryStatus::Failed,
            _ => QueryStatus::Pending,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoredStudy {
    pub definition: StudyDefinition,
    pub definition_hash: String,
    pub registered_at: i64,
}

/// A model registered with a study.
#[derive(Debug, Clone)]
pub struct StoredModel {
    pub study_id: String,
    pub artefact: plexus_core::models::artefact::ModelArtefact,
    pub hash: String,
    pub registered_by: String,
    pub registered_at: i64,
}

#[derive(Debug, Clone)]
pub struct StoredQuery {
    pub id: String,
    pub study_id: String,
    pub researcher: String,
    pub query_json: String,
    pub query_hash: String,
    pub status: QueryStatus,
    pub result_json: Option<String>,
    pub error: Option<plexus_core::Error>,
    pub submitted_at: i64,
    pub finished_at: Option<i64>,
}

pub use plexus_core::audit::AuditEntry;
pub use plexus_core::merkle::Checkpoint;

/// What [`Store::interrupted`] found.
#[derive(Debug, Clone, Default)]
pub struct Interrupted {
    pub queries: Vec<InterruptedQuery>,
    /// Jobs still out, as (job, query, node), whose outcome is not audited.
    pub jobs: Vec<(String, String, String)>,
}

#[derive(Debug, Clone)]
pub struct InterruptedQuery {
    pub query: StoredQuery,
    /// Whether the log holds its `query.submit` entry: without one, the
    /// coordinator stopped before the query was accepted.
    pub submit_audited: bool,
    /// Whether the log holds its `query.result` entry already.
    pub result_audited: bool,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub study_id: Option<String>,
    pub who: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: Option<u32>,
}

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// On SQLite, the one connection every write goes through (`pool`
    /// then only reads). Writers queue for it in the pool, without
    /// SQLite's lock contention and its busy-wait sleeps between
    /// connections. It runs with `synchronous = NORMAL`: a commit is
    /// appended to the write-ahead log without an fsync, except an audit
    /// batch, committed with `FULL`, whose fsync of the WAL file makes
    /// every earlier commit durable with it. Every write the coordinator
    /// acknowledges is followed by its audit entry, so nothing
    /// acknowledged rests on an unsynced write, while one fsync per batch
    /// of entries replaces one per statement. `None` on PostgreSQL (every
    /// commit is durable there, and its own group commit gathers them) and
    /// in the baseline mode (`coordinator.audit_group_commit = false`:
    /// four connections that all write, every commit fsynced).
    writer: Option<SqlitePool>,
    /// The database as errors name it: the SQLite file, or the PostgreSQL
    /// URL without its password.
    name: std::sync::Arc<str>,
}

/// `url` as errors show it: a SQLite file's path, a PostgreSQL URL
/// without its password.
pub fn database_name(url: &str) -> String {
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or(url.strip_prefix("sqlite:"))
    {
        return path.split('?').next().unwrap_or(path).to_string();
    }
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let authority = match authority.rsplit_once('@') {
                Some((user, host)) => {
                    let user = user.split(':').next().unwrap_or(user);
                    format!("{user}@{host}")
                }
                None => authority.to_string(),
            };
            let tail = tail.split('?').next().unwrap_or(tail);
            format!("{scheme}://{authority}{tail}")
        }
        None => url.to_string(),
    }
}

impl Store {
    /// Opens (creating if needed) and migrates the database. On
    /// PostgreSQL the connections carry no epoch: once a coordinator holds
    /// the lease, writes through this store are refused (see
    /// [`Store::open_fenced`]).
    pub async fn open(url: &str) -> Result<Self> {
        Self::open_fenced(url, None).await
    }

    /// Opens the database; on PostgreSQL every connection carries the
    /// fencing `epoch` of the lease this coordinator holds, and the
    /// database refuses its writes once another coordinator took over.
    pub async fn open_fenced(url: &str, epoch: Option<i64>) -> Result<Self> {
        Self::open_with(url, epoch, true).await
    }

    /// [`Store::open_fenced`]; `group_commit = false` opens SQLite the way
    /// coordinators before group commit did (every commit fsynced, audit
    /// entries through the shared connections), to measure against.
    pub async fn open_with(url: &str, epoch: Option<i64>, group_commit: bool) -> Result<Self> {
        let name: std::sync::Arc<str> = database_name(url).into();
        let named = |e: sqlx::Error| crate::error::CoordinatorError::Db {
            database: name.to_string(),
            source: e,
        };
        let migrate = |e: sqlx::migrate::MigrateError| {
            crate::error::CoordinatorError::Config(format!(
                "cannot bring the database {name} up to date: {e}"
            ))
        };
        if is_postgres(url) {
            let mut opts = PgConnectOptions::from_str(url).map_err(named)?;
            if let Some(epoch) = epoch {
                opts = opts.options([("plexus.epoch", epoch.to_string())]);
            }
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(std::time::Duration::from_secs(10))
                .connect_with(opts)
                .await
                .map_err(named)?;
            sqlx::migrate!("./migrations/postgres")
                .run(&pool)
                .await
                .map_err(migrate)?;
            return Ok(Store {
                pool: Pool::Postgres(pool),
                writer: None,
                name,
            });
        }
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .map(|p| p.split('?').next().unwrap_or(p))
        {
            if let Some(dir) = std::path::Path::new(path)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir).map_err(|e| {
                    crate::error::CoordinatorError::Config(format!(
                        "cannot create the database folder {}: {e} (check coordinator.database_url and permissions)",
                        dir.display()
                    ))
                })?;
            }
        }
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(named)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(10))
            // A checkpoint truncates the WAL back to this size (64 MiB):
            // a WAL that grew while the volume was full gives the space
            // back instead of holding it.
            .pragma("journal_size_limit", "67108864")
            // Statement journals (an upsert of many rows inside a batch
            // opens one) and sorts stay in memory: on disk each was a new
            // file in /var/tmp, written page by page and unlinked.
            .pragma("temp_store", "memory");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.clone())
            .await
            .map_err(named)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(migrate)?;
        let writer = if group_commit {
            Some(
                SqlitePoolOptions::new()
                    .max_connections(1)
                    // Writers wait in this queue under load, not in SQLite.
                    .acquire_timeout(std::time::Duration::from_secs(120))
                    .connect_with(
                        opts.synchronous(SqliteSynchronous::Normal)
                            // The writer rewrites the same pages batch after
                            // batch: 32 MiB keeps them in memory instead of
                            // reading them back (SQLite's default is 2 MiB).
                            .pragma("cache_size", "-32768")
                            // Move the WAL into the database every 10,000
                            // pages (40 MiB) rather than every 1,000: a page
                            // rewritten by many commits is copied once.
                            .pragma("wal_autocheckpoint", "10000"),
                    )
                    .await
                    .map_err(named)?,
            )
        } else {
            None
        };
        let store = Store {
            pool: Pool::Sqlite(pool),
            writer,
            name,
        };
        store.checkpoint_wal().await;
        Ok(store)
    }

    /// Runs one statement (tests make the database misbehave with it).
    #[cfg(test)]
    pub(crate) async fn exec_for_test(&self, sql: &str) {
        on_pool_raw!(self, pool => {
            sqlx::query(sql).execute(pool).await.expect(sql);
        })
    }

    /// The database as errors name it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `e` naming this store's database, when it is a database error.
    pub(crate) fn named(
        &self,
        e: crate::error::CoordinatorError,
    ) -> crate::error::CoordinatorError {
        match e {
            crate::error::CoordinatorError::Database(source) => {
                crate::error::CoordinatorError::Db {
                    database: self.name.to_string(),
                    source,
                }
            }
            other => other,
        }
    }

    /// Moves everything in SQLite's write-ahead log into the database and
    /// truncates the log to nothing (at start-up and at a clean stop): a
    /// WAL that grew while the volume was full, or that a crash left,
    /// gives its space back. A failure is only logged: the WAL is still
    /// read correctly, it just keeps its size until the next checkpoint.
    pub async fn checkpoint_wal(&self) {
        if let Pool::Sqlite(pool) = &self.pool {
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(pool)
                .await
            {
                tracing::warn!(database = %self.name, error = %e, "could not checkpoint and truncate the SQLite write-ahead log");
            }
        }
    }

    /// The PostgreSQL pool, when the store is on PostgreSQL (the lease
    /// is taken through it).
    pub fn postgres(&self) -> Option<&PgPool> {
        match &self.pool {
            Pool::Postgres(p) => Some(p),
            Pool::Sqlite(_) => None,
        }
    }

    /// SQLite's `PRAGMA quick_check`: `Some(problems)` when the database
    /// file is damaged (PostgreSQL checks its own pages: always `None`).
    pub async fn quick_check(&self) -> Result<Option<String>> {
        match &self.pool {
            Pool::Postgres(_) => Ok(None),
            Pool::Sqlite(pool) => {
                let rows: Vec<String> = sqlx::query_scalar("PRAGMA quick_check")
                    .fetch_all(pool)
                    .await?;
                Ok((rows != ["ok"]).then(|| rows.join("; ")))
            }
        }
    }

    /// Closes the database after moving SQLite's write-ahead log into it.
    pub async fn close(&self) {
        self.checkpoint_wal().await;
        if let Some(p) = &self.writer {
            p.close().await;
        }
        on_pool_raw!(self, pool => pool.close().await)
    }

    /// Refuses every further use of the pool at once, without waiting for
    /// connections to close: nothing this store's owner still runs can
    /// write after it (statements already running finish).
    pub fn close_now(&self) {
        if let Some(p) = &self.writer {
            drop(p.close());
        }
        on_pool_raw!(self, pool => drop(pool.close()))
    }

    /// What a previous process (or the active coordinator this one took
    /// over from) left unfinished, to audit before
    /// [`Store::fail_interrupted`] marks it failed: its pending queries,
    /// each with whether the log holds its `query.submit` and its
    /// `query.result` entry (a result is audited before it is stored, so
    /// a crash between the two leaves a pending query already audited),
    /// and their jobs still out whose outcome the log does not hold, as
    /// (job, query, node).
    pub async fn interrupted(&self) -> Result<Interrupted> {
        let ids: Vec<String> = on_pool!(self, pool => {
            Ok(sqlx::query_scalar(
                "SELECT id FROM queries WHERE status = 'pending' ORDER BY submitted_at, id",
            )
            .fetch_all(pool)
            .await?)
        })?;
        if ids.is_empty() {
            return Ok(Interrupted::default());
        }
        let audited: Vec<(String, String)> = on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT query_id, action FROM audit_events WHERE action IN ('query.submit', 'query.result') \
                 AND query_id IN (SELECT id FROM queries WHERE status = 'pending')",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| Ok((r.try_get("query_id")?, r.try_get("action")?)))
                .collect::<Result<Vec<_>>>()
        })?;
        let mut queries = Vec::with_capacity(ids.len());
        for id in &ids {
            if let Some(q) = self.query(id).await? {
                let has = |action: &str| audited.iter().any(|(q, a)| q == id && a == action);
                queries.push(InterruptedQuery {
                    submit_audited: has("query.submit"),
                    result_audited: has("query.result"),
                    query: q,
                });
            }
        }
        let jobs = on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT j.id, j.query_id, j.node_id FROM jobs j WHERE j.status = 'sent' \
                 AND j.query_id IN (SELECT id FROM queries WHERE status = 'pending') \
                 AND NOT EXISTS (SELECT 1 FROM audit_events a WHERE a.job_id = j.id \
                 AND a.action = 'job' AND a.outcome <> 'sent') ORDER BY j.query_id, j.node_id, j.id",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| Ok((r.try_get("id")?, r.try_get("query_id")?, r.try_get("node_id")?)))
                .collect::<Result<Vec<_>>>()
        })?;
        Ok(Interrupted { queries, jobs })
    }

    /// Queries left pending by a previous process (or by the active
    /// coordinator this one took over from) can never finish: their node
    /// streams are gone. Marks them failed so researchers know to resubmit,
    /// and their jobs still out as interrupted.
    pub async fn fail_interrupted(&self) -> Result<u64> {
        on_writer!(self, pool => {
        let now = now_ms();
        sqlx::query(
            "UPDATE jobs SET status = 'interrupted', finished_at = $1 WHERE status = 'sent' \
             AND query_id IN (SELECT id FROM queries WHERE status = 'pending')",
        )
        .bind(now)
        .execute(pool)
        .await?;
        let r = sqlx::query(
            "UPDATE queries SET status = 'failed', error_code = 'unavailable', \
             error_message = 'the coordinator stopped before this query finished (a restart, or a failover to a standby coordinator); submit it again', \
             finished_at = $1 WHERE status = 'pending'",
        )
        .bind(now)
        .execute(pool)
        .await?;
        Ok(r.rows_affected())
        })
    }

    pub async fn upsert_study(&self, def: &StudyDefinition, by: &str) -> Result<bool> {
        on_writer!(self, pool => {
        let json = serde_json::to_string(def).expect("study serialises");
        let existed = self.study(&def.id).await?.is_some();
        sqlx::query(
            "INSERT INTO studies (id, definition, definition_hash, registered_by, registered_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT(id) DO UPDATE SET definition = excluded.definition, \
             definition_hash = excluded.definition_hash, registered_by = excluded.registered_by, \
             registered_at = excluded.registered_at",
        )
        .bind(&def.id)
        .bind(json)
        .bind(def.definition_hash())
        .bind(by)
        .bind(now_ms())
        .execute(pool)
        .await?;
        Ok(existed)
        })
    }

    fn row_to_study<R>(row: &R) -> Result<StoredStudy>
    where
        R: Row,
        for<'a> &'a str: sqlx::ColumnIndex<R>,
        usize: sqlx::ColumnIndex<R>,
        for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let json: String = row.try_get("definition")?;
        let definition: StudyDefinition = serde_json::from_str(&json).map_err(|e| {
            crate::error::CoordinatorError::Core(plexus_core::Error::internal(format!(
                "stored study is unreadable: {e}"
            )))
        })?;
        Ok(StoredStudy {
            definition,
            definition_hash: row.try_get("definition_hash")?,
            registered_at: row.try_get("registered_at")?,
        })
    }

    pub async fn study(&self, id: &str) -> Result<Option<StoredStudy>> {
        on_pool!(self, pool => {
        let row = sqlx::query("SELECT * FROM studies WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
        row.as_ref().map(Self::row_to_study).transpose()
        })
    }

    /// Registers `artefact` with `study` under its name, replacing a model
    /// of that name; says whether one was replaced.
    pub async fn upsert_model(
        &self,
        study: &str,
        artefact: &plexus_core::models::artefact::ModelArtefact,
        by: &str,
    ) -> Result<bool> {
        on_writer!(self, pool => {
        let spec = serde_json::to_string(&artefact.spec).expect("model spec serialises");
        let existed = self.model(study, &artefact.spec.name).await?.is_some();
        sqlx::query(
            "INSERT INTO models (study_id, name, hash, spec, file, registered_by, registered_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT(study_id, name) DO UPDATE SET \
             hash = excluded.hash, spec = excluded.spec, file = excluded.file, \
             registered_by = excluded.registered_by, registered_at = excluded.registered_at",
        )
        .bind(study)
        .bind(&artefact.spec.name)
        .bind(artefact.hash())
        .bind(spec)
        .bind(&artefact.bytes)
        .bind(by)
        .bind(now_ms())
        .execute(pool)
        .await?;
        Ok(existed)
        })
    }

    fn row_to_model<R>(row: &R) -> Result<StoredModel>
    where
        R: Row,
        for<'a> &'a str: sqlx::ColumnIndex<R>,
        for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let spec: String = row.try_get("spec")?;
        let spec = serde_json::from_str(&spec).map_err(|e| {
            crate::error::CoordinatorError::Core(plexus_core::Error::internal(format!(
                "stored model is unreadable: {e}"
            )))
        })?;
        Ok(StoredModel {
            study_id: row.try_get("study_id")?,
            artefact: plexus_core::models::artefact::ModelArtefact {
                spec,
                bytes: row.try_get("file")?,
            },
            hash: row.try_get("hash")?,
            registered_by: row.try_get("registered_by")?,
            registered_at: row.try_get("registered_at")?,
        })
    }

    pub async fn model(&self, study: &str, name: &str) -> Result<Option<StoredModel>> {
        on_pool!(self, pool => {
        let row = sqlx::query("SELECT * FROM models WHERE study_id = $1 AND name = $2")
            .bind(study)
            .bind(name)
            .fetch_optional(pool)
            .await?;
        row.as_ref().map(Self::row_to_model).transpose()
        })
    }

    pub async fn models(&self, study: &str) -> Result<Vec<StoredModel>> {
        on_pool!(self, pool => {
        let rows = sqlx::query("SELECT * FROM models WHERE study_id = $1 ORDER BY name")
            .bind(study)
            .fetch_all(pool)
            .await?;
        rows.iter().map(Self::row_to_model).collect()
        })
    }

    pub async fn studies(&self) -> Result<Vec<StoredStudy>> {
        on_pool!(self, pool => {
        let rows = sqlx::query("SELECT * FROM studies ORDER BY id")
            .fetch_all(pool)
            .await?;
        rows.iter().map(Self::row_to_study).collect()
        })
    }

    pub async fn insert_query(&self, q: &StoredQuery) -> Result<()> {
        on_writer!(self, pool => {
        sqlx::query(
            "INSERT INTO queries (id, study_id, researcher, query, query_hash, status, submitted_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&q.id)
        .bind(&q.study_id)
        .bind(&q.researcher)
        .bind(&q.query_json)
        .bind(&q.query_hash)
        .bind(q.status.as_str())
        .bind(q.submitted_at)
        .execute(pool)
        .await?;
        Ok(())
        })
    }

    pub async fn finish_query(
        &self,
        id: &str,
        outcome: std::result::Result<&str, &plexus_core::Error>,
    ) -> Result<()> {
        on_writer!(self, pool => {
        let (status, result, code, message) = match outcome {
            Ok(json) => (QueryStatus::Succeeded, Some(json.to_string()), None, None),
            Err(e) => (
                QueryStatus::Failed,
                None,
                Some(e.code.as_str().to_string()),
                Some(e.message.clone()),
            ),
        };
        sqlx::query(
            "UPDATE queries SET status = $1, result = $2, error_code = $3, error_message = $4, finished_at = $5 \
             WHERE id = $6",
        )
        .bind(status.as_str())
        .bind(result)
        .bind(code)
        .bind(message)
        .bind(now_ms())
        .bind(id)
        .execute(pool)
        .await?;
        Ok(())
        })
    }

    pub async fn query(&self, id: &str) -> Result<Option<StoredQuery>> {
        on_pool!(self, pool => {
        let row = sqlx::query("SELECT * FROM queries WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let code: Option<String> = row.try_get("error_code")?;
        let message: Option<String> = row.try_get("error_message")?;
        let error = code.map(|c| {
            let code =
                plexus_core::ErrorCode::parse(&c).unwrap_or(plexus_core::ErrorCode::Internal);
            plexus_core::Error::new(code, message.unwrap_or_default())
        });
        let status: String = row.try_get("status")?;
        Ok(Some(StoredQuery {
            id: row.try_get("id")?,
            study_id: row.try_get("study_id")?,
            researcher: row.try_get("researcher")?,
            query_json: row.try_get("query")?,
            query_hash: row.try_get("query_hash")?,
            status: QueryStatus::parse(&status),
            result_json: row.try_get("result")?,
            error,
            submitted_at: row.try_get("submitted_at")?,
            finished_at: row.try_get("finished_at")?,
        }))
        })
    }

    /// Marks a job as ended without an answer (not sent, or lost): the
    /// answered ones are written with their audit entry (see [`JobRow`]).
    pub async fn finish_job(
        &self,
        job_id: &str,
        status: &str,
        stats_json: Option<String>,
        error: Option<&plexus_core::Error>,
    ) -> Result<()> {
        on_writer!(self, pool => {
        sqlx::query(
            "UPDATE jobs SET status = $1, stats = $2, error_code = $3, error_message = $4, finished_at = $5 \
             WHERE id = $6",
        )
        .bind(status)
        .bind(stats_json)
        .bind(error.map(|e| e.code.as_str().to_string()))
        .bind(error.map(|e| e.message.clone()))
        .bind(now_ms())
        .bind(job_id)
        .execute(pool)
        .await?;
        Ok(())
        })
    }

    /// Records what a query spent of its study's budget (the most any
    /// node charged), with its canonical hash so a repeat is recognised.
    pub async fn record_charge(
        &self,
        query_id: &str,
        study: &str,
        canonical_hash: &str,
        rho: f64,
    ) -> Result<()> {
        on_writer!(self, pool => {
        sqlx::query(
            "INSERT INTO privacy_charges (query_id, study_id, canonical_hash, rho, at_unix_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (query_id) DO UPDATE SET rho = excluded.rho",
        )
        .bind(query_id)
        .bind(study)
        .bind(canonical_hash)
        .bind(rho)
        .bind(now_ms())
        .execute(pool)
        .await?;
        Ok(())
        })
    }

    /// What `study` has spent as the coordinator accounts it, and over how
    /// many charged queries.
    pub async fn spent(&self, study: &str) -> Result<(f64, u32)> {
        on_pool!(self, pool => {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(rho), 0.0) AS spent, COUNT(*) AS n FROM privacy_charges WHERE study_id = $1 AND rho > 0",
        )
        .bind(study)
        .fetch_one(pool)
        .await?;
        let n: i64 = row.try_get("n")?;
        Ok((row.try_get("spent")?, n as u32))
        })
    }

    /// Whether a query with this canonical form was charged in `study`
    /// before (the nodes then answer it from their caches, for free).
    pub async fn charged_before(&self, study: &str, canonical_hash: &str) -> Result<bool> {
        on_pool!(self, pool => {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM privacy_charges WHERE study_id = $1 AND canonical_hash = $2",
        )
        .bind(study)
        .bind(canonical_hash)
        .fetch_one(pool)
        .await?;
        let n: i64 = row.try_get("n")?;
        Ok(n > 0)
        })
    }

    /// Keeps what a node reported from its ledger for `study`. A node's
    /// spending only grows, so receipts of concurrent queries that arrive
    /// out of order never move it back.
    pub async fn record_node_budget(
        &self,
        study: &str,
        node: &str,
        spent: f64,
        budget: f64,
    ) -> Result<()> {
        on_writer!(self, pool => {
        sqlx::query(
            "INSERT INTO node_budgets (study_id, node_id, spent_rho, budget_rho, updated_unix_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (study_id, node_id) DO UPDATE SET \
             spent_rho = CASE WHEN excluded.spent_rho > node_budgets.spent_rho THEN excluded.spent_rho ELSE node_budgets.spent_rho END, \
             budget_rho = excluded.budget_rho, updated_unix_ms = excluded.updated_unix_ms",
        )
        .bind(study)
        .bind(node)
        .bind(spent)
        .bind(budget)
        .bind(now_ms())
        .execute(pool)
        .await?;
        Ok(())
        })
    }

    /// Every node's last report for `study` as (node, spent, budget, when).
    pub async fn node_budgets(&self, study: &str) -> Result<Vec<(String, f64, f64, i64)>> {
        on_pool!(self, pool => {
        let rows = sqlx::query(
            "SELECT node_id, spent_rho, budget_rho, updated_unix_ms FROM node_budgets WHERE study_id = $1 ORDER BY node_id",
        )
        .bind(study)
        .fetch_all(pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("node_id")?,
                    r.try_get("spent_rho")?,
                    r.try_get("budget_rho")?,
                    r.try_get("updated_unix_ms")?,
                ))
            })
            .collect()
        })
    }

    /// Keeps a node's signed statement about a job, its signature and the
    /// certificate it verified against, so a third party can check them.
    pub async fn record_signature(
        &self,
        job_id: &str,
        statement: &[u8],
        signature: &[u8],
        certificate: &[u8],
    ) -> Result<()> {
        on_writer!(self, pool => {
        sqlx::query(
            "UPDATE jobs SET statement = $1, signature = $2, node_certificate = $3 WHERE id = $4",
        )
        .bind(statement)
        .bind(signature)
        .bind(certificate)
        .bind(job_id)
        .execute(pool)
        .await?;
        Ok(())
        })
    }

    /// Up to `limit` kept statements of jobs whose id sorts after
    /// `after`: (job id, node id, statement, signature, certificate).
    #[allow(clippy::type_complexity)]
    pub async fn signed_statements(
        &self,
        after: &str,
        limit: u32,
    ) -> Result<Vec<(String, String, Vec<u8>, Vec<u8>, Vec<u8>)>> {
        on_pool!(self, pool => {
        let rows = sqlx::query(
            "SELECT id, node_id, statement, signature, node_certificate FROM jobs \
             WHERE id > $1 AND statement IS NOT NULL ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    r.try_get("node_id")?,
                    r.try_get("statement")?,
                    r.try_get("signature")?,
                    r.try_get("node_certificate")?,
                ))
            })
            .collect()
        })
    }

    /// A job's signed statement, signature and node certificate, when kept.
    pub async fn signature_of(&self, job_id: &str) -> Result<Option<(Vec<u8>, Vec<u8>, Vec<u8>)>> {
        on_pool!(self, pool => {
        let row = sqlx::query(
            "SELECT statement, signature, node_certificate FROM jobs WHERE id = $1 AND statement IS NOT NULL",
        )
        .bind(job_id)
        .fetch_optional(pool)
        .await?;
        row.map(|r| {
            Ok((
                r.try_get("statement")?,
                r.try_get("signature")?,
                r.try_get("node_certificate")?,
            ))
        })
        .transpose()
        })
    }

    /// What the jobs table keeps of a job's answer (its `stats` column):
    /// the released statistics, or under secure aggregation the public
    /// keys or the masked vector only.
    pub async fn job_answer(&self, job_id: &str) -> Result<Option<String>> {
        on_pool!(self, pool => {
        let row = sqlx::query("SELECT stats FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_optional(pool)
            .await?;
        Ok(row.map(|r| r.try_get("stats")).transpose()?.flatten())
        })
    }

    /// Jobs of one query as (job id, node, status).
    pub async fn jobs_of(&self, query_id: &str) -> Result<Vec<(String, String, String)>> {
        on_pool!(self, pool => {
        let rows =
            sqlx::query("SELECT id, node_id, status FROM jobs WHERE query_id = $1 ORDER BY node_id")
                .bind(query_id)
                .fetch_all(pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    r.try_get("node_id")?,
                    r.try_get("status")?,
                ))
            })
            .collect()
        })
    }

    /// Appends an entry at the `seq` it carries (the log's next position,
    /// assigned by the caller that keeps the Merkle tree).
    pub async fn append_audit(&self, e: &AuditEntry) -> Result<i64> {
        on_writer!(self, pool => {
        insert_audit_rows!(std::slice::from_ref(e))
            .build()
            .execute(pool)
            .await?;
        Ok(e.seq)
        })
    }

    /// Entries matching `f`: the newest `limit`, returned oldest first.
    pub async fn audit(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>> {
        on_pool!(self, pool => {
        let limit = i64::from(f.limit.unwrap_or(1000).clamp(1, 100_000));
        let rows = sqlx::query(concat!(
            "SELECT ",
            audit_columns!(),
            " FROM audit_events WHERE (CAST($1 AS TEXT) IS NULL OR study_id = $2) \
             AND (CAST($3 AS TEXT) IS NULL OR who = $4) AND (CAST($5 AS BIGINT) IS NULL OR at >= $6) \
             AND (CAST($7 AS BIGINT) IS NULL OR at < $8) ORDER BY seq DESC LIMIT $9"
        ))
        .bind(&f.study_id)
        .bind(&f.study_id)
        .bind(&f.who)
        .bind(&f.who)
        .bind(f.since)
        .bind(f.since)
        .bind(f.until)
        .bind(f.until)
        .bind(limit)
        .fetch_all(pool)
        .await?;
        rows.iter().rev().map(audit_entry).collect()
        })
    }

    /// Up to `limit` entries after `after_seq`, in log order.
    async fn audit_page(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditEntry>> {
        on_pool!(self, pool => {
        let rows = sqlx::query(concat!(
            "SELECT ",
            audit_columns!(),
            " FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
        rows.iter().map(audit_entry).collect()
        })
    }

    /// The entries with `lo < seq <= hi`, in log order.
    async fn audit_range(&self, lo: i64, hi: i64) -> Result<Vec<AuditEntry>> {
        on_pool!(self, pool => {
        let rows = sqlx::query(concat!(
            "SELECT ",
            audit_columns!(),
            " FROM audit_events WHERE seq > $1 AND seq <= $2 ORDER BY seq"
        ))
        .bind(lo)
        .bind(hi)
        .fetch_all(pool)
        .await?;
        rows.iter().map(audit_entry).collect()
        })
    }

    /// The whole log after entry `after`, in order, a page at a time: the
    /// entries that stand now are read a range at a time with two reads
    /// in flight (the database read is what rebuilding or verifying a
    /// million-entry log waits on), then those appended meanwhile. An error
    /// ends the pages; dropping the receiver stops the reading.
    pub fn audit_pages(&self, after: i64) -> tokio::sync::mpsc::Receiver<Result<Vec<AuditEntry>>> {
        const PAGE: i64 = 10_000;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let store = self.clone();
        tokio::spawn(async move {
            let last: std::result::Result<i64, _> = on_pool_raw!(store, pool => {
                sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM audit_events")
                    .fetch_one(pool)
                    .await
            });
            let last = match last {
                Ok(last) => last,
                Err(e) => {
                    let _ = tx.send(Err(store.named(e.into()))).await;
                    return;
                }
            };
            let mut reads = std::collections::VecDeque::new();
            let mut next = after;
            loop {
                while reads.len() < 2 && next < last {
                    let (lo, hi) = (next, (next + PAGE).min(last));
                    let store = store.clone();
                    reads.push_back(tokio::spawn(async move { store.audit_range(lo, hi).await }));
                    next = hi;
                }
                let Some(read) = reads.pop_front() else { break };
                let page = read.await.unwrap_or_else(|source| {
                    Err(crate::error::CoordinatorError::Task {
                        task: "audit log reading",
                        source,
                    })
                });
                let failed = page.is_err();
                if tx.send(page).await.is_err() || failed {
                    return;
                }
            }
            let mut after = after.max(last);
            loop {
                let page = store.audit_page(after, PAGE as u32).await;
                match &page {
                    Ok(p) if p.is_empty() => return,
                    Ok(p) => after = p.last().expect("not empty").seq,
                    Err(_) => {}
                }
                let failed = page.is_err();
                if tx.send(page).await.is_err() || failed {
                    return;
                }
            }
        });
        rx
    }

    /// One entry by its position.
    pub async fn audit_entry(&self, seq: i64) -> Result<Option<AuditEntry>> {
        on_pool!(self, pool => {
        let row = sqlx::query(concat!(
            "SELECT ",
            audit_columns!(),
            " FROM audit_events WHERE seq = $1"
        ))
        .bind(seq)
        .fetch_optional(pool)
        .await?;
        row.as_ref().map(audit_entry).transpose()
        })
    }

    /// Writes many entries in one transaction, each at the `seq` it
    /// carries: all of them or none (a batch of the group commit, an
    /// import, or a benchmark filling a log).
    pub async fn append_audit_batch(&self, entries: &[AuditEntry], jobs: &[JobRow]) -> Result<()> {
        if let Some(writer) = &self.writer {
            let mut conn = writer.acquire().await.map_err(|e| self.named(e.into()))?;
            let r = full_sync_batch(&mut conn, entries, jobs).await;
            if r.is_err() {
                // A commit that failed (a full disk) can leave SQLite's
                // transaction open on this connection; the next batch then
                // failed as `internal` ("Safety level may not be changed
                // inside a transaction") after space came back. The
                // connection is closed, which rolls that back, and the
                // next write opens a fresh one.
                conn.close_on_drop();
            }
            return r.map_err(|e| self.named(e));
        }
        on_pool!(self, pool => {
        let mut tx = pool.begin().await?;
        write_batch!(tx, entries, jobs);
        tx.commit().await?;
        Ok(())
        })
    }

    /// Writes job rows (see [`JobRow`]) in one transaction.
    pub async fn write_jobs(&self, jobs: &[JobRow]) -> Result<()> {
        on_writer!(self, pool => {
        let mut tx = pool.begin().await?;
        write_batch!(tx, &[] as &[AuditEntry], jobs);
        tx.commit().await?;
        Ok(())
        })
    }

    pub async fn insert_checkpoint(&self, c: &Checkpoint) -> Result<()> {
        on_writer!(self, pool => {
        sqlx::query(
            "INSERT INTO audit_checkpoints (origin, size, root, at, signature) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&c.origin)
        .bind(c.head.size as i64)
        .bind(&c.head.root)
        .bind(c.at_unix_ms)
        .bind(&c.signature)
        .execute(pool)
        .await?;
        Ok(())
        })
    }

    /// The checkpoint published last.
    pub async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>> {
        on_pool!(self, pool => {
        let row = sqlx::query("SELECT * FROM audit_checkpoints ORDER BY id DESC LIMIT 1")
            .fetch_optional(pool)
            .await?;
        row.map(|r| {
            Ok(Checkpoint {
                origin: r.try_get("origin")?,
                head: plexus_core::merkle::TreeHead {
                    size: r.try_get::<i64, _>("size")? as u64,
                    root: r.try_get("root")?,
                },
                at_unix_ms: r.try_get("at")?,
                signature: r.try_get("signature")?,
            })
        })
        .transpose()
        })
    }
}

/// The statement that writes entry `$e` (a macro: each database's arm of
/// [`on_pool`] builds its own query type).
/// One audit batch on the writing connection, committed at
/// `synchronous = FULL`: this commit fsyncs the WAL, and with it every
/// earlier commit of the NORMAL writes (see [`Store::writer`]). The
/// write's own error is the one reported.
async fn full_sync_batch(
    conn: &mut sqlx::pool::PoolConnection<sqlx::Sqlite>,
    entries: &[AuditEntry],
    jobs: &[JobRow],
) -> Result<()> {
    sqlx::query("PRAGMA synchronous = FULL")
        .execute(&mut **conn)
        .await?;
    let written: Result<()> = async {
        let mut tx = sqlx::Connection::begin(&mut **conn).await?;
        write_batch!(tx, entries, jobs);
        tx.commit().await?;
        Ok(())
    }
    .await;
    let normal = sqlx::query("PRAGMA synchronous = NORMAL")
        .execute(&mut **conn)
        .await;
    written?;
    normal?;
    Ok(())
}

/// Entries written by one statement of a batch: each statement is a round
/// trip to the database (on SQLite, a hand-off to its worker thread while
/// the one writing connection is held), so a batch of a thousand entries
/// costs two statements, not a thousand. 18 values a row stays well
/// inside SQLite's 32,766 and PostgreSQL's 65,535 bound values.
const AUDIT_ROWS_PER_STATEMENT: usize = 500;

/// One statement writing `$rows` (a slice of entries, each at the `seq` it
/// carries).
macro_rules! insert_audit_rows {
    ($rows:expr) => {{
        let mut q = sqlx::QueryBuilder::new(concat!(
            "INSERT INTO audit_events (",
            audit_columns!(),
            ") "
        ));
        q.push_values($rows, |mut b, e: &AuditEntry| {
            b.push_bind(e.seq)
                .push_bind(e.at)
                .push_bind(e.who.clone())
                .push_bind(e.role.as_str())
                .push_bind(e.action.as_str())
                .push_bind(e.study_id.clone())
                .push_bind(e.purpose.clone())
                .push_bind(e.query_id.clone())
                .push_bind(e.job_id.clone())
                .push_bind(e.node_id.clone())
                .push_bind(serde_json::to_string(&e.nodes).expect("strings serialise"))
                .push_bind(e.query_hash.clone())
                .push_bind(e.result_size.map(|n| n as i64))
                .push_bind(e.suppressed as i64)
                .push_bind(e.privacy_cost)
                .push_bind(e.privacy_remaining)
                .push_bind(e.outcome.to_string())
                .push_bind(e.detail.clone());
        });
        q
    }};
}
use insert_audit_rows;

/// A job's row as one write leaves it: sent (`status = 'sent'`, no
/// `finished_at`) or finished. Written with the job's audit entry in the
/// group commit's transaction ([`crate::audit_log::AuditLog::append_with_job`]).
#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: String,
    pub query_id: String,
    pub node_id: String,
    pub status: String,
    pub stats: Option<String>,
    pub error: Option<(String, String)>,
    /// When sent, or when finished.
    pub at: i64,
    pub finished: bool,
    /// The node's signed statement, its signature and the certificate it
    /// verified against (see [`Store::record_signature`]).
    pub signed: Option<(Vec<u8>, Vec<u8>, Vec<u8>)>,
}

impl JobRow {
    /// A job about to leave for `node_id`.
    pub fn sent(id: &str, query_id: &str, node_id: &str) -> Self {
        JobRow {
            id: id.to_string(),
            query_id: query_id.to_string(),
            node_id: node_id.to_string(),
            status: "sent".to_string(),
            stats: None,
            error: None,
            at: now_ms(),
            finished: false,
            signed: None,
        }
    }

    /// A job's end, with what the node answered and its signed statement.
    pub fn finished(
        (id, query_id, node_id): (&str, &str, &str),
        status: &str,
        stats: Option<String>,
        error: Option<&plexus_core::Error>,
        signed: Option<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    ) -> Self {
        JobRow {
            status: status.to_string(),
            stats,
            error: error.map(|e| (e.code.as_str().to_string(), e.message.clone())),
            finished: true,
            signed,
            ..JobRow::sent(id, query_id, node_id)
        }
    }
}

/// Job rows written by one statement (12 values a row).
const JOB_ROWS_PER_STATEMENT: usize = 500;

/// One statement writing `$rows` of [`JobRow`]: a new job is inserted, a
/// finished one updates its row keeping when it was sent and, when it
/// brings none, the signed statement already kept.
macro_rules! upsert_jobs {
    ($rows:expr) => {{
        let mut q = sqlx::QueryBuilder::new(
            "INSERT INTO jobs (id, query_id, node_id, status, stats, error_code, error_message, \
             sent_at, finished_at, statement, signature, node_certificate) ",
        );
        q.push_values($rows, |mut b, j: &JobRow| {
            let (code, message) = j.error.clone().unzip();
            let (statement, signature, certificate) = match j.signed.clone() {
                Some((s, g, c)) => (Some(s), Some(g), Some(c)),
                None => (None, None, None),
            };
            b.push_bind(j.id.clone())
                .push_bind(j.query_id.clone())
                .push_bind(j.node_id.clone())
                .push_bind(j.status.clone())
                .push_bind(j.stats.clone())
                .push_bind(code)
                .push_bind(message)
                .push_bind(j.at)
                .push_bind(j.finished.then_some(j.at))
                .push_bind(statement)
                .push_bind(signature)
                .push_bind(certificate);
        });
        q.push(
            " ON CONFLICT (id) DO UPDATE SET status = excluded.status, stats = excluded.stats, \
             error_code = excluded.error_code, error_message = excluded.error_message, \
             finished_at = excluded.finished_at, \
             statement = COALESCE(excluded.statement, jobs.statement), \
             signature = COALESCE(excluded.signature, jobs.signature), \
             node_certificate = COALESCE(excluded.node_certificate, jobs.node_certificate)",
        );
        q
    }};
}
use upsert_jobs;

/// The statements of one batch in transaction `$tx`: the job rows
/// ([`JobRow`]), then the audit entries, many rows a statement.
macro_rules! write_batch {
    ($tx:expr, $entries:expr, $jobs:expr) => {{
        let (entries, jobs): (&[AuditEntry], &[JobRow]) = ($entries, $jobs);
        for rows in jobs.chunks(JOB_ROWS_PER_STATEMENT) {
            upsert_jobs!(rows).build().execute(&mut *$tx).await?;
        }
        for rows in entries.chunks(AUDIT_ROWS_PER_STATEMENT) {
            insert_audit_rows!(rows).build().execute(&mut *$tx).await?;
        }
    }};
}
use write_batch;

/// The columns [`audit_entry`] reads, by position.
macro_rules! audit_columns {
    () => {
        "seq, at, who, role, action, study_id, purpose, query_id, job_id, node_id, nodes, \
         query_hash, result_size, suppressed, privacy_cost, privacy_remaining, outcome, detail"
    };
}
use audit_columns;

/// An entry from a row of [`audit_columns`], read by position (a million
/// rows are read when the log is verified or the tree rebuilt).
fn audit_entry<R>(r: &R) -> Result<AuditEntry>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let nodes: String = r.try_get(10)?;
    let seq: i64 = r.try_get(0)?;
    // A role, action or outcome no version writes: an edited database.
    let closed = |e: plexus_core::audit::UnknownValue| {
        plexus_core::Error::internal(format!("audit entry {seq}: {e}"))
    };
    Ok(AuditEntry {
        seq,
        at: r.try_get(1)?,
        who: r.try_get(2)?,
        role: r.try_get::<String, _>(3)?.parse().map_err(closed)?,
        action: r.try_get::<String, _>(4)?.parse().map_err(closed)?,
        study_id: r.try_get(5)?,
        purpose: r.try_get(6)?,
        query_id: r.try_get(7)?,
        job_id: r.try_get(8)?,
        node_id: r.try_get(9)?,
        nodes: if nodes == "[]" {
            Vec::new()
        } else {
            serde_json::from_str(&nodes).unwrap_or_else(|_| vec![nodes.clone()])
        },
        query_hash: r.try_get(11)?,
        result_size: r.try_get::<Option<i64>, _>(12)?.map(|n| n as u64),
        suppressed: r.try_get::<i64, _>(13)? as u64,
        privacy_cost: r.try_get(14)?,
        privacy_remaining: r.try_get(15)?,
        outcome: r.try_get::<String, _>(16)?.parse().map_err(closed)?,
        detail: r.try_get(17)?,
    })
}

#[cfg(test)]
mod tests {
    /// Errors name the database without ever showing a password.
    #[test]
    fn database_names_show_the_file_or_the_server_never_a_password() {
        use super::database_name;
        assert_eq!(
            database_name("sqlite:///var/lib/plexus-coordinator/coordinator.db?mode=rwc"),
            "/var/lib/plexus-coordinator/coordinator.db"
        );
        assert_eq!(
            database_name("postgres://plexus:s3cret@db.example:5432/plexus?sslmode=verify-full"),
            "postgres://plexus@db.example:5432/plexus"
        );
        assert_eq!(
            database_name("postgresql://db.example/plexus"),
            "postgresql://db.example/plexus"
        );
    }

    /// The SQLite and PostgreSQL migrations stay in step: the same
    /// versions under the same names, in the same order.
    #[test]
    fn migration_folders_hold_the_same_versions() {
        let names = |m: sqlx::migrate::Migrator| {
            m.iter()
                .map(|m| (m.version, m.description.to_string()))
                .collect::<Vec<_>>()
        };
        let sqlite = names(sqlx::migrate!("./migrations/sqlite"));
        let postgres = names(sqlx::migrate!("./migrations/postgres"));
        assert!(sqlite.len() >= 5, "{sqlite:?}");
        assert_eq!(sqlite, postgres);
    }
}
