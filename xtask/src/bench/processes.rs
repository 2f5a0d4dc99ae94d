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

use super::plan::{Load, System, Timing, Workload};
use super::report::Memory;

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
    /// Payload bytes both ways, in millions per second.
    #[serde(default, deserialize_with = "zero_if_null")]
    pub(crate) mb_per_second: f64,
    #[serde(default)]
    pub(crate) latency_us: Latency,
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
    /// The private sshd, when installed.
    sshd: Option<Sshd>,
    user: String,
    timing: Timing,
}

impl Servers {
    /// Makes keys and bodies in `dir`, then starts `korv serve`, the peers
    /// and (when installed) a private sshd, from the binaries in `bin`.
    pub(crate) fn start(bin: &Path, dir: &Path, timing: Timing) -> Result<Servers, String> {
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
        let sshd = start_sshd(dir, &host, &authorized)?;
        let mut known = known_hosts_line(korv_port, &host_pub);
        if let Some(sshd) = &sshd {
            known.push_str(&known_hosts_line(sshd.port(), &host_pub));
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
            user: sshd::current_user(),
            timing,
        })
    }

    /// Whether the OpenSSH rows can run.
    pub(crate) fn has_sshd(&self) -> bool {
        self.sshd.is_some()
    }

    /// Runs one load and returns the generator's report.
    pub(crate) fn load(&self, load: &Load) -> Result<LoadReport, String> {
        let body = match load.workload {
            Workload::Hello => None,
            Workload::Echo1K => Some(self.dir.join("body-1k.json")),
            Workload::Echo1M => Some(self.dir.join("body-1m.json")),
        };
        let path = if body.is_some() { "/echo" } else { "/hello" };
        let mut command = match load.system {
            System::Korv => {
                let mut c = self.korv_bench(path);
                if let Some(body) = &body {
                    c.args(["--verb", "STORE", "--body"])
                        .arg(format!("@{}", body.display()));
                }
                c
            }
            // The stdio client, with `ssh -W` to the plain-TCP peer as its
            // transport (added below, after `--`).
            System::SshW => self.peers_load("stdio", path, body.as_deref()),
            peer => {
                let mut c = self.peers_load(peer.key(), path, body.as_deref());
                c.args(["--addr", self.peer_addr(peer)?]);
                c
            }
        };
        command.args(self.load_shape(load));
        if load.system == System::SshW {
            command.arg("--").args(self.ssh_args()?);
            command.args(["-W", self.peer_addr(System::Tcp)?]);
        }
        run_load(&mut command, load.system)
    }

    /// Watches: `korv bench --watchers 64` (one connection, 64 watches on a
    /// prefix, 16 writers storing documents under it); events/s and the
    /// latency from a STORE's sending to each event's delivery.
    pub(crate) fn korv_watch(&self) -> Result<LoadReport, String> {
        let mut command = self.korv_bench("/watched/");
        command.args(["--watchers", "64", "--concurrency", "16", "--json"]);
        command
            .arg("--duration")
            .arg(format!("{}ms", self.timing.duration.as_millis()));
        run_load(&mut command, System::Korv)
    }

    /// `korv bench PATH` against `korv serve` with our key.
    fn korv_bench(&self, path: &str) -> Command {
        let mut c = Command::new(&self.korv);
        c.args(["bench", path, "--host", "127.0.0.1"])
            .args(["--port", &self.korv_port.to_string()])
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

    /// `ssh` arguments that reach our private sshd with our key only.
    fn ssh_args(&self) -> Result<Vec<String>, String> {
        let port = self.sshd.as_ref().ok_or("no sshd")?.port();
        Ok(vec![
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
            "LogLevel=ERROR".into(),
            format!("{}@127.0.0.1", self.user),
        ])
    }

    /// MB/s of `cat > /dev/null` through one OpenSSH session, with the
    /// connection's setup (measured alone) taken out; `None` without sshd.
    pub(crate) fn openssh_bulk(&self) -> Result<Option<f64>, String> {
        if self.sshd.is_none() {
            return Ok(None);
        }
        let args = self.ssh_args()?;
        let push = |bytes: u64| -> Result<Duration, String> {
            let mut child = Command::new(&args[0])
                .args(&args[1..])
                .args(["-c", "aes128-gcm@openssh.com", "cat > /dev/null"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot run ssh: {e}"))?;
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
            if !status.success() {
                return Err(format!("ssh for the bulk figure failed: {status}"));
            }
            Ok(started.elapsed())
        };
        let setup = push(0)?;
        let total = push(self.timing.bulk_bytes)?;
        let seconds = total.saturating_sub(setup).as_secs_f64().max(1e-6);
        Ok(Some(self.timing.bulk_bytes as f64 / seconds / 1e6))
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
            .korv_bench("/hello")
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
/// output that starts with `{`.
fn run_load(command: &mut Command, system: System) -> Result<LoadReport, String> {
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
    serde_json::from_str(line).map_err(|e| format!("bad report {line:?}: {e}"))
}

/// A private sshd on 127.0.0.1 with its own config, when installed.
fn start_sshd(dir: &Path, host: &Path, authorized: &Path) -> Result<Option<Sshd>, String> {
    if !Sshd::installed() {
        println!(
            "    {} is missing: the OpenSSH rows are skipped (apt-get install openssh-server)",
            sshd::PROGRAM
        );
        return Ok(None);
    }
    Sshd::start(
        dir,
        host,
        authorized,
        &[
            "AllowTcpForwarding yes",
            "Ciphers aes128-gcm@openssh.com,chacha20-poly1305@openssh.com",
        ],
    )
    .map(Some)
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_generator_report_reads_into_its_typed_members() {
        // As `korv bench --json` and `korv-peers load --json` print it.
        let line = r#"{"resource":"/hello","verb":"GET","connections":1,"concurrency":64,"seconds":5.0,"requests":1002,"answered":1000,"errors":2,"requests_per_second":200.0,"mb_per_second":0.0046,"latency_us":{"p50":310,"p90":400,"p99":950,"p999":1200,"max":4000},"codes":{"200":1000},"error_counts":{"reset":2}}"#;
        let report: LoadReport = serde_json::from_str(line).unwrap();
        assert_eq!((report.answered, report.errors), (1000, 2));
        assert_eq!(report.requests_per_second, 200.0);
        assert_eq!(report.mb_per_second, 0.0046);
        assert_eq!((report.latency_us.p50, report.latency_us.p99), (310, 950));
    }

    #[test]
    fn a_rate_json_could_not_carry_reads_as_zero() {
        let report: LoadReport =
            serde_json::from_str(r#"{"requests_per_second":null,"answered":0}"#).unwrap();
        assert_eq!(report.requests_per_second, 0.0);
        assert_eq!(report.mb_per_second, 0.0);
    }
}
