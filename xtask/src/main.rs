//! Korv's project tasks. Run from anywhere in the workspace:
//!
//! ```text
//! cargo xtask test      # fmt check, clippy (warnings are errors), every test
//! cargo xtask python    # the Python package's tests alone (also part of `test`)
//! cargo xtask bench     # Korv against its peers; rewrites BENCHMARKS.md
//! cargo xtask soak      # korv serve under valid and malformed frames, 60 s
//! ```
//!
//! Each step is printed before it runs; the first failure stops the run with
//! a message naming the step and how to reproduce it.

mod bench;
mod fuzz;
mod python;
mod soak;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("python") => python::test(),
        Some("bench") => bench::bench(&args[1..]),
        Some("soak") => soak::soak(&args[1..]),
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        Some("help") | Some("--help") | Some("-h") | None => {
            print_help();
            Ok(())
        }
        Some(other) => Err(format!("unknown task {other:?}; run `cargo xtask help`")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn print_help() {
    println!(
        "cargo xtask TASK\n\n\
         Tasks:\n  \
         test    cargo fmt --check, cargo clippy -D warnings, cargo test --workspace, python\n  \
         python  the Python package: a venv in the target folder, the wheel, pytest\n  \
         soak    [--minutes N] korv serve under a full-speed mix of valid and malformed frames\n  \
         bench   [--quick] Korv against HTTPS, OpenSSH and plain TCP; writes BENCHMARKS.md\n  \
         fuzz    run each fuzz target for N seconds (default 60): fuzz [--seconds N]\n  \
         help    this text"
    );
}

/// The workspace root: the parent of this crate's folder.
fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root());
    command
}

/// Runs one step, printing it first; an error names the step.
fn step(name: &str, mut command: Command) -> Result<(), String> {
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

fn test() -> Result<(), String> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    step("format", fmt)?;

    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    step("lint", clippy)?;

    let mut tests = cargo();
    tests.args(["test", "--workspace", "--all-targets"]);
    step("tests", tests)?;

    let mut doctests = cargo();
    doctests.args(["test", "--workspace", "--doc"]);
    step("doctests", doctests)?;

    python::test()?;

    println!("\nall steps passed");
    Ok(())
}
