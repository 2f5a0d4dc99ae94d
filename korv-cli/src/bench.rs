//! `korv bench`: a closed-loop load generator over real SSH connections.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use korv_cli::load::{
    CpuWindow, Labels, Pacer, Tally, error_message, parse_duration, parse_rate, parse_warmup,
};
use korv_client::KorvClient;
use korv_proto::Verb;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::body::read_body;
use crate::connect::ConnectArgs;
use crate::error_reporting::{self, UsageError};

/// The arguments of `korv bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// A path or korv:// URL.
    pub(crate) resource: String,
    /// SSH connections.
    #[arg(long, default_value_t = 1)]
    pub(crate) connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// How long to run (`10s`, `500ms`, `2m`); ignored with --requests.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Run this long first without recording (connections warm, caches
    /// full); --duration is measured after it.
    #[arg(long, default_value = "0s", value_parser = parse_warmup)]
    pub(crate) warmup: Duration,
    /// Send exactly this many requests instead of running for --duration.
    #[arg(long)]
    pub(crate) requests: Option<u64>,
    /// Send at most this many requests per second in the measured window,
    /// evenly spaced across every loop (an open-loop pace kept by the
    /// closed loops): to measure the server's cost at a given load rather
    /// than at the most it can take.
    #[arg(long, value_name = "PER_SECOND", value_parser = parse_rate)]
    pub(crate) rate: Option<f64>,
    /// The body: JSON text or @file.json.
    #[arg(long)]
    pub(crate) body: Option<String>,
    /// The verb.
    #[arg(long, default_value = "GET", value_parser = parse_verb)]
    pub(crate) verb: Verb,
    /// Load-generator threads (default: one per connection, at most one
    /// per core, like wrk). Fewer threads than connections share them.
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Print the results as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Measure watches instead: N watches on RESOURCE (a prefix ending in
    /// `/`, served by `korv serve`) over one connection while --concurrency
    /// writers STORE documents under it; events/s and the latency from a
    /// STORE's sending to each event's delivery.
    #[arg(long, value_name = "N")]
    pub(crate) watchers: Option<usize>,
    /// Also report the CPU time this process and the server process PID
    /// (on this machine) spend in the measured window.
    #[arg(long, value_name = "PID")]
    pub(crate) server_pid: Option<u32>,
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
}

impl BenchArgs {
    /// The load generator's runtime threads.
    pub(crate) fn worker_threads(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.threads
            .unwrap_or_else(|| self.connections.min(cores))
            .max(1)
    }
}

fn parse_verb(text: &str) -> Result<Verb, String> {
    text.to_ascii_uppercase()
        .parse()
        .map_err(|e| format!("{e}"))
}

/// Runs the load: `--connections` clients, `--concurrency` closed loops on
/// each, for `--duration` after `--warmup` or for `--requests`; prints the
/// report. Exits 1 when any request got no answer.
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.connections == 0 || args.concurrency == 0 {
        return Err(UsageError("--connections and --concurrency must be at least 1".into()).into());
    }
    if let Some(watchers) = args.watchers.filter(|&n| n > 0) {
        if args.rate.is_some() {
            return Err(UsageError("--rate paces requests, not --watchers".into()).into());
        }
        return crate::bench_watch::run(args, watchers).await;
    }
    let target = args.connect.target(&args.resource)?;
    let body = args.body.as_deref().map(read_body).transpose()?;
    if args.verb.requires_body() && body.is_none() {
        return Err(UsageError(format!("{} needs --body", args.verb)).into());
    }
    // Encoded once: every request sends the same bytes (as the peers' load
    // generators do), instead of re-encoding a `Value` per request.
    let body = body
        .map(|b| serde_json::value::to_raw_value(&b))
        .transpose()?
        .map(Arc::new);
    let body_bytes = body.as_ref().map_or(0, |b| b.get().len() as u64);
    let config = args.connect.client_config(&target);
    let mut clients = Vec::new();
    for _ in 0..args.connections {
        clients.push(KorvClient::connect(config.clone()).await?);
    }
    let total = args.requests;
    let issued = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let show = !args.json && std::io::stderr().is_terminal();
    let bar = if show {
        match total {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new(args.duration.as_millis() as u64),
        }
    } else {
        indicatif::ProgressBar::hidden()
    };
    let warm_until = Instant::now() + args.warmup;
    let started = warm_until;
    let deadline = warm_until + args.duration;
    // CPU time is read when the measured window opens and once every worker
    // is done, so that connecting and warming up are left out.
    let cpu_window = args.server_pid.map(|pid| {
        tokio::spawn(async move {
            tokio::time::sleep_until(warm_until.into()).await;
            CpuWindow::start(Some(pid))
        })
    });
    let permits = match args.rate {
        Some(rate) => {
            let permits = Arc::new(Semaphore::new(0));
            let loops = args.connections * args.concurrency;
            Pacer::new(started, rate).release(Arc::clone(&permits), loops)?;
            Some(permits)
        }
        None => None,
    };
    let mut workers = Vec::new();
    for client in &clients {
        for _ in 0..args.concurrency {
            let client = client.clone();
            let issued = Arc::clone(&issued);
            let done = Arc::clone(&done);
            let path = target.path.clone();
            let body = body.clone();
            let verb = args.verb;
            let permits = permits.clone();
            workers.push(tokio::spawn(async move {
                let mut tally = Tally::new();
                // Answers to the same request are the same size: measure the
                // first of each code rather than re-encode every answer.
                let mut sizes = BTreeMap::<u16, u64>::new();
                while Instant::now() < warm_until {
                    let _ = client
                        .request(verb, &path, body.as_deref(), Default::default())
                        .await;
                }
                loop {
                    match total {
                        Some(n) if issued.fetch_add(1, Ordering::Relaxed) >= n => break,
                        None if Instant::now() >= deadline => break,
                        _ => {}
                    }
                    if let Some(permits) = &permits {
                        // A loop waiting for its slot stops at the deadline:
                        // at a low rate most loops wait, and the run must not
                        // outlast --duration by one slot per waiting loop.
                        let acquired = match total {
                            Some(_) => Some(permits.acquire().await),
                            None => tokio::time::timeout_at(deadline.into(), permits.acquire())
                                .await
                                .ok(),
                        };
                        match acquired {
                            Some(Ok(permit)) => permit.forget(),
                            _ => break,
                        }
                    }
                    let sent = Instant::now();
                    let result = client
                        .request(verb, &path, body.as_deref(), Default::default())
                        .await;
                    let latency = sent.elapsed();
                    match result {
                        Ok(response) => {
                            let code = response.code.as_u16();
                            let size = *sizes
                                .entry(code)
                                .or_insert_with(|| response_size(&response.body));
                            tally.answer(latency, code, body_bytes + size);
                        }
                        Err(err) => tally.error(Some(latency), error_message(&err)),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                tally
            }));
        }
    }
    let ticker = {
        let bar = bar.clone();
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                match total {
                    Some(_) => bar.set_position(done.load(Ordering::Relaxed)),
                    None => bar.set_position(
                        Instant::now()
                            .saturating_duration_since(started)
                            .as_millis() as u64,
                    ),
                }
            }
        })
    };
    let mut tally = Tally::new();
    for worker in workers {
        tally.merge(&worker.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(permits) = &permits {
        // Ends the pacer's thread.
        permits.close();
    }
    let cpu = match cpu_window {
        Some(window) => window.await?.finish(),
        None => None,
    };
    ticker.abort();
    bar.finish_and_clear();
    let labels = Labels {
        resource: target.path,
        verb: args.verb.as_str().to_owned(),
        connections: args.connections,
        concurrency: args.concurrency,
    };
    let mut report = tally.report(&labels, elapsed);
    report.cpu = cpu;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.summary());
    }
    Ok(error_reporting::for_failures(report.errors))
}

fn response_size(body: &Value) -> u64 {
    match body {
        Value::Null => 4,
        other => serde_json::to_string(other).map_or(0, |s| s.len() as u64),
    }
}
