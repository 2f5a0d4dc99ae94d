//! `cargo xtask bench`: Korv against its peers, in one run, on loopback.
//!
//! Every system serves the same work (`GET /hello`, and an echo of a JSON
//! body of 1 KiB and of 1 MiB) to a closed-loop load generator in another
//! process. The figures go to `target/bench/latest.json`, and the generated
//! part of `BENCHMARKS.md` (between its markers) and `docs/bench.svg` are
//! rewritten from them.
//!
//! [`plan`] says what runs, [`processes`] starts the servers and the load
//! generators, and [`report`] turns the figures into Markdown and SVG.

mod plan;
pub(crate) mod processes;
mod report;

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::workspace::{cargo, root, step, target_dir};

use plan::{System, Timing};
use processes::Servers;
use report::{Report, Row};

/// Parses the arguments (`--quick`, `--check`), builds the release
/// binaries, runs the plan and writes the report; with `--check`, fails when
/// a target is missed or a load failed.
pub(crate) fn bench(args: &[String]) -> Result<(), String> {
    let quick = args.iter().any(|a| a == "--quick");
    let check = args.iter().any(|a| a == "--check");
    if let Some(other) = args.iter().find(|a| *a != "--quick" && *a != "--check") {
        return Err(format!(
            "unknown bench option {other:?}; use --quick, --check, both or nothing"
        ));
    }
    let timing = if quick { Timing::QUICK } else { Timing::FULL };
    let mut build = cargo();
    build.args([
        "build",
        "--release",
        "--package",
        "korv-cli",
        "--package",
        "korv-peers",
    ]);
    step("build (release)", build)?;
    // The time limits (10 minutes, 2 with --quick) count from here.
    let started = Instant::now();
    let target = target_dir();
    let out_dir = target.join("bench");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let dir = std::env::temp_dir().join(format!("korv-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = run(
        &target.join("release"),
        &dir,
        timing,
        quick,
        &out_dir,
        started,
    );
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    if check {
        report::check(&report)?;
        println!("==> check: every target met, no load failed");
    }
    Ok(())
}

/// Starts the servers, runs every load of the plan and the side
/// measurements, and writes `latest.json`, `BENCHMARKS.md` and the chart.
fn run(
    bin: &Path,
    dir: &Path,
    timing: Timing,
    quick: bool,
    out_dir: &Path,
    started: Instant,
) -> Result<Report, String> {
    println!(
        "\n==> setting up keys, bodies and servers in {}",
        dir.display()
    );
    let servers = Servers::start(bin, dir, timing)?;
    let mut results = Vec::new();
    let loads = plan::plan();
    let total = loads.len();
    for (n, load) in loads.iter().enumerate() {
        if load.system == System::SshW && !servers.has_sshd() {
            continue;
        }
        print!(
            "[{:>2}/{total}] {:<7} {:<11} {}x{:<4} ",
            n + 1,
            load.system.key(),
            load.workload.label(),
            load.connections,
            load.concurrency
        );
        let _ = std::io::stdout().flush();
        let figures = servers.load(load)?;
        println!(
            "{:>9.0} req/s  p50 {:>6} µs  p99 {:>6} µs  {:>7.1} MB/s{}",
            figures.requests_per_second,
            figures.latency_us.p50,
            figures.latency_us.p99,
            figures.mb_per_second,
            match figures.errors {
                0 => String::new(),
                errors => format!("  ({errors} errors)"),
            }
        );
        results.push(Row {
            system: load.system,
            workload: load.workload,
            connections: load.connections,
            concurrency: load.concurrency,
            requests_per_second: figures.requests_per_second,
            p50_us: figures.latency_us.p50 as f64,
            p99_us: figures.latency_us.p99 as f64,
            mb_per_second: figures.mb_per_second,
            errors: figures.errors as f64,
        });
    }
    if servers.has_sshd() {
        print!("[bulk] OpenSSH aes128-gcm, one way ");
        let _ = std::io::stdout().flush();
    }
    let bulk = servers.openssh_bulk()?;
    if let Some(mbps) = bulk {
        println!("{mbps:.1} MB/s");
    }
    // Watches, beside the table: events/s against the c=64 GET /hello rate
    // of this same run (the target is at least half of it).
    print!("[watch] korv 64 watchers, 16 writers ");
    let _ = std::io::stdout().flush();
    let watch = servers.korv_watch()?;
    let hello_c64 = results
        .iter()
        .find(|r| {
            r.system == System::Korv
                && r.workload == plan::Workload::Hello
                && r.connections == 1
                && r.concurrency == 64
        })
        .map(|r| r.requests_per_second);
    println!(
        "{:.0} events/s  p50 {} µs  p99 {} µs  ({} lost){}",
        watch.requests_per_second,
        watch.latency_us.p50,
        watch.latency_us.p99,
        watch.errors,
        hello_c64.map_or(String::new(), |rate| format!(
            "  {:.2}x the c=64 GET /hello rate",
            watch.requests_per_second / rate.max(1.0)
        )),
    );
    let memory = servers.memory()?;
    drop(servers);

    let report = Report {
        date: utc_now(),
        quick,
        machine: machine(),
        command: if quick {
            "cargo xtask bench --quick"
        } else {
            "cargo xtask bench"
        }
        .into(),
        seconds_per_run: timing.duration.as_secs_f64(),
        warmup_seconds: timing.warmup.as_secs_f64(),
        results,
        openssh_bulk_mb_per_second: bulk,
        memory,
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    let latest = out_dir.join("latest.json");
    std::fs::write(&latest, report.to_json()).map_err(|e| format!("{}: {e}", latest.display()))?;
    let markdown = report::render_markdown(&report);
    println!("\n{markdown}");
    report::update_benchmarks_md(&root().join("BENCHMARKS.md"), &markdown)?;
    let svg_path = root().join("docs").join("bench.svg");
    std::fs::write(&svg_path, report::render_svg(&report))
        .map_err(|e| format!("{}: {e}", svg_path.display()))?;
    println!(
        "==> wrote {}, BENCHMARKS.md and {} in {:.0}s",
        latest.display(),
        svg_path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(report)
}

/// The time now, to the minute, in UTC.
fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The CPU model, core count and kernel.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {kernel}, loopback")
}
