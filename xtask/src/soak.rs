//! `cargo xtask soak [--minutes N | --seconds N] [--streams N]`: `korv serve`
//! (release build) under a full-speed mix of valid and malformed frames.
//!
//! Each stream is OpenSSH's `ssh -W` into the server, so the frames travel
//! exactly as a foreign client's would. A writer thread pipelines frames; a
//! reader thread checks every answer against what its frame must get:
//! every request id answered exactly once with its code, and the answers
//! with a `null` id (frames whose id cannot be read) counted by code. The
//! server's resident memory is sampled every second; after the warm-up it
//! must grow by less than 10%.

use std::collections::HashMap;
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
    /// Frames sent whose answer has a `null` id, by expected code.
    null_sent: Mutex<HashMap<u16, u64>>,
    null_seen: Mutex<HashMap<u16, u64>>,
    sent: AtomicU64,
    answered: AtomicU64,
    /// Problems found (wrong code, duplicate, unknown id), the first few.
    problems: Mutex<Vec<String>>,
    problem_count: AtomicU64,
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
        let _ = child.wait();
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
        let null_sent = ledger
            .null_sent
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        let null_seen = ledger
            .null_seen
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        if null_sent != null_seen {
            problems.push(format!(
                "stream {stream}: answers with a null id by code: expected {null_sent:?}, got {null_seen:?}"
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
    // Medians of the first and the last few samples after the warm-up: a
    // leak moves both ends apart, a passing burst moves neither.
    let after: Vec<u64> = samples
        .iter()
        .filter(|(t, _, _)| *t >= warmup.as_secs_f64())
        .map(|(_, rss, _)| *rss)
        .collect();
    let window = (after.len() / 5).max(3).min(after.len());
    let warm = median(after.get(..window).unwrap_or_default());
    let final_rss = median(after.get(after.len() - window..).unwrap_or_default());
    let peak_after_warm = samples
        .iter()
        .filter(|(t, _, _)| *t >= warmup.as_secs_f64())
        .map(|(_, rss, _)| *rss)
        .max()
        .unwrap_or(final_rss);
    let growth = (final_rss as f64 - warm as f64) / warm.max(1) as f64 * 100.0;
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
                // server skips it without buffering and answers 413.
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
                *ledger
                    .null_sent
                    .lock()
                    .map_err(|_| "poisoned")?
                    .entry(413)
                    .or_default() += 1;
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
                    *ledger
                        .null_sent
                        .lock()
                        .map_err(|_| "poisoned")?
                        .entry(code)
                        .or_default() += 1;
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
                *ledger
                    .null_seen
                    .lock()
                    .map_err(|_| "poisoned")?
                    .entry(code)
                    .or_default() += 1;
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

fn median(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or(0)
}
