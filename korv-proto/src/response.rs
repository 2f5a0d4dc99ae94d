//! Responses.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Headers, RequestId, StatusCode};

/// A response: the request's id, a status code, a JSON body (`null` when
/// there is none) and optional headers; a frame of a watch (version 1.1)
/// also carries its `seq` and `more`.
///
/// Field order on the wire is `request_id`, `code`, `body`, `headers`, `seq`,
/// `more`.
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
    /// A watch's frame number: 0 for the confirmation, then 1, 2, … without
    /// gap. `None` (not sent) on an ordinary response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// On a watch's frame, whether more frames of the watch follow: `false`
    /// only on its final frame. `None` (not sent) on an ordinary response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub more: Option<bool>,
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
            seq: None,
            more: None,
        }
    }

    /// The same response as frame `seq` of a watch, with `more` telling
    /// whether the watch goes on after it.
    ///
    /// ```
    /// use korv_proto::{RequestId, Response, StatusCode};
    /// let confirmation = Response::new(RequestId::from(7), StatusCode::OK, serde_json::Value::Null)
    ///     .in_watch(0, true);
    /// assert_eq!(
    ///     serde_json::to_string(&confirmation).unwrap(),
    ///     r#"{"request_id":7,"code":200,"body":null,"seq":0,"more":true}"#
    /// );
    /// ```
    pub fn in_watch(mut self, seq: u64, more: bool) -> Self {
        self.seq = Some(seq);
        self.more = Some(more);
        self
    }

    /// Whether this is the last frame for its request: an ordinary response,
    /// or a watch's final frame (`more: false`).
    pub fn is_final(&self) -> bool {
        self.more != Some(true)
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
    /// `headers` absent or an object of strings; `seq`, when present, a
    /// non-negative integer and `more` a boolean.
    pub fn from_payload(payload: &[u8]) -> Result<Response, ResponseError> {
        serde_json::from_slice(payload).map_err(|err| ResponseError {
            message: err.to_string(),
        })
    }
}
