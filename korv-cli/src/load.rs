//! Counting a load test, and the report of one.
//!
//! A [`Tally`] records what each request got (its latency, a status code and
//! the bytes it moved, or an error); tallies of several workers merge into
//! one, and [`Tally::report`] turns it into a [`Report`]: counts, requests/s,
//! MB/s and latency percentiles. `korv bench --json` prints a report as one
//! line of JSON, and so does `korv-peers load --json`; `cargo xtask bench`
//! reads those lines.
//!
//! [`parse_duration`] and [`parse_warmup`] read their `--duration` and
//! `--warmup` options, and [`parse_rate`] `korv bench --rate`, which a
//! [`Pacer`] keeps.
//!
//! ```
//! use std::time::Duration;
//! use korv_cli::load::{Labels, Tally, parse_duration};
//!
//! let mut tally = Tally::new();
//! tally.answer(Duration::from_micros(250), 200, 40);
//! tally.error(Some(Duration::from_millis(30)), "no answer within 30ms".into());
//! let labels = Labels {
//!     resource: "/hello".into(),
//!     verb: "GET".into(),
//!     connections: 1,
//!     concurrency: 1,
//! };
//! let report = tally.report(&labels, parse_duration("2s").unwrap().as_secs_f64());
//! assert_eq!((report.requests, report.answered, report.errors), (2, 1, 1));
//! assert_eq!(report.requests_per_second, 0.5);
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// The slowest latency told apart from the rest, in microseconds (60 s).
const MAX_LATENCY_US: u64 = 60_000_000;

/// The longest `--duration` or `--warmup` (24 h).
const MAX_SECONDS: f64 = 86_400.0;

/// What one or more workers saw: latencies, status codes, errors and bytes.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Microseconds, 1 µs to 60 s, 3 significant digits.
    latency: Histogram<u64>,
    codes: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    bytes: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally::new()
    }
}

impl Tally {
    /// An empty tally.
    pub fn new() -> Tally {
        Tally {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant bounds that hdrhistogram accepts"),
            codes: BTreeMap::new(),
            errors: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// Records an answer with status `code` that took `latency` and moved
    /// `bytes` (request and response bodies together).
    pub fn answer(&mut self, latency: Duration, code: u16, bytes: u64) {
        self.record_latency(latency);
        *self.codes.entry(code).or_default() += 1;
        self.bytes += bytes;
    }

    /// Records a request that got no answer; identical messages are counted
    /// together. `latency` is how long it took to fail, when that belongs
    /// in the percentiles.
    pub fn error(&mut self, latency: Option<Duration>, message: String) {
        if let Some(latency) = latency {
            self.record_latency(latency);
        }
        *self.errors.entry(message).or_default() += 1;
    }

    fn record_latency(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency.saturating_record(micros.max(1));
    }

    /// Adds `other` (another worker's tally) to this one.
    pub fn merge(&mut self, other: &Tally) {
        // Every tally has the same bounds and records saturate at them, so
        // `other` holds no value this histogram cannot count.
        self.latency
            .add(&other.latency)
            .expect("tallies share their bounds");
        for (code, n) in &other.codes {
            *self.codes.entry(*code).or_default() += n;
        }
        for (error, n) in &other.errors {
            *self.errors.entry(error.clone()).or_default() += n;
        }
        self.bytes += other.bytes;
    }

    /// Requests answered, whatever their status code.
    pub fn answered(&self) -> u64 {
        self.codes.values().sum()
    }

    /// Requests that got no answer.
    pub fn errors(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The report of a run that lasted `seconds`.
    pub fn report(&self, labels: &Labels, seconds: f64) -> Report {
        let seconds = seconds.max(1e-9);
        let answered = self.answered();
        let errors = self.errors();
        let q = |p: f64| self.latency.value_at_quantile(p);
        Report {
            resource: labels.resource.clone(),
            verb: labels.verb.clone(),
            connections: labels.connections,
            concurrency: labels.concurrency,
            seconds,
            requests: answered + errors,
            answered,
            errors,
            requests_per_second: answered as f64 / seconds,
            mb_per_second: self.bytes as f64 / seconds / 1e6,
            latency_us: Percentiles {
                p50: q(0.5),
                p90: q(0.9),
                p99: q(0.99),
                p999: q(0.999),
                max: self.latency.max(),
            },
            codes: self.codes.clone(),
            error_counts: self.errors.clone(),
            cpu: None,
        }
    }
}

/// How a run is described in its report.
#[derive(Debug, Clone)]
pub struct Labels {
    /// The path requested.
    pub resource: String,
    /// The verb (Korv) or method (HTTP) used.
    pub verb: String,
    /// Connections opened.
    pub connections: usize,
    /// Requests in flight on each connection.
    pub concurrency: usize,
}

/// A finished run: the JSON object of `korv bench --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The path requested.
    pub resource: String,
    /// The verb (Korv) or method (HTTP) used.
    pub verb: String,
    /// Connections opened.
    pub connections: usize,
    /// Requests in flight on each connection.
    pub concurrency: usize,
    /// The measured window, in seconds.
    pub seconds: f64,
    /// Requests finished: answered plus errors.
    pub requests: u64,
    /// Requests answered, whatever their status code.
    pub answered: u64,
    /// Requests that got no answer.
    pub errors: u64,
    /// Answers per second.
    pub requests_per_second: f64,
    /// Request and response bodies, in millions of bytes per second.
    pub mb_per_second: f64,
    /// Latency percentiles, in microseconds.
    pub latency_us: Percentiles,
    /// Answers by status code (keys are the codes as text in JSON).
    pub codes: BTreeMap<u16, u64>,
    /// Errors by message.
    pub error_counts: BTreeMap<String, u64>,
    /// CPU time spent during the measured window, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuUse>,
}

/// CPU time (user plus system) spent during a measured window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CpuUse {
    /// The load generator's own process.
    pub client_seconds: f64,
    /// The server process named with `--server-pid`, when it could be read.
    pub server_seconds: Option<f64>,
}

/// Clock ticks per second in `/proc/PID/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// The CPU time (user plus system, all threads) process `pid` has used so
/// far, in seconds, from `/proc/PID/stat`; this process's with `None`.
/// `None` when it cannot be read (no `/proc`, the process is gone).
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = pid.map_or_else(
        || "/proc/self/stat".to_owned(),
        |p| format!("/proc/{p}/stat"),
    );
    parse_stat_cpu(&std::fs::read_to_string(path).ok()?)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line, in seconds.
/// The command name (field 2) may hold spaces and parentheses, so fields
/// are counted from the last `)`.
fn parse_stat_cpu(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

/// CPU time of this process and of a server, read at the start of a
/// measured window; [`CpuWindow::finish`] reads them again at its end.
#[derive(Debug, Clone, Copy)]
pub struct CpuWindow {
    server_pid: Option<u32>,
    client: Option<f64>,
    server: Option<f64>,
}

impl CpuWindow {
    /// Reads this process's CPU time and `server_pid`'s, now.
    pub fn start(server_pid: Option<u32>) -> CpuWindow {
        CpuWindow {
            server_pid,
            client: cpu_seconds(None),
            server: server_pid.and_then(|pid| cpu_seconds(Some(pid))),
        }
    }

    /// The CPU time each process spent since [`CpuWindow::start`]; `None`
    /// when this process's own could not be read.
    pub fn finish(&self) -> Option<CpuUse> {
        let client = cpu_seconds(None)? - self.client?;
        let server = match (
            self.server,
            self.server_pid.and_then(|p| cpu_seconds(Some(p))),
        ) {
            (Some(before), Some(after)) => Some(after - before),
            _ => None,
        };
        Some(CpuUse {
            client_seconds: client,
            server_seconds: server,
        })
    }
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    /// The median.
    pub p50: u64,
    /// The 90th percentile.
    pub p90: u64,
    /// The 99th percentile.
    pub p99: u64,
    /// The 99.9th percentile.
    pub p999: u64,
    /// The slowest.
    pub max: u64,
}

impl Report {
    /// A few lines for people: the run, throughput, latency, then each code
    /// and each error with its count. Every line ends with a newline.
    pub fn summary(&self) -> String {
        let l = &self.latency_us;
        let mut text = format!(
            "{} {}: {} requests in {:.2}s over {} connection(s) x {} in flight\n",
            self.verb,
            self.resource,
            self.requests,
            self.seconds,
            self.connections,
            self.concurrency,
        );
        text += &format!(
            "  {:.0} requests/s, {:.2} MB/s\n",
            self.requests_per_second, self.mb_per_second
        );
        text += &format!(
            "  latency µs: p50 {} p90 {} p99 {} p99.9 {} max {}\n",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        for (code, n) in &self.codes {
            text += &format!("  {code}: {n}\n");
        }
        for (error, n) in &self.error_counts {
            text += &format!("  error ({n}): {error}\n");
        }
        text
    }
}

/// `err` and its sources, joined by `: `: how a tally names an error.
pub fn error_message(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        text += ": ";
        text += &inner.to_string();
        cause = inner.source();
    }
    text
}

/// Parses a positive duration: `10s`, `500ms`, `1.5s`, `2m`, or a bare
/// number of seconds, up to 24 hours.
///
/// # Errors
/// The text is not such a duration; the message says what is accepted.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let span = parse_warmup(text)?;
    if span.is_zero() {
        return Err(format!("duration {text:?} must be positive"));
    }
    Ok(span)
}

/// Parses a request rate (`--rate`): requests per second, positive and
/// at most a million.
///
/// # Errors
/// The text is not such a number; the message says what is accepted.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("bad rate {text:?}: use requests per second, e.g. 5000"))?;
    if !(rate.is_finite() && rate > 0.0 && rate <= MAX_RATE) {
        return Err(format!(
            "rate {text:?} must be above 0 and at most {MAX_RATE} requests/s"
        ));
    }
    Ok(rate)
}

/// The highest `--rate`.
const MAX_RATE: f64 = 1_000_000.0;

/// Spreads requests evenly over time, whichever loop sends them: the n-th
/// slot (counted from 0) opens `n / rate` seconds after the start, and
/// [`Pacer::release`] hands one permit to the loops at each slot.
///
/// The permits come from a thread of their own that sleeps to each slot
/// (Linux's high-resolution timers keep it within tens of µs), not from
/// Tokio's timer, whose millisecond ticks would release the requests of a
/// millisecond together: a burst that a server can answer in one batch.
/// A paced run should show a server what a slow client shows it, one
/// request at a time. Permits never pile up beyond a cap (the loops' count),
/// so a server that cannot keep up turns the run back into a closed loop,
/// never a queue that grows.
///
/// ```
/// use std::time::{Duration, Instant};
/// use korv_cli::load::Pacer;
///
/// let start = Instant::now();
/// let pacer = Pacer::new(start, 1000.0);
/// assert_eq!(pacer.slot(0), start);
/// assert_eq!(pacer.slot(500), start + Duration::from_millis(500));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    start: Instant,
    per_second: f64,
}

impl Pacer {
    /// A pacer of `per_second` requests from `start`.
    pub fn new(start: Instant, per_second: f64) -> Pacer {
        Pacer { start, per_second }
    }

    /// When the `n`-th slot opens.
    pub fn slot(&self, n: u64) -> Instant {
        self.start + Duration::from_secs_f64(n as f64 / self.per_second)
    }

    /// Starts the thread that adds one permit to `permits` at each slot,
    /// while fewer than `cap` wait unused, until `permits` is closed.
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn release(
        self,
        permits: Arc<Semaphore>,
        cap: usize,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("korv-bench-pacer".into())
            .spawn(move || {
                for n in 0.. {
                    if permits.is_closed() {
                        return;
                    }
                    let wait = self.slot(n).saturating_duration_since(Instant::now());
                    if !wait.is_zero() {
                        std::thread::sleep(wait);
                    }
                    if permits.available_permits() < cap {
                        permits.add_permits(1);
                    }
                }
            })
    }
}

/// Parses a duration as [`parse_duration`] does, zero included (`0s`: no
/// warm-up).
///
/// # Errors
/// The text is not such a duration; the message says what is accepted.
pub fn parse_warmup(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}: use 10s, 500ms or 2m"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        _ => return Err(format!("bad duration unit in {text:?}: use ms, s or m")),
    };
    if !(seconds.is_finite() && (0.0..=MAX_SECONDS).contains(&seconds)) {
        return Err(format!("duration {text:?} must be between 0 and 24 h"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Labels {
        Labels {
            resource: "/hello".into(),
            verb: "GET".into(),
            connections: 2,
            concurrency: 3,
        }
    }

    #[test]
    fn cpu_time_is_utime_plus_stime_counted_from_the_last_parenthesis() {
        // A command name with a space and a `)`; utime 250 and stime 50 ticks.
        let stat = "4242 (korv ) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_stat_cpu(stat), Some(3.0));
        assert_eq!(parse_stat_cpu("4242 (korv) S 1"), None);
        let own = cpu_seconds(None).expect("this process's /proc/self/stat");
        assert!(own >= 0.0);
        assert!(
            CpuWindow::start(Some(u32::MAX))
                .finish()
                .is_some_and(|cpu| cpu.server_seconds.is_none()),
            "a server that does not exist has no CPU figure"
        );
    }

    #[test]
    fn rates_are_positive_finite_and_bounded() {
        assert_eq!(parse_rate("5000"), Ok(5000.0));
        assert_eq!(parse_rate(" 0.5 "), Ok(0.5));
        for bad in ["0", "-1", "inf", "NaN", "1e7", "fast", ""] {
            let err = parse_rate(bad).unwrap_err();
            assert!(err.contains("rate"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_pacer_releases_a_permit_per_slot_up_to_its_cap_and_stops_when_closed() {
        // Slots evenly spaced at the rate.
        let start = Instant::now();
        let pacer = Pacer::new(start, 4000.0);
        assert_eq!(pacer.slot(4000) - start, Duration::from_secs(1));
        assert_eq!(pacer.slot(3) - pacer.slot(2), Duration::from_micros(250));
        // Started a second late, every slot so far is due at once: the
        // permits stop at the cap instead of piling up 4,000 of them.
        let permits = Arc::new(Semaphore::new(0));
        let late = Pacer::new(start - Duration::from_secs(1), 4000.0);
        let thread = late.release(Arc::clone(&permits), 5).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for _ in 0..20 {
            runtime.block_on(permits.acquire()).unwrap().forget();
            assert!(permits.available_permits() <= 5);
        }
        permits.close();
        thread.join().unwrap();
    }

    #[test]
    fn durations_parse_in_ms_s_and_m() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("10h").is_err());
        assert!(parse_duration("25m").is_ok() && parse_duration("1441m").is_err());
        assert_eq!(parse_warmup("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_warmup("0").unwrap(), Duration::ZERO);
        assert!(parse_warmup("-1s").is_err());
        assert!(
            parse_warmup("1e30").is_err(),
            "beyond Duration, not a panic"
        );
    }

    #[test]
    fn merged_tallies_report_counts_rates_and_percentiles() {
        let mut one = Tally::new();
        for micros in 1..=100 {
            one.answer(Duration::from_micros(micros), 200, 10);
        }
        let mut two = Tally::new();
        two.answer(Duration::from_millis(5), 404, 5);
        two.error(None, "refused".into());
        two.error(Some(Duration::from_secs(1)), "refused".into());
        one.merge(&two);
        let report = one.report(&labels(), 2.0);
        assert_eq!(
            (report.requests, report.answered, report.errors),
            (103, 101, 2)
        );
        assert_eq!(report.codes, BTreeMap::from([(200, 100), (404, 1)]));
        assert_eq!(report.error_counts["refused"], 2);
        assert_eq!(report.requests_per_second, 50.5);
        assert_eq!(report.mb_per_second, 1005.0 / 2.0 / 1e6);
        assert_eq!(report.latency_us.p50, 51);
        assert!(report.latency_us.max >= 999_000, "{:?}", report.latency_us);
    }

    #[test]
    fn the_json_has_the_keys_xtask_reads() {
        let mut tally = Tally::new();
        tally.answer(Duration::from_micros(7), 200, 1);
        let json = serde_json::to_value(tally.report(&labels(), 1.0)).unwrap();
        let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "answered",
                "codes",
                "concurrency",
                "connections",
                "error_counts",
                "errors",
                "latency_us",
                "mb_per_second",
                "requests",
                "requests_per_second",
                "resource",
                "seconds",
                "verb"
            ]
        );
        assert_eq!(json["codes"]["200"], 1);
        assert_eq!(json["latency_us"]["p50"], 7);
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back.codes[&200], 1);
    }

    #[test]
    fn the_summary_names_the_run_codes_and_errors() {
        let mut tally = Tally::new();
        tally.answer(Duration::from_micros(7), 200, 1);
        tally.error(None, "boom".into());
        let summary = tally.report(&labels(), 1.0).summary();
        assert!(
            summary.starts_with(
                "GET /hello: 2 requests in 1.00s over 2 connection(s) x 3 in flight\n"
            ),
            "{summary}"
        );
        assert!(summary.contains("  200: 1\n") && summary.ends_with("  error (1): boom\n"));
    }

    #[test]
    fn an_error_message_carries_its_sources() {
        #[derive(Debug)]
        struct Outer(std::fmt::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("outer")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert_eq!(
            error_message(&Outer(std::fmt::Error)),
            "outer: an error occurred when formatting an argument"
        );
    }
}
