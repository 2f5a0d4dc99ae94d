//! The `korv` binary following an OpenSSH client configuration, against
//! `korv serve` and a private OpenSSH `sshd` as jump host, all on
//! 127.0.0.1: an alias from `~/.ssh/config` with no flags, `-F`, `-F none`,
//! `-J` and `ProxyJump`, options over the file, `-v`, a malformed file;
//! then `korv completions` and `korv man`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use assert_cmd::cargo::CommandCargoExt;
use korv_testkit::keys::{KeyKind, keygen, known_hosts_line, public_key};
use korv_testkit::net::free_port;
use korv_testkit::process::{KillOnDrop, wait_until_listening};
use korv_testkit::sshd::{Sshd, current_user};
use serde_json::{Value, json};
use tempfile::TempDir;

/// How long `korv serve` may take to listen.
const LISTEN_WITHIN: Duration = Duration::from_secs(20);

/// `korv serve` and one bastion, trusting the key `id`; a home directory
/// whose `.ssh/config` names them `korv` and `b1`.
struct World {
    dir: TempDir,
    korv_port: u16,
    _serve: KillOnDrop,
    bastion: Sshd,
}

impl World {
    fn start() -> Option<World> {
        if !Sshd::installed() {
            eprintln!("skipped: sshd is not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let host = keygen(dir.path(), "korv_host", KeyKind::Ed25519);
        let id = keygen(dir.path(), "id", KeyKind::Ed25519);
        let authorized = dir.path().join("authorized_keys");
        std::fs::write(&authorized, public_key(&id) + "\n").unwrap();
        let korv_port = free_port();
        let mut serve = KillOnDrop::spawn(
            Command::cargo_bin("korv")
                .unwrap()
                .args(["serve", "--listen", &format!("127.0.0.1:{korv_port}")])
                .arg("--host-key")
                .arg(&host)
                .arg("--authorized-keys")
                .arg(&authorized)
                .arg("--data")
                .arg(dir.path().join("store.redb"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .unwrap();
        wait_until_listening(&mut serve.0, korv_port, LISTEN_WITHIN).unwrap();
        let bastion_dir = dir.path().join("b1");
        std::fs::create_dir_all(&bastion_dir).unwrap();
        let bastion_key = keygen(&bastion_dir, "host", KeyKind::Ed25519);
        let bastion = Sshd::start(&bastion_dir, &bastion_key, &authorized, &[]).unwrap();
        let known_hosts = known_hosts_line(korv_port, &public_key(&host))
            + &known_hosts_line(bastion.port(), &public_key(&bastion_key));
        std::fs::write(dir.path().join("known_hosts"), known_hosts).unwrap();
        let world = World {
            dir,
            korv_port,
            _serve: serve,
            bastion,
        };
        world.write_config("");
        Some(world)
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// `~/.ssh/config`: `first`, then `korv`, `b1` and the shared settings.
    fn write_config(&self, first: &str) -> PathBuf {
        let ssh = self.home().join(".ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        let text = format!(
            "{first}Host korv\n  HostName 127.0.0.1\n  Port {korv}\n  User alice\n\
             Host via-b1\n  HostName 127.0.0.1\n  Port {korv}\n  ProxyJump b1\n\
             Host b1\n  HostName 127.0.0.1\n  Port {b1}\n  User {me}\n\
             Host *\n  IdentityFile {id}\n  UserKnownHostsFile {known_hosts}\n  IdentityAgent none\n",
            korv = self.korv_port,
            b1 = self.bastion.port(),
            me = current_user(),
            id = self.dir.path().join("id").display(),
            known_hosts = self.dir.path().join("known_hosts").display(),
        );
        let path = ssh.join("config");
        write_config_file(&path, &text);
        path
    }

    /// `korv ARGS` with this home, no connection options from the
    /// environment and no agent: (exit code, stdout, stderr).
    fn korv(&self, args: &[&str]) -> (i32, String, String) {
        run_korv(args, Some(&self.home()))
    }

    fn json(&self, args: &[&str]) -> (i32, Value, String) {
        let (code, out, err) = self.korv(args);
        let value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("{e}: stdout {out:?} stderr {err:?}"));
        (code, value, err)
    }
}

/// Writes a configuration file that only its owner may write, as ssh (and
/// korv) require whatever the umask.
fn write_config_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

fn run_korv(args: &[&str], home: Option<&Path>) -> (i32, String, String) {
    let mut command = Command::cargo_bin("korv").unwrap();
    command
        .args(args)
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("KORV_HOST")
        .env_remove("KORV_PORT")
        .env_remove("KORV_LOG")
        .stdin(Stdio::null());
    if let Some(home) = home {
        command.env("HOME", home);
    }
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn an_alias_from_the_home_config_with_no_flags() {
    let Some(world) = World::start() else {
        return;
    };
    let (code, body, err) = world.json(&["get", "korv://korv/whoami"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(body["user"], json!("alice"), "{body}");
    // The user in the URL wins over the file's.
    let (_, body, _) = world.json(&["get", "korv://bob@korv/whoami"]);
    assert_eq!(body["user"], json!("bob"));
}

#[test]
fn an_explicit_file_and_none() {
    let Some(world) = World::start() else {
        return;
    };
    let config = world.write_config("");
    let elsewhere = world.dir.path().join("elsewhere.conf");
    std::fs::rename(&config, &elsewhere).unwrap();
    let file = elsewhere.to_str().unwrap();
    let (code, body, err) = world.json(&["get", "korv://korv/hello", "-F", file]);
    assert_eq!((code, body), (0, json!({"msg": "Hello World!"})), "{err}");
    let (code, _, err) = world.korv(&["get", "korv://korv/hello", "-F", "none", "--timeout", "5"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("korv:8022"), "{err}");
}

#[test]
fn a_jump_host_from_the_flag_and_from_proxy_jump() {
    let Some(world) = World::start() else {
        return;
    };
    let (code, body, err) = world.json(&["get", "korv://korv/whoami", "-J", "b1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(body["user"], json!("alice"));
    let (code, body, err) = world.json(&["get", "korv://via-b1/hello"]);
    assert_eq!((code, body), (0, json!({"msg": "Hello World!"})), "{err}");
    let (code, _, err) = world.korv(&["get", "korv://korv/hello", "-J", "user@"]);
    assert_eq!(code, 2, "a malformed -J is a usage error: {err}");
}

#[test]
fn command_line_options_win_over_the_file() {
    let Some(world) = World::start() else {
        return;
    };
    // Port 1: refused at once, so the file's port was not used.
    let (code, _, err) = world.korv(&["get", "korv://korv/hello", "--port", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
    let (code, body, err) = world.json(&["get", "korv://korv/whoami", "-l", "carol"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(body["user"], json!("carol"));
}

#[test]
fn verbose_shows_the_config_lines_and_identities_used() {
    let Some(world) = World::start() else {
        return;
    };
    let config = world.home().join(".ssh/config");
    let (code, _, err) = world.korv(&["get", "korv://via-b1/hello", "-v"]);
    assert_eq!(code, 0, "{err}");
    let shown = config.display().to_string();
    assert!(err.contains("korv: jump host b1 at 127.0.0.1:"), "{err}");
    assert!(err.contains("korv: server via-b1 at 127.0.0.1:"), "{err}");
    assert!(
        err.contains(&format!("{shown}:6: HostName 127.0.0.1")),
        "{err}"
    );
    assert!(err.contains(&format!("{shown}:8: ProxyJump b1")), "{err}");
    let id = world.dir.path().join("id").display().to_string();
    assert!(err.contains(&format!("identity {id}")), "{err}");
    assert!(err.contains("authenticated"), "{err}");
}

#[test]
fn a_malformed_config_names_its_file_and_line() {
    let Some(world) = World::start() else {
        return;
    };
    let config = world.write_config("Port eighty\n");
    let (code, _, err) = world.korv(&["get", "korv://korv/hello"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("{}:1: Port: invalid port", config.display())),
        "{err}"
    );
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for (shell, marker) in [
        ("bash", "complete -F _korv"),
        ("zsh", "#compdef korv"),
        ("fish", "complete -c korv"),
    ] {
        let (code, out, err) = run_korv(&["completions", shell], None);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains(marker), "{shell}: {out}");
        for word in ["get", "serve", "ssh-config", "jump"] {
            assert!(out.contains(word), "{shell} lacks {word}");
        }
    }
    let (code, out, _) = run_korv(&["completions", "bash"], None);
    assert_eq!(code, 0);
    // The script is valid bash.
    let checked = Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(out.as_bytes())?;
            child.wait()
        });
    if let Ok(status) = checked {
        assert!(status.success());
    }
    let (code, _, _) = run_korv(&["completions", "tcsh"], None);
    assert_eq!(code, 2);
}

#[test]
fn the_man_page_covers_every_subcommand_and_renders() {
    let (code, page, err) = run_korv(&["man"], None);
    assert_eq!(code, 0, "{err}");
    assert!(page.starts_with(".ie") || page.starts_with(".TH"), "{page}");
    assert!(page.contains(".TH korv 1"), "{page}");
    for heading in [
        "\"KORV GET\"",
        "\"KORV SERVE\"",
        "\"KORV COMPLETIONS\"",
        "\"SSH CONFIGURATION\"",
    ] {
        assert!(page.contains(&format!(".SH {heading}")), "{heading}");
    }
    assert!(
        page.contains("\\-\\-ssh\\-config"),
        "the -F option is documented"
    );
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run_korv(&["man", "--out-dir", dir.path().to_str().unwrap()], None);
    assert_eq!(code, 0, "{err}");
    for name in ["korv.1", "korv-get.1", "korv-serve.1", "korv-completions.1"] {
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert!(text.contains(".TH"), "{name}");
    }
    // groff, where installed, formats it without a warning (-k: UTF-8 input,
    // as man(1) reads it).
    let path = dir.path().join("korv.1");
    std::fs::write(&path, &page).unwrap();
    if let Ok(out) = Command::new("groff")
        .args(["-k", "-man", "-Tutf8", "-ww", "-z"])
        .arg(&path)
        .output()
    {
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && warnings.trim().is_empty(),
            "{warnings}"
        );
    }
}
