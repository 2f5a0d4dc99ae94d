"""korv 0.2.1's own KorvClient against our server: `korv serve`, and a server
made with the library (the `interop` example)."""

import secrets
import subprocess
import threading
import time
import uuid

import pytest

from conftest import CALL_TIMEOUT, binary
from legacy_client import LegacyClient


@pytest.fixture
def client(rust_server, keys):
    client = LegacyClient(rust_server.port, keys, keys.known_hosts(rust_server.port))
    yield client
    client.close()
    assert client.broken == [], "every message received is one gzip member of JSON"


def test_get_without_callback(client):
    before = time.time()
    answer = client.get_blocking("/hello")
    assert answer["code"] == 200
    assert answer["body"] == {"msg": "Hello World!"}
    # The request's id is the client's clock; the answer's is the server's.
    assert isinstance(answer["request_id"], float)
    assert isinstance(answer["id"], float)
    assert abs(answer["id"] - before) < 60


def test_get_with_callback(client):
    answer = client.call("GET", "/hello")
    assert answer["code"] == 200
    assert answer["body"] == {"msg": "Hello World!"}


def test_store_update_delete_with_callbacks(client):
    note = f"/notes/{uuid.uuid4().hex}"
    stored = client.call("STORE", note, {"text": "first"})
    assert stored["code"] == 201, stored
    updated = client.call("UPDATE", note, {"text": "final"})
    assert updated["code"] == 200, updated
    assert client.call("GET", note)["body"] == {"text": "final"}
    deleted = client.call("DELETE", note)
    assert deleted["code"] == 200, deleted
    assert client.call("GET", note)["code"] == 404


def test_not_found(client):
    answer = client.call("GET", f"/no/such/{uuid.uuid4().hex}")
    assert answer["code"] == 404
    assert isinstance(answer["body"]["message"], str)


def test_handler_error_is_a_500_with_a_traceback_string(client, rust_server):
    answer = client.call("GET", rust_server.failing)
    assert answer["code"] == 500
    assert isinstance(answer["body"]["message"], str)
    traceback = answer["body"]["traceback"]
    assert isinstance(traceback, str), "korv 0.2.1 sends the traceback as one string"
    assert rust_server.traceback_line in traceback
    assert "\n" in traceback, "one line per cause"


def test_body_of_20_kb(client):
    text = secrets.token_hex(10_000)
    answer = client.call("STORE", "/echo", {"text": text})
    assert answer["code"] == 200
    assert answer["body"]["body"] == {"text": text}


def test_200_requests_in_flight_each_answered_once(client):
    count = 200
    answers = {}
    lock = threading.Lock()
    done = threading.Event()

    def callback_for(n):
        def callback(response):
            with lock:
                answers.setdefault(n, []).append(response)
                if len(answers) == count:
                    done.set()
        return callback

    for n in range(count):
        if n % 2:
            client.send("STORE", "/echo", {"n": n}, callback_for(n))
        else:
            client.send("GET", "/hello", None, callback_for(n))
    assert done.wait(CALL_TIMEOUT), f"{len(answers)} of {count} answered"
    # One more round trip, so that a second answer to any of them would
    # have arrived by now.
    assert client.call("GET", "/hello")["code"] == 200
    assert all(len(got) == 1 for got in answers.values())
    for n, (answer,) in answers.items():
        assert answer["code"] == 200
        if n % 2:
            assert answer["body"]["body"] == {"n": n}
    ids = [message["request_id"] for message in client.messages]
    assert len(ids) == count + 1
    assert all(times == 1 for times in client.received.values()), "no id answered twice"


def test_answer_too_large_for_it_is_a_500(client):
    # Hex from a random source compresses to about half: 100 KB of it does
    # not fit in korv 0.2.1's packets of 32 KiB.
    text = secrets.token_hex(50_000)
    answer = client.call("GET", "/echo", {"text": text})
    assert answer["code"] == 500
    assert answer["body"] == {"message": "response too large for a korv 0.2.1 client"}
    # The stream goes on.
    assert client.call("GET", "/hello")["code"] == 200


def test_version_1_client_on_the_same_server_at_the_same_time(client, rust_server, keys):
    count = 20
    answered = []
    done = threading.Event()

    def callback(response):
        answered.append(response)
        if len(answered) == count:
            done.set()

    # Long enough for the version-1 call to run while they are in flight.
    slow = rust_server.slow.format(ms=5000)
    for _ in range(count):
        client.send("GET", slow, None, callback)
    version_1 = subprocess.run(
        [binary("KORV_BIN"), "get", "/hello", "--compact", "--host", "127.0.0.1",
         "--port", str(rust_server.port), "-i", str(keys.client_key),
         "--known-hosts", str(keys.known_hosts(rust_server.port))],
        capture_output=True, text=True, timeout=CALL_TIMEOUT,
    )
    assert version_1.returncode == 0, version_1.stderr
    assert '"Hello World!"' in version_1.stdout
    assert not done.is_set(), "the version-1 call ran while korv 0.2.1's were in flight"
    assert done.wait(CALL_TIMEOUT), f"{len(answered)} of {count} answered"
    assert all(answer["code"] == 200 for answer in answered)
