//! `korv serve` runs with two glibc malloc arenas (`MALLOC_ARENA_MAX=2`)
//! and fixed mmap and trim thresholds, each unless the variable is set
//! already: glibc's default of 8 arenas per core lets resident memory creep
//! for hours (`cargo xtask soak` gates on it), and its moving thresholds made
//! large bodies fault their pages in afresh on every request. The settings
//! are applied by restarting the process in place, so the process that
//! listens is the one started, with the variables in its environment.

#![cfg(all(target_os = "linux", target_env = "gnu"))]

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use assert_cmd::cargo::CommandCargoExt;
use korv_testkit::keys::{KeyKind, keygen};
use korv_testkit::net::free_port;
use korv_testkit::process::{KillOnDrop, wait_until_listening};
use tempfile::TempDir;

/// The names glibc reads that `korv serve` sets.
const SETTINGS: [&str; 3] = [
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
];

/// The `MALLOC_*` settings in the environment of the `korv serve` started
/// with `given` (the others removed), once it listens.
fn serve_malloc_settings(given: &[(&str, &str)]) -> BTreeMap<String, String> {
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
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for name in SETTINGS {
        command.env_remove(name);
    }
    command.envs(given.iter().copied());
    let mut child = KillOnDrop::spawn(&mut command).unwrap();
    wait_until_listening(&mut child.0, port, Duration::from_secs(20)).unwrap();
    let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap();
    environ
        .split(|b| *b == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .filter_map(|entry| entry.split_once('='))
        .filter(|(name, _)| SETTINGS.contains(name))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

fn settings(pairs: [(&str, &str); 3]) -> BTreeMap<String, String> {
    pairs
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

#[test]
fn korv_serve_runs_with_two_malloc_arenas_and_fixed_thresholds() {
    assert_eq!(
        serve_malloc_settings(&[]),
        settings([
            ("MALLOC_ARENA_MAX", "2"),
            ("MALLOC_MMAP_THRESHOLD_", "4194304"),
            ("MALLOC_TRIM_THRESHOLD_", "16777216"),
        ])
    );
}

#[test]
fn an_operators_malloc_settings_are_kept_and_the_others_set() {
    assert_eq!(
        serve_malloc_settings(&[
            ("MALLOC_ARENA_MAX", "4"),
            ("MALLOC_TRIM_THRESHOLD_", "1000")
        ]),
        settings([
            ("MALLOC_ARENA_MAX", "4"),
            ("MALLOC_MMAP_THRESHOLD_", "4194304"),
            ("MALLOC_TRIM_THRESHOLD_", "1000"),
        ])
    );
}
