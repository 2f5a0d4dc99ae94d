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

fn main() -> ExitCode {
    let cli = Cli::parse();
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
