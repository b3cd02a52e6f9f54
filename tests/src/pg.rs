//! Throwaway PostgreSQL databases for tests that need the real server.
//!
//! The server's URL comes from `PLEXUS_TEST_DATABASE_URL` (`.ci/run` sets
//! it). Without it a test says it was skipped and how to enable it; under
//! `CI=true` a missing variable or an unreachable server fails the test
//! instead, so CI never passes by skipping.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Executor};

/// The variable tests read the server's URL from.
pub const URL_VAR: &str = "PLEXUS_TEST_DATABASE_URL";

/// A database of its own for one test, created on the shared server and
/// dropped by [`TestDatabase::drop_now`] (or left for the next run's
/// sweep when a test panics: names carry the creating process id).
pub struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The server's URL, or `None` after printing how to enable the test.
/// Panics under `CI=true` when the variable is missing.
pub fn server_url(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if in_ci() => panic!(
            "{test}: {URL_VAR} is not set but CI=true; set it (e.g. postgres://postgres@127.0.0.1:5432/test) or run .ci/run, which does"
        ),
        _ => {
            eprintln!(
                "skipped {test}: it needs PostgreSQL; set {URL_VAR}=postgres://postgres@127.0.0.1:5432/test to run it"
            );
            None
        }
    }
}

impl TestDatabase {
    /// Creates `plexus_<purpose>_<pid>_<random>` on the test server, or
    /// returns `None` when the test is skipped (see [`server_url`]).
    pub async fn create(purpose: &str) -> Option<TestDatabase> {
        let admin_url = server_url(purpose)?;
        let name = format!(
            "plexus_{}_{}_{:08x}",
            purpose
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect::<String>()
                .to_ascii_lowercase(),
            std::process::id(),
            rand::random::<u32>()
        );
        let mut admin = connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("{purpose}: cannot reach the test PostgreSQL at {admin_url}: {e} (start it, or unset {URL_VAR} to skip)"));
        admin
            .execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await
            .unwrap_or_else(|e| panic!("{purpose}: cannot create database {name}: {e}"));
        let url = PgConnectOptions::from_str(&admin_url)
            .expect("parsed above")
            .database(&name)
            .to_url_lossy()
            .to_string();
        Some(TestDatabase {
            admin_url,
            name,
            url,
        })
    }

    /// URL of this test's own database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the database, closing any connection still open to it.
    pub async fn drop_now(self) {
        if let Ok(mut admin) = connect(&self.admin_url).await {
            let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
            if let Err(e) = admin.execute(sql.as_str()).await {
                eprintln!("could not drop test database {}: {e}", self.name);
            }
        }
    }
}

async fn connect(url: &str) -> Result<PgConnection, sqlx::Error> {
    PgConnection::connect(url).await
}
