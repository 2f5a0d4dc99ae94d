"""Watches (protocol 1.1) from Python against `korv serve`: ``for event in
client.watch(...)``, ``async for`` in korv.aio, cancelling, refusals."""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
import subprocess
from typing import Iterator

import pytest

import korv
import korv.aio

from conftest import Keys


@pytest.fixture
def korv_serve(korv_bin: str, keys: Keys) -> Iterator[int]:
    """`korv serve` on 127.0.0.1 port 0; yields its port."""
    server = subprocess.Popen(
        [
            korv_bin, "serve", "--listen", "127.0.0.1:0",
            "--host-key", str(keys.host),
            "--authorized-keys", str(keys.authorized_keys),
            "--data", str(keys.folder / "store.redb"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stderr is not None
    port = None
    for line in server.stderr:
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if found:
            port = int(found.group(1))
            break
    assert port is not None, f"korv serve exited with {server.wait()}"
    keys.trust(port)
    try:
        yield port
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0


def client_args(port: int, keys: Keys) -> dict:
    return dict(
        host="127.0.0.1", port=port, client_keys=[str(keys.client)],
        known_hosts=str(keys.known_hosts), user="alice",
    )


def test_for_event_in_watch_yields_each_change_in_commit_order(korv_serve: int, keys: Keys):
    with korv.KorvClient(**client_args(korv_serve, keys)) as client:
        watch = client.watch("/notes/")
        # The watch is confirmed: every change from now on is reported.
        assert client.store("/notes/1", {"text": "a"})["code"] == 201
        assert client.store("/other/1", {"text": "x"})["code"] == 201
        assert client.update("/notes/1", {"text": "b"})["code"] == 200
        assert client.delete("/notes/1")["code"] == 200
        events = list(itertools.islice(watch, 3))
        assert events == [
            {"event": "stored", "resource": "/notes/1", "document": {"text": "a"}},
            {"event": "updated", "resource": "/notes/1", "document": {"text": "b"}},
            {"event": "deleted", "resource": "/notes/1", "document": {"text": "b"}},
        ]
        end = watch.cancel()
        assert end is not None and end["code"] == 410
        assert watch.end == end
        assert list(watch) == [], "a cancelled watch yields nothing more"


def test_a_refused_watch_raises_watch_refused_error(korv_serve: int, keys: Keys):
    with korv.KorvClient(**client_args(korv_serve, keys)) as client:
        with pytest.raises(korv.WatchRefusedError) as refused:
            client.watch("/hello")
        assert refused.value.response["code"] == 405
        assert refused.value.response["body"]["allow"] == ["GET"]
        assert isinstance(refused.value, korv.KorvError)


def test_async_for_over_a_watch(korv_serve: int, keys: Keys):
    async def main() -> None:
        async with korv.aio.KorvClient(**client_args(korv_serve, keys)) as client:
            watch = await client.watch("/notes/1")
            for text in ("a", "b"):
                code = (await client.store(f"/notes/{text}", {"text": text}))["code"]
                assert code == 201
            assert (await client.store("/notes/1", {"text": "one"}))["code"] == 201
            assert (await client.update("/notes/1", {"text": "two"}))["code"] == 200
            seen = []
            async for event in watch:
                seen.append((event["event"], event["document"]["text"]))
                if len(seen) == 2:
                    break
            assert seen == [("stored", "one"), ("updated", "two")]
            end = await watch.cancel()
            assert end is not None and end["code"] == 410
            # `async for` straight on client.watch(...) starts it too.
            with pytest.raises(korv.WatchRefusedError):
                async for _ in client.watch("/whoami"):
                    pass

    asyncio.run(main())
