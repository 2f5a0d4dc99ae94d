//! Before authentication, no one can lock everyone else out: attacks from
//! some loopback addresses (127.0.0.2 and up) while a legitimate client from
//! 127.0.0.1 connects and asks `GET /hello`. Each attack must leave the
//! legitimate client in on the first try in at least 4 of 5 attempts, each
//! within 2 s; after it, every unauthenticated place is free again.
//!
//! The server runs on a runtime of its own thread, the attackers on another,
//! the legitimate client on the test's: none can starve the others of
//! scheduling. Every attack is bounded in connections and in time. The tests
//! take one lock and so run one at a time, as they measure latency.
//! Loopback is exempt from per-source limits and penalties by default; these
//! servers exempt nothing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use korv_client::{ClientConfig, KorvClient, StatusCode};
use korv_server::routing::get;
use korv_server::{AdmissionMonitor, AdmissionStats, KorvServer, Limits, Request, ShutdownHandle};
use korv_testkit::keys::{KeyKind, keygen, known_hosts_line, public_key};
use russh::client::AuthResult;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use serde_json::json;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// One test at a time: see the module documentation.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The legitimate client's attempts, and how many must succeed.
const ATTEMPTS: usize = 5;
const MUST_SUCCEED: usize = 4;
/// The longest an attempt (connect, authenticate, `GET /hello`) may take.
const PROMPT: Duration = Duration::from_secs(2);
/// The longest any attack runs.
const ATTACK_BOUND: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- fixture

/// A server on a runtime of its own thread, stopped on drop. Alice's key is
/// authorized; the stranger's is not.
struct Server {
    dir: TempDir,
    addr: SocketAddr,
    alice: PathBuf,
    stranger: PathBuf,
    limits: Limits,
    monitor: AdmissionMonitor,
    runtime: tokio::runtime::Handle,
    shutdown: ShutdownHandle,
    thread: Option<std::thread::JoinHandle<()>>,
    /// This process's resident memory once the server was up.
    rss_at_start: u64,
}

impl Server {
    fn start(limits: Limits) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let host = keygen(dir.path(), "host", KeyKind::Ed25519);
        let alice = keygen(dir.path(), "alice", KeyKind::Ed25519);
        let stranger = keygen(dir.path(), "stranger", KeyKind::Ed25519);
        let authorized = dir.path().join("authorized_keys");
        std::fs::write(&authorized, format!("{}\n", public_key(&alice))).unwrap();
        let server = KorvServer::new()
            .limits(limits.clone())
            .route(
                "/hello",
                get(|_r: Request| async { json!({"msg": "Hello World!"}) }),
            )
            .host_key_file(&host)
            .authorized_keys_file(authorized)
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
                bound.admission_monitor(),
                bound.shutdown_handle(),
                runtime.handle().clone(),
            ))
            .unwrap();
            let result = runtime.block_on(bound.run());
            runtime.shutdown_timeout(Duration::from_secs(2));
            result.unwrap();
        });
        let (addr, monitor, shutdown, runtime) = rx.recv().unwrap();
        std::fs::write(
            dir.path().join("known_hosts"),
            known_hosts_line(addr.port(), &public_key(&host)),
        )
        .unwrap();
        Server {
            dir,
            addr,
            alice,
            stranger,
            limits,
            monitor,
            runtime,
            shutdown,
            thread: Some(thread),
            rss_at_start: rss_bytes(),
        }
    }

    fn stats(&self) -> AdmissionStats {
        self.monitor.stats()
    }

    /// Connects as alice from 127.0.0.1 and asks `GET /hello`; returns how
    /// long it took, or what went wrong.
    async fn legitimate_attempt(&self) -> Result<Duration, String> {
        let config = ClientConfig::new("127.0.0.1")
            .port(self.addr.port())
            .user("alice")
            .identity_file(&self.alice)
            .use_agent(false)
            .known_hosts(self.dir.path().join("known_hosts"));
        let started = Instant::now();
        let attempt = async {
            let client = KorvClient::connect(config)
                .await
                .map_err(|e| e.to_string())?;
            let answer = client.get("/hello").await.map_err(|e| e.to_string())?;
            if answer.code == StatusCode::OK {
                Ok(())
            } else {
                Err(format!("answered {}", answer.code))
            }
        };
        match tokio::time::timeout(PROMPT, attempt).await {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(format!("no answer within {PROMPT:?}")),
        }
    }

    /// Waits up to `limit` for `condition` on the admission counters;
    /// returns the last counters.
    async fn until(
        &self,
        limit: Duration,
        condition: impl Fn(&AdmissionStats) -> bool,
    ) -> AdmissionStats {
        let started = Instant::now();
        loop {
            let stats = self.stats();
            if condition(&stats) || started.elapsed() > limit {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

/// The resident set size of this process (server, attackers and client),
/// from `/proc/self/status`.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// The most this process's resident memory may grow during an attack: the
/// attackers' runtime and sockets, the server's bounded places and tasks.
const RSS_GROWTH: u64 = 64 * 1024 * 1024;

/// The limits under test: the defaults, with no exempt network.
fn limits() -> Limits {
    Limits {
        exempt_networks: Vec::new(),
        ..Limits::default()
    }
}

/// Source address `127.0.0.n`.
fn source(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// A TCP connection to `addr` from `from`.
async fn connect_from(from: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(addr).await
}

/// Reads until the server closes `socket` or `stop` fires; returns whether
/// the server sent its SSH version (a refused connection gets nothing).
async fn hold(socket: &mut TcpStream, stop: &CancellationToken) -> bool {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            read = socket.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            },
            () = stop.cancelled() => break,
        }
    }
    got.starts_with(b"SSH-2.0-")
}

// ---------------------------------------------------------------- attacks

/// An attack running on a runtime of its own thread until stopped (or
/// [`ATTACK_BOUND`]).
struct Attack {
    stop: CancellationToken,
    /// Connections the attackers opened.
    connections: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Attack {
    /// Runs `tasks` attacker tasks, each made by `task(i, stop, connections)`.
    fn start<F, Fut>(tasks: usize, task: F) -> Attack
    where
        F: Fn(usize, CancellationToken, Arc<AtomicUsize>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let connections = Arc::new(AtomicUsize::new(0));
        let (stop2, connections2) = (stop.clone(), Arc::clone(&connections));
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("attacker")
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let bound = stop2.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(ATTACK_BOUND).await;
                    bound.cancel();
                });
                let handles: Vec<_> = (0..tasks)
                    .map(|i| tokio::spawn(task(i, stop2.clone(), Arc::clone(&connections2))))
                    .collect();
                for handle in handles {
                    let _ = handle.await;
                }
            });
            // Dropping the runtime closes every attacker socket.
        });
        Attack {
            stop,
            connections,
            thread: Some(thread),
        }
    }

    fn is_running(&self) -> bool {
        !self.stop.is_cancelled() && self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the attack and closes its connections; returns how many it opened.
    fn stop(mut self) -> usize {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An attacker task: from `from`, opens a connection, keeps it open sending
/// nothing until the server closes it, and opens another; at most `max`.
async fn silent(
    from: IpAddr,
    addr: SocketAddr,
    max: usize,
    stop: CancellationToken,
    connections: Arc<AtomicUsize>,
) {
    for _ in 0..max {
        if stop.is_cancelled() {
            return;
        }
        let mut admitted = false;
        if let Ok(mut socket) = connect_from(from, addr).await {
            connections.fetch_add(1, Ordering::SeqCst);
            admitted = hold(&mut socket, &stop).await;
        }
        // Paced, so that the attack holds connections rather than floods:
        // soon after a connection the server admitted, later after a refusal.
        let pause = if admitted { 20 } else { 250 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

// ---------------------------------------------------------------- the check

/// What the legitimate client saw during an attack, and the server after it.
struct Outcome {
    /// Per attempt: how long it took, or what went wrong.
    attempts: Vec<Result<Duration, String>>,
    /// The counters while the attack ran (the most places in use seen) and
    /// after it, once every place was free.
    most_unauthenticated: usize,
    most_tracked: usize,
    most_tasks: usize,
    /// The most this process's resident memory grew.
    most_rss_growth: u64,
    after: AdmissionStats,
    connections: usize,
}

/// Waits for the attack to have opened `opened` connections, makes the
/// legitimate client's attempts while it runs, stops it, and waits for every
/// place to be free; checks what every attack must leave true.
async fn under_attack(server: &Server, attack: Attack, opened: usize) -> Outcome {
    let started = Instant::now();
    while attack.connections.load(Ordering::SeqCst) < opened {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the attack opened only {} connections in 10 s",
            attack.connections.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let baseline_tasks = server.runtime.metrics().num_alive_tasks();
    let mut attempts = Vec::new();
    let mut most_unauthenticated = 0;
    let mut most_tracked = 0;
    let mut most_tasks = baseline_tasks;
    let mut most_rss_growth = 0;
    for _ in 0..ATTEMPTS {
        assert!(attack.is_running(), "the attack ended before the attempts");
        attempts.push(server.legitimate_attempt().await);
        // Spread the attempts over the attack, and sample the server.
        for _ in 0..10 {
            let stats = server.stats();
            most_unauthenticated = most_unauthenticated.max(stats.unauthenticated);
            most_tracked = most_tracked.max(stats.tracked_sources);
            most_tasks = most_tasks.max(server.runtime.metrics().num_alive_tasks());
            most_rss_growth = most_rss_growth.max(rss_bytes().saturating_sub(server.rss_at_start));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(attack.is_running(), "the attack ended before the attempts");
    let connections = attack.stop();
    // Every place frees once its connection ends, and at the latest at the
    // server's deadlines: a connection that sent its version, or a
    // legitimate attempt given up on mid-handshake on a loaded machine, may
    // hold its place until the authentication deadline. A leaked place
    // outlives them.
    let deadlines = server
        .limits
        .version_timeout
        .max(server.limits.auth_timeout);
    let after = server
        .until(deadlines + Duration::from_secs(2), |s| {
            s.unauthenticated == 0 && s.sources == 0
        })
        .await;
    let outcome = Outcome {
        attempts,
        most_unauthenticated,
        most_tracked,
        most_tasks,
        most_rss_growth,
        after,
        connections,
    };
    outcome.report();
    outcome.check(&server.limits);
    outcome
}

impl Outcome {
    fn report(&self) {
        println!(
            "attempts: {:?}; attack: {} connections; most unauthenticated {}, tracked \
             sources {}, server tasks {}, RSS growth {} KiB; after: {:?}",
            self.attempts,
            self.connections,
            self.most_unauthenticated,
            self.most_tracked,
            self.most_tasks,
            self.most_rss_growth / 1024,
            self.after
        );
    }

    fn check(&self, limits: &Limits) {
        let succeeded = self.attempts.iter().filter(|a| a.is_ok()).count();
        assert!(
            succeeded >= MUST_SUCCEED,
            "{succeeded} of {ATTEMPTS} prompt attempts: {:?}",
            self.attempts
        );
        // Every place free again: none leaked, and the counts never went
        // below zero (they are unsigned: they would wrap to huge).
        assert_eq!(
            (self.after.unauthenticated, self.after.sources),
            (0, 0),
            "places still taken after the attack and the server's deadlines: {:?} \
             (attempts: {:?})",
            self.after,
            self.attempts
        );
        // Memory stays bounded during the attack: places, penalty records
        // and the server's tasks (one per connection, one more per SSH
        // session) are all capped.
        assert!(self.most_unauthenticated <= limits.max_unauthenticated);
        assert!(self.most_tracked <= 16_384);
        assert!(
            self.most_tasks <= 2 * limits.max_unauthenticated + 16,
            "{} server tasks",
            self.most_tasks
        );
        assert!(
            self.most_rss_growth <= RSS_GROWTH,
            "resident memory grew by {} KiB",
            self.most_rss_growth / 1024
        );
    }
}

// ================================================================ the attacks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_holding_hundreds_of_silent_connections_does_not_lock_others_out() {
    let _serial = SERIAL.lock().await;
    let server = Server::start(limits());
    let addr = server.addr;
    let attack = Attack::start(300, move |_, stop, connections| {
        silent(source(2), addr, 200, stop, connections)
    });
    let outcome = under_attack(&server, attack, 300).await;
    // The attacker held at most its per-source share.
    assert!(outcome.most_unauthenticated <= server.limits.max_unauthenticated_per_source + 1);
    assert!(outcome.after.refused_per_source >= 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dozens_of_sources_holding_a_dozen_silent_connections_each_do_not_lock_others_out() {
    const SOURCES: usize = 36;
    const EACH: usize = 12;
    let _serial = SERIAL.lock().await;
    let server = Server::start(limits());
    let addr = server.addr;
    let attack = Attack::start(SOURCES * EACH, move |i, stop, connections| {
        let from = source(10 + u8::try_from(i / EACH).unwrap());
        silent(from, addr, 200, stop, connections)
    });
    let outcome = under_attack(&server, attack, SOURCES * EACH).await;
    assert_eq!(outcome.most_unauthenticated, 64, "every place was taken");
    assert!(outcome.after.evicted > 0, "{:?}", outcome.after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_connecting_and_dropping_as_fast_as_it_can_does_not_lock_others_out() {
    const TASKS: usize = 4;
    const MAX: usize = 200_000;
    let _serial = SERIAL.lock().await;
    let server = Server::start(limits());
    let addr = server.addr;
    let attack = Attack::start(TASKS, move |_, stop, connections| async move {
        for _ in 0..MAX / TASKS {
            if stop.is_cancelled() {
                return;
            }
            if let Ok(socket) = connect_from(source(3), addr).await {
                connections.fetch_add(1, Ordering::SeqCst);
                // Reset, not closed: no port left waiting (TIME_WAIT).
                let _ = socket.set_zero_linger();
            }
            // Yield, so that the stop signal and the timer are seen.
            tokio::task::yield_now().await;
        }
        // Out of connections before the test is done: keep the attack
        // "running" (idle) until it is stopped.
        stop.cancelled().await;
    });
    let outcome = under_attack(&server, attack, 500).await;
    assert!(outcome.after.penalties >= 1);
    assert!(outcome.after.refused_penalised > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_sending_its_version_then_a_byte_a_second_does_not_lock_others_out() {
    let _serial = SERIAL.lock().await;
    let server = Server::start(limits());
    let addr = server.addr;
    let attack = Attack::start(20, move |_, stop, connections| async move {
        for _ in 0..50 {
            if stop.is_cancelled() {
                return;
            }
            let Ok(socket) = connect_from(source(4), addr).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            connections.fetch_add(1, Ordering::SeqCst);
            let (mut read, mut write) = socket.into_split();
            let dribble = async {
                if write.write_all(b"SSH-2.0-slowloris\r\n").await.is_err() {
                    return;
                }
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if write.write_all(&[0]).await.is_err() {
                        return;
                    }
                }
            };
            let mut sink = Vec::new();
            tokio::select! {
                _ = read.read_to_end(&mut sink) => {}
                () = dribble => {}
                () = stop.cancelled() => return,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let outcome = under_attack(&server, attack, 20).await;
    assert!(outcome.most_unauthenticated <= server.limits.max_unauthenticated_per_source + 1);
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_failed_authentications_with_penalties_on_do_not_lock_others_out() {
    const AUTHENTICATIONS: usize = 1000;
    const AT_ONCE: usize = 32;
    let _serial = SERIAL.lock().await;
    let server = Server::start(limits());
    let addr = server.addr;
    let stranger = Arc::new(russh::keys::load_secret_key(&server.stranger, None).unwrap());
    let failed = Arc::new(AtomicUsize::new(0));
    let failed2 = Arc::clone(&failed);
    let attack = Attack::start(AT_ONCE, move |_, stop, connections| {
        let key: Arc<PrivateKey> = Arc::clone(&stranger);
        let failed = Arc::clone(&failed2);
        async move {
            let config = Arc::new(russh::client::Config::default());
            while failed.load(Ordering::SeqCst) < AUTHENTICATIONS && !stop.is_cancelled() {
                let Ok(socket) = connect_from(source(5), addr).await else {
                    continue;
                };
                connections.fetch_add(1, Ordering::SeqCst);
                let attempt = async {
                    let mut handle =
                        russh::client::connect_stream(Arc::clone(&config), socket, AnyHost)
                            .await
                            .ok()?;
                    let key = PrivateKeyWithHashAlg::new(Arc::clone(&key), None);
                    handle.authenticate_publickey("mallory", key).await.ok()
                };
                let result = tokio::select! {
                    result = attempt => result,
                    () = stop.cancelled() => return,
                };
                match result {
                    Some(AuthResult::Failure { .. }) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    Some(AuthResult::Success) => panic!("the stranger got in"),
                    // Refused before authenticating: try again a little later.
                    None => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
            stop.cancelled().await;
        }
    });
    let outcome = under_attack(&server, attack, 2 * AT_ONCE).await;
    let failed = failed.load(Ordering::SeqCst);
    println!("failed authentications: {failed}");
    assert!(outcome.after.penalties >= 1);
    assert!(outcome.after.auth_failed >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_penalised_source_is_refused_then_recovers_after_its_penalty() {
    const BASE: Duration = Duration::from_millis(200);
    let _serial = SERIAL.lock().await;
    let server = Server::start(Limits {
        penalty_base: BASE,
        penalty_max: Duration::from_secs(2),
        ..limits()
    });
    // Four connections that close without an SSH version: the fourth takes
    // the debt past 3 x BASE.
    for n in 1..=4 {
        let socket = connect_from(source(6), server.addr).await.unwrap();
        drop(socket);
        let stats = server
            .until(Duration::from_secs(2), |s| s.no_version == n)
            .await;
        assert_eq!(stats.no_version, n);
    }
    assert_eq!(server.stats().penalised_sources, 1);
    let penalised = Instant::now();
    // Refused: closed at once, without the server's version.
    let mut socket = connect_from(source(6), server.addr).await.unwrap();
    assert!(!hold(&mut socket, &CancellationToken::new()).await);
    assert_eq!(server.stats().refused_penalised, 1);
    // Another address is not affected.
    server.legitimate_attempt().await.unwrap();
    // Once the debt has drained (4 x BASE), the source is admitted again.
    let recovered = loop {
        let mut socket = connect_from(source(6), server.addr).await.unwrap();
        let mut banner = [0u8; 8];
        let read =
            tokio::time::timeout(Duration::from_secs(1), socket.read_exact(&mut banner)).await;
        if matches!(read, Ok(Ok(_))) && &banner == b"SSH-2.0-" {
            break penalised.elapsed();
        }
        assert!(
            penalised.elapsed() < Duration::from_secs(3),
            "still refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("penalised source admitted again after {recovered:?}");
    assert!(recovered >= 3 * BASE, "recovered after {recovered:?}");
    assert_eq!(server.stats().penalised_sources, 0);
}
