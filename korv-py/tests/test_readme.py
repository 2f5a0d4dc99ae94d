"""The examples of the original korv 0.2.1 README, verbatim but for the key
paths, each run as its own program.

The server example listens on the default port 8022 of every interface; a
test must not, so its program starts with a prelude that changes the
defaults of KorvServer to 127.0.0.1 port 0 and logs the bound address. The
client example's prelude points its default port at that server and its
HOME at a folder whose .ssh/known_hosts trusts the server. The examples'
own lines are untouched.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import Keys

# The original README's server example; only the two key paths are filled in.
README_SERVER = '''
from korv import KorvServer


def hello(request):
    """Callback for the /hello endpoint"""

    return 200, {'msg': 'Hello World!'}

def echo(request):
    """Callback for the /echo endpoint"""

    return 200, {'msg': f'{request}'}


# Create a server
k = KorvServer(host_keys=['PATH_TO_YOUR_SERVER_PRIVATE_KEY'], authorized_client_keys='PATH_TO_YOUR_AUTHORIZED_PUBLIC_KEYS')

# Register the callbacks
k.add_callback('GET', '/hello', hello)
k.add_callback('GET', '/echo', echo)

# Start listening for requests
k.start()
'''

# The original README's client example, as a program (without the prompts);
# only the key path is filled in.
README_CLIENT = """
from korv import KorvClient

# Create the client
k = KorvClient(client_keys=['PATH_TO_YOUR_CLIENTS_PRIVATE_KEY'])

# Issue a GET request and print the output
k.get('/hello', callback=lambda response: print(response['body']))
"""

SERVER_PRELUDE = """
import logging, signal, sys
# Ctrl-C raises KeyboardInterrupt even when the suite was started from a
# shell without job control (`cmd &`), whose children ignore SIGINT.
signal.signal(signal.SIGINT, signal.default_int_handler)
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
import korv
# Tests listen on 127.0.0.1 port 0, not on every interface's port 8022.
korv.KorvServer.__init__.__defaults__ = (0,) + korv.KorvServer.__init__.__defaults__[1:]
korv.KorvServer.__init__.__kwdefaults__["host"] = "127.0.0.1"
"""

CLIENT_PRELUDE = """
import korv
# The server of this test listens on port {port}.
defaults = list(korv.KorvClient.__init__.__defaults__)
defaults[1] = {port}
korv.KorvClient.__init__.__defaults__ = tuple(defaults)
"""


def with_paths(text: str, keys: Keys) -> str:
    return (
        text.replace("PATH_TO_YOUR_SERVER_PRIVATE_KEY", str(keys.host))
        .replace("PATH_TO_YOUR_AUTHORIZED_PUBLIC_KEYS", str(keys.authorized_keys))
        .replace("PATH_TO_YOUR_CLIENTS_PRIVATE_KEY", str(keys.client))
    )


def start_readme_server(keys: Keys) -> "tuple[subprocess.Popen[str], int]":
    program = textwrap.dedent(SERVER_PRELUDE) + with_paths(README_SERVER, keys)
    server = subprocess.Popen(
        [sys.executable, "-c", program],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stderr is not None
    for line in server.stderr:
        found = re.search(r"korv server listening on 127\.0\.0\.1:(\d+)", line)
        if found:
            return server, int(found.group(1))
    raise AssertionError(f"the server exited ({server.wait()}) without listening")


def stop(server: "subprocess.Popen[str]") -> int:
    server.send_signal(signal.SIGINT)
    return server.wait(timeout=30)


def client_home(keys: Keys, port: int) -> Path:
    """A HOME whose ~/.ssh/known_hosts trusts the server as localhost."""
    home = keys.folder / "home"
    (home / ".ssh").mkdir(parents=True)
    public = Path(f"{keys.host}.pub").read_text().split()
    (home / ".ssh" / "known_hosts").write_text(
        f"[localhost]:{port} {public[0]} {public[1]}\n"
    )
    return home


def test_the_readme_server_and_client_examples_run_unchanged(keys: Keys) -> None:
    server, port = start_readme_server(keys)
    try:
        program = CLIENT_PRELUDE.format(port=port) + with_paths(README_CLIENT, keys)
        client = subprocess.run(
            [sys.executable, "-c", program],
            env={**os.environ, "HOME": str(client_home(keys, port))},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert client.returncode == 0, client.stderr
        # The callback prints the body from the client's background thread;
        # the program ends only once it has.
        assert client.stdout == "{'msg': 'Hello World!'}\n"
    finally:
        assert stop(server) == 0


def test_the_readme_echo_callback_sees_the_request(keys: Keys) -> None:
    import korv

    server, port = start_readme_server(keys)
    try:
        keys.trust(port)
        with korv.KorvClient(
            host="127.0.0.1",
            port=port,
            client_keys=[str(keys.client)],
            known_hosts=str(keys.known_hosts),
        ) as client:
            response = client.get("/echo")
        assert response["code"] == 200
        message = response["body"]["msg"]
        assert "'verb': 'GET'" in message
        assert "'resource': '/echo'" in message
    finally:
        assert stop(server) == 0
