"""KorvServer: what callbacks receive and return, sync, async and slow
callbacks, exceptions and tracebacks, registration and start-up errors, and
the graceful shutdown."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Dict

import pytest

import korv
import korv.aio
from conftest import Keys, echo, hello


def fingerprint(public_key: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(public_key)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()[1]


def test_a_callback_gets_the_request_with_params_headers_and_client(make_server, make_client, keys):
    seen: Dict[str, Any] = {}

    def note(request):
        seen.update(request)
        return 201, {"stored": request["params"]["id"]}

    server = make_server([("STORE", "/users/{user}/notes/{id}", note)])
    client = make_client(server, user="alice")
    response = client.store("/users/bob/notes/7", {"text": "hi", "n": [1, 2.5, None, True]},
                            headers={"x-trace": "abc"})
    assert response["code"] == 201
    assert response["body"] == {"stored": "7"}
    assert isinstance(seen["id"], int)
    assert seen["verb"] == "STORE"
    assert seen["resource"] == "/users/bob/notes/7"
    assert seen["body"] == {"text": "hi", "n": [1, 2.5, None, True]}
    assert seen["headers"] == {"x-trace": "abc"}
    assert seen["params"] == {"user": "bob", "id": "7"}
    client_info = seen["client"]
    assert client_info["user"] == "alice"
    assert client_info["fingerprint"] == fingerprint(Path(f"{keys.client}.pub"))
    assert client_info["algorithm"] == "ssh-ed25519"
    assert client_info["comment"] == "client"
    assert client_info["peer"].startswith("127.0.0.1:")


def test_each_request_gets_its_own_client_dict(make_server, make_client, keys):
    # The server reuses what it built for the connection's last request:
    # what a callback does to its dict must not reach the next request.
    seen = []

    def meddle(request):
        seen.append(dict(request["client"]))
        request["client"]["user"] = "someone else"
        request["client"]["extra"] = True
        del request["client"]["fingerprint"]
        return 200, {}

    server = make_server([("GET", "/meddle", meddle)])
    client = make_client(server)
    for _ in range(3):
        assert client.get("/meddle")["code"] == 200
    assert len(seen) == 3
    assert seen[0] == seen[1] == seen[2]
    assert seen[0]["fingerprint"] == fingerprint(Path(f"{keys.client}.pub"))
    assert "extra" not in seen[2]


def test_every_verb_reaches_its_own_callback(make_server, make_client):
    def answer(verb):
        return lambda request: (200, {"verb": verb, "body": request["body"]})

    server = make_server([(verb, "/thing", answer(verb)) for verb in korv.KorvServer.VERBS])
    client = make_client(server)
    assert client.get("/thing")["body"] == {"verb": "GET", "body": None}
    assert client.store("/thing", {"a": 1})["body"] == {"verb": "STORE", "body": {"a": 1}}
    assert client.update("/thing", [1])["body"] == {"verb": "UPDATE", "body": [1]}
    assert client.delete("/thing")["body"] == {"verb": "DELETE", "body": None}


def test_what_a_callback_returns_becomes_the_response(make_server, make_client):
    routes = [
        ("GET", "/code-only", lambda r: (204,)),
        ("GET", "/list", lambda r: [200, ["a", ("b", 1)]]),
        ("GET", "/headers", lambda r: (200, {"ok": True}, {"x-served-by": "python"})),
        ("GET", "/keys", lambda r: (200, {1: "int", 2.5: "float", False: "bool", None: "none"})),
        ("GET", "/big", lambda r: (200, {"big": 2**64 - 1, "small": -(2**63)})),
    ]
    server = make_server(routes)
    client = make_client(server)
    assert client.get("/code-only")["code"] == 204
    assert client.get("/code-only")["body"] is None
    assert client.get("/list")["body"] == ["a", ["b", 1]]
    response = client.get("/headers")
    assert response["headers"] == {"x-served-by": "python"}
    assert client.get("/keys")["body"] == {"1": "int", "2.5": "float", "false": "bool", "null": "none"}
    assert client.get("/big")["body"] == {"big": 2**64 - 1, "small": -(2**63)}


def test_an_unknown_resource_is_404_and_a_wrong_verb_405(make_server, make_client):
    server = make_server([("GET", "/hello", hello)])
    client = make_client(server)
    assert client.get("/nope")["code"] == 404
    wrong = client.delete("/hello")
    assert wrong["code"] == 405
    assert "message" in wrong["body"]


def raise_value_error(request):
    raise ValueError("the value is wrong")


async def raise_in_async(request):
    await asyncio.sleep(0)
    raise KeyError("missing")


def raise_chained(request):
    try:
        {}["key"]
    except KeyError as cause:
        raise RuntimeError("lookup failed") from cause


def test_an_exception_is_a_500_with_message_and_traceback(make_server, make_client):
    server = make_server(
        [
            ("GET", "/sync", raise_value_error),
            ("GET", "/async", raise_in_async),
            ("GET", "/chained", raise_chained),
        ]
    )
    client = make_client(server)

    response = client.get("/sync")
    assert response["code"] == 500
    assert response["body"]["message"] == "the value is wrong"
    lines = response["body"]["traceback"]
    assert lines[0] == "Traceback (most recent call last):\n"
    assert any("in raise_value_error" in line for line in lines)
    assert any('raise ValueError("the value is wrong")' in line for line in lines)
    assert lines[-1] == "ValueError: the value is wrong\n"

    response = client.get("/async")
    assert response["code"] == 500
    assert response["body"]["message"] == "'missing'"
    lines = response["body"]["traceback"]
    assert "in raise_in_async" in lines[1]
    assert lines[-1] == "KeyError: 'missing'\n"
    # The awaiting frame inside korv is left out.
    assert not any("_respond" in line for line in lines)

    lines = client.get("/chained")["body"]["traceback"]
    assert lines[-1] == "RuntimeError: lookup failed\n"
    assert any("direct cause" in line for line in lines)
    assert "KeyError: 'key'\n" in lines


def test_the_traceback_is_python_s_own_format_exception(make_server, make_client):
    import traceback

    server = make_server([("GET", "/sync", raise_value_error)])
    client = make_client(server)
    try:
        raise_value_error({})
    except ValueError as error:
        expected = traceback.format_exception(type(error), error, error.__traceback__.tb_next)
    assert client.get("/sync")["body"]["traceback"] == expected


def test_a_bad_return_value_is_a_500_that_says_why(make_server, make_client):
    routes = [
        ("GET", "/set", lambda r: (200, {1, 2})),
        ("GET", "/none", lambda r: None),
        ("GET", "/code", lambda r: ("200", {})),
        ("GET", "/range", lambda r: (999, {})),
        ("GET", "/nan", lambda r: (200, float("nan"))),
        ("GET", "/four", lambda r: (200, {}, {}, {})),
    ]
    server = make_server(routes)
    client = make_client(server)
    messages = {path: client.get(path) for _, path, _ in routes}
    for response in messages.values():
        assert response["code"] == 500
    assert messages["/set"]["body"]["message"] == "Object of type set is not JSON serializable"
    assert messages["/none"]["body"]["message"] == "a callback must return (code, body), not NoneType"
    assert messages["/code"]["body"]["message"] == "the status code must be an int, not str"
    assert messages["/range"]["body"]["message"] == "status code 999 is outside 100..=599"
    assert "not JSON compliant" in messages["/nan"]["body"]["message"]
    assert "not 4 items" in messages["/four"]["body"]["message"]


def test_tracebacks_can_be_turned_off(make_server, make_client):
    server = make_server([("GET", "/sync", raise_value_error)], tracebacks=False)
    response = make_client(server).get("/sync")
    assert response["code"] == 500
    assert response["body"] == {"message": "internal server error"}


def test_an_async_callback_is_awaited_on_the_server_s_loop(make_server, make_client):
    loops = []

    async def answer(request):
        loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0)
        return 200, {"async": True}

    server = make_server([("GET", "/async", answer)])
    client = make_client(server)
    assert client.get("/async")["body"] == {"async": True}
    assert client.get("/async")["body"] == {"async": True}
    assert len(loops) == 2 and loops[0] is loops[1]


def test_a_sync_callback_runs_on_a_worker_thread_not_the_loop(make_server, make_client):
    threads = []

    def answer(request):
        threads.append(threading.current_thread().name)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return 200, {"on_loop": False}
        return 200, {"on_loop": True}

    server = make_server([("GET", "/sync", answer)])
    assert make_client(server).get("/sync")["body"] == {"on_loop": False}
    assert threads[0].startswith("korv-worker-")


def aio_client(port: int, keys: Keys) -> korv.aio.KorvClient:
    """An asyncio client of the test server on `port`, trusting its key."""
    return korv.aio.KorvClient(
        host="127.0.0.1",
        port=port,
        client_keys=[str(keys.client)],
        known_hosts=str(keys.known_hosts),
    )


async def gather_gets(port: int, keys: Keys, resource: str, count: int):
    async with aio_client(port, keys) as client:
        started = time.perf_counter()
        responses = await asyncio.gather(*(client.get(resource) for _ in range(count)))
        return time.perf_counter() - started, responses


def test_64_slow_sync_callbacks_run_at_once(make_server, keys):
    def slow(request):
        time.sleep(0.1)
        return 200, {"slept": 0.1}

    server = make_server([("GET", "/slow", slow)])
    elapsed, responses = asyncio.run(gather_gets(server.port, keys, "/slow", 64))
    assert [r["code"] for r in responses] == [200] * 64
    # One after another they would take 6.4 s.
    assert elapsed < 3.0, elapsed


def test_64_slow_async_callbacks_run_at_once(make_server, keys):
    async def slow(request):
        await asyncio.sleep(0.1)
        return 200, {"slept": 0.1}

    server = make_server([("GET", "/slow", slow)])
    elapsed, responses = asyncio.run(gather_gets(server.port, keys, "/slow", 64))
    assert [r["code"] for r in responses] == [200] * 64
    assert elapsed < 3.0, elapsed


def test_a_blocked_callback_holds_up_no_other(make_server, make_client):
    entered = threading.Event()
    release = threading.Event()

    def blocked(request):
        entered.set()
        release.wait(30)
        return 200, {"released": True}

    async def async_hello(request):
        return 200, {"async": True}

    server = make_server(
        [("GET", "/blocked", blocked), ("GET", "/hello", hello), ("GET", "/async", async_hello)]
    )
    client = make_client(server)
    answers = []
    client.get("/blocked", callback=answers.append)
    assert entered.wait(30)
    assert client.get("/hello")["body"] == {"msg": "Hello World!"}
    assert client.get("/async")["body"] == {"async": True}
    assert answers == []
    release.set()
    assert client.wait(30)
    assert answers[0]["body"] == {"released": True}


async def gather_resources(port: int, keys: Keys, resources):
    """GETs every resource at once over one connection; the responses in order."""
    async with aio_client(port, keys) as client:
        return await asyncio.gather(*(client.get(resource) for resource in resources))


def test_a_callback_raising_in_a_burst_fails_only_its_own_request(make_server, keys):
    # Requests that arrive together run one after another on one worker
    # thread: an exception must end its own request only.
    def maybe(request):
        n = int(request["params"]["n"])
        if n % 3 == 0:
            raise ValueError(f"no {n}")
        return 200, {"n": n}

    server = make_server([("GET", "/maybe/{n}", maybe)])
    count = 300
    responses = asyncio.run(
        gather_resources(server.port, keys, [f"/maybe/{n}" for n in range(count)])
    )
    for n, response in enumerate(responses):
        if n % 3 == 0:
            assert response["code"] == 500, (n, response)
            assert response["body"]["message"] == f"no {n}"
            assert response["body"]["traceback"][-1] == f"ValueError: no {n}\n"
        else:
            assert response["code"] == 200, (n, response)
            assert response["body"] == {"n": n}


def test_a_blocked_callback_holds_up_no_burst_behind_it(make_server, make_client, keys):
    # The blocked callback occupies the worker thread that drains the
    # queue; the burst behind it must get another thread, and be answered
    # while the first is still blocked.
    entered = threading.Event()
    release = threading.Event()

    def blocked(request):
        entered.set()
        release.wait(30)
        return 200, {"released": release.is_set()}

    server = make_server([("GET", "/blocked", blocked), ("GET", "/hello", hello)])
    client = make_client(server)
    answers = []
    client.get("/blocked", callback=answers.append)
    assert entered.wait(30)
    started = time.perf_counter()
    responses = asyncio.run(gather_resources(server.port, keys, ["/hello"] * 64))
    elapsed = time.perf_counter() - started
    assert [r["body"] for r in responses] == [{"msg": "Hello World!"}] * 64
    assert not release.is_set() and answers == []
    # Connecting takes most of it; waiting for the blocked one would be 30 s.
    assert elapsed < 10, elapsed
    release.set()
    assert client.wait(30)
    assert answers[0]["body"] == {"released": True}


FIRST_BURST = """
import asyncio, sys
import korv, korv.aio

host_key, authorized_keys, known_hosts, client_key = sys.argv[1:5]

def echo(request):
    return 200, {"n": request["body"]["n"], "user": request["client"]["user"]}

server = korv.KorvServer(port=0, host="127.0.0.1", host_keys=[host_key], authorized_client_keys=authorized_keys)
server.add_callback("STORE", "/echo", echo)
server.start(block=False)
public = open(host_key + ".pub").read().split()
with open(known_hosts, "a") as known:
    known.write(f"[127.0.0.1]:{server.port} {public[0]} {public[1]}\\n")

async def main():
    async with korv.aio.KorvClient(
        host="127.0.0.1", port=server.port, client_keys=[client_key], known_hosts=known_hosts
    ) as client:
        return await asyncio.gather(*(client.store("/echo", {"n": n}) for n in range(3000)))

responses = asyncio.run(main())
assert [r["body"]["n"] for r in responses] == list(range(3000))
server.stop()
print("answered", len(responses))
"""


def test_a_fresh_process_answers_its_first_burst_of_requests(keys):
    # The server's first requests in a process, several callback threads
    # at once and an asyncio client in the same process: the first use of
    # the interned dict keys lets the GIL go in the middle of building a
    # request's dict, and no thread may wait then for a lock another holds
    # while it waits for the GIL (that hung the server at times). Each run
    # is a new process; a hang is a timeout.
    for _ in range(3):
        ran = subprocess.run(
            [
                sys.executable, "-c", textwrap.dedent(FIRST_BURST), str(keys.host),
                str(keys.authorized_keys), str(keys.known_hosts), str(keys.client),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout == "answered 3000\n"


def test_a_callback_past_the_request_timeout_is_answered_504(make_server, make_client):
    release = threading.Event()

    def stuck(request):
        release.wait(30)
        return 200, {}

    server = make_server([("GET", "/stuck", stuck)], request_timeout=0.2)
    try:
        assert make_client(server).get("/stuck")["code"] == 504
    finally:
        release.set()


class Stuck:
    """An ``async def`` callback that waits far longer than any test, and
    records whether it was cancelled and whether its ``finally`` ran."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled = threading.Event()
        self.cleaned_up = threading.Event()

    async def __call__(self, request):
        self.started.set()
        try:
            await asyncio.sleep(120)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        finally:
            self.cleaned_up.set()
        return 200, {"finished": True}


def test_an_async_callback_past_the_request_timeout_is_cancelled(make_server, make_client):
    stuck = Stuck()
    server = make_server([("GET", "/stuck", stuck)], request_timeout=0.3)
    response = make_client(server).get("/stuck")
    assert response["code"] == 504
    assert stuck.cancelled.wait(30), "the callback was not cancelled after the 504"
    assert stuck.cleaned_up.wait(30)


def test_an_async_callback_whose_client_is_gone_is_cancelled(make_server, korv_bin, keys):
    stuck = Stuck()
    server = make_server([("GET", "/stuck", stuck)])
    caller = subprocess.Popen(
        [
            korv_bin, "get", "/stuck", "--host", "127.0.0.1", "--port", str(server.port),
            "-i", str(keys.client), "--known-hosts", str(keys.known_hosts),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert stuck.started.wait(60), "the request never reached the callback"
    finally:
        caller.kill()
        caller.wait(30)
    assert stuck.cancelled.wait(30), "the callback was not cancelled when its client went away"


def test_an_async_callback_still_running_after_the_shutdown_grace_is_cancelled(make_server, make_client):
    stuck = Stuck()
    server = make_server([("GET", "/stuck", stuck)], shutdown_grace=0.3)
    client = make_client(server)
    answers = []
    client.get("/stuck", callback=answers.append)
    assert stuck.started.wait(30)
    server.stop()
    # Cancelled, and its clean-up done, by the time stop() returns.
    assert stuck.cancelled.is_set()
    assert stuck.cleaned_up.is_set()
    assert client.wait(30)
    assert answers[0]["code"] == 503


def test_an_async_callback_that_cancels_itself_is_a_500(make_server, make_client):
    async def gives_up(request):
        raise asyncio.CancelledError("gave up")

    server = make_server([("GET", "/gives-up", gives_up)])
    response = make_client(server).get("/gives-up")
    assert response["code"] == 500
    assert response["body"]["message"] == "gave up"


def test_add_callback_refuses_other_verbs_like_the_original():
    server = korv.KorvServer(port=0, host_keys=["unused"], authorized_client_keys="unused")
    with pytest.raises(ValueError, match=r"Verb must be one of \('GET', 'STORE', 'UPDATE', 'DELETE'\)"):
        server.add_callback("POST", "/hello", hello)
    with pytest.raises(ValueError, match="Verb must be one of"):
        server.add_callback("get", "/hello", hello)


def test_add_callback_refuses_bad_patterns_duplicates_and_non_callables():
    server = korv.KorvServer(port=0, host_keys=["unused"], authorized_client_keys="unused")
    with pytest.raises(ValueError, match="must start with '/'"):
        server.add_callback("GET", "hello", hello)
    with pytest.raises(ValueError, match="capture"):
        server.add_callback("GET", "/users/{id", hello)
    server.add_callback("GET", "/hello", hello)
    with pytest.raises(ValueError, match="already registered"):
        server.add_callback("GET", "/hello", echo)
    with pytest.raises(TypeError, match="callback must be callable, not dict"):
        server.add_callback("GET", "/other", {})
    with pytest.raises(TypeError, match="resource must be a str"):
        server.add_callback("GET", b"/bytes", hello)


def test_wrong_server_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="port must be an int from 0 to 65535"):
        korv.KorvServer(port=70000)
    with pytest.raises(ValueError, match="port must be an int"):
        korv.KorvServer(port="8022")
    with pytest.raises(TypeError, match="host_keys must be a path or a list of paths, not int"):
        korv.KorvServer(host_keys=5)
    with pytest.raises(ValueError, match="host_keys is empty"):
        korv.KorvServer(host_keys=[])
    with pytest.raises(ValueError, match="not an OpenSSH public key line"):
        korv.KorvServer(host_keys=["k"], authorized_client_keys=["not a key"])
    with pytest.raises(ValueError, match="request_timeout must be a non-negative number"):
        korv.KorvServer(host_keys=["k"], request_timeout=-1)
    with pytest.raises(ValueError, match="max_workers must be a positive int"):
        korv.KorvServer(host_keys=["k"], max_workers=0)


def test_a_missing_host_key_is_a_server_error_naming_it(keys):
    server = korv.KorvServer(
        port=0,
        host="127.0.0.1",
        host_keys=[str(keys.folder / "no_such_key")],
        authorized_client_keys=str(keys.authorized_keys),
    )
    with pytest.raises(korv.ServerError, match=r"host key .*no_such_key: cannot read it"):
        server.start(block=False)


def test_a_host_key_others_can_read_is_refused(keys):
    os.chmod(keys.host, 0o644)
    server = korv.KorvServer(
        port=0, host="127.0.0.1", host_keys=[str(keys.host)],
        authorized_client_keys=str(keys.authorized_keys),
    )
    with pytest.raises(korv.ServerError, match=r"too open.*chmod 600"):
        server.start(block=False)


def test_a_file_that_is_no_private_key_is_refused(keys):
    server = korv.KorvServer(
        port=0, host="127.0.0.1", host_keys=[str(keys.authorized_keys)],
        authorized_client_keys=str(keys.authorized_keys),
    )
    os.chmod(keys.authorized_keys, 0o600)
    with pytest.raises(korv.ServerError, match="not a usable unencrypted OpenSSH private key"):
        server.start(block=False)


def test_missing_authorized_keys_is_a_server_error(keys):
    server = korv.KorvServer(
        port=0, host="127.0.0.1", host_keys=[str(keys.host)],
        authorized_client_keys=str(keys.folder / "nobody"),
    )
    with pytest.raises(korv.ServerError, match=r"authorized_client_keys .*nobody: no such file"):
        server.start(block=False)


def test_a_port_in_use_is_a_server_error(keys):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        server = korv.KorvServer(
            port=taken.getsockname()[1], host="127.0.0.1", host_keys=[str(keys.host)],
            authorized_client_keys=str(keys.authorized_keys),
        )
        with pytest.raises(korv.ServerError, match="cannot listen on 127.0.0.1"):
            server.start(block=False)
    finally:
        taken.close()


def test_authorized_keys_may_be_given_as_lines(keys, make_client):
    line = Path(f"{keys.client}.pub").read_text()
    server = korv.KorvServer(
        port=0, host="127.0.0.1", host_keys=[str(keys.host)], authorized_client_keys=[line]
    )
    server.add_callback("GET", "/hello", hello)
    with server:
        keys.trust(server.port)
        assert make_client(server).get("/hello")["code"] == 200


def test_callbacks_are_added_before_start(make_server):
    server = make_server([("GET", "/hello", hello)])
    with pytest.raises(RuntimeError, match="before the server starts"):
        server.add_callback("GET", "/late", hello)
    with pytest.raises(RuntimeError, match="already started"):
        server.start(block=False)


def test_shutdown_answers_503_to_new_requests_and_lets_in_flight_ones_finish(make_server, make_client):
    entered = threading.Event()
    release = threading.Event()

    def slow(request):
        entered.set()
        release.wait(30)
        return 200, {"finished": True}

    server = make_server([("GET", "/slow", slow), ("GET", "/hello", hello)])
    client = make_client(server)
    answers = []
    client.get("/slow", callback=answers.append)
    assert entered.wait(30)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    # The shutdown has begun once new requests are refused.
    refused = until_refused(client)
    assert refused["code"] == 503
    assert stopper.is_alive()
    release.set()
    stopper.join(30)
    assert not stopper.is_alive()
    assert client.wait(30)
    assert answers[0]["code"] == 200
    assert answers[0]["body"] == {"finished": True}


def until_refused(client: korv.KorvClient, seconds: float = 30.0) -> "dict":
    """GET /hello until the answer is not a 200 (a server shutting down
    answers 503), for at most `seconds`."""
    deadline = time.monotonic() + seconds
    refused = client.get("/hello")
    while refused["code"] == 200:
        assert time.monotonic() < deadline, f"still answering 200 after {seconds} s"
        refused = client.get("/hello")
    return refused


CTRL_C_SERVER = """
import logging, signal, sys
# Ctrl-C raises KeyboardInterrupt even when the suite was started from a
# shell without job control (`cmd &`), whose children ignore SIGINT.
signal.signal(signal.SIGINT, signal.default_int_handler)
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
import korv

def slow(request):
    print("slow started", flush=True)
    sys.stdin.readline()  # the test says when to finish
    return 200, {"finished": True}

def hello(request):
    return 200, {"msg": "Hello World!"}

k = korv.KorvServer(port=0, host="127.0.0.1", host_keys=[sys.argv[1]], authorized_client_keys=sys.argv[2])
k.add_callback("STORE", "/slow", slow)
k.add_callback("GET", "/hello", hello)
k.start()
print("start returned", flush=True)
"""


def test_ctrl_c_stops_start_gracefully(keys, tmp_path):
    server = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CTRL_C_SERVER), str(keys.host), str(keys.authorized_keys)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None and server.stdout is not None
        port = None
        for line in server.stderr:
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
                break
        assert port is not None
        keys.trust(port)
        client = korv.KorvClient(
            host="127.0.0.1", port=port, client_keys=[str(keys.client)],
            known_hosts=str(keys.known_hosts),
        )
        answers = []
        client.store("/slow", {}, callback=answers.append)
        assert server.stdout.readline() == "slow started\n"
        server.send_signal(signal.SIGINT)
        refused = until_refused(client)
        assert refused["code"] == 503
        assert answers == []
        assert server.stdin is not None
        server.stdin.write("finish\n")
        server.stdin.flush()
        assert client.wait(30)
        assert answers[0]["code"] == 200 and answers[0]["body"] == {"finished": True}
        assert server.wait(30) == 0
        assert server.stdout.read() == "start returned\n"
        client.close()
    finally:
        if server.poll() is None:
            server.kill()


@pytest.mark.parametrize(
    "validity", [None, "-1h:+1h", "always:+1h", "-1h:forever"], ids=["forever", "window", "from-always", "no-expiry"]
)
def test_a_certificate_login_shows_in_the_request(keys, make_client, validity):
    """Both ends of the validity window are Unix timestamps; an open end
    (OpenSSH's "always" and "forever") is None."""
    from conftest import keygen

    ca = keygen(keys.folder, "ca")
    window = [] if validity is None else ["-V", validity]
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(ca), "-I", "alice-laptop", "-n", "alice", "-z", "42",
         *window, f"{keys.client}.pub"],
        check=True,
    )
    trusted = keys.folder / "trusted_user_ca_keys"
    trusted.write_text(Path(f"{ca}.pub").read_text())
    server = korv.KorvServer(
        port=0, host="127.0.0.1", host_keys=[str(keys.host)], authorized_client_keys=[],
        trusted_user_ca_keys=str(trusted),
    )
    server.add_callback("GET", "/whoami", lambda request: (200, request["client"]))
    with server:
        keys.trust(server.port)
        client = make_client(server, user="alice")
        seen = client.get("/whoami")["body"]
    certificate = seen["certificate"]
    assert seen["user"] == "alice"
    assert certificate["key_id"] == "alice-laptop"
    assert certificate["serial"] == 42
    assert certificate["principals"] == ["alice"]
    assert certificate["ca_fingerprint"] == fingerprint(Path(f"{ca}.pub"))
    now = time.time()
    if validity in (None, "always:+1h"):
        assert certificate["valid_after"] is None
    else:
        assert now - 3700 < certificate["valid_after"] <= now
    if validity in (None, "-1h:forever"):
        assert certificate["valid_before"] is None
    else:
        assert now < certificate["valid_before"] < now + 3700
