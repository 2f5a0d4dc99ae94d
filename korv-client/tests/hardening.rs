//! Hardening, end to end over real SSH on 127.0.0.1: who gets in (access),
//! what the server frees and answers when things go wrong (faults), and how
//! it holds up with many connections (load).
//!
//! `KorvClient` talks to a `KorvServer` that runs on a tokio runtime of its
//! own thread, so that the server's live task count can be read. Where a test
//! needs something `KorvClient` never sends (no key, a SHA-1 signature, a
//! second authentication, other channel kinds), it uses russh's client
//! directly, or OpenSSH's `ssh`.
//!
//! The tests take one lock and so run one at a time: they measure latency and
//! count tasks, which other tests running beside them would disturb. The
//! whole file takes about 20 s on a 2-core machine, with the dependencies
//! optimized as the workspace's dev profile sets.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use korv_client::{ClientConfig, Error, KorvClient, StatusCode};
use korv_server::routing::{get, store};
use korv_server::{KorvServer, Limits, Request, ShutdownHandle};
use korv_testkit::keys::{KeyKind, keygen, known_hosts_line, public_key};
use russh::client::{AuthResult, Handle, KeyboardInteractiveAuthResponse, Msg};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{Channel, ChannelMsg, ChannelOpenFailure, MethodKind};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One test at a time: see the module documentation.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------- keys

/// A host key; alice and bob, both authorized; a stranger, not authorized.
struct Keys {
    dir: TempDir,
    host: PathBuf,
    alice: PathBuf,
    bob: PathBuf,
    stranger: PathBuf,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let host = keygen(dir.path(), "host", KeyKind::Ed25519);
        let alice = keygen(dir.path(), "alice", KeyKind::Ed25519);
        let bob = keygen(dir.path(), "bob", KeyKind::Ed25519);
        let stranger = keygen(dir.path(), "stranger", KeyKind::Ed25519);
        std::fs::write(
            dir.path().join("authorized_keys"),
            format!("{}\n{}\n", public_key(&alice), public_key(&bob)),
        )
        .unwrap();
        Keys {
            dir,
            host,
            alice,
            bob,
            stranger,
        }
    }

    fn authorized_keys(&self) -> PathBuf {
        self.dir.path().join("authorized_keys")
    }

    fn authorize(&self, key: &Path) {
        let mut text = std::fs::read_to_string(self.authorized_keys()).unwrap();
        text.push_str(&public_key(key));
        text.push('\n');
        std::fs::write(self.authorized_keys(), text).unwrap();
    }
}

fn load_key(path: &Path) -> Arc<PrivateKey> {
    Arc::new(russh::keys::load_secret_key(path, None).unwrap())
}

// ---------------------------------------------------------------- the server

/// What the handlers saw, for the tests to check.
#[derive(Default)]
struct Probes {
    /// `/hold` handlers that started.
    holding: AtomicUsize,
    /// `/hold` handler futures dropped.
    released: AtomicUsize,
    /// `/delay/{ms}/{tag}`: tags whose handler started, and finished.
    delays: Mutex<DelayLog>,
    /// Lets the `/large/{kb}/{tag}` handlers answer.
    release_large: tokio::sync::Notify,
}

#[derive(Default)]
struct DelayLog {
    started: HashSet<String>,
    finished: HashSet<String>,
}

/// Counts a `/hold` handler future as released when it is dropped.
struct Release(Arc<Probes>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.released.fetch_add(1, Ordering::SeqCst);
    }
}

fn app(limits: Limits, probes: Arc<Probes>) -> KorvServer<Arc<Probes>> {
    KorvServer::with_state(probes)
        .limits(limits)
        .route(
            "/hello",
            get(|_r: Request| async { json!({"msg": "Hello World!"}) }),
        )
        .route(
            "/whoami",
            get(|r: Request| async move {
                let c = r.client();
                json!({
                    "user": c.user,
                    "fingerprint": c.fingerprint,
                    "comment": c.comment,
                    "peer": c.peer.map(|p| p.to_string()),
                })
            }),
        )
        .route("/echo", store(|r: Request| async move { r.body_value() }))
        .route(
            "/hold",
            get(|_r: Request, probes: Arc<Probes>| async move {
                let _release = Release(Arc::clone(&probes));
                probes.holding.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<Value>().await
            }),
        )
        .route(
            "/boom/{n}",
            get(|r: Request| async move {
                let n: u64 = r.param("n").unwrap().parse().unwrap();
                if n.is_multiple_of(10) {
                    panic!("boom {n}");
                }
                json!({ "n": n })
            }),
        )
        .route(
            "/large/{kb}/{tag}",
            get(|r: Request, probes: Arc<Probes>| async move {
                let kb: usize = r.param("kb").unwrap().parse().unwrap();
                let tag = r.param("tag").unwrap().to_owned();
                probes.delays.lock().unwrap().started.insert(tag.clone());
                // Answers once the test has started the shutdown.
                probes.release_large.notified().await;
                probes.delays.lock().unwrap().finished.insert(tag.clone());
                json!({ "tag": tag, "filler": "x".repeat(kb * 1024) })
            }),
        )
        .route(
            "/delay/{ms}/{tag}",
            get(|r: Request, probes: Arc<Probes>| async move {
                let ms: u64 = r.param("ms").unwrap().parse().unwrap();
                let tag = r.param("tag").unwrap().to_owned();
                probes.delays.lock().unwrap().started.insert(tag.clone());
                tokio::time::sleep(Duration::from_millis(ms)).await;
                probes.delays.lock().unwrap().finished.insert(tag.clone());
                json!({ "tag": tag })
            }),
        )
}

/// A server on a runtime of its own thread (two workers), stopped on drop.
struct Server {
    keys: Keys,
    addr: SocketAddr,
    shutdown: ShutdownHandle,
    runtime: tokio::runtime::Handle,
    probes: Arc<Probes>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(limits: Limits) -> Server {
        let keys = Keys::new();
        let probes = Arc::new(Probes::default());
        let server = app(limits, Arc::clone(&probes))
            .host_key_file(&keys.host)
            .authorized_keys_file(keys.authorized_keys())
            .listen("127.0.0.1:0".parse().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("korv-server")
                .enable_all()
                .build()
                .unwrap();
            let bound = runtime.block_on(server.bind()).unwrap();
            tx.send((
                bound.local_addr(),
                bound.shutdown_handle(),
                runtime.handle().clone(),
            ))
            .unwrap();
            let result = runtime.block_on(bound.run());
            runtime.shutdown_timeout(Duration::from_secs(2));
            result.unwrap();
        });
        let (addr, shutdown, runtime) = rx.recv().unwrap();
        std::fs::write(
            keys.dir.path().join("known_hosts"),
            known_hosts_line(addr.port(), &public_key(&keys.host)),
        )
        .unwrap();
        Server {
            keys,
            addr,
            shutdown,
            runtime,
            probes,
            thread: Some(thread),
        }
    }

    /// Tasks alive on the server's runtime.
    fn alive_tasks(&self) -> usize {
        self.runtime.metrics().num_alive_tasks()
    }

    /// Waits up to `limit` for the server's live tasks to drop to `at_most`;
    /// returns the last count.
    async fn tasks_settle(&self, at_most: usize, limit: Duration) -> usize {
        let started = Instant::now();
        loop {
            let now = self.alive_tasks();
            if now <= at_most || started.elapsed() > limit {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn config(&self, key: &Path) -> ClientConfig {
        ClientConfig::new("127.0.0.1")
            .port(self.addr.port())
            .user("alice")
            .identity_file(key)
            .use_agent(false)
            .known_hosts(self.keys.dir.path().join("known_hosts"))
    }

    async fn client(&self) -> KorvClient {
        KorvClient::connect(self.config(&self.keys.alice))
            .await
            .unwrap()
    }

    /// Shuts the server down and waits for its thread; returns how long that took.
    fn stop(&mut self) -> Duration {
        let started = Instant::now();
        self.shutdown.shutdown();
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        started.elapsed()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.shutdown();
        if let Some(thread) = self.thread.take() {
            // Do not panic while panicking: the test's own failure matters more.
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------- russh's client

/// A russh client handler that trusts any host key (the server is ours).
struct AnyHost;

impl russh::client::Handler for AnyHost {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

async fn raw_connect(addr: SocketAddr) -> Result<Handle<AnyHost>, russh::Error> {
    let config = russh::client::Config {
        nodelay: true,
        ..russh::client::Config::default()
    };
    russh::client::connect(Arc::new(config), addr, AnyHost).await
}

async fn raw_login(addr: SocketAddr, user: &str, key: &Path) -> Handle<AnyHost> {
    let mut handle = raw_connect(addr).await.unwrap();
    let result = handle
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(load_key(key), None))
        .await
        .unwrap();
    assert!(matches!(result, AuthResult::Success), "{user} refused");
    handle
}

/// A Korv client over a channel opened by hand.
fn korv_over(channel: Channel<Msg>) -> KorvClient {
    KorvClient::over_stream(
        channel.into_stream(),
        ClientConfig::new("raw").request_timeout(Some(Duration::from_secs(10))),
    )
}

/// What a channel request with want-reply got.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Success,
    Failure,
    /// Nothing within 2 s.
    Nothing,
    Closed,
}

async fn reply(channel: &mut Channel<Msg>) -> Reply {
    let wait = async {
        loop {
            match channel.wait().await {
                Some(ChannelMsg::Success) => return Reply::Success,
                Some(ChannelMsg::Failure) => return Reply::Failure,
                Some(ChannelMsg::Close) | None => return Reply::Closed,
                Some(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), wait)
        .await
        .unwrap_or(Reply::Nothing)
}

// ---------------------------------------------------------------- measuring

fn p99(latencies: &mut [Duration]) -> Duration {
    assert!(!latencies.is_empty());
    latencies.sort_unstable();
    let rank = (latencies.len() * 99).div_ceil(100);
    latencies[rank - 1]
}

/// The resident set size of this process, from `/proc/self/status` (`VmRSS`).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

const MIB: u64 = 1024 * 1024;

/// CPU time used so far by this process's threads whose name starts with
/// `prefix` (from `/proc/self/task/*/schedstat`; threads that ended are not
/// counted).
fn thread_cpu(prefix: &str) -> Duration {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Duration::from_nanos(total)
}

// ================================================================ access

#[tokio::test]
async fn a_client_offering_no_key_is_refused() {
    let _serial = SERIAL.lock().await;
    let server = Server::start(Limits::default());
    let mut handle = raw_connect(server.addr).await.unwrap();
    let result = handle.authenticate_none("alice").await.unwrap();
    let AuthResult::Failure {
        remaining_methods,
        partial_success,
    } = result
    else {
        panic!("`none` authentication was accepted");
    };
    assert!(!partial_success);
    let methods: Vec<MethodKind> = remaining_methods.iter().cloned().collect();
    assert_eq!(methods, vec![MethodKind::PublicKey], "publickey only");
    // Unauthenticated, no channel opens: the server never answers it.
    let open = tokio::time::timeout(
        Duration::from_secs(1),
        handle.channel_open_direct_tcpip("localhost", 8022, "127.0.0.1", 0),
    )
    .await;
    assert!(
        !matches!(open, Ok(Ok(_))),
        "a channel opened without authentication"
    );
    // And KorvClient without any identity or agent gives up naming that.
    let config = ClientConfig::new("127.0.0.1")
        .port(server.addr.port())
        .use_agent(false)
        .default_identities(false)
        .known_hosts(server.keys.dir.path().join("known_hosts"));
    let err = KorvClient::connect(config).await.err().unwrap();
    assert!(
        matches!(&err, Error::AuthRefused { tried, .. } if tried.is_empty())
            && err.to_string().contains("keys tried: none"),
        "{err}"
    );
}

#[tokio::test]
async fn password_and_keyboard_interactive_are_refused() {
    let _serial = SERIAL.lock().await;
    let server = Server::start(Limits::default());
    let mut handle = raw_connect(server.addr).await.unwrap();
    // russh's client sends these whatever the server offers.
    let password = handle
        .authenticate_password("alice", "secret")
        .await
        .unwrap();
    let AuthResult::Failure {
        remaining_methods,
        partial_success,
    } = password
    else {
        panic!("password authentication was accepted");
    };
    assert!(!partial_success);
    let methods: Vec<MethodKind> = remaining_methods.iter().cloned().collect();
    assert_eq!(methods, vec![MethodKind::PublicKey], "publickey only");
    let interactive = handle
        .authenticate_keyboard_interactive_start("alice", None)
        .await
        .unwrap();
    let KeyboardInteractiveAuthResponse::Failure {
        remaining_methods,
        partial_success,
    } = interactive
    else {
        panic!("keyboard-interactive was not refused: {interactive:?}");
    };
    assert!(!partial_success);
    let methods: Vec<MethodKind> = remaining_methods.iter().cloned().collect();
    assert_eq!(methods, vec![MethodKind::PublicKey], "publickey only");
    // The same connection still authenticates with a key and is served.
    let key = handle
        .authenticate_publickey(
            "alice",
            PrivateKeyWithHashAlg::new(load_key(&server.keys.alice), None),
        )
        .await
        .unwrap();
    assert!(matches!(key, AuthResult::Success));
    let channel = handle
        .channel_open_direct_tcpip("localhost", 8022, "127.0.0.1", 0)
        .await
        .unwrap();
    let me = korv_over(channel).get("/whoami").await.unwrap();
    assert_eq!(me.body["comment"], json!("alice"));
}

#[tokio::test]
async fn an_authenticated_connection_outlives_the_authentication_deadline() {
    let _serial = SERIAL.lock().await;
    let server = Server::start(Limits {
        auth_timeout: Duration::from_millis(300),
        ..Limits::default()
    });
    let client = server.client().await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    let answer = client.get("/hello").await;
    assert!(
        matches!(&answer, Ok(r) if r.code == StatusCode::OK),
        "closed at the deadline although authenticated: {:?}",
        answer.map(|r| r.code)
    );
}

#[tokio::test]
async fn sha1_ssh_rsa_signatures_are_refused() {
    let _serial = SERIAL.lock().await;
    let server = Server::start(Limits::default());
    let rsa = keygen(server.keys.dir.path(), "rsa", KeyKind::Rsa(2048));
    server.keys.authorize(&rsa);
    let key = load_key(&rsa);

    // russh's client signing with SHA-1 (`ssh-rsa`): refused ...
    let mut handle = raw_connect(server.addr).await.unwrap();
    let sha1 = handle
        .authenticate_publickey("alice", PrivateKeyWithHashAlg::new(Arc::clone(&key), None))
        .await
        .unwrap();
    assert!(
        matches!(sha1, AuthResult::Failure { .. }),
        "a SHA-1 signature was accepted"
    );
    // ... the same key signing with SHA-256 on the same connection: accepted.
    let sha256 = handle
        .authenticate_publickey(
            "alice",
            PrivateKeyWithHashAlg::new(key, Some(HashAlg::Sha256)),
        )
        .await
        .unwrap();
    assert!(matches!(sha256, AuthResult::Success));

    // OpenSSH's ssh restricted to `ssh-rsa`: refused; with its defaults
    // (rsa-sha2-512/256): accepted.
    let ssh = |algorithms: Option<&str>| {
        let mut command = Command::new("ssh");
        command.args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "HostKeyAlgorithms=ssh-ed25519",
        ]);
        if let Some(algorithms) = algorithms {
            command.args(["-o", &format!("PubkeyAcceptedAlgorithms={algorithms}")]);
        }
        command
            .args(["-p", &server.addr.port().to_string(), "-i"])
            .arg(&rsa)
            .args(["-W", "localhost:8022", "alice@127.0.0.1"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let refused = ssh(Some("ssh-rsa"));
    assert_eq!(
        refused.status.code(),
        Some(255),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let accepted = ssh(None);
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
}

#[tokio::test]
async fn a_second_authentication_cannot_change_the_user() {
    let _serial = SERIAL.lock().await;
    let server = Server::start(Limits::default());
    let mut handle = raw_login(server.addr, "alice", &server.keys.alice).await;
    // Bob's key is authorized too; a second authentication as bob must not
    // make this connection bob's. (russh's client does not even put it on the
    // wire once authenticated, and russh's server ignores a USERAUTH_REQUEST
    // after success: either way it never succeeds.)
    let second = tokio::time::timeout(
        Duration::from_secs(2),
        handle.authenticate_publickey(
            "bob",
            PrivateKeyWithHashAlg::new(load_key(&server.keys.bob), None),
        ),
    )
    .await;
    assert!(
        !matches!(second, Ok(Ok(AuthResult::Success))),
        "the second authentication succeeded"
    );
    let channel = handle
        .channel_open_direct_tcpip("localhost", 8022, "127.0.0.1", 0)
        .await
        .unwrap();
    let client = korv_over(channel);
    let me = client.get("/whoami").await.unwrap();
    assert_eq!(me.body["user"], json!("alice"));
    assert_eq!(me.body["comment"], json!("alice"), "alice's key, not bob's");
}

#[tokio::test]
async fn channel_kinds_and_session_requests_other_than_korv_are_refused() {
    let _serial = SERIAL.lock().await;
    let server = Server::start(Limits::default());
    let handle = raw_login(server.addr, "alice", &server.keys.alice).await;

    let x11 = handle.channel_open_x11("127.0.0.1", 6000).await;
    assert!(
        matches!(
            x11,
            Err(russh::Error::ChannelOpenFailure(
                ChannelOpenFailure::AdministrativelyProhibited
            ))
        ),
        "x11: {:?}",
        x11.map(|c| c.id())
    );
    let unix = handle
        .channel_open_direct_streamlocal("/run/some.sock")
        .await;
    assert!(
        matches!(unix, Err(russh::Error::ChannelOpenFailure(_))),
        "direct-streamlocal: {:?}",
        unix.map(|c| c.id())
    );
    assert!(handle.tcpip_forward("127.0.0.1", 0).await.is_err());
    assert!(handle.streamlocal_forward("/tmp/korv.sock").await.is_err());

    // Every session request but the korv subsystem fails, and the channel
    // stays usable for the subsystem afterwards.
    let mut session = handle.channel_open_session().await.unwrap();
    session
        .request_pty(true, "xterm", 80, 24, 0, 0, &[])
        .await
        .unwrap();
    assert_eq!(reply(&mut session).await, Reply::Failure, "pty-req");
    session.request_shell(true).await.unwrap();
    assert_eq!(reply(&mut session).await, Reply::Failure, "shell");
    session.exec(true, "id").await.unwrap();
    assert_eq!(reply(&mut session).await, Reply::Failure, "exec");
    session.set_env(true, "LANG", "C").await.unwrap();
    assert_eq!(reply(&mut session).await, Reply::Failure, "env");
    session
        .request_x11(true, false, "MIT-MAGIC-COOKIE-1", "00", 0)
        .await
        .unwrap();
    assert_eq!(reply(&mut session).await, Reply::Failure, "x11-req");
    session.agent_forward(true).await.unwrap();
    assert_eq!(
        reply(&mut session).await,
        Reply::Failure,
        "agent forwarding"
    );
    session.request_subsystem(true, "sftp").await.unwrap();
    assert_eq!(reply(&mut session).await, Reply::Failure, "sftp");
    session.request_subsystem(true, "korv").await.unwrap();
    assert_eq!(reply(&mut session).await, Reply::Success, "korv");
    let client = korv_over(session);
    assert_eq!(client.get("/hello").await.unwrap().code, StatusCode::OK);

    // direct-tcpip's target is ignored: the server connects nowhere, the
    // channel speaks Korv.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = target.local_addr().unwrap().port();
    let channel = handle
        .channel_open_direct_tcpip("127.0.0.1", u32::from(port), "127.0.0.1", 0)
        .await
        .unwrap();
    let client = korv_over(channel);
    assert_eq!(client.get("/hello").await.unwrap().code, StatusCode::OK);
    let forwarded = tokio::time::timeout(Duration::from_millis(300), target.accept()).await;
    assert!(forwarded.is_err(), "the server connected to the target");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_closes_after_max_auth_attempts_failures() {
    let _serial = SERIAL.lock().await;
    let server = Server::start(Limits {
        max_auth_attempts: 3,
        ..Limits::default()
    });
    let stranger = load_key(&server.keys.stranger);
    let alice = load_key(&server.keys.alice);
    let attempt = |key: &Arc<PrivateKey>| PrivateKeyWithHashAlg::new(Arc::clone(key), None);

    // Two failures, then the authorized key: still in.
    let mut handle = raw_connect(server.addr).await.unwrap();
    for _ in 0..2 {
        let r = handle
            .authenticate_publickey("alice", attempt(&stranger))
            .await;
        assert!(matches!(r, Ok(AuthResult::Failure { .. })));
    }
    let r = handle
        .authenticate_publickey("alice", attempt(&alice))
        .await;
    assert!(matches!(r, Ok(AuthResult::Success)));

    // Three failures: the fourth attempt, even with the authorized key, is
    // not served and the connection closes.
    let mut handle = raw_connect(server.addr).await.unwrap();
    for _ in 0..3 {
        let r = handle
            .authenticate_publickey("alice", attempt(&stranger))
            .await;
        assert!(matches!(r, Ok(AuthResult::Failure { .. })));
    }
    let fourth = tokio::time::timeout(
        Duration::from_secs(3),
        handle.authenticate_publickey("alice", attempt(&alice)),
    )
    .await;
    assert!(
        !matches!(fourth, Ok(Ok(AuthResult::Success))),
        "authenticated after max_auth_attempts failures"
    );
    let started = Instant::now();
    while !handle.is_closed() {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_failed_authentications_do_not_slow_a_legitimate_client() {
    const ATTEMPTS: usize = 1000;
    const AT_ONCE: usize = 32;
    // This holds with the dependencies optimized (the workspace's dev
    // profile does it): with unoptimized crypto each handshake holds a
    // server worker for milliseconds.
    let _serial = SERIAL.lock().await;
    let server = Server::start(Limits::default());
    let client = server.client().await;
    for _ in 0..200 {
        client.get("/hello").await.unwrap();
    }
    let mut idle = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let started = Instant::now();
        let r = client.get("/hello").await.unwrap();
        idle.push(started.elapsed());
        assert_eq!(r.code, StatusCode::OK);
    }
    let p99_idle = p99(&mut idle);
    let p50_idle = idle[idle.len() / 2];
    let server_cpu_idle = thread_cpu("korv-server");

    // The attack runs on a runtime of its own thread.
    let addr = server.addr;
    let stranger = load_key(&server.keys.stranger);
    let attack = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("attacker")
            .enable_all()
            .build()
            .unwrap();
        let started = Instant::now();
        let outcomes: Vec<Result<bool, String>> = runtime.block_on(
            futures_util::stream::iter(0..ATTEMPTS)
                .map(|_| {
                    let key = Arc::clone(&stranger);
                    async move {
                        let mut handle = raw_connect(addr).await.map_err(|e| e.to_string())?;
                        let result = handle
                            .authenticate_publickey(
                                "mallory",
                                PrivateKeyWithHashAlg::new(key, None),
                            )
                            .await
                            .map_err(|e| e.to_string())?;
                        Ok(matches!(result, AuthResult::Failure { .. }))
                    }
                })
                .buffer_unordered(AT_ONCE)
                .collect(),
        );
        (outcomes, started.elapsed(), thread_cpu("attacker"))
    });

    let mut under_attack = Vec::new();
    let mut newcomer = None;
    let measuring = Instant::now();
    while !attack.is_finished() && under_attack.len() < 200_000 {
        let started = Instant::now();
        let r = client.get("/hello").await.unwrap();
        under_attack.push(started.elapsed());
        assert_eq!(r.code, StatusCode::OK);
        if newcomer.is_none() && measuring.elapsed() > Duration::from_secs(1) {
            // A new legitimate connection gets in during the attack.
            let started = Instant::now();
            let fresh = KorvClient::connect(server.config(&server.keys.bob))
                .await
                .unwrap();
            assert_eq!(fresh.get("/hello").await.unwrap().code, StatusCode::OK);
            newcomer = Some(started.elapsed());
        }
    }
    let (outcomes, attack_time, attacker_cpu) = attack.join().unwrap();
    let server_cpu_attack = thread_cpu("korv-server") - server_cpu_idle;
    let refused = outcomes.iter().filter(|o| matches!(o, Ok(true))).count();
    // Slow, for this run: twenty times the idle median.
    let slow_bar = 20 * p50_idle;
    let slow = under_attack.iter().filter(|d| **d > slow_bar).count();
    let slow_percent = slow as f64 * 100.0 / under_attack.len() as f64;
    let p99_attack = p99(&mut under_attack);
    let p50_attack = under_attack[under_attack.len() / 2];
    println!(
        "idle: p50 {p50_idle:?} p99 {p99_idle:?} over 2000 requests; under attack: p50 \
         {p50_attack:?} p99 {p99_attack:?} over {} requests, {slow_percent:.2}% over \
         {slow_bar:?}; {refused}/{ATTEMPTS} attempts \
         refused in {attack_time:?}, {AT_ONCE} at once; a new connection during the attack took \
         {newcomer:?}; CPU during the attack: server {server_cpu_attack:?}, attackers {attacker_cpu:?}",
        under_attack.len()
    );
    assert_eq!(
        refused,
        ATTEMPTS,
        "every attempt is refused: {:?}",
        outcomes.iter().find(|o| !matches!(o, Ok(true)))
    );
    assert!(under_attack.len() >= 200, "too few samples under attack");
    assert!(newcomer.is_some(), "no new connection during the attack");
    // The bar comes from this run's idle median, so the machine's speed
    // cancels out, and a share is steadier than a tail percentile on a shared
    // machine: about 0.3% of requests pass the bar under attack here. A
    // server whose handshakes hold its workers (10 ms each) puts 4% past it.
    assert!(
        slow_percent < 2.0,
        "{slow_percent:.2}% of requests under attack took over {slow_bar:?} (20 x the idle median)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_closed_at_the_deadline_and_beyond_the_limit() {
    const DEADLINE: Duration = Duration::from_secs(2);
    const LIMIT: usize = 6;
    let _serial = SERIAL.lock().await;
    let server = Server::start(Limits {
        max_unauthenticated: LIMIT,
        auth_timeout: DEADLINE,
        ..Limits::default()
    });
    let baseline = server.tasks_settle(0, Duration::from_secs(1)).await;

    /// A client that sends its SSH version line one byte per second: returns
    /// whether it got the server's banner, and when (after connecting) the
    /// server closed it. `told` learns as soon as the server has either
    /// greeted it (true) or closed it (false).
    async fn slow(addr: SocketAddr, told: tokio::sync::oneshot::Sender<bool>) -> (bool, Duration) {
        let mut told = Some(told);
        let socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let connected = Instant::now();
        let (mut read, mut write) = socket.into_split();
        let dribble = tokio::spawn(async move {
            for byte in b"SSH-2.0-slowloris\r\n" {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if write.write_all(&[*byte]).await.is_err() {
                    return;
                }
            }
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), read.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.len() >= 8
                        && let Some(told) = told.take()
                    {
                        let _ = told.send(got.starts_with(b"SSH-2.0-"));
                    }
                }
                Err(_) => panic!("a slow client was kept for 10 s"),
            }
        }
        if let Some(told) = told.take() {
            let _ = told.send(false);
        }
        dribble.abort();
        (got.starts_with(b"SSH-2.0-"), connected.elapsed())
    }

    // Four slow clients, under the limit: a legitimate client still gets in.
    // Each is taken (greeted) or refused before the next connects.
    let start_slow = async || {
        let (told, greeted) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(slow(server.addr, told));
        (task, greeted.await.unwrap())
    };
    let mut first = Vec::new();
    for _ in 0..4 {
        let (task, greeted) = start_slow().await;
        assert!(greeted, "a slow client under the limit is greeted");
        first.push(task);
    }
    let legit = server.client().await;
    assert_eq!(legit.get("/hello").await.unwrap().code, StatusCode::OK);
    // Four more: two fill the limit, two are closed at once without a banner.
    let mut second = Vec::new();
    for _ in 0..4 {
        second.push(start_slow().await.0);
    }
    let mut held = Vec::new();
    for task in first {
        held.push(task.await.unwrap());
    }
    let mut refused = 0;
    for task in second {
        let (banner, closed_after) = task.await.unwrap();
        if banner {
            held.push((banner, closed_after));
        } else {
            refused += 1;
            assert!(
                closed_after < Duration::from_millis(500),
                "refused late: {closed_after:?}"
            );
        }
    }
    println!(
        "slow clients: {} held until {:?}, {refused} refused at once",
        held.len(),
        held.iter().map(|h| h.1).collect::<Vec<_>>()
    );
    assert_eq!(refused, 2, "beyond the limit of {LIMIT}");
    assert_eq!(held.len(), LIMIT);
    for (_, closed_after) in &held {
        assert!(
            *closed_after >= DEADLINE - Duration::from_millis(100)
                && *closed_after < DEADLINE + Duration::from_millis(1500),
            "closed after {closed_after:?}, deadline {DEADLINE:?}"
        );
    }
    // The legitimate client was never disturbed; a new one gets in; and the
    // slow ones left nothing behind on the server.
    assert_eq!(legit.get("/hello").await.unwrap().code, StatusCode::OK);
    let another = server.client().await;
    assert_eq!(another.get("/hello").await.unwrap().code, StatusCode::OK);
    drop((legit, another));
    let after = server.tasks_settle(baseline, Duration::from_secs(3)).await;
    assert!(after <= baseline, "tasks: {after} now, {baseline} before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_sent_before_the_korv_subsystem_is_dropped_not_read_as_a_frame() {
    let _serial = SERIAL.lock().await;
    let server = Server::start(Limits::default());
    let handle = raw_login(server.addr, "alice", &server.keys.alice).await;
    let mut session = handle.channel_open_session().await.unwrap();
    // Three bytes of a length prefix: read as the start of the stream, they
    // would swallow the next request's header and leave it unanswered.
    session.data(&[0u8, 0, 1][..]).await.unwrap();
    session.request_subsystem(true, "korv").await.unwrap();
    assert_eq!(reply(&mut session).await, Reply::Success, "korv");
    let client = korv_over(session);
    assert_eq!(client.get("/hello").await.unwrap().code, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_streams_per_connection_channels_are_refused_for_resource_shortage() {
    let _serial = SERIAL.lock().await;
    let server = Server::start(Limits {
        max_streams_per_connection: 2,
        ..Limits::default()
    });
    let handle = raw_login(server.addr, "alice", &server.keys.alice).await;
    let open = || handle.channel_open_direct_tcpip("localhost", 8022, "127.0.0.1", 0);
    let first = korv_over(open().await.unwrap());
    let second = korv_over(open().await.unwrap());
    let third = open().await;
    assert!(
        matches!(
            third,
            Err(russh::Error::ChannelOpenFailure(
                ChannelOpenFailure::ResourceShortage
            ))
        ),
        "a third stream: {:?}",
        third.map(|c| c.id())
    );
    // The two admitted streams serve; once one ends, its place is free again
    // (the server notices the end on its own time: retry until then).
    assert_eq!(first.get("/hello").await.unwrap().code, StatusCode::OK);
    assert_eq!(second.get("/hello").await.unwrap().code, StatusCode::OK);
    drop(first);
    let started = Instant::now();
    let again = loop {
        match open().await {
            Ok(channel) => break korv_over(channel),
            Err(russh::Error::ChannelOpenFailure(ChannelOpenFailure::ResourceShortage)) => {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "the closed stream's place never came free"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(other) => panic!("{other}"),
        }
    };
    assert_eq!(again.get("/hello").await.unwrap().code, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_new_connections_are_closed_before_the_handshake() {
    let _serial = SERIAL.lock().await;
    let server = Server::start(Limits {
        max_connections: 2,
        ..Limits::default()
    });
    let first = server.client().await;
    let second = server.client().await;
    // A third TCP connection is closed without the server's version line.
    let mut third = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), third.read_to_end(&mut got))
        .await
        .expect("the third connection is closed at once")
        .unwrap();
    assert!(got.is_empty(), "no banner beyond the limit: {got:?}");
    // The connections under the limit still serve; once one closes, a new
    // client gets in (after the server has noticed the close).
    assert_eq!(first.get("/hello").await.unwrap().code, StatusCode::OK);
    drop(first);
    let started = Instant::now();
    let again = loop {
        match KorvClient::connect(server.config(&server.keys.alice)).await {
            Ok(client) => break client,
            Err(err) => {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "no place came free: {err}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    assert_eq!(again.get("/hello").await.unwrap().code, StatusCode::OK);
    assert_eq!(second.get("/hello").await.unwrap().code, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_at_the_idle_timeout() {
    const IDLE: Duration = Duration::from_millis(500);
    let _serial = SERIAL.lock().await;
    let server = Server::start(Limits {
        idle_timeout: Some(IDLE),
        keepalive_interval: None,
        ..Limits::default()
    });
    // russh's client sends nothing unless asked: no keepalives of its own.
    let handle = raw_login(server.addr, "alice", &server.keys.alice).await;
    let mut channel = handle
        .channel_open_direct_tcpip("localhost", 8022, "127.0.0.1", 0)
        .await
        .unwrap();
    let idle_since = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(message) = channel.wait().await {
            if matches!(message, ChannelMsg::Close) {
                break;
            }
        }
    })
    .await;
    let idle_for = idle_since.elapsed();
    assert!(
        ended.is_ok(),
        "the idle connection was still open after 20 s"
    );
    assert!(
        idle_for >= IDLE,
        "closed after {idle_for:?}, before {IDLE:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_keepalives_is_dropped() {
    use std::io::Read;
    use std::process::Stdio;
    const INTERVAL: Duration = Duration::from_millis(200);
    let _serial = SERIAL.lock().await;
    let server = Server::start(Limits {
        keepalive_interval: Some(INTERVAL),
        keepalive_max: 2,
        idle_timeout: None,
        ..Limits::default()
    });
    let baseline = server.tasks_settle(0, Duration::from_secs(1)).await;
    // OpenSSH's ssh answers keepalives until it is stopped (SIGSTOP); the
    // kernel still acknowledges the TCP segments, so only the SSH replies
    // are missing.
    let ssh = |stdout: Stdio| {
        let mut command = Command::new("ssh");
        command
            .args(["-F", "/dev/null", "-o", "BatchMode=yes"])
            .args([
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=no",
            ])
            .args(["-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"])
            .args(["-o", "ServerAliveInterval=0"])
            .args(["-p", &server.addr.port().to_string(), "-i"])
            .arg(&server.keys.alice)
            .args(["-W", "localhost:8022", "alice@127.0.0.1"])
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(Stdio::null());
        command.spawn().unwrap()
    };
    let hello = korv_testkit::frame::frame(&json!({"id": 1, "verb": "GET", "resource": "/hello"}));
    // Killed when dropped, so that a failure leaves no stopped ssh behind.
    let mut stopped = korv_testkit::process::KillOnDrop(ssh(Stdio::piped()));
    let mut answering = korv_testkit::process::KillOnDrop(ssh(Stdio::piped()));
    for korv_testkit::process::KillOnDrop(child) in [&mut stopped, &mut answering] {
        use std::io::Write;
        child.stdin.as_mut().unwrap().write_all(&hello).unwrap();
        let mut len = [0; 4];
        child.stdout.as_mut().unwrap().read_exact(&mut len).unwrap();
        let mut answer = vec![0; u32::from_be_bytes(len) as usize];
        child
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut answer)
            .unwrap();
    }
    let connected = server.alive_tasks();
    assert!(connected > baseline);
    let signal = |name: &str, pid: u32| {
        let status = Command::new("kill")
            .args([name, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP", stopped.id());
    // The server drops the stopped client's connection after its unanswered
    // probes; the answering client's stays.
    let started = Instant::now();
    let after = loop {
        let now = server.alive_tasks();
        if now < connected {
            break now;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the stopped client was not dropped ({now} tasks)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let dropped_after = started.elapsed();
    assert!(
        after > baseline,
        "the answering client's connection is gone too"
    );
    // Resumed, the stopped ssh finds its connection closed and exits with an
    // error (a connection still open would keep it running: the test fails
    // rather than wait for it).
    signal("-CONT", stopped.id());
    let resumed = Instant::now();
    let stopped_status = loop {
        if let Some(status) = stopped.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(20),
            "the stopped client's connection is still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        !stopped_status.success(),
        "the dropped client's ssh exits with an error"
    );
    // The client that answers probes is still served, well past
    // interval × max.
    {
        use std::io::Write;
        let stdin = answering.0.stdin.as_mut().unwrap();
        stdin.write_all(&hello).unwrap();
        let mut len = [0; 4];
        answering
            .0
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut len)
            .unwrap();
    }
    drop(answering.0.stdin.take());
    let _ = answering.0.wait();
    println!("dropped {dropped_after:?} after it stopped answering (interval {INTERVAL:?}, max 2)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_answers_504_and_cancels_the_handler() {
    let _serial = SERIAL.lock().await;
    let server = Server::start(Limits {
        request_timeout: Duration::from_millis(300),
        ..Limits::default()
    });
    let client = server.client().await;
    let answer = client.get("/hold").await.unwrap();
    assert_eq!(answer.code.as_u16(), 504);
    assert!(answer.body["message"].is_string(), "{}", answer.body);
    assert_eq!(server.probes.holding.load(Ordering::SeqCst), 1);
    // The handler's future was dropped before the answer was sent.
    assert_eq!(
        server.probes.released.load(Ordering::SeqCst),
        1,
        "the timed-out handler is still running"
    );
    assert_eq!(client.get("/hello").await.unwrap().code, StatusCode::OK);
}

// ================================================================ faults

/// Connects alice on a runtime of its own thread and sends `n` requests to
/// `/hold`; the runtime (and with it the socket, without an SSH goodbye) is
/// dropped when `kill` fires.
fn vanishing_client(
    config: ClientConfig,
    n: usize,
) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let client = KorvClient::connect(config.request_timeout(None))
                .await
                .unwrap();
            for _ in 0..n {
                let client = client.clone();
                tokio::spawn(async move {
                    let _ = client.get("/hold").await;
                });
            }
        });
        let _ = kill_rx.recv();
        runtime.shutdown_timeout(Duration::from_secs(2));
    });
    (kill_tx, thread)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_with_1000_requests_in_flight_frees_them() {
    const IN_FLIGHT: usize = 1000;
    const ROUNDS: usize = 3;
    let _serial = SERIAL.lock().await;
    let server = Server::start(Limits {
        max_in_flight_per_stream: 1024,
        ..Limits::default()
    });
    // Warm up: one connection and request, closed, so that lazily made
    // things exist before counting.
    drop(server.client().await.get("/hello").await.unwrap());
    let baseline = server.tasks_settle(0, Duration::from_secs(2)).await;
    let rss_start = rss_bytes();
    for round in 1..=ROUNDS {
        let (kill, thread) = vanishing_client(server.config(&server.keys.alice), IN_FLIGHT);
        let started = Instant::now();
        while server.probes.holding.load(Ordering::SeqCst) < round * IN_FLIGHT {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "only {} handlers started",
                server.probes.holding.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let peak_tasks = server.alive_tasks();
        let rss_peak = rss_bytes();
        assert!(peak_tasks >= baseline + IN_FLIGHT, "{peak_tasks} tasks");

        let vanished = Instant::now();
        kill.send(()).unwrap();
        thread.join().unwrap();
        while server.probes.released.load(Ordering::SeqCst) < round * IN_FLIGHT {
            assert!(
                vanished.elapsed() < Duration::from_secs(30),
                "round {round}: {} of {} handler futures dropped 30 s after the client vanished",
                server.probes.released.load(Ordering::SeqCst) - (round - 1) * IN_FLIGHT,
                IN_FLIGHT
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let freed_in = vanished.elapsed();
        let tasks = server.tasks_settle(baseline, Duration::from_secs(5)).await;
        assert!(
            tasks <= baseline,
            "round {round}: {tasks} tasks, baseline {baseline}"
        );
        let rss = rss_bytes();
        println!(
            "round {round}: server tasks {baseline} -> {peak_tasks} -> {tasks}; handlers dropped \
             {freed_in:?} after the client vanished; RSS {} -> {} -> {} MiB",
            rss_start / MIB,
            rss_peak / MIB,
            rss / MIB
        );
    }
    // Whether memory is given back is the allocator's business (glibc keeps
    // freed memory in a thread's arena for reuse), and this process holds
    // the client too: the resident size above is printed, not bounded. The
    // guard is exact: after each round every task and every handler is gone.
    // Memory per request is bounded by `cargo xtask bench --check` (no RSS
    // growth across 1,000,000 requests) and `cargo xtask soak`.
    let client = server.client().await;
    assert_eq!(client.get("/hello").await.unwrap().code, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_that_panic_under_load_answer_500_and_the_rest_200() {
    const WORKERS: u64 = 64;
    const EACH: u64 = 1000;
    const CLIENTS: u64 = 8;
    let _serial = SERIAL.lock().await;
    let server = Server::start(Limits::default());
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(server.client().await);
    }
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let client = clients[(w % CLIENTS) as usize].clone();
            tokio::spawn(async move {
                let mut wrong = Vec::new();
                let (mut ok, mut failed) = (0u64, 0u64);
                for i in 0..EACH {
                    let n = w * EACH + i;
                    let r = client.get(&format!("/boom/{n}")).await.unwrap();
                    if n.is_multiple_of(10) {
                        let message = format!("boom {n}");
                        let traceback = r.body["traceback"].as_array().cloned().unwrap_or_default();
                        if r.code == StatusCode::INTERNAL_SERVER_ERROR
                            && traceback
                                .iter()
                                .any(|t| t.as_str().is_some_and(|t| t.contains(&message)))
                        {
                            failed += 1;
                        } else {
                            wrong.push((n, r.code.as_u16(), r.body));
                        }
                    } else if r.code == StatusCode::OK && r.body == json!({ "n": n }) {
                        ok += 1;
                    } else {
                        wrong.push((n, r.code.as_u16(), r.body));
                    }
                }
                (ok, failed, wrong)
            })
        })
        .collect();
    let (mut ok, mut failed, mut wrong) = (0, 0, Vec::new());
    for worker in workers {
        let (o, f, w) = worker.await.unwrap();
        ok += o;
        failed += f;
        wrong.extend(w);
    }
    println!(
        "{} requests in {:?}: {ok} answered 200, {failed} answered 500 with the panic's traceback",
        WORKERS * EACH,
        started.elapsed()
    );
    assert!(
        wrong.is_empty(),
        "{} wrong answers, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );
    assert_eq!(failed, WORKERS * EACH / 10);
    assert_eq!(ok, WORKERS * EACH - WORKERS * EACH / 10);
    // Still serving, on the old connections and on a new one.
    assert_eq!(clients[0].get("/hello").await.unwrap().code, StatusCode::OK);
    assert_eq!(
        server.client().await.get("/boom/7").await.unwrap().code,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_channel_without_the_subsystem_does_not_hold_up_shutdown() {
    let _serial = SERIAL.lock().await;
    // The default grace period, 10 s: nothing is in flight, so shutdown
    // should not wait for any of it.
    let mut server = Server::start(Limits::default());
    let handle = raw_login(server.addr, "alice", &server.keys.alice).await;
    let idle = handle.channel_open_session().await.unwrap();
    let client = server.client().await;
    assert_eq!(client.get("/hello").await.unwrap().code, StatusCode::OK);
    let (server, took) = tokio::task::spawn_blocking(move || {
        let took = server.stop();
        (server, took)
    })
    .await
    .unwrap();
    println!("stopped in {took:?} with an idle session channel open");
    assert!(took < Duration::from_secs(2), "stopping took {took:?}");
    assert!(matches!(client.get("/hello").await, Err(Error::Closed(_))));
    drop((idle, handle, server));
}

/// What one request of the shutdown test got.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Answered(u16),
    Closed,
    Other(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_under_load_answers_every_request_it_took() {
    const WORKERS: usize = 64;
    const CLIENTS: usize = 4;
    const GRACE: Duration = Duration::from_secs(3);
    let _serial = SERIAL.lock().await;
    let mut server = Server::start(Limits {
        shutdown_grace: GRACE,
        ..Limits::default()
    });
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let config = server
            .config(&server.keys.alice)
            .request_timeout(Some(Duration::from_secs(10)));
        clients.push(KorvClient::connect(config).await.unwrap());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let client = clients[w % CLIENTS].clone();
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for i in 0..10_000usize {
                    // 20 to 400 ms, well within the grace period.
                    let ms = 20 + (w * 37 + i * 91) % 381;
                    let tag = format!("{w}-{i}");
                    let outcome = match client.get(&format!("/delay/{ms}/{tag}")).await {
                        Ok(r) if r.code == StatusCode::OK && r.body["tag"] != json!(tag) => {
                            Outcome::Other(format!("wrong body {}", r.body))
                        }
                        Ok(r) => Outcome::Answered(r.code.as_u16()),
                        Err(Error::Closed(_)) => Outcome::Closed,
                        Err(other) => Outcome::Other(other.to_string()),
                    };
                    let closed = outcome == Outcome::Closed;
                    outcomes.push((tag, outcome));
                    if closed || stop.load(Ordering::SeqCst) {
                        break;
                    }
                }
                outcomes
            })
        })
        .collect();
    // Until at least half the workers' requests are running at once.
    let loaded = Instant::now();
    loop {
        let running = {
            let log = server.probes.delays.lock().unwrap();
            log.started.difference(&log.finished).count()
        };
        if running >= WORKERS / 2 {
            break;
        }
        assert!(
            loaded.elapsed() < Duration::from_secs(60),
            "only {running} requests ever ran at once"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Which requests are running right now, taken with shutdown under the
    // lock that handlers take to record themselves.
    let running: HashSet<String> = {
        let log = server.probes.delays.lock().unwrap();
        server.shutdown.shutdown();
        log.started.difference(&log.finished).cloned().collect()
    };
    let stopping = Instant::now();
    let stop_time = tokio::task::spawn_blocking(move || {
        let took = server.stop();
        (server, took)
    });
    // Workers end when their connection closes; the flag is a safety net.
    let safety = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            tokio::time::sleep(GRACE + Duration::from_secs(5)).await;
            stop.store(true, Ordering::SeqCst);
        }
    });
    let mut outcomes: HashMap<String, Outcome> = HashMap::new();
    for worker in workers {
        outcomes.extend(worker.await.unwrap());
    }
    safety.abort();
    let (server, took) = stop_time.await.unwrap();
    let log = server.probes.delays.lock().unwrap();

    let count = |want: &Outcome| outcomes.values().filter(|o| *o == want).count();
    let ok = count(&Outcome::Answered(200));
    let unavailable = count(&Outcome::Answered(503));
    let closed = count(&Outcome::Closed);
    println!(
        "{} requests: {ok} answered 200, {unavailable} answered 503, {closed} failed with \
         'connection closed'; {} running at shutdown; server stopped {took:?} after shutdown \
         (grace {GRACE:?}); all workers done {:?} after it",
        outcomes.len(),
        running.len(),
        stopping.elapsed()
    );
    let other: Vec<_> = outcomes
        .iter()
        .filter(|(_, o)| !matches!(o, Outcome::Answered(200 | 503) | Outcome::Closed))
        .collect();
    assert!(other.is_empty(), "not 200, 503 or closed: {other:?}");
    // Requests that arrived after the shutdown, on connections still
    // finishing others, were answered 503 rather than dropped.
    assert!(
        unavailable > 0,
        "no request arriving after the shutdown was answered 503"
    );
    assert!(
        !stop.load(Ordering::SeqCst),
        "a worker's connection was never closed"
    );
    // Every request whose handler ran got its real answer ...
    for tag in &log.started {
        assert_eq!(
            outcomes.get(tag),
            Some(&Outcome::Answered(200)),
            "request {tag} ran on the server"
        );
    }
    // ... so those running at shutdown did, within the grace period ...
    assert!(
        running.len() >= WORKERS / 2,
        "only {} running at shutdown",
        running.len()
    );
    assert!(running.is_subset(&log.finished));
    // ... and a 503 or a closed connection only for requests that never ran.
    for (tag, outcome) in &outcomes {
        if *outcome != Outcome::Answered(200) {
            assert!(!log.started.contains(tag), "{tag} ran but got {outcome:?}");
        }
    }
    assert!(
        took < GRACE + Duration::from_secs(2),
        "stopping took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_finished_during_shutdown_reaches_the_client_before_the_server_stops() {
    // The answer leaves in many SSH packets, written by the connection's
    // session after the stream has handed them over and ended: the server
    // must not call itself stopped (and its runtime go away) before they
    // are on the wire.
    const KB: usize = 7 * 1024;
    let _serial = SERIAL.lock().await;
    let mut server = Server::start(Limits::default());
    let client = server.client().await;
    let request = tokio::spawn({
        let client = client.clone();
        async move { client.get(&format!("/large/{KB}/last")).await }
    });
    let started = Instant::now();
    while !server
        .probes
        .delays
        .lock()
        .unwrap()
        .started
        .contains("last")
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the handler never ran"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.shutdown.shutdown();
    server.probes.release_large.notify_one();
    let (_server, took) = tokio::task::spawn_blocking(move || {
        let took = server.stop();
        (server, took)
    })
    .await
    .unwrap();
    let answer = request.await.unwrap();
    println!("server stopped {took:?} after the shutdown began");
    let answer = answer.expect("the answer of a request that ran during the shutdown");
    assert_eq!(answer.code, StatusCode::OK, "{:?}", answer.message());
    assert_eq!(answer.body["tag"], "last");
    assert_eq!(
        answer.body["filler"].as_str().map(str::len),
        Some(KB * 1024)
    );
}

// ================================================================ load

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_connections_each_get_their_own_answers() {
    const CONNECTIONS: usize = 1000;
    const EACH: usize = 5;
    const SETUP_AT_ONCE: usize = 64;
    let _serial = SERIAL.lock().await;
    // Two descriptors per connection in this process (client and server
    // side), plus files and the runtime's own.
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let raised = rlimit::increase_nofile_limit(hard.min(4 * CONNECTIONS as u64 + 1024)).unwrap();
    println!("RLIMIT_NOFILE: soft {soft}, hard {hard}; now {raised}");
    assert!(
        raised >= 2 * CONNECTIONS as u64 + 256,
        "{CONNECTIONS} connections need {} open files in this process; RLIMIT_NOFILE allows \
         {raised} (hard limit {hard}): raise the hard limit (ulimit -Hn)",
        2 * CONNECTIONS as u64 + 256
    );
    let connections = CONNECTIONS;
    let server = Server::start(Limits {
        max_connections: CONNECTIONS + 24,
        max_unauthenticated: 2 * SETUP_AT_ONCE,
        ..Limits::default()
    });
    let started = Instant::now();
    let config = server.config(&server.keys.alice);
    let clients: Vec<(KorvClient, Duration)> = futures_util::stream::iter(0..connections)
        .map(|_| {
            // Each connection waits for up to 63 others' handshakes.
            let config = config.clone().connect_timeout(Duration::from_secs(60));
            async move {
                let started = Instant::now();
                let client = KorvClient::connect(config).await.unwrap();
                (client, started.elapsed())
            }
        })
        .buffer_unordered(SETUP_AT_ONCE)
        .collect()
        .await;
    let mut setup: Vec<Duration> = clients.iter().map(|c| c.1).collect();
    let setup_p99 = p99(&mut setup);
    let clients: Vec<KorvClient> = clients.into_iter().map(|c| c.0).collect();
    let connected_in = started.elapsed();
    let server_tasks = server.alive_tasks();

    // All at once: every connection asks who it is, and sends its tokens.
    let requests_started = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(c, client)| {
            let client = client.clone();
            tokio::spawn(async move {
                let whoami = client.get("/whoami");
                let echoes = futures_util::future::join_all((0..EACH).map(|k| {
                    let client = client.clone();
                    async move {
                        let token = format!("{c}-{k}");
                        let r = client
                            .store("/echo", &json!({ "token": token }))
                            .await
                            .unwrap();
                        (token, r.code, r.body)
                    }
                }));
                let (me, echoes) = tokio::join!(whoami, echoes);
                (
                    me.unwrap().body["peer"].as_str().unwrap().to_owned(),
                    echoes,
                )
            })
        })
        .collect();
    let mut peers = HashSet::new();
    let mut answered = 0;
    for task in tasks {
        let (peer, echoes) = task.await.unwrap();
        peers.insert(peer);
        for (token, code, body) in echoes {
            assert_eq!(code, StatusCode::OK);
            assert_eq!(body, json!({ "token": token }), "an answer crossed over");
            answered += 1;
        }
    }
    println!(
        "{connections} connections set up in {connected_in:?} ({SETUP_AT_ONCE} at once, p99 \
         {setup_p99:?} each); \
         server tasks with all connected: {server_tasks}; {answered} echoes answered in {:?}",
        requests_started.elapsed()
    );
    assert_eq!(
        peers.len(),
        connections,
        "distinct client addresses seen by the server"
    );
    assert_eq!(answered, connections * EACH);
}

// ---------------------------------------------------------------- inline answers

/// A channel with the `korv` subsystem, written to by hand, after one
/// round trip: its stream is idle, and the connection answers whole frames
/// itself.
async fn idle_korv_channel(
    server: &Server,
) -> (
    Handle<AnyHost>,
    russh::ChannelReadHalf,
    russh::ChannelWriteHalf<Msg>,
) {
    let handle = raw_login(server.addr, "alice", &server.keys.alice).await;
    let mut channel = handle.channel_open_session().await.unwrap();
    channel.request_subsystem(true, "korv").await.unwrap();
    assert_eq!(reply(&mut channel).await, Reply::Success, "korv");
    let (mut reader, writer) = channel.split();
    send(
        &writer,
        json!({"id": 0, "verb": "GET", "resource": "/hello"}),
    )
    .await;
    assert_eq!(answers_on(&mut reader, 1).await[0]["request_id"], 0);
    (handle, reader, writer)
}

/// Sends `request` as one frame in one channel-data message.
async fn send(writer: &russh::ChannelWriteHalf<Msg>, request: Value) {
    writer.data(&frame(request)[..]).await.unwrap();
}

/// The next `n` answers on a channel's reading half, as JSON, in the order
/// they came.
async fn answers_on(channel: &mut russh::ChannelReadHalf, n: usize) -> Vec<Value> {
    let mut bytes = Vec::new();
    let mut answers = Vec::new();
    let read = async {
        while answers.len() < n {
            match channel.wait().await {
                Some(ChannelMsg::Data { data }) => bytes.extend_from_slice(&data),
                Some(_) => continue,
                None => break,
            }
            while let Some(head) = bytes.get(..4) {
                let len = u32::from_be_bytes(head.try_into().unwrap()) as usize;
                let Some(payload) = bytes.get(4..4 + len) else {
                    break;
                };
                answers.push(serde_json::from_slice(payload).unwrap());
                bytes.drain(..4 + len);
            }
        }
    };
    let within = tokio::time::timeout(Duration::from_secs(10), read).await;
    assert!(
        within.is_ok(),
        "{} of {n} answers within 10 s: {answers:?}",
        answers.len()
    );
    answers
}

fn frame(request: Value) -> Vec<u8> {
    korv_testkit::frame::frame(&request)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_cut_and_joined_across_channel_data_messages_each_get_one_answer() {
    let _serial = SERIAL.lock().await;
    let server = Server::start(Limits::default());
    let (_handle, mut reader, writer) = idle_korv_channel(&server).await;

    let a = frame(json!({"id": 1, "verb": "GET", "resource": "/hello"}));
    let b = frame(json!({"id": 2, "verb": "GET", "resource": "/hello"}));
    let text = "x".repeat(11_000);
    let c = frame(json!({"id": 3, "verb": "STORE", "resource": "/echo", "body": {"text": text}}));
    let d = frame(json!({"id": 4, "verb": "GET", "resource": "/hello"}));
    let e = korv_testkit::frame::frame_bytes(b"");
    let f = frame(json!({"id": 6, "verb": "GET", "resource": "/missing"}));
    // Each message ends inside a frame, or just after one: the frame cut
    // must be read whole from its two parts, once. Read from where the
    // second message starts, B's tail would say "a frame of 10,619 bytes"
    // (0x0000297b), and C makes that many follow.
    assert_eq!(&b[..5], b"\0\0\0\x29{", "B's length is 41");
    let messages = [
        [&a[..], &b[..1]].concat(),
        [&b[1..], &c[..], &d[..2]].concat(),
        d[2..].to_vec(),
        [&e[..], &f[..]].concat(),
    ];
    for message in &messages {
        writer.data(&message[..]).await.unwrap();
    }
    let all = answers_on(&mut reader, 6).await;
    let echoed = all.iter().find(|answer| answer["request_id"] == 3);
    assert_eq!(
        echoed.map(|answer| &answer["body"]["text"]),
        Some(&json!(text))
    );
    let mut got: Vec<(Value, Value)> = all
        .into_iter()
        .map(|answer| (answer["request_id"].clone(), answer["code"].clone()))
        .collect();
    got.sort_by_key(|(id, _)| id.as_i64().unwrap_or(-1));
    assert_eq!(
        got,
        [
            (Value::Null, json!(400)),
            (json!(1), json!(200)),
            (json!(2), json!(200)),
            (json!(3), json!(200)),
            (json!(4), json!(200)),
            (json!(6), json!(404)),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_waits_counts_in_flight_wherever_it_started() {
    let _serial = SERIAL.lock().await;
    // One request in flight at a time: a second one waits for the first.
    let server = Server::start(Limits {
        max_in_flight_per_stream: 1,
        ..Limits::default()
    });
    let (_handle, mut reader, writer) = idle_korv_channel(&server).await;

    // The first waits 200 ms: whoever started it, it is in flight until it
    // answers, and the second, sent after it, is not read before.
    send(
        &writer,
        json!({"id": 1, "verb": "GET", "resource": "/delay/200/slow"}),
    )
    .await;
    send(
        &writer,
        json!({"id": 2, "verb": "GET", "resource": "/hello"}),
    )
    .await;
    let order: Vec<Value> = answers_on(&mut reader, 2)
        .await
        .into_iter()
        .map(|answer| answer["request_id"].clone())
        .collect();
    assert_eq!(
        order,
        [json!(1), json!(2)],
        "the second answered first: both ran at once"
    );
    assert!(
        server
            .probes
            .delays
            .lock()
            .unwrap()
            .finished
            .contains("slow")
    );

    // And the stream is idle again: a third is answered.
    send(
        &writer,
        json!({"id": 3, "verb": "GET", "resource": "/hello"}),
    )
    .await;
    assert_eq!(answers_on(&mut reader, 1).await[0]["code"], 200);
}
