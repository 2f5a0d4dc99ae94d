//! Watches through the client, against korv-server on 127.0.0.1 over real
//! SSH: events as a stream beside requests on one connection, the final
//! code, `UNWATCH` on drop and on cancel, refusals, and the blocking
//! iterator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures_util::{StreamExt, stream};
use korv_client::{ClientConfig, Error, KorvClient, StatusCode};
use korv_server::routing::{get, store, watch};
use korv_server::{KorvServer, Limits, Request, ShutdownHandle};
use korv_testkit::keys::{KeyKind, keygen, known_hosts_line, public_key};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::mpsc;

/// Watchers of `/events`; `STORE /events` hands its body to each, in one
/// order for all.
#[derive(Clone, Default)]
struct Hub {
    watchers: Arc<Mutex<Vec<mpsc::UnboundedSender<Value>>>>,
}

fn app(hub: Hub, limits: Limits) -> KorvServer<Hub> {
    KorvServer::with_state(hub)
        .limits(limits)
        .route("/hello", get(|_r: Request| async { json!("hi") }))
        .route(
            "/events",
            store(|r: Request, hub: Hub| async move {
                let mut watchers = hub.watchers.lock().unwrap();
                let body = r.body_value();
                watchers.retain(|w| w.send(body.clone()).is_ok());
                (201, json!({"watchers": watchers.len()}))
            })
            .watch(|_r: Request, hub: Hub| async move {
                let (tx, mut rx) = mpsc::unbounded_channel();
                hub.watchers.lock().unwrap().push(tx);
                Ok::<_, korv_server::Error>(stream::poll_fn(move |cx| rx.poll_recv(cx)))
            }),
        )
        .route(
            "/count/{n}",
            watch(|r: Request| async move {
                let n: u64 = r.param("n").unwrap().parse().unwrap();
                Ok::<_, korv_server::Error>(stream::iter((1..=n).map(|i| json!(i))))
            }),
        )
}

struct Fixture {
    _dir: TempDir,
    addr: SocketAddr,
    key: PathBuf,
    known_hosts: PathBuf,
    shutdown: ShutdownHandle,
}

impl Fixture {
    async fn start(server: KorvServer<Hub>) -> Fixture {
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
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(
            &known_hosts,
            known_hosts_line(addr.port(), &public_key(&host)),
        )
        .unwrap();
        Fixture {
            _dir: dir,
            addr,
            key,
            known_hosts,
            shutdown,
        }
    }

    fn config(&self) -> ClientConfig {
        ClientConfig::new("127.0.0.1")
            .port(self.addr.port())
            .user("alice")
            .identity_file(&self.key)
            .use_agent(false)
            .known_hosts(&self.known_hosts)
    }

    async fn client(&self) -> KorvClient {
        KorvClient::connect(self.config()).await.unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.shutdown();
    }
}

#[tokio::test]
async fn a_watch_yields_its_events_then_ends_with_the_final_code() {
    let fixture = Fixture::start(app(Hub::default(), Limits::default())).await;
    let client = fixture.client().await;
    let mut counting = client.watch("/count/3", None::<&()>).await.unwrap();
    let mut events = Vec::new();
    while let Some(event) = counting.next().await {
        events.push(event.unwrap());
    }
    assert_eq!(events, [json!(1), json!(2), json!(3)]);
    assert_eq!(counting.end_code(), Some(StatusCode::OK));
    assert!(
        counting.next().await.is_none(),
        "an ended watch stays ended"
    );
}

#[tokio::test]
async fn ten_thousand_events_reach_64_watchers_on_one_connection_none_lost_or_doubled() {
    let hub = Hub::default();
    let fixture = Fixture::start(app(hub.clone(), Limits::default())).await;
    let client = fixture.client().await;
    let watchers = 64;
    let events: u64 = 10_000;
    let mut readers = Vec::new();
    for _ in 0..watchers {
        let mut watch = client.watch("/events", None::<&()>).await.unwrap();
        readers.push(tokio::spawn(async move {
            let mut seen = Vec::with_capacity(events as usize);
            while seen.len() < events as usize {
                let event = watch.next().await.expect("the watch goes on").unwrap();
                seen.push(event["n"].as_u64().unwrap());
            }
            seen
        }));
    }
    // The writer stores on the same connection, 16 at a time, while every
    // watcher reads.
    let writer = client.clone();
    let stored: Vec<u16> = stream::iter(0..events)
        .map(|n| {
            let writer = writer.clone();
            async move {
                let answer = writer.store("/events", &json!({"n": n})).await.unwrap();
                assert_eq!(answer.body["watchers"], json!(watchers));
                answer.code.as_u16()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(stored.iter().all(|&code| code == 201));
    let mut orders = Vec::new();
    for reader in readers {
        let seen = reader.await.unwrap();
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), events as usize, "none lost, none doubled");
        assert_eq!(sorted.first(), Some(&0));
        assert_eq!(sorted.last(), Some(&(events - 1)));
        orders.push(seen);
    }
    assert!(
        orders.windows(2).all(|pair| pair[0] == pair[1]),
        "every watcher sees the events in the one order they were published in"
    );
}

#[tokio::test]
async fn dropping_a_watch_sends_unwatch() {
    // One watch per stream: a second WATCH is admitted only once the first
    // is cancelled.
    let fixture = Fixture::start(app(
        Hub::default(),
        Limits {
            max_watches_per_stream: 1,
            ..Limits::default()
        },
    ))
    .await;
    let client = fixture.client().await;
    let first = client.watch("/events", None::<&()>).await.unwrap();
    match client.watch("/events", None::<&()>).await {
        Err(Error::WatchRefused(response)) => {
            assert_eq!(response.code, StatusCode::TOO_MANY_REQUESTS)
        }
        other => panic!("expected a 429, got {other:?}"),
    }
    drop(first);
    // The UNWATCH left before this WATCH, and the server reads in order.
    let second = client.watch("/events", None::<&()>).await.unwrap();
    // Requests go on beside it.
    assert_eq!(client.get("/hello").await.unwrap().body, json!("hi"));
    let end = second.cancel().await.unwrap();
    assert_eq!(end.code, StatusCode::GONE);
    assert_eq!(end.more, Some(false));
}

#[tokio::test]
async fn a_refused_watch_is_an_error_carrying_the_response() {
    let fixture = Fixture::start(app(Hub::default(), Limits::default())).await;
    let client = fixture.client().await;
    match client.watch("/hello", None::<&()>).await {
        Err(Error::WatchRefused(response)) => {
            assert_eq!(response.code, StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(response.body["allow"], json!(["GET"]));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let err = client.watch("/nowhere", None::<&()>).await.unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
}

#[tokio::test]
async fn on_server_shutdown_a_watch_ends_with_503() {
    let fixture = Fixture::start(app(Hub::default(), Limits::default())).await;
    let client = fixture.client().await;
    let mut events = client.watch("/events", None::<&()>).await.unwrap();
    fixture.shutdown.shutdown();
    // Shutdown ends the watch with 503, a final frame like any other.
    assert!(events.next().await.is_none());
    assert_eq!(events.end_code(), Some(StatusCode::SERVICE_UNAVAILABLE));
}

#[test]
fn the_blocking_client_iterates_over_a_watch() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fixture = runtime.block_on(Fixture::start(app(Hub::default(), Limits::default())));
    let client = korv_client::blocking::KorvClient::connect(fixture.config()).unwrap();
    let mut counting = client.watch("/count/4", None::<&()>).unwrap();
    let events: Vec<Value> = counting.by_ref().map(Result::unwrap).collect();
    assert_eq!(events, [json!(1), json!(2), json!(3), json!(4)]);
    assert_eq!(counting.end().map(|end| end.code), Some(StatusCode::OK));
    let cancelled = client
        .watch("/events", None::<&()>)
        .unwrap()
        .cancel()
        .unwrap();
    assert_eq!(cancelled.code, StatusCode::GONE);
    drop(client);
    drop(fixture);
}

/// The server's idle timeout in the two tests below, with no keepalives on
/// either side: only the streams' own traffic keeps a connection open.
const IDLE: std::time::Duration = std::time::Duration::from_millis(300);

fn idle_limits() -> Limits {
    Limits {
        idle_timeout: Some(IDLE),
        keepalive_interval: None,
        ..Limits::default()
    }
}

#[tokio::test]
async fn a_watch_without_events_keeps_its_connection_past_the_idle_timeout() {
    let fixture = Fixture::start(app(Hub::default(), idle_limits())).await;
    let client = fixture.client().await;
    let quiet = client.watch("/events", None::<&()>).await.unwrap();
    // Four idle timeouts pass with the watch active and nothing sent.
    tokio::time::sleep(IDLE * 4).await;
    let hello = client.get("/hello").await.expect("the connection is open");
    assert_eq!(hello.code, StatusCode::OK);
    let end = quiet.cancel().await.unwrap();
    assert_eq!(end.code, StatusCode::GONE, "the watch was still active");
}

#[tokio::test]
async fn without_a_watch_an_idle_connection_is_closed_at_the_idle_timeout() {
    let fixture = Fixture::start(app(Hub::default(), idle_limits())).await;
    let client = fixture.client().await;
    assert_eq!(client.get("/hello").await.unwrap().code, StatusCode::OK);
    tokio::time::sleep(IDLE * 4).await;
    let err = client
        .get("/hello")
        .await
        .expect_err("the server closed the idle connection");
    assert!(matches!(err, Error::Closed(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_its_application_does_not_read_is_ended_by_the_client_at_its_bound() {
    let hub = Hub::default();
    let fixture = Fixture::start(app(hub.clone(), Limits::default())).await;
    let client = fixture.client().await;
    let mut unread = client.watch("/events", None::<&()>).await.unwrap();
    // More events than the watch may hold, none read; one STORE at a time,
    // so that the events' order is the numbers'.
    let events = korv_client::WATCH_QUEUE as u64 + 500;
    for i in 1..=events {
        let answer = client.store("/events", &json!(i)).await.unwrap();
        assert_eq!(answer.code, StatusCode::CREATED);
    }
    // The events reach the client after the answers to the STOREs: wait
    // (bounded) until one finds the queue full.
    let started = std::time::Instant::now();
    while !unread.lagged() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "never lagged: {} events pending",
            unread.pending()
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(unread.pending(), korv_client::WATCH_QUEUE);
    // What it holds comes first, in order, then the client's end.
    let mut seen = Vec::new();
    while let Some(event) = unread.next().await {
        seen.push(event.unwrap().as_u64().unwrap());
    }
    let held: Vec<u64> = (1..=korv_client::WATCH_QUEUE as u64).collect();
    assert_eq!(seen.len(), held.len(), "as many events as the watch holds");
    assert!(seen == held, "the events held, in order");
    let end = unread.end().expect("the stream ended with an end");
    assert_eq!(end.code, StatusCode::SERVICE_UNAVAILABLE);
    let message = end.body["message"].as_str().unwrap();
    assert!(message.contains("did not read"), "{message}");
    // The connection serves on, and the server got the UNWATCH: its
    // handler's stream is dropped, so the hub loses its watcher.
    assert_eq!(client.get("/hello").await.unwrap().code, StatusCode::OK);
    let started = std::time::Instant::now();
    loop {
        let answer = client.store("/events", &json!("after")).await.unwrap();
        if answer.body["watchers"] == json!(0) {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the server still serves the watch: {:?}",
            answer.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
