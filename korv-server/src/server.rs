//! `KorvServer`: routes, settings, and serving streams.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use korv_proto::Verb;
use russh::keys::{PrivateKey, PublicKey};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::ServerError;
use crate::authorized::AuthorizedKeys;
use crate::config::Limits;
use crate::handler::{ClientInfo, Handler, boxed};
use crate::router::{RouteError, Router};

/// The default port: 8022.
pub const DEFAULT_PORT: u16 = 8022;

/// What every stream of a server shares.
pub(crate) struct Shared<S> {
    pub(crate) router: Router<S>,
    pub(crate) state: S,
    pub(crate) limits: Limits,
    pub(crate) tracebacks: bool,
    pub(crate) shutdown: CancellationToken,
}

/// Where host keys come from.
#[derive(Debug, Clone)]
pub(crate) enum HostKeySource {
    File(PathBuf),
    Key(Box<PrivateKey>),
}

/// Where authorized keys come from.
#[derive(Debug, Clone)]
pub(crate) enum AuthorizedSource {
    /// An OpenSSH authorized_keys file, re-read when it changes.
    File(PathBuf),
    /// Keys given in memory, with their comments.
    Keys(Vec<(PublicKey, String)>),
}

/// A Korv server: routes plus settings. Build it, register handlers with
/// [`add_callback`](Self::add_callback) (or [`route`](Self::route)), then
/// [`serve`](Self::serve) it over SSH or [`serve_stream`](Self::serve_stream)
/// it over any byte stream.
///
/// ```no_run
/// use korv_server::{KorvServer, Request, Verb};
/// use serde_json::{json, Value};
///
/// async fn hello(_req: Request) -> (u16, Value) {
///     (200, json!({"msg": "Hello World!"}))
/// }
///
/// # async fn run() -> Result<(), korv_server::ServerError> {
/// let mut server = KorvServer::new()
///     .host_key_file("/etc/korv/host_ed25519")
///     .authorized_keys_file("/home/me/.ssh/authorized_keys");
/// server.add_callback(Verb::Get, "/hello", hello);
/// server.serve().await
/// # }
/// ```
pub struct KorvServer<S = ()> {
    pub(crate) router: Router<S>,
    pub(crate) state: S,
    pub(crate) limits: Limits,
    pub(crate) tracebacks: bool,
    pub(crate) listen: SocketAddr,
    pub(crate) host_keys: Vec<HostKeySource>,
    pub(crate) authorized: Option<AuthorizedSource>,
}

impl Default for KorvServer<()> {
    fn default() -> Self {
        KorvServer::with_state(())
    }
}

impl KorvServer<()> {
    /// A server without state, listening on `0.0.0.0:8022` once served.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S: Clone + Send + Sync + 'static> KorvServer<S> {
    /// A server whose handlers may take `state` (cloned for each request: use
    /// an `Arc` for anything large) as their second argument.
    pub fn with_state(state: S) -> Self {
        KorvServer {
            router: Router::default(),
            state,
            limits: Limits::default(),
            tracebacks: true,
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            host_keys: Vec::new(),
            authorized: None,
        }
    }

    /// Registers `handler` for `verb` on `pattern` (static segments and
    /// `{name}` captures, e.g. `/users/{id}`).
    ///
    /// # Panics
    /// When the pattern is malformed, or the same verb and pattern is already
    /// registered: a route is never silently replaced. Use
    /// [`try_add_callback`](Self::try_add_callback) to get the error instead.
    #[track_caller]
    pub fn add_callback<T, H: Handler<T, S>>(
        &mut self,
        verb: Verb,
        pattern: &str,
        handler: H,
    ) -> &mut Self {
        if let Err(err) = self.try_add_callback(verb, pattern, handler) {
            panic!("{err}");
        }
        self
    }

    /// Like [`add_callback`](Self::add_callback), returning the error.
    ///
    /// # Errors
    /// The pattern is malformed, or the verb and pattern are already registered.
    pub fn try_add_callback<T, H: Handler<T, S>>(
        &mut self,
        verb: Verb,
        pattern: &str,
        handler: H,
    ) -> Result<&mut Self, RouteError> {
        self.router.add(verb, pattern, boxed(handler))?;
        Ok(self)
    }

    /// [`add_callback`](Self::add_callback), builder style.
    ///
    /// # Panics
    /// As `add_callback`.
    #[track_caller]
    pub fn route<T, H: Handler<T, S>>(mut self, verb: Verb, pattern: &str, handler: H) -> Self {
        self.add_callback(verb, pattern, handler);
        self
    }

    /// The handler for requests that no route matches (instead of a `404`). It
    /// gets every verb.
    pub fn fallback<T, H: Handler<T, S>>(mut self, handler: H) -> Self {
        self.router.set_fallback(boxed(handler));
        self
    }

    /// Every limit at once.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Whether `500` responses carry a `traceback` (default: yes). Off, they
    /// carry only a message that reveals nothing.
    pub fn tracebacks(mut self, on: bool) -> Self {
        self.tracebacks = on;
        self
    }

    /// The address to listen on (default `0.0.0.0:8022`; port 0 picks a free one).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Adds a host key from an OpenSSH private key file (unencrypted, readable
    /// by its owner only). Repeat for several algorithms.
    pub fn host_key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.host_keys.push(HostKeySource::File(path.into()));
        self
    }

    /// Adds a host key held in memory.
    pub fn host_key(mut self, key: PrivateKey) -> Self {
        self.host_keys.push(HostKeySource::Key(Box::new(key)));
        self
    }

    /// Authorizes the keys of an OpenSSH authorized_keys file. The file is
    /// re-read when it changes, so a removed key is refused on the next
    /// connection.
    pub fn authorized_keys_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.authorized = Some(AuthorizedSource::File(path.into()));
        self
    }

    /// Authorizes a key held in memory, with a comment for handlers.
    pub fn authorized_key(mut self, key: PublicKey, comment: impl Into<String>) -> Self {
        match &mut self.authorized {
            Some(AuthorizedSource::Keys(keys)) => keys.push((key, comment.into())),
            _ => self.authorized = Some(AuthorizedSource::Keys(vec![(key, comment.into())])),
        }
        self
    }

    /// Loads the host keys, binds the listen address, and returns the bound
    /// server, whose address is known (useful with port 0).
    ///
    /// # Errors
    /// No host key or authorized keys; a host key file unreadable, malformed,
    /// encrypted or readable by others; the address cannot be bound.
    pub async fn bind(mut self) -> Result<BoundServer<S>, ServerError> {
        let keys = load_host_keys(&self.host_keys)?;
        let authorized = match self.authorized.take() {
            Some(AuthorizedSource::File(path)) => AuthorizedKeys::from_file(path),
            Some(AuthorizedSource::Keys(keys)) => AuthorizedKeys::from_keys(keys),
            None => return Err(ServerError::NoAuthorizedKeys),
        };
        let addr = self.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        let shared = self.into_shared();
        let config = Arc::new(crate::ssh::russh_config(&shared, keys));
        tracing::info!(addr = %local_addr, "korv server listening");
        Ok(BoundServer {
            shared,
            listener,
            local_addr,
            config,
            authorized: Arc::new(authorized),
        })
    }

    /// Binds and serves until Ctrl-C or SIGTERM, then shuts down gracefully.
    ///
    /// # Errors
    /// As [`bind`](Self::bind).
    pub async fn serve(self) -> Result<(), ServerError> {
        let bound = self.bind().await?;
        let handle = bound.shutdown_handle();
        tokio::spawn(async move {
            if wait_for_signal().await.is_ok() {
                tracing::info!("shutdown signal received");
                handle.shutdown();
            }
        });
        bound.run().await
    }

    pub(crate) fn into_shared(self) -> Arc<Shared<S>> {
        Arc::new(Shared {
            router: self.router,
            state: self.state,
            limits: self.limits,
            tracebacks: self.tracebacks,
            shutdown: CancellationToken::new(),
        })
    }

    /// The routes and settings as a [`StreamService`], which serves streams
    /// over any transport, without SSH.
    pub fn into_stream_service(self) -> StreamService<S> {
        StreamService {
            shared: self.into_shared(),
        }
    }

    /// Serves one Korv stream over `io` (stdin/stdout, a pipe, a socket) until
    /// its EOF: answers what is in flight, then shuts `io`'s writing side down.
    /// Handlers see [`ClientInfo::local`] with the `USER` of this process.
    ///
    /// # Errors
    /// Reading or writing `io` failed.
    pub async fn serve_stream<IO>(self, io: IO) -> io::Result<()>
    where
        IO: AsyncRead + AsyncWrite + Send,
    {
        let user = std::env::var("USER").unwrap_or_default();
        self.into_stream_service()
            .serve_as(io, ClientInfo::local(user))
            .await
    }
}

/// A server bound to its address, ready to [`run`](Self::run).
pub struct BoundServer<S> {
    shared: Arc<Shared<S>>,
    listener: TcpListener,
    local_addr: SocketAddr,
    config: Arc<russh::server::Config>,
    authorized: Arc<AuthorizedKeys>,
}

impl<S: Clone + Send + Sync + 'static> BoundServer<S> {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that starts a graceful shutdown.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            token: self.shared.shutdown.clone(),
        }
    }

    /// Serves connections until the shutdown handle fires, then stops
    /// accepting, drains the streams (in-flight requests get the grace period)
    /// and returns.
    ///
    /// # Errors
    /// None today; reserved for fatal listener errors.
    pub async fn run(self) -> Result<(), ServerError> {
        crate::ssh::accept_loop(self.shared, self.listener, self.config, self.authorized).await
    }
}

async fn wait_for_signal() -> Result<(), ServerError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(ServerError::Signal)?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.map_err(ServerError::Signal),
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map_err(ServerError::Signal)
    }
}

fn load_host_keys(sources: &[HostKeySource]) -> Result<Vec<PrivateKey>, ServerError> {
    if sources.is_empty() {
        return Err(ServerError::NoHostKey);
    }
    sources
        .iter()
        .map(|source| match source {
            HostKeySource::Key(key) => Ok((**key).clone()),
            HostKeySource::File(path) => load_host_key_file(path),
        })
        .collect()
}

fn load_host_key_file(path: &Path) -> Result<PrivateKey, ServerError> {
    let fail = |reason: String| ServerError::HostKey {
        path: path.to_owned(),
        reason,
    };
    let metadata = std::fs::metadata(path).map_err(|err| fail(format!("cannot read it: {err}")))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(fail(format!(
                "permissions {mode:04o} are too open: others can read this private key; run `chmod 600 {}`",
                path.display()
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = metadata;
    russh::keys::load_secret_key(path, None).map_err(|err| {
        fail(format!(
            "not a usable unencrypted OpenSSH private key: {err}"
        ))
    })
}

/// Serves Korv streams over any byte stream, sharing one set of routes. Cheap
/// to clone.
pub struct StreamService<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for StreamService<S> {
    fn clone(&self) -> Self {
        StreamService {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> StreamService<S> {
    /// Serves one stream with handlers seeing `client` as the caller.
    ///
    /// # Errors
    /// Reading or writing `io` failed.
    pub async fn serve_as<IO>(&self, io: IO, client: ClientInfo) -> io::Result<()>
    where
        IO: AsyncRead + AsyncWrite + Send,
    {
        crate::stream::run_stream(
            Arc::clone(&self.shared),
            io,
            Arc::new(client),
            self.shared.shutdown.clone(),
            crate::stream::Format::Version1,
        )
        .await
    }

    /// Serves one stream in korv 0.2.1's format (gzip members, no framing)
    /// with handlers seeing `client` as the caller: the same routes, limits
    /// and shutdown as [`serve_as`](Self::serve_as). Each answer is one write
    /// of at most `max_message` bytes (over SSH, the client's maximum packet
    /// size; korv 0.2.1's client announces 32,768); a larger one becomes a
    /// `500`. SSH servers choose this format by themselves, for a
    /// `direct-tcpip` channel whose first byte is `0x1f`.
    ///
    /// # Errors
    /// Reading or writing `io` failed.
    pub async fn serve_legacy_as<IO>(
        &self,
        io: IO,
        client: ClientInfo,
        max_message: usize,
    ) -> io::Result<()>
    where
        IO: AsyncRead + AsyncWrite + Send,
    {
        crate::stream::run_stream(
            Arc::clone(&self.shared),
            io,
            Arc::new(client),
            self.shared.shutdown.clone(),
            crate::stream::Format::Legacy { max_message },
        )
        .await
    }

    /// A handle that shuts every stream of this service down.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            token: self.shared.shutdown.clone(),
        }
    }
}

/// Starts a graceful shutdown: no new connections or streams, `503` for new
/// requests, in-flight requests finish within the grace period.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    pub(crate) token: CancellationToken,
}

impl ShutdownHandle {
    /// Starts the shutdown. Calling it again does nothing.
    pub fn shutdown(&self) {
        self.token.cancel();
    }

    /// Whether shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        self.token.is_cancelled()
    }
}
