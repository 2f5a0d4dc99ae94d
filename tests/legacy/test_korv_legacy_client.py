"""Our client in korv 0.2.1's format (`korv --legacy`, and `korv bench
--legacy` for many requests in flight) against korv 0.2.1's own KorvServer
with the routes of its README's sample server."""

import json
import subprocess

from conftest import CALL_TIMEOUT, binary


def korv(server, keys, *args):
    """Runs `korv ARGS --legacy` against `server`; returns the process."""
    argv = [binary("KORV_BIN"), *args, "--legacy", "--host", "127.0.0.1",
            "--port", str(server.port), "-i", str(keys.client_key),
            "--known-hosts", str(keys.known_hosts(server.port))]
    return subprocess.run(argv, capture_output=True, text=True, timeout=CALL_TIMEOUT)


def test_get_hello_prints_the_body_and_exits_0(legacy_server, keys):
    done = korv(legacy_server, keys, "get", "/hello", "--compact")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"msg": "Hello World!"}


def test_echo_sees_the_request_as_korv_0_2_1_sends_it(legacy_server, keys):
    done = korv(legacy_server, keys, "get", "/echo", "--compact")
    assert done.returncode == 0, done.stderr
    # The callback gets the request dict: our id is an integer, never 0,
    # and the body is there even when null.
    echoed = json.loads(done.stdout)["msg"]
    assert "'verb': 'GET'" in echoed and "'resource': '/echo'" in echoed
    assert "'body': None" in echoed
    assert "'id': 1," in echoed


def test_not_found_exits_4(legacy_server, keys):
    done = korv(legacy_server, keys, "get", "/nothing", "--compact", "-v")
    assert done.returncode == 4, done.stderr
    assert done.stdout.strip() == "null", "korv 0.2.1's 404 has no body"
    assert "404" in done.stderr


def test_an_exception_is_a_500_with_its_traceback_as_lines_and_exits_5(legacy_server, keys):
    done = korv(legacy_server, keys, "get", "/boom", "--compact")
    assert done.returncode == 5, done.stderr
    body = json.loads(done.stdout)
    assert body["message"] == "boom on purpose"
    # One string on the wire, split into lines as version 1 sends them.
    assert isinstance(body["traceback"], list)
    assert "RuntimeError: boom on purpose" in body["traceback"]


def test_store_gets_the_real_answer_after_korv_0_2_1s_stray_400(legacy_server, keys):
    # korv 0.2.1 answers a STORE twice: 400 with request_id 0 (a bug of its
    # own), then its real answer, here a 404 as no callback takes STORE.
    done = korv(legacy_server, keys, "store", "/hello", '{"text": "hi"}', "--compact")
    assert done.returncode == 4, done.stderr
    assert done.stdout.strip() == "null"


def test_a_hundred_requests_in_flight_are_all_answered(legacy_server, keys):
    done = korv(legacy_server, keys, "bench", "/hello", "--concurrency", "100",
                "--requests", "1000", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["concurrency"] == 100
    assert report["errors"] == 0, report
    assert report["answered"] == 1000
    assert report["codes"] == {"200": 1000}
