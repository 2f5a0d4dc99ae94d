//! The metrics endpoint over real sockets: its counters match the requests,
//! streams, connections and authentications a client made.

use std::net::SocketAddr;

use korv_client::{ClientConfig, KorvClient, StatusCode};
use korv_server::KorvServer;
use korv_server::routing::get;
use korv_server::{Request, Verb};
use korv_testkit::keys::{KeyKind, keygen, known_hosts_line, public_key};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn scrape(addr: SocketAddr) -> String {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    answer
}

/// The value of the series `series` (name and labels, exactly as written).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn counters_match_the_requests_sent() {
    let dir = tempfile::tempdir().unwrap();
    let host = keygen(dir.path(), "host", KeyKind::Ed25519);
    let alice = keygen(dir.path(), "alice", KeyKind::Ed25519);
    let stranger = keygen(dir.path(), "stranger", KeyKind::Ed25519);
    let bound = KorvServer::new()
        .route("/hello", get(|_r: Request| async { json!("hello") }))
        .host_key_file(&host)
        .authorized_key(
            russh::keys::PublicKey::from_openssh(&public_key(&alice)).unwrap(),
            "alice",
        )
        .listen("127.0.0.1:0".parse().unwrap())
        .metrics("127.0.0.1:0".parse().unwrap())
        .name("web-7")
        .bind()
        .await
        .unwrap();
    let addr = bound.local_addr();
    let metrics = bound.metrics_addr().unwrap();
    let shutdown = bound.shutdown_handle();
    tokio::spawn(bound.run());
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(
        &known_hosts,
        known_hosts_line(addr.port(), &public_key(&host)),
    )
    .unwrap();
    let config = |key: &std::path::Path| {
        ClientConfig::new("127.0.0.1")
            .port(addr.port())
            .user("alice")
            .identity_file(key)
            .use_agent(false)
            .default_identities(false)
            .known_hosts(&known_hosts)
    };

    assert!(KorvClient::connect(config(&stranger)).await.is_err());
    let client = KorvClient::connect(config(&alice)).await.unwrap();
    for _ in 0..7 {
        assert_eq!(client.get("/hello").await.unwrap().code, StatusCode::OK);
    }
    for _ in 0..3 {
        let code = client.get("/nowhere").await.unwrap().code;
        assert_eq!(code, StatusCode::NOT_FOUND);
    }
    for _ in 0..2 {
        let code = client
            .request(Verb::Store, "/hello", Some(&json!({})), Default::default())
            .await
            .unwrap()
            .code;
        assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    }

    let l = r#"instance_name="web-7""#;
    // The stranger's connection closes on the server's side soon after the
    // client gave up: scrape until it has (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let text = scrape(metrics).await;
        if value(&text, &format!("korv_connections_open{{{l}}}")) == 1.0
            || std::time::Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        value(
            &text,
            &format!(r#"korv_requests_total{{{l},verb="GET",code="200"}}"#)
        ),
        7.0
    );
    assert_eq!(
        value(
            &text,
            &format!(r#"korv_requests_total{{{l},verb="GET",code="404"}}"#)
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            &format!(r#"korv_requests_total{{{l},verb="STORE",code="405"}}"#)
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            &format!("korv_request_duration_seconds_count{{{l}}}")
        ),
        12.0
    );
    assert_eq!(
        value(&text, &format!("korv_requests_in_flight{{{l}}}")),
        0.0
    );
    assert_eq!(
        value(&text, &format!("korv_frames_refused_total{{{l}}}")),
        0.0
    );
    assert_eq!(
        value(
            &text,
            &format!(r#"korv_authentications_total{{{l},result="accepted"}}"#)
        ),
        1.0
    );
    assert_eq!(value(&text, &format!("korv_connections_open{{{l}}}")), 1.0);
    assert_eq!(value(&text, &format!("korv_streams_open{{{l}}}")), 1.0);
    assert_eq!(value(&text, &format!("korv_shutting_down{{{l}}}")), 0.0);
    assert_eq!(
        value(
            &text,
            &format!(r#"korv_authentications_total{{{l},result="refused"}}"#)
        ),
        1.0
    );

    shutdown.shutdown();
}
