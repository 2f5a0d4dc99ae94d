//! Korv server: JSON request handlers served over SSH.
//!
//! Register async handlers for a verb and a route on a [`KorvServer`], give it a
//! host key and authorized keys, and serve. Each SSH channel (`direct-tcpip`
//! or the `korv` subsystem) carries one Korv stream of length-prefixed JSON
//! frames; see the protocol in `docs/PROTOCOL.md`.
//!
//! ```no_run
//! use korv_server::{KorvServer, Request, Verb};
//! use serde_json::{json, Value};
//!
//! async fn hello(_req: Request) -> (u16, Value) {
//!     (200, json!({"msg": "Hello World!"}))
//! }
//!
//! async fn echo(req: Request) -> (u16, Value) {
//!     (200, json!({"verb": req.verb().as_str(), "body": req.body_value()}))
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), korv_server::ServerError> {
//!     let mut server = KorvServer::new()
//!         .host_key_file("host_ed25519")
//!         .authorized_keys_file(".ssh/authorized_keys");
//!     server.add_callback(Verb::Get, "/hello", hello);
//!     server.add_callback(Verb::Store, "/echo", echo);
//!     server.serve().await // until Ctrl-C or SIGTERM
//! }
//! ```
//!
//! # Layout
//!
//! - `server`: [`KorvServer`] (routes and settings), [`StreamService`],
//!   [`ShutdownHandle`].
//! - `handler`: [`Request`], [`IntoResponse`], [`Handler`], [`Error`].
//! - `router`: patterns, matching, `404`/`405`.
//! - `stream`: the per-stream loop, generic over `AsyncRead + AsyncWrite`.
//! - `ssh`: the russh server: host keys, authentication, channels, limits.
//! - `authorized`: the OpenSSH authorized_keys file and its options.
//! - `config`: [`Limits`], every limit with its default.

mod authorized;
// Wired into authentication in a following commit.
#[allow(dead_code)]
mod certificate;
mod config;
mod handler;
mod panic;
mod reload;
mod router;
mod server;
mod ssh;
mod stream;

pub use certificate::CertificateInfo;
pub use config::Limits;
pub use handler::{BodyError, BoxFuture, ClientInfo, Error, Handler, IntoResponse, Request};
pub use korv_proto::{Headers, RequestId, Response, StatusCode, Verb};
pub use router::{Params, RouteError};
pub use server::{BoundServer, DEFAULT_PORT, KorvServer, ShutdownHandle, StreamService};

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
    /// No authorized keys were configured: nobody could log in.
    #[error("no authorized keys: add an authorized_keys file or keys in memory")]
    NoAuthorizedKeys,
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
