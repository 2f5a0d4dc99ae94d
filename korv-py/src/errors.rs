//! Rust errors as the exceptions of `korv._errors`, all under
//! `korv.KorvError`, each carrying its details as attributes.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

static ERRORS_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// An instance of `korv._errors.{class}` with `message` and the attributes
/// `details` sets on `kwargs`.
fn korv_error<'py>(
    py: Python<'py>,
    class: &str,
    message: String,
    details: impl FnOnce(&Bound<'py, PyDict>) -> PyResult<()>,
) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let module = ERRORS_MODULE
            .get_or_try_init(py, || py.import("korv._errors").map(Bound::unbind))?
            .bind(py);
        let kwargs = PyDict::new(py);
        details(&kwargs)?;
        let instance = module.getattr(class)?.call((message,), Some(&kwargs))?;
        Ok(PyErr::from_value(instance))
    };
    build().unwrap_or_else(|err| err)
}

/// An error and each of its causes, `: `-separated, as anyhow's `{:#}`
/// prints them: `cannot connect to 127.0.0.1:1: Connection refused (os error 111)`.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// A `korv_client::Error` as its exception:
///
/// | error | exception (attributes) |
/// | --- | --- |
/// | `Connect`, `Ssh` | `ConnectError` (`address`) |
/// | `ConnectTimeout` | `ConnectTimeoutError` (`address`, `timeout`) |
/// | `HostKeyUnknown` | `HostKeyUnknownError` (`host`, `fingerprint`, `known_hosts`) |
/// | `HostKeyChanged` | `HostKeyChangedError` (… and `line`) |
/// | `HostKeyRevoked` | `HostKeyRevokedError` (… and `line`) |
/// | `HostCertificate` | `HostCertificateError` (`host`, `reason`, `known_hosts`) |
/// | `KnownHosts` | `KnownHostsError` (`path`) |
/// | `Identity` | `IdentityError` (`path`, `reason`) |
/// | `AuthRefused` | `AuthenticationError` (`user`, `tried`) |
/// | `ChannelRefused`, `Body`, `Protocol` | `ProtocolError` |
/// | `Timeout` | `RequestTimeoutError` (`timeout`) |
/// | `Closed` | `ConnectionClosedError` (`reason`) |
pub(crate) fn client_error(py: Python<'_>, err: korv_client::Error) -> PyErr {
    use korv_client::Error;
    let message = chain(&err);
    match err {
        Error::Connect { addr, .. } | Error::Ssh { addr, .. } => {
            korv_error(py, "ConnectError", message, |kw| {
                kw.set_item("address", addr)
            })
        }
        Error::ConnectTimeout { addr, limit } => {
            korv_error(py, "ConnectTimeoutError", message, |kw| {
                kw.set_item("address", addr)?;
                kw.set_item("timeout", limit.as_secs_f64())
            })
        }
        Error::HostKeyUnknown {
            host,
            fingerprint,
            known_hosts,
        } => korv_error(py, "HostKeyUnknownError", message, |kw| {
            kw.set_item("host", host)?;
            kw.set_item("fingerprint", fingerprint)?;
            kw.set_item("known_hosts", known_hosts)
        }),
        Error::HostKeyChanged {
            host,
            offered,
            known_hosts,
            line,
        } => korv_error(py, "HostKeyChangedError", message, |kw| {
            kw.set_item("host", host)?;
            kw.set_item("fingerprint", offered)?;
            kw.set_item("known_hosts", known_hosts)?;
            kw.set_item("line", line)
        }),
        Error::HostKeyRevoked {
            host,
            fingerprint,
            known_hosts,
            line,
            ..
        } => korv_error(py, "HostKeyRevokedError", message, |kw| {
            kw.set_item("host", host)?;
            kw.set_item("fingerprint", fingerprint)?;
            kw.set_item("known_hosts", known_hosts)?;
            kw.set_item("line", line)
        }),
        Error::HostCertificate {
            host,
            reason,
            known_hosts,
        } => korv_error(py, "HostCertificateError", message, |kw| {
            kw.set_item("host", host)?;
            kw.set_item("fingerprint", py.None())?;
            kw.set_item("reason", reason)?;
            kw.set_item("known_hosts", known_hosts)
        }),
        Error::KnownHosts { path, .. } => korv_error(py, "KnownHostsError", message, |kw| {
            kw.set_item("path", path.display().to_string())
        }),
        Error::Identity { path, reason } => korv_error(py, "IdentityError", message, |kw| {
            kw.set_item("path", path.display().to_string())?;
            kw.set_item("reason", chain(&reason))
        }),
        Error::AuthRefused { user, tried } => {
            korv_error(py, "AuthenticationError", message, |kw| {
                kw.set_item("user", user)?;
                kw.set_item("tried", tried)
            })
        }
        Error::ChannelRefused { .. } | Error::Body(_) | Error::Protocol(_) => {
            korv_error(py, "ProtocolError", message, |_| Ok(()))
        }
        Error::Timeout(limit) => korv_error(py, "RequestTimeoutError", message, |kw| {
            kw.set_item("timeout", limit.as_secs_f64())
        }),
        Error::Closed(reason) => korv_error(py, "ConnectionClosedError", message, |kw| {
            kw.set_item("reason", chain(&reason))
        }),
        Error::WatchRefused(response) => korv_error(py, "WatchRefusedError", message, |kw| {
            kw.set_item("response", crate::client::response_dict(py, &response)?)
        }),
        _ => korv_error(py, "KorvError", message, |_| Ok(())),
    }
}

/// A `korv_server::ServerError` (the server cannot start) as a
/// `korv.ServerError`.
pub(crate) fn server_error(py: Python<'_>, err: korv_server::ServerError) -> PyErr {
    // Its messages already name their causes.
    server_error_message(py, err.to_string())
}

/// A `korv.ServerError` with `message`.
pub(crate) fn server_error_message(py: Python<'_>, message: String) -> PyErr {
    korv_error(py, "ServerError", message, |_| Ok(()))
}

/// A `korv.ConnectionClosedError` for a client that was closed.
pub(crate) fn client_closed(py: Python<'_>) -> PyErr {
    korv_error(
        py,
        "ConnectionClosedError",
        "connection closed: the client was closed".to_owned(),
        |kw| kw.set_item("reason", "the client was closed"),
    )
}
