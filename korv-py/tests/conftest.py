"""Fixtures: keys made by ssh-keygen in a temporary folder, a Python-hosted
server on 127.0.0.1 port 0, clients that trust it, and the `korv` binary."""

from __future__ import annotations

import faulthandler
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

import korv


def keygen(folder: Path, name: str, kind: str = "ed25519") -> Path:
    """A passphrase-less key pair `name` and `name.pub` (comment: the name)."""
    path = folder / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", name, "-f", str(path)],
        check=True,
    )
    return path


class Keys:
    """A host key, a client key and the authorized_keys that lets it in."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.host = keygen(folder, "host")
        self.client = keygen(folder, "client")
        self.authorized_keys = folder / "authorized_keys"
        self.authorized_keys.write_text(Path(f"{self.client}.pub").read_text())
        self.known_hosts = folder / "known_hosts"

    def trust(self, port: int, host: str = "127.0.0.1") -> Path:
        """Writes known_hosts with the host key for `[host]:port`."""
        public = Path(f"{self.host}.pub").read_text().split()
        with open(self.known_hosts, "a") as known:
            known.write(f"[{host}]:{port} {public[0]} {public[1]}\n")
        return self.known_hosts


# A test that runs this long is taken for hung: every thread's stack is
# dumped and the run ends (failing) instead of waiting forever. faulthandler
# does it from a thread of its own, so a hang that holds the GIL ends too.
# (pytest's own `faulthandler_timeout` would only dump, and faulthandler keeps
# one such timer: this one is the timer.)
TEST_TIMEOUT = 300

# The run's stderr, taken while pytest does not capture it, for the dump.
_stderr_fd: Optional[int] = None


def pytest_configure(config: pytest.Config) -> None:
    global _stderr_fd
    _stderr_fd = os.dup(sys.stderr.fileno())


@pytest.fixture(autouse=True)
def fail_a_hung_test() -> Iterator[None]:
    assert _stderr_fd is not None
    faulthandler.dump_traceback_later(TEST_TIMEOUT, exit=True, file=_stderr_fd)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


def hello(request: Dict[str, Any]) -> Any:
    return 200, {"msg": "Hello World!"}


def echo(request: Dict[str, Any]) -> Any:
    return 200, {
        "verb": request["verb"],
        "resource": request["resource"],
        "body": request["body"],
        "headers": request["headers"],
        "params": request["params"],
    }


@pytest.fixture
def make_server(keys: Keys) -> Iterator[Callable[..., korv.KorvServer]]:
    """Starts a server on 127.0.0.1 port 0 with `routes` ((verb, resource,
    callback) triples) in the background; stops it at the end of the test."""
    started: List[korv.KorvServer] = []

    def make(routes: Optional[list] = None, **kwargs: Any) -> korv.KorvServer:
        server = korv.KorvServer(
            port=0,
            host_keys=[str(keys.host)],
            authorized_client_keys=str(keys.authorized_keys),
            host="127.0.0.1",
            **kwargs,
        )
        for verb, resource, callback in routes or [("GET", "/hello", hello)]:
            server.add_callback(verb, resource, callback)
        server.start(block=False)
        started.append(server)
        keys.trust(server.port)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def make_client(keys: Keys) -> Iterator[Callable[..., korv.KorvClient]]:
    """Blocking clients of `server`, with the client key and known_hosts."""
    made: List[korv.KorvClient] = []

    def make(server: korv.KorvServer, **kwargs: Any) -> korv.KorvClient:
        client = korv.KorvClient(
            host="127.0.0.1",
            port=server.port,
            client_keys=[str(keys.client)],
            known_hosts=str(keys.known_hosts),
            **kwargs,
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def korv_binary() -> str:
    """The `korv` binary: $KORV_BIN (cargo xtask sets it), else built here."""
    path = os.environ.get("KORV_BIN")
    if path:
        return path
    root = Path(__file__).resolve().parents[2]
    subprocess.run(
        ["cargo", "build", "--quiet", "--package", "korv-cli", "--bin", "korv"],
        cwd=root,
        check=True,
    )
    metadata = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    )
    return str(Path(json.loads(metadata.stdout)["target_directory"]) / "debug" / "korv")


@pytest.fixture(scope="session")
def korv_bin() -> str:
    path = korv_binary()
    assert os.access(path, os.X_OK), f"no korv binary at {path}"
    return path


def python_with_korv() -> str:
    """The interpreter running the tests (it has korv installed)."""
    return sys.executable

