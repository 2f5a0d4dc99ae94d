//! Method routers: which handler serves each verb of a route.
//!
//! A route is a pattern and a [`MethodRouter`]. Make one with the function of
//! the first verb it serves and chain the others, the same names as methods:
//!
//! ```
//! use korv_server::routing::{any, get, on};
//! use korv_server::{KorvServer, Request, Verb};
//! use serde_json::{Value, json};
//!
//! async fn list(_req: Request) -> Value {
//!     json!([])
//! }
//! async fn create(req: Request) -> (u16, Value) {
//!     (201, req.body_value())
//! }
//! async fn remove(_req: Request) -> (u16, Value) {
//!     (204, Value::Null)
//! }
//! async fn echo(req: Request) -> Value {
//!     req.body_value()
//! }
//!
//! let server = KorvServer::new()
//!     .route("/notes", get(list).store(create))
//!     .route("/notes/{id}", on(Verb::Delete, remove))
//!     .route("/echo", any(echo));
//! ```
//!
//! A route may also serve watches (`WATCH`, protocol 1.1) with a
//! [`WatchHandler`], whose events stream back until the watch ends:
//! `route("/jobs/{id}/progress", get(status).watch(progress))`.
//!
//! A verb given twice for one pattern, in one method router or across
//! routes, is a conflict reported when the route is registered.

use std::fmt;
use std::sync::Arc;

use korv_proto::Verb;

use crate::handler::{BoxedHandler, Handler, boxed};
use crate::watch::{BoxedWatchHandler, WatchHandler, boxed_watch};

/// The handlers of one route, one per verb, to register with
/// [`KorvServer::route`](crate::KorvServer::route). Made by [`get`],
/// [`store`], [`update`], [`delete`], [`watch`], [`any`] or [`on`], and
/// extended with the methods of the same names.
#[must_use = "a method router serves nothing until it is registered with `route`"]
pub struct MethodRouter<S = ()> {
    /// In the order given; a verb may appear twice until registration
    /// refuses it.
    pub(crate) endpoints: Vec<(Verb, BoxedHandler<S>)>,
    /// The watch handlers given, in order (more than one is a conflict).
    pub(crate) watches: Vec<BoxedWatchHandler<S>>,
}

impl<S> MethodRouter<S> {
    fn empty() -> Self {
        MethodRouter {
            endpoints: Vec::new(),
            watches: Vec::new(),
        }
    }

    /// Also serves `verb` with `handler`. `WATCH` and `UNWATCH` are not
    /// served by request handlers (see [`MethodRouter::watch`]): registering
    /// them is refused with [`RouteError::WatchVerb`].
    pub fn on<T, H: Handler<T, S>>(mut self, verb: Verb, handler: H) -> Self {
        self.endpoints.push((verb, boxed(handler)));
        self
    }

    /// Also serves `GET` with `handler`.
    pub fn get<T, H: Handler<T, S>>(self, handler: H) -> Self {
        self.on(Verb::Get, handler)
    }

    /// Also serves `STORE` with `handler`.
    pub fn store<T, H: Handler<T, S>>(self, handler: H) -> Self {
        self.on(Verb::Store, handler)
    }

    /// Also serves `UPDATE` with `handler`.
    pub fn update<T, H: Handler<T, S>>(self, handler: H) -> Self {
        self.on(Verb::Update, handler)
    }

    /// Also serves `DELETE` with `handler`.
    pub fn delete<T, H: Handler<T, S>>(self, handler: H) -> Self {
        self.on(Verb::Delete, handler)
    }

    /// Also serves `WATCH` with `handler`, whose events are sent as the
    /// watch's frames until it ends.
    pub fn watch<T, H: WatchHandler<T, S>>(mut self, handler: H) -> Self {
        self.watches.push(boxed_watch(handler));
        self
    }
}

impl<S> fmt::Debug for MethodRouter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let watches = self.watches.iter().map(|_| &Verb::Watch);
        f.debug_list()
            .entries(self.endpoints.iter().map(|(verb, _)| verb).chain(watches))
            .finish()
    }
}

/// Serves `verb` with `handler`.
pub fn on<T, S, H: Handler<T, S>>(verb: Verb, handler: H) -> MethodRouter<S> {
    MethodRouter::empty().on(verb, handler)
}

/// Serves `WATCH` with `handler` (see [`MethodRouter::watch`]).
pub fn watch<T, S, H: WatchHandler<T, S>>(handler: H) -> MethodRouter<S> {
    MethodRouter::empty().watch(handler)
}

/// Serves `GET` with `handler`.
pub fn get<T, S, H: Handler<T, S>>(handler: H) -> MethodRouter<S> {
    on(Verb::Get, handler)
}

/// Serves `STORE` with `handler`.
pub fn store<T, S, H: Handler<T, S>>(handler: H) -> MethodRouter<S> {
    on(Verb::Store, handler)
}

/// Serves `UPDATE` with `handler`.
pub fn update<T, S, H: Handler<T, S>>(handler: H) -> MethodRouter<S> {
    on(Verb::Update, handler)
}

/// Serves `DELETE` with `handler`.
pub fn delete<T, S, H: Handler<T, S>>(handler: H) -> MethodRouter<S> {
    on(Verb::Delete, handler)
}

/// Serves the four request verbs with `handler`
/// ([`Request::verb`](crate::Request::verb) tells them apart); `WATCH` needs
/// a watch handler of its own.
pub fn any<T, S, H: Handler<T, S>>(handler: H) -> MethodRouter<S> {
    let handler = boxed(handler);
    MethodRouter {
        endpoints: Verb::ALL
            .into_iter()
            .map(|verb| (verb, Arc::clone(&handler)))
            .collect(),
        watches: Vec::new(),
    }
}

/// A route that cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The pattern is malformed.
    #[error("invalid route pattern {pattern:?}: {reason}")]
    InvalidPattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The same verb and pattern (captures compared by position, not name) was
    /// registered before, or is given twice in one method router.
    #[error("route conflict: {verb} {pattern:?} is already registered (as {existing:?})")]
    Conflict {
        /// The verb.
        verb: Verb,
        /// The pattern being registered.
        pattern: String,
        /// The equivalent pattern registered earlier.
        existing: String,
    },
    /// `WATCH` or `UNWATCH` given to a request handler: a route serves
    /// `WATCH` with a watch handler ([`MethodRouter::watch`]), and `UNWATCH`
    /// is the framework's.
    #[error("{verb} {pattern:?} needs a watch handler (`.watch(handler)`), not a request handler")]
    WatchVerb {
        /// The verb.
        verb: Verb,
        /// The pattern being registered.
        pattern: String,
    },
}
