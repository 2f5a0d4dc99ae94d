//! The SSH layer on russh: host keys, public-key authentication against
//! authorized_keys, the two Korv channel kinds, connection limits, shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use russh::keys::{Algorithm, HashAlg, PrivateKey};
use russh::server::{
    Auth, ChannelOpenHandle, Config, Handle, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::ServerError;
use crate::authorized::{AuthorizedKeys, Refusal};
use crate::handler::ClientInfo;
use crate::server::Shared;

/// The subsystem name of Korv protocol version 1.
pub(crate) const SUBSYSTEM: &str = "korv";

/// Smallest RSA key accepted from clients, in bits.
const MIN_RSA_BITS: usize = 2048;

/// Builds russh's configuration from our limits and host keys.
pub(crate) fn russh_config<S>(shared: &Shared<S>, keys: Vec<PrivateKey>) -> Config {
    let limits = &shared.limits;
    let mut preferred = russh::Preferred::default();
    // Never SHA-1 `ssh-rsa` signatures.
    preferred.key = preferred
        .key
        .iter()
        .filter(|a| **a != Algorithm::Rsa { hash: None })
        .cloned()
        .collect::<Vec<_>>()
        .into();
    Config {
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: std::time::Duration::from_millis(250),
        // OpenSSH probes with `none` first: answer it at once.
        auth_rejection_time_initial: Some(std::time::Duration::ZERO),
        keys,
        max_auth_attempts: limits.max_auth_attempts,
        inactivity_timeout: limits.idle_timeout,
        keepalive_interval: limits.keepalive_interval,
        keepalive_max: limits.keepalive_max,
        nodelay: true,
        window_size: 8 * 1024 * 1024,
        // The largest russh accepts: fewer packets (and fewer MACs) per
        // large body than the default 32 KiB.
        maximum_packet_size: 65535,
        // Packets russh queues per channel before the connection waits for
        // the stream to read: with 64 KiB packets, at most 8 MiB (one
        // window) held per channel.
        channel_buffer_size: 128,
        preferred,
        ..Config::default()
    }
}

/// Accepts connections until `shared.shutdown` fires, then drains.
pub(crate) async fn accept_loop<S: Clone + Send + Sync + 'static>(
    shared: Arc<Shared<S>>,
    listener: TcpListener,
    config: Arc<Config>,
    authorized: Arc<AuthorizedKeys>,
) -> Result<(), ServerError> {
    let connections = Arc::new(Semaphore::new(shared.limits.max_connections));
    let unauthenticated = Arc::new(Semaphore::new(shared.limits.max_unauthenticated));
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                warn!(%err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(connection_permit) = Arc::clone(&connections).try_acquire_owned() else {
            warn!(%peer, "connection limit reached: closing");
            continue;
        };
        let Ok(unauth_permit) = Arc::clone(&unauthenticated).try_acquire_owned() else {
            warn!(%peer, "too many unauthenticated connections: closing");
            continue;
        };
        let connection = Connection {
            shared: Arc::clone(&shared),
            authorized: Arc::clone(&authorized),
            peer,
            client: None,
            streams: Arc::new(AtomicUsize::new(0)),
            running: Arc::new(AtomicUsize::new(0)),
            pending: HashMap::new(),
            unauth_permit: Some(unauth_permit),
            authenticated: Arc::new(AtomicBool::new(false)),
            tracker: tracker.clone(),
            gone: CancellationToken::new(),
        };
        tracker.spawn(serve_connection(
            Arc::clone(&config),
            socket,
            connection,
            connection_permit,
        ));
    }
    drop(listener);
    tracker.close();
    // Streams drain within the grace period; allow a little more for the
    // last answers to be written and channels closed.
    let deadline = shared.limits.shutdown_grace + std::time::Duration::from_secs(2);
    if tokio::time::timeout(deadline, tracker.wait())
        .await
        .is_err()
    {
        warn!("connections still open after the grace period: dropping them");
    }
    Ok(())
}

async fn serve_connection<S: Clone + Send + Sync + 'static>(
    config: Arc<Config>,
    socket: TcpStream,
    connection: Connection<S>,
    _permit: OwnedSemaphorePermit,
) {
    let peer = connection.peer;
    let authenticated = Arc::clone(&connection.authenticated);
    let shutdown = connection.shared.shutdown.clone();
    let auth_timeout = connection.shared.limits.auth_timeout;
    let running = Arc::clone(&connection.running);
    // However this function ends, the connection is gone: its streams stop
    // and their handlers are cancelled, as no answer can reach the client.
    let _streams_end = connection.gone.clone().drop_guard();
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(50));
    let _ = socket.set_nodelay(true);
    // One deadline from accept to authentication, covering the SSH version
    // exchange too: a client that sends nothing is closed when it passes.
    let auth_deadline = tokio::time::sleep(auth_timeout);
    tokio::pin!(auth_deadline);
    let started = tokio::select! {
        started = russh::server::run_stream(config, socket, connection) => started,
        () = &mut auth_deadline => {
            info!(%peer, "no SSH handshake before the authentication deadline: closing");
            return;
        }
    };
    let session = match started {
        Ok(session) => session,
        Err(err) => {
            debug!(%peer, %err, "SSH handshake failed");
            return;
        }
    };
    let handle = session.handle();
    tokio::pin!(session);
    let mut draining = false;
    let mut deadline_passed = false;
    loop {
        tokio::select! {
            result = &mut session => {
                if let Err(err) = result {
                    debug!(%peer, %err, "connection ended with an error");
                }
                break;
            }
            // `select!` checks a branch's condition only when it is entered,
            // so the flag is read again when the deadline fires: a connection
            // that authenticated meanwhile is kept.
            () = &mut auth_deadline, if !deadline_passed => {
                deadline_passed = true;
                if !authenticated.load(Ordering::Acquire) {
                    info!(%peer, "authentication deadline passed: closing");
                    disconnect(&handle, "authentication timed out").await;
                    break;
                }
            }
            () = shutdown.cancelled(), if !draining => draining = true,
            _ = poll.tick(), if draining => {
                // Streams drain by themselves; close the connection once they
                // have. Session channels still waiting for their subsystem
                // request hold nothing to drain.
                if running.load(Ordering::Acquire) == 0 {
                    disconnect(&handle, "server shutting down").await;
                    break;
                }
            }
        }
    }
}

async fn disconnect(handle: &Handle, why: &str) {
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, why.into(), "en".into())
        .await;
}

/// One SSH connection's state.
struct Connection<S> {
    shared: Arc<Shared<S>>,
    authorized: Arc<AuthorizedKeys>,
    peer: SocketAddr,
    client: Option<Arc<ClientInfo>>,
    /// Channels admitted: running streams plus pending session channels.
    streams: Arc<AtomicUsize>,
    /// Streams running (spawned and not yet ended).
    running: Arc<AtomicUsize>,
    /// Session channels waiting for their subsystem request.
    pending: HashMap<ChannelId, Channel<Msg>>,
    unauth_permit: Option<OwnedSemaphorePermit>,
    authenticated: Arc<AtomicBool>,
    tracker: TaskTracker,
    /// Cancelled when the connection has ended.
    gone: CancellationToken,
}

impl<S: Clone + Send + Sync + 'static> Connection<S> {
    fn key_acceptable(&self, key: &russh::keys::PublicKey, algorithm: &Algorithm) -> bool {
        if *algorithm == (Algorithm::Rsa { hash: None }) {
            return false;
        }
        if let Some(rsa) = key.key_data().rsa() {
            let bits = rsa.n().as_positive_bytes().map_or(0, |n| n.len() * 8);
            if bits < MIN_RSA_BITS {
                return false;
            }
        }
        true
    }

    /// Counts a new stream; `false` when the connection is at its limit or
    /// the server is shutting down.
    fn admit_stream(&self) -> Result<(), ChannelOpenFailure> {
        if self.client.is_none() || self.shared.shutdown.is_cancelled() {
            return Err(ChannelOpenFailure::AdministrativelyProhibited);
        }
        let max = self.shared.limits.max_streams_per_connection;
        let admitted = self
            .streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            Ok(())
        } else {
            Err(ChannelOpenFailure::ResourceShortage)
        }
    }

    fn spawn_stream(&self, channel: Channel<Msg>, handle: Handle, exit_status: bool) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let shared = Arc::clone(&self.shared);
        let streams = Arc::clone(&self.streams);
        let running = Arc::clone(&self.running);
        running.fetch_add(1, Ordering::AcqRel);
        let gone = self.gone.clone();
        let id = channel.id();
        let stream = channel.into_stream();
        self.tracker.spawn(async move {
            let shutdown = shared.shutdown.clone();
            tokio::select! {
                result = crate::stream::run_stream(shared, stream, client, shutdown, crate::stream::Format::Version1) => {
                    if let Err(err) = result {
                        debug!(%err, "stream ended with an error");
                    }
                }
                // Dropping the stream cancels the handlers it runs.
                () = gone.cancelled() => debug!("connection lost: stream and requests in flight dropped"),
            }
            if exit_status {
                let _ = handle.exit_status_request(id, 0).await;
            }
            let _ = handle.close(id).await;
            streams.fetch_sub(1, Ordering::AcqRel);
            running.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

impl<S: Clone + Send + Sync + 'static> russh::server::Handler for Connection<S> {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(reject())
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        info!(peer = %self.peer, user, "password authentication refused: Korv takes public keys only");
        Ok(reject())
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        _user: &str,
        _submethods: &str,
        _response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        Ok(reject())
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if !self.key_acceptable(offer.public_key, offer.algorithm) {
            return Ok(reject());
        }
        Ok(
            match self
                .authorized
                .check(offer.public_key, Some(self.peer.ip()))
            {
                Ok(_) => Auth::Accept,
                Err(_) => reject(),
            },
        )
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.client.is_some() {
            // Already authenticated: a second authentication cannot change the user.
            return Ok(reject());
        }
        let fingerprint = key.public_key.fingerprint(HashAlg::Sha256).to_string();
        if !self.key_acceptable(key.public_key, key.algorithm) {
            info!(peer = %self.peer, user, %fingerprint, "refused: SHA-1 signature or RSA key under 2048 bits");
            return Ok(reject());
        }
        match self.authorized.check(key.public_key, Some(self.peer.ip())) {
            Ok(entry) => {
                info!(peer = %self.peer, user, fingerprint = %entry.fingerprint(), "authenticated");
                self.client = Some(Arc::new(ClientInfo::new(
                    user,
                    fingerprint,
                    key.public_key.algorithm().as_str(),
                    entry.comment(),
                    Some(self.peer),
                )));
                self.authenticated.store(true, Ordering::Release);
                self.unauth_permit = None;
                Ok(Auth::Accept)
            }
            Err(refusal) => {
                let why = match refusal {
                    Refusal::Unknown => "key not in authorized_keys",
                    Refusal::Expired => "key past its expiry-time",
                    Refusal::FromMismatch => "address not allowed by the key's from= option",
                };
                info!(peer = %self.peer, user, %fingerprint, why, "refused");
                Ok(reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.admit_stream() {
            Ok(()) => {
                self.pending.insert(channel.id(), channel);
                reply.accept().await;
            }
            Err(reason) => reply.reject(reason).await,
        }
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        _host: &str,
        _port: u32,
        _originator: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.admit_stream() {
            Ok(()) => {
                reply.accept().await;
                self.spawn_stream(channel, session.handle(), false);
            }
            Err(reason) => reply.reject(reason).await,
        }
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _address: &str,
        _port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_forwarded_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host: &str,
        _port: u32,
        _originator: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.pending.remove(&channel).is_some() {
            self.streams.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match (name == SUBSYSTEM, self.pending.remove(&channel)) {
            (true, Some(korv)) => {
                session.channel_success(channel)?;
                self.spawn_stream(korv, session.handle(), true);
            }
            (_, pending) => {
                if let Some(pending) = pending {
                    self.pending.insert(channel, pending);
                }
                session.channel_failure(channel)?;
            }
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }
}

fn reject() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
        partial_success: false,
    }
}
