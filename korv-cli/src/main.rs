//! `korv`: call Korv APIs over SSH, serve one, see a demo, measure one.
//!
//! ```text
//! korv demo                                  # a server and a client in one process
//! korv serve                                 # the ready server on 0.0.0.0:8022
//! korv get /hello                            # like curl or httpie, over SSH
//! korv store korv://alice@host:8022/notes/1 '{"text":"hi"}'
//! korv bench /hello --concurrency 64 --requests 100000
//! ```

mod bench;
mod cli;
mod demo;
mod output;
mod request;
mod serve;
mod store;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let filter = if cli.verbose > 1 {
        "debug"
    } else {
        "warn,korv=info,korv_server=info"
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
    if let cli::Command::Bench(args) = &cli.command {
        builder.worker_threads(args.worker_threads());
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("korv: error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(err) => {
            let (code, hint) = cli::classify(&err);
            eprintln!("korv: error: {err:#}");
            if let Some(hint) = hint {
                eprintln!("korv: hint: {hint}");
            }
            ExitCode::from(code)
        }
    }
}
