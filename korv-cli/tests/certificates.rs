//! OpenSSH certificates across implementations, every one made by
//! `ssh-keygen -s` in the test: OpenSSH's `ssh` with a user certificate
//! against `korv serve`; the `korv` client with a user certificate against
//! OpenSSH's `sshd` (`TrustedUserCAKeys`) hosting `korv serve --stdio`;
//! host certificates of `sshd` and of `korv serve` judged by `korv` through
//! `@cert-authority` and `@revoked`, and by OpenSSH's `ssh`; principals as
//! permissions with `--require-principal`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use assert_cmd::cargo::CommandCargoExt;
use korv_testkit::certs::sign;
use korv_testkit::frame::frame;
use korv_testkit::keys::{KeyKind, keygen, public_key};
use korv_testkit::process::{KillOnDrop, spawn_listening};
use korv_testkit::sshd::{Sshd, current_user};
use serde_json::{Value, json};
use tempfile::TempDir;

/// Keys in one temporary directory: a user CA, a host CA, a host key.
struct Pki {
    dir: TempDir,
    user_ca: PathBuf,
    host_ca: PathBuf,
    host: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let user_ca = keygen(dir.path(), "user_ca", KeyKind::Ed25519);
        let host_ca = keygen(dir.path(), "host_ca", KeyKind::Ed25519);
        let host = keygen(dir.path(), "host", KeyKind::Ed25519);
        Pki {
            dir,
            user_ca,
            host_ca,
            host,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A user key `name` with a certificate from the user CA for
    /// `principals`, valid from five minutes ago for an hour.
    fn user(&self, name: &str, principals: &str) -> PathBuf {
        let key = keygen(self.dir.path(), name, KeyKind::Ed25519);
        sign(
            &self.user_ca,
            &key,
            name,
            &["-n", principals, "-V", "-5m:+1h"],
        );
        key
    }

    /// The host key's certificate from the host CA, for 127.0.0.1.
    fn host_certificate(&self) -> PathBuf {
        sign(
            &self.host_ca,
            &self.host,
            "korv-test-host",
            &["-h", "-n", "127.0.0.1,localhost", "-V", "-5m:+1h"],
        )
    }
}

/// `korv serve` on 127.0.0.1, on the port it bound, stopped when dropped.
struct KorvServe {
    port: u16,
    _child: KillOnDrop,
}

impl KorvServe {
    fn start(pki: &Pki, extra: &[&str]) -> KorvServe {
        let authorized = pki.write("authorized_keys", "");
        // A store of its own for each server of the test.
        static SERVERS: AtomicUsize = AtomicUsize::new(0);
        let store = pki.path(&format!(
            "store-{}.redb",
            SERVERS.fetch_add(1, Ordering::Relaxed)
        ));
        let (child, addr) = spawn_listening(
            Command::cargo_bin("korv")
                .unwrap()
                .args(["serve", "--listen", "127.0.0.1:0"])
                .arg("--host-key")
                .arg(&pki.host)
                .arg("--authorized-keys")
                .arg(&authorized)
                .arg("--data")
                .arg(&store)
                .args(extra)
                .stdout(Stdio::null()),
            "listening on ",
            Duration::from_secs(20),
        )
        .unwrap();
        KorvServe {
            port: addr.port(),
            _child: child,
        }
    }
}

/// Runs `korv ARGS` without an agent; returns its output.
fn korv(args: &[&str], extra: &[&Path]) -> Output {
    Command::cargo_bin("korv")
        .unwrap()
        .args(args)
        .args(extra)
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .unwrap()
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
        panic!(
            "{err}: stdout {:?}, stderr {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs OpenSSH's `ssh` with `args`, feeding `input`.
fn ssh(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
        ])
        .args(["-o", "ConnectTimeout=10"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// The JSON bodies of the response frames in `bytes`.
fn bodies(mut bytes: &[u8]) -> Vec<Value> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        let response: Value = serde_json::from_slice(&bytes[4..4 + len]).unwrap();
        out.push(response["body"].clone());
        bytes = &bytes[4 + len..];
    }
    out
}

#[test]
fn openssh_ssh_with_a_user_certificate_reaches_korv_serve_by_w_and_s() {
    let pki = Pki::new();
    let ca = pki.write("user_ca.pub", &public_key(&pki.user_ca));
    let server = KorvServe::start(&pki, &["--user-ca", ca.to_str().unwrap()]);
    let key = pki.user("alice_key", "alice");
    let port = server.port.to_string();
    let whoami = frame(&json!({"id": 1, "verb": "GET", "resource": "/whoami"}));
    let common = [
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-p",
        &port,
        "-i",
        key.to_str().unwrap(),
    ];
    for mode in [
        &["-W", "localhost:8022", "alice@127.0.0.1"][..],
        &["-s", "alice@127.0.0.1", "korv"][..],
    ] {
        let args: Vec<&str> = common.iter().chain(mode).copied().collect();
        let out = ssh(&args, &whoami);
        assert!(out.status.success(), "{mode:?}: {}", stderr(&out));
        let answers = bodies(&out.stdout);
        assert_eq!(answers.len(), 1, "{mode:?}");
        assert_eq!(answers[0]["user"], "alice");
        assert_eq!(answers[0]["certificate"]["key_id"], "alice_key");
        assert_eq!(answers[0]["certificate"]["principals"], json!(["alice"]));
    }
    // The same key without its certificate is not in authorized_keys.
    std::fs::remove_file(pki.path("alice_key-cert.pub")).unwrap();
    let args: Vec<&str> = common
        .iter()
        .chain(&["-W", "localhost:8022", "alice@127.0.0.1"])
        .copied()
        .collect();
    assert_eq!(ssh(&args, &whoami).status.code(), Some(255));
}

#[test]
fn korv_with_a_certificate_against_sshd_trusted_user_ca_keys_hosting_korv_serve_stdio() {
    assert!(
        Sshd::installed(),
        "openssh-server is needed (.ci/run installs it)"
    );
    let pki = Pki::new();
    let user = current_user();
    let ca = pki.write("user_ca.pub", &public_key(&pki.user_ca));
    let empty = pki.write("authorized_keys", "");
    let korv_bin = assert_cmd::cargo::cargo_bin("korv");
    let subsystem = format!(
        "Subsystem korv {} serve --stdio --data {} --require-principal /admin/*=admin",
        korv_bin.display(),
        pki.path("store.redb").display(),
    );
    let trusted = format!("TrustedUserCAKeys {}", ca.display());
    let sshd = Sshd::start(
        pki.dir.path(),
        &pki.host,
        &empty,
        &[&trusted, "ExposeAuthInfo yes", &subsystem],
    )
    .unwrap();
    let known_hosts = pki.write(
        "known_hosts",
        &format!("[127.0.0.1]:{} {}\n", sshd.port(), public_key(&pki.host)),
    );
    let url = |path: &str| format!("korv://{user}@127.0.0.1:{}{path}", sshd.port());
    let plain = pki.user("plain", &user);
    let admin = pki.user("admin", &format!("{user},admin"));

    let out = korv(
        &["get", "--subsystem", &url("/whoami"), "--known-hosts"],
        &[&known_hosts, Path::new("-i"), &plain],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let me = stdout_json(&out);
    assert_eq!(me["user"], json!(user));
    // sshd's ExposeAuthInfo hands the certificate on to `korv serve --stdio`.
    assert_eq!(me["certificate"]["key_id"], "plain");

    let out = korv(
        &[
            "store",
            "--subsystem",
            &url("/admin/x"),
            "{}",
            "--known-hosts",
        ],
        &[&known_hosts, Path::new("-i"), &plain],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stdout_json(&out)["message"]
            .as_str()
            .unwrap()
            .contains("\"admin\"")
    );

    let out = korv(
        &[
            "store",
            "--subsystem",
            &url("/admin/x"),
            "{}",
            "--known-hosts",
        ],
        &[&known_hosts, Path::new("-i"), &admin],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    drop(sshd);
}

/// `korv get /hello` through `sshd` or `korv serve` on `port`, trusting
/// hosts by `known_hosts` only; `user` logs in with `key`.
fn korv_hello(port: u16, user: &str, key: &Path, known_hosts: &Path, subsystem: bool) -> Output {
    let url = format!("korv://{user}@127.0.0.1:{port}/hello");
    let mut args = vec!["get", url.as_str(), "--known-hosts"];
    if subsystem {
        args.insert(1, "--subsystem");
    }
    korv(&args, &[known_hosts, Path::new("-i"), key])
}

#[test]
fn cert_authority_and_revoked_lines_judge_sshd_and_korv_serve_host_certificates() {
    assert!(
        Sshd::installed(),
        "openssh-server is needed (.ci/run installs it)"
    );
    let pki = Pki::new();
    let user = current_user();
    let host_cert = pki.host_certificate();
    let key = keygen(pki.dir.path(), "id", KeyKind::Ed25519);
    let authorized = pki.write("authorized_keys_sshd", &format!("{}\n", public_key(&key)));
    let korv_bin = assert_cmd::cargo::cargo_bin("korv");
    let subsystem = format!(
        "Subsystem korv {} serve --stdio --data {}",
        korv_bin.display(),
        pki.path("sshd-store.redb").display(),
    );
    let host_certificate = format!("HostCertificate {}", host_cert.display());
    let sshd = Sshd::start(
        pki.dir.path(),
        &pki.host,
        &authorized,
        &[&host_certificate, &subsystem],
    )
    .unwrap();
    let serve = KorvServe::start(&pki, &["--host-cert", host_cert.to_str().unwrap()]);
    std::fs::copy(&authorized, pki.path("authorized_keys")).unwrap();

    let trust = format!("@cert-authority * {}\n", public_key(&pki.host_ca));
    let trusting = pki.write("known_hosts", &trust);
    let revoking = pki.write(
        "known_hosts_revoked",
        &format!("{trust}@revoked * {}\n", public_key(&pki.host)),
    );
    let other_ca = keygen(pki.dir.path(), "other_ca", KeyKind::Ed25519);
    let wrong = pki.write(
        "known_hosts_wrong",
        &format!("@cert-authority * {}\n", public_key(&other_ca)),
    );
    for (name, port, login, subsystem) in [
        ("sshd", sshd.port(), user.as_str(), true),
        ("korv serve", serve.port, "alice", false),
    ] {
        let out = korv_hello(port, login, &key, &trusting, subsystem);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert_eq!(stdout_json(&out), json!({"msg": "Hello World!"}), "{name}");

        let out = korv_hello(port, login, &key, &revoking, subsystem);
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(
            stderr(&out).contains("is revoked"),
            "{name}: {}",
            stderr(&out)
        );

        let out = korv_hello(port, login, &key, &wrong, subsystem);
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(
            stderr(&out).contains("is not trusted"),
            "{name}: {}",
            stderr(&out)
        );
    }
    drop(sshd);
}

#[test]
fn openssh_ssh_verifies_a_korv_serve_host_certificate() {
    let pki = Pki::new();
    let host_cert = pki.host_certificate();
    let key = keygen(pki.dir.path(), "id", KeyKind::Ed25519);
    let server = KorvServe::start(&pki, &["--host-cert", host_cert.to_str().unwrap()]);
    std::fs::write(pki.path("authorized_keys"), public_key(&key) + "\n").unwrap();
    let trusting = pki.write(
        "known_hosts",
        &format!("@cert-authority * {}\n", public_key(&pki.host_ca)),
    );
    let empty = pki.write("known_hosts_empty", "");
    let port = server.port.to_string();
    let hello = frame(&json!({"id": 1, "verb": "GET", "resource": "/hello"}));
    let run = |known_hosts: &Path| {
        ssh(
            &[
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                &format!("UserKnownHostsFile={}", known_hosts.display()),
                "-o",
                "IdentitiesOnly=yes",
                "-i",
                key.to_str().unwrap(),
                "-p",
                &port,
                "-W",
                "localhost:8022",
                "alice@127.0.0.1",
            ],
            &hello,
        )
    };
    let out = run(&trusting);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(bodies(&out.stdout), [json!({"msg": "Hello World!"})]);
    // Without the CA line, ssh knows nothing of the host.
    let out = run(&empty);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("verification failed"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn require_principal_answers_403_through_korv_serve_and_korv_cert() {
    let pki = Pki::new();
    let ca = pki.write("user_ca.pub", &public_key(&pki.user_ca));
    let server = KorvServe::start(
        &pki,
        &[
            "--user-ca",
            ca.to_str().unwrap(),
            "--require-principal",
            "/admin/*=admin",
        ],
    );
    let known_hosts = pki.write(
        "known_hosts",
        &format!("[127.0.0.1]:{} {}\n", server.port, public_key(&pki.host)),
    );
    let key = keygen(pki.dir.path(), "id", KeyKind::Ed25519);
    // Certificates named with --cert, not beside the key.
    let writer = sign(
        &pki.user_ca,
        &key,
        "writer",
        &["-n", "alice", "-V", "-5m:+1h"],
    );
    let writer = std::fs::rename(&writer, pki.path("writer-cert.pub"))
        .map(|()| pki.path("writer-cert.pub"))
        .unwrap();
    let admin = sign(
        &pki.user_ca,
        &key,
        "admin",
        &["-n", "alice,admin", "-V", "-5m:+1h"],
    );
    let url = format!("korv://alice@127.0.0.1:{}/admin/notes", server.port);
    let store = |cert: &Path| {
        korv(
            &["store", &url, "{}", "--known-hosts"],
            &[
                &known_hosts,
                Path::new("-i"),
                &key,
                Path::new("--cert"),
                cert,
            ],
        )
    };
    let out = store(&writer);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let message = stdout_json(&out)["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("/admin/*") && message.contains("\"admin\""),
        "{message}"
    );
    let out = store(&admin);
    assert!(out.status.success(), "{}", stderr(&out));
}
