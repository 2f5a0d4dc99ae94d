//! The PROXY protocol over real sockets. A relay plays the load balancer:
//! it accepts the client's connection, connects to the server from
//! 127.0.0.1, writes a PROXY header naming an address of the test's choice,
//! then copies bytes both ways. The server trusts the relay's network or
//! not; handlers answer the address they see; Alice's key is authorized
//! only `from="192.0.2.7"`, Bob's from anywhere.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use korv_client::{ClientConfig, Error, KorvClient, StatusCode};
use korv_server::routing::get;
use korv_server::{IpNet, KorvServer, Limits, Request, ShutdownHandle};
use korv_testkit::certs::sign;
use korv_testkit::keys::{KeyKind, keygen, known_hosts_line, public_key};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

struct Server {
    dir: TempDir,
    addr: SocketAddr,
    alice: PathBuf,
    bob: PathBuf,
    shutdown: ShutdownHandle,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.shutdown();
    }
}

/// A server that expects PROXY headers from `trusted`.
async fn server(trusted: &str) -> Server {
    server_with(trusted, Limits::default(), |server| server).await
}

/// A server that expects PROXY headers from `trusted`, with `limits`, and
/// whatever `more` adds.
async fn server_with(
    trusted: &str,
    limits: Limits,
    more: impl FnOnce(KorvServer) -> KorvServer,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let host = keygen(dir.path(), "host", KeyKind::Ed25519);
    let alice = keygen(dir.path(), "alice", KeyKind::Ed25519);
    let bob = keygen(dir.path(), "bob", KeyKind::Ed25519);
    let authorized = dir.path().join("authorized_keys");
    std::fs::write(
        &authorized,
        format!(
            "from=\"192.0.2.7\" {}\n{}\n",
            public_key(&alice),
            public_key(&bob)
        ),
    )
    .unwrap();
    let bound =
        more(KorvServer::new().limits(limits))
            .route(
                "/addr",
                get(|req: Request| async move {
                    json!({"addr": req.client().peer.map(|a| a.to_string())})
                }),
            )
            .host_key_file(&host)
            .authorized_keys_file(authorized)
            .proxy_protocol_from([trusted.parse::<IpNet>().unwrap()])
            .listen("127.0.0.1:0".parse().unwrap())
            .bind()
            .await
            .unwrap();
    let addr = bound.local_addr();
    let shutdown = bound.shutdown_handle();
    tokio::spawn(bound.run());
    std::fs::write(dir.path().join("host.pub.line"), public_key(&host)).unwrap();
    Server {
        dir,
        addr,
        alice,
        bob,
        shutdown,
    }
}

/// Connects to 127.0.0.1:`port` and writes `bytes`; returns whether the
/// server closes the connection within `within`.
async fn closed_within(port: u16, bytes: &[u8], within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    socket.write_all(bytes).await.unwrap();
    let mut buf = [0_u8; 1024];
    let read_to_end = async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_to_end).await.is_ok()
}

/// A relay on 127.0.0.1 that writes `header` to the server before the
/// client's bytes. Returns its port.
async fn relay(server: SocketAddr, header: Vec<u8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let header = header.clone();
            tokio::spawn(async move {
                let Ok(mut upstream) = TcpStream::connect(server).await else {
                    return;
                };
                if upstream.write_all(&header).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    port
}

fn v1(source: &str, port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {source} 127.0.0.1 {port} 8022\r\n").into_bytes()
}

fn v2(command: u8, source: [u8; 4], port: u16) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.push(0x20 | command);
    header.push(0x11); // TCP over IPv4
    header.extend_from_slice(&12_u16.to_be_bytes());
    header.extend_from_slice(&source);
    header.extend_from_slice(&[127, 0, 0, 1]);
    header.extend_from_slice(&port.to_be_bytes());
    header.extend_from_slice(&8022_u16.to_be_bytes());
    header
}

/// Connects to 127.0.0.1:`port` as `user` with `key`.
async fn connect(
    server: &Server,
    port: u16,
    user: &str,
    key: &PathBuf,
) -> Result<KorvClient, Error> {
    let host = std::fs::read_to_string(server.dir.path().join("host.pub.line")).unwrap();
    let known_hosts = server.dir.path().join(format!("known_hosts_{port}"));
    std::fs::write(&known_hosts, known_hosts_line(port, &host)).unwrap();
    KorvClient::connect(
        ClientConfig::new("127.0.0.1")
            .port(port)
            .user(user)
            .identity_file(key)
            .use_agent(false)
            .default_identities(false)
            .known_hosts(known_hosts)
            .reconnect(false),
    )
    .await
}

async fn seen_addr(client: &KorvClient) -> Value {
    let response = client.get("/addr").await.unwrap();
    assert_eq!(response.code, StatusCode::OK);
    response.body["addr"].clone()
}

#[tokio::test]
async fn a_trusted_v1_header_is_the_client_address_for_from_and_handlers() {
    let server = server("127.0.0.1/32").await;
    let port = relay(server.addr, v1("192.0.2.7", 5555)).await;
    let alice = connect(&server, port, "alice", &server.alice)
        .await
        .unwrap();
    assert_eq!(seen_addr(&alice).await, json!("192.0.2.7:5555"));
}

#[tokio::test]
async fn a_trusted_v2_header_is_the_client_address_for_from_and_handlers() {
    let server = server("127.0.0.0/8").await;
    let port = relay(server.addr, v2(1, [192, 0, 2, 7], 6000)).await;
    let alice = connect(&server, port, "alice", &server.alice)
        .await
        .unwrap();
    assert_eq!(seen_addr(&alice).await, json!("192.0.2.7:6000"));
}

#[tokio::test]
async fn a_trusted_header_with_another_address_fails_from() {
    let server = server("127.0.0.1/32").await;
    let port = relay(server.addr, v2(1, [192, 0, 2, 8], 6000)).await;
    let refused = connect(&server, port, "alice", &server.alice).await;
    assert!(
        matches!(refused, Err(Error::AuthRefused { .. })),
        "{:?}",
        refused.err()
    );
    // Bob, authorized from anywhere, is seen at the carried address.
    let bob = connect(&server, port, "bob", &server.bob).await.unwrap();
    assert_eq!(seen_addr(&bob).await, json!("192.0.2.8:6000"));
}

#[tokio::test]
async fn a_local_v2_header_keeps_the_balancer_address() {
    let server = server("127.0.0.1/32").await;
    let port = relay(server.addr, v2(0, [192, 0, 2, 7], 6000)).await;
    let bob = connect(&server, port, "bob", &server.bob).await.unwrap();
    let addr = seen_addr(&bob).await;
    let ip: IpAddr = addr.as_str().unwrap().parse::<SocketAddr>().unwrap().ip();
    assert_eq!(ip, IpAddr::from([127, 0, 0, 1]));
}

#[tokio::test]
async fn a_forged_header_from_an_untrusted_address_fails_the_handshake() {
    // Only 127.0.0.2 is trusted; the relay connects from 127.0.0.1.
    let server = server("127.0.0.2/32").await;
    for header in [v1("192.0.2.7", 5555), v2(1, [192, 0, 2, 7], 6000)] {
        let port = relay(server.addr, header).await;
        let refused = connect(&server, port, "alice", &server.alice).await;
        assert!(
            matches!(
                refused,
                Err(Error::Ssh {
                    doing: "handshake",
                    ..
                })
            ),
            "{:?}",
            refused.err()
        );
    }
    // Without a header the untrusted client is served at its own address.
    let bob = connect(&server, server.addr.port(), "bob", &server.bob)
        .await
        .unwrap();
    let addr = seen_addr(&bob).await;
    assert!(addr.as_str().unwrap().starts_with("127.0.0.1:"), "{addr}");
}

#[tokio::test]
async fn a_trusted_source_without_a_header_is_closed() {
    let server = server("127.0.0.1/32").await;
    let refused = connect(&server, server.addr.port(), "bob", &server.bob).await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn a_trusted_source_silent_past_the_version_deadline_is_closed() {
    let limits = Limits {
        version_timeout: std::time::Duration::from_millis(300),
        ..Limits::default()
    };
    let server = server_with("127.0.0.1/32", limits, |s| s).await;
    let port = server.addr.port();
    // Half a header, then nothing.
    assert!(closed_within(port, b"PROXY TCP4 192.0", std::time::Duration::from_secs(5)).await);
}

#[tokio::test]
async fn per_source_limits_count_the_carried_address() {
    // One unauthenticated place per source; loopback not exempt.
    let limits = Limits {
        max_unauthenticated_per_source: 1,
        exempt_networks: Vec::new(),
        penalty_base: std::time::Duration::ZERO,
        ..Limits::default()
    };
    let server = server_with("127.0.0.1/32", limits, |s| s).await;
    let port = server.addr.port();
    let hold = |source: &str| {
        let header = v1(source, 5555);
        async move {
            use tokio::io::AsyncReadExt;
            let mut socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            socket.write_all(&header).await.unwrap();
            // Admitted: the server sends its SSH version line.
            let mut banner = [0_u8; 4];
            let admitted = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                socket.read_exact(&mut banner),
            )
            .await
            .is_ok_and(|read| read.is_ok());
            (socket, admitted && &banner == b"SSH-")
        }
    };
    let (_first, admitted) = hold("192.0.2.7").await;
    assert!(admitted, "the first connection from 192.0.2.7 gets a place");
    let (_second, admitted) = hold("192.0.2.7").await;
    assert!(
        !admitted,
        "a second one from 192.0.2.7 is over its source's limit"
    );
    let (_other, admitted) = hold("192.0.2.8").await;
    assert!(
        admitted,
        "192.0.2.8 is another source, through the same balancer"
    );
}

#[tokio::test]
async fn a_certificate_source_address_sees_the_carried_address() {
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = keygen(ca_dir.path(), "user_ca", KeyKind::Ed25519);
    let ca_public = russh::keys::PublicKey::from_openssh(&public_key(&ca)).unwrap();
    let server = server_with("127.0.0.1/32", Limits::default(), move |s| {
        s.trusted_user_ca_key(ca_public)
    })
    .await;
    let carol = keygen(server.dir.path(), "carol", KeyKind::Ed25519);
    sign(
        &ca,
        &carol,
        "carol",
        &[
            "-n",
            "carol",
            "-O",
            "source-address=192.0.2.0/24",
            "-V",
            "-5m:+1h",
        ],
    );
    let inside = relay(server.addr, v2(1, [192, 0, 2, 40], 7000)).await;
    let carol_in = connect(&server, inside, "carol", &carol).await.unwrap();
    assert_eq!(seen_addr(&carol_in).await, json!("192.0.2.40:7000"));
    let outside = relay(server.addr, v2(1, [198, 51, 100, 40], 7000)).await;
    let refused = connect(&server, outside, "carol", &carol).await;
    assert!(
        matches!(refused, Err(Error::AuthRefused { .. })),
        "{:?}",
        refused.err()
    );
}
