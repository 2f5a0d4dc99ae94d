//! [`Shared`]: what every stream of a server reads, behind one `Arc`.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::metrics::Metrics;
use crate::router::Router;

/// The routes, the user's state and the settings, shared by the listener,
/// every connection and every stream.
pub(crate) struct Shared<S> {
    pub(crate) router: Router<S>,
    /// The user's state, cloned for each handler call.
    pub(crate) state: S,
    pub(crate) limits: Limits,
    /// Whether `500` answers carry a traceback.
    pub(crate) tracebacks: bool,
    /// Cancelled when the server shuts down: no new connections, streams or
    /// requests; in-flight ones get `limits.shutdown_grace`.
    pub(crate) shutdown: CancellationToken,
    /// The counters, when the server exports metrics.
    pub(crate) metrics: Option<Arc<Metrics>>,
    /// `server{name=…}` when the server has a name, else no span: the
    /// parent of its log events, including those of tasks russh spawns.
    pub(crate) span: tracing::Span,
}
