//! Real SSH on 127.0.0.1 with keys made by `ssh-keygen` and OpenSSH's `ssh`
//! client: both channel kinds, every key type, and every refusal.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use korv_server::routing::get;
use korv_server::{KorvServer, Request, Response, ShutdownHandle, StatusCode};
use korv_testkit::frame::frame;
use korv_testkit::keys::{KeyKind, keygen, public_key};
use serde_json::json;
use tempfile::TempDir;

struct Fixture {
    dir: TempDir,
    addr: SocketAddr,
    shutdown: ShutdownHandle,
}

impl Fixture {
    /// A server with a fresh host key; `authorized` writes the authorized_keys text.
    async fn start(authorized: impl FnOnce(&Path) -> String) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let host = keygen(dir.path(), "host", KeyKind::Ed25519);
        let text = authorized(dir.path());
        let authorized_keys = dir.path().join("authorized_keys");
        std::fs::write(&authorized_keys, text).unwrap();
        let bound = KorvServer::new()
            .host_key_file(host)
            .authorized_keys_file(&authorized_keys)
            .listen("127.0.0.1:0".parse().unwrap())
            .route("/hello", get(|_r: Request| async { (200, json!({"msg": "Hello World!"})) }))
            .route("/whoami", get(|r: Request| async move {
                let c = r.client();
                json!({"user": c.user, "fp": c.fingerprint, "alg": c.algorithm, "comment": c.comment})
            }))
            .bind()
            .await
            .unwrap();
        let addr = bound.local_addr();
        let shutdown = bound.shutdown_handle();
        tokio::spawn(bound.run());
        Fixture {
            dir,
            addr,
            shutdown,
        }
    }

    fn key(&self, name: &str, kind: KeyKind) -> PathBuf {
        keygen(self.dir.path(), name, kind)
    }

    /// Runs `ssh` with `args` before the destination, feeding `input`.
    async fn ssh(&self, identity: &Path, extra: &[&str], input: Vec<u8>) -> Output {
        let mut command = Command::new("ssh");
        command
            .args([
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
            ])
            .args([
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "LogLevel=ERROR",
            ])
            .args([
                "-o",
                "ConnectTimeout=10",
                "-p",
                &self.addr.port().to_string(),
                "-i",
            ])
            .arg(identity)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        tokio::task::spawn_blocking(move || {
            let mut child = command.spawn().expect("ssh runs");
            child.stdin.take().unwrap().write_all(&input).unwrap();
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap()
    }

    /// Sends one GET /hello with `identity` and expects its 200: the server
    /// still serves.
    async fn assert_serves(&self, identity: &Path) {
        let output = self
            .request_via_w(
                identity,
                frame(&json!({"id": "next", "verb": "GET", "resource": "/hello"})),
            )
            .await;
        assert!(
            output.status.success(),
            "the next client was not served: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let answers = responses(&output.stdout);
        assert_eq!(answers.len(), 1, "the next client's answer");
        assert_eq!(answers[0].code, StatusCode::OK);
    }

    /// Expects `output` to be ssh's refusal of authentication, as OpenSSH
    /// words it when the server takes public keys only, and the server to
    /// serve the next client, with `next` (an authorized key).
    async fn assert_refused(&self, output: &Output, next: &Path) {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(255), "stderr: {stderr}");
        assert!(output.stdout.is_empty());
        assert!(
            stderr.contains("Permission denied (publickey)"),
            "not an authentication refusal: {stderr}"
        );
        self.assert_serves(next).await;
    }

    async fn request_via_w(&self, identity: &Path, frames: Vec<u8>) -> Output {
        self.ssh(
            identity,
            &["-W", "localhost:8022", "alice@127.0.0.1"],
            frames,
        )
        .await
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.shutdown();
    }
}

fn responses(mut bytes: &[u8]) -> Vec<Response> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        out.push(Response::from_payload(&bytes[4..4 + len]).unwrap());
        bytes = &bytes[4 + len..];
    }
    assert!(bytes.is_empty(), "trailing bytes");
    out
}

#[tokio::test]
async fn ssh_w_reaches_the_server_with_ed25519_ecdsa_and_rsa_4096_keys() {
    let kinds = [
        ("ed", KeyKind::Ed25519),
        ("ec", KeyKind::Ecdsa256),
        ("rsa", KeyKind::Rsa(4096)),
    ];
    let fixture = Fixture::start(|dir| {
        kinds
            .iter()
            .map(|(name, kind)| public_key(&keygen(dir, name, *kind)) + "\n")
            .collect()
    })
    .await;
    for (name, _) in kinds {
        let key = fixture.dir.path().join(name);
        let mut input = frame(&json!({"id": 1, "verb": "GET", "resource": "/hello"}));
        input.extend(frame(
            &json!({"id": "w", "verb": "GET", "resource": "/whoami"}),
        ));
        let output = fixture.request_via_w(&key, input).await;
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut answers = responses(&output.stdout);
        answers.sort_by_key(|r| r.request_id.as_ref().unwrap().as_str().is_some());
        assert_eq!(answers.len(), 2, "{name}");
        assert_eq!(answers[0].body, json!({"msg": "Hello World!"}));
        assert_eq!(answers[1].body["user"], json!("alice"));
        assert_eq!(answers[1].body["comment"], json!(name));
        assert!(
            answers[1].body["fp"]
                .as_str()
                .unwrap()
                .starts_with("SHA256:")
        );
    }
}

#[tokio::test]
async fn the_korv_subsystem_answers_and_exits_0() {
    let fixture = Fixture::start(|dir| public_key(&keygen(dir, "ed", KeyKind::Ed25519))).await;
    let key = fixture.dir.path().join("ed");
    let input = frame(&json!({"id": 7, "verb": "GET", "resource": "/hello"}));
    let output = fixture
        .ssh(&key, &["-s", "alice@127.0.0.1", "korv"], input)
        .await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers = responses(&output.stdout);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].code, StatusCode::OK);
}

/// Each cipher a client may insist on, OpenSSH's names: the server must offer
/// every one (AES-128-GCM is OpenSSH's and Korv's first choice on CPUs with
/// AES instructions).
#[tokio::test]
async fn every_modern_cipher_is_offered() {
    let fixture = Fixture::start(|dir| public_key(&keygen(dir, "ed", KeyKind::Ed25519))).await;
    let key = fixture.dir.path().join("ed");
    for cipher in [
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        "chacha20-poly1305@openssh.com",
        "aes128-ctr",
        "aes256-ctr",
    ] {
        let input = frame(&json!({"id": 1, "verb": "GET", "resource": "/hello"}));
        let output = fixture
            .ssh(
                &key,
                &["-c", cipher, "-s", "alice@127.0.0.1", "korv"],
                input,
            )
            .await;
        assert_eq!(
            output.status.code(),
            Some(0),
            "{cipher}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let answers = responses(&output.stdout);
        assert_eq!(answers.len(), 1, "{cipher}");
        assert_eq!(answers[0].code, StatusCode::OK, "{cipher}");
    }
}

#[tokio::test]
async fn the_last_response_of_a_burst_arrives_before_close() {
    let fixture = Fixture::start(|dir| public_key(&keygen(dir, "ed", KeyKind::Ed25519))).await;
    let key = fixture.dir.path().join("ed");
    let input: Vec<u8> = (0..500)
        .flat_map(|id| frame(&json!({"id": id, "verb": "GET", "resource": "/hello"})))
        .collect();
    let output = fixture.request_via_w(&key, input).await;
    assert!(output.status.success());
    assert_eq!(responses(&output.stdout).len(), 500);
}

#[tokio::test]
async fn an_unauthorized_key_is_refused() {
    let fixture = Fixture::start(|dir| public_key(&keygen(dir, "ed", KeyKind::Ed25519))).await;
    let stranger = fixture.key("stranger", KeyKind::Ed25519);
    let output = fixture
        .request_via_w(
            &stranger,
            frame(&json!({"id": 1, "verb": "GET", "resource": "/hello"})),
        )
        .await;
    fixture
        .assert_refused(&output, &fixture.dir.path().join("ed"))
        .await;
}

/// OpenSSH's `ssh` ready to answer a password or keyboard-interactive prompt
/// (interactive mode, an askpass program that records being asked) finds
/// only `publickey` offered and never asks; the server's own refusal of
/// those methods, when a client tries them anyway, is
/// `hardening.rs`: `password_and_keyboard_interactive_are_refused`.
#[tokio::test]
async fn password_and_keyboard_interactive_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let fixture = Fixture::start(|dir| public_key(&keygen(dir, "ed", KeyKind::Ed25519))).await;
    let dir = fixture.dir.path();
    let key = dir.join("ed");
    let asked = dir.join("asked");
    let askpass = dir.join("askpass");
    std::fs::write(
        &askpass,
        format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\necho secret\n",
            asked.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).unwrap();
    for method in ["password", "keyboard-interactive"] {
        let mut command = Command::new("ssh");
        command
            .args(["-F", "/dev/null", "-o", "BatchMode=no"])
            .args(["-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "PubkeyAuthentication=no"])
            .args(["-o", &format!("PreferredAuthentications={method}")])
            .args(["-o", "NumberOfPasswordPrompts=1"])
            .args(["-o", "ConnectTimeout=10"])
            .args(["-p", &fixture.addr.port().to_string()])
            .args(["-W", "localhost:1", "alice@127.0.0.1"])
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .stdin(Stdio::null());
        let output = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(255), "{method}: {stderr}");
        assert!(
            stderr.contains("Permission denied (publickey)"),
            "{method}: the server offers public keys only: {stderr}"
        );
        assert!(
            !asked.exists(),
            "{method}: ssh asked for a secret: {}",
            std::fs::read_to_string(&asked).unwrap_or_default()
        );
    }
    fixture.assert_serves(&key).await;
}

#[tokio::test]
async fn exec_is_refused() {
    let fixture = Fixture::start(|dir| public_key(&keygen(dir, "ed", KeyKind::Ed25519))).await;
    let key = fixture.dir.path().join("ed");
    let output = fixture
        .ssh(&key, &["alice@127.0.0.1", "true"], Vec::new())
        .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(output.stdout.is_empty());
    assert!(
        stderr.contains("exec request failed on channel"),
        "not the server's refusal of exec: {stderr}"
    );
    fixture.assert_serves(&key).await;
}

#[tokio::test]
async fn another_subsystem_is_refused() {
    let fixture = Fixture::start(|dir| public_key(&keygen(dir, "ed", KeyKind::Ed25519))).await;
    let key = fixture.dir.path().join("ed");
    let output = fixture
        .ssh(&key, &["-s", "alice@127.0.0.1", "sftp"], Vec::new())
        .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(output.stdout.is_empty());
    assert!(
        stderr.contains("subsystem request failed on channel"),
        "not the server's refusal of the subsystem: {stderr}"
    );
    fixture.assert_serves(&key).await;
}

#[tokio::test]
async fn rsa_keys_under_2048_bits_are_refused() {
    let fixture = Fixture::start(|dir| {
        let small = public_key(&keygen(dir, "rsa1024", KeyKind::Rsa(1024)));
        let large = public_key(&keygen(dir, "rsa2048", KeyKind::Rsa(2048)));
        format!("{small}\n{large}\n")
    })
    .await;
    let small = fixture.dir.path().join("rsa1024");
    let output = fixture
        .request_via_w(
            &small,
            frame(&json!({"id": 1, "verb": "GET", "resource": "/hello"})),
        )
        .await;
    // The same kind of key at 2048 bits, authorized the same way, is served.
    fixture
        .assert_refused(&output, &fixture.dir.path().join("rsa2048"))
        .await;
}

#[tokio::test]
async fn an_expiry_time_in_the_future_is_accepted() {
    let fixture = Fixture::start(|dir| {
        format!(
            "expiry-time=\"29991231\" {}",
            public_key(&keygen(dir, "ed", KeyKind::Ed25519))
        )
    })
    .await;
    fixture.assert_serves(&fixture.dir.path().join("ed")).await;
}

#[tokio::test]
async fn a_from_option_that_excludes_loopback_is_refused() {
    let fixture = Fixture::start(|dir| {
        format!(
            "from=\"10.0.0.*\" {}\n{}\n",
            public_key(&keygen(dir, "ed", KeyKind::Ed25519)),
            public_key(&keygen(dir, "other", KeyKind::Ed25519))
        )
    })
    .await;
    let key = fixture.dir.path().join("ed");
    let output = fixture.request_via_w(&key, Vec::new()).await;
    fixture
        .assert_refused(&output, &fixture.dir.path().join("other"))
        .await;
}

#[tokio::test]
async fn a_from_option_that_includes_loopback_is_accepted() {
    let fixture = Fixture::start(|dir| {
        format!(
            "from=\"10.0.0.*,127.0.0.1\" {}",
            public_key(&keygen(dir, "ed", KeyKind::Ed25519))
        )
    })
    .await;
    let key = fixture.dir.path().join("ed");
    let output = fixture
        .request_via_w(
            &key,
            frame(&json!({"id": 1, "verb": "GET", "resource": "/hello"})),
        )
        .await;
    assert_eq!(responses(&output.stdout).len(), 1);
}

#[tokio::test]
async fn an_expired_key_is_refused() {
    let fixture = Fixture::start(|dir| {
        format!(
            "expiry-time=\"20200101\" {}\n{}\n",
            public_key(&keygen(dir, "ed", KeyKind::Ed25519)),
            public_key(&keygen(dir, "other", KeyKind::Ed25519))
        )
    })
    .await;
    let key = fixture.dir.path().join("ed");
    let output = fixture.request_via_w(&key, Vec::new()).await;
    fixture
        .assert_refused(&output, &fixture.dir.path().join("other"))
        .await;
}

#[tokio::test]
async fn a_key_removed_from_authorized_keys_is_refused_on_the_next_connection() {
    let fixture = Fixture::start(|dir| {
        let a = public_key(&keygen(dir, "a", KeyKind::Ed25519));
        let b = public_key(&keygen(dir, "b", KeyKind::Ed25519));
        format!("{a}\n{b}\n")
    })
    .await;
    let a = fixture.dir.path().join("a");
    let hello = || frame(&json!({"id": 1, "verb": "GET", "resource": "/hello"}));
    assert_eq!(
        responses(&fixture.request_via_w(&a, hello()).await.stdout).len(),
        1
    );
    let b_only = public_key(&fixture.dir.path().join("b"));
    std::fs::write(fixture.dir.path().join("authorized_keys"), b_only + "\n").unwrap();
    let output = fixture.request_via_w(&a, hello()).await;
    fixture
        .assert_refused(&output, &fixture.dir.path().join("b"))
        .await;
}

#[tokio::test]
async fn a_host_key_readable_by_others_fails_fast_naming_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let host = keygen(dir.path(), "host", KeyKind::Ed25519);
    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = KorvServer::new()
        .host_key_file(&host)
        .authorized_keys_file(dir.path().join("none"))
        .listen("127.0.0.1:0".parse().unwrap())
        .bind()
        .await
        .err()
        .unwrap();
    let message = err.to_string();
    assert!(
        message.contains(&host.display().to_string()) && message.contains("too open"),
        "{message}"
    );
}

#[tokio::test]
async fn a_port_in_use_fails_fast_naming_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let host = keygen(dir.path(), "host", KeyKind::Ed25519);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = KorvServer::new()
        .host_key_file(&host)
        .authorized_keys_file(dir.path().join("none"))
        .listen(addr)
        .bind()
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

/// A server with no authorized keys and the given limits, for raw TCP tests.
async fn bare_server(limits: korv_server::Limits) -> (SocketAddr, ShutdownHandle, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let host = keygen(dir.path(), "host", KeyKind::Ed25519);
    let bound = KorvServer::new()
        .limits(limits)
        .host_key_file(host)
        .authorized_keys_file(dir.path().join("none"))
        .listen("127.0.0.1:0".parse().unwrap())
        .bind()
        .await
        .unwrap();
    let addr = bound.local_addr();
    let shutdown = bound.shutdown_handle();
    tokio::spawn(bound.run());
    (addr, shutdown, dir)
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_auth_deadline() {
    use tokio::io::AsyncReadExt;
    let (addr, shutdown, _dir) = bare_server(korv_server::Limits {
        auth_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut sink = Vec::new();
    // The server sends its version line, then closes: read to EOF.
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        socket.read_to_end(&mut sink),
    )
    .await;
    assert!(
        read.is_ok(),
        "the silent connection was not closed within 5 s"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= std::time::Duration::from_millis(250),
        "closed too early: {elapsed:?}"
    );
    assert!(sink.starts_with(b"SSH-2.0-"));
    shutdown.shutdown();
}

#[tokio::test]
async fn beyond_the_unauthenticated_limit_new_connections_are_closed_at_once() {
    use tokio::io::AsyncReadExt;
    let (addr, shutdown, _dir) = bare_server(korv_server::Limits {
        max_unauthenticated: 2,
        ..Default::default()
    })
    .await;
    /// Connects and reads the server's version line: the server has taken
    /// the connection and counts it as unauthenticated.
    async fn greeted(addr: SocketAddr) -> tokio::net::TcpStream {
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut banner = [0; 8];
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            socket.read_exact(&mut banner),
        )
        .await
        .expect("the version line")
        .unwrap();
        assert_eq!(&banner, b"SSH-2.0-");
        socket
    }
    let held = vec![greeted(addr).await, greeted(addr).await];
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        third.read_to_end(&mut sink),
    )
    .await;
    assert!(read.is_ok(), "the third connection was not closed at once");
    assert!(sink.is_empty(), "no SSH banner for a refused connection");
    // Once the held connections are gone, their places are free again: a new
    // connection is greeted (the server notices each close on its own time,
    // so refusals may come first).
    drop(held);
    let started = std::time::Instant::now();
    loop {
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut banner = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            (&mut socket).take(8).read_to_end(&mut banner),
        )
        .await
        .expect("a version line or a close");
        if banner == b"SSH-2.0-" {
            break;
        }
        assert!(banner.is_empty(), "{banner:?}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the server stopped greeting new connections"
        );
        tokio::task::yield_now().await;
    }
    shutdown.shutdown();
}

#[tokio::test]
async fn an_authenticated_connection_outlives_the_auth_deadline() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let host = keygen(dir.path(), "host", KeyKind::Ed25519);
    let id = keygen(dir.path(), "id", KeyKind::Ed25519);
    let authorized_keys = dir.path().join("authorized_keys");
    std::fs::write(&authorized_keys, public_key(&id)).unwrap();
    let deadline = std::time::Duration::from_millis(500);
    let bound = KorvServer::new()
        .limits(korv_server::Limits {
            auth_timeout: deadline,
            ..Default::default()
        })
        .host_key_file(host)
        .authorized_keys_file(&authorized_keys)
        .listen("127.0.0.1:0".parse().unwrap())
        .route(
            "/hello",
            get(|_r: Request| async { (200, json!({"msg": "Hello World!"})) }),
        )
        .bind()
        .await
        .unwrap();
    let port = bound.local_addr().port();
    let shutdown = bound.shutdown_handle();
    tokio::spawn(bound.run());
    let answers = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new("ssh")
            .args(["-F", "/dev/null", "-o", "BatchMode=yes"])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"])
            .args(["-p", &port.to_string(), "-i"])
            .arg(&id)
            .args(["-W", "localhost:8022", "alice@127.0.0.1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut ask = |id: u64| {
            stdin
                .write_all(&frame(
                    &json!({"id": id, "verb": "GET", "resource": "/hello"}),
                ))
                .ok()?;
            let mut len = [0; 4];
            stdout.read_exact(&mut len).ok()?;
            let mut payload = vec![0; u32::from_be_bytes(len) as usize];
            stdout.read_exact(&mut payload).ok()?;
            Some(Response::from_payload(&payload).unwrap())
        };
        let first = ask(1);
        // Well past the deadline, on the same authenticated connection.
        std::thread::sleep(deadline * 3);
        let second = ask(2);
        drop(stdin);
        let _ = child.wait();
        (first, second)
    })
    .await
    .unwrap();
    shutdown.shutdown();
    let (first, second) = answers;
    assert_eq!(first.expect("the first answer").code, StatusCode::OK);
    let second = second.expect("the connection was closed at the authentication deadline");
    assert_eq!(second.code, StatusCode::OK);
    assert_eq!(second.request_id, Some(korv_server::RequestId::from(2_u64)));
}

/// Signals between a test and the handler of `/slow`.
#[derive(Default)]
struct Gate {
    /// The handler has started.
    started: tokio::sync::Notify,
    /// The handler may answer.
    release: tokio::sync::Notify,
}

#[tokio::test]
async fn run_until_returns_after_its_future_completes_and_in_flight_requests_finish() {
    let dir = tempfile::tempdir().unwrap();
    let host = keygen(dir.path(), "host", KeyKind::Ed25519);
    let id = keygen(dir.path(), "id", KeyKind::Ed25519);
    let authorized_keys = dir.path().join("authorized_keys");
    std::fs::write(&authorized_keys, public_key(&id)).unwrap();
    let gate = std::sync::Arc::new(Gate::default());
    let bound = KorvServer::with_state(std::sync::Arc::clone(&gate))
        .host_key_file(host)
        .authorized_keys_file(&authorized_keys)
        .listen("127.0.0.1:0".parse().unwrap())
        .route(
            "/slow",
            get(|_r: Request, gate: std::sync::Arc<Gate>| async move {
                gate.started.notify_one();
                gate.release.notified().await;
                json!("finished")
            }),
        )
        .bind()
        .await
        .unwrap();
    let port = bound.local_addr().port();
    let handle = bound.shutdown_handle();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bound.run_until(async {
        let _ = stopped.await;
    }));
    let client = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("ssh")
            .args(["-F", "/dev/null", "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"])
            .args(["-p", &port.to_string(), "-i"])
            .arg(&id)
            .args(["-W", "localhost:8022", "alice@127.0.0.1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let request = frame(&json!({"id": 1, "verb": "GET", "resource": "/slow"}));
        child.stdin.take().unwrap().write_all(&request).unwrap();
        child.wait_with_output().unwrap()
    });
    gate.started.notified().await;
    stop.send(()).unwrap();
    // The test runs on one thread: while it yields, the server task runs, and
    // a server that returned on shutdown would be finished by now.
    while !handle.is_shutting_down() {
        tokio::task::yield_now().await;
    }
    assert!(
        !server.is_finished(),
        "run_until returned while a request was in flight"
    );
    gate.release.notify_one();
    tokio::time::timeout(std::time::Duration::from_secs(30), server)
        .await
        .expect("run_until returns once the request has finished")
        .unwrap()
        .unwrap();
    let output = client.await.unwrap();
    let answers = responses(&output.stdout);
    assert_eq!(answers.len(), 1, "the in-flight request was answered");
    assert_eq!(answers[0].code, StatusCode::OK);
    assert_eq!(answers[0].body, json!("finished"));
}

#[tokio::test]
async fn serve_with_shutdown_returns_when_its_future_completes() {
    let dir = tempfile::tempdir().unwrap();
    let host = keygen(dir.path(), "host", KeyKind::Ed25519);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(
        KorvServer::new()
            .host_key_file(host)
            .authorized_keys_file(dir.path().join("none"))
            .listen("127.0.0.1:0".parse().unwrap())
            .route("/hello", get(|_r: Request| async { json!("hello") }))
            .serve_with_shutdown(async {
                let _ = stopped.await;
            }),
    );
    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(30), served)
        .await
        .expect("serve_with_shutdown returns once its future completes")
        .unwrap()
        .unwrap();
}
