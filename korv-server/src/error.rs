//! [`ServerError`]: what can go wrong starting or running a server.

/// Errors of starting or running a server. Each names the file or address
/// at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// No host key was configured.
    #[error(
        "no host key: add one with host_key_file(PATH) (make it with `ssh-keygen -t ed25519 -N '' -f PATH`)"
    )]
    NoHostKey,
    /// No authorized keys and no trusted user CA were configured: nobody
    /// could log in.
    #[error(
        "no authorized keys: add an authorized_keys file, keys in memory, or trusted user CA keys"
    )]
    NoAuthorizedKeys,
    /// A host certificate cannot be read or parsed, is not a host
    /// certificate, or certifies none of the host keys.
    #[error("host certificate {path}: {reason}")]
    HostCertificate {
        /// The certificate file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A host key file cannot be read or parsed.
    #[error("host key {path}: {reason}")]
    HostKey {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The listen address cannot be bound (in use, not permitted, ...).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for a signal failed.
    #[error("cannot wait for shutdown signals: {0}")]
    Signal(#[source] std::io::Error),
}
