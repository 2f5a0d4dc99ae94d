//! The processes of a run: `korv serve`, the peer servers and a private
//! sshd, the load generators (`korv bench`, `korv-peers load`) and their
//! reports, OpenSSH's bulk transfer, and the server's memory.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use korv_testkit::keys::{KeyKind, known_hosts_line, public_key_path, try_keygen, try_public_key};
use korv_testkit::net::try_free_port;
use korv_testkit::process::{KillOnDrop, spawn_announcing, wait_until_listening};
use korv_testkit::sshd::{self, Sshd};
use serde::{Deserialize, Deserializer};

use super::plan::{Load, System, TLS_CIPHER, Timing, Workload};
use super::report::Memory;
use super::report::Watches;

/// How long a server may take to listen.
const LISTEN_WITHIN: Duration = Duration::from_secs(10);

/// The peers started for the load runs, by system.
const PEERS: [System; 4] = [System::Tcp, System::Https2, System::Https1, System::Http1];

/// What a load generator prints with `--json` (`korv bench` and
/// `korv-peers load` print the same members); only the members used here.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct LoadReport {
    /// Requests answered inside the measured window.
    #[serde(default)]
    pub(crate) answered: u64,
    /// Transport failures.
    #[serde(default)]
    pub(crate) errors: u64,
    #[serde(default, deserialize_with = "zero_if_null")]
    pub(crate) requests_per_second: f64,
    #[serde(default)]
    pub(crate) latency_us: Latency,
    /// CPU time over the measured window, when the generator was asked.
    #[serde(default)]
    pub(crate) cpu: Option<CpuUse>,
    /// The negotiated cipher, from generators that report it themselves
    /// (korv 0.2.1's client, through `load.py`).
    #[serde(default)]
    pub(crate) cipher: Option<String>,
}

/// CPU time (user plus system) over a measured window, in seconds.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub(crate) struct CpuUse {
    /// The load generator's process.
    #[serde(default)]
    pub(crate) client_seconds: f64,
    /// The server's process, when it could be read.
    #[serde(default)]
    pub(crate) server_seconds: Option<f64>,
}

/// A load run's report and what its output says besides.
#[derive(Debug, Clone, Default)]
pub(crate) struct Measured {
    pub(crate) report: LoadReport,
    /// The cipher the run's SSH or TLS connection negotiated, as printed
    /// by the client (OpenSSH's `kex:` line, russh's negotiated algorithms,
    /// asyncssh's `send_cipher`), or as configured (TLS).
    pub(crate) cipher: Option<String>,
}

/// The cipher of the client-to-server direction, from a client's log:
/// OpenSSH's `ssh -v` (`debug1: kex: client->server cipher: NAME MAC: ...`)
/// or russh's debug line (`negotiated algorithms: Names { ... cipher:
/// Name("NAME"), ...`), which `korv bench` prints with
/// `KORV_LOG=russh::client::kex=debug`. The first one wins (a rekey
/// repeats it).
pub(crate) fn negotiated_cipher(log: &str) -> Option<String> {
    log.lines().find_map(|line| {
        if let Some((_, rest)) = line.split_once("kex: client->server cipher: ") {
            return rest.split_whitespace().next().map(str::to_owned);
        }
        let (_, names) = line.split_once("negotiated algorithms:")?;
        let (_, rest) = names.split_once("cipher: Name(\"")?;
        rest.split_once('"').map(|(name, _)| name.to_owned())
    })
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Latency {
    #[serde(default)]
    pub(crate) p50: u64,
    #[serde(default)]
    pub(crate) p99: u64,
}

/// A rate that JSON could not carry (infinite or NaN, written as `null`)
/// counts as 0.
fn zero_if_null<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Option::<f64>::deserialize(deserializer).map(Option::unwrap_or_default)
}

/// Starts `command` with no input and its output discarded.
pub(crate) fn spawn_quiet(command: &mut Command) -> Result<KillOnDrop, String> {
    KillOnDrop::spawn(
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .map_err(|e| e.to_string())
}

/// The resident memory of process `pid`, in KiB.
pub(crate) fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// A JSON object of exactly `size` bytes: `{"data":"xxxx…"}`.
fn write_body(path: &Path, size: usize) -> Result<(), String> {
    let overhead = r#"{"data":""}"#.len();
    let body = format!(r#"{{"data":"{}"}}"#, "x".repeat(size - overhead));
    debug_assert_eq!(body.len(), size);
    std::fs::write(path, body).map_err(|e| format!("{}: {e}", path.display()))
}

/// What a run can use besides the release binaries, made before the clock
/// starts: the nodelay shim and the Python environments.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tools {
    /// `nodelay.so`, for the OpenSSH nodelay rows.
    pub(crate) shim: Option<PathBuf>,
    /// The python of `target/venv-py` with korv-py (release) installed.
    pub(crate) korv_py: Option<PathBuf>,
    /// The python of `target/venv-legacy` with korv 0.2.1 installed.
    pub(crate) korv021: Option<PathBuf>,
}

/// Builds `benches/nodelay/nodelay.c` into `out_dir/nodelay.so` with `cc`;
/// `None`, said on the console, when the compiler is missing or fails.
pub(crate) fn build_shim(source: &Path, out_dir: &Path) -> Option<PathBuf> {
    let shim = out_dir.join("nodelay.so");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&shim)
        .arg(source)
        .arg("-ldl")
        .status();
    match built {
        Ok(status) if status.success() => Some(shim),
        Ok(status) => {
            println!("    cc failed ({status}): the OpenSSH nodelay rows are skipped");
            None
        }
        Err(err) => {
            println!("    no C compiler ({err}): the OpenSSH nodelay rows are skipped");
            None
        }
    }
}

/// The Python servers: korv-py's `hello_server.py` and korv 0.2.1's own
/// server, each on 127.0.0.1 with the run's host key.
struct PythonServers {
    korv_py: PathBuf,
    korv021: PathBuf,
    hello: KillOnDrop,
    hello_port: u16,
    original: KillOnDrop,
    original_port: u16,
}

/// Everything the load runs need: binaries, keys, bodies, and the servers,
/// which stop when this is dropped.
pub(crate) struct Servers {
    korv: PathBuf,
    peers: PathBuf,
    dir: PathBuf,
    id: PathBuf,
    known_hosts: PathBuf,
    korv_port: u16,
    korv_server: KillOnDrop,
    /// The peer servers and the addresses they announced.
    peer_servers: Vec<(System, KillOnDrop, String)>,
    /// The private sshd, stock, when installed.
    sshd: Option<Sshd>,
    /// A second private sshd under the nodelay shim.
    sshd_nodelay: Option<Sshd>,
    /// The nodelay shim.
    shim: Option<PathBuf>,
    /// Whether OpenSSH's client runs.
    ssh: bool,
    python: Option<PythonServers>,
    user: String,
    timing: Timing,
}

/// The environment that makes `korv bench` log the negotiated algorithms
/// (and nothing else beyond warnings).
const KORV_LOG_CIPHER: &str = "warn,russh::client::kex=debug";

/// The korv-py example scripts and korv 0.2.1's server and load generator.
fn script(path: &str) -> PathBuf {
    crate::workspace::root().join(path)
}

impl Servers {
    /// Makes keys and bodies in `dir`, then starts `korv serve`, the peers,
    /// (when installed) two private sshds, stock and under the nodelay shim,
    /// and (with Python) the Python servers, from the binaries in `bin`.
    pub(crate) fn start(
        bin: &Path,
        dir: &Path,
        timing: Timing,
        tools: &Tools,
    ) -> Result<Servers, String> {
        let id = try_keygen(dir, "id", KeyKind::Ed25519, "").map_err(|e| e.to_string())?;
        let host = try_keygen(dir, "host", KeyKind::Ed25519, "").map_err(|e| e.to_string())?;
        let authorized = dir.join("authorized_keys");
        std::fs::copy(public_key_path(&id), &authorized).map_err(|e| e.to_string())?;
        write_body(&dir.join("body-1k.json"), 1024)?;
        write_body(&dir.join("body-1m.json"), 1 << 20)?;
        let host_pub = try_public_key(&host).map_err(|e| e.to_string())?;

        let korv = bin.join("korv");
        let peers = bin.join("korv-peers");
        let korv_port = try_free_port().map_err(|e| e.to_string())?;
        let mut korv_server = spawn_quiet(
            Command::new(&korv)
                .args(["serve", "--listen", &format!("127.0.0.1:{korv_port}")])
                .arg("--host-key")
                .arg(&host)
                .arg("--authorized-keys")
                .arg(&authorized)
                .arg("--data")
                .arg(dir.join("store.redb")),
        )?;
        wait_until_listening(&mut korv_server.0, korv_port, LISTEN_WITHIN)
            .map_err(|e| format!("korv serve: {e}"))?;
        let mut peer_servers = Vec::new();
        for system in PEERS {
            let (child, addr) = spawn_announcing(
                Command::new(&peers)
                    .args(["server", system.key(), "--listen", "127.0.0.1:0"])
                    .stdin(Stdio::null())
                    .stderr(Stdio::null()),
                "listening ",
            )
            .map_err(|e| format!("the {} peer: {e}", system.key()))?;
            peer_servers.push((system, child, addr));
        }
        let sshd = start_sshd(&sub_dir(dir, "sshd")?, &host, &authorized, None)?;
        let sshd_nodelay = match (&sshd, &tools.shim) {
            (Some(_), Some(shim)) => start_sshd(
                &sub_dir(dir, "sshd-nodelay")?,
                &host,
                &authorized,
                Some(shim),
            )?,
            _ => None,
        };
        let ssh = Command::new("ssh")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ssh {
            println!("    OpenSSH's client is missing: the OpenSSH rows are skipped");
        }
        let python = match (&tools.korv_py, &tools.korv021) {
            (Some(korv_py), Some(korv021)) => {
                Some(PythonServers::start(korv_py, korv021, &host, &authorized)?)
            }
            _ => None,
        };
        let mut known = known_hosts_line(korv_port, &host_pub);
        for sshd in sshd.iter().chain(sshd_nodelay.iter()) {
            known.push_str(&known_hosts_line(sshd.port(), &host_pub));
        }
        if let Some(python) = &python {
            known.push_str(&known_hosts_line(python.hello_port, &host_pub));
            known.push_str(&known_hosts_line(python.original_port, &host_pub));
        }
        let known_hosts = dir.join("known_hosts");
        std::fs::write(&known_hosts, known).map_err(|e| e.to_string())?;
        Ok(Servers {
            korv,
            peers,
            dir: dir.to_path_buf(),
            id,
            known_hosts,
            korv_port,
            korv_server,
            peer_servers,
            sshd,
            sshd_nodelay,
            shim: tools.shim.clone(),
            ssh,
            python,
            user: sshd::current_user(),
            timing,
        })
    }

    /// Which kinds of rows can run: (sshd, OpenSSH's client with the shim,
    /// Python).
    pub(crate) fn can_run(&self) -> (bool, bool, bool) {
        (
            self.sshd.is_some() && self.sshd_nodelay.is_some() && self.ssh,
            self.ssh && self.shim.is_some(),
            self.python.is_some(),
        )
    }

    /// Whether the OpenSSH bulk figure can be made.
    pub(crate) fn has_sshd(&self) -> bool {
        self.sshd.is_some() && self.ssh
    }

    /// Runs one load and returns the generator's report with the cipher.
    /// `pace` is the rate in requests/s a [`System::KorvPaced`] row keeps.
    pub(crate) fn load(&self, load: &Load, pace: Option<f64>) -> Result<Measured, String> {
        let body = match load.workload {
            Workload::Hello => None,
            Workload::Echo1K => Some(self.dir.join("body-1k.json")),
            Workload::Echo1M => Some(self.dir.join("body-1m.json")),
        };
        let path = if body.is_some() { "/echo" } else { "/hello" };
        let korv_pid = self.korv_server.id();
        let mut command = match load.system {
            System::Korv | System::PyServer | System::KorvPaced => {
                let (port, pid) = match (load.system, &self.python) {
                    (System::PyServer, Some(python)) => (python.hello_port, python.hello.id()),
                    (System::PyServer, None) => return Err("no Python server".into()),
                    _ => (self.korv_port, korv_pid),
                };
                let mut c = self.korv_bench(path, port);
                if let Some(body) = &body {
                    c.args(["--verb", "STORE", "--body"])
                        .arg(format!("@{}", body.display()));
                }
                c.args(["--server-pid", &pid.to_string()])
                    .env("KORV_LOG", KORV_LOG_CIPHER);
                c.args(self.load_shape(load));
                if load.system == System::KorvPaced {
                    let pace = pace.ok_or("no rate to pace to: the korv 0.2.1 row did not run")?;
                    c.args(["--rate", &format!("{pace:.0}")]);
                }
                c
            }
            // The stdio client, with `ssh -W` as its transport (after `--`).
            System::SshW | System::SshWNodelay | System::SshKorv => {
                let mut c = self.peers_load("stdio", path, body.as_deref());
                c.args(self.load_shape(load));
                let (port, target, shim) = match load.system {
                    System::SshW => (self.sshd_port(false)?, self.peer_addr(System::Tcp)?, None),
                    System::SshWNodelay => (
                        self.sshd_port(true)?,
                        self.peer_addr(System::Tcp)?,
                        self.shim.as_ref(),
                    ),
                    // korv serve takes any direct-tcpip target as a Korv stream.
                    _ => (self.korv_port, "localhost:8022", self.shim.as_ref()),
                };
                if load.system == System::SshKorv {
                    c.args(["--server-pid", &korv_pid.to_string()]);
                }
                c.arg("--");
                if let Some(shim) = shim {
                    c.arg("env").arg(format!("LD_PRELOAD={}", shim.display()));
                }
                c.args(self.ssh_args(port, "DEBUG1")).args([
                    "-c",
                    "aes128-gcm@openssh.com",
                    "-W",
                    target,
                ]);
                c
            }
            System::PyBlocking | System::Original | System::LegacyKorv | System::LegacyOwn => {
                let python = self.python.as_ref().ok_or("no Python environment")?;
                self.python_load(python, load)?
            }
            peer => {
                let mut c = self.peers_load(peer.key(), path, body.as_deref());
                c.args(["--addr", self.peer_addr(peer)?]);
                c.args(["--server-pid", &self.peer_pid(peer)?.to_string()]);
                c.args(self.load_shape(load));
                c
            }
        };
        let (report, stderr) = run_load(&mut command, load.system)?;
        let cipher = match load.system {
            System::Https1 | System::Https2 => Some(TLS_CIPHER.to_owned()),
            _ => report.cipher.clone().or_else(|| negotiated_cipher(&stderr)),
        };
        Ok(Measured { report, cipher })
    }

    /// The command of a Python-driven row: korv-py's blocking loop, korv
    /// 0.2.1's pipelined client, or korv 0.2.1's client as a closed loop
    /// (`tests/legacy/load.py`).
    fn python_load(&self, python: &PythonServers, load: &Load) -> Result<Command, String> {
        let seconds = format!("{}", self.timing.duration.as_secs_f64());
        let warmup = format!("{}", self.timing.warmup.as_secs_f64());
        let korv_pid = self.korv_server.id().to_string();
        let mut c;
        match load.system {
            System::PyBlocking => {
                c = Command::new(&python.korv_py);
                c.arg(script("korv-py/examples/blocking_loop.py"))
                    .arg(self.korv_port.to_string())
                    .arg(&self.id)
                    .arg(&self.known_hosts)
                    .args(["--seconds", &seconds, "--warmup", &warmup])
                    .args(["--server-pid", &korv_pid, "--json"]);
            }
            System::Original => {
                c = Command::new(&python.korv021);
                c.arg(script("korv-py/examples/pipelined_client.py"))
                    .arg(python.original_port.to_string())
                    .arg(&self.id)
                    .arg(self.timing.original_requests.to_string())
                    .arg(load.concurrency.to_string())
                    .args(["--server-pid", &python.original.id().to_string(), "--json"]);
            }
            System::LegacyKorv | System::LegacyOwn => {
                let (port, pid) = if load.system == System::LegacyKorv {
                    (self.korv_port, korv_pid)
                } else {
                    (python.original_port, python.original.id().to_string())
                };
                c = Command::new(&python.korv021);
                c.arg(script("tests/legacy/load.py"))
                    .args(["--port", &port.to_string(), "--key"])
                    .arg(&self.id)
                    .arg("--known-hosts")
                    .arg(&self.known_hosts)
                    .args(["--concurrency", &load.concurrency.to_string()])
                    .args(["--seconds", &seconds, "--warmup", &warmup])
                    .args(["--server-pid", &pid]);
            }
            other => return Err(format!("{} is not a Python row", other.key())),
        }
        c.env("PYTHONDONTWRITEBYTECODE", "1");
        Ok(c)
    }

    fn sshd_port(&self, nodelay: bool) -> Result<u16, String> {
        let sshd = if nodelay {
            &self.sshd_nodelay
        } else {
            &self.sshd
        };
        sshd.as_ref()
            .map(Sshd::port)
            .ok_or_else(|| "no sshd".into())
    }

    fn peer_pid(&self, system: System) -> Result<u32, String> {
        self.peer_servers
            .iter()
            .find(|(s, _, _)| *s == system)
            .map(|(_, child, _)| child.id())
            .ok_or_else(|| format!("no {} peer running", system.key()))
    }

    /// Watches: `korv bench /watched/ --watchers N` against `korv serve` (one
    /// connection, N watches on the prefix, `writers` STOREs under it at a
    /// time); events/s and the latency from a STORE's sending to each event's
    /// delivery.
    pub(crate) fn korv_watch(&self, watchers: usize, writers: usize) -> Result<Watches, String> {
        let mut command = self.korv_bench("/watched/", self.korv_port);
        command
            .args(["--watchers", &watchers.to_string()])
            .args(["--concurrency", &writers.to_string(), "--json"])
            .arg("--duration")
            .arg(format!("{}ms", self.timing.duration.as_millis()));
        let (report, _) = run_load(&mut command, System::Korv)?;
        Ok(Watches {
            watchers,
            writers,
            events_per_second: report.requests_per_second,
            p50_us: report.latency_us.p50 as f64,
            p99_us: report.latency_us.p99 as f64,
            lost: report.errors as f64,
        })
    }

    /// `korv bench PATH` against the Korv server on `port` with our key.
    fn korv_bench(&self, path: &str, port: u16) -> Command {
        let mut c = Command::new(&self.korv);
        c.args(["bench", path, "--host", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .arg("-i")
            .arg(&self.id)
            .arg("--known-hosts")
            .arg(&self.known_hosts)
            .env_remove("SSH_AUTH_SOCK");
        c
    }

    /// `korv-peers load KIND --path PATH [--body BODY]`.
    fn peers_load(&self, kind: &str, path: &str, body: Option<&Path>) -> Command {
        let mut c = Command::new(&self.peers);
        c.args(["load", kind, "--path", path]);
        if let Some(body) = body {
            c.arg("--body").arg(body);
        }
        c
    }

    /// The arguments every load generator takes: the shape, the timing,
    /// `--json`.
    fn load_shape(&self, load: &Load) -> Vec<String> {
        vec![
            "--connections".into(),
            load.connections.to_string(),
            "--concurrency".into(),
            load.concurrency.to_string(),
            "--duration".into(),
            format!("{}ms", self.timing.duration.as_millis()),
            "--warmup".into(),
            format!("{}ms", self.timing.warmup.as_millis()),
            "--json".into(),
        ]
    }

    fn peer_addr(&self, system: System) -> Result<&str, String> {
        self.peer_servers
            .iter()
            .find(|(s, _, _)| *s == system)
            .map(|(_, _, addr)| addr.as_str())
            .ok_or_else(|| format!("no {} peer running", system.key()))
    }

    /// `ssh` arguments that reach the SSH server on `port` with our key
    /// only, logging at `log_level` (`DEBUG1` shows the negotiated cipher).
    fn ssh_args(&self, port: u16, log_level: &str) -> Vec<String> {
        vec![
            "ssh".into(),
            "-p".into(),
            port.to_string(),
            "-i".into(),
            self.id.display().to_string(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            format!("LogLevel={log_level}"),
            format!("{}@127.0.0.1", self.user),
        ]
    }

    /// MB/s of `cat > /dev/null` through one OpenSSH session (stock
    /// sshd, aes128-gcm), with the connection's setup (measured alone)
    /// taken out, the median of [`BULK_ROUNDS`] copies, and the cipher ssh
    /// reports; `None` without sshd.
    pub(crate) fn openssh_bulk(&self) -> Result<Option<(f64, Option<String>)>, String> {
        if !self.has_sshd() {
            return Ok(None);
        }
        let args = self.ssh_args(self.sshd_port(false)?, "DEBUG1");
        let push = |bytes: u64| -> Result<(Duration, String), String> {
            let mut child = Command::new(&args[0])
                .args(&args[1..])
                .args(["-c", "aes128-gcm@openssh.com", "cat > /dev/null"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot run ssh: {e}"))?;
            // ssh's log is read on a thread of its own so that ssh never
            // blocks on a full pipe.
            let mut stderr = child.stderr.take().ok_or("no stderr")?;
            let log = std::thread::spawn(move || {
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
                text
            });
            let started = Instant::now();
            let mut stdin = child.stdin.take().ok_or("no stdin")?;
            let chunk = vec![0x5a_u8; 1 << 20];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                stdin
                    .write_all(&chunk[..n])
                    .map_err(|e| format!("writing to ssh: {e}"))?;
                left -= n as u64;
            }
            drop(stdin);
            let status = child.wait().map_err(|e| e.to_string())?;
            let elapsed = started.elapsed();
            let log = log.join().unwrap_or_default();
            if !status.success() {
                return Err(format!("ssh for the bulk figure failed: {status}"));
            }
            Ok((elapsed, log))
        };
        // A single copy swung by half between runs of one day: the setup
        // (connecting, authenticating, starting `cat`) is the quickest of
        // three empty pushes, the figure the median of three full ones.
        let mut setup = Duration::MAX;
        for _ in 0..BULK_ROUNDS {
            setup = setup.min(push(0)?.0);
        }
        let mut rates = Vec::with_capacity(BULK_ROUNDS);
        let mut cipher = None;
        for _ in 0..BULK_ROUNDS {
            let (total, log) = push(self.timing.bulk_bytes)?;
            let seconds = total.saturating_sub(setup).as_secs_f64().max(1e-6);
            rates.push(self.timing.bulk_bytes as f64 / seconds / 1e6);
            cipher = cipher.or_else(|| negotiated_cipher(&log));
        }
        Ok(Some((median(&mut rates), cipher)))
    }

    /// The memory of `korv serve`: growth across many requests after a
    /// warm-up, and per idle authenticated connection.
    pub(crate) fn memory(&self) -> Result<Memory, String> {
        println!("\n==> memory of `korv serve`");
        let pid = self.korv_server.id();
        let warm = self.korv_requests(self.timing.growth_requests / 10)?;
        let before = rss_kib(pid)?;
        let measured = self.korv_requests(self.timing.growth_requests)?;
        let after = rss_kib(pid)?;
        println!(
            "    {} requests after {} of warm-up: RSS {before} KiB -> {after} KiB",
            measured, warm
        );
        let idle_before = rss_kib(pid)?;
        let mut hold = Command::new(&self.peers)
            .args(["idle", "--host", "127.0.0.1"])
            .args(["--port", &self.korv_port.to_string()])
            .args(["--connections", &self.timing.idle_connections.to_string()])
            .arg("-i")
            .arg(&self.id)
            .arg("--known-hosts")
            .arg(&self.known_hosts)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run korv-peers idle: {e}"))?;
        let mut ready = String::new();
        {
            let stdout = hold.stdout.take().ok_or("no stdout")?;
            BufReader::new(stdout)
                .read_line(&mut ready)
                .map_err(|e| e.to_string())?;
        }
        let held: usize = ready
            .trim()
            .strip_prefix("ready ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("korv-peers idle did not get ready: {ready:?}"))?;
        // Let the server settle (buffers released after the handshakes).
        std::thread::sleep(Duration::from_millis(500));
        let idle_after = rss_kib(pid)?;
        drop(hold.stdin.take());
        let _ = hold.wait();
        let per_connection = (idle_after.saturating_sub(idle_before)) as f64 / held.max(1) as f64;
        println!(
            "    {held} idle authenticated connections: RSS {idle_before} KiB -> {idle_after} KiB, {per_connection:.1} KiB each"
        );
        Ok(Memory {
            growth_requests: measured,
            rss_before_kib: before,
            rss_after_kib: after,
            growth_percent: (after as f64 - before as f64) / before as f64 * 100.0,
            idle_connections: held,
            rss_idle_before_kib: idle_before,
            rss_idle_after_kib: idle_after,
            kib_per_idle_connection: per_connection,
        })
    }

    /// Sends `n` `GET /hello` at concurrency 64 through `korv bench`, and
    /// returns how many were answered.
    fn korv_requests(&self, n: u64) -> Result<u64, String> {
        let output = self
            .korv_bench("/hello", self.korv_port)
            .args([
                "--concurrency",
                "64",
                "--requests",
                &n.to_string(),
                "--json",
            ])
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| e.to_string())?;
        let report: LoadReport = serde_json::from_slice(&output.stdout)
            .map_err(|e| format!("korv bench printed no report: {e}"))?;
        if report.errors != 0 {
            return Err(format!(
                "korv bench saw errors: {}",
                String::from_utf8_lossy(&output.stdout).trim()
            ));
        }
        Ok(report.answered)
    }
}

/// Runs a load generator and reads the report on the last line of its
/// output that starts with `{`; returns it with what the generator (and its
/// children, such as ssh) printed on stderr.
fn run_load(command: &mut Command, system: System) -> Result<(LoadReport, String), String> {
    let output = command
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run the load generator: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| {
            format!(
                "the load generator for {} printed no report; stderr: {}",
                system.key(),
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    let report = serde_json::from_str(line).map_err(|e| format!("bad report {line:?}: {e}"))?;
    Ok((report, String::from_utf8_lossy(&output.stderr).into_owned()))
}

/// `dir/name`, made.
fn sub_dir(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).map_err(|e| format!("{}: {e}", sub.display()))?;
    Ok(sub)
}

impl PythonServers {
    /// Starts korv-py's `hello_server.py` on a free port and korv 0.2.1's
    /// server (`tests/legacy/sample_server.py`, which announces its port).
    fn start(
        korv_py: &Path,
        korv021: &Path,
        host: &Path,
        authorized: &Path,
    ) -> Result<PythonServers, String> {
        let hello_port = try_free_port().map_err(|e| e.to_string())?;
        let mut hello = spawn_quiet(
            Command::new(korv_py)
                .arg(script("korv-py/examples/hello_server.py"))
                .arg(hello_port.to_string())
                .arg(host)
                .arg(authorized)
                .env("PYTHONDONTWRITEBYTECODE", "1"),
        )?;
        wait_until_listening(&mut hello.0, hello_port, LISTEN_WITHIN)
            .map_err(|e| format!("korv-py's hello_server.py: {e}"))?;
        let (original, addr) = spawn_announcing(
            Command::new(korv021)
                .arg(script("tests/legacy/sample_server.py"))
                .arg(host)
                .arg(authorized)
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .stdin(Stdio::null())
                .stderr(Stdio::null()),
            "listening on ",
        )
        .map_err(|e| format!("korv 0.2.1's server: {e}"))?;
        let original_port = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("korv 0.2.1's server announced {addr:?}"))?;
        Ok(PythonServers {
            korv_py: korv_py.to_path_buf(),
            korv021: korv021.to_path_buf(),
            hello,
            hello_port,
            original,
            original_port,
        })
    }
}

/// A private sshd on 127.0.0.1 with its own config in `dir`, when
/// installed; under the nodelay shim when one is given.
fn start_sshd(
    dir: &Path,
    host: &Path,
    authorized: &Path,
    shim: Option<&PathBuf>,
) -> Result<Option<Sshd>, String> {
    if !Sshd::installed() {
        println!(
            "    {} is missing: the OpenSSH rows are skipped (apt-get install openssh-server)",
            sshd::PROGRAM
        );
        return Ok(None);
    }
    let env: Vec<(&str, &Path)> = shim.iter().map(|s| ("LD_PRELOAD", s.as_path())).collect();
    Sshd::start_with_env(
        dir,
        host,
        authorized,
        &[
            "AllowTcpForwarding yes",
            "Ciphers aes128-gcm@openssh.com,chacha20-poly1305@openssh.com",
        ],
        &env,
    )
    .map(Some)
    .map_err(|e| e.to_string())
}

/// Copies of the OpenSSH bulk figure, of which it is the median.
const BULK_ROUNDS: usize = 3;

/// The median of `values` (the upper one of an even count); 0 when empty.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bulk_figure_is_the_median_copy() {
        assert_eq!(median(&mut [737.0, 464.5, 520.0]), 520.0);
        assert_eq!(median(&mut [3.0, 1.0, 2.0, 4.0]), 3.0);
        assert_eq!(median(&mut []), 0.0);
    }

    #[test]
    fn a_load_generator_report_reads_into_its_typed_members() {
        // As `korv bench --json` and `korv-peers load --json` print it.
        let line = r#"{"resource":"/hello","verb":"GET","connections":1,"concurrency":64,"seconds":5.0,"requests":1002,"answered":1000,"errors":2,"requests_per_second":200.0,"mb_per_second":0.0046,"latency_us":{"p50":310,"p90":400,"p99":950,"p999":1200,"max":4000},"codes":{"200":1000},"error_counts":{"reset":2}}"#;
        let report: LoadReport = serde_json::from_str(line).unwrap();
        assert_eq!((report.answered, report.errors), (1000, 2));
        assert_eq!(report.requests_per_second, 200.0);
        assert_eq!((report.latency_us.p50, report.latency_us.p99), (310, 950));
    }

    #[test]
    fn the_cpu_and_cipher_members_read_when_present() {
        let line = r#"{"answered":10,"requests_per_second":5.0,"cpu":{"client_seconds":0.5,"server_seconds":null},"cipher":"chacha20-poly1305@openssh.com"}"#;
        let report: LoadReport = serde_json::from_str(line).unwrap();
        let cpu = report.cpu.unwrap();
        assert_eq!((cpu.client_seconds, cpu.server_seconds), (0.5, None));
        assert_eq!(
            report.cipher.as_deref(),
            Some("chacha20-poly1305@openssh.com")
        );
    }

    #[test]
    fn the_cipher_is_read_from_openssh_and_russh_logs() {
        let openssh = "debug1: kex: algorithm: curve25519-sha256\n\
            debug1: kex: server->client cipher: chacha20-poly1305@openssh.com MAC: <implicit> compression: none\n\
            debug1: kex: client->server cipher: aes128-gcm@openssh.com MAC: <implicit> compression: none\n";
        assert_eq!(
            negotiated_cipher(openssh).as_deref(),
            Some("aes128-gcm@openssh.com")
        );
        let russh = "2026-11-30T15:00:00Z DEBUG russh::client::kex: negotiated algorithms: Names { kex: Name(\"curve25519-sha256\"), key: Ed25519, cipher: Name(\"aes128-gcm@openssh.com\"), client_mac: Name(\"none\") }\n\
            later: negotiated algorithms: Names { cipher: Name(\"aes256-gcm@openssh.com\") }";
        assert_eq!(
            negotiated_cipher(russh).as_deref(),
            Some("aes128-gcm@openssh.com")
        );
        assert_eq!(negotiated_cipher("debug1: Authentication succeeded"), None);
    }

    #[test]
    fn a_rate_json_could_not_carry_reads_as_zero() {
        let report: LoadReport =
            serde_json::from_str(r#"{"requests_per_second":null,"answered":0}"#).unwrap();
        assert_eq!(report.requests_per_second, 0.0);
    }
}
