//! `korv-peers`: the systems Korv is measured against, and the load
//! generator that measures them.
//!
//! ```text
//! korv-peers server https1 --listen 127.0.0.1:0     # prints `listening ADDR`
//! korv-peers load https1 --addr ADDR --concurrency 64 --duration 5s --json
//! korv-peers load tcp --addr ADDR --path /echo --body big.json
//! korv-peers load stdio --concurrency 64 -- ssh -W 127.0.0.1:PORT host
//! ```
//!
//! Servers: `https1` (HTTP/1.1 keep-alive over TLS 1.3), `https2` (HTTP/2
//! over TLS 1.3), `http1` (plain HTTP/1.1), `tcp` (Korv frames over plain
//! TCP, no SSH). Each serves `GET /hello` and `/echo` exactly as `korv serve`
//! does, with TCP_NODELAY on every socket. The load generator is closed-loop
//! and reports like `korv bench --json`.

mod http;
mod idle;
mod load;
mod routes;
mod serve;
mod tcp;
mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use korv_cli::load::{Labels, parse_duration, parse_warmup};

use crate::http::{Http1Caller, Http2Caller, RequestTemplate};
use crate::load::{Window, measure};
use crate::tcp::{KorvCaller, KorvRequest};

/// The most workers (requests in flight in all) one run may have.
const MAX_WORKERS: usize = 100_000;

#[derive(Debug, Parser)]
#[command(
    name = "korv-peers",
    version,
    about = "Korv's benchmark peers and their load generator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve GET /hello and /echo until killed; prints `listening ADDR` first.
    Server(ServerArgs),
    /// Closed-loop load against a peer; prints a summary or one JSON line.
    Load(LoadArgs),
    /// Hold idle authenticated Korv connections (for the server's memory per
    /// connection); prints `ready N`, then waits for stdin to close.
    Idle(idle::IdleArgs),
}

/// The servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ServerKind {
    /// HTTP/1.1 keep-alive over TLS 1.3 (ALPN http/1.1).
    Https1,
    /// HTTP/2 over TLS 1.3 (ALPN h2).
    Https2,
    /// Plain HTTP/1.1 keep-alive.
    Http1,
    /// Korv frames over plain TCP, no SSH.
    Tcp,
}

/// The clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LoadKind {
    /// HTTP/1.1 over TLS 1.3: one connection per request in flight.
    Https1,
    /// HTTP/2 over TLS 1.3: --concurrency streams on each connection.
    Https2,
    /// Plain HTTP/1.1: one connection per request in flight.
    Http1,
    /// Korv frames over plain TCP.
    Tcp,
    /// Korv frames over the stdin/stdout of the command after `--`.
    Stdio,
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// What to serve.
    kind: ServerKind,
    /// The address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[derive(Debug, Args)]
struct LoadArgs {
    /// The kind of peer.
    kind: LoadKind,
    /// The server's address, HOST:PORT (not for stdio).
    #[arg(long)]
    addr: Option<String>,
    /// Connections (for stdio: commands started).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Requests in flight per connection. HTTP/1.1 cannot multiplex: there
    /// it opens this many connections for each of --connections.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// The measured window (`5s`, `300ms`, `1m`).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Unrecorded load at full concurrency before the window (`0s`: none).
    #[arg(long, default_value = "1s", value_parser = parse_warmup)]
    warmup: Duration,
    /// The path requested.
    #[arg(long, default_value = "/hello")]
    path: String,
    /// A JSON file: send it with POST (HTTP) or STORE (Korv) instead of GET.
    #[arg(long)]
    body: Option<PathBuf>,
    /// Print one line of JSON (the keys of `korv bench --json`).
    #[arg(long)]
    json: bool,
    /// Also report the CPU time this process and the server process PID
    /// (on this machine) spend in the measured window.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// For stdio: the command and its arguments, e.g. `ssh -W 127.0.0.1:PORT host`.
    #[arg(last = true)]
    command: Vec<String>,
}

/// The body file as compact JSON text.
fn read_body(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read(path).with_context(|| format!("cannot read the body {}", path.display()))?;
    let value: serde_json::Value = serde_json::from_slice(&text)
        .with_context(|| format!("the body {} is not JSON", path.display()))?;
    Ok(value.to_string())
}

async fn resolve(addr: Option<&str>) -> anyhow::Result<SocketAddr> {
    let addr = addr.context("--addr HOST:PORT is needed")?;
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("cannot resolve {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to no address"))
}

async fn run_load(args: LoadArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.connections >= 1 && args.concurrency >= 1,
        "--connections and --concurrency must be at least 1"
    );
    let workers = args
        .connections
        .checked_mul(args.concurrency)
        .filter(|n| *n <= MAX_WORKERS)
        .with_context(|| format!("at most {MAX_WORKERS} requests in flight in all"))?;
    anyhow::ensure!(args.path.starts_with('/'), "--path must start with '/'");
    anyhow::ensure!(
        (args.kind == LoadKind::Stdio) != args.command.is_empty(),
        "a command after `--` goes with stdio, and only with it"
    );
    let body = args.body.as_deref().map(read_body).transpose()?;
    let request_bytes = body.as_ref().map_or(0, |b| b.len() as u64);
    let window = Window {
        warmup: args.warmup,
        duration: args.duration,
        server_pid: args.server_pid,
    };
    let mut labels = Labels {
        resource: args.path.clone(),
        verb: String::new(),
        connections: args.connections,
        concurrency: args.concurrency,
    };
    let outcome = match args.kind {
        LoadKind::Https1 | LoadKind::Http1 | LoadKind::Https2 => {
            let addr = resolve(args.addr.as_deref()).await?;
            let http2 = args.kind == LoadKind::Https2;
            let request = Arc::new(RequestTemplate::new(
                addr,
                &args.path,
                body.map(Bytes::from),
                http2,
            )?);
            labels.verb = request.method().to_string();
            if http2 {
                let callers =
                    Http2Caller::connect(addr, args.connections, args.concurrency, request).await?;
                measure(callers, window, request_bytes).await?
            } else {
                // One connection per request in flight: the report says so,
                // keeping connections × concurrency = requests in flight.
                labels.connections = workers;
                labels.concurrency = 1;
                let tls = args.kind == LoadKind::Https1;
                let callers = Http1Caller::connect(addr, tls, workers, request).await?;
                measure(callers, window, request_bytes).await?
            }
        }
        LoadKind::Tcp => {
            let addr = resolve(args.addr.as_deref()).await?;
            let request = KorvRequest::new(&args.path, body)?;
            labels.verb = request.verb().as_str().to_owned();
            let callers =
                KorvCaller::connect_tcp(addr, args.connections, args.concurrency, &request).await?;
            measure(callers, window, request_bytes).await?
        }
        LoadKind::Stdio => {
            anyhow::ensure!(args.addr.is_none(), "stdio takes no --addr");
            let request = KorvRequest::new(&args.path, body)?;
            labels.verb = request.verb().as_str().to_owned();
            let (callers, children) = KorvCaller::spawn_stdio(
                &args.command,
                args.connections,
                args.concurrency,
                &request,
            )?;
            let outcome = measure(callers, window, request_bytes).await;
            children.end().await;
            outcome?
        }
    };
    let kind = args
        .kind
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_owned());
    if args.json {
        println!("{}", serde_json::to_string(&outcome.report(&labels))?);
    } else {
        print!("{}", outcome.summary(&labels, &kind));
    }
    Ok(if outcome.errors() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Load(args) = &cli.command {
        // As `korv bench`: one thread per connection, at most one per core,
        // so every system's load generator has the same shape.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.worker_threads(args.connections.clamp(1, cores));
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("korv-peers: error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => serve::run(args.kind, args.listen)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Load(args) => run_load(args).await,
            Command::Idle(args) => idle::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("korv-peers: error: {err:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "korv-peers",
            "load",
            "stdio",
            "--concurrency",
            "4",
            "--",
            "ssh",
            "-W",
            "127.0.0.1:1",
            "host",
        ])
        .unwrap();
        let Command::Load(args) = cli.command else {
            panic!("not load")
        };
        assert_eq!(args.kind, LoadKind::Stdio);
        assert_eq!(args.command, ["ssh", "-W", "127.0.0.1:1", "host"]);
    }
}
