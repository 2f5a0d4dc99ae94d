//! The [`Handler`] trait, which plain async functions implement, and its
//! type-erased form the router stores.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use korv_proto::Response;

use crate::request::Request;
use crate::response::IntoResponse;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A handler: a plain async function taking a [`Request`], or a [`Request`]
/// and the server's state `S`, and returning anything [`IntoResponse`].
///
/// ```
/// use korv_server::{Request, StatusCode};
/// use serde_json::{json, Value};
///
/// async fn hello(_req: Request) -> (u16, Value) {
///     (200, json!({"msg": "Hello World!"}))
/// }
///
/// async fn count(_req: Request, hits: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Value {
///     json!(hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
/// }
/// ```
///
/// The type parameter `T` only tells the two shapes apart.
pub trait Handler<T, S>: Clone + Send + Sync + Sized + 'static {
    /// Runs the handler.
    fn call(&self, request: Request, state: S) -> BoxFuture<Response>;
}

impl<F, Fut, R, S> Handler<(Request,), S> for F
where
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoResponse,
{
    fn call(&self, request: Request, _state: S) -> BoxFuture<Response> {
        let future = self(request);
        Box::pin(async move { future.await.into_response() })
    }
}

impl<F, Fut, R, S> Handler<(Request, S), S> for F
where
    F: Fn(Request, S) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoResponse,
{
    fn call(&self, request: Request, state: S) -> BoxFuture<Response> {
        let future = self(request, state);
        Box::pin(async move { future.await.into_response() })
    }
}

/// A type-erased handler, shared by every verb and route that serves it.
pub(crate) type BoxedHandler<S> = Arc<dyn Fn(Request, S) -> BoxFuture<Response> + Send + Sync>;

/// Erases a handler's type.
pub(crate) fn boxed<T, S, H: Handler<T, S>>(handler: H) -> BoxedHandler<S> {
    Arc::new(move |request, state| handler.call(request, state))
}
