//! `korv`: call Korv APIs over SSH, serve one, see a demo, measure one.
//!
//! ```text
//! korv demo                                  # a server and a client in one process
//! korv serve                                 # the ready server on 0.0.0.0:8022
//! korv get /hello                            # like curl or httpie, over SSH
//! korv watch /notes/                         # each change, one JSON line each
//! korv store korv://alice@host:8022/notes/1 '{"text":"hi"}'
//! korv bench /hello --concurrency 64 --requests 100000
//! ```
//!
//! `main` parses the command line, runs the subcommand, and hands its
//! outcome to `error_reporting`, which alone chooses exit codes and hints.
//! Each subcommand is a module with its arguments: `request` (get, store,
//! update, delete), `watch`, `serve`, `demo`, `bench`, `completions` (and `man`);
//! they share `connect` (the connection options), `body`, `keys`, `store`
//! and `output`.

mod bench;
mod bench_watch;
mod body;
mod cli;
mod completions;
mod connect;
mod demo;
mod error_reporting;
mod keys;
mod output;
mod request;
mod serve;
mod store;
mod watch;

use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use korv_proto::Verb;

use crate::cli::{Cli, Command};

/// Blocking threads at most: the document store's reads and writes (redb
/// takes one writer at a time; reads are short), and stdin under
/// `serve --stdio`.
const MAX_BLOCKING_THREADS: usize = 16;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve(_)) {
        malloc_arenas::limit();
    }
    // -v adds the client's account of connecting: each jump host reached,
    // the identity or agent key that authenticated.
    let filter = match cli.verbose {
        0 => "warn,korv=info,korv_server=info",
        1 => "warn,korv=info,korv_server=info,korv_client=debug",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KORV_LOG")
                .unwrap_or_else(|_| filter.into()),
        )
        .init();
    // A load generator gets its own thread count: one closed loop per thread
    // measures the server, not the generator's cross-thread wake-ups.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // The document store's work runs on blocking threads. Tokio starts one
    // more whenever none is idle, up to 512, and lets one go only after it
    // has idled 10 s: under steady load the count is the highest burst so
    // far, and it only ever rises, each thread with its stack and its
    // allocator caches. A bound makes that high-water mark one reached early.
    builder.max_blocking_threads(MAX_BLOCKING_THREADS);
    if let Command::Bench(args) = &cli.command {
        builder.worker_threads(args.worker_threads());
    }
    let runtime = match builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
    {
        Ok(runtime) => runtime,
        Err(err) => return error_reporting::report(&err),
    };
    // The runtime lives until the error is reported: dropping it waits for
    // blocking tasks (a read of stdin under `serve --stdio`, for one).
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => error_reporting::report(&err),
    }
}

/// Runs the subcommand.
async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Get(args) => request::run(Verb::Get, args, cli.verbose).await,
        Command::Store(args) => request::run(Verb::Store, args, cli.verbose).await,
        Command::Update(args) => request::run(Verb::Update, args, cli.verbose).await,
        Command::Delete(args) => request::run(Verb::Delete, args, cli.verbose).await,
        Command::Watch(args) => watch::run(args, cli.verbose).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Demo => demo::run().await,
        Command::Bench(args) => bench::run(args).await,
        Command::Completions(args) => completions::completions(Cli::command(), &args),
        Command::Man(args) => completions::man(Cli::command(), &args),
    }
}

/// glibc's malloc, left to itself, gives each new thread an arena of its
/// own, up to 8 per core: 16 on two cores, as many as `korv serve` has
/// threads. Buffers allocated on one thread and freed on another (SSH
/// packets, answers) leave every arena with holes of its own, and each
/// arena's high-water mark rises on its own: resident memory creeps up for
/// hours while the memory in use stays flat. Two arenas keep it flat (see
/// "Memory over hours" in BENCHMARKS.md).
///
/// glibc reads `MALLOC_ARENA_MAX` only as a process starts, so `korv serve`
/// starts itself again with it, once, unless it is set already (an
/// operator's own choice wins). The restart is an `exec`: same process id,
/// same open files, nothing left behind.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod malloc_arenas {
    use std::os::unix::process::CommandExt;

    /// The environment variable glibc reads, and the arenas `korv serve` uses.
    const VARIABLE: &str = "MALLOC_ARENA_MAX";
    const ARENAS: &str = "2";

    /// Replaces this process with itself under `MALLOC_ARENA_MAX=2`, unless
    /// the variable is set; returns only when it is set, or when the exec
    /// fails (the server then runs with glibc's default).
    pub(crate) fn limit() {
        if std::env::var_os(VARIABLE).is_some() {
            return;
        }
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_default();
        // /proc/self/exe: this very binary, even if its file was replaced.
        let err = std::process::Command::new("/proc/self/exe")
            .arg0(arg0)
            .args(args)
            .env(VARIABLE, ARENAS)
            .exec();
        eprintln!(
            "korv: warning: cannot restart with {VARIABLE}={ARENAS} ({err}); resident memory may creep under load: start korv serve with {VARIABLE}={ARENAS} in its environment"
        );
    }
}

/// Other platforms' allocators are left as they are.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod malloc_arenas {
    pub(crate) fn limit() {}
}
