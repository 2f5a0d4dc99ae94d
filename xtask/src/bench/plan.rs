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
}

impl Timing {
    /// Full runs: 5 s each after 1 s of warm-up.
    pub(crate) const FULL: Timing = Timing {
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs(5),
        growth_requests: 1_000_000,
        bulk_bytes: 1 << 30,
        idle_connections: 1000,
    };

    /// `--quick`: 1 s each after 0.3 s of warm-up, smaller side measurements.
    pub(crate) const QUICK: Timing = Timing {
        warmup: Duration::from_millis(300),
        duration: Duration::from_secs(1),
        growth_requests: 200_000,
        bulk_bytes: 256 << 20,
        idle_connections: 200,
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
    /// OpenSSH's `ssh -W` through a private sshd to the plain-TCP server.
    SshW,
}

/// The name of OpenSSH's bulk figure, which is not a load run.
pub(crate) const BULK_NAME: &str = "OpenSSH bulk, one way (aes128-gcm)";

impl System {
    /// The key used on `korv-peers`' command line and in `latest.json`.
    pub(crate) fn key(self) -> &'static str {
        match self {
            System::Korv => "korv",
            System::Tcp => "tcp",
            System::Https2 => "https2",
            System::Https1 => "https1",
            System::Http1 => "http1",
            System::SshW => "ssh-w",
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
        }
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
    use System::{Http1, Https1, Https2, Korv, SshW, Tcp};
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
        if c == 1 || c == 64 {
            add(SshW, Hello, 1, c);
        }
    }
    add(Korv, Hello, 4, 64);
    add(Tcp, Hello, 4, 64);
    for c in [1, 64] {
        add(Korv, Echo1K, 1, c);
        add(Tcp, Echo1K, 1, c);
        add(Https2, Echo1K, 1, c);
        if c == 1 {
            add(Https1, Echo1K, 1, 1);
        } else {
            add(SshW, Echo1K, 1, c);
        }
    }
    for c in [1, 4] {
        add(Korv, Echo1M, 1, c);
        add(Https2, Echo1M, 1, c);
        if c == 1 {
            add(Https1, Echo1M, 1, 1);
        } else {
            add(Tcp, Echo1M, 1, c);
            add(SshW, Echo1M, 1, c);
        }
    }
    loads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_has_every_row_once_and_systems_serialize_as_their_keys() {
        let loads = plan();
        assert_eq!(loads.len(), 33);
        for (i, load) in loads.iter().enumerate() {
            assert!(!loads[..i].contains(load), "{load:?} twice");
        }
        for system in [
            System::Korv,
            System::Tcp,
            System::Https2,
            System::Https1,
            System::Http1,
            System::SshW,
        ] {
            assert_eq!(serde_json::json!(system), system.key());
        }
        assert_eq!(serde_json::json!(Workload::Echo1K), "echo 1 KiB");
    }
}
