//! A private OpenSSH `sshd` on 127.0.0.1: its own config, host key and
//! authorized keys in a directory of the caller's, on a free port, logging
//! to a pipe that tells when it listens.

use std::io::{self, BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::net::try_free_port;
use crate::process::KillOnDrop;

/// Where Debian's `openssh-server` installs the daemon.
pub const PROGRAM: &str = "/usr/sbin/sshd";

/// How long `sshd` may take to listen.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// What `sshd` logs once its listener is bound (at its default log level).
const READY_LINE: &str = "Server listening on ";

/// A running `sshd`, stopped when dropped.
#[derive(Debug)]
pub struct Sshd {
    port: u16,
    _child: KillOnDrop,
}

impl Sshd {
    /// Whether `sshd` is installed at [`PROGRAM`].
    pub fn installed() -> bool {
        Path::new(PROGRAM).exists()
    }

    /// Starts `sshd` in the foreground with the config `dir/sshd_config`:
    /// 127.0.0.1 on a free port, `host_key`, public keys only (from
    /// `authorized_keys`, with no ownership checks, so that a temporary
    /// directory serves), no PAM and no pid file; then each line of `extra`
    /// (such as a `Subsystem` or `Ciphers` line). Returns once `sshd` says it
    /// listens.
    ///
    /// # Errors
    /// `sshd` is not installed, the config cannot be written, or `sshd`
    /// exits or stays silent instead of listening; the error carries what it
    /// logged.
    pub fn start(
        dir: &Path,
        host_key: &Path,
        authorized_keys: &Path,
        extra: &[&str],
    ) -> io::Result<Sshd> {
        Sshd::start_with_env(dir, host_key, authorized_keys, extra, &[])
    }

    /// As [`Sshd::start`], with `env` added to `sshd`'s environment (such
    /// as an `LD_PRELOAD`).
    ///
    /// # Errors
    /// As [`Sshd::start`].
    pub fn start_with_env(
        dir: &Path,
        host_key: &Path,
        authorized_keys: &Path,
        extra: &[&str],
        env: &[(&str, &Path)],
    ) -> io::Result<Sshd> {
        let port = try_free_port()?;
        let mut config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile none\n\
             StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\n",
            host_key.display(),
            authorized_keys.display(),
        );
        for line in extra {
            config.push_str(line);
            config.push('\n');
        }
        let config_path = dir.join("sshd_config");
        std::fs::write(&config_path, config)?;
        // sshd refuses to start without its privilege separation directory;
        // creating it needs root, and sshd's own message says what is wrong.
        let _ = std::fs::create_dir_all("/run/sshd");
        // -D: stay in the foreground; -e: log to stderr.
        let mut child = KillOnDrop::spawn(
            Command::new(PROGRAM)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config_path)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )?;
        let stderr = child
            .0
            .stderr
            .take()
            .ok_or_else(|| io::Error::other("no stderr"))?;
        // The log is read to its end by a thread of its own, so that sshd
        // never blocks on a full pipe; the lines before it listens come here.
        let (lines, logged) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let deadline = Instant::now() + READY_WITHIN;
        let mut log = Vec::new();
        loop {
            match logged.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.starts_with(READY_LINE) => {
                    return Ok(Sshd {
                        port,
                        _child: child,
                    });
                }
                Ok(line) => log.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "sshd did not listen within {READY_WITHIN:?}; it logged: {}",
                            log.join(" | ")
                        ),
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::other(format!(
                        "sshd exited instead of listening; it logged: {}",
                        log.join(" | ")
                    )));
                }
            }
        }
    }

    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// The name of the user running this process, which `sshd` accepts as the
/// login name: `$USER`, else `id -un`, else `root`.
pub fn current_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|user| !user.is_empty())
        .or_else(|| {
            Command::new("id")
                .arg("-un")
                .output()
                .ok()
                .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
                .filter(|user| !user.is_empty())
        })
        .unwrap_or_else(|| "root".into())
}
