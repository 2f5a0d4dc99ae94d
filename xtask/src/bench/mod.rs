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
pub(crate) mod report;

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::workspace::{cargo, root, step, target_dir};

use plan::{Load, System, Timing};
use processes::{Servers, Tools};
use report::{Report, Row};

/// The options `cargo xtask bench` takes, besides `--only=KEY,KEY`.
const OPTIONS: [&str; 3] = ["--quick", "--check", "--no-python"];

/// Parses the arguments (`--quick`, `--check`, `--no-python`,
/// `--only=KEY,…` to run only the rows of those systems), builds the
/// release binaries, the nodelay shim and (unless `--no-python`) the Python
/// environments, runs the plan and writes the report; with `--check`, fails
/// when a target is missed, a load failed or rows were skipped.
pub(crate) fn bench(args: &[String]) -> Result<(), String> {
    let quick = args.iter().any(|a| a == "--quick");
    let check = args.iter().any(|a| a == "--check");
    let no_python = args.iter().any(|a| a == "--no-python");
    let only = only(args)?;
    if check && only.is_some() {
        return Err("--check judges a whole run: not with --only".into());
    }
    if let Some(other) = args
        .iter()
        .find(|a| !OPTIONS.contains(&a.as_str()) && !a.starts_with("--only="))
    {
        return Err(format!(
            "unknown bench option {other:?}; use any of {}, --only=KEY,…",
            OPTIONS.join(", ")
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
    let target = target_dir();
    let out_dir = target.join("bench");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    println!("\n==> nodelay shim: cc benches/nodelay/nodelay.c");
    let shim = processes::build_shim(&root().join("benches/nodelay/nodelay.c"), &out_dir);
    let (korv_py, korv021) = if no_python {
        println!("\n==> --no-python: the Python rows are skipped");
        (None, None)
    } else {
        // korv-py built in release into target/venv-py, korv 0.2.1 from
        // PyPI into target/venv-legacy; either may fail on a machine
        // without Python or network, and its rows are then skipped.
        let skip = |what: &str, err: String| {
            println!("    {what}: {err}; the Python rows are skipped");
        };
        match (
            crate::python::venv_with_wheel(true),
            crate::legacy_venv::venv(),
        ) {
            (Ok(py), Ok(legacy)) => (Some(py), Some(legacy)),
            (Err(err), _) => {
                skip("korv-py's venv", err);
                (None, None)
            }
            (_, Err(err)) => {
                skip("korv 0.2.1's venv", err);
                (None, None)
            }
        }
    };
    let tools = Tools {
        shim,
        korv_py,
        korv021,
    };
    // The time limits (about 10 minutes, 3 with --quick) count from here.
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("korv-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = run(
        &target.join("release"),
        &dir,
        &tools,
        timing,
        (quick, only.as_deref()),
        &out_dir,
        started,
    );
    let _ = std::fs::remove_dir_all(&dir);
    let Some(report) = result? else {
        return Ok(());
    };
    if check {
        report::check(&report)?;
        println!("==> check: every target met, no load failed");
    }
    Ok(())
}

/// Starts the servers, runs every load of the plan and the side
/// measurements, and writes `latest.json`, `BENCHMARKS.md` and the chart.
/// Watches on one connection, and requests storing documents at a time,
/// in the watch run.
const WATCHERS: usize = 64;
const WATCH_WRITERS: usize = 16;

/// The systems of `--only=KEY,…`, each checked against the known keys.
fn only(args: &[String]) -> Result<Option<Vec<System>>, String> {
    let Some(list) = args.iter().find_map(|a| a.strip_prefix("--only=")) else {
        return Ok(None);
    };
    list.split(',')
        .map(|key| {
            System::ALL
                .into_iter()
                .find(|s| s.key() == key)
                .ok_or_else(|| format!("--only: no system {key:?}"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The rate a paced row keeps: what korv 0.2.1's client reached against
/// `korv serve` at the same concurrency, in the row run just before it.
fn pace(load: &Load, results: &[Row]) -> Option<f64> {
    if load.system != System::KorvPaced {
        return None;
    }
    results
        .iter()
        .rev()
        .find(|r| {
            r.system == System::LegacyKorv
                && r.workload == load.workload
                && r.concurrency == load.concurrency
        })
        .map(|r| r.requests_per_second)
        .filter(|&rate| rate >= 1.0)
}

fn run(
    bin: &Path,
    dir: &Path,
    tools: &Tools,
    timing: Timing,
    (quick, only): (bool, Option<&[System]>),
    out_dir: &Path,
    started: Instant,
) -> Result<Option<Report>, String> {
    println!(
        "\n==> setting up keys, bodies and servers in {}",
        dir.display()
    );
    let servers = Servers::start(bin, dir, timing, tools)?;
    let mut results = Vec::new();
    let all = plan::plan();
    let (sshd, ssh, python) = servers.can_run();
    let mut loads = plan::runnable(&all, sshd, ssh, python);
    if let Some(only) = only {
        loads.retain(|l| only.contains(&l.system));
    }
    let mut skipped: Vec<String> = Vec::new();
    for load in all.iter().filter(|l| !loads.contains(l)) {
        let key = load.system.key().to_owned();
        if !skipped.contains(&key) {
            skipped.push(key);
        }
    }
    let total = loads.len();
    for (n, load) in loads.iter().enumerate() {
        print!(
            "[{:>2}/{total}] {:<19} {:<10} {}x{:<4} ",
            n + 1,
            load.system.key(),
            load.workload.label(),
            load.connections,
            load.concurrency
        );
        let _ = std::io::stdout().flush();
        let measured = servers.load(load, pace(load, &results))?;
        let row = Row::new(load, &measured);
        println!(
            "{:>9.0} req/s  p50 {:>6} µs  p99 {:>6} µs  {:>7.1} MB/s  cpu/req {} | {} µs  {}{}",
            row.requests_per_second,
            row.p50_us,
            row.p99_us,
            row.mb_per_second,
            row.client_cpu_us.map_or("—".into(), |v| format!("{v:.1}")),
            row.server_cpu_us.map_or("—".into(), |v| format!("{v:.1}")),
            row.cipher.as_deref().unwrap_or(""),
            if row.errors > 0.0 {
                format!("  ({} errors)", row.errors)
            } else {
                String::new()
            }
        );
        results.push(row);
    }
    if only.is_some() {
        println!(
            "==> --only: the rows above; no report written (latest.json and BENCHMARKS.md keep the last full run)"
        );
        return Ok(None);
    }
    if servers.has_sshd() {
        print!("[bulk] OpenSSH aes128-gcm, one way ");
        let _ = std::io::stdout().flush();
    }
    let bulk = servers.openssh_bulk()?;
    if let Some((mbps, cipher)) = &bulk {
        println!("{mbps:.1} MB/s {}", cipher.as_deref().unwrap_or(""));
    }
    print!("[watch] korv {WATCHERS} watchers, {WATCH_WRITERS} writers, one connection ");
    let _ = std::io::stdout().flush();
    let watches = servers.korv_watch(WATCHERS, WATCH_WRITERS)?;
    println!(
        "{:>9.0} events/s  p50 {:>6} µs  p99 {:>6} µs  ({} lost)",
        watches.events_per_second, watches.p50_us, watches.p99_us, watches.lost
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
        openssh_bulk_mb_per_second: bulk.as_ref().map(|(mbps, _)| *mbps),
        openssh_bulk_cipher: bulk.and_then(|(_, cipher)| cipher),
        skipped,
        memory,
        wall_seconds: started.elapsed().as_secs_f64(),
        watches: Some(watches),
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
    Ok(Some(report))
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
