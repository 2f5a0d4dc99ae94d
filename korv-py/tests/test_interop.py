"""The Python package against the Rust side and OpenSSH: the Python client
against `korv serve`, the `korv` command line against a Python-hosted
server, and OpenSSH's `ssh` (the `korv` subsystem and `-W`) against a
Python-hosted server."""

from __future__ import annotations

import json
import re
import signal
import struct
import subprocess
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

import korv
from conftest import Keys, echo, hello


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


def test_the_python_client_calls_korv_serve(korv_serve: int, keys: Keys):
    with korv.KorvClient(
        host="127.0.0.1", port=korv_serve, client_keys=[str(keys.client)],
        known_hosts=str(keys.known_hosts), user="alice",
    ) as client:
        assert client.get("/hello")["body"] == {"msg": "Hello World!"}
        assert client.store("/notes/1", {"text": "hi"})["code"] == 201
        assert client.get("/notes/1")["body"] == {"text": "hi"}
        assert client.update("/notes/1", {"text": "ho"})["code"] == 200
        assert client.get("/notes/1")["body"] == {"text": "ho"}
        assert client.delete("/notes/1")["code"] == 200
        assert client.get("/notes/1")["code"] == 404
        boom = client.get("/boom")
        assert boom["code"] == 500
        assert boom["body"]["traceback"]
        whoami = client.get("/whoami")["body"]
        assert whoami["user"] == "alice"
        assert whoami["fingerprint"].startswith("SHA256:")


def test_the_python_client_uses_the_korv_subsystem_of_korv_serve(korv_serve: int, keys: Keys):
    with korv.KorvClient(
        host="127.0.0.1", port=korv_serve, client_keys=[str(keys.client)],
        known_hosts=str(keys.known_hosts), subsystem=True,
    ) as client:
        assert client.get("/hello")["body"] == {"msg": "Hello World!"}


def test_the_async_client_calls_korv_serve(korv_serve: int, keys: Keys):
    import asyncio

    import korv.aio

    async def main():
        async with korv.aio.KorvClient(
            host="127.0.0.1", port=korv_serve, client_keys=[str(keys.client)],
            known_hosts=str(keys.known_hosts),
        ) as client:
            return await asyncio.gather(
                *(client.store("/echo", {"n": n}) for n in range(500))
            )

    responses = asyncio.run(main())
    assert [response["body"]["body"] for response in responses] == [{"n": n} for n in range(500)]


def python_server_routes():
    def boom(request):
        raise ValueError("python says no")

    return [
        ("GET", "/hello", hello),
        ("STORE", "/echo/{id}", echo),
        ("GET", "/boom", boom),
    ]


def run_korv(korv_bin: str, keys: Keys, port: int, *args: str, stdin: str = "") -> Tuple[int, str, str]:
    done = subprocess.run(
        [
            korv_bin, *args,
            "--host", "127.0.0.1", "--port", str(port),
            "-i", str(keys.client), "--known-hosts", str(keys.known_hosts),
            "--compact",
        ],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout, done.stderr


def test_the_korv_command_line_calls_a_python_hosted_server(make_server, korv_bin: str, keys: Keys):
    server = make_server(python_server_routes())
    code, out, err = run_korv(korv_bin, keys, server.port, "get", "/hello")
    assert code == 0, err
    assert json.loads(out) == {"msg": "Hello World!"}

    code, out, err = run_korv(korv_bin, keys, server.port, "store", "/echo/9", '{"text":"hi"}',
                              "-H", "x-from:cli")
    assert code == 0, err
    body = json.loads(out)
    assert body["body"] == {"text": "hi"}
    assert body["params"] == {"id": "9"}
    assert body["headers"] == {"x-from": "cli"}

    code, out, err = run_korv(korv_bin, keys, server.port, "get", "/boom")
    assert code == 5
    body = json.loads(out)
    assert body["message"] == "python says no"
    assert body["traceback"][-1] == "ValueError: python says no\n"

    code, out, err = run_korv(korv_bin, keys, server.port, "get", "--subsystem", "/hello")
    assert code == 0, err
    assert json.loads(out) == {"msg": "Hello World!"}


def frame(request: dict) -> bytes:
    payload = json.dumps(request).encode()
    return struct.pack(">I", len(payload)) + payload


def responses(data: bytes) -> List[dict]:
    found = []
    while data:
        (length,) = struct.unpack(">I", data[:4])
        found.append(json.loads(data[4 : 4 + length]))
        data = data[4 + length :]
    return found


def openssh(keys: Keys, port: int, destination: List[str], frames: bytes) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "ssh", "-F", "/dev/null",
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={keys.known_hosts}",
            "-o", "IdentitiesOnly=yes",
            "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=10",
            "-p", str(port),
            "-i", str(keys.client),
            *destination,
        ],
        input=frames,
        capture_output=True,
        timeout=60,
    )


def test_openssh_reaches_a_python_hosted_server_through_the_korv_subsystem(make_server, keys: Keys):
    server = make_server(python_server_routes())
    frames = frame({"id": 1, "verb": "GET", "resource": "/hello"}) + frame(
        {"id": "two", "verb": "STORE", "resource": "/echo/2", "body": {"via": "ssh"}}
    )
    done = openssh(keys, server.port, ["-s", "alice@127.0.0.1", "korv"], frames)
    assert done.returncode == 0, done.stderr
    answers = {answer["request_id"]: answer for answer in responses(done.stdout)}
    assert answers[1]["code"] == 200
    assert answers[1]["body"] == {"msg": "Hello World!"}
    assert answers["two"]["body"]["body"] == {"via": "ssh"}


def test_openssh_reaches_a_python_hosted_server_through_direct_tcpip(make_server, keys: Keys):
    server = make_server(python_server_routes())
    frames = frame({"id": 7, "verb": "GET", "resource": "/boom"})
    done = openssh(keys, server.port, ["-W", "localhost:8022", "alice@127.0.0.1"], frames)
    assert done.returncode == 0, done.stderr
    [answer] = responses(done.stdout)
    assert answer["request_id"] == 7
    assert answer["code"] == 500
    assert answer["body"]["message"] == "python says no"


def test_openssh_with_a_stranger_s_key_is_refused(make_server, keys: Keys):
    from conftest import keygen

    server = make_server(python_server_routes())
    stranger = keygen(keys.folder, "stranger")
    keys.client = Path(stranger)
    done = openssh(keys, server.port, ["-s", "alice@127.0.0.1", "korv"], b"")
    assert done.returncode == 255
    assert done.stdout == b""
