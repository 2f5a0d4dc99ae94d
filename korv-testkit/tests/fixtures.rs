//! The fixtures against the real programs they wrap: `ssh-keygen`, `sshd`
//! and `ssh`, and child processes.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use korv_testkit::keys::{
    KeyKind, keygen, keygen_with_passphrase, known_hosts_line, public_key, public_key_path,
    try_keygen,
};
use korv_testkit::net::free_port;
use korv_testkit::process::{spawn_announcing, spawn_listening, wait_until_listening};
use korv_testkit::sshd::{Sshd, current_user};

#[test]
fn keygen_makes_each_kind_with_its_name_as_comment() {
    let dir = tempfile::tempdir().unwrap();
    for (name, kind, prefix) in [
        ("ed", KeyKind::Ed25519, "ssh-ed25519 "),
        ("ec", KeyKind::Ecdsa256, "ecdsa-sha2-nistp256 "),
        ("rsa", KeyKind::Rsa(2048), "ssh-rsa "),
    ] {
        let private = keygen(dir.path(), name, kind);
        assert_eq!(private, dir.path().join(name));
        assert!(private.exists());
        let line = public_key(&private);
        assert!(line.starts_with(prefix), "{line}");
        assert!(line.ends_with(&format!(" {name}")), "{line}");
    }
    assert_eq!(
        public_key_path(&dir.path().join("id.v2")),
        dir.path().join("id.v2.pub")
    );
}

#[test]
fn a_passphrase_protects_the_key_and_an_existing_name_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let locked = keygen_with_passphrase(dir.path(), "locked", KeyKind::Ed25519, "s3cret");
    let unlocked = keygen(dir.path(), "open", KeyKind::Ed25519);
    // `ssh-keygen -y` prints the public key only given the right passphrase.
    let derive = |path: &std::path::Path, passphrase: &str| {
        Command::new("ssh-keygen")
            .args(["-y", "-P", passphrase, "-f"])
            .arg(path)
            .stderr(Stdio::null())
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(!derive(&locked, ""));
    assert!(derive(&locked, "s3cret"));
    assert!(derive(&unlocked, ""));
    let err = try_keygen(dir.path(), "open", KeyKind::Ed25519, "").unwrap_err();
    assert!(err.to_string().contains("ssh-keygen failed"), "{err}");
}

#[test]
fn a_known_hosts_line_names_the_loopback_port() {
    assert_eq!(
        known_hosts_line(2222, "ssh-ed25519 AAAA host\n"),
        "[127.0.0.1]:2222 ssh-ed25519 AAAA host\n"
    );
}

#[test]
fn a_free_port_can_be_bound() {
    let port = free_port();
    assert_ne!(port, 0);
    TcpListener::bind(("127.0.0.1", port)).unwrap();
}

#[test]
fn spawn_announcing_returns_what_follows_the_prefix() {
    // `cat` keeps the child alive until its stdin closes, which the guard's
    // kill makes moot.
    let (child, announced) = spawn_announcing(
        Command::new("sh")
            .args(["-c", "echo 'listening 127.0.0.1:4321'; exec cat"])
            .stdin(Stdio::piped()),
        "listening ",
    )
    .unwrap();
    assert_eq!(announced, "127.0.0.1:4321");
    let pid = child.id();
    drop(child);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the child is reaped when dropped"
    );
    let err = spawn_announcing(Command::new("echo").arg("hello"), "listening ").unwrap_err();
    assert!(err.to_string().contains("\"hello\\n\""), "{err}");
}

#[test]
fn spawn_listening_reads_the_bound_address_from_stderr() {
    let (child, addr) = spawn_listening(
        Command::new("sh")
            .args([
                "-c",
                "echo 'starting' >&2; echo 'srv listening on 127.0.0.1:4321 (store x)' >&2; exec cat",
            ])
            .stdin(Stdio::piped()),
        "listening on ",
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(addr, "127.0.0.1:4321".parse().unwrap());
    drop(child);
    let err = spawn_listening(
        Command::new("sh").args(["-c", "echo 'no port' >&2; exit 3"]),
        "listening on ",
        Duration::from_secs(20),
    )
    .unwrap_err();
    assert!(err.to_string().contains("exited"), "{err}");
}

#[test]
fn wait_until_listening_sees_a_listener_and_a_child_that_exits() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut alive = Command::new("cat").stdin(Stdio::piped()).spawn().unwrap();
    wait_until_listening(&mut alive, port, Duration::from_secs(5)).unwrap();
    alive.kill().unwrap();
    alive.wait().unwrap();
    drop(listener);
    let mut exits = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
    let err = wait_until_listening(&mut exits, free_port(), Duration::from_secs(20)).unwrap_err();
    assert!(err.to_string().contains("exited"), "{err}");
}

#[test]
fn sshd_listens_and_lets_an_authorized_key_run_a_command() {
    assert!(
        Sshd::installed(),
        "openssh-server is needed (.ci/run installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let host = keygen(dir.path(), "host", KeyKind::Ed25519);
    let id = keygen(dir.path(), "id", KeyKind::Ed25519);
    let authorized = dir.path().join("authorized_keys");
    std::fs::copy(public_key_path(&id), &authorized).unwrap();
    let sshd = Sshd::start(dir.path(), &host, &authorized, &["AllowTcpForwarding no"]).unwrap();
    let config = std::fs::read_to_string(dir.path().join("sshd_config")).unwrap();
    assert!(config.ends_with("\nAllowTcpForwarding no\n"), "{config}");
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(
        &known_hosts,
        known_hosts_line(sshd.port(), &public_key(&host)),
    )
    .unwrap();
    let out = Command::new("ssh")
        .args(["-F", "/dev/null", "-p", &sshd.port().to_string(), "-i"])
        .arg(&id)
        .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-o", "StrictHostKeyChecking=yes"])
        .arg(format!("{}@127.0.0.1", current_user()))
        .arg("echo answered")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "answered\n");
}

#[test]
fn an_sshd_that_cannot_start_is_an_error_carrying_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let host = keygen(dir.path(), "host", KeyKind::Ed25519);
    let err = Sshd::start(
        dir.path(),
        &host,
        &dir.path().join("none"),
        &["NoSuchOption yes"],
    )
    .unwrap_err();
    assert!(err.to_string().contains("NoSuchOption"), "{err}");
}
