//! The korv 0.2.1 interoperability tests (`tests/legacy/`, pytest): korv
//! 0.2.1's own client and server, from PyPI, against ours.
//!
//! They run in a venv under the cargo target folder (`venv-legacy`), made
//! with `python3 -m venv` and filled by pip on first use; later runs reuse it
//! as long as its recorded requirements are the same (`workspace::venv`). The tests find the
//! `korv` binary and the interop example server through environment
//! variables set here.

use std::path::PathBuf;
use std::process::Command;

use crate::workspace::{self, cargo, root, step, target_dir};

/// What the venv holds: korv 0.2.1 itself (which needs asyncssh), and pytest.
const REQUIREMENTS: [&str; 3] = ["korv==0.2.1", "asyncssh", "pytest"];

/// The venv's python, making the venv and installing the requirements
/// when they are not there yet.
pub(crate) fn venv() -> Result<PathBuf, String> {
    workspace::venv("venv-legacy", "python3", &REQUIREMENTS, "korv 0.2.1")
}

/// Builds the binaries the tests drive, then runs pytest on `tests/legacy/`.
/// Arguments are passed on to pytest (`-k NAME`, `-x`, ...).
pub(crate) fn legacy_tests(args: &[String]) -> Result<(), String> {
    let mut build = cargo();
    build.args([
        "build",
        "--package",
        "korv-cli",
        "--bin",
        "korv",
        "--package",
        "korv-server",
        "--example",
        "interop",
    ]);
    step("build korv and the interop server", build)?;
    let python = venv()?;
    let bin = target_dir().join("debug");
    let mut pytest = Command::new(python);
    pytest
        .current_dir(root())
        .args([
            "-m",
            "pytest",
            "tests/legacy",
            "-q",
            "-p",
            "no:cacheprovider",
        ])
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("KORV_BIN", bin.join("korv"))
        .env("KORV_INTEROP_SERVER", bin.join("examples").join("interop"));
    step("korv 0.2.1 interoperability (pytest)", pytest)
}
