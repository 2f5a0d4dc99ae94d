//! Korv's project tasks. Run from anywhere in the workspace:
//!
//! ```text
//! cargo xtask test      # fmt check, clippy (warnings are errors), every test;
//!                       # fuzz/ formatted, linted and built too; the
//!                       # vendored russh's own unit tests
//! cargo xtask legacy    # only the korv 0.2.1 interoperability tests (pytest)
//! cargo xtask python    # the Python package's tests alone (also part of `test`)
//! cargo xtask bench     # Korv against its peers; rewrites BENCHMARKS.md
//!                       # (--check: fail on a missed target or failed load)
//! cargo xtask soak      # korv serve under valid and malformed frames, 60 s
//! cargo xtask fuzz      # every fuzz target, 60 s each
//! cargo xtask fleet     # three korv serve behind HAProxy (docs/DEPLOY.md), checked
//! ```
//!
//! Each step is printed before it runs; the first failure stops the run with
//! a message naming the step and how to reproduce it.

mod bench;
mod fleet;
mod fuzz;
mod legacy_venv;
mod python;
mod soak;
mod workspace;

use std::process::ExitCode;

use workspace::{cargo, step};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("python") => python::test(),
        Some("bench") => bench::bench(&args[1..]),
        Some("fleet") => fleet::fleet(&args[1..]),
        Some("soak") => soak::soak(&args[1..]),
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        Some("legacy") => legacy_venv::legacy_tests(&args[1..]),
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
         test    cargo fmt --check, cargo clippy -D warnings (the workspace and fuzz/), cargo test --workspace, python\n  \
         python  the Python package: a venv in the target folder, the wheel, pytest\n  \
         soak    [--minutes N] korv serve under a full-speed mix of valid and malformed frames\n  \
         bench   [--quick] [--check] [--no-python] Korv against HTTPS, OpenSSH, plain TCP and korv 0.2.1,\n          \
         and Korv for Python; writes BENCHMARKS.md; --check fails on a missed target, a failed\n          \
         load or a row that could not run\n  \
         fleet   [--release] three korv serve behind HAProxy with the PROXY protocol, every scenario\n  \
         fuzz    run each fuzz target for N seconds (default 60): fuzz [--seconds N]\n  \
         legacy  [PYTEST ARGS] only the korv 0.2.1 interoperability tests (pytest, in a venv)\n  \
         help    this text"
    );
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

    fuzz::check()?;

    let mut tests = cargo();
    tests.args(["test", "--workspace", "--all-targets"]);
    step("tests", tests)?;

    let mut doctests = cargo();
    doctests.args(["test", "--workspace", "--doc"]);
    step("doctests", doctests)?;

    // The russh Korv carries (vendor/russh/PATCHES.md) is outside the
    // workspace: its own unit tests, with its own lock file and target.
    let mut russh = cargo();
    russh
        .args([
            "test",
            "--manifest-path",
            "vendor/russh/Cargo.toml",
            "--lib",
            "--target-dir",
        ])
        .arg(workspace::target_dir().join("vendor-russh"));
    step("vendored russh's tests", russh)?;

    legacy_venv::legacy_tests(&[])?;
    python::test()?;

    println!("\nall steps passed");
    Ok(())
}
