"""The native half of the korv package (Rust, over korv-server and korv-client).

Use the pure-Python API instead: :class:`korv.KorvServer`,
:class:`korv.KorvClient`, :class:`korv.aio.KorvClient`.
"""

import asyncio
from os import PathLike
from typing import Any, Awaitable, Callable, Dict, Optional, Sequence, Tuple, Union

__version__: str

_Path = Union[str, PathLike[str]]

class Server:
    """A Korv server whose routes call Python callbacks."""

    def __init__(
        self,
        host: str,
        port: int,
        host_keys: Sequence[_Path],
        *,
        authorized_keys_file: Optional[_Path] = None,
        authorized_keys: Optional[Sequence[str]] = None,
        trusted_user_ca_keys: Optional[_Path] = None,
        revoked_keys: Optional[_Path] = None,
        host_certificate: Optional[_Path] = None,
        max_workers: int = 64,
        tracebacks: bool = True,
        request_timeout: Optional[float] = 30.0,
        shutdown_grace: float = 10.0,
        idle_timeout: Optional[float] = 600.0,
        max_frame: Optional[int] = None,
        max_in_flight: Optional[int] = None,
        max_connections: Optional[int] = None,
    ) -> None: ...
    def add_route(self, verb: str, pattern: str, callback: Callable[[Dict[str, Any]], Any]) -> None:
        """Routes ``verb`` requests for ``pattern`` to ``callback``; ``ValueError``
        for an unknown verb, a malformed pattern or a duplicate route.

        The callback gets the request dict (``korv.Request``); in its
        ``client['certificate']``, ``valid_after`` and ``valid_before`` are
        Unix timestamps, or ``None`` for an open end (valid from the start,
        never expiring)."""
    def start(
        self, spawn: Callable[[Awaitable[Any], "Responder"], Callable[[], None]]
    ) -> Tuple[str, int]:
        """Binds and serves in the background; the bound ``(host, port)``.
        ``spawn`` awaits an ``async def`` callback's awaitable on the asyncio
        loop and returns a function, callable from any thread, that cancels
        it (called when the request times out, a shutdown's grace period
        ends, or its client is gone). Raises ``korv.ServerError``."""
    def shutdown(self) -> None:
        """Starts the graceful shutdown."""
    def wait(self, timeout: Optional[float] = None) -> bool:
        """Waits until serving is over; whether it is. Ctrl-C interrupts."""
    def close(self) -> None:
        """Lets the callback threads finish."""

class Responder:
    """Answers the request of an ``async def`` callback."""

    def send(self, result: Any) -> None:
        """Answers with ``(code, body)``."""
    def fail(self, error: BaseException, traceback: Optional[Any] = None) -> None:
        """Answers ``500`` for ``error``."""

class ClientConfig:
    """How a client connects."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        user: Optional[str] = None,
        identities: Optional[Sequence[_Path]] = None,
        known_hosts: Optional[_Path] = None,
        accept_new: bool = False,
        timeout: Optional[float] = 30.0,
        connect_timeout: float = 10.0,
        subsystem: bool = False,
        use_agent: Optional[bool] = None,
        passphrase: Optional[str] = None,
    ) -> None: ...

class RequestHandle:
    """Cancels an asynchronous request."""

    def cancel(self) -> None: ...

_ResponseDict = Dict[str, Any]

class Client:
    """One SSH connection with one multiplexed Korv stream."""

    @staticmethod
    def connect(config: ClientConfig) -> "Client":
        """Connects, blocking; raises a ``korv.KorvError``."""
    @staticmethod
    def connect_async(
        config: ClientConfig, event_loop: asyncio.AbstractEventLoop, future: "asyncio.Future[Client]"
    ) -> RequestHandle:
        """Connects in the background and resolves ``future``."""
    def request(
        self,
        verb: str,
        resource: str,
        body: Any = None,
        headers: Optional[Dict[str, str]] = None,
    ) -> _ResponseDict:
        """Sends a request and blocks until its answer."""
    def request_with_callback(
        self,
        verb: str,
        resource: str,
        body: Any,
        headers: Optional[Dict[str, str]],
        on_done: Callable[[Optional[_ResponseDict], Optional[BaseException]], None],
    ) -> None:
        """Sends a request; ``on_done`` runs on the callback thread."""
    def request_async(
        self,
        verb: str,
        resource: str,
        body: Any,
        headers: Optional[Dict[str, str]],
        event_loop: asyncio.AbstractEventLoop,
        future: "asyncio.Future[_ResponseDict]",
    ) -> RequestHandle:
        """Sends a request; the answer resolves ``future``."""
    def watch(self, resource: str, body: Any = None) -> "Watch":
        """Sends ``WATCH`` and blocks until the server confirms it."""
    def watch_async(
        self,
        resource: str,
        body: Any,
        event_loop: asyncio.AbstractEventLoop,
        future: "asyncio.Future[Watch]",
    ) -> RequestHandle:
        """Sends ``WATCH``; the confirmed watch resolves ``future``."""
    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """Waits until no callback is due."""
    @property
    def pending(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None:
        """Closes the connection."""

class Watch:
    """One watch; dropping it cancels it."""

    def next(self) -> Tuple[bool, Any]:
        """``(True, event)``, or ``(False, final response dict)`` at the end."""
    def next_async(
        self, event_loop: asyncio.AbstractEventLoop, future: "asyncio.Future[Tuple[bool, Any]]"
    ) -> RequestHandle:
        """Resolves ``future`` with what :meth:`next` returns."""
    def cancel(self) -> Optional[_ResponseDict]:
        """Sends ``UNWATCH`` and blocks until the final frame."""
    def cancel_async(
        self, event_loop: asyncio.AbstractEventLoop, future: "asyncio.Future[Optional[_ResponseDict]]"
    ) -> RequestHandle:
        """Resolves ``future`` with what :meth:`cancel` returns."""
    def close(self) -> None:
        """Stops the watch without waiting."""

def resolve_future(future: "asyncio.Future[Any]", result: Any, error: Optional[BaseException]) -> None:
    """Resolves ``future`` unless it is done; runs on its loop."""

