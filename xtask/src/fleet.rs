//! `cargo xtask fleet [--release]`: three `korv serve` instances behind
//! HAProxy with the PROXY protocol, as docs/DEPLOY.md deploys them, on
//! 127.0.0.1 only.
//!
//! A host CA signs each instance's own host key; HAProxy (installed with
//! apt-get when missing) balances them with `send-proxy-v2` and SSH-banner
//! health checks, connecting from 127.0.0.9, the one address the instances
//! trust to send PROXY headers. The scenarios, in order:
//!
//! 1. a client whose known_hosts holds only the `@cert-authority` line
//!    reaches all three instances (`GET /whoami` names them);
//! 2. OpenSSH's `ssh -b 127.0.0.2` gets in with a key authorized only
//!    `from="127.0.0.2"`, and `ssh -b 127.0.0.3` does not, both through
//!    HAProxy;
//! 3. a forged PROXY header sent straight to an instance from 127.0.0.3
//!    ends the connection, where the same bytes without it do not;
//! 4. under load from 8 clients, one instance is SIGKILLed: only requests
//!    on it fail, with "closed"; the clients reconnect through the others;
//!    restarted, it gets traffic again;
//! 5. a rolling restart (SIGTERM, start again, one instance at a time)
//!    under load: only requests on the stopping instance may fail, with 503
//!    or "closed";
//! 6. every answer carries its own request's number, and no number is
//!    answered twice;
//! 7. each instance's metrics count exactly the requests sent to it;
//! 8. the cost of the HAProxy hop, against direct connections.
//!
//! Every wait polls with a deadline; every loop is bounded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use korv_client::{ClientConfig, Error as ClientError, KorvClient, StatusCode, Verb};
use korv_testkit::certs::sign;
use korv_testkit::keys::{KeyKind, public_key, try_keygen};
use korv_testkit::net::try_free_port;
use korv_testkit::process::{KillOnDrop, wait_until_listening};
use serde_json::{Value, json};

use crate::workspace::{cargo, step, target_dir};

/// Where HAProxy connects to the instances from: the trusted source.
const BALANCER_SOURCE: &str = "127.0.0.9";
/// Load clients.
const CLIENTS: usize = 8;
/// The longest any wait for a condition may take.
const PATIENCE: Duration = Duration::from_secs(30);

pub(crate) fn fleet(args: &[String]) -> Result<(), String> {
    let release = match args {
        [] => false,
        [flag] if flag == "--release" => true,
        _ => return Err("fleet takes only --release".into()),
    };
    ensure_haproxy()?;
    let mut build = cargo();
    build.args(["build", "--package", "korv-cli"]);
    if release {
        build.arg("--release");
    }
    step("build", build)?;
    let korv = target_dir()
        .join(if release { "release" } else { "debug" })
        .join("korv");
    let dir = std::env::temp_dir().join(format!("korv-fleet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let result = Fleet::start(&korv, &dir).and_then(|mut fleet| fleet.run(&runtime));
    drop(runtime);
    if result.is_err() {
        // The logs of HAProxy and of each instance tell what went wrong.
        for log in ["haproxy", "korv1", "korv2", "korv3"] {
            let text = std::fs::read_to_string(dir.join(format!("{log}.log"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            println!("\n--- {log}.log (last lines)");
            for line in &lines[lines.len().saturating_sub(15)..] {
                println!("{line}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    println!("\nfleet: every scenario passed");
    Ok(())
}

/// Installs HAProxy with apt-get when it is not on the PATH.
fn ensure_haproxy() -> Result<(), String> {
    if Command::new("haproxy").arg("-v").output().is_ok() {
        return Ok(());
    }
    println!("==> haproxy is missing: installing it with apt-get");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let apt = |args: &[&str]| {
        let mut command = if root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg("apt-get");
            sudo
        };
        command.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        command
    };
    step("apt-get update", apt(&["update", "-q"]))?;
    step(
        "install haproxy",
        apt(&["install", "-y", "-q", "--no-install-recommends", "haproxy"]),
    )
}

/// One `korv serve` instance: its ports and its process while it runs.
struct Instance {
    name: String,
    port: u16,
    metrics: u16,
    child: Option<KillOnDrop>,
}

/// The keys, the instances and HAProxy.
struct Fleet {
    korv: PathBuf,
    dir: PathBuf,
    alice: PathBuf,
    bob: PathBuf,
    known_hosts: PathBuf,
    instances: Vec<Instance>,
    haproxy_port: u16,
    haproxy: Option<KillOnDrop>,
}

fn io_err(context: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |err| format!("{context}: {err}")
}

impl Fleet {
    fn start(korv: &Path, dir: &Path) -> Result<Fleet, String> {
        let keygen = |name: &str| try_keygen(dir, name, KeyKind::Ed25519, "").map_err(io_err(name));
        let host_ca = keygen("host_ca")?;
        let alice = keygen("alice")?;
        let bob = keygen("bob")?;
        let public = |key: &Path| public_key(key);
        std::fs::write(
            dir.join("authorized_keys"),
            format!(
                "from=\"127.0.0.2\" {} alice\n{} bob\n",
                public(&alice),
                public(&bob)
            ),
        )
        .map_err(io_err("authorized_keys"))?;
        // Only the CA line: no instance's key is known.
        let known_hosts = dir.join("known_hosts");
        std::fs::write(
            &known_hosts,
            format!("@cert-authority * {}\n", public(&host_ca)),
        )
        .map_err(io_err("known_hosts"))?;
        let mut instances = Vec::new();
        for i in 1..=3 {
            let name = format!("korv{i}");
            let key = keygen(&format!("{name}_host"))?;
            sign(
                &host_ca,
                &key,
                &name,
                &["-h", "-n", "127.0.0.1", "-V", "-5m:+1d"],
            );
            instances.push(Instance {
                name,
                port: try_free_port().map_err(io_err("free port"))?,
                metrics: try_free_port().map_err(io_err("free port"))?,
                child: None,
            });
        }
        let haproxy_port = try_free_port().map_err(io_err("free port"))?;
        let config = dir.join("haproxy.cfg");
        std::fs::write(&config, haproxy_config(haproxy_port, &instances))
            .map_err(io_err("haproxy.cfg"))?;
        let check = Command::new("haproxy")
            .args(["-c", "-q", "-f"])
            .arg(&config)
            .output()
            .map_err(io_err("haproxy -c"))?;
        if !check.status.success() {
            return Err(format!(
                "haproxy rejects its configuration: {}",
                String::from_utf8_lossy(&check.stderr)
            ));
        }
        let mut fleet = Fleet {
            korv: korv.to_owned(),
            dir: dir.to_owned(),
            alice,
            bob,
            known_hosts,
            instances,
            haproxy_port,
            haproxy: None,
        };
        // The instances first, so that HAProxy's first checks find them.
        for i in 0..fleet.instances.len() {
            fleet.start_instance(i)?;
        }
        let mut haproxy = KillOnDrop::spawn(
            Command::new("haproxy")
                .args(["-db", "-f"])
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("haproxy.log")).map_err(io_err("log"))?),
        )
        .map_err(io_err("haproxy"))?;
        wait_until_listening(&mut haproxy.0, haproxy_port, PATIENCE)
            .map_err(io_err("haproxy listening"))?;
        fleet.haproxy = Some(haproxy);
        println!(
            "==> fleet: haproxy on 127.0.0.1:{haproxy_port}, instances on {}",
            fleet
                .instances
                .iter()
                .map(|i| format!("{}=127.0.0.1:{}", i.name, i.port))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(fleet)
    }

    /// Starts instance `i` and waits until it listens.
    fn start_instance(&mut self, i: usize) -> Result<(), String> {
        let instance = &self.instances[i];
        let key = self.dir.join(format!("{}_host", instance.name));
        let mut cert = key.as_os_str().to_owned();
        cert.push("-cert.pub");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", instance.name)))
            .map_err(io_err("log"))?;
        let mut child = KillOnDrop::spawn(
            Command::new(&self.korv)
                .arg("serve")
                .args(["--listen", &format!("127.0.0.1:{}", instance.port)])
                .args(["--name", &instance.name])
                .arg("--host-key")
                .arg(&key)
                .arg("--host-cert")
                .arg(&cert)
                .arg("--authorized-keys")
                .arg(self.dir.join("authorized_keys"))
                .arg("--data")
                .arg(self.dir.join(format!("{}.redb", instance.name)))
                .args(["--proxy-protocol-from", &format!("{BALANCER_SOURCE}/32")])
                .args(["--metrics", &format!("127.0.0.1:{}", instance.metrics)])
                .env("HOME", &self.dir)
                .env("KORV_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        )
        .map_err(io_err("korv serve"))?;
        wait_until_listening(&mut child.0, instance.metrics, PATIENCE)
            .map_err(io_err(&instance.name))?;
        wait_until_listening(&mut child.0, instance.port, PATIENCE)
            .map_err(io_err(&instance.name))?;
        self.instances[i].child = Some(child);
        Ok(())
    }

    /// A client configuration to `port` on 127.0.0.1 as `bob`, trusting
    /// hosts only through the `@cert-authority` line.
    fn config(&self, port: u16) -> ClientConfig {
        ClientConfig::new("127.0.0.1")
            .port(port)
            .user("bob")
            .identity_file(&self.bob)
            .use_agent(false)
            .default_identities(false)
            .known_hosts(&self.known_hosts)
            .connect_timeout(Duration::from_secs(10))
    }

    fn run(&mut self, runtime: &tokio::runtime::Runtime) -> Result<(), String> {
        for instance in &self.instances {
            self.wait_for_traffic(runtime, &instance.name)?;
        }
        self.reach_all_three(runtime)?;
        self.only_from_option_passes_haproxy()?;
        self.forged_header_is_refused(runtime)?;
        self.kill_and_roll_under_load(runtime)?;
        self.metrics_match(runtime)?;
        self.hop_cost(runtime)
    }

    /// Scenario 1.
    fn reach_all_three(&self, runtime: &tokio::runtime::Runtime) -> Result<(), String> {
        println!("\n==> fleet: @cert-authority alone reaches all three instances");
        let seen = runtime.block_on(async {
            let mut seen = BTreeMap::new();
            for _ in 0..30 {
                let client = KorvClient::connect(self.config(self.haproxy_port))
                    .await
                    .map_err(|e| format!("through haproxy: {e}"))?;
                let me = client.get("/whoami").await.map_err(|e| e.to_string())?;
                let name = me.body["instance"].as_str().unwrap_or_default().to_owned();
                *seen.entry(name).or_insert(0) += 1;
                if seen.len() == 3 {
                    break;
                }
            }
            Ok::<_, String>(seen)
        })?;
        println!("    instances seen: {seen:?}");
        if seen.len() != 3 {
            return Err(format!("not every instance answered: {seen:?}"));
        }
        Ok(())
    }

    /// Scenario 2, with OpenSSH's ssh (which can bind its source address).
    fn only_from_option_passes_haproxy(&self) -> Result<(), String> {
        println!("\n==> fleet: from=\"127.0.0.2\" through haproxy");
        let whoami = |source: &str| -> Result<(bool, Value, String), String> {
            let mut child = Command::new("ssh")
                .args(["-b", source, "-p", &self.haproxy_port.to_string()])
                .arg("-i")
                .arg(&self.alice)
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
                .args([
                    "-o",
                    "GlobalKnownHostsFile=/dev/null",
                    "-o",
                    "StrictHostKeyChecking=yes",
                    "-o",
                    "CheckHostIP=no",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "IdentitiesOnly=yes",
                    "-o",
                    "IdentityAgent=none",
                    "-o",
                    "ConnectTimeout=10",
                    "-F",
                    "/dev/null",
                    "-s",
                    "alice@127.0.0.1",
                    "korv",
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(io_err("ssh"))?;
            let request =
                korv_testkit::frame::frame(&json!({"id": 1, "verb": "GET", "resource": "/whoami"}));
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(&request);
            }
            let output = child.wait_with_output().map_err(io_err("ssh"))?;
            let body = output
                .stdout
                .get(4..)
                .and_then(|payload| serde_json::from_slice::<Value>(payload).ok())
                .unwrap_or(Value::Null);
            Ok((
                output.status.success(),
                body,
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ))
        };
        let (ok, body, stderr) = whoami("127.0.0.2")?;
        let address = body["body"]["address"].as_str().unwrap_or_default();
        println!("    from 127.0.0.2: {}", body["body"]);
        if !ok || !address.starts_with("127.0.0.2:") {
            return Err(format!(
                "alice from 127.0.0.2 should get in and be seen there: {body} {stderr}"
            ));
        }
        let (ok, body, stderr) = whoami("127.0.0.3")?;
        println!("    from 127.0.0.3: {}", stderr.trim());
        if ok || !stderr.contains("Permission denied") {
            return Err(format!(
                "alice from 127.0.0.3 should be refused: {body} {stderr}"
            ));
        }
        Ok(())
    }

    /// Scenario 3: the same bytes with and without a forged header, straight
    /// to an instance from 127.0.0.3.
    fn forged_header_is_refused(&self, runtime: &tokio::runtime::Runtime) -> Result<(), String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        println!("\n==> fleet: a forged PROXY header from an untrusted address");
        let port = self.instances[0].port;
        let attempt = |prefix: &'static [u8]| -> Result<bool, String> {
            runtime.block_on(async move {
                let socket = tokio::net::TcpSocket::new_v4().map_err(io_err("socket"))?;
                socket
                    .bind(SocketAddr::from(([127, 0, 0, 3], 0)))
                    .map_err(io_err("bind 127.0.0.3"))?;
                let mut socket = socket
                    .connect(SocketAddr::from(([127, 0, 0, 1], port)))
                    .await
                    .map_err(io_err("connect"))?;
                let mut bytes = prefix.to_vec();
                bytes.extend_from_slice(b"SSH-2.0-forger\r\n");
                socket.write_all(&bytes).await.map_err(io_err("write"))?;
                // Closed: the server ends the connection within the
                // deadline. Open: it waits for the key exchange.
                let read_to_end = async {
                    let mut buf = [0_u8; 4096];
                    loop {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                };
                Ok(tokio::time::timeout(Duration::from_secs(3), read_to_end)
                    .await
                    .is_ok())
            })
        };
        let forged = attempt(b"PROXY TCP4 127.0.0.2 127.0.0.1 5555 8022\r\n")?;
        let plain = attempt(b"")?;
        println!("    forged header: closed={forged}; no header: closed={plain}");
        if !forged || plain {
            return Err("the forged header must end the connection, its absence not".into());
        }
        Ok(())
    }

    /// Scenarios 4, 5 and 6.
    fn kill_and_roll_under_load(
        &mut self,
        runtime: &tokio::runtime::Runtime,
    ) -> Result<(), String> {
        println!("\n==> fleet: SIGKILL and a rolling restart under load from {CLIENTS} clients");
        let load = Load::new();
        for _ in 0..CLIENTS {
            runtime.spawn(load.clone().client(self.config(self.haproxy_port)));
        }
        load.wait_for_more(200)?;

        // SIGKILL the instance serving the most clients.
        let victim = load.busiest(&self.instances);
        let name = self.instances[victim].name.clone();
        load.set_phase(Phase::Killed(name.clone()));
        if let Some(mut child) = self.instances[victim].child.take() {
            let _ = child.0.kill();
            let _ = child.0.wait();
        }
        println!("    killed {name}");
        load.wait_for_more(200)?;
        self.start_instance(victim)?;
        self.wait_for_traffic(runtime, &name)?;
        println!("    {name} restarted and answering through haproxy again");
        load.wait_for_more(100)?;

        // Rolling restart: SIGTERM, wait for the exit, start again.
        for i in 0..self.instances.len() {
            let name = self.instances[i].name.clone();
            load.set_phase(Phase::Stopping(name.clone()));
            if let Some(mut child) = self.instances[i].child.take() {
                let pid = child.id().to_string();
                let _ = Command::new("kill").args(["-TERM", &pid]).status();
                let deadline = Instant::now() + PATIENCE;
                while child.0.try_wait().map_err(io_err("wait"))?.is_none() {
                    if Instant::now() > deadline {
                        return Err(format!("{name} did not stop within {PATIENCE:?}"));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            self.start_instance(i)?;
            self.wait_for_traffic(runtime, &name)?;
            load.set_phase(Phase::Steady);
            load.wait_for_more(100)?;
            println!("    {name} restarted gracefully");
        }
        load.stop_and_check()
    }

    /// Polls new connections through HAProxy until `name` answers one.
    fn wait_for_traffic(
        &self,
        runtime: &tokio::runtime::Runtime,
        name: &str,
    ) -> Result<(), String> {
        let deadline = Instant::now() + PATIENCE;
        runtime.block_on(async {
            while Instant::now() < deadline {
                if let Ok(client) = KorvClient::connect(self.config(self.haproxy_port)).await
                    && let Ok(me) = client.get("/whoami").await
                    && me.body["instance"] == json!(name)
                {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(format!(
                "haproxy sent no traffic to {name} within {PATIENCE:?}"
            ))
        })
    }

    /// Scenario 7: each instance's request counters grow by exactly what
    /// was sent to it.
    fn metrics_match(&self, runtime: &tokio::runtime::Runtime) -> Result<(), String> {
        println!("\n==> fleet: metrics match the requests sent");
        let before: Vec<f64> = self
            .instances
            .iter()
            .map(|i| scrape_requests(i.metrics))
            .collect::<Result<_, _>>()?;
        let sent = runtime.block_on(async {
            let mut sent: HashMap<String, f64> = HashMap::new();
            for round in 0..6_u64 {
                let client = KorvClient::connect(self.config(self.haproxy_port))
                    .await
                    .map_err(|e| e.to_string())?;
                let me = client.get("/whoami").await.map_err(|e| e.to_string())?;
                let name = me.body["instance"].as_str().unwrap_or_default().to_owned();
                let n = 10 + round * 7;
                for _ in 0..n {
                    client.get("/hello").await.map_err(|e| e.to_string())?;
                }
                *sent.entry(name).or_default() += (n + 1) as f64;
            }
            Ok::<_, String>(sent)
        })?;
        for (instance, before) in self.instances.iter().zip(before) {
            let after = scrape_requests(instance.metrics)?;
            let expected = sent.get(&instance.name).copied().unwrap_or(0.0);
            println!(
                "    {}: {} requests counted, {} sent",
                instance.name,
                after - before,
                expected
            );
            if after - before != expected {
                return Err(format!(
                    "{}'s metrics counted {} requests, {expected} were sent",
                    instance.name,
                    after - before
                ));
            }
        }
        Ok(())
    }

    /// Scenario 8: requests per second and connection set-up, through
    /// HAProxy against straight to an instance, in the same run.
    fn hop_cost(&self, runtime: &tokio::runtime::Runtime) -> Result<(), String> {
        println!("\n==> fleet: the cost of the haproxy hop");
        let measure = |port: u16| {
            runtime.block_on(async {
                let mut connects = Vec::new();
                for _ in 0..20 {
                    let started = Instant::now();
                    let client = KorvClient::connect(self.config(port))
                        .await
                        .map_err(|e| e.to_string())?;
                    connects.push(started.elapsed().as_secs_f64() * 1e3);
                    drop(client);
                }
                connects.sort_by(f64::total_cmp);
                let client = Arc::new(
                    KorvClient::connect(self.config(port))
                        .await
                        .map_err(|e| e.to_string())?,
                );
                let requests = 4000;
                let started = Instant::now();
                let mut tasks = Vec::new();
                for _ in 0..16 {
                    let client = Arc::clone(&client);
                    tasks.push(tokio::spawn(async move {
                        for _ in 0..requests / 16 {
                            client.get("/hello").await.map_err(|e| e.to_string())?;
                        }
                        Ok::<_, String>(())
                    }));
                }
                for task in tasks {
                    task.await.map_err(|e| e.to_string())??;
                }
                let rate = f64::from(requests) / started.elapsed().as_secs_f64();
                Ok::<_, String>((connects[connects.len() / 2], rate))
            })
        };
        let (direct_connect, direct_rate) = measure(self.instances[0].port)?;
        let (proxied_connect, proxied_rate) = measure(self.haproxy_port)?;
        println!(
            "    direct:  connect+auth median {direct_connect:.2} ms, {direct_rate:.0} requests/s (16 in flight on one connection)"
        );
        println!(
            "    haproxy: connect+auth median {proxied_connect:.2} ms, {proxied_rate:.0} requests/s"
        );
        println!(
            "    haproxy/direct: throughput {:.2}x, connection set-up {:.2}x",
            proxied_rate / direct_rate,
            proxied_connect / direct_connect
        );
        Ok(())
    }
}

fn haproxy_config(port: u16, instances: &[Instance]) -> String {
    let mut config = format!(
        "global\n    maxconn 4000\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    \
         timeout server 1h\n    timeout tunnel 1h\n    timeout client-fin 30s\n\n\
         frontend korv\n    bind 127.0.0.1:{port}\n    default_backend korv\n\n\
         backend korv\n    balance roundrobin\n    option tcp-check\n    \
         tcp-check expect rstring ^SSH-2\\.0-\n    \
         default-server send-proxy-v2 source {BALANCER_SOURCE} check inter 200ms fall 1 rise 1\n"
    );
    for instance in instances {
        config.push_str(&format!(
            "    server {} 127.0.0.1:{}\n",
            instance.name, instance.port
        ));
    }
    config
}

/// The sum of `korv_requests_total` over its labels, on 127.0.0.1:`port`.
fn scrape_requests(port: u16) -> Result<f64, String> {
    let mut socket =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(io_err("metrics"))?;
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io_err("metrics"))?;
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: fleet\r\n\r\n")
        .map_err(io_err("metrics"))?;
    let mut text = String::new();
    socket
        .read_to_string(&mut text)
        .map_err(io_err("metrics"))?;
    Ok(text
        .lines()
        .filter(|line| line.starts_with("korv_requests_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// What the orchestration is doing to the fleet, for judging failures.
#[derive(Clone, Debug, PartialEq)]
enum Phase {
    Steady,
    /// This instance was SIGKILLed.
    Killed(String),
    /// This instance is stopping gracefully.
    Stopping(String),
}

/// One request's outcome.
#[derive(Debug)]
struct Outcome {
    n: u64,
    instance: String,
    phase: Phase,
    /// The code, or the client error.
    result: Result<(StatusCode, Value), String>,
    closed: bool,
}

/// The load: clients in closed loops through HAProxy, every request
/// numbered, every outcome recorded.
#[derive(Clone)]
struct Load {
    next: Arc<AtomicU64>,
    answered: Arc<AtomicU64>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    phase: Arc<Mutex<Phase>>,
    /// Clients per instance, now.
    serving: Arc<Mutex<HashMap<String, usize>>>,
    stop: Arc<AtomicBool>,
    /// Clients still running.
    running: Arc<AtomicU64>,
}

impl Load {
    fn new() -> Load {
        Load {
            next: Arc::default(),
            answered: Arc::default(),
            outcomes: Arc::default(),
            phase: Arc::new(Mutex::new(Phase::Steady)),
            serving: Arc::default(),
            stop: Arc::default(),
            running: Arc::default(),
        }
    }

    fn set_phase(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
    }

    /// Waits until `more` further requests were answered 200.
    fn wait_for_more(&self, more: u64) -> Result<(), String> {
        let target = self.answered.load(Ordering::Acquire) + more;
        let deadline = Instant::now() + PATIENCE;
        while self.answered.load(Ordering::Acquire) < target {
            if Instant::now() > deadline {
                return Err(format!(
                    "the load stalled: {} answered, waiting for {target}",
                    self.answered.load(Ordering::Acquire)
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// The index of the instance with the most clients now.
    fn busiest(&self, instances: &[Instance]) -> usize {
        let serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
        (0..instances.len())
            .max_by_key(|i| serving.get(&instances[*i].name).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// One client: connects through HAProxy, learns which instance answers,
    /// sends numbered requests until told to stop or its connection ends,
    /// then connects again.
    async fn client(self, config: ClientConfig) {
        self.running.fetch_add(1, Ordering::AcqRel);
        while !self.stop.load(Ordering::Acquire) {
            let Ok(client) = KorvClient::connect(config.clone()).await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let Ok(me) = client.get("/whoami").await else {
                continue;
            };
            let instance = me.body["instance"].as_str().unwrap_or_default().to_owned();
            *self
                .serving
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(instance.clone())
                .or_default() += 1;
            while !self.stop.load(Ordering::Acquire) {
                let n = self.next.fetch_add(1, Ordering::AcqRel);
                let result = client
                    .request(
                        Verb::Update,
                        "/echo",
                        Some(&json!({"n": n})),
                        Default::default(),
                    )
                    .await;
                // Judged by the phase when the answer came: a kill or a stop
                // is announced before it happens.
                let phase = self.phase.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let ok = matches!(&result, Ok(r) if r.code == StatusCode::OK);
                if ok {
                    self.answered.fetch_add(1, Ordering::AcqRel);
                }
                let closed = matches!(result, Err(ClientError::Closed(_)));
                let again = !ok;
                self.outcomes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Outcome {
                        n,
                        instance: instance.clone(),
                        phase,
                        result: result.map(|r| (r.code, r.body)).map_err(|e| e.to_string()),
                        closed,
                    });
                if again {
                    break;
                }
            }
            if let Some(count) = self
                .serving
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&instance)
            {
                *count = count.saturating_sub(1);
            }
        }
        self.running.fetch_sub(1, Ordering::AcqRel);
    }

    /// Stops the clients, waits for them to end, and judges every outcome.
    fn stop_and_check(&self) -> Result<(), String> {
        self.stop.store(true, Ordering::Release);
        let deadline = Instant::now() + PATIENCE;
        while self.running.load(Ordering::Acquire) > 0 {
            if Instant::now() > deadline {
                return Err("the load clients did not stop".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let outcomes = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        let mut numbers = HashSet::new();
        let mut failures: BTreeMap<String, usize> = BTreeMap::new();
        for outcome in outcomes.iter() {
            if !numbers.insert(outcome.n) {
                return Err(format!("request {} answered twice", outcome.n));
            }
            let allowed = match (&outcome.result, &outcome.phase) {
                (Ok((code, body)), _) if *code == StatusCode::OK => {
                    if body["body"]["n"] != json!(outcome.n) {
                        return Err(format!(
                            "request {} got another request's answer: {body}",
                            outcome.n
                        ));
                    }
                    continue;
                }
                // SIGKILL: the requests on the dead instance fail "closed".
                (Err(_), Phase::Killed(dead)) => outcome.closed && &outcome.instance == dead,
                // SIGTERM: 503, only on the stopping instance; nothing is
                // lost to a closed connection.
                (Ok((code, _)), Phase::Stopping(stopping)) => {
                    *code == StatusCode::SERVICE_UNAVAILABLE && &outcome.instance == stopping
                }
                _ => false,
            };
            if !allowed {
                return Err(format!(
                    "request {} on {} failed while {:?}: {:?}",
                    outcome.n, outcome.instance, outcome.phase, outcome.result
                ));
            }
            let what = match &outcome.result {
                Ok((code, _)) => format!("{} {code}", outcome.instance),
                Err(_) => format!("{} closed", outcome.instance),
            };
            *failures.entry(what).or_default() += 1;
        }
        println!(
            "    {} requests, {} answered 200, each number once; failures, all allowed: {failures:?}",
            outcomes.len(),
            self.answered.load(Ordering::Acquire)
        );
        Ok(())
    }
}
