//! What handlers receive ([`Request`]), what they return ([`IntoResponse`]),
//! and the [`Handler`] trait that plain async functions implement.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use korv_proto::{Headers, RequestId, Response, StatusCode, Verb};
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::router::Params;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Who is on the other end of a stream: the authenticated SSH user and key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientInfo {
    /// The SSH user name the client logged in as.
    pub user: String,
    /// The client key's fingerprint, `SHA256:…` as `ssh-keygen -l` prints it;
    /// empty when the transport did not authenticate a key (`--stdio`).
    pub fingerprint: String,
    /// The key's algorithm, e.g. `ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`.
    pub algorithm: String,
    /// The comment of the key's line in authorized_keys.
    pub comment: String,
    /// The peer's address, when the transport has one.
    pub peer: Option<SocketAddr>,
}

impl ClientInfo {
    /// A client known only by user name (for streams that SSH did not
    /// authenticate here, such as `--stdio` under OpenSSH's sshd).
    pub fn local(user: impl Into<String>) -> Self {
        ClientInfo {
            user: user.into(),
            ..ClientInfo::default()
        }
    }

    /// Describes a client authenticated with a public key.
    pub fn new(
        user: impl Into<String>,
        fingerprint: impl Into<String>,
        algorithm: impl Into<String>,
        comment: impl Into<String>,
        peer: Option<SocketAddr>,
    ) -> Self {
        ClientInfo {
            user: user.into(),
            fingerprint: fingerprint.into(),
            algorithm: algorithm.into(),
            comment: comment.into(),
            peer,
        }
    }
}

/// A request as a handler sees it: the validated wire request, the route's
/// captures and the authenticated client.
#[derive(Debug, Clone)]
pub struct Request {
    inner: korv_proto::Request,
    params: Params,
    client: Arc<ClientInfo>,
}

impl Request {
    pub(crate) fn new(inner: korv_proto::Request, params: Params, client: Arc<ClientInfo>) -> Self {
        Request {
            inner,
            params,
            client,
        }
    }

    /// The client's id for this request.
    pub fn id(&self) -> &RequestId {
        &self.inner.id
    }

    /// The verb.
    pub fn verb(&self) -> Verb {
        self.inner.verb
    }

    /// The resource, exactly as sent.
    pub fn resource(&self) -> &str {
        &self.inner.resource
    }

    /// A route capture: for the route `/users/{id}` and resource `/users/7`,
    /// `param("id")` is `Some("7")`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name)
    }

    /// All route captures.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The body as raw JSON text; `None` when absent or `null`.
    pub fn body_raw(&self) -> Option<&RawValue> {
        self.inner.body.as_deref()
    }

    /// The body as a JSON value; `Value::Null` when there is none.
    pub fn body_value(&self) -> Value {
        self.body_raw()
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
            .unwrap_or(Value::Null)
    }

    /// The body deserialized into `T`. A missing body deserializes from `null`
    /// (so `Option<T>` gives `None`).
    ///
    /// # Errors
    /// A [`BodyError`] naming the field at fault; returned from a handler with
    /// `?`, it becomes a `400` with that message.
    pub fn body<T: DeserializeOwned>(&self) -> Result<T, BodyError> {
        let text = self.body_raw().map_or("null", RawValue::get);
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let message = if path == "." {
                format!("invalid body: {inner}")
            } else {
                format!("invalid body: at `{path}`: {inner}")
            };
            BodyError { path, message }
        })
    }

    /// The request's headers.
    pub fn headers(&self) -> &Headers {
        &self.inner.headers
    }

    /// One header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.inner.headers.get(name).map(String::as_str)
    }

    /// The authenticated client.
    pub fn client(&self) -> &ClientInfo {
        &self.client
    }
}

/// The request body does not deserialize into the handler's type. Becomes a
/// `400` naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BodyError {
    /// The path of the field at fault (`.` for the body itself), e.g. `user.age`.
    pub path: String,
    /// The whole message.
    pub message: String,
}

/// An error with a status code, for handlers that fail on purpose:
/// `Err(Error::new(404, "no such note"))?`. It becomes a response with that
/// code and `{"message": …}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// The status code to answer with.
    pub code: StatusCode,
    /// The message for the body.
    pub message: String,
}

impl Error {
    /// An error answered with `code` (an invalid code, outside 100..=599,
    /// becomes 500) and `message`.
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        Error {
            code: StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: message.into(),
        }
    }
}

tokio::task_local! {
    /// Whether 500s carry tracebacks, set by the stream loop around each handler.
    pub(crate) static TRACEBACKS: bool;
}

/// The one place an error becomes a response: a [`BodyError`] is a `400`, an
/// [`Error`] its own code, anything else a `500` with its chain as traceback.
pub(crate) fn error_response(err: anyhow::Error) -> Response {
    if let Some(body) = err.downcast_ref::<BodyError>() {
        return Response::error(None, StatusCode::BAD_REQUEST, body.message.clone());
    }
    if let Some(error) = err.downcast_ref::<Error>() {
        return Response::error(None, error.code, error.message.clone());
    }
    let traceback = err.chain().map(|cause| cause.to_string()).collect();
    internal_error(format!("handler error: {err}"), traceback)
}

/// A `500` with the traceback when the server sends tracebacks, else with a
/// message that reveals nothing.
pub(crate) fn internal_error(message: String, traceback: Vec<String>) -> Response {
    if TRACEBACKS.try_with(|on| *on).unwrap_or(true) {
        Response::new(
            None,
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "message": message, "traceback": traceback }),
        )
    } else {
        Response::error(
            None,
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal server error",
        )
    }
}

/// Anything a handler may return. The `request_id` of the response is filled
/// in by the server.
///
/// - `(u16, Value)`, as the original Korv's `return 200, {...}`; a code
///   outside 100..=599 becomes a `500`.
/// - `(StatusCode, Value)`, a bare `Value` (200), a [`Response`].
/// - `Result<T, E>` for any `T: IntoResponse` and any error `E` that converts
///   into `anyhow::Error`: a [`BodyError`] becomes `400`, an [`Error`] its own
///   code, anything else a `500` whose `traceback` lists the error and each cause.
pub trait IntoResponse {
    /// Converts into a response.
    fn into_response(self) -> Response;
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

impl IntoResponse for Value {
    fn into_response(self) -> Response {
        Response::new(None, StatusCode::OK, self)
    }
}

impl IntoResponse for (StatusCode, Value) {
    fn into_response(self) -> Response {
        Response::new(None, self.0, self.1)
    }
}

impl IntoResponse for (u16, Value) {
    fn into_response(self) -> Response {
        match StatusCode::from_u16(self.0) {
            Some(code) => Response::new(None, code, self.1),
            None => internal_error(
                format!("handler returned status code {}, outside 100..=599", self.0),
                vec![format!("invalid status code {}", self.0)],
            ),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        Response::error(None, self.code, self.message)
    }
}

impl IntoResponse for BodyError {
    fn into_response(self) -> Response {
        Response::error(None, StatusCode::BAD_REQUEST, self.message)
    }
}

impl<T, E> IntoResponse for Result<T, E>
where
    T: IntoResponse,
    E: Into<anyhow::Error>,
{
    fn into_response(self) -> Response {
        match self {
            Ok(ok) => ok.into_response(),
            Err(err) => error_response(err.into()),
        }
    }
}

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

/// A type-erased handler.
pub(crate) type BoxedHandler<S> = Box<dyn Fn(Request, S) -> BoxFuture<Response> + Send + Sync>;

pub(crate) fn boxed<T, S, H: Handler<T, S>>(handler: H) -> BoxedHandler<S> {
    Box::new(move |request, state| handler.call(request, state))
}
