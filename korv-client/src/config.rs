//! The client's settings.

use std::path::PathBuf;
use std::time::Duration;

use crate::ssh_config::Files;

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
///
/// Settings made here win over an SSH configuration read with
/// [`ssh_config`](Self::ssh_config) or [`user_ssh_config`](Self::user_ssh_config),
/// as command-line options win over it for `ssh`. They describe the
/// connection to the Korv server; jump hosts take theirs from the SSH
/// configuration, except the known_hosts file, the host key policy, the
/// agent, the passphrase and the connect timeout, which, when set here, hold
/// for every hop.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub(crate) host: String,
    pub(crate) port: Option<u16>,
    pub(crate) user: Option<String>,
    pub(crate) identities: Vec<PathBuf>,
    pub(crate) certificates: Vec<PathBuf>,
    pub(crate) passphrase: Option<String>,
    pub(crate) use_agent: Option<bool>,
    pub(crate) agent_socket: Option<PathBuf>,
    pub(crate) default_identities: bool,
    pub(crate) known_hosts: Option<PathBuf>,
    pub(crate) policy: Option<HostKeyPolicy>,
    pub(crate) channel: ChannelKind,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) max_frame: usize,
    pub(crate) reconnect: bool,
    pub(crate) ssh_config: Files,
    /// The jump host lists given, joined with commas (parsed when connecting).
    pub(crate) jumps: Option<String>,
}

impl ClientConfig {
    /// Settings for `host`: port 8022, the current user, the default
    /// identities (`~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`, whichever exist)
    /// and the ssh-agent, `~/.ssh/known_hosts` (and the system's
    /// `/etc/ssh/ssh_known_hosts`) checked strictly, a `direct-tcpip`
    /// channel, 10 s to connect, 30 s per request, 8 MiB frames; no SSH
    /// configuration file and no jump host.
    pub fn new(host: impl Into<String>) -> Self {
        ClientConfig {
            host: host.into(),
            port: None,
            user: None,
            identities: Vec::new(),
            certificates: Vec::new(),
            passphrase: None,
            use_agent: None,
            agent_socket: None,
            default_identities: true,
            known_hosts: None,
            policy: None,
            channel: ChannelKind::DirectTcpip,
            connect_timeout: None,
            request_timeout: Some(Duration::from_secs(30)),
            max_frame: korv_proto::DEFAULT_MAX_FRAME,
            reconnect: false,
            ssh_config: Files::None,
            jumps: None,
        }
    }

    /// The port (default: the SSH configuration's `Port`, else 8022).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// The SSH user name (default: the SSH configuration's `User`, else the
    /// current user).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Adds a private key file (repeatable), tried before the SSH
    /// configuration's `IdentityFile`s. Once any is given, the default
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

    /// Whether to try the ssh-agent (default: yes, at the SSH
    /// configuration's `IdentityAgent`, else `SSH_AUTH_SOCK`).
    pub fn use_agent(mut self, on: bool) -> Self {
        self.use_agent = Some(on);
        self
    }

    /// The ssh-agent socket (default: the SSH configuration's
    /// `IdentityAgent`, else `SSH_AUTH_SOCK`); also turns the agent on.
    pub fn agent_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.agent_socket = Some(path.into());
        self.use_agent = Some(true);
        self
    }

    /// Whether the default `~/.ssh` keys are tried when no identity file is
    /// given (default: yes).
    pub fn default_identities(mut self, on: bool) -> Self {
        self.default_identities = on;
        self
    }

    /// The known_hosts file (default: the SSH configuration's
    /// `UserKnownHostsFile`, else `~/.ssh/known_hosts`).
    pub fn known_hosts(mut self, path: impl Into<PathBuf>) -> Self {
        self.known_hosts = Some(path.into());
        self
    }

    /// The host key policy (default: from the SSH configuration's
    /// `StrictHostKeyChecking`, else [`HostKeyPolicy::Strict`]).
    pub fn host_key_policy(mut self, policy: HostKeyPolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// The channel kind (default [`ChannelKind::DirectTcpip`]).
    pub fn channel(mut self, kind: ChannelKind) -> Self {
        self.channel = kind;
        self
    }

    /// Time to connect, handshake and authenticate, for each SSH server on
    /// the way (default: the SSH configuration's `ConnectTimeout`, else 10 s).
    pub fn connect_timeout(mut self, limit: Duration) -> Self {
        self.connect_timeout = Some(limit);
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

    /// Reads this OpenSSH client configuration file alone, as `ssh -F FILE`
    /// does (a leading `~/` is the home directory); `"none"` reads none.
    /// The host given to [`new`](Self::new) may then be an alias, and the
    /// file's `HostName`, `Port`, `User`, `IdentityFile`, `ProxyJump` and the
    /// rest apply under the settings made on this builder. See
    /// [`ssh_config`](crate::ssh_config) for the rules and keywords.
    pub fn ssh_config(mut self, path: impl Into<PathBuf>) -> Self {
        let path: PathBuf = path.into();
        self.ssh_config = if path.as_os_str() == "none" {
            Files::None
        } else if let Ok(rest) = path.strip_prefix("~") {
            Files::Path(home().join(rest))
        } else {
            Files::Path(path)
        };
        self
    }

    /// Reads `~/.ssh/config` then `/etc/ssh/ssh_config`, as `ssh` does
    /// without `-F` (either may be missing).
    pub fn user_ssh_config(mut self) -> Self {
        self.ssh_config = Files::Default;
        self
    }

    /// Reaches the server through jump hosts, as `ssh -J`:
    /// `[user@]host[:port]`, several separated by commas, each an ordinary
    /// SSH server that forwards TCP; repeated calls append. Each hop is
    /// resolved through the SSH configuration in its turn (its own
    /// `HostName`, `User`, `IdentityFile`, known_hosts…, port 22 by
    /// default), and its host key is checked under its own name and port.
    /// `"none"` uses no jump host even where the configuration names
    /// `ProxyJump`. A malformed list fails [`KorvClient::connect`] with
    /// [`Error::Config`](crate::Error::Config).
    ///
    /// [`KorvClient::connect`]: crate::KorvClient::connect
    pub fn jump(mut self, hops: impl Into<String>) -> Self {
        let hops: String = hops.into();
        self.jumps = match self.jumps.take() {
            Some(before)
                if !hops.eq_ignore_ascii_case("none") && !before.eq_ignore_ascii_case("none") =>
            {
                Some(format!("{before},{hops}"))
            }
            _ => Some(hops),
        };
        self
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
}
