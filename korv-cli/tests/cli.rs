//! The `korv` binary against `korv serve` on a free port, with keys made by
//! `ssh-keygen` in each test; and `korv serve --stdio` hosted by OpenSSH's sshd.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use korv_testkit::keys::{KeyKind, keygen, known_hosts_line, public_key, public_key_path};
use korv_testkit::net::free_port;
use korv_testkit::process::wait_until_listening;
use korv_testkit::sshd::{Sshd, current_user};
use serde_json::{Value, json};
use tempfile::TempDir;

/// How long `korv serve` may take to listen.
const LISTEN_WITHIN: Duration = Duration::from_secs(20);

struct Server {
    dir: TempDir,
    port: u16,
    /// `korv serve` arguments beyond the listen address, keys and store.
    args: Vec<String>,
    child: Option<Child>,
}

impl Server {
    fn start() -> Server {
        Server::start_with(&[])
    }

    fn start_with(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let host = keygen(dir.path(), "host", KeyKind::Ed25519);
        let id = keygen(dir.path(), "id", KeyKind::Ed25519);
        std::fs::copy(id.with_extension("pub"), dir.path().join("authorized_keys")).unwrap();
        let _ = host;
        let mut server = Server {
            dir,
            port: free_port(),
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::cargo_bin("korv")
            .unwrap()
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--host-key")
            .arg(self.dir.path().join("host"))
            .arg("--authorized-keys")
            .arg(self.dir.path().join("authorized_keys"))
            .arg("--data")
            .arg(self.dir.path().join("store.redb"))
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let child = self.child.insert(child);
        wait_until_listening(child, self.port, LISTEN_WITHIN).unwrap();
    }

    /// Sends SIGTERM and waits for `korv serve` to exit 0; fails the test if
    /// it is still running after 15 s (it is then killed) or exits otherwise.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status()
                .unwrap();
            assert!(status.success(), "kill -TERM failed");
            let started = Instant::now();
            let exited = loop {
                if let Some(exited) = child.try_wait().unwrap() {
                    break exited;
                }
                if started.elapsed() > Duration::from_secs(15) {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("korv serve was still running 15 s after SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            assert!(exited.success(), "korv serve exited {exited} on SIGTERM");
        }
    }

    fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    fn trust(&self) {
        let host_pub = public_key(&self.dir.path().join("host"));
        std::fs::write(self.known_hosts(), known_hosts_line(self.port, &host_pub)).unwrap();
    }

    /// `korv VERB ...` with the connection options, returning (exit code, stdout, stderr).
    fn korv(&self, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        let mut command = Command::cargo_bin("korv").unwrap();
        command
            .args(args)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "-i",
            ])
            .arg(self.dir.path().join("id"))
            .arg("--known-hosts")
            .arg(self.known_hosts())
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            std::io::Write::write_all(&mut input, text.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    fn json(&self, args: &[&str]) -> (i32, Value) {
        let (code, out, err) = self.korv(args, None);
        let value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("{e}: stdout {out:?} stderr {err:?}"));
        (code, value)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn each_verb_with_bodies_from_argument_file_and_stdin() {
    let server = Server::start();
    server.trust();
    assert_eq!(
        server.json(&["get", "/hello"]),
        (0, json!({"msg": "Hello World!"}))
    );
    assert_eq!(
        server.json(&["store", "/notes/1", r#"{"text":"arg"}"#]),
        (0, json!({"resource": "/notes/1"}))
    );
    let file = server.dir.path().join("body.json");
    std::fs::write(&file, r#"{"text":"file"}"#).unwrap();
    let at = format!("@{}", file.display());
    assert_eq!(
        server.json(&["update", "/notes/1", &at]),
        (0, json!({"text": "file"}))
    );
    let (code, out, _) = server.korv(&["store", "/notes/2", "-"], Some(r#"{"text":"stdin"}"#));
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(out.trim()).unwrap(),
        json!({"resource": "/notes/2"})
    );
    assert_eq!(
        server.json(&["get", "/notes/"]),
        (0, json!({"items": ["/notes/1", "/notes/2"]}))
    );
    assert_eq!(
        server.json(&["delete", "/notes/1"]),
        (0, json!({"text": "file"}))
    );
    let (code, body) = server.json(&["get", "/notes/1"]);
    assert_eq!(code, 4);
    assert!(body["message"].as_str().unwrap().contains("/notes/1"));
    let (code, echo) = server.json(&["store", "/echo", "[1]", "-H", "x:y"]);
    assert_eq!(
        (code, echo["verb"].clone(), echo["body"].clone()),
        (0, json!("STORE"), json!([1]))
    );
}

#[test]
fn exit_codes_follow_the_status_class_and_the_failure_kind() {
    let server = Server::start();
    server.trust();
    assert_eq!(server.json(&["store", "/dup", "1"]).0, 0);
    assert_eq!(server.json(&["store", "/dup", "1"]).0, 4, "409 is a 4xx");
    assert_eq!(server.json(&["update", "/hello", "1"]).0, 4, "405 is a 4xx");
    let (code, body) = server.json(&["get", "/boom"]);
    assert_eq!(code, 5);
    assert_eq!(body["traceback"].as_array().unwrap().len(), 2);
    let (code, _, err) = server.korv(&["store", "/x", "{not json"], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not valid JSON"), "{err}");
    let (code, _, err) = server.korv(&["store", "/x"], None);
    assert_eq!(code, 2, "{err}");
    let closed = format!("korv://127.0.0.1:{}/hello", free_port());
    let (code, _, err) = server.korv(&["get", &closed], None);
    assert_eq!(code, 1, "connection refused: {err}");
    assert!(err.contains("cannot connect"), "{err}");
    let (code, _, err) = server.korv(&["frobnicate"], None);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn an_unknown_host_is_refused_with_its_fingerprint_then_accept_new_trusts_it() {
    let server = Server::start();
    let (code, out, err) = server.korv(&["get", "/hello"], None);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(
        err.contains("SHA256:") && err.contains("--accept-new"),
        "{err}"
    );
    let (code, _, err) = server.korv(&["get", "/hello", "--accept-new"], None);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = server.korv(&["get", "/hello"], None);
    assert_eq!(code, 0, "now known: {err}");
}

#[test]
fn the_store_survives_a_server_restart() {
    let mut server = Server::start();
    server.trust();
    assert_eq!(server.json(&["store", "/keep/me", r#"{"v":1}"#]).0, 0);
    server.stop();
    server.spawn();
    assert_eq!(server.json(&["get", "/keep/me"]), (0, json!({"v": 1})));
}

#[tokio::test]
async fn serve_on_sigterm_answers_the_requests_in_flight_and_exits_0() {
    let mut server = Server::start();
    server.trust();
    let config = korv_client::ClientConfig::new("127.0.0.1")
        .port(server.port)
        .identity_file(server.dir.path().join("id"))
        .use_agent(false)
        .known_hosts(server.known_hosts());
    let client = korv_client::KorvClient::connect(config).await.unwrap();
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { client.get("/delay/1500").await })
    };
    // The stream reads its requests in order: once /hello, sent after
    // /delay, is answered, /delay is running.
    let hello = client.get("/hello").await.unwrap();
    assert_eq!(hello.code, 200);
    let stopping = tokio::task::spawn_blocking(move || {
        server.stop();
        server
    });
    let answer = slow.await.unwrap().unwrap();
    assert_eq!(answer.code, 200, "{}", answer.body);
    stopping.await.unwrap();
}

#[test]
fn serve_creates_its_default_host_key_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let id = keygen(dir.path(), "id", KeyKind::Ed25519);
    std::fs::copy(public_key_path(&id), dir.path().join("authorized_keys")).unwrap();
    let port = free_port();
    let data_home = dir.path().join("data");
    let mut child = Command::cargo_bin("korv")
        .unwrap()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--authorized-keys")
        .arg(dir.path().join("authorized_keys"))
        .env("XDG_DATA_HOME", &data_home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let listening = wait_until_listening(&mut child, port, LISTEN_WITHIN);
    let _ = child.kill();
    let _ = child.wait();
    listening.unwrap();
    let key = data_home.join("korv").join("host_ed25519");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} has mode {mode:o}", key.display());
}

#[test]
fn whoami_and_the_subsystem_flag() {
    let server = Server::start();
    server.trust();
    let (code, me) = server.json(&["get", "/whoami", "--subsystem"]);
    assert_eq!(code, 0);
    assert_eq!(me["comment"], json!("id"));
    assert!(me["fingerprint"].as_str().unwrap().starts_with("SHA256:"));
}

#[test]
fn whoami_and_metrics_tell_the_instance_name() {
    use std::io::{Read, Write};
    let metrics = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics}");
    let server = Server::start_with(&["--name", "web-3", "--metrics", &metrics_addr]);
    server.trust();
    let (code, me) = server.json(&["get", "/whoami"]);
    assert_eq!(code, 0);
    assert_eq!(me["instance"], json!("web-3"));
    let address = me["address"].as_str().unwrap();
    assert!(address.starts_with("127.0.0.1:"), "{address}");
    let mut socket = std::net::TcpStream::connect(&metrics_addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    socket.read_to_string(&mut text).unwrap();
    // `/whoami`: one GET answered 200.
    assert!(
        text.contains(r#"korv_requests_total{instance_name="web-3",verb="GET",code="200"} 1"#),
        "{text}"
    );
}

#[test]
fn serve_takes_the_limits_before_authentication_from_its_flags() {
    use std::io::Read;
    // One unauthenticated connection per source, loopback not exempt.
    let server = Server::start_with(&[
        "--max-unauthenticated-per-source",
        "1",
        "--exempt",
        "none",
        "--penalty-base",
        "0",
    ]);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], server.port));
    let connect = || {
        let socket = std::net::TcpStream::connect(addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket
    };
    // A silent connection holds 127.0.0.1's one place, once the server has
    // freed the place of the probe that saw it listening.
    let started = Instant::now();
    let _first = loop {
        let mut socket = connect();
        let mut banner = [0u8; 8];
        if socket.read_exact(&mut banner).is_ok() && &banner == b"SSH-2.0-" {
            break socket;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "never admitted");
    };
    // A second one is closed at once, before the server's SSH version.
    let mut second = connect();
    let mut got = Vec::new();
    second.read_to_end(&mut got).unwrap();
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
}

#[test]
fn korv_demo_exits_0() {
    let out = Command::cargo_bin("korv")
        .unwrap()
        .arg("demo")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("every answer was as expected"));
}

#[test]
fn bench_with_1000_requests_reports_1000_answers() {
    let server = Server::start();
    server.trust();
    let (code, report) = server.json(&[
        "bench",
        "/hello",
        "--requests",
        "1000",
        "--concurrency",
        "16",
        "--json",
    ]);
    assert_eq!(code, 0);
    assert_eq!(report["answered"], json!(1000));
    assert_eq!(report["codes"]["200"], json!(1000));
    assert!(report["latency_us"]["p50"].as_u64().unwrap() > 0);
}

#[test]
fn bench_paced_by_a_rate_answers_every_request_and_refuses_a_zero_rate() {
    let server = Server::start();
    server.trust();
    let bench = |options: &[&str]| server.json(&[&["bench", "/hello", "--json"], options].concat());
    let (code, report) = bench(&["--requests", "300", "--concurrency", "8", "--rate", "20000"]);
    assert_eq!(code, 0);
    assert_eq!(report["codes"]["200"], json!(300));
    let (code, _, stderr) = server.korv(&["bench", "/hello", "--rate", "0"], None);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("must be above 0"), "{stderr}");
    // Eight loops at 4 requests/s for 1 s: the loops still waiting for a
    // slot at the deadline stop there instead of each sending one more.
    let (code, report) = bench(&["--duration", "1s", "--concurrency", "8", "--rate", "4"]);
    assert_eq!(code, 0);
    let answered = report["answered"].as_u64().unwrap();
    assert!((1..=5).contains(&answered), "{answered} answered: {report}");
}

#[test]
fn serve_stdio_hosted_by_openssh_sshd_answers_the_subsystem() {
    assert!(
        Sshd::installed(),
        "openssh-server is needed (.ci/run installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let host = keygen(dir.path(), "sshd_host", KeyKind::Ed25519);
    let id = keygen(dir.path(), "id", KeyKind::Ed25519);
    let authorized = dir.path().join("authorized_keys");
    std::fs::copy(public_key_path(&id), &authorized).unwrap();
    let korv = assert_cmd::cargo::cargo_bin("korv");
    let subsystem = format!(
        "Subsystem korv {} serve --stdio --data {}",
        korv.display(),
        dir.path().join("store.redb").display(),
    );
    let sshd = Sshd::start(dir.path(), &host, &authorized, &[&subsystem]).unwrap();
    let port = sshd.port();
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(&known_hosts, known_hosts_line(port, &public_key(&host))).unwrap();
    let user = current_user();
    let out = Command::cargo_bin("korv")
        .unwrap()
        .args([
            "get",
            "--subsystem",
            &format!("korv://{user}@127.0.0.1:{port}/hello"),
            "-i",
        ])
        .arg(&id)
        .arg("--known-hosts")
        .arg(&known_hosts)
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .unwrap();
    drop(sshd);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        json!({"msg": "Hello World!"})
    );
}
