//! Korv server: JSON request handlers served over SSH.
//!
//! Register async handlers on a [`KorvServer`], one per verb and route, give
//! it a host key and authorized keys, and serve. Each SSH channel
//! (`direct-tcpip` or the `korv` subsystem) carries one Korv stream of
//! length-prefixed JSON frames; see the protocol in `docs/PROTOCOL.md`. A
//! `direct-tcpip` stream whose first byte is `0x1f` speaks korv 0.2.1's
//! format instead (gzip messages, the original Python Korv's), so its
//! clients are served unchanged by the same routes.
//!
//! ```no_run
//! use korv_server::routing::{any, get};
//! use korv_server::{KorvServer, Request};
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
//!     KorvServer::new()
//!         .host_key_file("host_ed25519")
//!         .authorized_keys_file(".ssh/authorized_keys")
//!         .route("/hello", get(hello))
//!         .route("/echo", any(echo))
//!         .serve() // until Ctrl-C or SIGTERM
//!         .await
//! }
//! ```
//!
//! Handlers are plain async functions ([`Handler`]) taking a [`Request`], and
//! the server's state if it has one ([`KorvServer::with_state`]); they return
//! anything [`IntoResponse`]. The `examples` directory has one scenario per
//! file: state, typed bodies and errors, hosting under OpenSSH's sshd,
//! graceful shutdown.
//!
//! # Layout
//!
//! Modules import only the ones listed above them:
//!
//! - `ipnet`: [`IpNet`], networks in CIDR notation.
//! - `config`: [`Limits`], every limit with its default.
//! - `error`: [`ServerError`].
//! - `reload`: a configuration file parsed again when it changes.
//! - `authorized`: the OpenSSH authorized_keys file and its options
//!   (`cert-authority` and `principals=` included).
//! - `certificate`: OpenSSH user certificates: trusted CA keys, revoked keys,
//!   and every check a certificate must pass; [`CertificateInfo`].
//! - `panic`: a handler's panic turned into an error with its location.
//! - `request`: what a handler receives: [`Request`], [`Params`],
//!   [`ClientInfo`], [`BodyError`].
//! - `response`: what it returns: [`IntoResponse`], [`Error`], and the `500`s.
//! - `authorize`: rules checked after routing, refused with `403`:
//!   [`Authorization`].
//! - `handler`: the [`Handler`] trait and its type-erased form.
//! - `watch`: watches (`WATCH`, protocol 1.1): [`WatchHandler`],
//!   [`Events`], [`IntoEvents`], and each watch's task, bounded queue and
//!   final frame.
//! - [`routing`]: [`MethodRouter`](routing::MethodRouter) and its
//!   constructors ([`get`](routing::get), [`any`](routing::any), ...).
//! - `router`: the routing table: patterns, matching, `404`/`405`.
//! - `admission`: who may hold an unauthenticated place: per-source
//!   limits, eviction when full, penalties ([`AdmissionStats`]).
//! - `metrics`: the counters and gauges (admission's read at each scrape),
//!   and the HTTP listener that serves them to Prometheus.
//! - `state`: what the listener, connections and streams share: routes,
//!   state, limits, the shutdown token, the metrics, the server's log span.
//! - `stream`: the per-stream loop, generic over `AsyncRead + AsyncWrite`,
//!   in version 1's format or korv 0.2.1's.
//! - `direct`: `direct-tcpip` channels: the format their first byte names,
//!   and writes that leave whole, one channel-data message each, for
//!   korv 0.2.1's clients.
//! - `connection`: one SSH connection (russh's `Handler`): authentication,
//!   the channels that carry streams, refusals.
//! - `proxy`: the PROXY protocol header a load balancer sends first, and
//!   the networks trusted to send it.
//! - `listener`: the accept loop, connection limits, the version and
//!   authentication deadlines, the drain on shutdown.
//! - `server`: [`KorvServer`], [`BoundServer`], [`StreamService`],
//!   [`ShutdownHandle`], [`shutdown_signal`].

mod admission;
mod authorize;
mod authorized;
mod certificate;
mod config;
mod connection;
mod direct;
mod error;
mod handler;
mod inline;
mod ipnet;
mod listener;
mod metrics;
mod panic;
mod proxy;
mod reload;
mod request;
mod response;
mod router;
pub mod routing;
mod server;
mod state;
mod stream;
mod watch;

pub use admission::{AdmissionMonitor, AdmissionStats};
pub use authorize::Authorization;
pub use certificate::CertificateInfo;
pub use config::Limits;
pub use error::ServerError;
pub use handler::{BoxFuture, Handler};
pub use ipnet::{IpNet, IpNetError};
pub use korv_proto::{Headers, RequestId, Response, StatusCode, Verb};
pub use request::{BodyError, ClientInfo, Params, Request};
pub use response::{Error, IntoResponse};
pub use routing::RouteError;
pub use server::{
    BoundServer, DEFAULT_PORT, KorvServer, ShutdownHandle, StreamService, shutdown_signal,
};
pub use watch::{Events, IntoEvents, WatchHandler};
