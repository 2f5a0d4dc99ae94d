"""Korv: JSON APIs over SSH, the original Korv's Python API on Korv's Rust
engine.

Serve callbacks::

    from korv import KorvServer

    def hello(request):
        return 200, {'msg': 'Hello World!'}

    k = KorvServer(host_keys=['ssh_host_key'], authorized_client_keys='authorized_keys')
    k.add_callback('GET', '/hello', hello)
    k.start()

Call them::

    from korv import KorvClient

    k = KorvClient(client_keys=['id_ed25519'])
    k.get('/hello')  # {'request_id': 1, 'code': 200, 'body': {'msg': 'Hello World!'}, 'headers': {}}

Watch a resource's events (protocol 1.1; ``korv serve`` reports each change
to the documents under a path)::

    for event in k.watch('/notes/'):
        print(event)

:mod:`korv.aio` has the asyncio client (``async for event in k.watch(...)``). Every error is a :class:`KorvError`.
"""

from ._client import KorvClient, Response, Watch
from ._errors import (
    AuthenticationError,
    ConnectError,
    ConnectionClosedError,
    ConnectTimeoutError,
    HostCertificateError,
    HostKeyChangedError,
    HostKeyError,
    HostKeyRevokedError,
    HostKeyUnknownError,
    IdentityError,
    KnownHostsError,
    KorvError,
    ProtocolError,
    RequestTimeoutError,
    ServerError,
    WatchRefusedError,
)
from ._korv import __version__
from ._server import Callback, KorvServer, Request

__all__ = [
    "KorvServer",
    "KorvClient",
    "Request",
    "Response",
    "Watch",
    "Callback",
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
    "__version__",
]
