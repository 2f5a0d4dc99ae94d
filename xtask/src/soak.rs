//! `cargo xtask soak [--minutes N | --seconds N] [--streams N]`: `korv serve`
//! (release build) under a full-speed mix of valid and malformed frames.
//!
//! Each stream is OpenSSH's `ssh -W` into the server, so the frames travel
//! exactly as a foreign client's would. A writer thread pipelines frames; a
//! reader thread checks every answer against what its frame must get:
//! every request id answered exactly once with its code; and each frame whose
//! id cannot be read answered once, with its code, in the order sent (the
//! server answers such frames as it reads them, without a handler, so their
//! answers keep the order of their frames). Each `ssh` must exit 0. The
//! server's resident memory is sampled every second; after the warm-up it
//! must grow by less than 10%, and a run that ends before the warm-up fails.

use std::collections::{HashMap, VecDeque};
use std::io::{BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use korv_testkit::frame::frame_bytes;
use korv_testkit::keys::{KeyKind, known_hosts_line, public_key_path, try_keygen, try_public_key};
use korv_testkit::net::try_free_port;
use korv_testkit::process::wait_until_listening;

use crate::bench::processes::{rss_kib, spawn_quiet};
use crate::workspace::{cargo, step, target_dir};

/// Frames a stream may have unanswered before its writer waits.
const MAX_OUTSTANDING: u64 = 2048;
/// One frame in this many announces a length above the server's maximum.
const OVERSIZED_EVERY: u64 = 50_000;
/// The server's default maximum frame (`Limits::max_frame`).
const MAX_FRAME: usize = 8 << 20;

pub(crate) fn soak(args: &[String]) -> Result<(), String> {
    let mut seconds = 60.0;
    let mut streams = 2;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<f64, String> {
            args.next()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| *v > 0.0)
                .ok_or_else(|| format!("{name} takes a positive number"))
        };
        match arg.as_str() {
            "--minutes" => seconds = value("--minutes")? * 60.0,
            "--seconds" => seconds = value("--seconds")?,
            "--streams" => streams = value("--streams")? as usize,
            other => {
                return Err(format!(
                    "unknown soak option {other:?}; use --minutes N, --seconds N, --streams N"
                ));
            }
        }
    }
    let mut build = cargo();
    build.args(["build", "--release", "--package", "korv-cli"]);
    step("build (release)", build)?;
    let target = target_dir();
    let dir = std::env::temp_dir().join(format!("korv-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = run(
        &target.join("release").join("korv"),
        &dir,
        Duration::from_secs_f64(seconds),
        streams.max(1),
    );
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// What a frame must get back.
#[derive(Clone, Copy)]
struct Expect {
    code: u16,
}

/// One stream's bookkeeping, shared by its writer and reader.
#[derive(Default)]
struct Ledger {
    /// Ids sent and not yet answered, with their expected code.
    open: Mutex<HashMap<u64, Expect>>,
    /// Frames sent whose answer has a `null` id and is not yet read, in the
    /// order sent: each frame's number and expected code.
    null_open: Mutex<NullAnswers>,
    sent: AtomicU64,
    answered: AtomicU64,
    /// Problems found (wrong code, duplicate, unknown id), the first few.
    problems: Mutex<Vec<String>>,
    problem_count: AtomicU64,
}

/// The frames whose answers come with a `null` id, matched one by one with
/// their answers as they come. Answers of one code are matched in the order
/// their frames were sent; across codes the order is free: a `413` is written
/// when its length is read, and `korv serve` may write it after the `400` of a
/// malformed frame sent later (answers may come in any order). So a dropped
/// answer and a doubled one of another code never cancel out: one frame is
/// left waiting and one answer finds no frame.
#[derive(Default)]
struct NullAnswers {
    /// Frame number and expected code of each frame not yet answered.
    waiting: VecDeque<(u64, u16)>,
}

impl NullAnswers {
    fn sent(&mut self, frame: u64, code: u16) {
        self.waiting.push_back((frame, code));
    }

    /// Matches an answer with a `null` id and `code` to the oldest frame
    /// still waiting for an answer of that code.
    fn answered(&mut self, code: u16) -> Result<(), String> {
        match self
            .waiting
            .iter()
            .position(|(_, expected)| *expected == code)
        {
            Some(at) => {
                self.waiting.remove(at);
                Ok(())
            }
            None => Err(format!(
                "an answer with a null id ({code}) for no frame: a duplicate, \
                 or an answer of the wrong code"
            )),
        }
    }
}

impl Ledger {
    fn problem(&self, text: String) {
        self.problem_count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut problems) = self.problems.lock()
            && problems.len() < 10
        {
            problems.push(text);
        }
    }
}

fn run(korv: &Path, dir: &Path, duration: Duration, streams: usize) -> Result<(), String> {
    let id = try_keygen(dir, "id", KeyKind::Ed25519, "").map_err(|e| e.to_string())?;
    let host = try_keygen(dir, "host", KeyKind::Ed25519, "").map_err(|e| e.to_string())?;
    let authorized = dir.join("authorized_keys");
    std::fs::copy(public_key_path(&id), &authorized).map_err(|e| e.to_string())?;
    let port = try_free_port().map_err(|e| e.to_string())?;
    let host_pub = try_public_key(&host).map_err(|e| e.to_string())?;
    let known_hosts = dir.join("known_hosts");
    std::fs::write(&known_hosts, known_hosts_line(port, &host_pub)).map_err(|e| e.to_string())?;
    let mut server = spawn_quiet(
        Command::new(korv)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--host-key")
            .arg(&host)
            .arg("--authorized-keys")
            .arg(&authorized)
            .arg("--data")
            .arg(dir.join("store.redb"))
            .env("KORV_LOG", "error"),
    )?;
    wait_until_listening(&mut server.0, port, Duration::from_secs(10))
        .map_err(|e| format!("korv serve: {e}"))?;
    let pid = server.0.id();
    println!(
        "\n==> soak: {streams} streams through `ssh -W` into `korv serve` (pid {pid}) for {:.0} s",
        duration.as_secs_f64()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for stream in 0..streams {
        let mut child = Command::new("ssh")
            .args(["-p", &port.to_string(), "-i"])
            .arg(&id)
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR"])
            .args(["-W", "localhost:8022", "soak@127.0.0.1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run ssh (install openssh-client): {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let ledger = Arc::new(Ledger::default());
        let writer = {
            let ledger = Arc::clone(&ledger);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || write_frames(stream as u64, stdin, &ledger, &stop))
        };
        let reader = {
            let ledger = Arc::clone(&ledger);
            std::thread::spawn(move || read_answers(stdout, &ledger))
        };
        workers.push((child, writer, reader, ledger));
    }

    let started = Instant::now();
    let warmup = (duration / 5).max(Duration::from_secs(5)).min(duration / 2);
    let mut samples = Vec::new();
    while started.elapsed() < duration {
        std::thread::sleep(Duration::from_secs(1).min(duration.saturating_sub(started.elapsed())));
        let rss = rss_kib(pid)?;
        let sent: u64 = workers
            .iter()
            .map(|w| w.3.sent.load(Ordering::Relaxed))
            .sum();
        samples.push((started.elapsed().as_secs_f64(), rss, sent));
        if workers
            .iter()
            .any(|w| w.1.is_finished() || w.2.is_finished())
        {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    samples.push((started.elapsed().as_secs_f64(), rss_kib(pid)?, 0));
    let mut sent = 0;
    let mut answered = 0;
    let mut problems = Vec::new();
    for (stream, (mut child, writer, reader, ledger)) in workers.into_iter().enumerate() {
        let wrote = writer.join().map_err(|_| "a writer thread panicked")?;
        let read = reader.join().map_err(|_| "a reader thread panicked")?;
        match child.wait() {
            Ok(status) if status.success() => {}
            Ok(status) => problems.push(format!("stream {stream}: ssh exited {status}")),
            Err(err) => problems.push(format!("stream {stream}: ssh: {err}")),
        }
        if let Err(err) = wrote {
            problems.push(format!("stream {stream}: writing: {err}"));
        }
        if let Err(err) = read {
            problems.push(format!("stream {stream}: reading: {err}"));
        }
        let s = ledger.sent.load(Ordering::Relaxed);
        let a = ledger.answered.load(Ordering::Relaxed);
        sent += s;
        answered += a;
        if s != a {
            problems.push(format!("stream {stream}: {s} frames sent, {a} answered"));
        }
        let open = ledger.open.lock().map(|o| o.len()).unwrap_or(0);
        if open > 0 {
            problems.push(format!(
                "stream {stream}: {open} request ids never answered"
            ));
        }
        let unanswered = ledger
            .null_open
            .lock()
            .map(|n| n.waiting.len())
            .unwrap_or(0);
        if unanswered > 0 {
            problems.push(format!(
                "stream {stream}: {unanswered} frames without a readable id never answered"
            ));
        }
        let count = ledger.problem_count.load(Ordering::Relaxed);
        if count > 0 {
            let first = ledger
                .problems
                .lock()
                .map(|p| p.clone())
                .unwrap_or_default();
            problems.push(format!(
                "stream {stream}: {count} wrong answers, first: {first:?}"
            ));
        }
    }
    drop(server);
    let elapsed = started.elapsed().as_secs_f64();
    let after: Vec<u64> = samples
        .iter()
        .filter(|(t, _, _)| *t >= warmup.as_secs_f64())
        .map(|(_, rss, _)| *rss)
        .collect();
    let (warm, final_rss, growth) = match memory_growth(&after) {
        Ok(figures) => figures,
        Err(err) => {
            problems.push(format!(
                "the run ended {elapsed:.0} s in, warm-up {:.0} s: {err}",
                warmup.as_secs_f64()
            ));
            (0, 0, 0.0)
        }
    };
    let peak_after_warm = after.iter().copied().max().unwrap_or(final_rss);
    let report = json!({
        "seconds": elapsed,
        "streams": streams,
        "frames_sent": sent,
        "answers": answered,
        "frames_per_second": sent as f64 / elapsed,
        "rss_kib_after_warmup_median": warm,
        "rss_kib_final_median": final_rss,
        "rss_kib_peak_after_warmup": peak_after_warm,
        "rss_growth_percent": growth,
        "rss_kib_samples": samples.iter().map(|(_, rss, _)| *rss).collect::<Vec<_>>(),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    if growth >= 10.0 {
        problems.push(format!(
            "resident memory grew {growth:.1}% after the warm-up ({warm} KiB -> {final_rss} KiB)"
        ));
    }
    if sent == 0 {
        problems.push("no frames were sent".into());
    }
    if problems.is_empty() {
        println!(
            "==> soak: ok: {sent} frames, {answered} answers, none lost or doubled; RSS {warm} -> {final_rss} KiB ({growth:+.1}%)"
        );
        Ok(())
    } else {
        Err(format!("soak failed:\n  {}", problems.join("\n  ")))
    }
}

/// The frame mix, one kind per frame in turn: valid requests of every
/// outcome, and malformed frames with and without a readable id.
fn frame(n: u64, id: u64) -> (Vec<u8>, Option<u64>, u16) {
    let request = |value: Value| value.to_string().into_bytes();
    let (payload, readable_id, code): (Vec<u8>, bool, u16) = match n % 14 {
        0 => (
            request(json!({"id": id, "verb": "GET", "resource": "/hello"})),
            true,
            200,
        ),
        1 => (
            request(
                json!({"id": id, "verb": "STORE", "resource": "/echo", "body": {"n": n, "text": "soak"}}),
            ),
            true,
            200,
        ),
        2 => (
            request(json!({"id": id, "verb": "GET", "resource": "/boom"})),
            true,
            500,
        ),
        3 => (
            request(json!({"id": id, "verb": "GET", "resource": "/delay/1"})),
            true,
            200,
        ),
        4 => (
            request(json!({"id": id, "verb": "GET", "resource": "/soak/missing"})),
            true,
            404,
        ),
        5 => (
            request(json!({"id": id, "verb": "UPDATE", "resource": "/hello", "body": {}})),
            true,
            405,
        ),
        6 => (
            request(json!({"id": id, "verb": "FETCH", "resource": "/hello"})),
            true,
            400,
        ),
        7 => (
            request(json!({"id": id, "verb": "GET", "resource": 5})),
            true,
            400,
        ),
        8 => (request(json!({"id": id, "verb": "GET"})), true, 400),
        9 => (Vec::new(), false, 400),
        10 => (br#"{"id": "#.to_vec(), false, 400),
        11 => (
            b"{\"id\":1,\"verb\":\"GET\",\"resource\":\"/\xff\xfe\"}".to_vec(),
            false,
            400,
        ),
        12 => (request(json!([id, "GET", "/hello"])), false, 400),
        _ => (
            format!(r#"{{"id": {id}, "verb": "GET", "resource": "/hello"}} trailing"#).into_bytes(),
            false,
            400,
        ),
    };
    (frame_bytes(&payload), readable_id.then_some(id), code)
}

fn write_frames(
    stream: u64,
    mut stdin: std::process::ChildStdin,
    ledger: &Ledger,
    stop: &AtomicBool,
) -> Result<(), String> {
    let mut n = 0_u64;
    let mut batch = Vec::with_capacity(64 * 1024);
    let zeros = vec![0_u8; 1 << 20];
    while !stop.load(Ordering::Relaxed) {
        while ledger.sent.load(Ordering::Relaxed) - ledger.answered.load(Ordering::Relaxed)
            > MAX_OUTSTANDING
        {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        batch.clear();
        let mut count = 0;
        for _ in 0..64 {
            n += 1;
            if n.is_multiple_of(OVERSIZED_EVERY) {
                // Announce one byte over the maximum and send it all: the
                // server skips it without buffering and answers 413 as soon
                // as it has read the length, so the frame is counted as sent
                // before its first byte is.
                ledger
                    .null_open
                    .lock()
                    .map_err(|_| "poisoned")?
                    .sent(n, 413);
                stdin
                    .write_all(&batch)
                    .and_then(|()| stdin.write_all(&((MAX_FRAME + 1) as u32).to_be_bytes()))
                    .map_err(|e| e.to_string())?;
                batch.clear();
                let mut left = MAX_FRAME + 1;
                while left > 0 {
                    let chunk = left.min(zeros.len());
                    stdin
                        .write_all(&zeros[..chunk])
                        .map_err(|e| e.to_string())?;
                    left -= chunk;
                }
                count += 1;
                continue;
            }
            let id = (stream << 48) | n;
            let (bytes, readable, code) = frame(n, id);
            match readable {
                Some(id) => {
                    ledger
                        .open
                        .lock()
                        .map_err(|_| "poisoned")?
                        .insert(id, Expect { code });
                }
                None => {
                    ledger
                        .null_open
                        .lock()
                        .map_err(|_| "poisoned")?
                        .sent(n, code);
                }
            }
            batch.extend_from_slice(&bytes);
            count += 1;
        }
        ledger.sent.fetch_add(count, Ordering::Relaxed);
        stdin.write_all(&batch).map_err(|e| e.to_string())?;
    }
    // EOF: the server answers what is in flight, then closes the stream.
    drop(stdin);
    Ok(())
}

fn read_answers(stdout: std::process::ChildStdout, ledger: &Ledger) -> Result<(), String> {
    let mut reader = BufReader::with_capacity(256 * 1024, stdout);
    let mut payload = Vec::new();
    loop {
        let mut len = [0_u8; 4];
        match reader.read_exact(&mut len) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(err) => return Err(err.to_string()),
        }
        payload.resize(u32::from_be_bytes(len) as usize, 0);
        reader
            .read_exact(&mut payload)
            .map_err(|e| format!("a truncated answer: {e}"))?;
        ledger.answered.fetch_add(1, Ordering::Relaxed);
        let answer: Value = match serde_json::from_slice(&payload) {
            Ok(answer) => answer,
            Err(err) => {
                ledger.problem(format!("an answer that is not JSON: {err}"));
                continue;
            }
        };
        let code = answer["code"].as_u64().unwrap_or(0) as u16;
        match &answer["request_id"] {
            Value::Null => {
                let matched = ledger
                    .null_open
                    .lock()
                    .map_err(|_| "poisoned")?
                    .answered(code);
                if let Err(problem) = matched {
                    ledger.problem(problem);
                }
            }
            id => {
                let Some(id) = id.as_u64() else {
                    ledger.problem(format!("an id that is not ours: {id}"));
                    continue;
                };
                let expected = ledger.open.lock().map_err(|_| "poisoned")?.remove(&id);
                match expected {
                    None => ledger.problem(format!("id {id} answered twice or never sent")),
                    Some(expect) if expect.code != code => ledger.problem(format!(
                        "id {id}: expected {}, got {code}: {answer}",
                        expect.code
                    )),
                    Some(_) => {}
                }
            }
        }
    }
}

/// The resident memory after the warm-up (the median of its first few
/// samples), at the end (the median of the last few) and the growth between
/// them in percent, from the samples taken after the warm-up; an error when
/// there are too few of them to say (the run ended during the warm-up). A
/// leak moves both ends apart, a passing burst moves neither.
fn memory_growth(after_warmup: &[u64]) -> Result<(u64, u64, f64), String> {
    const AT_LEAST: usize = 6;
    if after_warmup.len() < AT_LEAST {
        return Err(format!(
            "{} memory samples after the warm-up, at least {AT_LEAST} needed: no growth figure",
            after_warmup.len()
        ));
    }
    let window = (after_warmup.len() / 5).max(3);
    let warm = median(&after_warmup[..window]);
    let last = median(&after_warmup[after_warmup.len() - window..]);
    let growth = (last as f64 - warm as f64) / warm.max(1) as f64 * 100.0;
    Ok((warm, last, growth))
}

fn median(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_id_answers_are_matched_to_their_frames_by_code() {
        let mut open = NullAnswers::default();
        open.sent(9, 400);
        open.sent(50_000, 413);
        open.sent(10, 400);
        // The 413 may come after the 400 of a frame sent later.
        assert_eq!(open.answered(400), Ok(()));
        assert_eq!(open.answered(400), Ok(()));
        assert_eq!(open.answered(413), Ok(()));
        assert!(open.waiting.is_empty());
    }

    #[test]
    fn a_dropped_and_a_doubled_answer_do_not_cancel_out() {
        // Frame 50000's 413 is dropped and frame 10's 400 doubled: the
        // answers add up to the frames, but one finds no frame and one frame
        // stays waiting.
        let mut open = NullAnswers::default();
        open.sent(9, 400);
        open.sent(50_000, 413);
        open.sent(10, 400);
        assert_eq!(open.answered(400), Ok(()));
        assert_eq!(open.answered(400), Ok(()));
        let err = open.answered(400).unwrap_err();
        assert!(err.contains("for no frame"), "{err}");
        assert_eq!(open.waiting, VecDeque::from([(50_000, 413)]));
    }

    #[test]
    fn a_run_that_ends_during_the_warm_up_has_no_growth_figure() {
        assert!(memory_growth(&[]).is_err());
        assert!(memory_growth(&[100, 100, 100]).is_err());
        let (warm, last, growth) = memory_growth(&[100, 100, 100, 110, 110, 110]).unwrap();
        assert_eq!((warm, last), (100, 110));
        assert!((growth - 10.0).abs() < 1e-9, "{growth}");
    }
}
