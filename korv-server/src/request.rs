//! What a handler receives: the [`Request`] with its route captures
//! ([`Params`]) and the authenticated client ([`ClientInfo`]), and the
//! [`BodyError`] of a body that does not fit the handler's type.

use std::net::SocketAddr;
use std::sync::Arc;

use korv_proto::{Headers, RequestId, Verb};
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::certificate::CertificateInfo;

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
    /// The client's address, when the transport has one: the TCP peer, or
    /// the address a trusted load balancer's PROXY header carries
    /// ([`KorvServer::proxy_protocol_from`](crate::KorvServer::proxy_protocol_from)).
    pub peer: Option<SocketAddr>,
    /// The OpenSSH user certificate the client authenticated with (key id,
    /// serial, principals, CA, validity); `None` for a plain key.
    pub certificate: Option<CertificateInfo>,
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
            certificate: None,
        }
    }

    /// The same client, authenticated with `certificate`.
    pub fn with_certificate(mut self, certificate: CertificateInfo) -> Self {
        self.certificate = Some(certificate);
        self
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

/// The captures of a matched route, in pattern order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub(crate) fn push(&mut self, name: &str, value: &str) {
        self.0.push((name.to_owned(), value.to_owned()));
    }

    /// The value captured for `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every capture, as (name, value) pairs in pattern order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Whether there are no captures.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
