//! `korv watch` against `korv serve` on a free port: one compact JSON line
//! per change, in commit order, prefix and exact paths, `--count`, Ctrl-C;
//! and the refusal of a server without watches.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use assert_cmd::cargo::CommandCargoExt;
use korv_testkit::keys::{KeyKind, keygen, known_hosts_line, public_key};
use korv_testkit::net::free_port;
use korv_testkit::process::wait_until_listening;
use serde_json::{Value, json};
use tempfile::TempDir;

struct Server {
    dir: TempDir,
    port: u16,
    child: Child,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let host = keygen(dir.path(), "host", KeyKind::Ed25519);
        let id = keygen(dir.path(), "id", KeyKind::Ed25519);
        std::fs::copy(id.with_extension("pub"), dir.path().join("authorized_keys")).unwrap();
        let port = free_port();
        let mut child = Command::cargo_bin("korv")
            .unwrap()
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--host-key")
            .arg(&host)
            .arg("--authorized-keys")
            .arg(dir.path().join("authorized_keys"))
            .arg("--data")
            .arg(dir.path().join("store.redb"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until_listening(&mut child, port, Duration::from_secs(20)).unwrap();
        std::fs::write(
            dir.path().join("known_hosts"),
            known_hosts_line(port, &public_key(&host)),
        )
        .unwrap();
        Server { dir, port, child }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `korv ARGS` with the connection options for `port` and the keys in `dir`.
fn korv(dir: &Path, port: u16, args: &[&str]) -> Command {
    let mut command = Command::cargo_bin("korv").unwrap();
    command
        .args(args)
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "-i"])
        .arg(dir.join("id"))
        .arg("--known-hosts")
        .arg(dir.join("known_hosts"))
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null());
    command
}

/// Runs `korv ARGS` to its end: its exit code and stdout.
fn run(dir: &Path, port: u16, args: &[&str]) -> (i32, String, String) {
    let out = korv(dir, port, args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A running `korv -v watch ...`, once the server has confirmed the watch
/// (it says so on stderr).
struct Watcher {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Watcher {
    fn start(dir: &Path, port: u16, args: &[&str]) -> Watcher {
        let mut child = korv(dir, port, &[&["-v", "watch"], args].concat())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            let n = stderr.read_line(&mut line).unwrap();
            assert!(n > 0, "korv watch ended before the watch was confirmed");
            if line.starts_with("watching ") {
                break;
            }
        }
        // Keep draining stderr so that the child never blocks on it.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Watcher { child, stdout }
    }

    fn line(&mut self) -> Value {
        let mut line = String::new();
        assert!(
            self.stdout.read_line(&mut line).unwrap() > 0,
            "an event line"
        );
        assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
        assert_eq!(
            line.trim_end(),
            serde_json::to_string(&serde_json::from_str::<Value>(&line).unwrap()).unwrap(),
            "compact JSON"
        );
        serde_json::from_str(&line).unwrap()
    }

    fn wait(mut self) -> (i32, String) {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.stdout, &mut rest).unwrap();
        (self.child.wait().unwrap().code().unwrap_or(-1), rest)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_prefix_watch_prints_each_change_under_it_in_commit_order_then_stops_at_count() {
    let server = Server::start();
    let (dir, port) = (server.dir.path(), server.port);
    let mut watcher = Watcher::start(dir, port, &["/notes/", "--count", "4"]);
    assert_eq!(
        run(dir, port, &["store", "/notes/1", r#"{"text":"a"}"#]).0,
        0
    );
    assert_eq!(
        run(dir, port, &["store", "/other/1", r#"{"text":"x"}"#]).0,
        0
    );
    assert_eq!(
        run(dir, port, &["update", "/notes/1", r#"{"text":"b"}"#]).0,
        0
    );
    assert_eq!(
        run(dir, port, &["store", "/notes/2", r#"{"text":"c"}"#]).0,
        0
    );
    assert_eq!(run(dir, port, &["delete", "/notes/1"]).0, 0);
    assert_eq!(
        watcher.line(),
        json!({"event": "stored", "resource": "/notes/1", "document": {"text": "a"}})
    );
    assert_eq!(
        watcher.line(),
        json!({"event": "updated", "resource": "/notes/1", "document": {"text": "b"}})
    );
    assert_eq!(
        watcher.line(),
        json!({"event": "stored", "resource": "/notes/2", "document": {"text": "c"}})
    );
    assert_eq!(
        watcher.line(),
        json!({"event": "deleted", "resource": "/notes/1", "document": {"text": "b"}})
    );
    let (code, rest) = watcher.wait();
    assert_eq!(
        (code, rest.as_str()),
        (0, ""),
        "exits 0 after --count events"
    );
}

#[test]
fn an_exact_watch_sees_only_its_document() {
    let server = Server::start();
    let (dir, port) = (server.dir.path(), server.port);
    let mut watcher = Watcher::start(dir, port, &["/notes/1", "-n", "1"]);
    assert_eq!(run(dir, port, &["store", "/notes/10", "1"]).0, 0);
    assert_eq!(
        run(dir, port, &["store", "/notes/", "2"]).0,
        4,
        "a listing is no document"
    );
    assert_eq!(run(dir, port, &["store", "/notes/1", "3"]).0, 0);
    assert_eq!(
        watcher.line(),
        json!({"event": "stored", "resource": "/notes/1", "document": 3})
    );
    assert_eq!(watcher.wait().0, 0);
}

#[test]
fn ctrl_c_cancels_the_watch_and_exits_0() {
    let server = Server::start();
    let (dir, port) = (server.dir.path(), server.port);
    let watcher = Watcher::start(dir, port, &["/notes/"]);
    let status = Command::new("kill")
        .arg("-INT")
        .arg(watcher.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let (code, rest) = watcher.wait();
    assert_eq!((code, rest.as_str()), (0, ""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_watches_is_a_clear_error_with_exit_code_4() {
    // A server before protocol 1.1 answers WATCH as an unknown verb: 400.
    let dir = tempfile::tempdir().unwrap();
    let host = keygen(dir.path(), "host", KeyKind::Ed25519);
    let id = keygen(dir.path(), "id", KeyKind::Ed25519);
    std::fs::copy(id.with_extension("pub"), dir.path().join("authorized_keys")).unwrap();
    let bound = korv_server::KorvServer::new()
        .watch_fallback(|_req: korv_server::Request| async {
            Err::<futures_util::stream::Empty<Value>, _>(korv_server::Error::new(
                400,
                "`verb`: unknown verb \"WATCH\": expected GET, STORE, UPDATE or DELETE",
            ))
        })
        .host_key_file(&host)
        .authorized_keys_file(dir.path().join("authorized_keys"))
        .listen("127.0.0.1:0".parse().unwrap())
        .bind()
        .await
        .unwrap();
    let port = bound.local_addr().port();
    let shutdown = bound.shutdown_handle();
    tokio::spawn(bound.run());
    std::fs::write(
        dir.path().join("known_hosts"),
        known_hosts_line(port, &public_key(&host)),
    )
    .unwrap();
    let path: PathBuf = dir.path().to_owned();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || run(&path, port, &["watch", "/notes/"]))
            .await
            .unwrap();
    shutdown.shutdown();
    assert_eq!(code, 4, "stderr: {err}");
    assert_eq!(out, "");
    assert!(err.contains("refused the watch: 400"), "{err}");
    assert!(err.contains("without watches"), "{err}");
}
