//! `korv bench --watchers N`: the cost of watches. One connection holds N
//! watches on a prefix while `--concurrency` writers STORE documents under
//! it on the same connection; each document carries the time its STORE was
//! sent, so each delivered event measures sent → committed → delivered.
//! The report counts events (one per document per watcher) as its
//! requests, with their latency, and an error for each event that never
//! came.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use korv_cli::load::{Labels, Tally, error_message};
use korv_client::KorvClient;
use serde_json::json;

use crate::bench::BenchArgs;
use crate::error_reporting::{self, UsageError};

/// How long the watchers get, after the last STORE is answered, to receive
/// the events still on their way.
const DRAIN_WITHIN: Duration = Duration::from_secs(30);

/// Runs the watch benchmark and prints its report (exit 1 if an event was
/// lost or a request failed).
pub(crate) async fn run(args: BenchArgs, watchers: usize) -> anyhow::Result<ExitCode> {
    let target = args.connect.target(&args.resource)?;
    if !target.path.ends_with('/') {
        return Err(UsageError(format!(
            "--watchers watches a prefix: RESOURCE must end in '/', not {:?}",
            target.path
        ))
        .into());
    }
    let client = KorvClient::connect(args.connect.client_config(&target)).await?;
    // Documents go under a prefix of this run's own, so that runs against
    // the same store never collide.
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let prefix = format!("{}bench-{run_id}/", target.path);
    let clock = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let stored = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..watchers {
        let mut watch = client.watch(&prefix, None::<&()>).await?;
        let stop = Arc::clone(&stop);
        let stored = Arc::clone(&stored);
        readers.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            let mut seen = 0_u64;
            let mut drain_until = None;
            loop {
                if stop.load(Ordering::Acquire) {
                    let until = *drain_until.get_or_insert_with(|| Instant::now() + DRAIN_WITHIN);
                    if seen >= stored.load(Ordering::Acquire) || Instant::now() >= until {
                        break;
                    }
                }
                let next = tokio::time::timeout(Duration::from_millis(100), watch.next()).await;
                match next {
                    Err(_) => continue,
                    Ok(None) => break,
                    Ok(Some(Err(err))) => {
                        tally.error(None, error_message(&err));
                        break;
                    }
                    Ok(Some(Ok(event))) => {
                        let sent = event["document"]["sent_ns"].as_u64().unwrap_or(0);
                        let now = u64::try_from(clock.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        tally.answer(Duration::from_nanos(now.saturating_sub(sent)), 200, 0);
                        seen += 1;
                    }
                }
            }
            let expected = stored.load(Ordering::Acquire);
            for _ in seen..expected {
                tally.error(None, "event never delivered".into());
            }
            tally
        }));
    }
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut writers = Vec::new();
    for writer in 0..args.concurrency {
        let client = client.clone();
        let prefix = prefix.clone();
        let stored = Arc::clone(&stored);
        let total = args.requests;
        writers.push(tokio::spawn(async move {
            let mut failures = Tally::new();
            let mut n = 0_u64;
            loop {
                match total {
                    Some(total) if stored.load(Ordering::Acquire) >= total => break,
                    None if Instant::now() >= deadline => break,
                    _ => {}
                }
                let sent_ns = u64::try_from(clock.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let path = format!("{prefix}{writer}-{n}");
                n += 1;
                match client.store(&path, &json!({ "sent_ns": sent_ns })).await {
                    Ok(answer) if answer.code.as_u16() == 201 => {
                        stored.fetch_add(1, Ordering::AcqRel);
                    }
                    Ok(answer) => failures.error(None, format!("STORE answered {}", answer.code)),
                    Err(err) => failures.error(None, error_message(&err)),
                }
            }
            failures
        }));
    }
    let mut tally = Tally::new();
    for writer in writers {
        tally.merge(&writer.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Release);
    for reader in readers {
        tally.merge(&reader.await?);
    }
    let labels = Labels {
        resource: prefix,
        verb: format!("WATCH x{watchers}"),
        connections: 1,
        concurrency: args.concurrency,
    };
    let report = tally.report(&labels, elapsed);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} documents stored, each an event for {watchers} watchers; latency is STORE sent -> event delivered",
            stored.load(Ordering::Acquire)
        );
        print!("{}", report.summary());
    }
    Ok(error_reporting::for_failures(report.errors))
}
