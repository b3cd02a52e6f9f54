//! Python venvs the tests run real tools in (the OMOP sample's loaders,
//! ONNX Runtime and scikit-learn): found from an environment variable or
//! their default folder, and checked once per path by importing what the
//! scripts need. Without one a test says it was skipped and how to
//! install it; under `CI=true` it fails instead (`.ci/run` installs them),
//! so CI never passes by skipping.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// One venv of test tools.
pub struct Tools {
    /// What the tools are, for messages ("the OMOP test tools").
    pub what: &'static str,
    /// The variable naming the venv's python (`.ci/run` sets it).
    pub python_var: &'static str,
    /// The variable naming the venv's folder.
    pub tools_var: &'static str,
    /// The venv's folder under `$HOME` when `tools_var` is unset.
    pub default_dir: &'static str,
    /// The imports the scripts need, as one Python statement.
    pub modules: &'static str,
    /// The command that installs the venv.
    pub setup: &'static str,
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether `python` runs `modules`; asked once per path and statement,
/// since the imports take seconds.
fn complete(python: &Path, modules: &str) -> bool {
    static SEEN: OnceLock<Mutex<HashMap<(PathBuf, String), bool>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    let key = (python.to_path_buf(), modules.to_string());
    if let Some(&ok) = seen.lock().expect("not poisoned").get(&key) {
        return ok;
    }
    let ok = Command::new(python)
        .args(["-c", modules])
        .output()
        .is_ok_and(|o| o.status.success());
    seen.lock().expect("not poisoned").insert(key, ok);
    ok
}

impl Tools {
    /// The venv's python: `python_var` when set, else
    /// `${tools_var:-$HOME/default_dir}/bin/python` when it has the
    /// modules; otherwise `None` after printing how to install them.
    /// Panics under `CI=true`, or when `python_var` names a python without
    /// them.
    pub fn python(&self, test: &str) -> Option<PathBuf> {
        let Tools {
            what,
            python_var,
            tools_var,
            default_dir,
            modules,
            setup,
        } = self;
        if let Some(p) = std::env::var_os(python_var).filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            assert!(
                complete(&p, modules),
                "{test}: {python_var}={} cannot import {what} ({modules}); run {setup} and set {python_var} to the path it prints",
                p.display()
            );
            return Some(p);
        }
        let tools = std::env::var_os(tools_var)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(default_dir)));
        if let Some(p) = tools.map(|t| t.join("bin/python")) {
            if p.exists() && complete(&p, modules) {
                return Some(p);
            }
        }
        if in_ci() {
            panic!(
                "{test}: {what} are not installed but CI=true; run {setup} (or set {python_var}), as .ci/run does"
            );
        }
        eprintln!("skipped {test}: it needs {what}; run {setup} (or set {python_var})");
        None
    }
}

/// The model tools' venv: ONNX Runtime and onnx (tests/models/setup.sh).
pub const MODEL_TOOLS: Tools = Tools {
    what: "the model test tools",
    python_var: "PLEXUS_MODEL_PYTHON",
    tools_var: "PLEXUS_MODEL_TOOLS",
    default_dir: ".cache/plexus-model-tools",
    modules: "import onnx, onnxruntime, numpy, lightgbm, sklearn",
    setup: "tests/models/setup.sh --install",
};

/// A script of the model tests, in tests/models.
pub fn model_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name)
}
