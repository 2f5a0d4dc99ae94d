//! The TCP side of the SSH server: the accept loop with its connection
//! limits, the authentication deadline of each connection, and the drain on
//! shutdown.
//!
//! Two semaphores bound the connections: all of them (`max_connections`) and
//! those not yet authenticated (`max_unauthenticated`). Past either limit a
//! new TCP connection is closed before the SSH handshake. Every connection
//! and stream runs in one [`TaskTracker`], so that shutdown can wait for them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::server::{Config, Handle};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::authorized::AuthorizedKeys;
use crate::connection::{Connection, russh_config};
use crate::error::ServerError;
use crate::state::Shared;

/// A bound TCP listener with everything its connections need.
pub(crate) struct Listener<S> {
    shared: Arc<Shared<S>>,
    tcp: TcpListener,
    config: Arc<Config>,
    authorized: Arc<AuthorizedKeys>,
}

impl<S: Clone + Send + Sync + 'static> Listener<S> {
    pub(crate) fn new(
        shared: Arc<Shared<S>>,
        tcp: TcpListener,
        host_keys: Vec<PrivateKey>,
        authorized: AuthorizedKeys,
    ) -> Self {
        let config = Arc::new(russh_config(&shared.limits, host_keys));
        Listener {
            shared,
            tcp,
            config,
            authorized: Arc::new(authorized),
        }
    }

    /// Accepts connections until `shared.shutdown` fires, then stops
    /// accepting and waits for the connections to drain.
    pub(crate) async fn run(self) -> Result<(), ServerError> {
        let Listener {
            shared,
            tcp,
            config,
            authorized,
        } = self;
        let connections = Arc::new(Semaphore::new(shared.limits.max_connections));
        let unauthenticated = Arc::new(Semaphore::new(shared.limits.max_unauthenticated));
        let tracker = TaskTracker::new();
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
            let Ok(connection_permit) = Arc::clone(&connections).try_acquire_owned() else {
                warn!(%peer, "connection limit reached: closing");
                continue;
            };
            let Ok(unauth_permit) = Arc::clone(&unauthenticated).try_acquire_owned() else {
                warn!(%peer, "too many unauthenticated connections: closing");
                continue;
            };
            let connection = Connection::new(
                Arc::clone(&shared),
                Arc::clone(&authorized),
                peer,
                unauth_permit,
                tracker.clone(),
            );
            tracker.spawn(serve_connection(
                Arc::clone(&config),
                socket,
                connection,
                connection_permit,
            ));
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

/// Runs one SSH connection to its end: closes it at the authentication
/// deadline if it has not authenticated by then, and on shutdown once its
/// streams have drained. `_permit` holds its place under `max_connections`.
async fn serve_connection<S: Clone + Send + Sync + 'static>(
    config: Arc<Config>,
    socket: TcpStream,
    connection: Connection<S>,
    _permit: OwnedSemaphorePermit,
) {
    let peer = connection.peer();
    let status = connection.status();
    let shutdown = connection.shared().shutdown.clone();
    let auth_timeout = connection.shared().limits.auth_timeout;
    // However this function ends, the connection is gone: its streams stop
    // and their handlers are cancelled, as no answer can reach the client.
    let _streams_end = status.gone.clone().drop_guard();
    let mut poll = tokio::time::interval(Duration::from_millis(50));
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
                if !status.authenticated.load(Ordering::Acquire) {
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
                if status.running.load(Ordering::Acquire) == 0 {
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
