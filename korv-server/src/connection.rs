//! One SSH connection, as russh's server [`Handler`](russh::server::Handler):
//! public-key authentication against authorized_keys, OpenSSH user
//! certificates against the trusted CAs, the two channel kinds
//! that carry Korv streams (`direct-tcpip`, and session channels asking for
//! the `korv` subsystem), and a refusal for everything else.

use std::collections::{HashMap, HashSet};

use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use russh::keys::{Algorithm, Certificate, HashAlg, PrivateKey, PublicKey};
use russh::server::{
    Auth, ChannelOpenHandle, Config, Handle, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info};

use crate::admission::Slot;
use crate::authorized::Refusal;
use crate::certificate::{Trust, check_user_certificate};
use crate::config::Limits;
use crate::direct::{Feed, LEGACY_FIRST_BYTE, SessionOutbound, WholeOutbound};
use crate::inline::{Adopted, Gate, Inline};
use crate::request::ClientInfo;
use crate::state::Shared;
use crate::stream::{Format, answer_at_once, serve};

/// The subsystem name of Korv protocol version 1.
const SUBSYSTEM: &str = "korv";

/// A channel admitted for a Korv stream, as the stream needs it.
enum StreamChannel {
    /// `direct-tcpip`: its writing half serves korv 0.2.1's format.
    DirectTcpip(Channel<Msg>),
    /// A session channel with the `korv` subsystem.
    Subsystem(ChannelId),
}

/// The two kinds of channel that carry a Korv stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChannelKind {
    /// `direct-tcpip`: version 1, or korv 0.2.1's format by its first byte.
    DirectTcpip,
    /// A session channel with the `korv` subsystem: version 1.
    Subsystem,
}

/// Serves a `direct-tcpip` channel in the format its first byte names:
/// `0x1f` for korv 0.2.1's, anything else for version 1.
async fn serve_direct_tcpip<S>(
    shared: Arc<Shared<S>>,
    channel: Channel<Msg>,
    mut feed: Feed,
    adopted: Adopted,
    handle: Handle,
    client: Arc<ClientInfo>,
    shutdown: CancellationToken,
) -> std::io::Result<()>
where
    S: Clone + Send + Sync + 'static,
{
    let id = channel.id();
    // The channel's data comes through `feed`: its own queue is closed, so
    // that russh never waits for a reader of it.
    let (_, writer) = channel.split();
    // The client's maximum packet size, as it announced it: nothing has been
    // written yet, so the writable size is that maximum (or the client's
    // initial window, when that is smaller).
    let max_packet = writer.writable_packet_size().await;
    let first = tokio::select! {
        first = feed.first() => first,
        () = shutdown.cancelled() => None,
    };
    let Some(first) = first else {
        // The channel ended (or the server shuts down) before any data:
        // nothing to answer. It closes as a version-1 stream does, EOF first.
        let _ = handle.eof(id).await;
        return Ok(());
    };
    if first == LEGACY_FIRST_BYTE {
        debug!(max_packet, "stream in korv 0.2.1's format");
        let outbound = WholeOutbound::new(writer, max_packet);
        let format = Format::Legacy {
            max_message: max_packet,
        };
        // Every answer of korv 0.2.1's format is written by the stream.
        serve(shared, feed, outbound, client, shutdown, format, None).await
    } else {
        let outbound = SessionOutbound::new(handle, id);
        serve_version1(shared, feed, adopted, outbound, client, shutdown).await
    }
}

/// Serves a channel's stream in version 1, whose idle moments the
/// connection answers in (see the `inline` module).
async fn serve_version1<S>(
    shared: Arc<Shared<S>>,
    feed: Feed,
    adopted: Adopted,
    outbound: SessionOutbound,
    client: Arc<ClientInfo>,
    shutdown: CancellationToken,
) -> std::io::Result<()>
where
    S: Clone + Send + Sync + 'static,
{
    let adopted = Some(adopted);
    serve(
        shared,
        feed,
        outbound,
        client,
        shutdown,
        Format::Version1,
        adopted,
    )
    .await
}

/// The ciphers the server offers: russh's defaults plus AES-128-GCM.
const SERVER_CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_128_GCM,
    russh::cipher::AES_256_GCM,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_128_CTR,
];

/// Smallest RSA key accepted from clients, in bits.
const MIN_RSA_BITS: usize = 2048;

/// Builds russh's configuration from our limits, host keys and host
/// certificates (offered alongside the keys they certify).
pub(crate) fn russh_config(
    limits: &Limits,
    keys: Vec<PrivateKey>,
    certificates: Vec<Certificate>,
) -> Config {
    let mut preferred = russh::Preferred::default();
    // Never SHA-1 `ssh-rsa` signatures.
    preferred.key = preferred
        .key
        .iter()
        .filter(|a| **a != Algorithm::Rsa { hash: None })
        .cloned()
        .collect::<Vec<_>>()
        .into();
    // russh's default list lacks AES-128-GCM, the fastest cipher on CPUs with
    // AES instructions and the first choice of OpenSSH's and Korv's clients
    // there. In SSH the client's order decides; the server only offers.
    preferred.cipher = SERVER_CIPHERS.into();
    Config {
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(250),
        // OpenSSH probes with `none` first: answer it at once.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys,
        certificates,
        max_auth_attempts: limits.max_auth_attempts,
        inactivity_timeout: limits.idle_timeout,
        keepalive_interval: limits.keepalive_interval,
        keepalive_max: limits.keepalive_max,
        nodelay: true,
        window_size: 8 * 1024 * 1024,
        // The largest russh accepts: fewer packets (and fewer MACs) per
        // large body than the default 32 KiB.
        maximum_packet_size: 65535,
        // Messages russh queues per channel, and from the streams' writers
        // to the session. Korv streams read their data from the handler
        // (`Feed`, as deep), not from russh's channel queues.
        channel_buffer_size: 128,
        preferred,
        ..Config::default()
    }
}

/// What the listener watches of a connection while russh drives it.
#[derive(Clone, Default)]
pub(crate) struct ConnectionStatus {
    /// Set once a key is accepted.
    pub(crate) authenticated: Arc<AtomicBool>,
    /// Streams running (spawned and not yet ended).
    pub(crate) running: Arc<AtomicUsize>,
    /// Cancelled when the connection has ended: its streams stop.
    pub(crate) gone: CancellationToken,
    /// Set while the socket holds bytes read ahead that russh has not
    /// taken yet: the client sent more than the packet being handled.
    pub(crate) unread: Arc<AtomicBool>,
}

/// One SSH connection's state.
pub(crate) struct Connection<S> {
    shared: Arc<Shared<S>>,
    trust: Arc<Trust>,
    peer: SocketAddr,
    client: Option<Arc<ClientInfo>>,
    /// Channels admitted: running streams plus pending session channels.
    streams: Arc<AtomicUsize>,
    /// Session channels waiting for their subsystem request. Data sent
    /// before it has no stream to go to, and is dropped.
    pending: HashSet<ChannelId>,
    /// Where each open channel's data goes, until its EOF or close.
    feeds: HashMap<ChannelId, Gate>,
    /// Its unauthenticated place, freed when it authenticates.
    slot: Option<Arc<Slot>>,
    status: ConnectionStatus,
    /// Where the streams run, so that shutdown waits for them.
    tracker: TaskTracker,
}

impl<S: Clone + Send + Sync + 'static> Connection<S> {
    /// A connection from `peer`, not yet authenticated.
    pub(crate) fn new(
        shared: Arc<Shared<S>>,
        trust: Arc<Trust>,
        peer: SocketAddr,
        slot: Arc<Slot>,
        tracker: TaskTracker,
    ) -> Self {
        Connection {
            shared,
            trust,
            peer,
            client: None,
            streams: Arc::new(AtomicUsize::new(0)),
            pending: HashSet::new(),
            feeds: HashMap::new(),
            slot: Some(slot),
            status: ConnectionStatus::default(),
            tracker,
        }
    }

    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub(crate) fn shared(&self) -> &Shared<S> {
        &self.shared
    }

    pub(crate) fn status(&self) -> ConnectionStatus {
        self.status.clone()
    }

    /// Refuses SHA-1 `ssh-rsa` signatures and RSA keys under [`MIN_RSA_BITS`].
    fn key_acceptable(&self, key: &PublicKey, algorithm: &Algorithm) -> bool {
        *algorithm != (Algorithm::Rsa { hash: None }) && rsa_size_acceptable(key)
    }

    /// Whether `key` is listed in the revoked keys (or the list cannot be
    /// read, which refuses every key), logging why.
    fn revoked(&self, user: &str, key: &PublicKey) -> bool {
        match self.trust.is_revoked(key.key_data()) {
            Ok(false) => false,
            Ok(true) => {
                info!(parent: &self.shared.span, peer = %self.peer, user, fingerprint = %key.fingerprint(HashAlg::Sha256), "refused: key listed in the revoked keys");
                true
            }
            Err(reason) => {
                info!(parent: &self.shared.span, peer = %self.peer, user, %reason, "refused: the revoked keys cannot be read");
                true
            }
        }
    }

    /// Records the authenticated client.
    fn authenticated(&mut self, client: ClientInfo) -> Auth {
        self.client = Some(Arc::new(client));
        self.status.authenticated.store(true, Ordering::Release);
        if let Some(metrics) = &self.shared.metrics {
            metrics.authentication(true);
        }
        if let Some(slot) = self.slot.take() {
            slot.authenticated();
        }
        Auth::Accept
    }

    /// Refuses a key, offered or signed with, counting the refusal.
    fn refuse(&self) -> Auth {
        if let Some(metrics) = &self.shared.metrics {
            metrics.authentication(false);
        }
        reject()
    }

    /// Counts a new stream; the refusal when the client has not
    /// authenticated, the server is shutting down, or the connection is at
    /// its limit.
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

    /// Serves a Korv stream on an admitted channel; a subsystem channel
    /// reports exit status 0 when it ends, which `ssh -s` exits with.
    fn spawn_stream(&self, channel: StreamChannel, feed: Feed, adopted: Adopted, handle: Handle) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let shared = Arc::clone(&self.shared);
        let streams = Arc::clone(&self.streams);
        let running = Arc::clone(&self.status.running);
        running.fetch_add(1, Ordering::AcqRel);
        let gone = self.status.gone.clone();
        let (id, kind) = match &channel {
            StreamChannel::DirectTcpip(channel) => (channel.id(), ChannelKind::DirectTcpip),
            StreamChannel::Subsystem(id) => (*id, ChannelKind::Subsystem),
        };
        // Whether the subsystem's exit status is sent: by the stream's
        // finish, before its EOF, or else below when it ends.
        let reported = Arc::new(AtomicBool::new(false));
        let stream_reported = Arc::clone(&reported);
        let task = async move {
            let shutdown = shared.shutdown.clone();
            let session = handle.clone();
            let serve = async move {
                match channel {
                    StreamChannel::Subsystem(id) => {
                        let outbound =
                            SessionOutbound::new(session, id).exit_status_first(stream_reported);
                        serve_version1(shared, feed, adopted, outbound, client, shutdown).await
                    }
                    StreamChannel::DirectTcpip(channel) => {
                        serve_direct_tcpip(
                            shared, channel, feed, adopted, session, client, shutdown,
                        )
                        .await
                    }
                }
            };
            tokio::select! {
                result = serve => {
                    if let Err(err) = result {
                        debug!(%err, "stream ended with an error");
                    }
                }
                // Dropping the stream cancels the handlers it runs.
                () = gone.cancelled() => debug!("connection lost: stream and requests in flight dropped"),
            }
            if kind == ChannelKind::Subsystem && !reported.load(Ordering::Acquire) {
                let _ = handle.exit_status_request(id, 0).await;
            }
            let _ = handle.close(id).await;
            streams.fetch_sub(1, Ordering::AcqRel);
            running.fetch_sub(1, Ordering::AcqRel);
        };
        self.tracker
            .spawn(task.instrument(self.shared.span.clone()));
    }
}

/// Writes a method of russh's server `Handler` that refuses what Korv does not
/// serve. Give the method's name and its own arguments, those between the
/// channel and the session:
///
/// - `request`: a request on a session channel, answered with channel failure;
/// - `open`: a channel kind, whose opening is rejected as administratively
///   prohibited.
macro_rules! refuse {
    (request $method:ident($($arg:ident: $ty:ty),*)) => {
        #[allow(clippy::too_many_arguments)]
        async fn $method(
            &mut self,
            channel: ChannelId,
            $($arg: $ty,)*
            session: &mut Session,
        ) -> Result<(), Self::Error> {
            session.channel_failure(channel)
        }
    };
    (open $method:ident($($arg:ident: $ty:ty),*)) => {
        #[allow(clippy::too_many_arguments)]
        async fn $method(
            &mut self,
            _channel: Channel<Msg>,
            $($arg: $ty,)*
            reply: ChannelOpenHandle,
            _session: &mut Session,
        ) -> Result<(), Self::Error> {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            Ok(())
        }
    };
}

impl<S: Clone + Send + Sync + 'static> russh::server::Handler for Connection<S> {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(reject())
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        info!(parent: &self.shared.span, peer = %self.peer, user, "password authentication refused: Korv takes public keys only");
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
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if !self.key_acceptable(offer.public_key, offer.algorithm)
            || self.revoked(user, offer.public_key)
        {
            return Ok(self.refuse());
        }
        let authorized = self.trust.authorized.as_ref().is_some_and(|authorized| {
            authorized
                .check(offer.public_key, Some(self.peer.ip()))
                .is_ok()
        });
        // russh shows a certificate offer here as the certificate's bare
        // key, with nothing to tell the two apart. When certificates can be
        // accepted, the offer is let through and the decision made once the
        // signature is verified: in `auth_publickey` for a plain key, in
        // `auth_openssh_certificate` for a certificate.
        Ok(if authorized || self.trust.accepts_certificates() {
            Auth::Accept
        } else {
            self.refuse()
        })
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
            info!(parent: &self.shared.span, peer = %self.peer, user, %fingerprint, "refused: SHA-1 signature or RSA key under 2048 bits");
            return Ok(self.refuse());
        }
        if self.revoked(user, key.public_key) {
            return Ok(self.refuse());
        }
        let checked = match &self.trust.authorized {
            Some(authorized) => authorized.check(key.public_key, Some(self.peer.ip())),
            None => Err(Refusal::Unknown),
        };
        match checked {
            Ok(entry) => {
                info!(parent: &self.shared.span, peer = %self.peer, user, fingerprint = %entry.fingerprint(), "authenticated");
                Ok(self.authenticated(ClientInfo::new(
                    user,
                    fingerprint,
                    key.public_key.algorithm().as_str(),
                    entry.comment(),
                    Some(self.peer),
                )))
            }
            Err(refusal) => {
                let why = match refusal {
                    Refusal::Unknown => "key not in authorized_keys",
                    Refusal::Expired => "key past its expiry-time",
                    Refusal::FromMismatch => "address not allowed by the key's from= option",
                };
                info!(parent: &self.shared.span, peer = %self.peer, user, %fingerprint, why, "refused");
                Ok(self.refuse())
            }
        }
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &Certificate,
    ) -> Result<Auth, Self::Error> {
        if self.client.is_some() {
            // Already authenticated: a second authentication cannot change the user.
            return Ok(reject());
        }
        let key = PublicKey::new(certificate.public_key().clone(), "");
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let key_id = certificate.key_id();
        let serial = certificate.serial();
        if !rsa_size_acceptable(&key) {
            info!(parent: &self.shared.span, peer = %self.peer, user, key_id, serial, %fingerprint, "certificate refused: RSA key under 2048 bits");
            return Ok(self.refuse());
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match check_user_certificate(certificate, user, Some(self.peer.ip()), now, &self.trust) {
            Ok(info) => {
                info!(parent: &self.shared.span, peer = %self.peer, user, key_id, serial, %fingerprint, ca = %info.ca_fingerprint, "authenticated with a certificate");
                Ok(self.authenticated(
                    ClientInfo::new(
                        user,
                        fingerprint,
                        key.algorithm().as_str(),
                        "",
                        Some(self.peer),
                    )
                    .with_certificate(info),
                ))
            }
            Err(refusal) => {
                info!(parent: &self.shared.span, peer = %self.peer, user, key_id, serial, %fingerprint, %refusal, "certificate refused");
                Ok(self.refuse())
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
                self.pending.insert(channel.id());
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
                let (gate, feed, adopted) = Inline::channel();
                self.feeds.insert(channel.id(), gate);
                reply.accept().await;
                self.spawn_stream(
                    StreamChannel::DirectTcpip(channel),
                    feed,
                    adopted,
                    session.handle(),
                );
            }
            Err(reason) => reply.reject(reason).await,
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.feeds.remove(&channel);
        if self.pending.remove(&channel) {
            self.streams.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The stream reads to the end of what it was sent, then ends.
        self.feeds.remove(&channel);
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(gate) = self.feeds.get_mut(&channel) else {
            return Ok(());
        };
        let mut rest = data;
        // While the stream is idle, the requests that finish at once are
        // answered here, in the session's task (see the `inline` module).
        // Not when the client has sent more behind this packet: russh
        // writes to the socket after each packet it handles, where the
        // stream gathers the answers to many into one write. Not when the
        // client has left answers unsent for want of window (they wait in
        // the stream's bounded queue instead), nor once the server shuts
        // down (the stream answers 503).
        if let Some(client) = &self.client
            && gate.is_open()
            && !self.status.unread.load(Ordering::Relaxed)
            && !self.shared.shutdown.is_cancelled()
            && !session.has_pending_data(channel)
        {
            let mut out = BytesMut::new();
            let taken = answer_at_once(&self.shared, client, gate, data, &mut out);
            if !out.is_empty() && session.data(channel, out.freeze()).is_err() {
                self.feeds.remove(&channel);
                return Ok(());
            }
            rest = data.get(taken..).unwrap_or_default();
        }
        if rest.is_empty() {
            return Ok(());
        }
        // Waits while the stream's queue is full: the connection reads no
        // more until the stream has read some (russh's channel queues hold
        // back the same way). A stream that has ended reads nothing more.
        if gate.feed(Bytes::copy_from_slice(rest)).await.is_err() {
            self.feeds.remove(&channel);
        }
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == SUBSYSTEM && self.pending.remove(&channel) {
            let (gate, feed, adopted) = Inline::channel();
            self.feeds.insert(channel, gate);
            session.channel_success(channel)?;
            self.spawn_stream(
                StreamChannel::Subsystem(channel),
                feed,
                adopted,
                session.handle(),
            );
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    // Commands, shells, terminals, X11 and environment variables: a Korv
    // stream needs none of them.
    refuse!(request exec_request(_command: &[u8]));
    refuse!(request shell_request());
    refuse!(request pty_request(
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)]
    ));
    refuse!(request x11_request(_single_connection: bool, _protocol: &str, _cookie: &str, _screen: u32));
    refuse!(request env_request(_name: &str, _value: &str));
    // Channels Korv never serves. Remote forwarding requests (`tcpip_forward`)
    // keep russh's answer, a refusal.
    refuse!(open channel_open_x11(_address: &str, _port: u32));
    refuse!(open channel_open_forwarded_tcpip(
        _host: &str,
        _port: u32,
        _originator: &str,
        _originator_port: u32
    ));
}

/// Refuses RSA keys under [`MIN_RSA_BITS`]; other keys pass.
fn rsa_size_acceptable(key: &PublicKey) -> bool {
    key.key_data()
        .rsa()
        .is_none_or(|rsa| rsa.n().as_positive_bytes().map_or(0, |n| n.len() * 8) >= MIN_RSA_BITS)
}

/// Authentication refused; public keys remain the one method to try.
fn reject() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
        partial_success: false,
    }
}
