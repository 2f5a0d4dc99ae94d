//! The client in korv 0.2.1's format (`ClientConfig::legacy_format`) against
//! korv-server on 127.0.0.1 over real SSH: the server takes the format from
//! the stream's first byte. (Against korv 0.2.1's own Python server:
//! `tests/legacy/` at the workspace root, run by `cargo xtask test`.)

use std::net::SocketAddr;
use std::path::PathBuf;

use korv_client::{ClientConfig, Error, HostKeyPolicy, KorvClient, ProtoError, StatusCode};
use korv_server::routing::{any, get};
use korv_server::{KorvServer, Request, ShutdownHandle};
use korv_testkit::keys::{KeyKind, keygen, public_key_path};
use serde_json::{Value, json};
use tempfile::TempDir;

async fn fail(_req: Request) -> anyhow::Result<Value> {
    let cause: Result<Value, std::io::Error> = Err(std::io::Error::other("the disk is full"));
    anyhow::Context::context(cause, "could not save the note")
}

/// `len` characters that deflate cannot shrink much.
fn incompressible(len: usize) -> String {
    let mut state = 0x2545_f491_u32;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            char::from(b'!' + (state % 90) as u8)
        })
        .collect()
}

struct Fixture {
    _dir: TempDir,
    addr: SocketAddr,
    key: PathBuf,
    shutdown: ShutdownHandle,
}

impl Fixture {
    async fn start() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let host = keygen(dir.path(), "host", KeyKind::Ed25519);
        let key = keygen(dir.path(), "id_ed25519", KeyKind::Ed25519);
        let authorized = dir.path().join("authorized_keys");
        std::fs::copy(public_key_path(&key), &authorized).unwrap();
        let bound = KorvServer::new()
            .route(
                "/hello",
                get(|_r: Request| async { json!({"msg": "Hello World!"}) }),
            )
            .route("/echo", any(|r: Request| async move { r.body_value() }))
            .route("/fail", get(fail))
            .route(
                "/big/{n}",
                get(|r: Request| async move {
                    json!(incompressible(r.param("n").unwrap().parse().unwrap()))
                }),
            )
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
            _dir: dir,
            addr,
            key,
            shutdown,
        }
    }

    fn config(&self, legacy: bool) -> ClientConfig {
        ClientConfig::new("127.0.0.1")
            .port(self.addr.port())
            .identity_file(&self.key)
            .use_agent(false)
            .default_identities(false)
            .host_key_policy(HostKeyPolicy::InsecureAcceptAny)
            .legacy_format(legacy)
    }

    async fn client(&self, legacy: bool) -> KorvClient {
        KorvClient::connect(self.config(legacy)).await.unwrap()
    }
}

#[tokio::test]
async fn calls_in_korv_0_2_1_format_get_their_answers() {
    let fixture = Fixture::start().await;
    let client = fixture.client(true).await;
    let hello = client.get("/hello").await.unwrap();
    assert_eq!(hello.code, StatusCode::OK);
    assert_eq!(hello.body, json!({"msg": "Hello World!"}));
    let stored = client.store("/echo", &json!({"text": "hi"})).await.unwrap();
    assert_eq!(stored.body, json!({"text": "hi"}));
    let missing = client.get("/nothing").await.unwrap();
    assert_eq!(missing.code, StatusCode::NOT_FOUND);
    fixture.shutdown.shutdown();
}

#[tokio::test]
async fn a_traceback_reads_as_lines_as_in_version_1() {
    let fixture = Fixture::start().await;
    let legacy = fixture.client(true).await.get("/fail").await.unwrap();
    let version_1 = fixture.client(false).await.get("/fail").await.unwrap();
    assert_eq!(legacy.code, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        legacy.body["traceback"],
        json!(["could not save the note", "the disk is full"])
    );
    assert_eq!(legacy.body, version_1.body);
    fixture.shutdown.shutdown();
}

#[tokio::test]
async fn a_hundred_requests_in_flight_each_get_their_own_answer() {
    let fixture = Fixture::start().await;
    let client = fixture.client(true).await;
    let calls = (0..100).map(|n| {
        let client = client.clone();
        async move { (n, client.store("/echo", &json!({ "n": n })).await) }
    });
    for (n, answer) in futures_util::future::join_all(calls).await {
        let answer = answer.unwrap();
        assert_eq!(answer.code, StatusCode::OK);
        assert_eq!(answer.body, json!({ "n": n }));
    }
    fixture.shutdown.shutdown();
}

#[tokio::test]
async fn a_request_larger_than_a_packet_is_refused_before_it_is_sent() {
    let fixture = Fixture::start().await;
    let client = fixture.client(true).await;
    let err = client
        .store("/echo", &json!({ "text": incompressible(100_000) }))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Protocol(ProtoError::FrameTooLarge { .. })),
        "{err:?}"
    );
    // Nothing was sent: the stream goes on.
    assert_eq!(client.get("/hello").await.unwrap().code, StatusCode::OK);
    fixture.shutdown.shutdown();
}

#[tokio::test]
async fn an_answer_larger_than_a_packet_is_a_500() {
    let fixture = Fixture::start().await;
    let client = fixture.client(true).await;
    let answer = client.get("/big/100000").await.unwrap();
    assert_eq!(answer.code, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        answer.message(),
        Some("response too large for a korv 0.2.1 client")
    );
    // The same answer fits in version 1's frames.
    let whole = fixture
        .client(false)
        .await
        .get("/big/100000")
        .await
        .unwrap();
    assert_eq!(whole.body.as_str().map(str::len), Some(100_000));
    fixture.shutdown.shutdown();
}

#[tokio::test]
async fn both_formats_on_one_server_at_once() {
    let fixture = Fixture::start().await;
    let legacy = fixture.client(true).await;
    let version_1 = fixture.client(false).await;
    let calls = (0..50).map(|n| {
        let client = if n % 2 == 0 { &legacy } else { &version_1 };
        async move { (n, client.store("/echo", &json!({ "n": n })).await) }
    });
    for (n, answer) in futures_util::future::join_all(calls).await {
        assert_eq!(answer.unwrap().body, json!({ "n": n }));
    }
    fixture.shutdown.shutdown();
}
