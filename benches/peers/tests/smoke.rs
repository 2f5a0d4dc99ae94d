//! Smoke test of the built binary: each server kind, started on a free port,
//! answers `GET /hello` and a small `/echo` from the load generator of the
//! same kind, with no errors and the echoed bytes counted.

use std::io::Write;
use std::process::Command;

use korv_testkit::process::{KillOnDrop, spawn_announcing};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_korv-peers");

/// A running `korv-peers server`, killed when dropped.
struct Server {
    _child: KillOnDrop,
    addr: String,
}

impl Server {
    fn start(kind: &str) -> Server {
        let (child, addr) = spawn_announcing(
            Command::new(BIN).args(["server", kind, "--listen", "127.0.0.1:0"]),
            "listening ",
        )
        .unwrap_or_else(|err| panic!("{kind}: {err}"));
        Server {
            _child: child,
            addr,
        }
    }
}

/// Runs `korv-peers load KIND ARGS... --duration 300ms --warmup 0s --json`
/// and returns its report.
fn load(kind: &str, args: &[&str]) -> Value {
    let output = Command::new(BIN)
        .args([
            "load",
            kind,
            "--duration",
            "300ms",
            "--warmup",
            "0s",
            "--json",
        ])
        .args(args)
        .output()
        .expect("the load generator runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{kind} {args:?}: exit {:?}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "one line of JSON: {stdout}");
    serde_json::from_str(&stdout).expect("the report is JSON")
}

/// Checks a clean run and returns the bytes counted per answered request.
fn check(report: &Value) -> f64 {
    let answered = report["answered"].as_u64().expect("answered");
    assert!(answered > 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["requests"].as_u64(), Some(answered), "{report}");
    let codes = report["codes"].as_object().expect("codes");
    assert_eq!(codes.len(), 1, "only 200s: {report}");
    assert_eq!(codes["200"].as_u64(), Some(answered), "{report}");
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(report["latency_us"][key].as_u64().is_some(), "{report}");
    }
    let mb = report["mb_per_second"].as_f64().expect("mb_per_second");
    assert!(mb > 0.0, "{report}");
    let seconds = report["seconds"].as_f64().expect("seconds");
    mb * 1e6 * seconds / answered as f64
}

/// `GET /hello` then `/echo` of a small body against `kind`'s server, with
/// the client of `client_kind` and its extra `args` (an address or a command).
fn exercise(client_kind: &str, args: &[&str]) {
    let hello = load(client_kind, args);
    let per_request = check(&hello);
    assert_eq!(hello["resource"], "/hello");
    assert_eq!(hello["verb"], "GET");
    let expected = json!({"msg": "Hello World!"}).to_string().len() as f64;
    assert!(
        (per_request - expected).abs() < 0.01,
        "{per_request} {hello}"
    );

    let body = json!({"text": "hello", "n": [1, 2, 3]});
    let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
    write!(file, "{body:#}").expect("write the body");
    let path = file.path().to_str().expect("a UTF-8 path");
    let mut echo_args = vec!["--path", "/echo", "--body", path, "--concurrency", "2"];
    echo_args.extend_from_slice(args);
    let echo = load(client_kind, &echo_args);
    let per_request = check(&echo);
    assert_eq!(echo["resource"], "/echo");
    let verb = if client_kind.starts_with("http") {
        "POST"
    } else {
        "STORE"
    };
    assert_eq!(echo["verb"], verb);
    // The compact request body, plus the answer's body with the echo in it.
    let answer = json!({"verb": "STORE", "resource": "/echo", "body": body});
    let expected = (body.to_string().len() + answer.to_string().len()) as f64;
    assert!(
        (per_request - expected).abs() < 0.01,
        "{per_request} {echo}"
    );
}

fn peer(kind: &str) {
    let server = Server::start(kind);
    exercise(kind, &["--addr", &server.addr]);
}

#[test]
fn https1_answers() {
    peer("https1");
}

#[test]
fn https2_answers() {
    peer("https2");
}

#[test]
fn http1_answers() {
    peer("http1");
}

#[test]
fn tcp_answers() {
    peer("tcp");
}

/// The stdio client over a child that bridges its stdin and stdout to the
/// `tcp` peer (bash's /dev/tcp standing in for `ssh -W`).
#[test]
fn stdio_answers_through_a_bridge() {
    let server = Server::start("tcp");
    let (host, port) = server.addr.rsplit_once(':').expect("host:port");
    // The reading `cat` outlives the killed bash until the server goes; its
    // stderr must not hold the load generator's stderr pipe open meanwhile.
    let bridge = format!("exec 3<>/dev/tcp/{host}/{port}; cat <&3 2>/dev/null & exec cat >&3");
    exercise("stdio", &["--", "bash", "-c", &bridge]);
}
