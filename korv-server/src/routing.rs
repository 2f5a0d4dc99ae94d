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
//! A verb given twice for one pattern, in one method router or across
//! routes, is a conflict reported when the route is registered.

use std::fmt;
use std::sync::Arc;

use korv_proto::Verb;

use crate::handler::{BoxedHandler, Handler, boxed};

/// The handlers of one route, one per verb, to register with
/// [`KorvServer::route`](crate::KorvServer::route). Made by [`get`],
/// [`store`], [`update`], [`delete`], [`any`] or [`on`], and extended with
/// the methods of the same names.
#[must_use = "a method router serves nothing until it is registered with `route`"]
pub struct MethodRouter<S = ()> {
    /// In the order given; a verb may appear twice until registration
    /// refuses it.
    pub(crate) endpoints: Vec<(Verb, BoxedHandler<S>)>,
}

impl<S> MethodRouter<S> {
    /// Also serves `verb` with `handler`.
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
}

impl<S> fmt::Debug for MethodRouter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.endpoints.iter().map(|(verb, _)| verb))
            .finish()
    }
}

/// Serves `verb` with `handler`.
pub fn on<T, S, H: Handler<T, S>>(verb: Verb, handler: H) -> MethodRouter<S> {
    MethodRouter {
        endpoints: Vec::new(),
    }
    .on(verb, handler)
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

/// Serves every verb with `handler` ([`Request::verb`](crate::Request::verb)
/// tells them apart).
pub fn any<T, S, H: Handler<T, S>>(handler: H) -> MethodRouter<S> {
    let handler = boxed(handler);
    MethodRouter {
        endpoints: Verb::ALL
            .into_iter()
            .map(|verb| (verb, Arc::clone(&handler)))
            .collect(),
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
}
