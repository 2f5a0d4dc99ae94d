//! The client's errors: [`Error`], with [`IdentityError`] and [`CloseReason`]
//! for the causes the client finds itself.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use korv_proto::ProtoError;

use crate::ssh_config::ConfigError;

/// Everything that can go wrong calling a Korv server.
///
/// Each message says what failed; where another error is the cause,
/// [`source`](std::error::Error::source) returns it rather than the message
/// repeating it. Print the whole chain to show both (anyhow's `{:#}` does).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The TCP connection could not be opened.
    #[error("cannot connect to {addr}")]
    Connect {
        /// The address tried, `host:port`.
        addr: String,
        /// Why the connection failed.
        #[source]
        source: io::Error,
    },
    /// Connecting, the SSH handshake and authentication together took longer
    /// than the connect timeout.
    #[error("cannot connect to {addr}: no answer within {limit:?}")]
    ConnectTimeout {
        /// The address tried, `host:port`.
        addr: String,
        /// The connect timeout.
        limit: Duration,
    },
    /// The SSH session failed: its handshake or the authentication exchange.
    #[error("cannot connect to {addr}: the SSH {doing} failed")]
    Ssh {
        /// The address connected to, `host:port`.
        addr: String,
        /// What was being done: `handshake` or `authentication`.
        doing: &'static str,
        /// russh's error (boxed: it is large).
        #[source]
        source: Box<russh::Error>,
    },
    /// The server's host key is not in known_hosts (strict policy).
    #[error(
        "host key for {host} is unknown (fingerprint {fingerprint}); to trust it, add it to {known_hosts} \
         (e.g. use the accept-new policy, `--accept-new` on the command line, once)"
    )]
    HostKeyUnknown {
        /// `host` or `[host]:port`.
        host: String,
        /// The server key's `SHA256:` fingerprint.
        fingerprint: String,
        /// The known_hosts file consulted.
        known_hosts: String,
    },
    /// The server's host key differs from the one in known_hosts.
    #[error(
        "WARNING: HOST KEY FOR {host} HAS CHANGED! Someone could be eavesdropping (man-in-the-middle), \
         or the host key was replaced. Offered: {offered}; the key on file at {known_hosts}:{line} differs. \
         Refusing to connect; remove that line if the change is legitimate."
    )]
    HostKeyChanged {
        /// `host` or `[host]:port`.
        host: String,
        /// The offered key's fingerprint.
        offered: String,
        /// The known_hosts file.
        known_hosts: String,
        /// The line of the recorded key.
        line: usize,
    },
    /// The server presented a host certificate that known_hosts does not
    /// let this client trust: its CA is not on an `@cert-authority` line for
    /// the host, or the certificate fails a check (type, window, principals).
    #[error("the host certificate of {host} is refused: {reason} (known_hosts {known_hosts})")]
    HostCertificate {
        /// `host` or `[host]:port`.
        host: String,
        /// What failed: the expiry date, the missing principal, or the
        /// untrusted CA's fingerprint.
        reason: String,
        /// The known_hosts file consulted.
        known_hosts: String,
    },
    /// The server's host key, or the CA of its host certificate, is marked
    /// `@revoked` in known_hosts.
    #[error(
        "the host {what} of {host} ({fingerprint}) is revoked at {known_hosts}:{line}; refusing to connect"
    )]
    HostKeyRevoked {
        /// `host` or `[host]:port`.
        host: String,
        /// `key` or `CA`.
        what: &'static str,
        /// The revoked key's fingerprint.
        fingerprint: String,
        /// The known_hosts file.
        known_hosts: String,
        /// The `@revoked` line.
        line: usize,
    },
    /// The known_hosts file could not be read, or the host key not added to it.
    #[error("cannot {doing} {}", .path.display())]
    KnownHosts {
        /// The known_hosts file.
        path: PathBuf,
        /// What was being done: `read known_hosts` or `add the host key to`.
        doing: &'static str,
        /// Why it failed (a line that does not parse is
        /// [`io::ErrorKind::InvalidData`]).
        #[source]
        source: io::Error,
    },
    /// An identity file cannot be used.
    #[error("identity {}", .path.display())]
    Identity {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        reason: IdentityError,
    },
    /// The server refused every key offered.
    #[error("authentication refused for user {user}; keys tried: {}", keys_tried(.tried))]
    AuthRefused {
        /// The user name.
        user: String,
        /// The keys tried (a file with its fingerprint, or `agent key` and
        /// its fingerprint); empty when there was no key to try.
        tried: Vec<String>,
    },
    /// The server refused the channel that carries the Korv stream.
    #[error("the server refused the {channel}")]
    ChannelRefused {
        /// `direct-tcpip channel`, `session channel` or `korv subsystem`.
        channel: &'static str,
        /// russh's error (boxed: it is large).
        #[source]
        source: Box<russh::Error>,
    },
    /// The SSH configuration is malformed or cannot be read, or the jump
    /// host list is malformed, or the jump hosts lead in a circle; the
    /// source names the file and line.
    #[error("the SSH configuration cannot be used")]
    Config(#[source] ConfigError),
    /// A jump host on the way failed: `source` says how (it could not be
    /// reached, its host key was refused, it refused authentication or to
    /// forward).
    #[error("jump host {host}")]
    JumpHost {
        /// The jump host, as named in `-J`, `ProxyJump` or
        /// [`ClientConfig::jump`](crate::ClientConfig::jump).
        host: String,
        /// What went wrong there.
        #[source]
        source: Box<Error>,
    },
    /// The `ProxyCommand` that should carry the connection cannot start.
    #[error("cannot start the ProxyCommand {command:?}")]
    ProxyCommand {
        /// The command, its tokens expanded.
        command: String,
        /// Why it did not start.
        #[source]
        source: io::Error,
    },
    /// A jump host refused to open a channel to the next host on the way
    /// (`AllowTcpForwarding no`, or it could not connect there).
    #[error("cannot open a channel to {to}")]
    Forward {
        /// The next host: its name and `host:port`.
        to: String,
        /// russh's error, with the jump host's reason (boxed: it is large).
        #[source]
        source: Box<russh::Error>,
    },
    /// A request body could not be serialized to JSON.
    #[error("the body does not serialize")]
    Body(#[source] serde_json::Error),
    /// A request could not be framed, e.g. it is above the maximum frame size.
    #[error("protocol error")]
    Protocol(#[source] ProtoError),
    /// The blocking client could not start its runtime.
    #[error("cannot start a runtime for the blocking client")]
    Runtime(#[source] io::Error),
    /// No answer within the request timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server answered a `WATCH` with an ordinary response instead of
    /// confirming the watch: a `400` from a server without watches, a `404`,
    /// a `429` above the stream's limit of watches, the handler's refusal.
    #[error("the server refused the watch: {} {}", .0.code, .0.message().unwrap_or(""))]
    WatchRefused(Box<korv_proto::Response>),
    /// The connection is closed; requests in flight when it closed fail with
    /// this error.
    #[error("connection closed")]
    Closed(#[source] CloseReason),
}

fn keys_tried(tried: &[String]) -> String {
    if tried.is_empty() {
        "none (no identity file and no ssh-agent)".to_owned()
    } else {
        tried.join(", ")
    }
}

/// Why an identity file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The key is encrypted and no passphrase was given.
    #[error("the key is encrypted: supply its passphrase")]
    Encrypted,
    /// The file cannot be read or is not a private key russh can load (a
    /// wrong passphrase lands here too).
    #[error(transparent)]
    Load(russh::keys::Error),
    /// The key's certificate (`…-cert.pub`, or the one named) cannot be
    /// used: it does not parse, certifies another key, is a host
    /// certificate, or is outside its validity window.
    #[error("certificate {}: {reason}", .path.display())]
    Certificate {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it, e.g. `it expired at 2030-02-01 00:00:00 UTC`.
        reason: String,
    },
}

/// Why a connection's stream closed. Cheap to clone: every request in flight
/// gets a copy.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CloseReason {
    /// The server ended the stream.
    #[error("the server closed the stream")]
    ServerClosed,
    /// Reading from the server failed.
    #[error("reading from the server failed")]
    Read(#[source] Arc<ProtoError>),
    /// Writing to the server failed.
    #[error("writing to the server failed")]
    Write(#[source] Arc<io::Error>),
    /// The server sent a frame above this client's maximum.
    #[error("the server sent a frame of {len} bytes, above this client's maximum of {max}")]
    FrameTooLarge {
        /// The length in the frame's header.
        len: u32,
        /// This client's maximum frame size.
        max: usize,
    },
    /// The server sent an empty frame, which the protocol does not allow.
    #[error("the server sent an empty frame")]
    EmptyFrame,
    /// korv 0.2.1's format: the server sent a gzip member holding more than
    /// this client's maximum frame.
    #[error("the server sent a gzip member holding more than this client's maximum of {max} bytes")]
    MemberTooLarge {
        /// This client's maximum frame size.
        max: usize,
    },
    /// korv 0.2.1's format: the server sent bytes that are not an intact
    /// gzip member, so the answers after them cannot be found.
    #[error("the server sent bytes that are not an intact gzip member: {0}")]
    CorruptMember(String),
    /// The connection's reader or writer task stopped without a reason: its
    /// runtime shut down, or a task panicked.
    #[error("the connection's tasks stopped")]
    Stopped,
}
