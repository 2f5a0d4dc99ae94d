//! The closed-loop load driver shared by every kind of peer. What it counts
//! goes into `korv bench`'s own tally (`korv_cli::load`), so the peers and
//! `korv bench` report alike.
//!
//! Each worker keeps exactly one request in flight: it sends the next one
//! when the previous answer has arrived. The run has two phases on one clock:
//! a warm-up, whose answers are not recorded, then the measured window. An
//! answer belongs to the window it *arrives* in, so requests sent near the
//! end of the warm-up and answered inside the window count there. Workers
//! send no new request once the window has ended; the window's length is the
//! time until the last worker's last answer, as `korv bench` measures it.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use korv_cli::load::{CpuUse, CpuWindow, Labels, Report, Tally};

/// What one answered request brought back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answer {
    /// The status code (HTTP) or response code (Korv).
    pub(crate) code: u16,
    /// Bytes of the response body.
    pub(crate) bytes: u64,
}

/// A request that got no answer: a transport failure, a timeout, a response
/// that could not be read.
#[derive(Debug, Clone)]
pub(crate) struct CallError {
    /// What went wrong; identical messages are counted together.
    pub(crate) message: String,
    /// Whether the connection is unusable afterwards: the worker then stops
    /// rather than spinning on a dead connection.
    pub(crate) fatal: bool,
}

impl CallError {
    /// An error after which the connection is unusable.
    pub(crate) fn fatal(cause: impl Display) -> CallError {
        CallError {
            message: cause.to_string(),
            fatal: true,
        }
    }

    /// An error that leaves the connection usable.
    pub(crate) fn transient(cause: impl Display) -> CallError {
        CallError {
            message: cause.to_string(),
            fatal: false,
        }
    }
}

/// One worker's way of making the request under test, over its connection.
pub(crate) trait Caller: Send + 'static {
    /// Sends the request and waits for its whole answer.
    fn call(&mut self) -> impl Future<Output = Result<Answer, CallError>> + Send;
}

/// The run's phases.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// Unrecorded load before the measured window (may be zero).
    pub(crate) warmup: Duration,
    /// The measured window.
    pub(crate) duration: Duration,
    /// A server process whose CPU time (with this process's) is read at the
    /// start and the end of the measured window, for the report.
    pub(crate) server_pid: Option<u32>,
}

/// A finished run.
#[derive(Debug)]
pub(crate) struct Outcome {
    tally: Tally,
    seconds: f64,
    cpu: Option<CpuUse>,
}

/// Makes one unrecorded request on every worker, all at once, so that every
/// connection is known to work (and, for `stdio`, the SSH handshake is over)
/// before the clock starts. Returns the workers in the same order.
///
/// # Errors
/// The first worker whose request failed.
async fn prime<C: Caller>(callers: Vec<C>) -> anyhow::Result<Vec<C>> {
    let tasks: Vec<_> = callers
        .into_iter()
        .map(|mut caller| {
            tokio::spawn(async move {
                let result = caller.call().await;
                (caller, result)
            })
        })
        .collect();
    let mut ready = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (caller, result) = task.await?;
        if let Err(err) = result {
            anyhow::bail!("the first request failed: {}", err.message);
        }
        ready.push(caller);
    }
    Ok(ready)
}

/// Runs `callers` (one per request in flight) through the warm-up and the
/// measured window. `request_bytes` is the size of the request body, counted
/// with each answer's response body for MB/s.
///
/// # Errors
/// A first request failed (see [`prime`]), or a worker task panicked.
pub(crate) async fn measure<C: Caller>(
    callers: Vec<C>,
    window: Window,
    request_bytes: u64,
) -> anyhow::Result<Outcome> {
    let callers = prime(callers).await?;
    let start = Instant::now();
    let recording = start + window.warmup;
    let end = recording + window.duration;
    let cpu_window = window.server_pid.map(|pid| {
        tokio::spawn(async move {
            tokio::time::sleep_until(recording.into()).await;
            CpuWindow::start(Some(pid))
        })
    });
    let workers: Vec<_> = callers
        .into_iter()
        .map(|caller| tokio::spawn(work(caller, recording, end, request_bytes)))
        .collect();
    let mut tally = Tally::new();
    for worker in workers {
        tally.merge(&worker.await?);
    }
    let seconds = recording.elapsed().as_secs_f64().max(1e-9);
    let cpu = match cpu_window {
        Some(window) => window.await?.finish(),
        None => None,
    };
    Ok(Outcome {
        tally,
        seconds,
        cpu,
    })
}

/// One worker's closed loop. Ends at `end`, or at a fatal error.
async fn work<C: Caller>(
    mut caller: C,
    recording: Instant,
    end: Instant,
    request_bytes: u64,
) -> Tally {
    let mut tally = Tally::new();
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let result = caller.call().await;
        let answered = Instant::now();
        if answered < recording {
            // Warm-up: not recorded, except an error that stops the worker,
            // which the report must show.
            if let Err(err) = result
                && err.fatal
            {
                tally.error(None, format!("during warm-up: {}", err.message));
                break;
            }
            continue;
        }
        let latency = answered.duration_since(sent);
        match result {
            Ok(answer) => tally.answer(latency, answer.code, request_bytes + answer.bytes),
            Err(err) => {
                tally.error(Some(latency), err.message);
                if err.fatal {
                    break;
                }
            }
        }
    }
    tally
}

impl Outcome {
    /// Transport failures counted.
    pub(crate) fn errors(&self) -> u64 {
        self.tally.errors()
    }

    /// The report, as `korv bench --json` makes it.
    pub(crate) fn report(&self, labels: &Labels) -> Report {
        let mut report = self.tally.report(labels, self.seconds);
        report.cpu = self.cpu;
        report
    }

    /// A few lines for people, led by the kind of peer.
    pub(crate) fn summary(&self, labels: &Labels, kind: &str) -> String {
        format!("{kind} {}", self.report(labels).summary())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers instantly; fails every `fail_every`-th call.
    struct Fake {
        calls: u64,
        fail_every: u64,
        fatal: bool,
    }

    impl Caller for Fake {
        async fn call(&mut self) -> Result<Answer, CallError> {
            self.calls += 1;
            tokio::task::yield_now().await;
            if self.fail_every > 0 && self.calls.is_multiple_of(self.fail_every) {
                return Err(CallError {
                    message: "boom".into(),
                    fatal: self.fatal,
                });
            }
            Ok(Answer {
                code: 200,
                bytes: 10,
            })
        }
    }

    fn labels() -> Labels {
        Labels {
            resource: "/hello".into(),
            verb: "GET".into(),
            connections: 1,
            concurrency: 2,
        }
    }

    #[tokio::test]
    async fn counts_answers_bytes_and_keys() {
        let callers = (0..2)
            .map(|_| Fake {
                calls: 0,
                fail_every: 0,
                fatal: false,
            })
            .collect();
        let window = Window {
            warmup: Duration::from_millis(20),
            duration: Duration::from_millis(50),
            server_pid: None,
        };
        let outcome = measure(callers, window, 5).await.unwrap();
        let report = serde_json::to_value(outcome.report(&labels())).unwrap();
        let answered = report["answered"].as_u64().unwrap();
        assert!(answered > 0);
        assert_eq!(report["errors"], 0);
        assert_eq!(report["codes"]["200"].as_u64(), Some(answered));
        let mb = report["mb_per_second"].as_f64().unwrap();
        let expected = (answered * 15) as f64 / report["seconds"].as_f64().unwrap() / 1e6;
        assert!((mb - expected).abs() < 1e-9);
    }

    #[tokio::test]
    async fn a_fatal_error_stops_its_worker_and_is_counted() {
        let callers = vec![Fake {
            calls: 0,
            fail_every: 3,
            fatal: true,
        }];
        let window = Window {
            warmup: Duration::ZERO,
            duration: Duration::from_secs(5),
            server_pid: None,
        };
        let started = Instant::now();
        let outcome = measure(callers, window, 0).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(1), "stopped early");
        let report = serde_json::to_value(outcome.report(&labels())).unwrap();
        assert_eq!(report["errors"], 1);
        assert_eq!(report["error_counts"]["boom"], 1);
        // Call 1 primed, call 2 answered, call 3 failed.
        assert_eq!(report["answered"], 1);
    }

    #[tokio::test]
    async fn a_failing_first_request_is_an_error() {
        let callers = vec![Fake {
            calls: 0,
            fail_every: 1,
            fatal: false,
        }];
        let window = Window {
            warmup: Duration::ZERO,
            duration: Duration::from_millis(10),
            server_pid: None,
        };
        assert!(measure(callers, window, 0).await.is_err());
    }
}
