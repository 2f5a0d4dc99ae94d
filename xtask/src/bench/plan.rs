//! What `cargo xtask bench` measures: the systems, the work each serves, the
//! shapes of load (connections × requests in flight) and how long each runs.

use std::time::Duration;

use serde::{Serialize, Serializer};

/// How long each measurement runs, and the sizes of the side measurements.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    /// Requests for the memory-growth check.
    pub(crate) growth_requests: u64,
    /// Bytes pushed through OpenSSH for its bulk figure.
    pub(crate) bulk_bytes: u64,
    /// Idle connections held for the per-connection memory figure.
    pub(crate) idle_connections: usize,
    /// Requests korv 0.2.1's pipelined client sends for its best rate.
    pub(crate) original_requests: u64,
}

impl Timing {
    /// Full runs: 5 s each after 1 s of warm-up.
    pub(crate) const FULL: Timing = Timing {
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs(5),
        growth_requests: 1_000_000,
        bulk_bytes: 1 << 30,
        idle_connections: 1000,
        original_requests: 10_000,
    };

    /// `--quick`: 1 s each after 0.3 s of warm-up, smaller side measurements.
    pub(crate) const QUICK: Timing = Timing {
        warmup: Duration::from_millis(300),
        duration: Duration::from_secs(1),
        growth_requests: 200_000,
        bulk_bytes: 256 << 20,
        idle_connections: 200,
        original_requests: 3_000,
    };
}

/// A system under load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum System {
    /// `korv serve`, loaded by `korv bench`.
    Korv,
    /// Korv's framing over plain TCP, no SSH (`korv-peers server tcp`).
    Tcp,
    /// HTTP/2 over TLS 1.3.
    Https2,
    /// HTTP/1.1 over TLS 1.3.
    Https1,
    /// HTTP/1.1 without TLS.
    Http1,
    /// OpenSSH's `ssh -W` through a private sshd to the plain-TCP server,
    /// stock settings.
    SshW,
    /// As [`System::SshW`], with TCP_NODELAY forced on ssh's and sshd's
    /// sockets (the LD_PRELOAD shim of `benches/nodelay`).
    SshWNodelay,
    /// OpenSSH's client (`ssh -W`, nodelay) straight into `korv serve`: the
    /// server alone, without `korv bench`.
    SshKorv,
    /// `korv bench` against the `hello` server of `korv-py` (a Python
    /// callback on Korv's engine).
    PyServer,
    /// `korv-py`'s blocking client calling `get('/hello')` in a loop against
    /// `korv serve`.
    PyBlocking,
    /// korv 0.2.1 (the original, from PyPI): its client with callbacks in
    /// flight against its own server.
    Original,
    /// korv 0.2.1's client (its own wire format) against `korv serve`.
    LegacyKorv,
    /// korv 0.2.1's client against korv 0.2.1's server, driven alike.
    LegacyOwn,
    /// `korv bench` (version 1) against `korv serve`, paced to the rate
    /// the [`System::LegacyKorv`] row of the same concurrency reached: the
    /// server's CPU per request of each format at the same load.
    KorvPaced,
}

/// The name of OpenSSH's bulk figure, which is not a load run.
pub(crate) const BULK_NAME: &str = "OpenSSH bulk, one way (aes128-gcm)";

/// The TLS rows' cipher: the HTTPS peers offer this suite only.
pub(crate) const TLS_CIPHER: &str = "TLS13_AES_128_GCM_SHA256";

impl System {
    /// Every system.
    pub(crate) const ALL: [System; 14] = [
        System::Korv,
        System::Tcp,
        System::Https2,
        System::Https1,
        System::Http1,
        System::SshW,
        System::SshWNodelay,
        System::SshKorv,
        System::PyServer,
        System::PyBlocking,
        System::Original,
        System::LegacyKorv,
        System::LegacyOwn,
        System::KorvPaced,
    ];

    /// The key used on `korv-peers`' command line and in `latest.json`.
    pub(crate) fn key(self) -> &'static str {
        match self {
            System::Korv => "korv",
            System::Tcp => "tcp",
            System::Https2 => "https2",
            System::Https1 => "https1",
            System::Http1 => "http1",
            System::SshW => "ssh-w",
            System::SshWNodelay => "ssh-w-nodelay",
            System::SshKorv => "ssh-korv",
            System::PyServer => "py-server",
            System::PyBlocking => "py-blocking",
            System::Original => "korv021",
            System::LegacyKorv => "korv021-client-korv",
            System::LegacyOwn => "korv021-client-own",
            System::KorvPaced => "korv-paced",
        }
    }

    /// The name in the report.
    pub(crate) fn name(self) -> &'static str {
        match self {
            System::Korv => "Korv over SSH",
            System::Tcp => "Korv framing, plain TCP (no SSH)",
            System::Https2 => "HTTP/2 over TLS 1.3 (hyper + rustls)",
            System::Https1 => "HTTP/1.1 over TLS 1.3 (hyper + rustls)",
            System::Http1 => "HTTP/1.1, plain (hyper)",
            System::SshW => "OpenSSH `ssh -W` to the plain-TCP framing server",
            System::SshWNodelay => "OpenSSH `ssh -W`, nodelay, to the plain-TCP framing server",
            System::SshKorv => "OpenSSH `ssh -W`, nodelay, to `korv serve`",
            System::PyServer => "`korv bench` to a Python `hello` server (korv-py)",
            System::PyBlocking => "korv-py blocking client `get('/hello')` loop to `korv serve`",
            System::Original => "korv 0.2.1 client (callbacks) to korv 0.2.1 server",
            System::LegacyKorv => "korv 0.2.1 client to `korv serve`",
            System::LegacyOwn => "korv 0.2.1 client to korv 0.2.1 server",
            System::KorvPaced => {
                "`korv bench` to `korv serve`, paced to the korv 0.2.1 client's rate"
            }
        }
    }

    /// Whether the system needs the private sshd (the OpenSSH rows that go
    /// through it).
    pub(crate) fn needs_sshd(self) -> bool {
        matches!(self, System::SshW | System::SshWNodelay)
    }

    /// Whether the system needs OpenSSH's client (and the nodelay shim
    /// for all but the stock row).
    pub(crate) fn needs_ssh(self) -> bool {
        matches!(self, System::SshW | System::SshWNodelay | System::SshKorv)
    }

    /// Whether the system runs Python: korv-py's venv or korv 0.2.1's.
    pub(crate) fn needs_python(self) -> bool {
        matches!(
            self,
            System::PyServer
                | System::PyBlocking
                | System::Original
                | System::LegacyKorv
                | System::LegacyOwn
                // Paced to the rate of a row that runs Python.
                | System::KorvPaced
        )
    }
}

impl Serialize for System {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.key())
    }
}

/// The work each request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workload {
    /// `GET /hello`.
    Hello,
    /// `STORE /echo` (HTTP: `POST /echo`) of a 1 KiB JSON body.
    Echo1K,
    /// `STORE /echo` of a 1 MiB JSON body.
    Echo1M,
}

impl Workload {
    /// Bytes of the request body, the one direction every MB/s counts.
    pub(crate) fn body_bytes(self) -> u64 {
        match self {
            Workload::Hello => 0,
            Workload::Echo1K => 1024,
            Workload::Echo1M => 1 << 20,
        }
    }

    /// The label in the report and in `latest.json`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Workload::Hello => "GET /hello",
            Workload::Echo1K => "echo 1 KiB",
            Workload::Echo1M => "echo 1 MiB",
        }
    }
}

impl Serialize for Workload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.label())
    }
}

/// One load run: a system serving a workload to `connections` ×
/// `concurrency` requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Load {
    pub(crate) system: System,
    pub(crate) workload: Workload,
    pub(crate) connections: usize,
    pub(crate) concurrency: usize,
}

/// Every load run, in the order they run. Systems interleave within each
/// workload and concurrency, so that the machine's drift touches them alike.
pub(crate) fn plan() -> Vec<Load> {
    use System::{
        Http1, Https1, Https2, Korv, KorvPaced, LegacyKorv, LegacyOwn, Original, PyBlocking,
        PyServer, SshKorv, SshW, SshWNodelay, Tcp,
    };
    use Workload::{Echo1K, Echo1M, Hello};
    let mut loads = Vec::new();
    let mut add = |system, workload, connections, concurrency| {
        loads.push(Load {
            system,
            workload,
            connections,
            concurrency,
        })
    };
    for c in [1, 16, 64, 256] {
        add(Korv, Hello, 1, c);
        add(Tcp, Hello, 1, c);
        add(Https2, Hello, 1, c);
        if c == 1 {
            add(Https1, Hello, 1, 1);
            add(Http1, Hello, 1, 1);
        }
        if c != 16 {
            add(SshW, Hello, 1, c);
            add(SshWNodelay, Hello, 1, c);
            add(SshKorv, Hello, 1, c);
        }
        if c == 1 || c == 64 {
            add(PyServer, Hello, 1, c);
            add(LegacyKorv, Hello, 1, c);
            // Right after it: the pace is the rate it reached.
            add(KorvPaced, Hello, 1, c);
        }
        if c == 64 {
            add(LegacyOwn, Hello, 1, c);
        }
    }
    add(PyBlocking, Hello, 1, 1);
    add(Original, Hello, 1, ORIGINAL_IN_FLIGHT);
    add(Korv, Hello, 4, 64);
    add(Tcp, Hello, 4, 64);
    for c in [1, 64] {
        for system in [Korv, Tcp, Https2, SshW, SshWNodelay, SshKorv] {
            add(system, Echo1K, 1, c);
        }
        if c == 1 {
            add(Https1, Echo1K, 1, 1);
        }
    }
    for c in [1, 4] {
        for system in [Korv, Https2, Tcp, SshW, SshWNodelay, SshKorv] {
            add(system, Echo1M, 1, c);
        }
        if c == 1 {
            add(Https1, Echo1M, 1, 1);
        }
    }
    loads
}

/// Requests in flight for korv 0.2.1's own best rate: its client with about
/// 1,000 callbacks in flight.
pub(crate) const ORIGINAL_IN_FLIGHT: usize = 1000;

/// The runs of `plan` whose systems can run here: without sshd, OpenSSH's
/// client or Python, the rows that need them are left out.
pub(crate) fn runnable(plan: &[Load], sshd: bool, ssh: bool, python: bool) -> Vec<Load> {
    plan.iter()
        .filter(|l| {
            (sshd || !l.system.needs_sshd())
                && (ssh || !l.system.needs_ssh())
                && (python || !l.system.needs_python())
        })
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_has_every_row_once_and_systems_serialize_as_their_keys() {
        let loads = plan();
        assert_eq!(loads.len(), 60);
        for (i, load) in loads.iter().enumerate() {
            assert!(!loads[..i].contains(load), "{load:?} twice");
        }
        let mut keys: Vec<&str> = System::ALL.iter().map(|s| s.key()).collect();
        for system in System::ALL {
            assert_eq!(serde_json::json!(system), system.key());
            assert!(
                loads.iter().any(|l| l.system == system),
                "{system:?} never runs"
            );
        }
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), System::ALL.len(), "keys are unique");
        assert_eq!(serde_json::json!(Workload::Echo1K), "echo 1 KiB");
    }

    #[test]
    fn the_plan_has_every_row_the_targets_compare() {
        use System::*;
        use Workload::*;
        let loads = plan();
        let has = |system, workload, connections, concurrency| {
            loads.contains(&Load {
                system,
                workload,
                connections,
                concurrency,
            })
        };
        for system in [Korv, SshWNodelay, SshKorv, SshW] {
            for c in [1, 64, 256] {
                assert!(has(system, Hello, 1, c), "{system:?} hello c={c}");
            }
            assert!(has(system, Echo1K, 1, 1), "{system:?} echo 1 KiB c=1");
            for c in [1, 4] {
                assert!(has(system, Echo1M, 1, c), "{system:?} echo 1 MiB c={c}");
            }
        }
        assert!(has(Tcp, Hello, 1, 256));
        assert!(has(Https1, Hello, 1, 1) && has(Https1, Echo1K, 1, 1));
        assert!(has(Https2, Echo1M, 1, 1) && has(Https2, Echo1M, 1, 4));
        assert!(has(PyServer, Hello, 1, 64) && has(PyServer, Hello, 1, 1));
        assert!(has(PyBlocking, Hello, 1, 1));
        assert!(has(Original, Hello, 1, ORIGINAL_IN_FLIGHT));
        assert!(has(LegacyKorv, Hello, 1, 64) && has(LegacyOwn, Hello, 1, 64));
        // Each paced row runs right after the korv 0.2.1 row whose rate it
        // takes.
        for c in [1, 64] {
            let legacy = loads
                .iter()
                .position(|l| l.system == LegacyKorv && l.concurrency == c)
                .unwrap();
            assert_eq!(
                loads[legacy + 1],
                Load {
                    system: KorvPaced,
                    workload: Hello,
                    connections: 1,
                    concurrency: c
                }
            );
        }
    }

    #[test]
    fn rows_whose_tools_are_missing_are_left_out_and_the_rest_kept_in_order() {
        let all = plan();
        assert_eq!(runnable(&all, true, true, true), all);
        let no_sshd = runnable(&all, false, true, true);
        assert!(no_sshd.iter().all(|l| !l.system.needs_sshd()));
        assert!(no_sshd.iter().any(|l| l.system == System::SshKorv));
        let no_ssh = runnable(&all, true, false, true);
        assert!(no_ssh.iter().all(|l| !l.system.needs_ssh()));
        let no_python = runnable(&all, true, true, false);
        assert!(no_python.iter().all(|l| !l.system.needs_python()));
        assert_eq!(
            no_python.len() + all.iter().filter(|l| l.system.needs_python()).count(),
            all.len()
        );
        let kept: Vec<&Load> = all.iter().filter(|l| !l.system.needs_python()).collect();
        assert_eq!(no_python.iter().collect::<Vec<_>>(), kept);
        assert_eq!(Workload::Echo1M.body_bytes(), 1_048_576);
    }
}
