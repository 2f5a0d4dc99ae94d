"""The exceptions of the korv package, all under :class:`KorvError`.

Each carries the details of its cause as attributes (``host``,
``fingerprint``, ``path``...), and its message says what to do about it.
"""

from __future__ import annotations

import builtins
from typing import Any, Dict, List, Optional

__all__ = [
    "KorvError",
    "ConnectError",
    "ConnectTimeoutError",
    "HostKeyError",
    "HostKeyUnknownError",
    "HostKeyChangedError",
    "HostKeyRevokedError",
    "HostCertificateError",
    "KnownHostsError",
    "IdentityError",
    "AuthenticationError",
    "ProtocolError",
    "RequestTimeoutError",
    "ConnectionClosedError",
    "WatchRefusedError",
    "ServerError",
]


class KorvError(Exception):
    """Base of every error the korv package raises."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        for name, value in details.items():
            setattr(self, name, value)


class ConnectError(KorvError, ConnectionError):
    """The TCP connection or the SSH handshake failed."""

    address: str
    """The address tried, ``host:port``."""


class ConnectTimeoutError(ConnectError, builtins.TimeoutError):
    """Connecting, the SSH handshake and the authentication took longer than
    ``connect_timeout``."""

    timeout: float
    """The connect timeout, in seconds."""


class HostKeyError(KorvError):
    """The server's host key is not the one known_hosts expects."""

    host: str
    """``host`` or ``[host]:port``, as known_hosts names it."""
    fingerprint: Optional[str]
    """The ``SHA256:`` fingerprint of the key the server offered (``None``
    for a refused host certificate)."""
    known_hosts: str
    """The known_hosts file consulted."""


class HostKeyUnknownError(HostKeyError):
    """The server's host key is not in known_hosts.

    Check the fingerprint, then trust it once with ``accept_new=True`` (or
    add it to known_hosts yourself).
    """


class HostKeyChangedError(HostKeyError):
    """The server's host key differs from the one in known_hosts: someone
    may be in the middle, or the key was replaced. Korv refuses to connect."""

    line: int
    """The line of known_hosts that holds the recorded key."""


class HostKeyRevokedError(HostKeyError):
    """The server's host key, or the CA of its host certificate, is marked
    ``@revoked`` in known_hosts."""

    line: int
    """The ``@revoked`` line."""


class HostCertificateError(HostKeyError):
    """The server presented a host certificate known_hosts does not let
    this client trust (its CA is not an ``@cert-authority`` for the host, or
    the certificate fails a check)."""

    reason: str
    """What failed."""


class KnownHostsError(KorvError):
    """The known_hosts file cannot be read, or the host key not added to it."""

    path: str
    """The known_hosts file."""


class IdentityError(KorvError):
    """A private key file (``client_keys``) cannot be used."""

    path: str
    """The key file."""
    reason: str
    """What is wrong with it."""


class AuthenticationError(KorvError, PermissionError):
    """The server refused every key offered."""

    user: str
    """The SSH user name."""
    tried: List[str]
    """The keys tried, each with its fingerprint."""


class ProtocolError(KorvError):
    """The server refused the channel or broke the protocol."""


class RequestTimeoutError(KorvError, builtins.TimeoutError):
    """No answer came within the client's ``timeout``."""

    timeout: float
    """The timeout, in seconds."""


class ConnectionClosedError(KorvError, ConnectionError):
    """The connection is closed; requests in flight when it closed fail with
    this error, as do requests on a closed client."""

    reason: str
    """Why it closed."""


class WatchRefusedError(KorvError):
    """The server answered a ``WATCH`` with an ordinary response instead of
    confirming it: a 404, a 405 (the route has no watches), a 429 (too many
    watches on the connection), or a 400 from a server without watches."""

    response: Dict[str, Any]
    """The server's response dict (``code``, ``body``...)."""


class ServerError(KorvError):
    """A server cannot start: a host key or the authorized keys are missing
    or unusable, or the address cannot be bound."""
