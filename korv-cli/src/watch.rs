//! `korv watch`: one watch (`WATCH`, protocol 1.1), each event printed as
//! one line of compact JSON as it comes, until the watch ends, `--count`
//! events have come, or Ctrl-C (which cancels the watch with `UNWATCH`).

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use futures_util::StreamExt;
use korv_client::{KorvClient, StatusCode};

use crate::body::read_body;
use crate::connect::ConnectArgs;
use crate::error_reporting;

/// The arguments of `korv watch`.
#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// A path or a URL (`korv://[user@]host[:port]/notes/`); with `korv
    /// serve`, `/notes/` watches every document under it, `/notes/1` one.
    pub(crate) resource: String,
    /// Parameters for the watch: JSON text, `@file.json`, or `-` for stdin.
    pub(crate) body: Option<String>,
    /// Stop after N events (then cancel the watch and exit 0).
    #[arg(short = 'n', long, value_name = "N")]
    pub(crate) count: Option<u64>,
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
}

/// Watches `args.resource`, printing each event's body on its own line.
///
/// The exit code: 0 when the watch ends as asked (`--count` reached,
/// Ctrl-C, the server's handler finished it, stdout closed); else that of
/// the final code (5 for a 503: the server shut down, or this client read
/// too slowly); a refused watch exits as its status (4 for the 400 of a
/// server without watches).
pub(crate) async fn run(args: WatchArgs, verbose: u8) -> anyhow::Result<ExitCode> {
    // Ctrl-C is caught from the start: tokio installs the handler at the
    // first poll, here, not at the first wait for an event.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    if let Some(caught) = futures_util::FutureExt::now_or_never(&mut ctrl_c) {
        caught?;
        return Ok(ExitCode::SUCCESS);
    }
    let target = args.connect.target(&args.resource)?;
    let body = args.body.as_deref().map(read_body).transpose()?;
    let config = args.connect.client_config(&target);
    if verbose > 0 {
        crate::connect::show_route(&config);
    }
    let client = KorvClient::connect(config).await?;
    let mut watch = client.watch(&target.path, body.as_ref()).await?;
    if verbose > 0 {
        eprintln!("watching {} (id {})", target.path, watch.id());
    }
    let mut printed = 0_u64;
    let mut stdout = std::io::stdout();
    loop {
        if args.count.is_some_and(|count| printed >= count) {
            watch.cancel().await?;
            return Ok(ExitCode::SUCCESS);
        }
        let event = tokio::select! {
            _ = &mut ctrl_c => {
                watch.cancel().await?;
                return Ok(ExitCode::SUCCESS);
            }
            event = watch.next() => event,
        };
        match event {
            Some(event) => {
                let event = event?;
                // One line per event, flushed: for pipes as for terminals.
                let written = writeln!(stdout, "{event}").and_then(|()| stdout.flush());
                if written.is_err() {
                    // The reader went away (`| head -1`): nothing to watch for.
                    watch.cancel().await?;
                    return Ok(ExitCode::SUCCESS);
                }
                printed += 1;
            }
            None => {
                let Some(end) = watch.end() else {
                    return Ok(ExitCode::FAILURE);
                };
                if verbose > 0 || !end.code.is_success() {
                    eprintln!(
                        "korv: the watch ended: {} {}",
                        end.code,
                        end.message().unwrap_or_default()
                    );
                }
                return Ok(match end.code {
                    StatusCode::GONE => ExitCode::SUCCESS,
                    code => error_reporting::for_status(code.as_u16()),
                });
            }
        }
    }
}
