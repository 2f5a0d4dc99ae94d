//! [`Shared`]: what every stream of a server reads, behind one `Arc`.

use tokio_util::sync::CancellationToken;

use crate::config::Limits;
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
}
