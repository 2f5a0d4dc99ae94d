"""An asyncio Korv client: ``await client.get('/hello')``, with many requests
in flight over one connection.

>>> from korv.aio import KorvClient
>>> async def main():
...     async with KorvClient(client_keys=['id_ed25519']) as k:
...         responses = await asyncio.gather(*(k.get('/hello') for _ in range(1000)))
"""

from __future__ import annotations

import asyncio
from typing import Any, Dict, Generator, Optional, Sequence, Union

from . import _korv
from ._client import PathLike, Response, _check_resource, _config
from ._errors import ConnectionClosedError

__all__ = ["KorvClient", "Watch", "connect"]


class KorvClient:
    """The asyncio twin of :class:`korv.KorvClient`, with the same arguments.

    It connects on :meth:`connect`, on ``await KorvClient(...)``, on
    ``async with``, or on its first request. Every method is awaitable and
    any number of requests may be in flight at once; each is matched to its
    own answer. Cancelling a request (``asyncio.wait_for``, a cancelled task)
    stops waiting for its answer.
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
        self._config = _config(
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
        self._native: Optional[_korv.Client] = None
        self._connecting: Optional[asyncio.Lock] = None
        self._closed = False

    async def connect(self) -> "KorvClient":
        """Connects, unless connected already; returns the client.

        Raises a :class:`korv.KorvError` (:class:`korv.HostKeyUnknownError`,
        :class:`korv.AuthenticationError`, :class:`korv.ConnectError`...).
        """
        if self._native is not None:
            return self
        if self._closed:
            raise _closed_error()
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._native is None:
                loop = asyncio.get_running_loop()
                future = loop.create_future()
                handle = _korv.Client.connect_async(self._config, loop, future)
                try:
                    self._native = await future
                except asyncio.CancelledError:
                    handle.cancel()
                    raise
        return self

    def __await__(self) -> Generator[Any, None, "KorvClient"]:
        return self.connect().__await__()

    async def __aenter__(self) -> "KorvClient":
        return await self.connect()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def get(
        self, resource: str, body: Any = None, *, headers: Optional[Dict[str, str]] = None
    ) -> Response:
        """``GET resource``; the response dict."""
        return await self._request("GET", resource, body, headers)

    async def store(
        self, resource: str, body: Any = None, *, headers: Optional[Dict[str, str]] = None
    ) -> Response:
        """``STORE resource`` with ``body`` (create); the response dict."""
        return await self._request("STORE", resource, body, headers)

    async def update(
        self, resource: str, body: Any = None, *, headers: Optional[Dict[str, str]] = None
    ) -> Response:
        """``UPDATE resource`` with ``body`` (change); the response dict."""
        return await self._request("UPDATE", resource, body, headers)

    async def delete(
        self, resource: str, body: Any = None, *, headers: Optional[Dict[str, str]] = None
    ) -> Response:
        """``DELETE resource``; the response dict."""
        return await self._request("DELETE", resource, body, headers)

    async def _request(
        self, verb: str, resource: str, body: Any, headers: Optional[Dict[str, str]]
    ) -> Response:
        _check_resource(resource)
        native = self._native
        if native is None:
            await self.connect()
            native = self._native
            assert native is not None
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        handle = native.request_async(verb, resource, body, headers, loop, future)
        try:
            return await future  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            handle.cancel()
            raise

    def watch(self, resource: str, body: Any = None) -> "Watch":
        """``WATCH resource`` (protocol 1.1): its events as an async iterator::

            async for event in client.watch('/notes/'):
                print(event)

        The watch starts on the first ``async for`` step (or ``await
        client.watch(...)``, which waits for the server's confirmation). It
        ends at the watch's final frame (:attr:`Watch.end`); ``await
        watch.cancel()`` cancels it. A refused watch raises
        :class:`korv.WatchRefusedError`."""
        _check_resource(resource)
        return Watch(self, resource, body)

    async def close(self) -> None:
        """Closes the connection; requests in flight fail with
        :class:`korv.ConnectionClosedError`, as do later ones."""
        self._closed = True
        if self._native is not None:
            self._native.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed


class Watch:
    """The events of one watch, from :meth:`KorvClient.watch`: an async
    iterator of each event's body, in order, until the watch ends."""

    def __init__(self, client: KorvClient, resource: str, body: Any) -> None:
        self._client = client
        self._resource = resource
        self._body = body
        self._native: Optional[_korv.Watch] = None
        self._end: Optional[Response] = None
        self._done = False

    async def start(self) -> "Watch":
        """Sends the ``WATCH`` and waits for its confirmation, unless done."""
        if self._native is None:
            native = self._client._native
            if native is None:
                await self._client.connect()
                native = self._client._native
                assert native is not None
            self._native = await _settle(
                lambda loop, future: native.watch_async(self._resource, self._body, loop, future)
            )
        return self

    def __await__(self) -> Generator[Any, None, "Watch"]:
        return self.start().__await__()

    def __aiter__(self) -> "Watch":
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        await self.start()
        native = self._native
        assert native is not None
        more, item = await _settle(lambda loop, future: native.next_async(loop, future))
        if more:
            return item
        self._done = True
        self._end = item
        raise StopAsyncIteration

    @property
    def end(self) -> Optional[Response]:
        """The watch's final frame, once the iteration has ended with it."""
        return self._end

    async def cancel(self) -> Optional[Response]:
        """Cancels the watch (``UNWATCH``) and waits for its final frame,
        which it returns (code 410, unless the watch had ended)."""
        native = self._native
        if native is not None and not self._done:
            self._done = True
            self._end = await _settle(lambda loop, future: native.cancel_async(loop, future))
        self._done = True
        return self._end

    async def __aenter__(self) -> "Watch":
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.cancel()


async def _settle(start: Any) -> Any:
    """Starts a native call that resolves a future of the running loop, and
    awaits it; cancelling stops the call."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    handle = start(loop, future)
    try:
        return await future
    except asyncio.CancelledError:
        handle.cancel()
        raise


async def connect(
    host: str = "localhost",
    port: int = 8022,
    client_keys: Union[None, PathLike, Sequence[PathLike]] = None,
    known_hosts: Optional[PathLike] = None,
    **kwargs: Any,
) -> KorvClient:
    """Creates a :class:`KorvClient` and connects it."""
    return await KorvClient(host, port, client_keys, known_hosts, **kwargs).connect()


def _closed_error() -> ConnectionClosedError:
    return ConnectionClosedError(
        "connection closed: the client was closed", reason="the client was closed"
    )
