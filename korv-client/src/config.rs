//! The client's settings.

use std::path::PathBuf;
use std::time::Duration;

/// What to do with the server's host key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostKeyPolicy {
    /// Refuse a key that is not in known_hosts, and a changed one (the default).
    #[default]
    Strict,
    /// Trust on first use: append an unknown key to known_hosts; still refuse
    /// a changed one.
    AcceptNew,
    /// Accept any key, checking nothing. Only for tests.
    InsecureAcceptAny,
}

/// Which SSH channel carries the Korv stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelKind {
    /// `direct-tcpip` (the default, the classic Korv way).
    #[default]
    DirectTcpip,
    /// A session channel with the `korv` subsystem.
    Subsystem,
}

/// Everything a client needs to connect. Build with [`ClientConfig::new`] and
/// the methods below.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) identities: Vec<PathBuf>,
    pub(crate) certificates: Vec<PathBuf>,
    pub(crate) passphrase: Option<String>,
    pub(crate) use_agent: bool,
    pub(crate) agent_socket: Option<PathBuf>,
    pub(crate) default_identities: bool,
    pub(crate) known_hosts: Option<PathBuf>,
    pub(crate) policy: HostKeyPolicy,
    pub(crate) channel: ChannelKind,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) max_frame: usize,
    pub(crate) reconnect: bool,
}

impl ClientConfig {
    /// Settings for `host`: port 8022, the current user, the default
    /// identities (`~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`, whichever exist)
    /// and the ssh-agent, `~/.ssh/known_hosts` checked strictly, a
    /// `direct-tcpip` channel, 10 s to connect, 30 s per request, 8 MiB frames.
    pub fn new(host: impl Into<String>) -> Self {
        ClientConfig {
            host: host.into(),
            port: 8022,
            user: std::env::var("USER")
                .or_else(|_| std::env::var("USERNAME"))
                .unwrap_or_else(|_| "korv".into()),
            identities: Vec::new(),
            certificates: Vec::new(),
            passphrase: None,
            use_agent: true,
            agent_socket: None,
            default_identities: true,
            known_hosts: None,
            policy: HostKeyPolicy::Strict,
            channel: ChannelKind::DirectTcpip,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Some(Duration::from_secs(30)),
            max_frame: korv_proto::DEFAULT_MAX_FRAME,
            reconnect: false,
        }
    }

    /// The port (default 8022).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The SSH user name (default: the current user).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    /// Adds a private key file (repeatable). Once any is given, the default
    /// `~/.ssh` keys are not tried.
    pub fn identity_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.identities.push(path.into());
        self
    }

    /// Adds an OpenSSH user certificate (`ssh-keygen -s` output, repeatable),
    /// offered with the identity file or ssh-agent key it certifies.
    ///
    /// Without it, a certificate is still used when it sits beside its key
    /// as `ssh` expects (`id_ed25519` and `id_ed25519-cert.pub`), or when
    /// the ssh-agent holds it (`ssh-add` loads the certificate with the key).
    pub fn certificate_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.certificates.push(path.into());
        self
    }

    /// The passphrase for encrypted identity files.
    pub fn passphrase(mut self, passphrase: impl Into<String>) -> Self {
        self.passphrase = Some(passphrase.into());
        self
    }

    /// Whether to try the ssh-agent at `SSH_AUTH_SOCK` (default: yes).
    pub fn use_agent(mut self, on: bool) -> Self {
        self.use_agent = on;
        self
    }

    /// The ssh-agent socket (default: `SSH_AUTH_SOCK`); also turns the agent on.
    pub fn agent_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.agent_socket = Some(path.into());
        self.use_agent = true;
        self
    }

    /// Whether the default `~/.ssh` keys are tried when no identity file is
    /// given (default: yes).
    pub fn default_identities(mut self, on: bool) -> Self {
        self.default_identities = on;
        self
    }

    /// The known_hosts file (default `~/.ssh/known_hosts`).
    pub fn known_hosts(mut self, path: impl Into<PathBuf>) -> Self {
        self.known_hosts = Some(path.into());
        self
    }

    /// The host key policy (default [`HostKeyPolicy::Strict`]).
    pub fn host_key_policy(mut self, policy: HostKeyPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The channel kind (default [`ChannelKind::DirectTcpip`]).
    pub fn channel(mut self, kind: ChannelKind) -> Self {
        self.channel = kind;
        self
    }

    /// Time to connect, handshake and authenticate (default 10 s).
    pub fn connect_timeout(mut self, limit: Duration) -> Self {
        self.connect_timeout = limit;
        self
    }

    /// Time each request gets to be answered (default 30 s; `None`: forever).
    pub fn request_timeout(mut self, limit: Option<Duration>) -> Self {
        self.request_timeout = limit;
        self
    }

    /// The largest frame sent or accepted (default 8 MiB).
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Whether a request on a closed connection reconnects first (default: no).
    pub fn reconnect(mut self, on: bool) -> Self {
        self.reconnect = on;
        self
    }

    pub(crate) fn agent_path(&self) -> Option<PathBuf> {
        if !self.use_agent {
            return None;
        }
        self.agent_socket
            .clone()
            .or_else(|| std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from))
    }

    pub(crate) fn known_hosts_path(&self) -> PathBuf {
        self.known_hosts
            .clone()
            .unwrap_or_else(|| home().join(".ssh").join("known_hosts"))
    }

    pub(crate) fn identity_paths(&self) -> Vec<PathBuf> {
        if !self.identities.is_empty() || !self.default_identities {
            return self.identities.clone();
        }
        ["id_ed25519", "id_ecdsa", "id_rsa"]
            .iter()
            .map(|name| home().join(".ssh").join(name))
            .filter(|path| path.exists())
            .collect()
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
}
