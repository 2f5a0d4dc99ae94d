//! Korv client: call a Korv API over SSH.
//!
//! One [`KorvClient`] holds one SSH connection and one multiplexed Korv stream:
//! many requests run at once, matched to their answers by id. It is cheap to
//! clone and share across tasks. [`blocking::KorvClient`] offers the same
//! methods to synchronous programs.
//!
//! ```no_run
//! use korv_client::{ClientConfig, KorvClient};
//! use serde_json::json;
//!
//! # async fn run() -> Result<(), korv_client::Error> {
//! let client = KorvClient::connect(
//!     ClientConfig::new("api.example.com")       // port 8022, user $USER
//!         .identity_file("/home/me/.ssh/id_ed25519")
//!         .known_hosts("/home/me/.ssh/known_hosts"), // strict by default
//! )
//! .await?;
//! let hello = client.get("/hello").await?;
//! assert_eq!(hello.code, 200);
//! let created = client.store("/notes/1", &json!({"text": "hi"})).await?;
//! println!("{} {}", created.code, created.body);
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - `config`: [`ClientConfig`], [`HostKeyPolicy`], [`ChannelKind`].
//! - `ssh`: connecting, host key checks against known_hosts, identities.
//! - `mux`: the multiplexed stream (ids, in-flight map, reader and writer tasks).
//! - [`blocking`]: the synchronous client.

pub mod blocking;
mod config;
mod mux;
// Used by the connector once jump hosts are wired in.
#[allow(dead_code)]
mod route;
mod ssh;
pub mod ssh_config;

use std::sync::Arc;
use std::time::Duration;

pub use config::{ChannelKind, ClientConfig, HostKeyPolicy};
use korv_proto::Request;
pub use korv_proto::{Headers, Response, StatusCode, Verb};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

/// Everything that can go wrong calling a Korv server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The TCP connection or SSH handshake failed.
    #[error("cannot connect to {addr}: {cause}")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why.
        cause: String,
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
    /// An identity file cannot be used.
    #[error("identity {path}: {reason}")]
    Identity {
        /// The key file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The server refused every key offered.
    #[error("authentication refused for user {user}; keys tried: {tried}")]
    AuthRefused {
        /// The user name.
        user: String,
        /// The keys tried (file or agent, with fingerprints).
        tried: String,
    },
    /// The server refused the channel or broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// No answer within the request timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection is closed (the reason says why); requests in flight
    /// when it closed fail with this error.
    #[error("connection closed: {0}")]
    Closed(String),
}

/// An async Korv client. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct KorvClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    mux: tokio::sync::RwLock<mux::Mux>,
    /// Keeps the SSH connection alive as long as the client.
    _session: tokio::sync::Mutex<Option<ssh::Session>>,
}

impl KorvClient {
    /// Connects, checks the host key, authenticates, and opens a stream.
    ///
    /// # Errors
    /// [`Error::Connect`], [`Error::HostKeyUnknown`], [`Error::HostKeyChanged`],
    /// [`Error::Identity`], [`Error::AuthRefused`] or [`Error::Protocol`].
    pub async fn connect(config: ClientConfig) -> Result<KorvClient, Error> {
        let (session, stream) = ssh::connect(&config).await?;
        let mux = mux::Mux::start(stream, config.max_frame);
        Ok(KorvClient {
            inner: Arc::new(Inner {
                config,
                mux: tokio::sync::RwLock::new(mux),
                _session: tokio::sync::Mutex::new(Some(session)),
            }),
        })
    }

    /// A client over an already open byte stream (a pipe, a socket, a
    /// channel of your own), without SSH.
    pub fn over_stream<IO>(io: IO, config: ClientConfig) -> KorvClient
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let mux = mux::Mux::start(io, config.max_frame);
        KorvClient {
            inner: Arc::new(Inner {
                config: ClientConfig {
                    reconnect: false,
                    ..config
                },
                mux: tokio::sync::RwLock::new(mux),
                _session: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// `GET resource`.
    ///
    /// # Errors
    /// See [`request`](Self::request).
    pub async fn get(&self, resource: &str) -> Result<Response, Error> {
        self.send(Request::new(0, Verb::Get, resource)).await
    }

    /// `STORE resource` with `body`.
    ///
    /// # Errors
    /// See [`request`](Self::request).
    pub async fn store<B: Serialize + ?Sized>(
        &self,
        resource: &str,
        body: &B,
    ) -> Result<Response, Error> {
        self.request(Verb::Store, resource, Some(body), Headers::new())
            .await
    }

    /// `UPDATE resource` with `body`.
    ///
    /// # Errors
    /// See [`request`](Self::request).
    pub async fn update<B: Serialize + ?Sized>(
        &self,
        resource: &str,
        body: &B,
    ) -> Result<Response, Error> {
        self.request(Verb::Update, resource, Some(body), Headers::new())
            .await
    }

    /// `DELETE resource`.
    ///
    /// # Errors
    /// See [`request`](Self::request).
    pub async fn delete(&self, resource: &str) -> Result<Response, Error> {
        self.send(Request::new(0, Verb::Delete, resource)).await
    }

    /// Any request, with an optional body and headers.
    ///
    /// # Errors
    /// [`Error::Timeout`] past the request timeout; [`Error::Closed`] when the
    /// connection is or becomes closed; [`Error::Protocol`] for a body that
    /// does not serialize or a frame above the maximum.
    pub async fn request<B: Serialize + ?Sized>(
        &self,
        verb: Verb,
        resource: &str,
        body: Option<&B>,
        headers: Headers,
    ) -> Result<Response, Error> {
        let mut request = Request::new(0, verb, resource);
        if let Some(body) = body {
            request = request
                .with_body(body)
                .map_err(|err| Error::Protocol(format!("the body does not serialize: {err}")))?;
        }
        request.headers = headers;
        self.send(request).await
    }

    async fn send(&self, request: Request) -> Result<Response, Error> {
        let timeout = self.inner.config.request_timeout;
        let mux = self.inner.mux.read().await.clone();
        if mux.is_closed() && self.inner.config.reconnect {
            let mux = self.reconnect().await?;
            return mux.call(request, timeout).await;
        }
        mux.call(request, timeout).await
    }

    async fn reconnect(&self) -> Result<mux::Mux, Error> {
        let mut slot = self.inner.mux.write().await;
        if slot.is_closed() {
            let (session, stream) = ssh::connect(&self.inner.config).await?;
            *slot = mux::Mux::start(stream, self.inner.config.max_frame);
            *self.inner._session.lock().await = Some(session);
        }
        Ok(slot.clone())
    }
}
