//! `korv serve` runs with two glibc malloc arenas (`MALLOC_ARENA_MAX=2`)
//! unless the variable is set already: glibc's default of 8 per core lets
//! resident memory creep for hours (`cargo xtask soak` gates on it). The
//! setting is applied by restarting the process in place, so the process
//! that listens is the one started, with the variable in its environment.

#![cfg(all(target_os = "linux", target_env = "gnu"))]

use std::process::{Command, Stdio};
use std::time::Duration;

use assert_cmd::cargo::CommandCargoExt;
use korv_testkit::keys::{KeyKind, keygen};
use korv_testkit::net::free_port;
use korv_testkit::process::{KillOnDrop, wait_until_listening};
use tempfile::TempDir;

/// The value of `MALLOC_ARENA_MAX` in the environment of the `korv serve`
/// started with `arena_max` (unset when `None`), once it listens.
fn serve_arena_max(arena_max: Option<&str>) -> Option<String> {
    let dir = TempDir::new().unwrap();
    let host = keygen(dir.path(), "host", KeyKind::Ed25519);
    let authorized = dir.path().join("authorized_keys");
    std::fs::write(&authorized, "").unwrap();
    let port = free_port();
    let mut command = Command::cargo_bin("korv").unwrap();
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--host-key")
        .arg(&host)
        .arg("--authorized-keys")
        .arg(&authorized)
        .arg("--data")
        .arg(dir.path().join("store.redb"))
        .env_remove("MALLOC_ARENA_MAX")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(value) = arena_max {
        command.env("MALLOC_ARENA_MAX", value);
    }
    let mut child = KillOnDrop::spawn(&mut command).unwrap();
    wait_until_listening(&mut child.0, port, Duration::from_secs(20)).unwrap();
    let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap();
    environ
        .split(|b| *b == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .find_map(|entry| entry.strip_prefix("MALLOC_ARENA_MAX="))
        .map(str::to_owned)
}

#[test]
fn korv_serve_runs_with_two_malloc_arenas() {
    assert_eq!(serve_arena_max(None).as_deref(), Some("2"));
}

#[test]
fn an_operators_malloc_arena_max_is_kept() {
    assert_eq!(serve_arena_max(Some("4")).as_deref(), Some("4"));
}
