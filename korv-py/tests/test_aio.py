"""korv.aio.KorvClient: awaitable requests, many in flight over one
connection, cancellation, and errors."""

from __future__ import annotations

import asyncio
import threading

import pytest

import korv
import korv.aio
from conftest import Keys, echo, hello


def aio_client(keys: Keys, port: int, **kwargs) -> korv.aio.KorvClient:
    return korv.aio.KorvClient(
        host="127.0.0.1", port=port, client_keys=[str(keys.client)],
        known_hosts=str(keys.known_hosts), **kwargs,
    )


def test_ten_thousand_concurrent_requests_each_get_their_own_answer(make_server, keys):
    server = make_server([("STORE", "/echo/{n}", echo)])

    async def main():
        async with aio_client(keys, server.port) as client:
            return await asyncio.gather(
                *(client.store(f"/echo/{n}", {"n": n}) for n in range(10_000))
            )

    responses = asyncio.run(main())
    assert len(responses) == 10_000
    for n, response in enumerate(responses):
        assert response["code"] == 200
        assert response["body"]["body"] == {"n": n}
        assert response["body"]["params"] == {"n": str(n)}
    assert len({response["request_id"] for response in responses}) == 10_000


def test_the_four_verbs_and_await_style_connect(make_server, keys):
    server = make_server([(verb, "/x", echo) for verb in korv.KorvServer.VERBS])

    async def main():
        client = await aio_client(keys, server.port)
        try:
            verbs = [
                (await client.get("/x"))["body"]["verb"],
                (await client.store("/x", {"a": 1}))["body"]["verb"],
                (await client.update("/x", {"a": 2}))["body"]["verb"],
                (await client.delete("/x"))["body"]["verb"],
            ]
            headers = (await client.get("/x", headers={"h": "v"}))["body"]["headers"]
        finally:
            await client.close()
        return verbs, headers

    verbs, headers = asyncio.run(main())
    assert verbs == ["GET", "STORE", "UPDATE", "DELETE"]
    assert headers == {"h": "v"}


def test_the_first_request_connects(make_server, keys):
    server = make_server()

    async def main():
        client = aio_client(keys, server.port)
        results = await asyncio.gather(*(client.get("/hello") for _ in range(10)))
        await client.close()
        return results

    assert [r["code"] for r in asyncio.run(main())] == [200] * 10


def test_a_cancelled_request_leaves_the_connection_usable(make_server, keys):
    entered = threading.Event()
    release = threading.Event()

    def stuck(request):
        entered.set()
        release.wait(30)
        return 200, {}

    server = make_server([("GET", "/stuck", stuck), ("GET", "/hello", hello)])

    async def main():
        async with aio_client(keys, server.port) as client:
            task = asyncio.ensure_future(client.get("/stuck"))
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, entered.wait, 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return await client.get("/hello")

    try:
        assert asyncio.run(main())["code"] == 200
    finally:
        release.set()


def test_errors_are_korv_errors(make_server, keys):
    server = make_server()
    keys.known_hosts.write_text("")

    async def unknown_host():
        async with aio_client(keys, server.port):
            pass

    with pytest.raises(korv.HostKeyUnknownError):
        asyncio.run(unknown_host())

    async def closed():
        client = await aio_client(keys, server.port, accept_new=True)
        await client.close()
        await client.get("/hello")

    with pytest.raises(korv.ConnectionClosedError):
        asyncio.run(closed())


def test_a_timeout_raises_request_timeout_error(make_server, keys):
    release = threading.Event()

    def stuck(request):
        release.wait(30)
        return 200, {}

    server = make_server([("GET", "/stuck", stuck)])

    async def main():
        async with aio_client(keys, server.port, timeout=0.2) as client:
            await client.get("/stuck")

    try:
        with pytest.raises(korv.RequestTimeoutError):
            asyncio.run(main())
    finally:
        release.set()
