//! Responses.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Headers, RequestId, StatusCode};

/// A response: the request's id, a status code, a JSON body (`null` when
/// there is none) and optional headers.
///
/// Field order on the wire is `request_id`, `code`, `body`, `headers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The id of the request this answers; `None` (JSON `null`) when the
    /// request's id could not be read.
    pub request_id: Option<RequestId>,
    /// The status code.
    pub code: StatusCode,
    /// The body; `Value::Null` when there is none.
    #[serde(default)]
    pub body: Value,
    /// Headers; not sent when empty.
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
}

/// A payload received by a client is not a valid response.
#[derive(Debug, thiserror::Error)]
#[error("malformed response: {message}")]
pub struct ResponseError {
    /// What was wrong.
    pub message: String,
}

impl Response {
    /// A response with a body and no headers.
    pub fn new(request_id: impl Into<Option<RequestId>>, code: StatusCode, body: Value) -> Self {
        Response {
            request_id: request_id.into(),
            code,
            body,
            headers: Headers::new(),
        }
    }

    /// An error response whose body is `{"message": message}`, as the protocol
    /// asks of every response with a code of 400 or more.
    pub fn error(
        request_id: impl Into<Option<RequestId>>,
        code: StatusCode,
        message: impl Into<String>,
    ) -> Self {
        Response::new(request_id, code, json!({ "message": message.into() }))
    }

    /// The `413` for a frame above `max_frame` bytes (always `request_id` null).
    pub fn payload_too_large(len: u32, max_frame: usize) -> Self {
        Response::new(
            None,
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({
                "message": format!("frame of {len} bytes exceeds the maximum of {max_frame} bytes"),
                "max_frame_bytes": max_frame,
            }),
        )
    }

    /// The `400` for a zero-length frame (always `request_id` null).
    pub fn empty_frame() -> Self {
        Response::error(
            None,
            StatusCode::BAD_REQUEST,
            "empty frame: a request is a JSON object",
        )
    }

    /// The `500` "response too large" that replaces a response above the
    /// maximum frame.
    pub fn too_large(request_id: Option<RequestId>) -> Self {
        Response::error(
            request_id,
            StatusCode::INTERNAL_SERVER_ERROR,
            "response too large",
        )
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// The body's `message` member, when it has one (error responses do).
    pub fn message(&self) -> Option<&str> {
        self.body.get("message").and_then(Value::as_str)
    }

    /// The body deserialized into `T`.
    ///
    /// # Errors
    /// The body does not have `T`'s shape.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.body)
    }

    /// Parses a response frame's payload, as a client does.
    ///
    /// # Errors
    /// The payload is not UTF-8 JSON encoding a response object: `request_id`
    /// null, an integer or a string; `code` an integer from 100 to 599;
    /// `headers` absent or an object of strings.
    pub fn from_payload(payload: &[u8]) -> Result<Response, ResponseError> {
        serde_json::from_slice(payload).map_err(|err| ResponseError {
            message: err.to_string(),
        })
    }
}
