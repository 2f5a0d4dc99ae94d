//! The Python package's tests: a virtualenv under the target directory with
//! maturin, pytest and abi3audit from PyPI, the `korv` wheel built, audited
//! for the stable ABI of CPython 3.9 it claims, and installed into it, then
//! pytest over `korv-py/tests` with the `korv` binary at hand.
//!
//! Every step is idempotent: the venv is made once, pip runs only when the
//! tools asked for change (`workspace::venv`), and the wheel is rebuilt (incrementally) and reinstalled on
//! each run so the tests always see the current sources.

use std::path::PathBuf;
use std::process::Command;

use crate::workspace::{self, cargo, root, step, target_dir};

/// What pip installs into the venv.
const TOOLS: [&str; 3] = ["maturin>=1.8,<2", "pytest>=7", "abi3audit>=0.0.26"];

/// The Python that makes the venv: `$PYTHON`, else `python3`.
fn system_python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// `target/venv-py`'s python with the `korv` wheel built from the current
/// sources and installed: a release build for `cargo xtask bench`
/// (`release`), the default (debug) build for the tests. Each call installs
/// the build it asks for over the other.
pub(crate) fn venv_with_wheel(release: bool) -> Result<PathBuf, String> {
    let target = target_dir();
    let python = workspace::venv("venv-py", &system_python(), &TOOLS, "korv-py")?;

    let wheels = target.join("wheels-py");
    if wheels.exists() {
        std::fs::remove_dir_all(&wheels)
            .map_err(|err| format!("cannot empty {}: {err}", wheels.display()))?;
    }
    let mut build = Command::new(&python);
    build.args(["-m", "maturin", "build", "--quiet"]);
    if release {
        build.arg("--release");
    }
    build
        .arg("--manifest-path")
        .arg(root().join("korv-py").join("Cargo.toml"))
        .arg("--interpreter")
        .arg(&python)
        .arg("--out")
        .arg(&wheels)
        .env("CARGO_TARGET_DIR", &target);
    step("python wheel", build)?;
    let wheel = std::fs::read_dir(&wheels)
        .map_err(|err| format!("cannot read {}: {err}", wheels.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .ok_or_else(|| format!("maturin left no wheel in {}", wheels.display()))?;
    // Only CPython 3.11 runs the tests here; the wheel claims every CPython
    // from 3.9 on (abi3). abi3audit checks each symbol the extension uses
    // against the stable ABI of the version its tag names.
    let mut audit = Command::new(&python);
    audit
        .args(["-m", "abi3audit", "--strict", "--summary"])
        .arg(&wheel);
    step("python abi3 audit", audit)?;

    let mut install = workspace::pip_install(&python);
    install.args(["--force-reinstall", "--no-deps"]).arg(&wheel);
    step("python install", install)?;
    Ok(python)
}

/// Makes the venv, builds and installs the package, and runs pytest.
pub(crate) fn test() -> Result<(), String> {
    let target = target_dir();
    let python = venv_with_wheel(false)?;

    let mut korv = cargo();
    korv.args(["build", "--package", "korv-cli", "--bin", "korv"])
        .env("CARGO_TARGET_DIR", &target);
    step("korv binary", korv)?;

    let mut pytest = Command::new(&python);
    pytest
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(root().join("korv-py").join("tests"))
        .env("KORV_BIN", target.join("debug").join("korv"))
        .current_dir(root().join("korv-py"));
    step("python tests", pytest)
}
