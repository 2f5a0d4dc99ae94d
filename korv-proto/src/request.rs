//! Requests, their ids and verbs, and the one validation step.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::str::FromStr;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::{Response, StatusCode};

/// Request and response headers: names to string values.
pub type Headers = BTreeMap<String, String>;

/// The longest `resource` the protocol allows, in UTF-8 bytes.
pub const MAX_RESOURCE_BYTES: usize = 4096;

/// A request's id: an integer from −2^63 to 2^64−1 or a string, chosen by the
/// client and echoed in the response's `request_id` with the same JSON type.
///
/// ```
/// use korv_proto::RequestId;
/// assert_eq!(RequestId::from(7).to_string(), "7");
/// assert_eq!(RequestId::from("a-1").to_string(), "\"a-1\"");
/// assert_eq!(RequestId::from(7_u64), RequestId::from(7_i64));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(IdRepr);

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum IdRepr {
    Int(i64),
    /// Only for values above `i64::MAX`, so that equal numbers compare equal.
    UInt(u64),
    Str(Box<str>),
    /// Any other JSON number (a fraction, an exponent, an integer out of
    /// range), kept as its exact JSON text. Only korv 0.2.1's format has
    /// such ids: its clients use their clock, a float, as the id.
    Number(Box<str>),
}

impl RequestId {
    /// The id from a JSON value, if it is a valid id: an integer without
    /// fraction or exponent in range, or a string.
    pub fn from_json(value: &Value) -> Option<RequestId> {
        match value {
            Value::Number(n) => n
                .as_i64()
                .map(RequestId::from)
                .or_else(|| n.as_u64().map(RequestId::from)),
            Value::String(s) => Some(RequestId::from(s.as_str())),
            _ => None,
        }
    }

    /// The id from the JSON text of a number, kept exactly as written when it
    /// is not an integer in range (korv 0.2.1's float ids, which must come
    /// back as the same text). `None` when `text` is not a JSON number.
    ///
    /// ```
    /// use korv_proto::RequestId;
    /// assert_eq!(RequestId::from_number_text("7"), Some(RequestId::from(7)));
    /// let id = RequestId::from_number_text("1764505207.1234567").unwrap();
    /// assert_eq!(id.to_string(), "1764505207.1234567");
    /// assert_eq!(RequestId::from_number_text("\"7\""), None);
    /// ```
    pub fn from_number_text(text: &str) -> Option<RequestId> {
        if text == "-0" {
            return Some(RequestId::from(0));
        }
        match serde_json::from_str::<Value>(text).ok()? {
            Value::Number(n) => Some(
                n.as_i64()
                    .map(RequestId::from)
                    .or_else(|| n.as_u64().map(RequestId::from))
                    .unwrap_or_else(|| RequestId(IdRepr::Number(text.into()))),
            ),
            _ => None,
        }
    }

    /// The id as a signed integer, when it is a number that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match self.0 {
            IdRepr::Int(n) => Some(n),
            _ => None,
        }
    }

    /// The id as an unsigned integer, when it is a non-negative number.
    pub fn as_u64(&self) -> Option<u64> {
        match self.0 {
            IdRepr::Int(n) => u64::try_from(n).ok(),
            IdRepr::UInt(n) => Some(n),
            IdRepr::Str(_) | IdRepr::Number(_) => None,
        }
    }

    /// The id as a string, when it is one.
    pub fn as_str(&self) -> Option<&str> {
        match &self.0 {
            IdRepr::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl From<i64> for RequestId {
    fn from(n: i64) -> Self {
        RequestId(IdRepr::Int(n))
    }
}

impl From<i32> for RequestId {
    fn from(n: i32) -> Self {
        RequestId(IdRepr::Int(n.into()))
    }
}

impl From<u64> for RequestId {
    fn from(n: u64) -> Self {
        match i64::try_from(n) {
            Ok(signed) => RequestId(IdRepr::Int(signed)),
            Err(_) => RequestId(IdRepr::UInt(n)),
        }
    }
}

impl From<&str> for RequestId {
    fn from(s: &str) -> Self {
        RequestId(IdRepr::Str(s.into()))
    }
}

impl From<String> for RequestId {
    fn from(s: String) -> Self {
        RequestId(IdRepr::Str(s.into_boxed_str()))
    }
}

/// Formats the id as JSON: `7` or `"abc"`.
impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            IdRepr::Int(n) => write!(f, "{n}"),
            IdRepr::UInt(n) => write!(f, "{n}"),
            IdRepr::Str(s) => write!(f, "{}", Value::from(&**s)),
            IdRepr::Number(text) => f.write_str(text),
        }
    }
}

impl Serialize for RequestId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            IdRepr::Int(n) => serializer.serialize_i64(*n),
            IdRepr::UInt(n) => serializer.serialize_u64(*n),
            IdRepr::Str(s) => serializer.serialize_str(s),
            // The text is a JSON number (checked when the id was made):
            // written as it is, not through an f64 that could change it.
            IdRepr::Number(text) => serde_json::from_str::<&RawValue>(text)
                .map_err(serde::ser::Error::custom)?
                .serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = RequestId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<RequestId, E> {
                Ok(n.into())
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<RequestId, E> {
                Ok(n.into())
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RequestId, E> {
                Ok(s.into())
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<RequestId, E> {
                Ok(s.into())
            }
        }
        deserializer.deserialize_any(IdVisitor)
    }
}

/// The verbs: the four of version 1, answered once each, and the two of
/// version 1.1 that open and cancel a watch (a stream of events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    /// `GET`: retrieve.
    Get,
    /// `STORE`: create. Needs a non-null body.
    Store,
    /// `UPDATE`: change. Needs a non-null body.
    Update,
    /// `DELETE`: remove.
    Delete,
    /// `WATCH` (version 1.1): subscribe to the resource's events. Answered by
    /// a confirmation frame, one frame per event and a final frame, all with
    /// the request's id.
    Watch,
    /// `UNWATCH` (version 1.1): cancel the watch whose id the body names,
    /// `{"request_id": …}`. Needs a non-null body; never routed.
    Unwatch,
}

impl Verb {
    /// The four request verbs, each answered by one response, in the
    /// protocol's order: the verbs a handler for "any verb" serves.
    pub const ALL: [Verb; 4] = [Verb::Get, Verb::Store, Verb::Update, Verb::Delete];

    /// The verbs a route can serve, in the order of a `405`'s `allow`:
    /// the four request verbs, then `WATCH`.
    pub const ROUTABLE: [Verb; 5] = [
        Verb::Get,
        Verb::Store,
        Verb::Update,
        Verb::Delete,
        Verb::Watch,
    ];

    /// The verb as it is written on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Store => "STORE",
            Verb::Update => "UPDATE",
            Verb::Delete => "DELETE",
            Verb::Watch => "WATCH",
            Verb::Unwatch => "UNWATCH",
        }
    }

    /// Whether a request with this verb must carry a non-null body.
    pub const fn requires_body(self) -> bool {
        matches!(self, Verb::Store | Verb::Update | Verb::Unwatch)
    }

    /// Whether this is a version 1.1 verb of watches (`WATCH`, `UNWATCH`).
    pub const fn is_watch(self) -> bool {
        matches!(self, Verb::Watch | Verb::Unwatch)
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not one of `GET`, `STORE`, `UPDATE`, `DELETE`, `WATCH`,
/// `UNWATCH` (upper case).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown verb {0:?}: expected GET, STORE, UPDATE, DELETE, WATCH or UNWATCH")]
pub struct UnknownVerb(pub String);

impl FromStr for Verb {
    type Err = UnknownVerb;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "GET" => Ok(Verb::Get),
            "STORE" => Ok(Verb::Store),
            "UPDATE" => Ok(Verb::Update),
            "DELETE" => Ok(Verb::Delete),
            "WATCH" => Ok(Verb::Watch),
            "UNWATCH" => Ok(Verb::Unwatch),
            other => Err(UnknownVerb(other.to_owned())),
        }
    }
}

impl Serialize for Verb {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Verb {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// A valid request, as [`Request::from_payload`] yields it.
///
/// The body is kept as raw JSON text: the server hands it to the handler, which
/// deserializes it once into its own type.
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    /// The client's id for this request.
    pub id: RequestId,
    /// The verb.
    pub verb: Verb,
    /// The resource path; starts with `/`, at most [`MAX_RESOURCE_BYTES`].
    pub resource: String,
    /// The body; `None` when absent or `null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Box<RawValue>>,
    /// The headers; empty when absent.
    #[serde(skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
}

impl PartialEq for Request {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.verb == other.verb
            && self.resource == other.resource
            && self.headers == other.headers
            && self.body.as_deref().map(RawValue::get) == other.body.as_deref().map(RawValue::get)
    }
}

/// Why a payload is not a valid request: the `400` the protocol demands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The request's id when it could be read, `None` (JSON `null`) otherwise.
    pub request_id: Option<RequestId>,
    /// A sentence naming the problem.
    pub message: String,
}

impl Rejection {
    fn new(request_id: Option<RequestId>, message: impl Into<String>) -> Self {
        Rejection {
            request_id,
            message: message.into(),
        }
    }

    /// The `400` response to send.
    pub fn into_response(self) -> Response {
        Response::error(self.request_id, StatusCode::BAD_REQUEST, self.message)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Request {
    /// A request with no body and no headers.
    pub fn new(id: impl Into<RequestId>, verb: Verb, resource: impl Into<String>) -> Self {
        Request {
            id: id.into(),
            verb,
            resource: resource.into(),
            body: None,
            headers: Headers::new(),
        }
    }

    /// Sets the body from any serializable value (`null` means no body).
    ///
    /// # Errors
    /// The value's `Serialize` implementation failed (for example a map with
    /// non-string keys).
    pub fn with_body<T: Serialize + ?Sized>(mut self, body: &T) -> Result<Self, serde_json::Error> {
        let raw = serde_json::value::to_raw_value(body)?;
        self.body = (raw.get() != "null").then_some(raw);
        Ok(self)
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Validates a frame's payload: a valid request, or the `400` to answer.
    ///
    /// This is every `400` case of the protocol in one place: the payload
    /// must be UTF-8 JSON (no byte-order mark) encoding one object without
    /// duplicate member names; `id` an integer or a string; `verb` one of the
    /// six; `resource` a string starting with `/` of at most 4096 bytes;
    /// `headers`, when present, an object of strings; STORE, UPDATE and
    /// UNWATCH carry a non-null `body`. The rejection carries the request's
    /// `id` whenever it could be read.
    ///
    /// ```
    /// use korv_proto::{Request, RequestId};
    /// let rejection = Request::from_payload(br#"{"id":"x","verb":"PUT","resource":"/a"}"#).unwrap_err();
    /// assert_eq!(rejection.request_id, Some(RequestId::from("x")));
    /// assert!(rejection.message.contains("PUT"));
    /// ```
    pub fn from_payload(payload: &[u8]) -> Result<Request, Rejection> {
        Self::parse(payload, IdRule::Version1)
    }

    /// Validates the content of a korv 0.2.1 message: the same rules as
    /// [`Request::from_payload`], except that `id` may be any JSON number
    /// (korv 0.2.1's clients send their clock, a float), kept as its exact
    /// text so that the answer's `request_id` is the same number, and that
    /// `WATCH` and `UNWATCH` are refused (the format has no watches).
    ///
    /// ```
    /// use korv_proto::Request;
    /// let request = Request::from_legacy_payload(
    ///     br#"{"id":1764505207.1234567,"verb":"GET","resource":"/hello","body":null}"#,
    /// ).unwrap();
    /// assert_eq!(request.id.to_string(), "1764505207.1234567");
    /// ```
    pub fn from_legacy_payload(payload: &[u8]) -> Result<Request, Rejection> {
        Self::parse(payload, IdRule::AnyNumber)
    }

    fn parse(payload: &[u8], ids: IdRule) -> Result<Request, Rejection> {
        Self::parse_with(payload, ids, Path::Common)
    }

    fn parse_with(payload: &[u8], ids: IdRule, path: Path) -> Result<Request, Rejection> {
        if payload.is_empty() {
            return Err(Rejection::new(
                None,
                "empty frame: a request is a JSON object",
            ));
        }
        let text = std::str::from_utf8(payload).map_err(|err| {
            Rejection::new(
                None,
                format!(
                    "payload is not valid UTF-8 (invalid byte at offset {})",
                    err.valid_up_to()
                ),
            )
        })?;
        if text.starts_with('\u{feff}') {
            return Err(Rejection::new(
                None,
                "payload starts with a byte-order mark, which JSON text must not",
            ));
        }
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let fields = deserializer
            .deserialize_any(TopVisitor)
            .and_then(|fields| deserializer.end().map(|()| fields))
            .map_err(|err| Rejection::new(None, describe_json_error(&err)))?;
        // serde_json checks escapes in the members it decodes, but not in those
        // it only skips (the raw body, unknown members): check them here.
        if text.contains("\\u") {
            check_surrogates(text).map_err(|message| Rejection::new(None, message))?;
        }
        fields.validate(ids, path)
    }
}

/// Whether [`RawFields::validate`] may take its path for the common request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    /// The common request without a `Value` per member, anything else as below.
    Common,
    /// Every member through a `Value` (the tests check both agree).
    #[cfg(test)]
    General,
}

/// Which numbers a request's `id` may be.
#[derive(Clone, Copy)]
enum IdRule {
    /// Integers without fraction or exponent, from −2^63 to 2^64−1.
    Version1,
    /// Any JSON number, kept as its text (korv 0.2.1's format).
    AnyNumber,
}

/// Checks that every `\\uXXXX` escape in already well-formed JSON text is a
/// valid scalar value: no unpaired surrogate.
fn check_surrogates(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    let hex_at = |at: usize| -> Option<u16> {
        let digits = text.get(at..at + 4)?;
        u16::from_str_radix(digits, 16).ok()
    };
    let mut i = 0;
    while let Some(offset) = bytes
        .get(i..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\\'))
    {
        let at = i + offset;
        match bytes.get(at + 1) {
            Some(b'u') => {
                let unit = hex_at(at + 2).ok_or("payload is not valid JSON: bad \\u escape")?;
                match unit {
                    0xD800..=0xDBFF => {
                        let low = (bytes.get(at + 6) == Some(&b'\\')
                            && bytes.get(at + 7) == Some(&b'u'))
                        .then(|| hex_at(at + 8))
                        .flatten();
                        if !matches!(low, Some(0xDC00..=0xDFFF)) {
                            return Err(format!(
                                "payload is not valid JSON: unpaired surrogate \\u{unit:04x} at byte {at}"
                            ));
                        }
                        i = at + 12;
                    }
                    0xDC00..=0xDFFF => {
                        return Err(format!(
                            "payload is not valid JSON: unpaired surrogate \\u{unit:04x} at byte {at}"
                        ));
                    }
                    _ => i = at + 6,
                }
            }
            _ => i = at + 2,
        }
    }
    Ok(())
}

fn describe_json_error(err: &serde_json::Error) -> String {
    match err.classify() {
        serde_json::error::Category::Data => format!("payload is not a JSON object: {err}"),
        _ => format!("payload is not valid JSON: {err}"),
    }
}

/// The request object's members as read, before validation. They are kept as
/// raw JSON text, which is read without recursion and without converting
/// numbers, so that a member too deep or a number too large for a `Value`
/// is a `400` of that member, with the request's id, not of the payload.
/// The members of a request object, as slices of the payload's text: only
/// the body is copied, once the request is valid.
#[derive(Default)]
struct RawFields<'a> {
    id: Option<&'a RawValue>,
    verb: Option<&'a RawValue>,
    resource: Option<&'a RawValue>,
    body: Option<&'a RawValue>,
    headers: Option<&'a RawValue>,
    duplicate: Option<String>,
}

/// A member's raw text as a `Value`, or why it cannot be one.
fn member_value(name: &str, raw: Option<&RawValue>) -> Result<Option<Value>, String> {
    raw.map(|raw| {
        serde_json::from_str(raw.get()).map_err(|err| {
            format!(
                "`{name}` could not be read ({err}): found {}",
                truncate(raw.get(), 40)
            )
        })
    })
    .transpose()
}

/// The text of a JSON string without escapes, between its quotes: what
/// decoding it would give, without decoding. `raw` is valid JSON already.
fn plain_string(raw: &RawValue) -> Option<&str> {
    raw.get()
        .strip_prefix('"')?
        .strip_suffix('"')
        .filter(|text| !text.contains('\\'))
}

/// The id in a member's raw text: `-0`, which JSON has no integer for, is 0.
fn id_from_raw(raw: &RawValue, ids: IdRule, path: Path) -> Result<RequestId, String> {
    if raw.get() == "-0" {
        return Ok(RequestId::from(0));
    }
    if let IdRule::AnyNumber = ids
        && let Some(id) = RequestId::from_number_text(raw.get())
    {
        return Ok(id);
    }
    // The common ids, read without building a `Value`: an integer that
    // fits (valid JSON, so digits after an optional minus sign), or a
    // string without escapes.
    let text = raw.get();
    if path == Path::Common && text.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        if let Ok(n) = text.parse::<i64>() {
            return Ok(RequestId::from(n));
        }
        if let Ok(n) = text.parse::<u64>() {
            return Ok(RequestId::from(n));
        }
    }
    if let (Path::Common, Some(text)) = (path, plain_string(raw)) {
        return Ok(RequestId::from(text));
    }
    let found = match serde_json::from_str::<Value>(raw.get()) {
        Ok(value) => match RequestId::from_json(&value) {
            Some(id) => return Ok(id),
            None => describe_value(&value),
        },
        Err(_) => truncate(raw.get(), 40),
    };
    Err(format!(
        "`id` must be an integer from -2^63 to 2^64-1 or a string, found {found}"
    ))
}

impl RawFields<'_> {
    fn validate(self, ids: IdRule, path: Path) -> Result<Request, Rejection> {
        let id = match self.id {
            None => return Err(Rejection::new(None, "missing `id`")),
            Some(raw) => {
                id_from_raw(raw, ids, path).map_err(|message| Rejection::new(None, message))?
            }
        };
        let reject = |message: String| Err(Rejection::new(Some(id.clone()), message));
        if let Some(name) = self.duplicate {
            return reject(format!("duplicate member {name:?} in the request object"));
        }
        // The common request, read without building a `Value` for each
        // member: `verb` and `resource` strings without escapes, no
        // `headers`. It meets the checks below in the same order, so any
        // other request gets the same answer from the general path.
        if let (Path::Common, Some(verb), Some(resource), None) = (
            path,
            self.verb.and_then(plain_string),
            self.resource.and_then(plain_string),
            self.headers,
        ) {
            let verb = match verb.parse::<Verb>() {
                Ok(verb) => verb,
                Err(err) => return reject(format!("`verb`: {err}")),
            };
            return finish(id, verb, resource.to_owned(), None, self.body, ids);
        }
        let (verb, resource, headers) = match (
            member_value("verb", self.verb),
            member_value("resource", self.resource),
            member_value("headers", self.headers),
        ) {
            (Ok(verb), Ok(resource), Ok(headers)) => (verb, resource, headers),
            (Err(message), _, _) | (_, Err(message), _) | (_, _, Err(message)) => {
                return reject(message);
            }
        };
        let verb = match verb {
            None => return reject("missing `verb`".into()),
            Some(Value::String(text)) => match text.parse::<Verb>() {
                Ok(verb) => verb,
                Err(err) => return reject(format!("`verb`: {err}")),
            },
            Some(other) => {
                return reject(format!(
                    "`verb` must be a string (GET, STORE, UPDATE, DELETE, WATCH or UNWATCH), found {}",
                    describe_value(&other)
                ));
            }
        };
        let resource = match resource {
            None => return reject("missing `resource`".into()),
            Some(Value::String(resource)) => resource,
            Some(other) => {
                return reject(format!(
                    "`resource` must be a string, found {}",
                    describe_value(&other)
                ));
            }
        };
        finish(id, verb, resource, headers, self.body, ids)
    }
}

/// The checks after `verb`'s and `resource`'s types, in the protocol's
/// order, shared by both paths of [`RawFields::validate`].
fn finish(
    id: RequestId,
    verb: Verb,
    resource: String,
    headers: Option<Value>,
    body: Option<&RawValue>,
    ids: IdRule,
) -> Result<Request, Rejection> {
    let reject = |message: String| Err(Rejection::new(Some(id.clone()), message));
    if !resource.starts_with('/') {
        return reject(format!(
            "`resource` must start with '/', found {:?}",
            truncate(&resource, 64)
        ));
    }
    if resource.len() > MAX_RESOURCE_BYTES {
        return reject(format!(
            "`resource` is {} bytes long; the limit is {MAX_RESOURCE_BYTES}",
            resource.len()
        ));
    }
    let headers = match headers {
        None => Headers::new(),
        Some(Value::Object(map)) => {
            let mut headers = Headers::new();
            for (name, value) in map {
                match value {
                    Value::String(value) => {
                        headers.insert(name, value);
                    }
                    other => {
                        return reject(format!(
                            "header {name:?} must have a string value, found {}",
                            describe_value(&other)
                        ));
                    }
                }
            }
            headers
        }
        Some(other) => {
            return reject(format!(
                "`headers` must be an object of strings, found {}",
                describe_value(&other)
            ));
        }
    };
    if let (IdRule::AnyNumber, true) = (ids, verb.is_watch()) {
        return reject(format!("{verb} is not available in korv 0.2.1's format"));
    }
    let body = body.filter(|raw| raw.get() != "null");
    if verb.requires_body() && body.is_none() {
        return reject(format!("{verb} requires a non-null `body`"));
    }
    Ok(Request {
        id,
        verb,
        resource,
        body: body.map(RawValue::to_owned),
        headers,
    })
}

fn describe_value(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {}", truncate(&n.to_string(), 40)),
        Value::String(s) => format!("the string {:?}", truncate(s, 40)),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", text.get(..cut).unwrap_or(text)),
        None => text.to_owned(),
    }
}

/// The members the protocol names, and any other member (kept for the
/// duplicate check).
enum Key {
    Id,
    Verb,
    Resource,
    Body,
    Headers,
    Other(String),
}

impl Key {
    fn name(&self) -> &str {
        match self {
            Key::Id => "id",
            Key::Verb => "verb",
            Key::Resource => "resource",
            Key::Body => "body",
            Key::Headers => "headers",
            Key::Other(name) => name,
        }
    }
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Key, E> {
        Ok(match name {
            "id" => Key::Id,
            "verb" => Key::Verb,
            "resource" => Key::Resource,
            "body" => Key::Body,
            "headers" => Key::Headers,
            other => Key::Other(other.to_owned()),
        })
    }
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = RawFields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawFields<'de>, A::Error> {
        let mut fields = RawFields::default();
        let mut seen_known = [false; 5];
        let mut seen_other: HashSet<String> = HashSet::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let slot = match key {
                Key::Id => Some(0),
                Key::Verb => Some(1),
                Key::Resource => Some(2),
                Key::Body => Some(3),
                Key::Headers => Some(4),
                Key::Other(_) => None,
            };
            let first = match slot {
                Some(index) => match seen_known.get_mut(index) {
                    Some(seen) => !std::mem::replace(seen, true),
                    None => true,
                },
                None => {
                    // A set: a payload may hold a million unknown members.
                    seen_other.insert(key.name().to_owned())
                }
            };
            if !first {
                if fields.duplicate.is_none() {
                    fields.duplicate = Some(key.name().to_owned());
                }
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            match key {
                Key::Id => fields.id = Some(map.next_value()?),
                Key::Verb => fields.verb = Some(map.next_value()?),
                Key::Resource => fields.resource = Some(map.next_value()?),
                Key::Body => fields.body = Some(map.next_value()?),
                Key::Headers => fields.headers = Some(map.next_value()?),
                Key::Other(_) => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::{IdRule, Path, Request};

    /// Every combination of these members, with each id rule: the path for
    /// the common request must give what the general path gives, request or
    /// rejection, message for message.
    #[test]
    fn the_common_path_answers_as_the_general_path_does() {
        let ids = [
            None,
            Some("0"),
            Some("-0"),
            Some("7"),
            Some("-1"),
            Some("9223372036854775807"),
            Some("9223372036854775808"),
            Some("-9223372036854775808"),
            Some("-9223372036854775809"),
            Some("18446744073709551615"),
            Some("18446744073709551616"),
            Some("1.5"),
            Some("1e3"),
            Some(r#""abc""#),
            Some(r#""""#),
            Some(r#""a\"b""#),
            Some(r#""\u0041""#),
            Some("true"),
            Some("null"),
            Some("[1]"),
        ];
        let verbs = [
            None,
            Some(r#""GET""#),
            Some(r#""STORE""#),
            Some(r#""WATCH""#),
            Some(r#""get""#),
            Some(r#""PUT""#),
            Some(r#""G\u0045T""#),
            Some(r#""""#),
            Some("1"),
            Some("1e400"),
            Some("null"),
        ];
        let long = format!(r#""/{}""#, "a".repeat(4096));
        let resources = [
            None,
            Some(r#""/hello""#),
            Some(r#""hello""#),
            Some(r#""""#),
            Some(r#""/\u0061""#),
            Some(r#""/a\\b""#),
            Some(r#""/é""#),
            Some(long.as_str()),
            Some("2"),
            Some("{}"),
        ];
        let rests = [
            "",
            r#","body":null"#,
            r#","body":{"a":1}"#,
            r#","headers":{"t":"x"}"#,
            r#","headers":{"t":1}"#,
            r#","headers":[]"#,
            r#","extra":1"#,
            r#","verb":"GET""#,
        ];
        let mut compared = 0;
        for id in ids {
            for verb in verbs {
                for resource in resources {
                    for rest in rests {
                        let members: Vec<String> =
                            [("id", id), ("verb", verb), ("resource", resource)]
                                .into_iter()
                                .filter_map(|(name, value)| {
                                    value.map(|v| format!(r#""{name}":{v}"#))
                                })
                                .collect();
                        let mut text = format!("{{{}", members.join(","));
                        if members.is_empty() {
                            text.push_str(rest.strip_prefix(',').unwrap_or(rest));
                        } else {
                            text.push_str(rest);
                        }
                        text.push('}');
                        for rule in [IdRule::Version1, IdRule::AnyNumber] {
                            let common = Request::parse_with(text.as_bytes(), rule, Path::Common);
                            let general = Request::parse_with(text.as_bytes(), rule, Path::General);
                            assert_eq!(common, general, "{text}");
                            compared += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(
            compared,
            ids.len() * verbs.len() * resources.len() * rests.len() * 2
        );
    }
}
