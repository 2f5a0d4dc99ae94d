"""KorvServer: register callbacks for a verb and a resource, then serve them
over SSH with Korv's Rust server."""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import os
import signal
import threading
import weakref
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

from . import _korv
from ._errors import ServerError

__all__ = ["KorvServer", "Request", "Callback"]

_log = logging.getLogger("korv")

Request = Dict[str, Any]
"""What a callback receives: ``id``, ``verb``, ``resource``, ``body``,
``headers``, ``params`` (the ``{name}`` captures of its resource pattern) and
``client`` (``user``, ``fingerprint``, ``algorithm``, ``comment``, ``peer``,
and ``certificate``: ``None``, or the ``key_id``, ``serial``,
``principals``, ``ca_fingerprint``, ``valid_after`` and ``valid_before`` of
the OpenSSH certificate the client logged in with; the two times are Unix
timestamps, or ``None`` for an open end: ``valid_after`` when the certificate
is valid from the start, ``valid_before`` when it never expires)."""

Result = Union[Tuple[int], Tuple[int, Any], Tuple[int, Any, Dict[str, str]]]
"""What a callback returns: ``(code, body)``; ``(code,)`` or
``(code, body, headers)`` also do."""

Callback = Callable[[Request], Union[Result, Awaitable[Result]]]
"""A plain function or an ``async def`` taking the request."""

PathLike = Union[str, "os.PathLike[str]"]

_running: "weakref.WeakSet[KorvServer]" = weakref.WeakSet()

_CLEANUP_PATIENCE = 5.0
"""Seconds the async callbacks still running when a server stops get to
finish once cancelled."""


def _paths(name: str, value: Union[PathLike, Sequence[PathLike]]) -> List[str]:
    """One path or a list of paths, as a list of strings."""
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    try:
        paths = [os.fspath(item) for item in value]
    except TypeError:
        raise TypeError(
            f"{name} must be a path or a list of paths, not {type(value).__name__}"
        ) from None
    return paths


def _optional_path(name: str, value: Optional[PathLike]) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path, not {type(value).__name__}")
    return os.fspath(value)


class KorvServer:
    """An SSH server answering Korv requests with Python callbacks.

    >>> def hello(request):
    ...     return 200, {'msg': 'Hello World!'}
    >>> k = KorvServer(host_keys=['ssh_host_key'], authorized_client_keys='authorized_keys')
    >>> k.add_callback('GET', '/hello', hello)
    >>> k.start()  # doctest: +SKIP

    ``host_keys`` are OpenSSH private key files (unencrypted, mode 0600);
    ``authorized_client_keys`` is an OpenSSH authorized_keys file (re-read
    when it changes), or a list of public key lines. The server listens on
    ``host``:``port`` (all interfaces, 8022 by default; port 0 picks a free
    port, which :attr:`port` then holds).

    Plain callbacks run on a pool of up to ``max_workers`` threads: requests
    that arrive together run one after another on one thread, under one
    hold of the GIL, and when queued requests go untaken for a millisecond
    (a callback sleeping or waiting on I/O) another thread takes them, so a
    slow callback holds up the others by about a millisecond or two at most.
    A thread left idle for 10 seconds ends (down to one), and with it its
    ``threading.local`` data. ``async def`` callbacks are awaited on the server's asyncio loop. The
    GIL is never held while waiting for the network.

    Keyword arguments beyond the original three: ``host``, ``max_workers``,
    ``request_timeout`` (seconds a callback has before the client gets a
    ``504``; ``None``: no limit), ``shutdown_grace`` (seconds in-flight
    requests get on shutdown), ``idle_timeout``, ``max_frame`` (bytes),
    ``max_in_flight`` (requests of one stream at once), ``max_connections``,
    ``tracebacks`` (whether a ``500`` carries the traceback), and for OpenSSH
    certificates ``trusted_user_ca_keys`` (a file of CA public keys whose
    user certificates log in), ``revoked_keys`` and ``host_certificate``.
    """

    VERBS = ("GET", "STORE", "UPDATE", "DELETE")
    """The four verbs a callback can be added for."""

    def __init__(
        self,
        port: int = 8022,
        host_keys: Union[PathLike, Sequence[PathLike]] = ["ssh_host_key"],  # noqa: B006 - the original's default
        authorized_client_keys: Union[PathLike, Sequence[str]] = "authorized_keys",
        *,
        host: str = "0.0.0.0",
        max_workers: int = 64,
        request_timeout: Optional[float] = 30.0,
        shutdown_grace: float = 10.0,
        idle_timeout: Optional[float] = 600.0,
        max_frame: Optional[int] = None,
        max_in_flight: Optional[int] = None,
        max_connections: Optional[int] = None,
        tracebacks: bool = True,
        trusted_user_ca_keys: Optional[PathLike] = None,
        revoked_keys: Optional[PathLike] = None,
        host_certificate: Optional[PathLike] = None,
    ) -> None:
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int from 0 to 65535, not {port!r}")
        if not isinstance(host, str):
            raise TypeError(f"host must be a str, not {type(host).__name__}")
        if not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be a positive int, not {max_workers!r}")
        self.port = port
        """The port: as given until the server starts, then the bound one."""
        self.host = host
        """The address listened on."""
        self._host_keys = _paths("host_keys", host_keys)
        if not self._host_keys:
            raise ValueError("host_keys is empty: the server needs a host key")
        if isinstance(authorized_client_keys, (str, os.PathLike)):
            authorized_file: Optional[str] = os.fspath(authorized_client_keys)
            authorized_lines = None
        else:
            authorized_file = None
            authorized_lines = list(authorized_client_keys)
            if not all(isinstance(line, str) for line in authorized_lines):
                raise TypeError(
                    "authorized_client_keys must be a path or a list of public key lines (str)"
                )
        self._authorized_file = authorized_file
        self._native = _korv.Server(
            host,
            port,
            self._host_keys,
            authorized_keys_file=authorized_file,
            authorized_keys=authorized_lines,
            max_workers=max_workers,
            tracebacks=tracebacks,
            request_timeout=request_timeout,
            shutdown_grace=shutdown_grace,
            idle_timeout=idle_timeout,
            max_frame=max_frame,
            max_in_flight=max_in_flight,
            max_connections=max_connections,
            trusted_user_ca_keys=_optional_path("trusted_user_ca_keys", trusted_user_ca_keys),
            revoked_keys=_optional_path("revoked_keys", revoked_keys),
            host_certificate=_optional_path("host_certificate", host_certificate),
        )
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_thread: Optional[threading.Thread] = None
        # The async callbacks running on the loop, touched on its thread only.
        self._jobs: Set[_Job] = set()
        self._started = False
        self._finished = False

    def add_callback(self, verb: str, resource: str, callback: Callback) -> None:
        """Configure a callable to execute when receiving a request with the
        given verb and resource combination.

        ``resource`` is a path such as ``/hello``; a segment ``{name}``
        captures that segment into ``request['params']['name']``
        (``/notes/{id}``). The callback gets the request dict and returns
        ``(code, body)``; it may be an ``async def``. An exception it raises
        is answered ``500`` with its ``message`` and ``traceback``. An
        ``async def`` callback whose request is abandoned is cancelled (its
        ``finally`` runs): at ``request_timeout`` (answered ``504``), when a
        shutdown's grace period ends (``503``), or when its client is gone.

        Raises ``ValueError`` for a verb other than ``GET``, ``STORE``,
        ``UPDATE`` and ``DELETE``, a malformed resource pattern, or a verb and
        resource that already have a callback; ``TypeError`` for a callback
        that is not callable.
        """
        if verb not in KorvServer.VERBS:
            raise ValueError(f"Verb must be one of {KorvServer.VERBS}")
        if not isinstance(resource, str):
            raise TypeError(f"resource must be a str, not {type(resource).__name__}")
        if not callable(callback):
            raise TypeError(f"callback must be callable, not {type(callback).__name__}")
        self._native.add_route(verb, resource, callback)

    @property
    def address(self) -> Tuple[str, int]:
        """``(host, port)`` listened on (the bound port once started)."""
        return self.host, self.port

    def start(self, block: bool = True) -> None:
        """Start the server.

        By default it serves until Ctrl-C (or SIGTERM, when nothing else
        handles it), then shuts down gracefully: new requests get ``503``,
        the ones in flight finish (within ``shutdown_grace``), and
        ``start()`` returns. With ``block=False`` it returns once the
        server listens; :meth:`stop` ends it.

        Raises :class:`korv.ServerError` when the server cannot start: a host
        key or the authorized keys missing or unusable, the port taken.
        """
        self._launch()
        if block:
            self._serve_until_stopped()

    def stop(self, timeout: Optional[float] = None) -> None:
        """Shut down gracefully and wait until done (at most ``timeout``
        seconds beyond the grace period when given)."""
        self._native.shutdown()
        if self._started:
            self._native.wait(timeout)
        self._finish()

    def __enter__(self) -> "KorvServer":
        self.start(block=False)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _launch(self) -> None:
        if self._started:
            raise RuntimeError("the server was already started")
        if self._authorized_file is not None and not os.path.isfile(self._authorized_file):
            raise ServerError(
                f"authorized_client_keys {self._authorized_file}: no such file "
                "(it lists the public keys of the clients allowed in, one per line, "
                "like ~/.ssh/authorized_keys)"
            )
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run_loop() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=run_loop, name="korv-asyncio", daemon=True)
        thread.start()
        ready.wait()
        self._loop, self._loop_thread = loop, thread
        try:
            host, port = self._native.start(functools.partial(_spawn, loop, self._jobs))
        except BaseException:
            self._stop_loop()
            self._native.close()
            raise
        self._started = True
        self.host, self.port = host, port
        _running.add(self)
        _log.info("korv server listening on %s:%d", host, port)

    def _serve_until_stopped(self) -> None:
        in_main = threading.current_thread() is threading.main_thread()
        previous = None
        if in_main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            previous = signal.signal(signal.SIGTERM, lambda signum, frame: self._native.shutdown())
        try:
            self._native.wait()
        except KeyboardInterrupt:
            _log.info("korv server shutting down (Ctrl-C)")
            self._native.shutdown()
            self._native.wait()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self._finish()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        _running.discard(self)
        self._native.close()
        self._stop_loop()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._loop_thread
        if loop is None or thread is None:
            return
        self._loop = self._loop_thread = None
        # Serving is over, so no answer can be sent any more: async callbacks
        # still running are cancelled, as the server cancels those of
        # requests it gave up on, and get a moment to clean up.
        cleanup = asyncio.run_coroutine_threadsafe(
            _cancel_jobs(self._jobs, _CLEANUP_PATIENCE), loop
        )
        try:
            cleanup.result(_CLEANUP_PATIENCE + 1.0)
        except Exception:  # noqa: BLE001 - stopping anyway
            _log.exception("cancelling the async callbacks still running")
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


class _Job:
    """One ``async def`` callback's awaitable on a server's loop. Touched
    only on the loop's thread."""

    __slots__ = ("task", "cancelled")

    def __init__(self) -> None:
        self.task: Optional["asyncio.Task[None]"] = None
        self.cancelled = False


def _spawn(
    loop: asyncio.AbstractEventLoop,
    jobs: Set[_Job],
    awaitable: Awaitable[Any],
    responder: Any,
) -> Callable[[], None]:
    """Awaits an ``async def`` callback's awaitable on the server's loop and
    answers through ``responder``. Called from a worker thread; returns the
    function, callable from any thread, that cancels the awaitable: the
    server calls it when nobody waits for the answer any more (the request
    timed out, a shutdown's grace period ended, or the client is gone)."""
    job = _Job()
    loop.call_soon_threadsafe(_start_task, loop, jobs, job, awaitable, responder)

    def cancel() -> None:
        try:
            loop.call_soon_threadsafe(_cancel, job)
        except RuntimeError:
            # The loop is closed: stopping it cancelled every job left.
            pass

    return cancel


def _start_task(
    loop: asyncio.AbstractEventLoop,
    jobs: Set[_Job],
    job: _Job,
    awaitable: Awaitable[Any],
    responder: Any,
) -> None:
    task = loop.create_task(_respond(awaitable, responder, job))
    job.task = task
    # The loop keeps only a weak reference to its tasks.
    jobs.add(job)
    task.add_done_callback(lambda _: jobs.discard(job))


def _cancel(job: _Job) -> None:
    job.cancelled = True
    if job.task is not None:
        # Scheduled after the task's first step, so that the callback has
        # started (and its ``finally`` will run) before it is cancelled.
        job.task.get_loop().call_soon(job.task.cancel)


async def _respond(awaitable: Awaitable[Any], responder: Any, job: _Job) -> None:
    try:
        result = await awaitable
    except asyncio.CancelledError as error:
        if job.cancelled:
            # Cancelled by the server: the request was answered already (504
            # or 503) or its client is gone.
            raise
        # The callback cancelled itself: a failure like any other.
        _fail(responder, error)
    except BaseException as error:  # noqa: BLE001 - every failure is a 500
        _fail(responder, error)
    else:
        responder.send(result)


def _fail(responder: Any, error: BaseException) -> None:
    # The traceback starts at the callback, without the awaiting frame.
    traceback = error.__traceback__.tb_next if error.__traceback__ else None
    responder.fail(error, traceback)


async def _cancel_jobs(jobs: Set[_Job], patience: float) -> None:
    """Cancels the jobs still running and gives them ``patience`` seconds to
    finish (their ``finally`` blocks and ``except CancelledError`` run)."""
    tasks = [job.task for job in list(jobs) if job.task is not None]
    for job in list(jobs):
        _cancel(job)
    if tasks:
        await asyncio.wait(tasks, timeout=patience)


@atexit.register
def _stop_running_servers() -> None:
    """Servers started with ``block=False`` stop when the program ends."""
    for server in list(_running):
        try:
            server.stop(timeout=5.0)
        except Exception:  # noqa: BLE001 - exiting anyway
            _log.exception("stopping a korv server at exit")
