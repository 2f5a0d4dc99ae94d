//! OpenSSH certificates end to end over real SSH on 127.0.0.1, with every
//! certificate made by `ssh-keygen -s`: user certificates accepted and each
//! refusal (with the reason the server logs), principals as permissions
//! (`403`), and host certificates judged against known_hosts
//! `@cert-authority` and `@revoked` lines.
//!
//! Refusals are offered with russh's client directly, because the Korv
//! client does not offer a certificate it can tell is unusable (expired, not
//! yet valid, a host certificate).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use korv_client::{ClientConfig, Error, KorvClient, StatusCode};
use korv_server::routing::{any, get};
use korv_server::{ClientInfo, KorvServer, Request, ShutdownHandle, Verb};
use korv_testkit::certs::sign;
use korv_testkit::keys::{KeyKind, keygen, public_key, public_key_path};
use russh::client::{AuthResult, Handle};
use russh::keys::{Certificate, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use serde_json::{Value, json};
use tempfile::TempDir;

// ---------------------------------------------------------------- the log

/// Everything the server logs, for the refusal reasons.
fn log() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || LogWriter(log))
            .try_init();
        log
    })
}

struct LogWriter(&'static Mutex<Vec<u8>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log lines that mention `needle`.
fn logged(needle: &str) -> String {
    let log = log().lock().unwrap();
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|line| line.contains(needle))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------- keys and certificates

/// Keys and certificates in one temporary directory.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        Pki {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// An ed25519 key pair `name` and `name.pub`.
    fn key(&self, name: &str) -> PathBuf {
        keygen(self.dir.path(), name, KeyKind::Ed25519)
    }

    /// Signs the public key of `key` with the CA key `ca`; returns the
    /// certificate's path. `name` is the key id and chooses where it is
    /// written: `name-cert.pub`, beside a copy of the key as `name`.
    fn sign(&self, ca: &Path, key: &Path, name: &str, args: &[&str]) -> PathBuf {
        let copy = self.path(name);
        if copy != key {
            std::fs::copy(key, &copy).unwrap();
            std::fs::copy(public_key_path(key), public_key_path(&copy)).unwrap();
        }
        sign(ca, &copy, name, args)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn fingerprint(key: &Path) -> String {
    let public = russh::keys::PublicKey::read_openssh_file(public_key_path(key)).unwrap();
    public.fingerprint(russh::keys::HashAlg::Sha256).to_string()
}

// ---------------------------------------------------------------- the server

struct Server {
    addr: SocketAddr,
    shutdown: ShutdownHandle,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.shutdown();
    }
}

async fn whoami(request: Request) -> Value {
    let client = request.client();
    let cert = client.certificate.as_ref().map(|c| {
        json!({
            "key_id": c.key_id,
            "serial": c.serial,
            "principals": c.principals,
            "ca": c.ca_fingerprint,
            "expires": c.valid_before.map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()),
        })
    });
    json!({"user": client.user, "fingerprint": client.fingerprint, "certificate": cert})
}

async fn start(configure: impl FnOnce(KorvServer) -> KorvServer) -> Server {
    log();
    let server = configure(KorvServer::new())
        .listen("127.0.0.1:0".parse().unwrap())
        .route("/whoami", get(whoami))
        .route(
            "/admin/{*rest}",
            any(|r: Request| async move { json!({"admin": r.resource()}) }),
        )
        .require_principal("admin")
        .route(
            "/notes/{id}",
            any(|_r: Request| async { json!({"ok": true}) }),
        )
        .authorize(|client: &ClientInfo, verb: Verb, resource: &str| {
            if verb == Verb::Get || !resource.starts_with("/notes/") {
                return Ok(());
            }
            match &client.certificate {
                Some(cert) if cert.has_principal("writer") => Ok(()),
                _ => Err(format!("{verb} on {resource} needs the writer principal")),
            }
        });
    let bound = server.bind().await.unwrap();
    let addr = bound.local_addr();
    let shutdown = bound.shutdown_handle();
    tokio::spawn(bound.run());
    Server { addr, shutdown }
}

/// A CA trusted through a `TrustedUserCAKeys` file, a host key, and a
/// revoked-keys file (empty at first).
struct Setup {
    pki: Pki,
    ca: PathBuf,
    host: PathBuf,
    revoked: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let pki = Pki::new();
        let ca = pki.key("user_ca");
        let host = pki.key("host");
        let revoked = pki.write("revoked", "");
        Setup {
            pki,
            ca,
            host,
            revoked,
        }
    }

    async fn server(&self) -> Server {
        let ca_file = self
            .pki
            .write("trusted_cas", &format!("{}\n", public_key(&self.ca)));
        let authorized = self.pki.write("authorized_keys", "");
        let (host, revoked) = (self.host.clone(), self.revoked.clone());
        start(move |server| {
            server
                .host_key_file(host)
                .authorized_keys_file(authorized)
                .trusted_user_ca_keys(ca_file)
                .revoked_keys(revoked)
        })
        .await
    }

    fn client(&self, server: &Server, key: &Path) -> ClientConfig {
        ClientConfig::new("127.0.0.1")
            .port(server.addr.port())
            .user("alice")
            .default_identities(false)
            .use_agent(false)
            .identity_file(key)
            .host_key_policy(korv_client::HostKeyPolicy::InsecureAcceptAny)
    }
}

// ---------------------------------------------------------------- russh's client

struct AnyHost;

impl russh::client::Handler for AnyHost {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

async fn connect(addr: SocketAddr) -> Handle<AnyHost> {
    let config = Arc::new(russh::client::Config::default());
    russh::client::connect(config, addr, AnyHost).await.unwrap()
}

/// Offers `cert` (with the private key `key`) as `user`; whether it got in.
async fn offer_certificate(addr: SocketAddr, user: &str, key: &Path, cert: &Path) -> bool {
    let mut handle = connect(addr).await;
    let key = Arc::new(russh::keys::load_secret_key(key, None).unwrap());
    let cert = Certificate::read_file(cert).unwrap();
    let result = handle
        .authenticate_openssh_cert(user, key, cert)
        .await
        .unwrap();
    matches!(result, AuthResult::Success)
}

async fn offer_plain_key(addr: SocketAddr, user: &str, key: &Path) -> bool {
    let mut handle = connect(addr).await;
    let key = Arc::new(russh::keys::load_secret_key(key, None).unwrap());
    let result = handle
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, None))
        .await
        .unwrap();
    matches!(result, AuthResult::Success)
}

// ---------------------------------------------------------------- users

#[tokio::test]
async fn a_certificate_beside_the_key_authenticates_and_handlers_see_it() {
    let setup = Setup::new();
    let server = setup.server().await;
    let key = setup.pki.key("alice");
    setup.pki.sign(
        &setup.ca,
        &key,
        "alice",
        &["-n", "alice,admin", "-z", "77", "-V", "-5m:+1h"],
    );
    let client = KorvClient::connect(setup.client(&server, &key))
        .await
        .unwrap();
    let answer = client.get("/whoami").await.unwrap();
    assert_eq!(answer.code, StatusCode::OK);
    let cert = &answer.body["certificate"];
    assert_eq!(cert["key_id"], "alice");
    assert_eq!(cert["serial"], 77);
    assert_eq!(cert["principals"], json!(["alice", "admin"]));
    assert_eq!(cert["ca"], json!(fingerprint(&setup.ca)));
    assert!(cert["expires"].as_u64().unwrap() > 0);
    assert_eq!(answer.body["fingerprint"], json!(fingerprint(&key)));
}

#[tokio::test]
async fn a_named_certificate_file_is_used() {
    let setup = Setup::new();
    let server = setup.server().await;
    let key = setup.pki.key("alice");
    let cert = setup.pki.sign(
        &setup.ca,
        &key,
        "elsewhere",
        &["-n", "alice", "-V", "-5m:+1h"],
    );
    let config = setup.client(&server, &key).certificate_file(&cert);
    let client = KorvClient::connect(config).await.unwrap();
    let answer = client.get("/whoami").await.unwrap();
    assert_eq!(answer.body["certificate"]["key_id"], "elsewhere");
}

#[tokio::test]
async fn a_certificate_held_by_ssh_agent_is_used() {
    let setup = Setup::new();
    let server = setup.server().await;
    let key = setup.pki.key("agent_key");
    setup.pki.sign(
        &setup.ca,
        &key,
        "agent_key",
        &["-n", "alice", "-V", "-5m:+1h"],
    );
    let socket = setup.pki.path("agent.sock");
    let agent = Agent::start(&socket);
    let added = Command::new("ssh-add")
        .env("SSH_AUTH_SOCK", &socket)
        .arg(&key)
        .output()
        .unwrap();
    assert!(added.status.success(), "{added:?}");
    assert!(
        String::from_utf8_lossy(&added.stderr).contains("Certificate added"),
        "{added:?}"
    );
    // The key file is gone: only the agent can sign.
    std::fs::remove_file(&key).unwrap();
    let config = ClientConfig::new("127.0.0.1")
        .port(server.addr.port())
        .user("alice")
        .default_identities(false)
        .agent_socket(&socket)
        .host_key_policy(korv_client::HostKeyPolicy::InsecureAcceptAny);
    let result = KorvClient::connect(config).await;
    drop(agent);
    let answer = result.unwrap().get("/whoami").await.unwrap();
    assert_eq!(answer.body["certificate"]["key_id"], "agent_key");
}

#[tokio::test]
async fn a_named_certificate_is_used_with_a_key_held_by_ssh_agent() {
    let setup = Setup::new();
    let server = setup.server().await;
    let key = setup.pki.key("agent_plain");
    let cert = setup.pki.sign(
        &setup.ca,
        &key,
        "named_for_agent",
        &["-n", "alice", "-V", "-5m:+1h"],
    );
    let socket = setup.pki.path("agent.sock");
    let agent = Agent::start(&socket);
    // No certificate beside `agent_plain`: the agent holds the plain key only.
    let added = Command::new("ssh-add")
        .env("SSH_AUTH_SOCK", &socket)
        .arg(&key)
        .output()
        .unwrap();
    assert!(added.status.success(), "{added:?}");
    assert!(!String::from_utf8_lossy(&added.stderr).contains("Certificate added"));
    let config = ClientConfig::new("127.0.0.1")
        .port(server.addr.port())
        .user("alice")
        .default_identities(false)
        .agent_socket(&socket)
        .certificate_file(&cert)
        .host_key_policy(korv_client::HostKeyPolicy::InsecureAcceptAny);
    let result = KorvClient::connect(config).await;
    drop(agent);
    let answer = result.unwrap().get("/whoami").await.unwrap();
    assert_eq!(answer.body["certificate"]["key_id"], "named_for_agent");
}

#[tokio::test]
async fn an_unusable_certificate_is_not_offered_and_the_error_says_why() {
    let setup = Setup::new();
    let server = setup.server().await;
    let key = setup.pki.key("late");
    setup.pki.sign(
        &setup.ca,
        &key,
        "late",
        &["-n", "alice", "-V", "20200101:20200201"],
    );
    let err = KorvClient::connect(setup.client(&server, &key))
        .await
        .err()
        .unwrap();
    let Error::AuthRefused { tried, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(
        tried[0].contains("not offered: it expired at 2020-02-01 00:00:00 UTC"),
        "{tried:?}"
    );
    // A named certificate file that does not parse is an error of its own.
    let bogus = setup.pki.write("bogus-cert.pub", "not a certificate\n");
    let err = KorvClient::connect(setup.client(&server, &key).certificate_file(&bogus))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::Identity { .. }), "{err:?}");
    assert!(format!("{err}").contains("bogus-cert.pub"), "{err}");
}

/// An `ssh-agent` on a socket of ours, stopped when dropped.
struct Agent {
    pid: String,
}

impl Agent {
    /// Starts the agent; `ssh-agent -s` returns once its socket is bound,
    /// printing the agent's process id.
    fn start(socket: &Path) -> Agent {
        let out = Command::new("ssh-agent")
            .arg("-s")
            .arg("-a")
            .arg(socket)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let pid = text
            .split("SSH_AGENT_PID=")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .expect("ssh-agent prints its pid")
            .to_owned();
        Agent { pid }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(&self.pid).status();
    }
}

/// Each case: the key id, what `ssh-keygen -s` gets, the user, and the
/// words the server's log gives as the reason.
#[tokio::test]
async fn every_refusal_is_refused_and_logged_with_its_reason() {
    let setup = Setup::new();
    let server = setup.server().await;
    let key = setup.pki.key("user");
    let other_ca = setup.pki.key("other_ca");
    let cases: [(&str, &Path, &[&str], &str); 6] = [
        (
            "wrong-principal",
            &setup.ca,
            &["-n", "bob", "-V", "-5m:+1h"],
            "include none of",
        ),
        (
            "no-principals",
            &setup.ca,
            &["-V", "-5m:+1h"],
            "has no principals",
        ),
        (
            "untrusted-ca",
            &other_ca,
            &["-n", "alice", "-V", "-5m:+1h"],
            "not a trusted CA",
        ),
        (
            "source-address",
            &setup.ca,
            &[
                "-n",
                "alice",
                "-V",
                "-5m:+1h",
                "-O",
                "source-address=10.9.9.0/24",
            ],
            "source-address",
        ),
        (
            "force-command",
            &setup.ca,
            &[
                "-n",
                "alice",
                "-V",
                "-5m:+1h",
                "-O",
                "force-command=/bin/true",
            ],
            "force-command",
        ),
        (
            "host-cert",
            &setup.ca,
            &["-h", "-n", "alice", "-V", "-5m:+1h"],
            "host certificate",
        ),
    ];
    for (id, ca, args, reason) in cases {
        let cert = setup.pki.sign(ca, &key, id, args);
        assert!(
            !offer_certificate(server.addr, "alice", &key, &cert).await,
            "{id} got in"
        );
        let lines = logged(&format!("\"{id}\""));
        assert!(lines.contains(reason), "{id}: {lines:?}");
    }
    // russh itself refuses certificates outside their window before the
    // server sees them.
    for (id, window) in [("expired", "-2h:-1h"), ("not-yet-valid", "+1h:+2h")] {
        let cert = setup
            .pki
            .sign(&setup.ca, &key, id, &["-n", "alice", "-V", window]);
        assert!(
            !offer_certificate(server.addr, "alice", &key, &cert).await,
            "{id} got in"
        );
    }
    // A good certificate on the same server gets in.
    let good = setup
        .pki
        .sign(&setup.ca, &key, "good", &["-n", "alice", "-V", "-5m:+1h"]);
    assert!(offer_certificate(server.addr, "alice", &key, &good).await);
}

#[tokio::test]
async fn the_ca_key_itself_is_not_a_user_key() {
    let setup = Setup::new();
    let server = setup.server().await;
    // Trusted in the CA file, and also listed as a cert-authority line.
    std::fs::write(
        setup.pki.path("authorized_keys"),
        format!("cert-authority {}\n", public_key(&setup.ca)),
    )
    .unwrap();
    assert!(!offer_plain_key(server.addr, "alice", &setup.ca).await);
}

#[tokio::test]
async fn revoked_keys_and_revoked_cas_are_refused_on_the_next_connection() {
    let setup = Setup::new();
    let server = setup.server().await;
    let key = setup.pki.key("user");
    let cert = setup.pki.sign(
        &setup.ca,
        &key,
        "revocable",
        &["-n", "alice", "-V", "-5m:+1h"],
    );
    assert!(offer_certificate(server.addr, "alice", &key, &cert).await);

    std::fs::write(&setup.revoked, format!("{}\n", public_key(&key))).unwrap();
    assert!(!offer_certificate(server.addr, "alice", &key, &cert).await);
    // The certificate's key is refused as soon as it is offered.
    let lines = logged(&fingerprint(&key));
    assert!(lines.contains("key listed in the revoked keys"), "{lines}");

    std::fs::write(
        &setup.revoked,
        format!("# the CA\n{}\n", public_key(&setup.ca)),
    )
    .unwrap();
    assert!(!offer_certificate(server.addr, "alice", &key, &cert).await);
    let lines = logged("\"revocable\"");
    assert!(
        lines.contains(&format!(
            "the certificate's CA {} is listed in the revoked keys",
            fingerprint(&setup.ca)
        )),
        "{lines}"
    );

    std::fs::write(&setup.revoked, "").unwrap();
    assert!(offer_certificate(server.addr, "alice", &key, &cert).await);
}

#[tokio::test]
async fn cert_authority_lines_require_their_principals() {
    let pki = Pki::new();
    let ca = pki.key("ca");
    let host = pki.key("host");
    let authorized = pki.write(
        "authorized_keys",
        &format!(
            "cert-authority,principals=\"ops,sre\" {}\n",
            public_key(&ca)
        ),
    );
    let server = start(move |s| s.host_key_file(host).authorized_keys_file(authorized)).await;
    let key = pki.key("user");
    let ops = pki.sign(&ca, &key, "ops", &["-n", "ops", "-V", "-5m:+1h"]);
    assert!(offer_certificate(server.addr, "alice", &key, &ops).await);
    let named = pki.sign(&ca, &key, "named", &["-n", "alice", "-V", "-5m:+1h"]);
    assert!(!offer_certificate(server.addr, "alice", &key, &named).await);
    assert!(logged("\"named\"").contains("include none of"));
}

// ---------------------------------------------------------------- principals as permissions

#[tokio::test]
async fn a_missing_principal_is_403_after_routing() {
    let setup = Setup::new();
    let server = setup.server().await;
    let admin_key = setup.pki.key("admin");
    setup.pki.sign(
        &setup.ca,
        &admin_key,
        "admin",
        &["-n", "alice,admin,writer", "-V", "-5m:+1h"],
    );
    let plain_key = setup.pki.key("plain");
    setup.pki.sign(
        &setup.ca,
        &plain_key,
        "plain",
        &["-n", "alice", "-V", "-5m:+1h"],
    );

    let admin = KorvClient::connect(setup.client(&server, &admin_key))
        .await
        .unwrap();
    let plain = KorvClient::connect(setup.client(&server, &plain_key))
        .await
        .unwrap();

    let ok = admin.get("/admin/users/1").await.unwrap();
    assert_eq!(ok.code, StatusCode::OK);
    assert_eq!(ok.body, json!({"admin": "/admin/users/1"}));

    let refused = plain.get("/admin/users/1").await.unwrap();
    assert_eq!(refused.code, StatusCode::FORBIDDEN);
    let message = refused.body["message"].as_str().unwrap();
    assert!(message.contains("\"admin\""), "{message}");

    // Routing comes first: an unknown resource is 404 for anyone.
    assert_eq!(
        plain.get("/nowhere").await.unwrap().code,
        StatusCode::NOT_FOUND
    );

    // The general rule: GET for all, other verbs on /notes need `writer`.
    assert_eq!(plain.get("/notes/1").await.unwrap().code, StatusCode::OK);
    let store = plain.store("/notes/1", &json!({"t": 1})).await.unwrap();
    assert_eq!(store.code, StatusCode::FORBIDDEN);
    assert_eq!(
        store.body["message"],
        "STORE on /notes/1 needs the writer principal"
    );
    let store = admin.store("/notes/1", &json!({"t": 1})).await.unwrap();
    assert_eq!(store.code, StatusCode::OK);
}

// ---------------------------------------------------------------- hosts

/// A server offering a host certificate signed by `host_ca` with `args`.
async fn host_cert_server(pki: &Pki, host_ca: &Path, args: &[&str]) -> (Server, PathBuf) {
    let host = pki.key("hostkey");
    let cert = pki.sign(host_ca, &host, "hostkey", args);
    let user = pki.key("user");
    let authorized = pki.write("authorized_keys", &format!("{}\n", public_key(&user)));
    let (h, c) = (host.clone(), cert.clone());
    let server = start(move |s| {
        s.host_key_file(h)
            .host_certificate(c)
            .authorized_keys_file(authorized)
    })
    .await;
    (server, host)
}

fn host_client(pki: &Pki, server: &Server, known_hosts: &str) -> ClientConfig {
    let known = pki.write("known_hosts", known_hosts);
    ClientConfig::new("127.0.0.1")
        .port(server.addr.port())
        .user("alice")
        .default_identities(false)
        .use_agent(false)
        .identity_file(pki.path("user"))
        .known_hosts(known)
}

#[tokio::test]
async fn a_host_certificate_from_a_trusted_ca_is_accepted() {
    let pki = Pki::new();
    let host_ca = pki.key("host_ca");
    let (server, _) =
        host_cert_server(&pki, &host_ca, &["-h", "-n", "127.0.0.1", "-V", "-5m:+1h"]).await;
    let config = host_client(
        &pki,
        &server,
        &format!("@cert-authority [127.0.0.1]:* {}\n", public_key(&host_ca)),
    );
    let client = KorvClient::connect(config).await.unwrap();
    assert_eq!(client.get("/whoami").await.unwrap().code, StatusCode::OK);
}

#[tokio::test]
async fn host_certificate_refusals_name_what_failed() {
    let pki = Pki::new();
    let host_ca = pki.key("host_ca");
    let trust = format!("@cert-authority * {}\n", public_key(&host_ca));

    let (expired, _) = host_cert_server(
        &pki,
        &host_ca,
        &["-h", "-n", "127.0.0.1", "-V", "20200101:20200201"],
    )
    .await;
    let err = KorvClient::connect(host_client(&pki, &expired, &trust))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("expired at 2020-02-01"), "{err}");
    drop(expired);

    let pki = Pki::new();
    let host_ca = pki.key("host_ca");
    let trust = format!("@cert-authority * {}\n", public_key(&host_ca));
    let (other_host, _) = host_cert_server(
        &pki,
        &host_ca,
        &["-h", "-n", "db.example.com", "-V", "-5m:+1h"],
    )
    .await;
    let err = KorvClient::connect(host_client(&pki, &other_host, &trust))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
    assert!(err.to_string().contains("db.example.com"), "{err}");

    // A CA line for another CA: the offered CA is named by its fingerprint.
    let rogue = pki.key("rogue");
    let wrong_ca = format!("@cert-authority * {}\n", public_key(&rogue));
    let err = KorvClient::connect(host_client(&pki, &other_host, &wrong_ca))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains(&fingerprint(&host_ca)), "{err}");
    assert!(matches!(err, Error::HostCertificate { .. }), "{err:?}");
}

#[tokio::test]
async fn a_revoked_host_key_is_refused_even_when_its_ca_is_trusted() {
    let pki = Pki::new();
    let host_ca = pki.key("host_ca");
    let (server, host) =
        host_cert_server(&pki, &host_ca, &["-h", "-n", "127.0.0.1", "-V", "-5m:+1h"]).await;
    let text = format!(
        "@cert-authority * {}\n@revoked * {}\n",
        public_key(&host_ca),
        public_key(&host)
    );
    let err = KorvClient::connect(host_client(&pki, &server, &text))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("revoked"), "{err}");
    assert!(err.to_string().contains(&fingerprint(&host)), "{err}");
}

#[tokio::test]
async fn a_host_certificate_must_be_one_for_a_host_key() {
    let pki = Pki::new();
    let ca = pki.key("host_ca");
    let host = pki.key("hostkey");
    let other = pki.key("other");
    let user_cert = pki.sign(&ca, &host, "as_user", &["-n", "127.0.0.1"]);
    let foreign = pki.sign(&ca, &other, "foreign", &["-h", "-n", "127.0.0.1"]);
    for (cert, reason) in [
        (user_cert, "user certificate"),
        (foreign, "none of the host keys"),
    ] {
        let err = KorvServer::new()
            .host_key_file(&host)
            .trusted_user_ca_key(
                russh::keys::PublicKey::read_openssh_file(public_key_path(&ca)).unwrap(),
            )
            .host_certificate(&cert)
            .listen("127.0.0.1:0".parse().unwrap())
            .bind()
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains(reason), "{err}");
    }
}
