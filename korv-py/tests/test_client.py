"""KorvClient: blocking and callback requests, and every error as a Python
exception under korv.KorvError."""

from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path

import pytest

import korv
from conftest import Keys, echo, hello, keygen


def host_fingerprint(keys: Keys) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", f"{keys.host}.pub"],
        check=True, capture_output=True, text=True,
    ).stdout
    return out.split()[1]


def connect(keys: Keys, port: int, **kwargs) -> korv.KorvClient:
    options = dict(
        host="127.0.0.1", port=port, client_keys=[str(keys.client)],
        known_hosts=str(keys.known_hosts),
    )
    options.update(kwargs)
    return korv.KorvClient(**options)


def test_the_four_verbs_return_the_response_dict(make_server, make_client):
    server = make_server([(verb, "/notes/{id}", echo) for verb in korv.KorvServer.VERBS])
    client = make_client(server)
    stored = client.store("/notes/1", {"text": "hi"})
    assert set(stored) == {"request_id", "code", "body", "headers"}
    assert stored["code"] == 200
    assert stored["body"]["body"] == {"text": "hi"}
    assert client.update("/notes/1", {"text": "ho"})["body"]["verb"] == "UPDATE"
    assert client.get("/notes/1")["body"]["params"] == {"id": "1"}
    assert client.delete("/notes/1")["body"]["verb"] == "DELETE"
    # Each response carries the id of its own request.
    ids = [client.get("/notes/2")["request_id"] for _ in range(3)]
    assert len(set(ids)) == 3


def test_a_callback_is_called_from_a_background_thread(make_server, make_client):
    server = make_server([("GET", "/hello", hello), ("STORE", "/echo", echo)])
    client = make_client(server)
    got = []
    done = threading.Event()

    def callback(response):
        got.append((threading.current_thread().name, response))
        if len(got) == 2:
            done.set()

    assert client.get("/hello", callback=callback) is None
    assert client.store("/echo", {"n": 1}, callback=callback) is None
    assert done.wait(30)
    names = {name for name, _ in got}
    assert names == {"korv-callbacks-1"}
    bodies = sorted(str(response["body"]) for _, response in got)
    assert "{'msg': 'Hello World!'}" in bodies


def test_callbacks_still_due_run_before_close_returns(make_server, make_client):
    server = make_server([("GET", "/hello", hello)])
    client = make_client(server)
    got = []
    for _ in range(100):
        client.get("/hello", callback=got.append)
    client.close()
    assert len(got) == 100
    assert all(response["code"] == 200 for response in got)


def test_a_failed_request_goes_to_error_callback(make_server, make_client):
    release = threading.Event()

    def stuck(request):
        release.wait(30)
        return 200, {}

    server = make_server([("GET", "/stuck", stuck)])
    client = make_client(server, timeout=0.2)
    errors = []
    try:
        client.get("/stuck", callback=lambda response: None, error_callback=errors.append)
        assert client.wait(30)
    finally:
        release.set()
    assert isinstance(errors[0], korv.RequestTimeoutError)


def test_a_callback_that_raises_is_logged_and_the_next_still_runs(make_server, make_client, caplog):
    server = make_server([("GET", "/hello", hello)])
    client = make_client(server)
    got = []

    def broken(response):
        raise RuntimeError("callback bug")

    client.get("/hello", callback=broken)
    client.get("/hello", callback=got.append)
    assert client.wait(30)
    assert len(got) == 1
    assert any("callback bug" in str(record.exc_info[1]) for record in caplog.records if record.exc_info)


def test_an_unknown_host_key_is_refused_with_its_fingerprint(make_server, keys):
    server = make_server()
    keys.known_hosts.write_text("")
    with pytest.raises(korv.HostKeyUnknownError) as raised:
        connect(keys, server.port)
    error = raised.value
    assert isinstance(error, korv.KorvError)
    assert error.fingerprint == host_fingerprint(keys)
    assert error.host == f"[127.0.0.1]:{server.port}"
    assert error.known_hosts == str(keys.known_hosts)
    assert error.fingerprint in str(error)


def test_accept_new_records_an_unknown_host_key(make_server, keys):
    server = make_server()
    keys.known_hosts.write_text("")
    with connect(keys, server.port, accept_new=True) as client:
        assert client.get("/hello")["code"] == 200
    host_public = Path(f"{keys.host}.pub").read_text().split()[1]
    assert host_public in keys.known_hosts.read_text()
    with connect(keys, server.port) as client:
        assert client.get("/hello")["code"] == 200


def test_a_changed_host_key_is_refused_even_with_accept_new(make_server, keys):
    server = make_server()
    other = keygen(keys.folder, "other_host")
    public = Path(f"{other}.pub").read_text().split()
    keys.known_hosts.write_text(f"[127.0.0.1]:{server.port} {public[0]} {public[1]}\n")
    with pytest.raises(korv.HostKeyChangedError) as raised:
        connect(keys, server.port, accept_new=True)
    error = raised.value
    assert isinstance(error, korv.HostKeyError)
    assert error.fingerprint == host_fingerprint(keys)
    assert error.line == 1
    assert "HAS CHANGED" in str(error)


def test_a_key_the_server_does_not_know_is_refused(make_server, keys):
    server = make_server()
    stranger = keygen(keys.folder, "stranger")
    with pytest.raises(korv.AuthenticationError) as raised:
        connect(keys, server.port, client_keys=[str(stranger)], user="mallory")
    assert raised.value.user == "mallory"
    assert any("stranger" in key for key in raised.value.tried)
    assert isinstance(raised.value, PermissionError)


def test_a_missing_identity_file_names_the_path(make_server, keys):
    server = make_server()
    missing = keys.folder / "no_such_key"
    with pytest.raises(korv.IdentityError) as raised:
        connect(keys, server.port, client_keys=[str(missing)])
    assert raised.value.path == str(missing)
    assert str(missing) in str(raised.value)


def test_a_file_that_is_no_key_is_an_identity_error(make_server, keys):
    server = make_server()
    with pytest.raises(korv.IdentityError) as raised:
        connect(keys, server.port, client_keys=[str(keys.authorized_keys)])
    assert raised.value.path == str(keys.authorized_keys)


def test_nothing_listening_is_a_connect_error(keys):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(korv.ConnectError) as raised:
        connect(keys, port)
    assert isinstance(raised.value, ConnectionError)
    assert str(port) in raised.value.address


def test_no_answer_in_time_is_a_timeout_error(make_server, make_client):
    release = threading.Event()

    def stuck(request):
        release.wait(30)
        return 200, {}

    server = make_server([("GET", "/stuck", stuck), ("GET", "/hello", hello)])
    client = make_client(server, timeout=0.2)
    try:
        with pytest.raises(korv.RequestTimeoutError) as raised:
            client.get("/stuck")
        assert raised.value.timeout == pytest.approx(0.2)
        assert isinstance(raised.value, TimeoutError)
        # The connection is still good.
        assert client.get("/hello")["code"] == 200
    finally:
        release.set()


def test_a_closed_client_raises_connection_closed(make_server, make_client):
    server = make_server()
    client = make_client(server)
    client.close()
    assert client.closed
    with pytest.raises(korv.ConnectionClosedError):
        client.get("/hello")


def test_a_server_that_goes_away_closes_the_connection(make_server, make_client):
    server = make_server()
    client = make_client(server)
    assert client.get("/hello")["code"] == 200
    server.stop()
    with pytest.raises(korv.ConnectionClosedError):
        client.get("/hello")


def test_wrong_client_arguments_are_clear_errors(make_server, keys):
    server = make_server()
    with pytest.raises(ValueError, match="port must be an int from 1 to 65535"):
        korv.KorvClient(port=0)
    with pytest.raises(TypeError, match="client_keys must be a path or a list of paths"):
        korv.KorvClient(port=server.port, client_keys=5)
    with pytest.raises(TypeError, match="known_hosts must be a path, not list"):
        korv.KorvClient(port=server.port, known_hosts=["a"])
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
        korv.KorvClient(port=server.port, timeout=-1)
    client = connect(keys, server.port)
    try:
        with pytest.raises(TypeError, match="resource must be a str"):
            client.get(5)
        with pytest.raises(TypeError, match="Object of type set is not JSON serializable"):
            client.store("/hello", {1, 2})
        with pytest.raises(ValueError, match="Out of range float"):
            client.store("/hello", {"x": float("inf")})
        with pytest.raises(TypeError, match="callback must be callable"):
            client.get("/hello", callback="print")
        with pytest.raises(TypeError, match=r"keys must be str, int, float, bool or None, not tuple"):
            client.store("/hello", {(1, 2): "tuple key"})
    finally:
        client.close()


def test_a_body_of_megabytes_goes_through(make_server, make_client):
    server = make_server([("STORE", "/echo", echo)])
    client = make_client(server)
    text = "x" * (3 * 1024 * 1024)
    response = client.store("/echo", {"text": text})
    assert response["code"] == 200
    assert response["body"]["body"]["text"] == text


def test_blocking_calls_from_many_threads_on_one_client_each_get_their_answer(
    make_server, make_client
):
    # A blocking call runs the connection on its own thread while it waits;
    # with several threads waiting at once, one runs it for all.
    server = make_server([("STORE", "/echo", echo)])
    client = make_client(server)
    wrong = []

    def caller(t):
        for i in range(100):
            response = client.store("/echo", {"t": t, "i": i})
            if response["code"] != 200 or response["body"]["body"] != {"t": t, "i": i}:
                wrong.append((t, i, response))

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a blocking call never returned"
    assert wrong == []
