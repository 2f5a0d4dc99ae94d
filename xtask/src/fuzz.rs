//! `cargo xtask fuzz [--seconds N]`: runs every cargo-fuzz target in `fuzz/`
//! for N seconds each (default 60), installing cargo-fuzz first if needed.
//!
//! cargo-fuzz needs nightly compiler flags; `RUSTC_BOOTSTRAP=1` lets the
//! stable toolchain accept them. A crash fails the run and names the input
//! that libFuzzer saved under `fuzz/artifacts/TARGET/`.
//!
//! Each target reads its committed seeds from `fuzz/seeds/TARGET/` and grows
//! its local corpus in `fuzz/corpus/TARGET/` (ignored by git).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::workspace::{cargo, root, step};

/// The targets in `fuzz/fuzz_targets/`, in the order they run.
const TARGETS: [&str; 2] = ["frame_decoder", "client_response"];

const DEFAULT_SECONDS: u64 = 60;

pub(crate) fn fuzz(args: &[String]) -> Result<(), String> {
    let seconds = parse_seconds(args)?;
    ensure_cargo_fuzz()?;
    let fuzz_dir = root().join("fuzz");
    for target in TARGETS {
        let artifacts = fuzz_dir.join("artifacts").join(target);
        let corpus = fuzz_dir.join("corpus").join(target);
        let seeds = fuzz_dir.join("seeds").join(target);
        std::fs::create_dir_all(&corpus)
            .map_err(|err| format!("could not create {}: {err}", corpus.display()))?;
        let before = files_in(&artifacts);
        let mut run = cargo();
        run.env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", target])
            .arg(&corpus)
            .arg(&seeds)
            .args(["--", &format!("-max_total_time={seconds}")]);
        let result = step(&format!("fuzz {target} for {seconds}s"), run);
        let found: Vec<PathBuf> = files_in(&artifacts).difference(&before).cloned().collect();
        if !found.is_empty() {
            let list = found
                .iter()
                .map(|path| path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(format!(
                "fuzz target {target} found a crash; the input is in {list}; \
                 reproduce with `RUSTC_BOOTSTRAP=1 cargo fuzz run {target} {}`",
                found[0].display()
            ));
        }
        result?;
    }
    println!("\nno crashes in {} targets", TARGETS.len());
    Ok(())
}

/// Checks the fuzz crate, which is a workspace of its own that the main
/// workspace's `fmt`, `clippy` and `build` never reach: its formatting, its
/// lints (warnings are errors) and a build of every target. The build needs
/// no nightly flags; only running the targets does.
pub(crate) fn check() -> Result<(), String> {
    let manifest = root().join("fuzz").join("Cargo.toml");
    let mut fmt = cargo();
    fmt.args(["fmt", "--manifest-path"])
        .arg(&manifest)
        .args(["--", "--check"]);
    step("fuzz crate: format", fmt)?;
    let mut clippy = cargo();
    clippy
        .args(["clippy", "--locked", "--all-targets", "--manifest-path"])
        .arg(&manifest)
        .args(["--", "-D", "warnings"]);
    step("fuzz crate: lint", clippy)?;
    let mut build = cargo();
    build
        .args(["build", "--locked", "--bins", "--manifest-path"])
        .arg(&manifest);
    step("fuzz crate: build the targets", build)
}

/// `--seconds N` or `--seconds=N`; N is a whole number above zero.
fn parse_seconds(args: &[String]) -> Result<u64, String> {
    let mut seconds = DEFAULT_SECONDS;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let value = match arg.strip_prefix("--seconds") {
            Some("") => args
                .next()
                .ok_or("`--seconds` needs a number of seconds")?
                .as_str(),
            Some(rest) if rest.starts_with('=') => &rest[1..],
            _ => {
                return Err(format!(
                    "unknown argument {arg:?}; usage: cargo xtask fuzz [--seconds N]"
                ));
            }
        };
        seconds =
            value.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                format!("`--seconds` takes a whole number above 0, not {value:?}")
            })?;
    }
    Ok(seconds)
}

/// Installs cargo-fuzz from crates.io when `cargo fuzz --version` fails.
fn ensure_cargo_fuzz() -> Result<(), String> {
    let mut probe = cargo();
    probe
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    println!("\n==> check for cargo-fuzz: cargo fuzz --version");
    if probe.status().is_ok_and(|status| status.success()) {
        println!("==> cargo-fuzz is installed");
        return Ok(());
    }
    let mut install = cargo();
    install.args(["install", "cargo-fuzz", "--locked"]);
    step("install cargo-fuzz", install)
}

/// The files directly in `dir` (none if it does not exist).
fn files_in(dir: &Path) -> BTreeSet<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| path.is_file())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn seconds_default_to_60_and_take_both_spellings() {
        assert_eq!(parse_seconds(&[]), Ok(60));
        assert_eq!(parse_seconds(&args(&["--seconds", "5"])), Ok(5));
        assert_eq!(parse_seconds(&args(&["--seconds=600"])), Ok(600));
    }

    #[test]
    fn bad_seconds_and_unknown_arguments_are_errors() {
        assert!(parse_seconds(&args(&["--seconds"])).is_err());
        assert!(parse_seconds(&args(&["--seconds", "0"])).is_err());
        assert!(parse_seconds(&args(&["--seconds=-3"])).is_err());
        assert!(parse_seconds(&args(&["--secondsx"])).is_err());
        assert!(parse_seconds(&args(&["--jobs", "2"])).is_err());
    }
}
