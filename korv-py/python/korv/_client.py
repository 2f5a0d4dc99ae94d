"""KorvClient: call a Korv server over SSH with Korv's Rust client."""

from __future__ import annotations

import atexit
import logging
import os
import weakref
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, TypedDict, Union

from . import _korv

__all__ = ["KorvClient", "Response", "Watch"]

_log = logging.getLogger("korv")

PathLike = Union[str, "os.PathLike[str]"]


class Response(TypedDict):
    """A response: ``{'request_id': 1, 'code': 200, 'body': {...}, 'headers': {}}``."""

    request_id: Union[int, str, None]
    code: int
    body: Any
    headers: Dict[str, str]


ResponseCallback = Callable[[Response], Any]
ErrorCallback = Callable[[Exception], Any]


def _config(
    host: str,
    port: int,
    client_keys: Union[None, PathLike, Sequence[PathLike]],
    known_hosts: Optional[PathLike],
    user: Optional[str],
    timeout: Optional[float],
    connect_timeout: float,
    accept_new: bool,
    subsystem: bool,
    use_agent: Optional[bool],
    passphrase: Optional[str],
) -> "_korv.ClientConfig":
    """Checks a client's arguments and builds its native configuration."""
    if not isinstance(host, str) or not host:
        raise TypeError(f"host must be a non-empty str, not {host!r}")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError(f"port must be an int from 1 to 65535, not {port!r}")
    identities = None
    if client_keys is not None:
        if isinstance(client_keys, (str, os.PathLike)):
            identities = [os.fspath(client_keys)]
        else:
            try:
                identities = [os.fspath(key) for key in client_keys]
            except TypeError:
                raise TypeError(
                    "client_keys must be a path or a list of paths to private key files, "
                    f"not {type(client_keys).__name__}"
                ) from None
    if known_hosts is not None and not isinstance(known_hosts, (str, os.PathLike)):
        raise TypeError(f"known_hosts must be a path, not {type(known_hosts).__name__}")
    if user is not None and not isinstance(user, str):
        raise TypeError(f"user must be a str, not {type(user).__name__}")
    for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout)):
        if value is None and name == "timeout":
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return _korv.ClientConfig(
        host,
        port,
        user=user,
        identities=identities,
        known_hosts=None if known_hosts is None else os.fspath(known_hosts),
        accept_new=bool(accept_new),
        timeout=None if timeout is None else float(timeout),
        connect_timeout=float(connect_timeout),
        subsystem=bool(subsystem),
        use_agent=use_agent,
        passphrase=passphrase,
    )


def _check_resource(resource: Any) -> None:
    if not isinstance(resource, str):
        raise TypeError(f"resource must be a str such as '/hello', not {type(resource).__name__}")


_open: "weakref.WeakSet[KorvClient]" = weakref.WeakSet()


class KorvClient:
    """A Korv client: one SSH connection, many requests at once over it.

    >>> k = KorvClient(client_keys=['id_ed25519'])  # doctest: +SKIP
    >>> k.get('/hello')  # doctest: +SKIP
    {'request_id': 1, 'code': 200, 'body': {'msg': 'Hello World!'}, 'headers': {}}
    >>> k.get('/hello', callback=lambda response: print(response['body']))  # doctest: +SKIP
    {'msg': 'Hello World!'}

    It connects when created, checking the server's host key against
    ``known_hosts`` (``~/.ssh/known_hosts`` by default; an unknown or changed
    key is refused unless ``accept_new=True`` records an unknown one) and
    logging in with ``client_keys`` (private key files; by default the
    ``~/.ssh`` keys and the ssh-agent).

    Keyword arguments beyond the original ones: ``user`` (default: the
    current user), ``timeout`` (seconds each request gets; ``None``: no
    limit), ``connect_timeout``, ``accept_new``, ``subsystem`` (use the
    ``korv`` SSH subsystem, as under OpenSSH's sshd, instead of a
    direct-tcpip channel), ``use_agent`` and ``passphrase`` (for encrypted
    keys). ``max_packet_size`` is accepted
    and ignored: Korv's frames carry bodies of any size up to the server's
    limit.

    Errors are :class:`korv.KorvError` subclasses: :class:`korv.HostKeyUnknownError`,
    :class:`korv.AuthenticationError`, :class:`korv.RequestTimeoutError`...
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 8022,
        client_keys: Union[None, PathLike, Sequence[PathLike]] = None,
        known_hosts: Optional[PathLike] = None,
        max_packet_size: int = 32768,
        *,
        user: Optional[str] = None,
        timeout: Optional[float] = 30.0,
        connect_timeout: float = 10.0,
        accept_new: bool = False,
        subsystem: bool = False,
        use_agent: Optional[bool] = None,
        passphrase: Optional[str] = None,
    ) -> None:
        self.max_packet_size = max_packet_size
        self.host = host
        self.port = port
        config = _config(
            host,
            port,
            client_keys,
            known_hosts,
            user,
            timeout,
            connect_timeout,
            accept_new,
            subsystem,
            use_agent,
            passphrase,
        )
        self._native = _korv.Client.connect(config)
        _open.add(self)

    def get(
        self,
        resource: str,
        body: Any = None,
        callback: Optional[ResponseCallback] = None,
        *,
        headers: Optional[Dict[str, str]] = None,
        error_callback: Optional[ErrorCallback] = None,
    ) -> Optional[Response]:
        """``GET resource``. Without ``callback``, waits and returns the
        response; with one, returns ``None`` at once and calls
        ``callback(response)`` from a background thread (``error_callback``,
        or the ``korv`` logger, gets a :class:`korv.KorvError` instead when
        the request fails)."""
        return self._request("GET", resource, body, callback, headers, error_callback)

    def store(
        self,
        resource: str,
        body: Any = None,
        callback: Optional[ResponseCallback] = None,
        *,
        headers: Optional[Dict[str, str]] = None,
        error_callback: Optional[ErrorCallback] = None,
    ) -> Optional[Response]:
        """``STORE resource`` with ``body`` (create); as :meth:`get`."""
        return self._request("STORE", resource, body, callback, headers, error_callback)

    def update(
        self,
        resource: str,
        body: Any = None,
        callback: Optional[ResponseCallback] = None,
        *,
        headers: Optional[Dict[str, str]] = None,
        error_callback: Optional[ErrorCallback] = None,
    ) -> Optional[Response]:
        """``UPDATE resource`` with ``body`` (change); as :meth:`get`."""
        return self._request("UPDATE", resource, body, callback, headers, error_callback)

    def delete(
        self,
        resource: str,
        body: Any = None,
        callback: Optional[ResponseCallback] = None,
        *,
        headers: Optional[Dict[str, str]] = None,
        error_callback: Optional[ErrorCallback] = None,
    ) -> Optional[Response]:
        """``DELETE resource``; as :meth:`get`."""
        return self._request("DELETE", resource, body, callback, headers, error_callback)

    def _request(
        self,
        verb: str,
        resource: str,
        body: Any,
        callback: Optional[ResponseCallback],
        headers: Optional[Dict[str, str]],
        error_callback: Optional[ErrorCallback],
    ) -> Optional[Response]:
        _check_resource(resource)
        if callback is None:
            return self._native.request(verb, resource, body, headers)  # type: ignore[return-value]
        if not callable(callback):
            raise TypeError(f"callback must be callable, not {type(callback).__name__}")
        self._native.request_with_callback(
            verb, resource, body, headers, _deliver(verb, resource, callback, error_callback)
        )
        return None

    def watch(self, resource: str, body: Any = None) -> "Watch":
        """``WATCH resource`` (protocol 1.1): once the server confirms it, its
        events, as an iterator::

            for event in client.watch('/notes/'):
                print(event['event'], event['resource'])

        ``body`` is the watch's parameters. The iterator ends at the watch's
        final frame (:attr:`Watch.end` has it: code 200 when the server's
        handler finished it, 503 when the server shut down or this client
        did not read fast enough). :meth:`Watch.cancel` (or leaving a
        ``with`` block, or :meth:`Watch.close`) cancels it. A refused watch
        raises :class:`korv.WatchRefusedError`."""
        _check_resource(resource)
        return Watch(self._native.watch(resource, body))

    @property
    def pending(self) -> int:
        """Requests made with a callback whose callback has not returned yet."""
        return self._native.pending

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Waits until every callback has been called and returned, at most
        ``timeout`` seconds; returns whether none is left."""
        return self._native.wait_idle(timeout)

    def close(self, timeout: Optional[float] = None) -> None:
        """Waits for the callbacks still due (at most ``timeout`` seconds),
        then closes the connection. Later requests raise
        :class:`korv.ConnectionClosedError`."""
        if not self._native.closed:
            self._native.wait_idle(timeout)
        self._native.close()
        _open.discard(self)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._native.closed

    def __enter__(self) -> "KorvClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _deliver(
    verb: str,
    resource: str,
    callback: ResponseCallback,
    error_callback: Optional[ErrorCallback],
) -> Callable[[Optional[Response], Optional[Exception]], None]:
    """The native client's ``on_done(response, error)`` for one request."""

    def on_done(response: Optional[Response], error: Optional[Exception]) -> None:
        try:
            if error is None:
                callback(response)  # type: ignore[arg-type]
            elif error_callback is not None:
                error_callback(error)
            else:
                _log.error("korv: %s %s failed: %s", verb, resource, error)
        except Exception:  # noqa: BLE001 - a callback's bug must not stop the others
            _log.exception("korv: the callback for %s %s raised", verb, resource)

    return on_done


@atexit.register
def _close_open_clients() -> None:
    """Callbacks still due run before the program ends."""
    for client in list(_open):
        try:
            client.close(timeout=60.0)
        except Exception:  # noqa: BLE001 - exiting anyway
            _log.exception("closing a korv client at exit")


class Watch:
    """The events of one watch, from :meth:`KorvClient.watch`: an iterator
    of each event's body, in order, until the watch ends."""

    def __init__(self, native: "_korv.Watch") -> None:
        self._native = native
        self._end: Optional[Response] = None
        self._done = False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        more, item = self._native.next()
        if more:
            return item
        self._done = True
        self._end = item
        raise StopIteration

    @property
    def end(self) -> Optional[Response]:
        """The watch's final frame, once the iterator has ended with it."""
        return self._end

    def cancel(self) -> Optional[Response]:
        """Cancels the watch (``UNWATCH``) and waits for its final frame,
        which it returns (code 410, unless the watch had ended)."""
        if not self._done:
            self._done = True
            self._end = self._native.cancel()  # type: ignore[assignment]
        return self._end

    def close(self) -> None:
        """Cancels the watch without waiting."""
        self._done = True
        self._native.close()

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
