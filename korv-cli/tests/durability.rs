//! Durability of `korv serve`'s document store under SIGKILL: the real binary
//! serves a STORE/UPDATE/DELETE load from several `korv-client` workers, is
//! killed at a random moment, and is restarted on the same data file. Every
//! change that was answered 2xx must be there with exactly its content; a
//! change whose answer was lost may or may not have happened, but a document
//! is always either absent or exactly one of the bodies sent for it.
//!
//! `KORV_DURABILITY_KILLS` sets the number of kills (default 20) and
//! `KORV_DURABILITY_SEED` the seed of the kill moments and body sizes (printed
//! by every run).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use korv_client::{ClientConfig, KorvClient, Response, StatusCode};
use korv_testkit::keys::{KeyKind, keygen, known_hosts_line, public_key};
use korv_testkit::net::free_port;
use korv_testkit::process::wait_until_listening;
use serde_json::{Value, json};

const WORKERS: usize = 8;

/// SplitMix64: small, seedable, good enough to pick moments and sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

/// The real `korv serve` on a data file, a host key and authorized keys.
struct Serve {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    starts: usize,
    /// Whether `child` is strace, running the server.
    traced: bool,
}

/// The children of process `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect()
}

impl Serve {
    fn new() -> Serve {
        let dir = tempfile::tempdir().unwrap();
        keygen(dir.path(), "host", KeyKind::Ed25519);
        let id = keygen(dir.path(), "id", KeyKind::Ed25519);
        std::fs::copy(id.with_extension("pub"), dir.path().join("authorized_keys")).unwrap();
        let port = free_port();
        let host_pub = public_key(&dir.path().join("host"));
        std::fs::write(
            dir.path().join("known_hosts"),
            known_hosts_line(port, &host_pub),
        )
        .unwrap();
        Serve {
            dir,
            port,
            child: None,
            starts: 0,
            traced: false,
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join(format!("serve-{}.log", self.starts))
    }

    /// Starts the server and waits until it listens.
    fn start(&mut self) {
        self.traced = false;
        self.start_with(Command::new(env!("CARGO_BIN_EXE_korv")));
    }

    /// Starts the server under `strace`, which writes to `trace` the system
    /// calls that write, sync or accept, each file descriptor with what it
    /// names (a path, or a TCP socket's two ends).
    fn start_traced(&mut self, trace: &std::path::Path) {
        let mut command = Command::new("strace");
        command
            .args(["-f", "-yy", "-s", "0", "-o"])
            .arg(trace)
            .args(["-e", &format!("trace={}", TRACED.join(","))])
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_korv"));
        self.traced = true;
        self.start_with(command);
    }

    /// Starts `command` (the `korv` binary, or a program that runs it) with
    /// `serve` and its options, and waits until it listens.
    fn start_with(&mut self, mut command: Command) {
        self.starts += 1;
        let log = std::fs::File::create(self.log()).unwrap();
        let child = command
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--host-key")
            .arg(self.dir.path().join("host"))
            .arg("--authorized-keys")
            .arg(self.dir.path().join("authorized_keys"))
            .arg("--data")
            .arg(self.dir.path().join("store.redb"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {:?}: {err}", command.get_program()));
        let child = self.child.insert(child);
        if let Err(err) = wait_until_listening(child, self.port, Duration::from_secs(20)) {
            panic!(
                "korv serve on start {}: {err}: {}",
                self.starts,
                std::fs::read_to_string(self.log()).unwrap_or_default()
            );
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Under strace the server is strace's child, and strace killed
            // detaches it, to run on: the server gets the SIGKILL, and strace
            // ends by itself once it is gone, its trace written.
            let tracees = if self.traced {
                children(child.id())
            } else {
                Vec::new()
            };
            for pid in &tracees {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            if !tracees.is_empty() {
                child.wait().unwrap();
                return;
            }
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
    }

    fn config(&self) -> ClientConfig {
        ClientConfig::new("127.0.0.1")
            .port(self.port)
            .identity_file(self.dir.path().join("id"))
            .use_agent(false)
            .known_hosts(self.dir.path().join("known_hosts"))
            .request_timeout(Some(Duration::from_secs(10)))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A document's state: absent, or exactly this body.
#[derive(Debug, Clone, PartialEq)]
enum Doc {
    Absent,
    Body(Value),
}

/// What the test knows of one resource.
#[derive(Debug, Clone)]
struct Known {
    /// The state after the last change answered 2xx.
    acked: Doc,
    /// The state if the change whose answer was lost took effect.
    unanswered: Option<Doc>,
}

/// What one worker did in one round.
struct Work {
    /// Resource and what is known of it, for every resource it touched.
    known: Vec<(String, Known)>,
    /// Changes answered 2xx.
    acked: usize,
    /// Why it stopped (the connection's end, as the client reported it).
    stopped: String,
}

fn body(worker: usize, key: u64, version: u64, pad: usize) -> Value {
    json!({"worker": worker, "key": key, "version": version, "pad": "x".repeat(pad)})
}

/// One worker's load: on fresh resources `/docs/w{worker}-{key}`, STORE, two
/// UPDATEs, then (for every other resource) DELETE; until the connection is
/// lost or `deadline`.
async fn work(
    client: KorvClient,
    worker: usize,
    first_key: u64,
    mut rng: Rng,
    deadline: Instant,
) -> Work {
    let mut known = Vec::new();
    let mut acked = 0;
    let mut key = first_key;
    let stopped = 'load: loop {
        let path = format!("/docs/w{worker}-{key}");
        let mut state = Known {
            acked: Doc::Absent,
            unanswered: None,
        };
        let steps = if key.is_multiple_of(2) { 4 } else { 3 };
        for version in 0..steps {
            if Instant::now() > deadline {
                known.push((path, state));
                break 'load "the deadline passed: the server was never killed".to_owned();
            }
            let pad = rng.range(0, 6000) as usize;
            let (after, result, want) = match version {
                0 => {
                    let b = body(worker, key, 0, pad);
                    (Doc::Body(b.clone()), client.store(&path, &b).await, 201)
                }
                3 => (Doc::Absent, client.delete(&path).await, 200),
                v => {
                    let b = body(worker, key, v, pad);
                    (Doc::Body(b.clone()), client.update(&path, &b).await, 200)
                }
            };
            match result {
                Ok(Response { code, body, .. }) => {
                    assert_eq!(code, want, "{path} version {version}: {body}");
                    if let Doc::Body(b) = &after {
                        if version > 0 {
                            assert_eq!(&body, b, "UPDATE answers the new document");
                        }
                    } else if let Doc::Body(before) = &state.acked {
                        assert_eq!(&body, before, "DELETE answers the removed document");
                    }
                    state.acked = after;
                    acked += 1;
                }
                Err(err) => {
                    state.unanswered = Some(after);
                    known.push((path, state));
                    break 'load err.to_string();
                }
            }
        }
        known.push((path, state));
        key += 1;
    };
    Work {
        known,
        acked,
        stopped,
    }
}

/// Reads every resource back and checks it; returns the settled states
/// (what was read, now durable) and the count of lost answers whose change
/// turned out to have happened.
async fn verify(
    serve: &Serve,
    known: &BTreeMap<String, Known>,
    round: usize,
) -> (BTreeMap<String, Known>, usize) {
    let client = KorvClient::connect(serve.config()).await.unwrap();
    // All at once over one connection: the server reads at most its
    // per-stream limit at a time and holds back the rest.
    let tasks: Vec<_> = known
        .keys()
        .cloned()
        .map(|path| {
            let client = client.clone();
            tokio::spawn(async move {
                let r = client.get(&path).await.unwrap();
                (path, r)
            })
        })
        .collect();
    let mut reads = Vec::with_capacity(tasks.len());
    for task in tasks {
        reads.push(task.await.unwrap());
    }
    let mut settled = BTreeMap::new();
    let mut took_effect = 0;
    for (path, r) in reads {
        let found = match r.code.as_u16() {
            200 => Doc::Body(r.body),
            404 => Doc::Absent,
            other => panic!(
                "after kill {round}: GET {path} answered {other}: {}",
                r.body
            ),
        };
        let k = &known[&path];
        let allowed = found == k.acked || k.unanswered.as_ref() == Some(&found);
        assert!(
            allowed,
            "after kill {round}: {path} is {}; acknowledged: {}; unanswered change: {}",
            short(&found),
            short(&k.acked),
            k.unanswered.as_ref().map_or("none".into(), short)
        );
        if k.unanswered.as_ref() == Some(&found) && found != k.acked {
            took_effect += 1;
        }
        settled.insert(
            path,
            Known {
                acked: found,
                unanswered: None,
            },
        );
    }
    // The listing holds exactly the documents that are there: nothing else
    // appeared.
    let listing = client.get("/docs/").await.unwrap();
    assert_eq!(listing.code, StatusCode::OK);
    let listed: HashSet<String> = listing.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    let present: HashSet<String> = settled
        .iter()
        .filter(|(_, k)| k.acked != Doc::Absent)
        .map(|(p, _)| p.clone())
        .collect();
    assert_eq!(listed, present, "after kill {round}: the listing");
    (settled, took_effect)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_sigkill_and_nothing_is_half_written() {
    let kills = env_number("KORV_DURABILITY_KILLS").unwrap_or(20) as usize;
    let seed = env_number("KORV_DURABILITY_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    println!("KORV_DURABILITY_SEED={seed} KORV_DURABILITY_KILLS={kills}");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut serve = Serve::new();
    serve.start();
    let mut known: BTreeMap<String, Known> = BTreeMap::new();
    let mut next_key = [0u64; WORKERS];
    let (mut acked_total, mut lost_total, mut took_effect_total) = (0, 0, 0);
    for round in 1..=kills {
        let mut clients = Vec::new();
        for _ in 0..WORKERS {
            clients.push(KorvClient::connect(serve.config()).await.unwrap());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let workers: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(w, client)| {
                let worker_rng = Rng(rng.next());
                tokio::spawn(work(client, w, next_key[w], worker_rng, deadline))
            })
            .collect();
        let kill_after = Duration::from_millis(rng.range(100, 500));
        tokio::time::sleep(kill_after).await;
        serve.kill();
        let mut acked = 0;
        let mut lost = 0;
        for (w, worker) in workers.into_iter().enumerate() {
            let done = worker.await.unwrap();
            assert!(
                done.stopped.contains("closed"),
                "worker {w} stopped with: {}",
                done.stopped
            );
            acked += done.acked;
            for (path, k) in done.known {
                lost += usize::from(k.unanswered.is_some());
                next_key[w] = next_key[w].max(key_of(&path) + 1);
                known.insert(path, k);
            }
        }
        serve.start();
        let (settled, took_effect) = verify(&serve, &known, round).await;
        known = settled;
        acked_total += acked;
        lost_total += lost;
        took_effect_total += took_effect;
        println!(
            "kill {round} after {kill_after:?}: {acked} changes acknowledged, {lost} answers lost \
             ({took_effect} of those changes had happened); {} resources checked",
            known.len()
        );
    }
    println!(
        "{kills} kills in {:?}: {acked_total} acknowledged changes, all present and exact; \
         {lost_total} lost answers, {took_effect_total} of them applied, the rest not; \
         {} resources, {} documents at the end",
        started.elapsed(),
        known.len(),
        known.values().filter(|k| k.acked != Doc::Absent).count()
    );
    assert!(acked_total > 0, "no change was acknowledged");
}

/// A document in a few words (its padding can be long).
fn short(doc: &Doc) -> String {
    match doc {
        Doc::Absent => "absent".into(),
        Doc::Body(body) => {
            let pad = body["pad"].as_str().map_or(0, str::len);
            let mut rest = body.clone();
            if let Some(fields) = rest.as_object_mut() {
                fields.remove("pad");
            }
            format!("{rest} with {pad} bytes of padding")
        }
    }
}

fn key_of(path: &str) -> u64 {
    path.rsplit('-').next().unwrap().parse().unwrap()
}

/// The system calls traced by [`Serve::start_traced`]: those that write to a
/// file or socket, sync a file, or accept a connection.
const TRACED: [&str; 12] = [
    "write",
    "writev",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "send",
    "sendto",
    "sendmsg",
    "fsync",
    "fdatasync",
    "accept",
    "accept4",
];

/// One traced system call that matters to the ordering of a change and its
/// answer. Writes count from their start; syncs and accepts from their
/// successful end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Traced {
    /// A write to the store's data file.
    StoreWrite,
    /// An `fsync` or `fdatasync` of the store's data file that returned 0.
    StoreSync,
    /// A write to an accepted TCP connection, from the client port `peer`.
    SocketWrite { peer: u16 },
    /// A connection accepted from the client port `peer`.
    Accept { peer: u16 },
}

/// The client port of a server-side TCP socket as `strace -yy` shows it:
/// `TCP:[127.0.0.1:SERVER->127.0.0.1:CLIENT]`.
fn peer_port(text: &str) -> Option<u16> {
    let at = text.find("TCP:[")?;
    let rest = &text[at..];
    let arrow = rest.find("->")?;
    let end = rest[arrow..].find(']')? + arrow;
    let peer = &rest[arrow + 2..end];
    peer.rsplit(':').next()?.parse().ok()
}

/// Whether a traced call's line ends with its result 0 (strace may pad
/// before the `=`).
fn returned_zero(line: &str) -> bool {
    line.rsplit_once(" = ")
        .is_some_and(|(call, result)| call.trim_end().ends_with(')') && result == "0")
}

/// The events of an `strace -f -yy` log, in the order they happened.
fn traced_events(log: &str, store_file: &str) -> Vec<Traced> {
    let store = format!("{store_file}>");
    // Calls another thread interrupted: pid -> whether it syncs the store.
    let mut unfinished_syncs: BTreeMap<String, bool> = BTreeMap::new();
    let mut events = Vec::new();
    for line in log.lines() {
        let Some((pid, call)) = line.split_once(' ') else {
            continue;
        };
        let call = call.trim_start();
        if let Some(rest) = call.strip_prefix("<... ") {
            // `<... fsync resumed>) = 0`: the end of an interrupted call.
            let name = rest.split(' ').next().unwrap_or("");
            let ok = returned_zero(rest);
            if matches!(name, "fsync" | "fdatasync") {
                if unfinished_syncs.remove(pid) == Some(true) && ok {
                    events.push(Traced::StoreSync);
                }
            } else if name.starts_with("accept")
                && let Some(peer) = rest.rsplit_once(" = ").and_then(|(_, r)| peer_port(r))
            {
                events.push(Traced::Accept { peer });
            }
            continue;
        }
        let Some((name, args)) = call.split_once('(') else {
            continue;
        };
        let unfinished = args.ends_with("<unfinished ...>");
        match name {
            "fsync" | "fdatasync" => {
                let of_store = args.contains(&store);
                if unfinished {
                    unfinished_syncs.insert(pid.to_owned(), of_store);
                } else if of_store && returned_zero(args) {
                    events.push(Traced::StoreSync);
                }
            }
            "accept" | "accept4" => {
                if let Some(peer) = args.rsplit_once(" = ").and_then(|(_, r)| peer_port(r)) {
                    events.push(Traced::Accept { peer });
                }
            }
            _ => {
                // A write: its file descriptor is the first argument.
                let fd = args.split(", ").next().unwrap_or("");
                if fd.ends_with(&store) {
                    events.push(Traced::StoreWrite);
                } else if let Some(peer) = peer_port(fd) {
                    events.push(Traced::SocketWrite { peer });
                }
            }
        }
    }
    events
}

/// Checks, for each change between two markers (connections accepted from
/// the ports in `markers`), that its answer (the last write to a client
/// connection other than a marker) comes after an `fsync`/`fdatasync` of the
/// store that followed the change's last write to the store. Returns one
/// line per change that broke this.
fn unsynced_answers(events: &[Traced], markers: &[u16]) -> Vec<String> {
    let positions: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Traced::Accept { peer } if markers.contains(peer)))
        .map(|(at, _)| at)
        .collect();
    assert_eq!(
        positions.len(),
        markers.len(),
        "every marker connection is in the trace"
    );
    let mut broken = Vec::new();
    for (change, pair) in positions.windows(2).enumerate() {
        let segment = &events[pair[0]..pair[1]];
        let answer = segment
            .iter()
            .rposition(|e| matches!(e, Traced::SocketWrite { peer } if !markers.contains(peer)));
        let Some(answer) = answer else {
            broken.push(format!("change {change}: no answer was written"));
            continue;
        };
        let before = &segment[..answer];
        let last_write = before.iter().rposition(|e| *e == Traced::StoreWrite);
        let last_sync = before.iter().rposition(|e| *e == Traced::StoreSync);
        match (last_write, last_sync) {
            (_, None) => broken.push(format!(
                "change {change}: answered with no sync of the store before it"
            )),
            (Some(write), Some(sync)) if write > sync => broken.push(format!(
                "change {change}: answered after a write to the store that no sync followed"
            )),
            _ => {}
        }
    }
    broken
}

/// Connects to the server, waits for its SSH version line (so the server has
/// accepted the connection), and closes; returns the client port, which
/// marks this moment in the server's trace.
async fn mark(port: u16) -> u16 {
    use tokio::io::AsyncReadExt;
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let marker = socket.local_addr().unwrap().port();
    let mut banner = [0; 8];
    tokio::time::timeout(Duration::from_secs(20), socket.read_exact(&mut banner))
        .await
        .expect("the server greets the marker connection")
        .unwrap();
    assert_eq!(&banner, b"SSH-2.0-");
    marker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_change_is_synced_to_disk_before_its_answer_is_written() {
    assert!(
        Command::new("strace")
            .arg("-V")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        "this test traces korv serve's system calls with strace: install it (apt-get install strace)"
    );
    let mut serve = Serve::new();
    let trace = serve.dir.path().join("strace.log");
    serve.start_traced(&trace);
    let client = KorvClient::connect(serve.config()).await.unwrap();
    // Warm up: the first change may open files and grow the store.
    let warm = client
        .store("/docs/warm", &json!({"warm": true}))
        .await
        .unwrap();
    assert_eq!(warm.code, 201);

    // Each change alone between two markers: STORE, UPDATE, DELETE of three
    // documents.
    let mut markers = vec![mark(serve.port).await];
    for key in 0..3 {
        let path = format!("/docs/synced-{key}");
        for (verb, want) in [("STORE", 201), ("UPDATE", 200), ("DELETE", 200)] {
            let answer = match verb {
                "STORE" => client.store(&path, &json!({"v": 0})).await,
                "UPDATE" => client.update(&path, &json!({"v": 1})).await,
                _ => client.delete(&path).await,
            }
            .unwrap();
            assert_eq!(answer.code, want, "{verb} {path}: {}", answer.body);
            markers.push(mark(serve.port).await);
        }
    }
    drop(client);
    serve.kill();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", serve.port)).is_err(),
        "korv serve still listens after the kill: it outlived strace"
    );

    let log = std::fs::read_to_string(&trace).unwrap();
    let events = traced_events(&log, "store.redb");
    assert!(
        events.contains(&Traced::StoreSync),
        "the trace shows no sync of the store at all; it has {} lines",
        log.lines().count()
    );
    let broken = unsynced_answers(&events, &markers);
    assert!(
        broken.is_empty(),
        "answers written before their change was on disk:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_trace_reader_sees_an_answer_written_before_the_sync() {
    let log = "\
10 accept4(7<TCP:[127.0.0.1:5000]>, {sa_family=AF_INET}, [16], SOCK_CLOEXEC) = 11<TCP:[127.0.0.1:5000->127.0.0.1:40001]>
11 pwrite64(9</tmp/x/store.redb>, \"\"..., 4096, 0) = 4096
12 fdatasync(9</tmp/x/store.redb> <unfinished ...>
11 sendto(10<TCP:[127.0.0.1:5000->127.0.0.1:39999]>, \"\"..., 64, MSG_NOSIGNAL, NULL, 0) = 64
12 <... fdatasync resumed>)       = 0
10 accept4(7<TCP:[127.0.0.1:5000]>, <unfinished ...>
10 <... accept4 resumed>{sa_family=AF_INET}, [16], SOCK_CLOEXEC) = 11<TCP:[127.0.0.1:5000->127.0.0.1:40002]>
11 pwrite64(9</tmp/x/store.redb>, \"\"..., 4096, 0) = 4096
12 fsync(9</tmp/x/store.redb>) = 0
11 write(10<TCP:[127.0.0.1:5000->127.0.0.1:39999]>, \"\"..., 64) = 64
10 accept4(7<TCP:[127.0.0.1:5000]>, {sa_family=AF_INET}, [16], SOCK_CLOEXEC) = 11<TCP:[127.0.0.1:5000->127.0.0.1:40003]>
";
    let events = traced_events(log, "store.redb");
    assert_eq!(
        events,
        [
            Traced::Accept { peer: 40001 },
            Traced::StoreWrite,
            Traced::SocketWrite { peer: 39999 },
            Traced::StoreSync,
            Traced::Accept { peer: 40002 },
            Traced::StoreWrite,
            Traced::StoreSync,
            Traced::SocketWrite { peer: 39999 },
            Traced::Accept { peer: 40003 },
        ]
    );
    let broken = unsynced_answers(&events, &[40001, 40002, 40003]);
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert!(broken[0].starts_with("change 0:"), "{broken:?}");
}
