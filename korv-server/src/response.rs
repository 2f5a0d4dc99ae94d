//! What a handler returns: anything [`IntoResponse`], and the one place an
//! error becomes a response ([`Error`] keeps its code, a [`BodyError`] is a
//! `400`, anything else a `500` with a traceback).

use korv_proto::{Response, StatusCode};
use serde_json::Value;

use crate::request::BodyError;

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
/// - `(u16, Value)`, a code and a body; a code outside 100..=599 becomes a
///   `500`.
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
