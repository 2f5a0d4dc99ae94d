//! The TCP side of the SSH server: the accept loop with its connection
//! limits, the version and authentication deadlines of each connection, and
//! the drain on shutdown.
//!
//! A semaphore bounds all connections (`max_connections`); [`Admission`]
//! decides which new ones get an unauthenticated place (per source, with
//! eviction when all are taken, and penalties). A connection refused by
//! either is closed before the SSH handshake. Every connection and stream
//! runs in one [`TaskTracker`], so that shutdown can wait for them.
//!
//! A connection from a trusted load balancer ([`TrustedProxies`]) must
//! start with a PROXY header, read within the version deadline; the client
//! address it carries is the connection's peer from then on, for admission,
//! `from=`, `source-address`, logs and [`ClientInfo::peer`]. From any other
//! source no header is read: one sent anyway is not an SSH version line,
//! and fails the handshake.
//!
//! [`ClientInfo::peer`]: crate::ClientInfo::peer

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use russh::keys::{Certificate, PrivateKey};
use russh::server::{Config, Handle};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use crate::admission::{Admission, Denied, Slot};
use crate::certificate::Trust;
use crate::connection::{Connection, russh_config};
use crate::error::ServerError;
use crate::proxy::{TrustedProxies, read_header};
use crate::state::Shared;

/// A bound TCP listener with everything its connections need.
pub(crate) struct Listener<S> {
    shared: Arc<Shared<S>>,
    tcp: TcpListener,
    config: Arc<Config>,
    trust: Arc<Trust>,
    admission: Arc<Admission>,
    proxies: TrustedProxies,
}

impl<S: Clone + Send + Sync + 'static> Listener<S> {
    pub(crate) fn new(
        shared: Arc<Shared<S>>,
        tcp: TcpListener,
        host_keys: Vec<PrivateKey>,
        host_certificates: Vec<Certificate>,
        trust: Trust,
        proxies: TrustedProxies,
    ) -> Self {
        let config = Arc::new(russh_config(&shared.limits, host_keys, host_certificates));
        let admission = Admission::new(&shared.limits);
        Listener {
            shared,
            tcp,
            config,
            trust: Arc::new(trust),
            admission,
            proxies,
        }
    }

    /// Admission's counters, shared with the running listener.
    pub(crate) fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// Accepts connections until `shared.shutdown` fires, then stops
    /// accepting and waits for the connections to drain.
    pub(crate) async fn run(self) -> Result<(), ServerError> {
        let Listener {
            shared,
            tcp,
            config,
            trust,
            admission,
            proxies,
        } = self;
        let connections = Arc::new(Semaphore::new(shared.limits.max_connections));
        let tracker = TaskTracker::new();
        let starter = Starter {
            shared: Arc::clone(&shared),
            config,
            trust,
            admission: Arc::clone(&admission),
            tracker: tracker.clone(),
        };
        loop {
            let accepted = tokio::select! {
                () = shared.shutdown.cancelled() => break,
                accepted = tcp.accept() => accepted,
            };
            let (socket, peer) = match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors and the like: wait a little
                    // rather than spin on the same error.
                    warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // A refused connection is closed here, before the SSH banner;
            // `admission` counts and logs (rate-limited) every refusal.
            let Ok(connection_permit) = Arc::clone(&connections).try_acquire_owned() else {
                admission.refuse(Denied::ConnectionLimit, peer.ip());
                continue;
            };
            if proxies.trusts(peer.ip()) {
                let starter = starter.clone();
                let read_then_start = async move {
                    let mut socket = socket;
                    if let Some(client) = starter.read_proxy_header(&mut socket, peer).await {
                        starter.start(socket, client, connection_permit);
                    }
                };
                tracker.spawn(read_then_start.in_current_span());
            } else {
                starter.start(socket, peer, connection_permit);
            }
        }
        drop(tcp);
        tracker.close();
        // Streams drain within the grace period; allow a little more for the
        // last answers to be written and channels closed.
        let deadline = shared.limits.shutdown_grace + Duration::from_secs(2);
        if tokio::time::timeout(deadline, tracker.wait())
            .await
            .is_err()
        {
            warn!("connections still open after the grace period: dropping them");
        }
        Ok(())
    }
}

/// What starting a connection needs, cloned into the tasks that read PROXY
/// headers.
struct Starter<S> {
    shared: Arc<Shared<S>>,
    config: Arc<Config>,
    trust: Arc<Trust>,
    admission: Arc<Admission>,
    tracker: TaskTracker,
}

impl<S> Clone for Starter<S> {
    fn clone(&self) -> Self {
        Starter {
            shared: Arc::clone(&self.shared),
            config: Arc::clone(&self.config),
            trust: Arc::clone(&self.trust),
            admission: Arc::clone(&self.admission),
            tracker: self.tracker.clone(),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Starter<S> {
    /// Admits a connection from `peer` (the client's address) and spawns
    /// its task, or closes it when admission refuses it.
    fn start(&self, socket: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        let Ok(slot) = self.admission.admit(peer.ip()) else {
            return;
        };
        let slot = Arc::new(slot);
        let connection = Connection::new(
            Arc::clone(&self.shared),
            Arc::clone(&self.trust),
            peer,
            Arc::clone(&slot),
            self.tracker.clone(),
        );
        self.tracker.spawn(
            serve_connection(Arc::clone(&self.config), socket, connection, slot, permit)
                .in_current_span(),
        );
    }

    /// Reads the PROXY header of a connection from the load balancer at
    /// `balancer` within the version deadline, and returns the client's
    /// address; `None` (the connection is to be closed) when there is no
    /// valid header by then or the server shuts down.
    async fn read_proxy_header(
        &self,
        socket: &mut TcpStream,
        balancer: SocketAddr,
    ) -> Option<SocketAddr> {
        let limits = &self.shared.limits;
        let within = limits.version_timeout.min(limits.auth_timeout);
        let header = tokio::select! {
            read = tokio::time::timeout(within, read_header(socket, balancer)) => read,
            () = self.shared.shutdown.cancelled() => return None,
        };
        match header {
            Ok(Ok(client)) => {
                debug!(%client, %balancer, "PROXY header read");
                Some(client)
            }
            Ok(Err(err)) => {
                info!(%balancer, %err, "closing a connection from a trusted proxy");
                None
            }
            Err(_) => {
                info!(%balancer, "no PROXY header before the deadline: closing");
                None
            }
        }
    }
}

/// Runs one SSH connection to its end: closes it at the version deadline if
/// it has not sent its SSH version by then, at the authentication deadline
/// if it has not authenticated, when admission gives its place to a
/// newcomer, and on shutdown once its streams have drained. `_permit` holds
/// its place under `max_connections`; dropping `slot` records how an
/// unauthenticated connection ended.
async fn serve_connection<S: Clone + Send + Sync + 'static>(
    config: Arc<Config>,
    socket: TcpStream,
    connection: Connection<S>,
    slot: Arc<Slot>,
    _permit: OwnedSemaphorePermit,
) {
    let peer = connection.peer();
    let status = connection.status();
    let shutdown = connection.shared().shutdown.clone();
    let limits = &connection.shared().limits;
    let accepted = Instant::now();
    let _open = connection
        .shared()
        .metrics
        .as_ref()
        .map(|m| m.connection_opened());
    let auth_deadline = deadline(accepted, limits.auth_timeout);
    let version_deadline = deadline(accepted, limits.version_timeout.min(limits.auth_timeout));
    let evicted = slot.evicted().clone();
    // However this function ends, the connection is gone: its streams stop
    // and their handlers are cancelled, as no answer can reach the client.
    let _streams_end = status.gone.clone().drop_guard();
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    let _ = socket.set_nodelay(true);
    let socket = ReadAhead::new(socket, Arc::clone(&status.unread));
    // `run_stream` sends the server's version line and returns once it has
    // read the client's: a client that has not sent it by the version
    // deadline is closed.
    let started = tokio::select! {
        started = russh::server::run_stream(config, socket, connection) => started,
        () = tokio::time::sleep_until(version_deadline) => {
            slot.deadline_passed();
            debug!(%peer, "no SSH version before the deadline: closing");
            return;
        }
        () = evicted.cancelled() => {
            debug!(%peer, "no SSH version yet, and its place was given to a newcomer: closing");
            return;
        }
        () = shutdown.cancelled() => {
            slot.spare();
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
    slot.version_received();
    // The authentication deadline counts from accept too.
    let auth_deadline = tokio::time::sleep_until(auth_deadline);
    tokio::pin!(auth_deadline);
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
                if !status.authenticated.load(Ordering::Acquire) {
                    slot.deadline_passed();
                    debug!(%peer, "authentication deadline passed: closing");
                    disconnect(&handle, "authentication timed out").await;
                    break;
                }
            }
            // Only a connection still unauthenticated holds a place to lose.
            () = evicted.cancelled() => {
                debug!(%peer, "not authenticated, and its place was given to a newcomer: closing");
                disconnect(&handle, "too many unauthenticated connections").await;
                break;
            }
            () = shutdown.cancelled(), if !draining => draining = true,
            _ = poll.tick(), if draining => {
                // Streams drain by themselves; close the connection once they
                // have. Session channels still waiting for their subsystem
                // request hold nothing to drain.
                if status.running.load(Ordering::Acquire) == 0 {
                    slot.spare();
                    disconnect(&handle, "server shutting down").await;
                    // russh's own task writes what the streams handed over
                    // (their last answers, EOF and close), then the
                    // disconnect: the connection counts as open until it
                    // has, or the last answers are lost when the server's
                    // runtime ends once `run` returns.
                    if tokio::time::timeout(CLOSE_WITHIN, &mut session).await.is_err() {
                        debug!(%peer, "the client did not close after the disconnect: dropping it");
                    }
                    break;
                }
            }
        }
    }
}

/// The server's end of a TCP connection, read ahead.
///
/// russh reads each SSH packet in two reads of the exact sizes it needs
/// (its first bytes, then the rest), and then a third that finds the socket
/// empty: three system calls for a small request. Small reads are served
/// from one read of up to [`READ_AHEAD`] bytes into a buffer on the stack;
/// what the caller did not take is kept until it is read, and the
/// connection holds no buffer once it is (an idle connection costs no
/// memory for it). A read shorter than asked also tells tokio that the
/// socket is drained, so the next read waits for readiness without a
/// system call. Reads of at least [`READ_AHEAD`] bytes go straight to the
/// socket.
pub(crate) struct ReadAhead {
    socket: TcpStream,
    /// Bytes read and not yet taken, from `taken` on.
    leftover: Vec<u8>,
    taken: usize,
    /// Set while `leftover` holds bytes: the client has sent more than
    /// russh has taken (the connection answers inline only when it has not).
    unread: Arc<AtomicBool>,
}

/// The most read ahead from the socket at once, in bytes.
const READ_AHEAD: usize = 16 * 1024;

impl ReadAhead {
    /// Reads `socket`, telling `unread` whether bytes read ahead wait.
    pub(crate) fn new(socket: TcpStream, unread: Arc<AtomicBool>) -> Self {
        ReadAhead {
            socket,
            leftover: Vec::new(),
            taken: 0,
            unread,
        }
    }
}

impl AsyncRead for ReadAhead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(rest) = this.leftover.get(this.taken..)
            && !rest.is_empty()
        {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(rest.get(..n).unwrap_or_default());
            this.taken += n;
            if this.taken == this.leftover.len() {
                this.leftover = Vec::new();
                this.taken = 0;
                this.unread.store(false, Ordering::Relaxed);
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= READ_AHEAD {
            return Pin::new(&mut this.socket).poll_read(cx, buf);
        }
        let mut ahead = [const { MaybeUninit::<u8>::uninit() }; READ_AHEAD];
        let mut ahead = ReadBuf::uninit(&mut ahead);
        ready!(Pin::new(&mut this.socket).poll_read(cx, &mut ahead))?;
        let read = ahead.filled();
        let n = read.len().min(buf.remaining());
        let (now, later) = read.split_at(n);
        buf.put_slice(now);
        if !later.is_empty() {
            this.leftover = later.to_vec();
            this.taken = 0;
            this.unread.store(true, Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ReadAhead {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_shutdown(cx)
    }
}

/// How long a connection told to disconnect on shutdown gets to write its
/// last packets and see the client close.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

/// `timeout` after `start`; a timeout too long to represent is a century.
fn deadline(start: Instant, timeout: Duration) -> Instant {
    start
        .checked_add(timeout)
        .unwrap_or_else(|| start + Duration::from_secs(100 * 365 * 24 * 3600))
}

async fn disconnect(handle: &Handle, why: &str) {
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, why.into(), "en".into())
        .await;
}

/// Binds `addr`; returns the listener and the address it got (with the port
/// chosen when `addr` asks for port 0).
pub(crate) async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let local_addr = tcp
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    Ok((tcp, local_addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, ReadAhead) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, ReadAhead::new(server, Arc::default()))
    }

    #[tokio::test]
    async fn small_reads_are_served_from_one_read_ahead_and_no_buffer_is_kept() {
        let (mut client, mut server) = pair().await;
        let packet: Vec<u8> = (0..100u8).collect();
        client.write_all(&packet).await.unwrap();
        // As russh reads a packet: its first bytes, then the rest.
        let mut first = [0u8; 4];
        server.read_exact(&mut first).await.unwrap();
        assert_eq!(first, [0, 1, 2, 3]);
        // The rest was read with the first bytes and waits in the buffer,
        // which the connection is told.
        assert_eq!(server.leftover.len() - server.taken, 96);
        assert!(server.unread.load(Ordering::Relaxed), "bytes wait");
        let mut rest = [0u8; 96];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest.as_slice(), packet.get(4..).unwrap());
        // Drained: the buffer is gone.
        assert_eq!(server.leftover.capacity(), 0);
        assert!(!server.unread.load(Ordering::Relaxed), "nothing waits");
        // Large reads go to the socket itself.
        let large: Vec<u8> = (0..READ_AHEAD * 2).map(|i| (i % 251) as u8).collect();
        client.write_all(&large).await.unwrap();
        let mut read = vec![0u8; large.len()];
        server.read_exact(&mut read).await.unwrap();
        assert_eq!(read, large);
        assert_eq!(server.leftover.capacity(), 0);
        // Writes pass through, and the client's EOF reads as EOF.
        server.write_all(b"answer").await.unwrap();
        let mut answer = [0u8; 6];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"answer");
        drop(client);
        let mut end = [0u8; 1];
        assert_eq!(server.read(&mut end).await.unwrap(), 0);
    }
}
