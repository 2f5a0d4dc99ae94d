//! `korv bench`: a closed-loop load generator over real SSH connections.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use korv_client::KorvClient;
use korv_proto::Verb;
use serde_json::{Value, json};

use crate::cli::{ConnectArgs, UsageError};

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

fn parse_warmup(text: &str) -> Result<Duration, String> {
    if text.trim().trim_end_matches(['s', 'm']).trim() == "0" {
        return Ok(Duration::ZERO);
    }
    parse_duration(text)
}

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len()),
    );
    let value: f64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}: use 10s, 500ms or 2m"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        _ => return Err(format!("bad duration unit in {text:?}: use ms, s or m")),
    };
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("duration {text:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// What one worker saw.
struct Tally {
    latency: Histogram<u64>,
    codes: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    bytes: u64,
}

impl Tally {
    fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            codes: BTreeMap::new(),
            errors: BTreeMap::new(),
            bytes: 0,
        })
    }

    fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        self.latency.add(&other.latency)?;
        for (code, n) in other.codes {
            *self.codes.entry(code).or_default() += n;
        }
        for (error, n) in other.errors {
            *self.errors.entry(error).or_default() += n;
        }
        self.bytes += other.bytes;
        Ok(())
    }
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.connections == 0 || args.concurrency == 0 {
        return Err(UsageError("--connections and --concurrency must be at least 1".into()).into());
    }
    let target = crate::request::parse_target(&args.resource, &args.connect)?;
    let body = args
        .body
        .as_deref()
        .map(crate::request::read_body)
        .transpose()?;
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
    let config = crate::request::client_config(&target, &args.connect);
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
    let mut workers = Vec::new();
    for client in &clients {
        for _ in 0..args.concurrency {
            let client = client.clone();
            let issued = Arc::clone(&issued);
            let done = Arc::clone(&done);
            let path = target.path.clone();
            let body = body.clone();
            let verb = args.verb;
            workers.push(tokio::spawn(async move {
                let mut tally = Tally::new()?;
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
                    let sent = Instant::now();
                    let result = client
                        .request(verb, &path, body.as_deref(), Default::default())
                        .await;
                    let micros = sent.elapsed().as_micros().max(1) as u64;
                    tally.latency.saturating_record(micros);
                    match result {
                        Ok(response) => {
                            let code = response.code.as_u16();
                            *tally.codes.entry(code).or_default() += 1;
                            let size = *sizes
                                .entry(code)
                                .or_insert_with(|| response_size(&response.body));
                            tally.bytes += body_bytes + size;
                        }
                        Err(err) => *tally.errors.entry(err.to_string()).or_default() += 1,
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(tally)
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
    let mut tally = Tally::new()?;
    for worker in workers {
        tally.merge(worker.await??)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    ticker.abort();
    bar.finish_and_clear();
    let answered: u64 = tally.codes.values().sum();
    let errors: u64 = tally.errors.values().sum();
    let q = |p: f64| tally.latency.value_at_quantile(p);
    let report = json!({
        "resource": target.path,
        "verb": args.verb.as_str(),
        "connections": args.connections,
        "concurrency": args.concurrency,
        "seconds": elapsed,
        "requests": answered + errors,
        "answered": answered,
        "errors": errors,
        "requests_per_second": (answered as f64) / elapsed,
        "mb_per_second": (tally.bytes as f64) / elapsed / 1e6,
        "latency_us": {
            "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": tally.latency.max(),
        },
        "codes": tally.codes.iter().map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "error_counts": tally.errors,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{} {}: {} requests in {elapsed:.2}s over {} connection(s) x {} in flight",
            args.verb,
            target.path,
            answered + errors,
            args.connections,
            args.concurrency
        );
        println!(
            "  {:.0} requests/s, {:.2} MB/s",
            report["requests_per_second"].as_f64().unwrap_or(0.0),
            report["mb_per_second"].as_f64().unwrap_or(0.0)
        );
        println!(
            "  latency µs: p50 {} p90 {} p99 {} p99.9 {} max {}",
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            tally.latency.max()
        );
        for (code, n) in &tally.codes {
            println!("  {code}: {n}");
        }
        for (error, n) in &tally.errors {
            println!("  error ({n}): {error}");
        }
    }
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn response_size(body: &Value) -> u64 {
    match body {
        Value::Null => 4,
        other => serde_json::to_string(other).map_or(0, |s| s.len() as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_ms_s_and_m() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("10h").is_err());
    }
}
