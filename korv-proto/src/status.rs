//! Status codes: HTTP's numbers and meanings.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A response status code, 100 to 599, with HTTP semantics.
///
/// ```
/// use korv_proto::StatusCode;
/// assert_eq!(StatusCode::NOT_FOUND.as_u16(), 404);
/// assert_eq!(StatusCode::NOT_FOUND.reason(), "Not Found");
/// assert!(StatusCode::from_u16(600).is_none());
/// assert_eq!(StatusCode::CREATED.to_string(), "201 Created");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StatusCode(u16);

macro_rules! status_codes {
    ($( $(#[$doc:meta])* $name:ident = $code:literal, $reason:literal; )+) => {
        impl StatusCode {
            $( $(#[$doc])* pub const $name: StatusCode = StatusCode($code); )+

            /// The reason phrase, as HTTP names it; `"Unknown"` for a code
            /// without a registered name.
            pub fn reason(self) -> &'static str {
                match self.0 {
                    $( $code => $reason, )+
                    _ => "Unknown",
                }
            }
        }
    };
}

status_codes! {
    /// 200: success.
    OK = 200, "OK";
    /// 201: a resource was created.
    CREATED = 201, "Created";
    /// 202: accepted for later processing.
    ACCEPTED = 202, "Accepted";
    /// 204: success with nothing to say.
    NO_CONTENT = 204, "No Content";
    /// 301: moved permanently.
    MOVED_PERMANENTLY = 301, "Moved Permanently";
    /// 304: not modified.
    NOT_MODIFIED = 304, "Not Modified";
    /// 400: the request is malformed.
    BAD_REQUEST = 400, "Bad Request";
    /// 401: not authenticated.
    UNAUTHORIZED = 401, "Unauthorized";
    /// 403: authenticated, but not allowed.
    FORBIDDEN = 403, "Forbidden";
    /// 404: no route or resource matches.
    NOT_FOUND = 404, "Not Found";
    /// 405: a route matches the resource but not the verb.
    METHOD_NOT_ALLOWED = 405, "Method Not Allowed";
    /// 408: the request took too long to arrive.
    REQUEST_TIMEOUT = 408, "Request Timeout";
    /// 409: the request conflicts with the resource's state.
    CONFLICT = 409, "Conflict";
    /// 410: the resource is gone for good.
    GONE = 410, "Gone";
    /// 412: a precondition failed.
    PRECONDITION_FAILED = 412, "Precondition Failed";
    /// 413: the frame exceeds the maximum size.
    PAYLOAD_TOO_LARGE = 413, "Payload Too Large";
    /// 415: the body's type is not supported.
    UNSUPPORTED_MEDIA_TYPE = 415, "Unsupported Media Type";
    /// 422: well-formed, but semantically wrong.
    UNPROCESSABLE_ENTITY = 422, "Unprocessable Entity";
    /// 429: too many requests.
    TOO_MANY_REQUESTS = 429, "Too Many Requests";
    /// 500: the handler failed or panicked.
    INTERNAL_SERVER_ERROR = 500, "Internal Server Error";
    /// 501: not implemented.
    NOT_IMPLEMENTED = 501, "Not Implemented";
    /// 502: a bad answer from upstream.
    BAD_GATEWAY = 502, "Bad Gateway";
    /// 503: the server is shutting down or overloaded.
    SERVICE_UNAVAILABLE = 503, "Service Unavailable";
    /// 504: the handler did not finish within the request timeout.
    GATEWAY_TIMEOUT = 504, "Gateway Timeout";
}

impl StatusCode {
    /// A status code from its number; `None` outside 100..=599.
    pub const fn from_u16(code: u16) -> Option<StatusCode> {
        if code >= 100 && code <= 599 {
            Some(StatusCode(code))
        } else {
            None
        }
    }

    /// The number.
    pub const fn as_u16(self) -> u16 {
        self.0
    }

    /// 100..=199.
    pub const fn is_informational(self) -> bool {
        self.0 < 200
    }

    /// 200..=299.
    pub const fn is_success(self) -> bool {
        self.0 >= 200 && self.0 < 300
    }

    /// 300..=399.
    pub const fn is_redirection(self) -> bool {
        self.0 >= 300 && self.0 < 400
    }

    /// 400..=499.
    pub const fn is_client_error(self) -> bool {
        self.0 >= 400 && self.0 < 500
    }

    /// 500..=599.
    pub const fn is_server_error(self) -> bool {
        self.0 >= 500
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.reason())
    }
}

impl From<StatusCode> for u16 {
    fn from(code: StatusCode) -> u16 {
        code.0
    }
}

impl TryFrom<u16> for StatusCode {
    type Error = InvalidStatusCode;

    fn try_from(code: u16) -> Result<Self, Self::Error> {
        StatusCode::from_u16(code).ok_or(InvalidStatusCode(code))
    }
}

impl PartialEq<u16> for StatusCode {
    fn eq(&self, other: &u16) -> bool {
        self.0 == *other
    }
}

/// A number outside 100..=599 was given as a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("status code {0} is outside 100..=599")]
pub struct InvalidStatusCode(pub u16);

impl Serialize for StatusCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.0)
    }
}

impl<'de> Deserialize<'de> for StatusCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = u16::deserialize(deserializer)?;
        StatusCode::from_u16(code).ok_or_else(|| {
            serde::de::Error::custom(format_args!("status code {code} is outside 100..=599"))
        })
    }
}
