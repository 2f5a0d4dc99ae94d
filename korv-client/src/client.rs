//! The async client: one SSH connection, one multiplexed stream, shared by
//! every clone.

use std::sync::Arc;

use korv_proto::legacy::LEGACY_MAX_PACKET;
use korv_proto::{Headers, Request, Response, Verb};
use russh::client::Msg;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::ClientConfig;
use crate::error::Error;
use crate::mux::{Mux, Wire};
use crate::ssh;
use crate::watch::Watch;
use crate::whole::WholeWrites;

/// An async Korv client. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct KorvClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    mux: tokio::sync::RwLock<Mux>,
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
        let (session, channel) = ssh::connect(&config).await?;
        let mux = start(channel, &config).await;
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
        let wire = match config.legacy {
            true => Wire::Legacy {
                max_message: LEGACY_MAX_PACKET,
            },
            false => Wire::Version1,
        };
        let mux = Mux::start(io, config.max_frame, wire);
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

    /// `WATCH resource` (protocol 1.1), with an optional body (the watch
    /// handler's parameters): once the server confirms the watch, its
    /// events as a [`Watch`] stream. Watches and requests share the
    /// connection; dropping the [`Watch`] cancels it (`UNWATCH`).
    ///
    /// # Errors
    /// [`Error::WatchRefused`] when the server answers with an ordinary
    /// response instead (a `404`, a `429` above the stream's limit of
    /// watches, a `400` from a server without watches, ...); otherwise as
    /// [`request`](Self::request), the timeout applying to the confirmation.
    pub async fn watch<B: Serialize + ?Sized>(
        &self,
        resource: &str,
        body: Option<&B>,
    ) -> Result<Watch, Error> {
        let mut request = Request::new(0, Verb::Watch, resource);
        if let Some(body) = body {
            request = request.with_body(body).map_err(Error::Body)?;
        }
        let mut mux = self.inner.mux.read().await.clone();
        if mux.is_closed() && self.inner.config.reconnect {
            mux = self.reconnect().await?;
        }
        Watch::start(mux, request, self.inner.config.request_timeout).await
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

    async fn reconnect(&self) -> Result<Mux, Error> {
        let mut slot = self.inner.mux.write().await;
        if slot.is_closed() {
            let (session, channel) = ssh::connect(&self.inner.config).await?;
            *slot = start(channel, &self.inner.config).await;
            *self.inner._session.lock().await = Some(session);
        }
        Ok(slot.clone())
    }
}

/// The multiplexed stream over the Korv channel, in the configured format.
async fn start(channel: russh::Channel<Msg>, config: &ClientConfig) -> Mux {
    if !config.legacy {
        return Mux::start(channel.into_stream(), config.max_frame, Wire::Version1);
    }
    // Nothing has been written yet: the writable size is the server's
    // maximum packet size (or its initial window, when that is smaller).
    let max_packet = channel.writable_packet_size().await;
    let stream = WholeWrites::new(channel, max_packet);
    let wire = Wire::Legacy {
        max_message: max_packet,
    };
    Mux::start(stream, config.max_frame, wire)
}
