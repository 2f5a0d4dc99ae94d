//! [`KorvServer`] (routes and settings), and the three ways to serve it: over
//! SSH ([`BoundServer`]), over any byte stream ([`StreamService`]), until a
//! [`ShutdownHandle`] or a future says stop.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use korv_proto::Verb;
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::{Certificate, PrivateKey, PublicKey};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::admission::AdmissionMonitor;
use crate::authorize::{Authorization, Rule};
use crate::authorized::AuthorizedKeys;
use crate::certificate::{KeyList, Trust};
use crate::config::Limits;
use crate::error::ServerError;
use crate::handler::{Handler, boxed};
use crate::ipnet::IpNet;
use crate::listener::{self, Listener};
use crate::metrics::Metrics;
use crate::proxy::TrustedProxies;
use crate::request::ClientInfo;
use crate::router::Router;
use crate::routing::{MethodRouter, RouteError, on};
use crate::state::Shared;
use crate::stream::run_stream;

/// The default port: 8022.
pub const DEFAULT_PORT: u16 = 8022;

/// Where host keys come from.
#[derive(Debug, Clone)]
enum HostKeySource {
    File(PathBuf),
    Key(Box<PrivateKey>),
}

/// Where authorized keys, or trusted CA keys, come from.
#[derive(Debug, Clone)]
enum AuthorizedSource {
    /// A file, re-read when it changes.
    File(PathBuf),
    /// Keys given in memory, with their comments.
    Keys(Vec<(PublicKey, String)>),
}

/// A Korv server: routes plus settings. Build it, register handlers with
/// [`route`](Self::route), then [`serve`](Self::serve) it over SSH or
/// [`serve_stream`](Self::serve_stream) it over any byte stream.
///
/// ```no_run
/// use korv_server::routing::get;
/// use korv_server::{KorvServer, Request};
/// use serde_json::{json, Value};
///
/// async fn hello(_req: Request) -> (u16, Value) {
///     (200, json!({"msg": "Hello World!"}))
/// }
///
/// # async fn run() -> Result<(), korv_server::ServerError> {
/// KorvServer::new()
///     .host_key_file("/etc/korv/host_ed25519")
///     .authorized_keys_file("/home/me/.ssh/authorized_keys")
///     .route("/hello", get(hello))
///     .serve()
///     .await
/// # }
/// ```
pub struct KorvServer<S = ()> {
    router: Router<S>,
    state: S,
    limits: Limits,
    tracebacks: bool,
    listen: SocketAddr,
    host_keys: Vec<HostKeySource>,
    host_certificates: Vec<PathBuf>,
    authorized: Option<AuthorizedSource>,
    user_ca_keys: Option<AuthorizedSource>,
    revoked_keys: Option<PathBuf>,
    proxies: Vec<IpNet>,
    name: Option<String>,
    metrics: Option<SocketAddr>,
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
            host_certificates: Vec::new(),
            authorized: None,
            user_ca_keys: None,
            revoked_keys: None,
            proxies: Vec::new(),
            name: None,
            metrics: None,
        }
    }

    /// Serves `pattern` with the handlers of `methods`, one per verb.
    /// A pattern is static segments and `{name}` captures, e.g.
    /// `/users/{id}`; when several match a resource, the most specific wins
    /// (`/users/me` before `/users/{id}`). Registering the same pattern again
    /// adds verbs to it.
    ///
    /// ```
    /// use korv_server::routing::{any, get};
    /// use korv_server::{KorvServer, Request};
    /// use serde_json::{Value, json};
    ///
    /// async fn read(req: Request) -> Value {
    ///     json!({"id": req.param("id")})
    /// }
    /// async fn create(req: Request) -> (u16, Value) {
    ///     (201, req.body_value())
    /// }
    /// async fn echo(req: Request) -> Value {
    ///     req.body_value()
    /// }
    ///
    /// let server = KorvServer::new()
    ///     .route("/notes/{id}", get(read).store(create))
    ///     .route("/echo", any(echo));
    /// ```
    ///
    /// # Panics
    /// When the pattern is malformed, or one of its verbs is already served
    /// on the same pattern (captures compared by position): a route is never
    /// silently replaced. [`try_route`](Self::try_route) returns the error
    /// instead.
    #[track_caller]
    pub fn route(self, pattern: &str, methods: MethodRouter<S>) -> Self {
        match self.try_route(pattern, methods) {
            Ok(server) => server,
            Err(err) => panic!("{err}"),
        }
    }

    /// Like [`route`](Self::route), returning the error instead of panicking.
    /// Nothing of `methods` is registered when it fails.
    ///
    /// # Errors
    /// The pattern is malformed, or one of the verbs is already served on it.
    pub fn try_route(
        mut self,
        pattern: &str,
        methods: MethodRouter<S>,
    ) -> Result<Self, RouteError> {
        self.router.add(pattern, methods)?;
        Ok(self)
    }

    /// Serves `verb` on `pattern` with `handler`, through a `&mut` borrow:
    /// `route(pattern, on(verb, handler))` for code that registers routes
    /// one by one, at run time.
    ///
    /// # Panics
    /// As [`route`](Self::route).
    #[track_caller]
    pub fn add_callback<T, H: Handler<T, S>>(
        &mut self,
        verb: Verb,
        pattern: &str,
        handler: H,
    ) -> &mut Self {
        if let Err(err) = self.router.add(pattern, on(verb, handler)) {
            panic!("{err}");
        }
        self
    }

    /// Lets only clients whose OpenSSH certificate carries `principal` use
    /// the route registered last (all its verbs); others get `403` with a
    /// message. Checked after routing: an unknown resource is still `404`.
    ///
    /// ```
    /// use korv_server::routing::any;
    /// use korv_server::{KorvServer, Request};
    /// use serde_json::{Value, json};
    ///
    /// async fn admin(req: Request) -> Value {
    ///     json!({"path": req.param("rest")})
    /// }
    ///
    /// let server = KorvServer::new()
    ///     .route("/admin/{*rest}", any(admin))
    ///     .require_principal("admin");
    /// ```
    ///
    /// # Panics
    /// When no route is registered yet.
    #[track_caller]
    pub fn require_principal(mut self, principal: impl Into<String>) -> Self {
        if self
            .router
            .restrict_last(Rule::principal(principal))
            .is_none()
        {
            panic!(
                "require_principal applies to the route registered last: register a route first"
            );
        }
        self
    }

    /// Adds an authorization rule for every routed request: `rule` sees the
    /// client (its user, key and certificate), the verb and the resource,
    /// and answers `true` or `Ok(())` to allow, `false` or `Err(message)` to
    /// refuse with `403`. Rules run after routing (a `404` or `405` comes
    /// first), the route's own rules before these, the first refusal wins.
    ///
    /// ```
    /// use korv_server::routing::any;
    /// use korv_server::{ClientInfo, KorvServer, Request, Verb};
    /// use serde_json::Value;
    ///
    /// # async fn notes(req: Request) -> Value { req.body_value() }
    /// let server = KorvServer::new()
    ///     .route("/notes/{id}", any(notes))
    ///     .authorize(|client: &ClientInfo, verb: Verb, _resource: &str| {
    ///         match &client.certificate {
    ///             Some(cert) if verb != Verb::Get && !cert.has_principal("writer") => {
    ///                 Err(format!("{verb} needs the writer principal"))
    ///             }
    ///             _ => Ok(()),
    ///         }
    ///     });
    /// ```
    pub fn authorize<F, A>(mut self, rule: F) -> Self
    where
        F: Fn(&ClientInfo, Verb, &str) -> A + Send + Sync + 'static,
        A: Authorization,
    {
        self.router.restrict_all(Rule::new(rule));
        self
    }

    /// The handler for requests that no route matches (instead of a `404`). It
    /// gets every request verb (`WATCH` goes to [`KorvServer::watch_fallback`]).
    pub fn fallback<T, H: Handler<T, S>>(mut self, handler: H) -> Self {
        self.router.set_fallback(boxed(handler));
        self
    }

    /// The watch handler for a `WATCH` that no route matches (instead of a
    /// `404`).
    pub fn watch_fallback<T, H: crate::watch::WatchHandler<T, S>>(mut self, handler: H) -> Self {
        self.router
            .set_watch_fallback(crate::watch::boxed_watch(handler));
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

    /// Expects the PROXY protocol (version 1 or 2, as HAProxy's
    /// `send-proxy` and `send-proxy-v2` write it) on every connection from
    /// `networks`: the load balancers. Adds to the networks given before.
    ///
    /// From those networks the header is mandatory and must arrive within
    /// the version deadline ([`Limits::version_timeout`]); the client
    /// address it carries is the connection's address everywhere: per-source
    /// admission, `from=` in authorized_keys, a certificate's
    /// `source-address`, logs and [`ClientInfo::peer`]. A `LOCAL` header
    /// (the balancer's own health check) keeps the balancer's address. From
    /// any other address no header is read, and one sent anyway fails the
    /// SSH handshake: a client cannot choose its address.
    ///
    /// ```
    /// use korv_server::{IpNet, KorvServer};
    ///
    /// let balancer: IpNet = "10.0.0.5/32".parse().unwrap();
    /// let server = KorvServer::new().proxy_protocol_from([balancer]);
    /// ```
    pub fn proxy_protocol_from(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        self.proxies.extend(networks);
        self
    }

    /// Names this instance of the server: every log line of its listener,
    /// connections and requests carries `server{name=NAME}`, and every
    /// metric the label `instance_name="NAME"`, so that a fleet's logs and
    /// metrics tell its instances apart.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Serves metrics in the OpenMetrics text format (which Prometheus
    /// scrapes) at `GET /metrics` over plain HTTP on `addr`, a listener of
    /// its own: requests by verb and code (`korv_requests_total`), their
    /// latency (`korv_request_duration_seconds`), requests in flight, frames
    /// refused, open connections and streams, authentications by result,
    /// admission refusals by reason, and whether shutdown has started.
    /// Bind it to an address only the monitoring can reach: it has no
    /// authentication. [`BoundServer::metrics_addr`] tells the port chosen
    /// for port 0; [`BoundServer::render_metrics`] renders the same text
    /// for an HTTP server of your own.
    pub fn metrics(mut self, addr: SocketAddr) -> Self {
        self.metrics = Some(addr);
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

    /// Trusts the user CA keys of a file in OpenSSH's `TrustedUserCAKeys`
    /// format (one public key per line): a certificate signed by one of them
    /// is accepted when its principals include the SSH user name and it
    /// passes every check (type user, validity window, `source-address`, no
    /// other critical option, no SHA-1 `ssh-rsa` CA signature, not revoked).
    /// The file is re-read when it changes.
    ///
    /// CAs can also be trusted by `cert-authority` lines in authorized_keys,
    /// with their `principals="…"` option.
    pub fn trusted_user_ca_keys(mut self, path: impl Into<PathBuf>) -> Self {
        self.user_ca_keys = Some(AuthorizedSource::File(path.into()));
        self
    }

    /// Trusts a user CA key held in memory, as
    /// [`trusted_user_ca_keys`](Self::trusted_user_ca_keys) does a file's.
    pub fn trusted_user_ca_key(mut self, key: PublicKey) -> Self {
        match &mut self.user_ca_keys {
            Some(AuthorizedSource::Keys(keys)) => keys.push((key, String::new())),
            _ => self.user_ca_keys = Some(AuthorizedSource::Keys(vec![(key, String::new())])),
        }
        self
    }

    /// Refuses the keys listed in a file of OpenSSH public keys (the plain
    /// form of `RevokedKeys`), as user keys, as certificates' keys and as
    /// CAs. The file is re-read when it changes; while it cannot be read,
    /// every key is refused.
    pub fn revoked_keys(mut self, path: impl Into<PathBuf>) -> Self {
        self.revoked_keys = Some(path.into());
        self
    }

    /// Offers the OpenSSH host certificate in `path` (`ssh-keygen -s CA -h`)
    /// alongside the plain host key it certifies, which must be one of the
    /// host keys. Clients that trust the CA (`@cert-authority` in
    /// known_hosts) accept the server without knowing its key.
    pub fn host_certificate(mut self, path: impl Into<PathBuf>) -> Self {
        self.host_certificates.push(path.into());
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
    /// No host key; neither authorized keys nor trusted user CA keys; a host
    /// key file unreadable, malformed, encrypted or readable by others; a host
    /// certificate unreadable, not a host certificate, or for none of the
    /// host keys; the address cannot be bound.
    pub async fn bind(mut self) -> Result<BoundServer<S>, ServerError> {
        let host_keys = load_host_keys(&self.host_keys)?;
        let certificates = load_host_certificates(&self.host_certificates, &host_keys)?;
        let authorized = match self.authorized.take() {
            Some(AuthorizedSource::File(path)) => Some(AuthorizedKeys::from_file(path)),
            Some(AuthorizedSource::Keys(keys)) => Some(AuthorizedKeys::from_keys(keys)),
            None => None,
        };
        if authorized.is_none() && self.user_ca_keys.is_none() {
            return Err(ServerError::NoAuthorizedKeys);
        }
        let trust = Trust {
            user_cas: self.user_ca_keys.take().map(|source| match source {
                AuthorizedSource::File(path) => KeyList::from_file(path, "trusted user CA keys"),
                AuthorizedSource::Keys(keys) => KeyList::from_keys(
                    keys.into_iter()
                        .map(|(key, _)| key.key_data().clone())
                        .collect(),
                ),
            }),
            authorized: authorized.map(Arc::new),
            revoked: self
                .revoked_keys
                .take()
                .map(|path| KeyList::from_file(path, "revoked keys")),
        };
        let (tcp, local_addr) = listener::bind(self.listen).await?;
        let metrics_tcp = match self.metrics {
            Some(addr) => Some(listener::bind(addr).await?),
            None => None,
        };
        let proxies = TrustedProxies::new(std::mem::take(&mut self.proxies));
        let name = self.name.clone();
        let shared = self.into_shared(metrics_tcp.is_some().then(Arc::default));
        let shutdown = shared.shutdown.clone();
        let metrics = shared.metrics.clone();
        let span = shared.span.clone();
        let listener = Listener::new(shared, tcp, host_keys, certificates, trust, proxies);
        let metrics = match (metrics, metrics_tcp) {
            (Some(metrics), Some((tcp, addr))) => {
                let registry = metrics.registry(
                    name.as_deref(),
                    Arc::clone(listener.admission()),
                    shutdown.clone(),
                );
                Some(MetricsEndpoint {
                    tcp,
                    addr,
                    registry: Arc::new(registry),
                })
            }
            _ => None,
        };
        span.in_scope(|| {
            tracing::info!(addr = %local_addr, metrics = ?metrics.as_ref().map(|m| m.addr), "korv server listening");
        });
        Ok(BoundServer {
            listener,
            local_addr,
            shutdown,
            metrics,
            span,
        })
    }

    /// Binds and serves until `shutdown` completes, then shuts down
    /// gracefully: no new connections, in-flight requests finish within
    /// [`Limits::shutdown_grace`]. Returns once they have.
    ///
    /// ```no_run
    /// use korv_server::routing::get;
    /// use korv_server::{KorvServer, Request};
    /// use serde_json::json;
    ///
    /// # async fn run() -> Result<(), korv_server::ServerError> {
    /// KorvServer::new()
    ///     .host_key_file("host_ed25519")
    ///     .authorized_keys_file("authorized_keys")
    ///     .route("/hello", get(|_req: Request| async { json!("hello") }))
    ///     .serve_with_shutdown(async {
    ///         let _ = tokio::signal::ctrl_c().await;
    ///     })
    ///     .await
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`bind`](Self::bind).
    pub async fn serve_with_shutdown(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        self.bind().await?.run_until(shutdown).await
    }

    /// Binds and serves until Ctrl-C or SIGTERM ([`shutdown_signal`]), then
    /// shuts down gracefully.
    ///
    /// # Errors
    /// As [`bind`](Self::bind).
    pub async fn serve(self) -> Result<(), ServerError> {
        self.serve_with_shutdown(shutdown_signal()).await
    }

    fn into_shared(self, metrics: Option<Arc<Metrics>>) -> Arc<Shared<S>> {
        Arc::new(Shared {
            router: self.router,
            state: self.state,
            limits: self.limits,
            tracebacks: self.tracebacks,
            shutdown: CancellationToken::new(),
            metrics,
            span: match &self.name {
                Some(name) => tracing::info_span!("server", %name),
                None => tracing::Span::none(),
            },
        })
    }

    /// The routes and settings as a [`StreamService`], which serves streams
    /// over any transport, without SSH.
    pub fn into_stream_service(self) -> StreamService<S> {
        StreamService {
            shared: self.into_shared(None),
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
    listener: Listener<S>,
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    metrics: Option<MetricsEndpoint>,
    /// `server{name=…}` when the server has a name.
    span: tracing::Span,
}

/// The bound metrics listener and what it serves.
struct MetricsEndpoint {
    tcp: tokio::net::TcpListener,
    addr: SocketAddr,
    registry: Arc<prometheus_client::registry::Registry>,
}

impl<S: Clone + Send + Sync + 'static> BoundServer<S> {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that starts a graceful shutdown.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            token: self.shutdown.clone(),
        }
    }

    /// Reads the counters of connections admitted, refused, evicted and
    /// penalised before authentication ([`AdmissionStats`]), while the
    /// server runs.
    ///
    /// [`AdmissionStats`]: crate::AdmissionStats
    pub fn admission_monitor(&self) -> AdmissionMonitor {
        AdmissionMonitor::new(self.listener.admission())
    }

    /// The address metrics are served on, when [`KorvServer::metrics`] asked
    /// for them.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.addr)
    }

    /// The metrics' text, as `GET /metrics` answers it (OpenMetrics), when
    /// [`KorvServer::metrics`] asked for them.
    pub fn render_metrics(&self) -> Option<String> {
        self.metrics
            .as_ref()
            .map(|m| crate::metrics::render(&m.registry))
    }

    /// Serves connections until the shutdown handle fires, then stops
    /// accepting, drains the streams (in-flight requests get the grace period)
    /// and returns. Metrics are served until then too, shutdown state
    /// included.
    ///
    /// # Errors
    /// None today; reserved for fatal listener errors.
    pub async fn run(self) -> Result<(), ServerError> {
        let BoundServer {
            listener,
            metrics,
            span,
            ..
        } = self;
        let stop_metrics = CancellationToken::new();
        if let Some(endpoint) = metrics {
            tokio::spawn(
                crate::metrics::serve(endpoint.tcp, endpoint.registry, stop_metrics.clone())
                    .instrument(span.clone()),
            );
        }
        let _stop_metrics = stop_metrics.drop_guard();
        listener.run().instrument(span).await
    }

    /// Like [`run`](Self::run), and also shuts down when `shutdown`
    /// completes.
    ///
    /// # Errors
    /// As [`run`](Self::run).
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        let token = self.shutdown.clone();
        let span = self.span.clone();
        let run = self.run();
        tokio::pin!(run);
        tokio::select! {
            result = &mut run => return result,
            () = shutdown => {
                tracing::info!(parent: &span, "shutting down");
                token.cancel();
            }
        }
        run.await
    }
}

/// Completes on Ctrl-C or, on Unix, SIGTERM: the usual `shutdown` for
/// [`KorvServer::serve_with_shutdown`] and [`BoundServer::run_until`]. A
/// signal that cannot be watched is logged and left out; if neither can,
/// this never completes.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(%err, "cannot watch for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(err) => {
                tracing::warn!(%err, "cannot watch for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received");
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

/// Reads each host certificate and checks that it is a host certificate
/// for one of `keys`.
fn load_host_certificates(
    paths: &[PathBuf],
    keys: &[PrivateKey],
) -> Result<Vec<Certificate>, ServerError> {
    paths
        .iter()
        .map(|path| {
            let fail = |reason: String| ServerError::HostCertificate {
                path: path.clone(),
                reason,
            };
            let cert = Certificate::read_file(path)
                .map_err(|err| fail(format!("not an OpenSSH certificate: {err}")))?;
            if cert.cert_type() != CertType::Host {
                return Err(fail(
                    "it is a user certificate: sign the host key with `ssh-keygen -h`".into(),
                ));
            }
            if !keys
                .iter()
                .any(|key| key.public_key().key_data() == cert.public_key())
            {
                return Err(fail(
                    "it certifies none of the host keys: add the key it certifies with host_key_file".into(),
                ));
            }
            Ok(cert)
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

impl<S> StreamService<S> {
    /// The routes and settings the service serves with.
    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<Shared<S>> {
        &self.shared
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
        run_stream(
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
    token: CancellationToken,
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
