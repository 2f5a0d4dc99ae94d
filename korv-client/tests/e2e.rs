//! End to end against korv-server on 127.0.0.1 over real SSH, with keys made
//! by `ssh-keygen` in each test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use korv_client::{
    ChannelKind, ClientConfig, Error, HostKeyPolicy, IdentityError, KorvClient, StatusCode,
};
use korv_server::routing::{any, get};
use korv_server::{KorvServer, Limits, Request, ShutdownHandle, Verb};
use korv_testkit::keys::{KeyKind, keygen, keygen_with_passphrase, known_hosts_line, public_key};
use serde_json::{Value, json};
use tempfile::TempDir;

fn app(limits: Limits) -> KorvServer {
    let echo = |r: Request| async move {
        json!({"verb": r.verb().as_str(), "resource": r.resource(), "body": r.body_value(), "n": r.header("n")})
    };
    KorvServer::new()
        .limits(limits)
        .route("/echo", any(echo))
        .route(
            "/sleep/{ms}",
            get(|r: Request| async move {
                let ms: u64 = r.param("ms").unwrap().parse().unwrap();
                tokio::time::sleep(Duration::from_millis(ms)).await;
                json!({"slept": ms})
            }),
        )
        .route(
            "/n/{n}",
            get(|r: Request| async move { json!({"n": r.param("n")}) }),
        )
        .route(
            "/parked",
            get(|_r: Request| async {
                PARKED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                PARKED_CHANGED.notify_waiters();
                std::future::pending::<Value>().await
            }),
        )
}

/// `/parked` handlers that started (they never finish); one test uses it.
static PARKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static PARKED_CHANGED: tokio::sync::Notify = tokio::sync::Notify::const_new();

struct Fixture {
    dir: TempDir,
    addr: SocketAddr,
    host_pub: String,
    key: PathBuf,
    shutdown: ShutdownHandle,
}

impl Fixture {
    async fn start(limits: Limits) -> Fixture {
        Fixture::start_with(app(limits)).await
    }

    /// Serves `server` with a fresh host key and client key.
    async fn start_with(server: KorvServer) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let host = keygen(dir.path(), "host", KeyKind::Ed25519);
        let key = keygen(dir.path(), "id_ed25519", KeyKind::Ed25519);
        let authorized = dir.path().join("authorized_keys");
        std::fs::write(&authorized, public_key(&key) + "\n").unwrap();
        let bound = server
            .host_key_file(&host)
            .authorized_keys_file(&authorized)
            .listen("127.0.0.1:0".parse().unwrap())
            .bind()
            .await
            .unwrap();
        let addr = bound.local_addr();
        let shutdown = bound.shutdown_handle();
        tokio::spawn(bound.run());
        Fixture {
            host_pub: public_key(&host),
            dir,
            addr,
            key,
            shutdown,
        }
    }

    fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    fn trust(&self) {
        std::fs::write(
            self.known_hosts(),
            known_hosts_line(self.addr.port(), &self.host_pub),
        )
        .unwrap();
    }

    fn config(&self) -> ClientConfig {
        ClientConfig::new("127.0.0.1")
            .port(self.addr.port())
            .user("alice")
            .identity_file(&self.key)
            .use_agent(false)
            .known_hosts(self.known_hosts())
    }

    async fn client(&self) -> KorvClient {
        self.trust();
        KorvClient::connect(self.config()).await.unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.shutdown();
    }
}

#[tokio::test]
async fn all_four_verbs_round_trip() {
    let fixture = Fixture::start(Limits::default()).await;
    let client = fixture.client().await;
    let r = client.get("/echo").await.unwrap();
    assert_eq!(
        (r.code, r.body["verb"].clone(), r.body["body"].clone()),
        (StatusCode::OK, json!("GET"), Value::Null)
    );
    let r = client.store("/echo", &json!({"a": 1})).await.unwrap();
    assert_eq!(
        (r.body["verb"].clone(), r.body["body"].clone()),
        (json!("STORE"), json!({"a": 1}))
    );
    let r = client.update("/echo", &[1, 2]).await.unwrap();
    assert_eq!(
        (r.body["verb"].clone(), r.body["body"].clone()),
        (json!("UPDATE"), json!([1, 2]))
    );
    let r = client.delete("/echo").await.unwrap();
    assert_eq!(r.body["verb"], json!("DELETE"));
    let mut headers = korv_client::Headers::new();
    headers.insert("n".into(), "7".into());
    let r = client
        .request::<Value>(Verb::Get, "/echo", None, headers)
        .await
        .unwrap();
    assert_eq!(r.body["n"], json!("7"));
    assert_eq!(
        client.get("/nowhere").await.unwrap().code,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_subsystem_channel_works_too() {
    let fixture = Fixture::start(Limits::default()).await;
    fixture.trust();
    let client = KorvClient::connect(fixture.config().channel(ChannelKind::Subsystem))
        .await
        .unwrap();
    assert_eq!(client.get("/echo").await.unwrap().code, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_requests_share_one_client_and_each_gets_its_answer() {
    let fixture = Fixture::start(Limits::default()).await;
    let client = fixture.client().await;
    let tasks: Vec<_> = (0..10_000)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move {
                let r = client.get(&format!("/n/{n}")).await.unwrap();
                assert_eq!(
                    r.body["n"],
                    json!(n.to_string()),
                    "answer matched to its request"
                );
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn strict_refuses_an_unknown_host_with_its_fingerprint() {
    let fixture = Fixture::start(Limits::default()).await;
    let err = KorvClient::connect(fixture.config()).await.err().unwrap();
    let Error::HostKeyUnknown {
        fingerprint, host, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert!(fingerprint.starts_with("SHA256:"));
    assert_eq!(host, &format!("[127.0.0.1]:{}", fixture.addr.port()));
    assert!(err.to_string().contains("accept-new"), "{err}");
}

#[tokio::test]
async fn accept_new_records_the_key_and_strict_then_accepts_it() {
    let fixture = Fixture::start(Limits::default()).await;
    let client = KorvClient::connect(fixture.config().host_key_policy(HostKeyPolicy::AcceptNew))
        .await
        .unwrap();
    assert_eq!(client.get("/echo").await.unwrap().code, StatusCode::OK);
    let text = std::fs::read_to_string(fixture.known_hosts()).unwrap();
    assert!(
        text.contains(&format!("[127.0.0.1]:{}", fixture.addr.port())),
        "{text}"
    );
    KorvClient::connect(fixture.config()).await.unwrap();
}

#[tokio::test]
async fn a_changed_host_key_is_refused_loudly_by_strict_and_accept_new() {
    let fixture = Fixture::start(Limits::default()).await;
    let other = keygen(fixture.dir.path(), "other", KeyKind::Ed25519);
    std::fs::write(
        fixture.known_hosts(),
        format!(
            "# header\n[127.0.0.1]:{} {}\n",
            fixture.addr.port(),
            public_key(&other)
        ),
    )
    .unwrap();
    for policy in [HostKeyPolicy::Strict, HostKeyPolicy::AcceptNew] {
        let err = KorvClient::connect(fixture.config().host_key_policy(policy))
            .await
            .err()
            .unwrap();
        let Error::HostKeyChanged { line, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(*line, 2);
        assert!(err.to_string().contains("HAS CHANGED"), "{err}");
    }
}

#[tokio::test]
async fn a_hashed_known_hosts_entry_is_honoured() {
    let fixture = Fixture::start(Limits::default()).await;
    fixture.trust();
    let status = Command::new("ssh-keygen")
        .arg("-q")
        .arg("-H")
        .arg("-f")
        .arg(fixture.known_hosts())
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(fixture.known_hosts()).unwrap();
    assert!(text.starts_with("|1|"), "{text}");
    KorvClient::connect(fixture.config()).await.unwrap();
}

#[tokio::test]
async fn a_plain_entry_for_port_22_does_not_vouch_for_another_port() {
    let fixture = Fixture::start(Limits::default()).await;
    std::fs::write(
        fixture.known_hosts(),
        format!("127.0.0.1 {}\n", fixture.host_pub),
    )
    .unwrap();
    let err = KorvClient::connect(fixture.config()).await.err().unwrap();
    assert!(matches!(err, Error::HostKeyUnknown { .. }), "{err}");
}

#[tokio::test]
async fn a_passphrase_protected_key_works_with_its_passphrase() {
    let fixture = Fixture::start(Limits::default()).await;
    let locked = keygen_with_passphrase(fixture.dir.path(), "locked", KeyKind::Ed25519, "s3cret");
    let authorized = fixture.dir.path().join("authorized_keys");
    std::fs::write(&authorized, public_key(&locked) + "\n").unwrap();
    fixture.trust();
    let only_locked = ClientConfig::new("127.0.0.1")
        .port(fixture.addr.port())
        .user("alice")
        .use_agent(false)
        .known_hosts(fixture.known_hosts())
        .identity_file(&locked);
    let err = KorvClient::connect(only_locked.clone())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::Identity { path, reason: IdentityError::Encrypted } if path.ends_with("locked"))
            && std::error::Error::source(&err)
                .is_some_and(|reason| reason.to_string().contains("passphrase")),
        "{err}"
    );
    let client = KorvClient::connect(only_locked.passphrase("s3cret"))
        .await
        .unwrap();
    assert_eq!(client.get("/echo").await.unwrap().code, StatusCode::OK);
}

#[tokio::test]
async fn an_rsa_4096_key_signs_with_rsa_sha2() {
    let fixture = Fixture::start(Limits::default()).await;
    let rsa = keygen(fixture.dir.path(), "id_rsa", KeyKind::Rsa(4096));
    std::fs::write(
        fixture.dir.path().join("authorized_keys"),
        public_key(&rsa) + "\n",
    )
    .unwrap();
    fixture.trust();
    let config = ClientConfig::new("127.0.0.1")
        .port(fixture.addr.port())
        .use_agent(false)
        .known_hosts(fixture.known_hosts())
        .identity_file(&rsa);
    let client = KorvClient::connect(config).await.unwrap();
    assert_eq!(client.get("/echo").await.unwrap().code, StatusCode::OK);
}

#[tokio::test]
async fn an_unauthorized_key_is_refused_naming_the_keys_tried() {
    let fixture = Fixture::start(Limits::default()).await;
    fixture.trust();
    let stranger = keygen(fixture.dir.path(), "stranger", KeyKind::Ed25519);
    let config = ClientConfig::new("127.0.0.1")
        .port(fixture.addr.port())
        .use_agent(false)
        .known_hosts(fixture.known_hosts())
        .identity_file(&stranger);
    let err = KorvClient::connect(config).await.err().unwrap();
    assert!(
        matches!(err, Error::AuthRefused { ref tried, .. } if tried.iter().any(|key| key.contains("stranger"))),
        "{err}"
    );
}

#[tokio::test]
async fn the_ssh_agent_authenticates() {
    let fixture = Fixture::start(Limits::default()).await;
    fixture.trust();
    let socket = fixture.dir.path().join("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&socket)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !socket.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "ssh-agent did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let added = Command::new("ssh-add")
        .arg("-q")
        .arg(&fixture.key)
        .env("SSH_AUTH_SOCK", &socket)
        .status()
        .unwrap();
    assert!(added.success());
    let config = ClientConfig::new("127.0.0.1")
        .port(fixture.addr.port())
        .default_identities(false)
        .agent_socket(&socket)
        .known_hosts(fixture.known_hosts());
    let result = KorvClient::connect(config).await;
    agent.kill().unwrap();
    let _ = agent.wait();
    assert_eq!(
        result.unwrap().get("/echo").await.unwrap().code,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_request_past_its_timeout_fails_and_its_late_answer_is_dropped() {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    // The test plays the server on an in-memory stream, so it knows when the
    // late answer is on the wire and what follows it.
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let client = KorvClient::over_stream(
        theirs,
        ClientConfig::new("scripted").request_timeout(Some(Duration::from_millis(200))),
    );
    let (reader, mut writer) = tokio::io::split(ours);
    let mut requests = tokio_util::codec::FramedRead::new(reader, korv_proto::KorvCodec::new());
    let mut next_request = async || -> Value {
        let frame = tokio::time::timeout(Duration::from_secs(30), requests.next())
            .await
            .expect("a request")
            .expect("the stream is open")
            .unwrap();
        let korv_proto::Frame::Payload(payload) = frame else {
            panic!("not a request: {frame:?}")
        };
        serde_json::from_slice(&payload).unwrap()
    };
    let answer = |id: &Value, body: Value| {
        korv_testkit::frame::frame(&json!({"request_id": id, "code": 200, "body": body}))
    };

    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.get("/slow").await }
    });
    let first = next_request().await;
    let err = slow.await.unwrap().err().unwrap();
    assert!(matches!(err, Error::Timeout(_)), "{err}");
    // The late answer goes on the wire first; the next request's answer
    // follows it on the same stream.
    writer
        .write_all(&answer(&first["id"], json!("late")))
        .await
        .unwrap();
    let next = tokio::spawn({
        let client = client.clone();
        async move { client.get("/next").await }
    });
    let second = next_request().await;
    assert_eq!(second["resource"], json!("/next"));
    assert_ne!(second["id"], first["id"], "a fresh id for the next request");
    writer
        .write_all(&answer(&second["id"], json!("own")))
        .await
        .unwrap();
    let r = next.await.unwrap().unwrap();
    assert_eq!(
        r.body,
        json!("own"),
        "the next request got its own answer, read after the late one"
    );
    // The late answer closed nothing: the connection still serves.
    let third = tokio::spawn(async move { client.get("/third").await });
    let request = next_request().await;
    writer
        .write_all(&answer(&request["id"], json!("third")))
        .await
        .unwrap();
    assert_eq!(third.await.unwrap().unwrap().body, json!("third"));
}

#[tokio::test]
async fn a_server_that_vanishes_fails_requests_in_flight_promptly() {
    // The server runs on a runtime of its own, which is then dropped: its
    // sockets close without a goodbye.
    let dir = tempfile::tempdir().unwrap();
    let host = keygen(dir.path(), "host", KeyKind::Ed25519);
    let key = keygen(dir.path(), "id", KeyKind::Ed25519);
    std::fs::write(dir.path().join("ak"), public_key(&key)).unwrap();
    let (addr, kill_tx, thread) =
        server_thread("127.0.0.1:0".parse().unwrap(), host, dir.path().join("ak"));
    let config = ClientConfig::new("127.0.0.1")
        .port(addr.port())
        .identity_file(&key)
        .use_agent(false)
        .host_key_policy(HostKeyPolicy::InsecureAcceptAny)
        .request_timeout(None);
    let client = KorvClient::connect(config).await.unwrap();
    let in_flight: Vec<_> = (0..20)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.get("/parked").await })
        })
        .collect();
    // Until all 20 are running on the server.
    loop {
        let changed = PARKED_CHANGED.notified();
        if PARKED.load(std::sync::atomic::Ordering::SeqCst) >= 20 {
            break;
        }
        tokio::time::timeout(Duration::from_secs(30), changed)
            .await
            .expect("the requests reach their handlers");
    }
    let stopped = Instant::now();
    kill_tx.send(()).unwrap();
    thread.join().unwrap();
    for task in in_flight {
        let err = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("failed promptly")
            .unwrap()
            .err()
            .unwrap();
        assert!(matches!(err, Error::Closed(_)), "{err}");
    }
    assert!(stopped.elapsed() < Duration::from_secs(5));
    assert!(matches!(
        client.get("/echo").await.err().unwrap(),
        Error::Closed(_)
    ));
}

#[tokio::test]
async fn the_blocking_client_works_from_a_plain_thread() {
    let fixture = Fixture::start(Limits::default()).await;
    fixture.trust();
    let config = fixture.config();
    let answers = tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || {
            let client = korv_client::blocking::KorvClient::connect(config).unwrap();
            let get = client.get("/echo").unwrap();
            let store = client.store("/echo", &json!({"x": 1})).unwrap();
            let update = client.update("/echo", &json!(2)).unwrap();
            let delete = client.delete("/echo").unwrap();
            [get, store, update, delete].map(|r| r.body["verb"].as_str().unwrap().to_owned())
        })
        .join()
        .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(answers, ["GET", "STORE", "UPDATE", "DELETE"]);
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error_naming_the_address() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let config = ClientConfig::new("127.0.0.1")
        .port(port)
        .use_agent(false)
        .default_identities(false);
    let err = KorvClient::connect(config).await.err().unwrap();
    let Error::Connect { addr, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(addr, &format!("127.0.0.1:{port}"));
}

/// Runs a server on a runtime of its own thread at `addr` until `kill` fires.
fn server_thread(
    addr: SocketAddr,
    host: PathBuf,
    authorized: PathBuf,
) -> (
    SocketAddr,
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        // A port just given up may take a moment to be free again.
        let started = Instant::now();
        let bound = loop {
            let server = app(Limits::default())
                .host_key_file(&host)
                .authorized_keys_file(&authorized)
                .listen(addr);
            match runtime.block_on(server.bind()) {
                Ok(bound) => break bound,
                Err(err) if started.elapsed() < Duration::from_secs(5) => {
                    eprintln!("retrying bind: {err}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(err) => panic!("{err}"),
            }
        };
        addr_tx.send(bound.local_addr()).unwrap();
        runtime.spawn(bound.run());
        let _ = kill_rx.recv();
        // Drops every task and socket without an SSH goodbye, and waits for it.
        runtime.shutdown_timeout(Duration::from_secs(2));
    });
    (addr_rx.recv().unwrap(), kill_tx, thread)
}

#[tokio::test]
async fn with_reconnect_on_the_next_request_after_the_server_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let host = keygen(dir.path(), "host", KeyKind::Ed25519);
    let key = keygen(dir.path(), "id", KeyKind::Ed25519);
    let ak = dir.path().join("ak");
    std::fs::write(&ak, public_key(&key)).unwrap();
    let (addr, kill, thread) =
        server_thread("127.0.0.1:0".parse().unwrap(), host.clone(), ak.clone());
    let config = ClientConfig::new("127.0.0.1")
        .port(addr.port())
        .identity_file(&key)
        .use_agent(false)
        .host_key_policy(HostKeyPolicy::InsecureAcceptAny)
        .reconnect(true);
    let client = KorvClient::connect(config).await.unwrap();
    assert_eq!(client.get("/echo").await.unwrap().code, StatusCode::OK);
    kill.send(()).unwrap();
    thread.join().unwrap();
    let started = Instant::now();
    while client.get("/echo").await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the client never noticed the server went away"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, kill, thread) = server_thread(addr, host, ak);
    assert_eq!(client.get("/echo").await.unwrap().code, StatusCode::OK);
    kill.send(()).unwrap();
    thread.join().unwrap();
}

/// `/hold`'s handler signals here that it started ...
static HOLD_STARTED: tokio::sync::Notify = tokio::sync::Notify::const_new();
/// ... and answers once a permit is added here.
static HOLD_RELEASE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

#[tokio::test]
async fn graceful_shutdown_over_ssh_finishes_in_flight_requests_then_closes() {
    let fixture = Fixture::start_with(
        app(Limits {
            shutdown_grace: Duration::from_secs(60),
            ..Limits::default()
        })
        .route(
            "/hold",
            get(|_r: Request| async {
                HOLD_STARTED.notify_one();
                HOLD_RELEASE.acquire().await.unwrap().forget();
                json!("held")
            }),
        ),
    )
    .await;
    let client = fixture.client().await;
    let held = {
        let client = client.clone();
        tokio::spawn(async move { client.get("/hold").await })
    };
    HOLD_STARTED.notified().await;
    fixture.shutdown.shutdown();
    // While the held request runs, the stream stays open, and a request
    // arriving after the shutdown is answered 503.
    let late = client.get("/echo").await.unwrap();
    assert_eq!(late.code, StatusCode::SERVICE_UNAVAILABLE, "{}", late.body);
    assert!(late.body["message"].is_string(), "a 503 has a message");
    HOLD_RELEASE.add_permits(1);
    let answer = held.await.unwrap().unwrap();
    assert_eq!(
        (answer.code, answer.body.clone()),
        (StatusCode::OK, json!("held"))
    );
    // With nothing left in flight the server closes the connection: every
    // request from then on fails as closed, after at most 503s.
    let started = Instant::now();
    loop {
        match client.get("/echo").await {
            Err(Error::Closed(_)) => break,
            Ok(r) => assert_eq!(
                r.code,
                StatusCode::SERVICE_UNAVAILABLE,
                "only 503 while closing"
            ),
            Err(other) => panic!("{other}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the server did not close the connection"
        );
        tokio::task::yield_now().await;
    }
    // No new connections are accepted either.
    assert!(KorvClient::connect(fixture.config()).await.is_err());
}
