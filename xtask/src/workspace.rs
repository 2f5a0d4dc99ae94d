//! The workspace the tasks run in: its root, Cargo's target directory, and
//! Cargo commands run as named steps.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The workspace root: the parent of this crate's folder.
pub(crate) fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace
/// root when relative), else the root's `target`.
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root().join(p) })
        .unwrap_or_else(|| root().join("target"))
}

/// `cargo` (the one running this task, if any) in the workspace root.
pub(crate) fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root());
    command
}

/// Runs one step, printing it first; an error names the step.
pub(crate) fn step(name: &str, mut command: Command) -> Result<(), String> {
    let shown = format!(
        "{} {}",
        command.get_program().to_string_lossy(),
        command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("\n==> {name}: {shown}");
    let started = Instant::now();
    let status = command
        .status()
        .map_err(|err| format!("step '{name}' could not start `{shown}`: {err}"))?;
    if !status.success() {
        return Err(format!(
            "step '{name}' failed ({status}); reproduce with `{shown}`"
        ));
    }
    println!("==> {name}: ok in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// A virtualenv under the target directory, `target/NAME`, holding
/// `requirements` from PyPI; returns its python. It is made with `python`
/// (`-m venv`) when missing, and pip runs only when the requirements differ
/// from those recorded in it by the last install, so later runs cost
/// nothing and need no network. `what` names the steps in the output.
pub(crate) fn venv(
    name: &str,
    python: &str,
    requirements: &[&str],
    what: &str,
) -> Result<PathBuf, String> {
    let dir = target_dir().join(name);
    let bin = if cfg!(windows) {
        dir.join("Scripts").join("python.exe")
    } else {
        dir.join("bin").join("python")
    };
    let stamp = dir.join("korv-requirements.txt");
    let wanted = requirements.join("\n");
    if bin.exists() && std::fs::read_to_string(&stamp).is_ok_and(|have| have == wanted) {
        return Ok(bin);
    }
    if !bin.exists() {
        let mut make = Command::new(python);
        make.args(["-m", "venv"]).arg(&dir);
        step(&format!("python venv for {what}"), make)?;
    }
    let mut install = pip_install(&bin);
    install.args(requirements);
    step(&format!("pip install {}", requirements.join(", ")), install)?;
    std::fs::write(&stamp, wanted)
        .map_err(|err| format!("could not write {}: {err}", stamp.display()))?;
    Ok(bin)
}

/// `python -m pip install`, quietly: add what to install.
pub(crate) fn pip_install(python: &Path) -> Command {
    let mut pip = Command::new(python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]);
    pip
}
