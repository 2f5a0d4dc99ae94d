//! The async client: one SSH connection, one multiplexed stream, shared by
//! every clone.

use std::sync::Arc;

use korv_proto::{Headers, Request, Response, Verb};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::ClientConfig;
use crate::error::Error;
use crate::{mux, ssh};

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
    /// Connects (through the jump hosts, if any), checks each host key,
    /// authenticates, and opens a stream.
    ///
    /// # Errors
    /// [`Error::Connect`], [`Error::ConnectTimeout`] or [`Error::Ssh`] when
    /// the server cannot be reached; [`Error::HostKeyUnknown`],
    /// [`Error::HostKeyChanged`], [`Error::HostCertificate`] or
    /// [`Error::KnownHosts`] from the host key check; [`Error::Identity`] or
    /// [`Error::AuthRefused`] from authentication; [`Error::ChannelRefused`]
    /// when the server refuses the Korv channel; [`Error::Config`] for a
    /// malformed SSH configuration or jump host list; any of these inside
    /// [`Error::JumpHost`] when a jump host fails, or [`Error::Forward`]
    /// there when it refuses to forward.
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
    /// connection is or becomes closed; [`Error::Body`] for a body that does
    /// not serialize; [`Error::Protocol`] for a request above the maximum
    /// frame size. With [`ClientConfig::reconnect`], the errors of
    /// [`connect`](Self::connect) too.
    pub async fn request<B: Serialize + ?Sized>(
        &self,
        verb: Verb,
        resource: &str,
        body: Option<&B>,
        headers: Headers,
    ) -> Result<Response, Error> {
        let mut request = Request::new(0, verb, resource);
        if let Some(body) = body {
            request = request.with_body(body).map_err(Error::Body)?;
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
