"""Fixtures for the korv 0.2.1 interoperability tests.

Keys are made once per run with ssh-keygen. Servers (``korv serve``, the
``interop`` example server built on the library, korv 0.2.1's own server) run
as processes on 127.0.0.1, port 0; each prints the address it listens on,
which the fixtures wait for. ``cargo xtask test`` (or ``cargo xtask legacy``)
sets KORV_BIN and KORV_INTEROP_SERVER to the binaries it built.
"""

import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# How long a server may take to start, and a call to be answered.
START_TIMEOUT = 60.0
CALL_TIMEOUT = 30.0


def binary(variable):
    path = os.environ.get(variable)
    if not path or not Path(path).exists():
        pytest.fail(
            f"{variable} does not name a built binary ({path!r}); run the tests with "
            "`cargo xtask legacy` or `cargo xtask test`"
        )
    return path


@dataclass
class Keys:
    host_key: Path
    host_public: str
    client_key: Path
    authorized_keys: Path
    folder: Path

    def known_hosts(self, port):
        """A known_hosts file naming the host key for 127.0.0.1:port."""
        path = self.folder / f"known_hosts_{port}"
        path.write_text(f"[127.0.0.1]:{port} {self.host_public}\n")
        return path


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    for name in ("host", "client"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"korv-legacy-{name}",
             "-f", str(folder / name)],
            check=True,
        )
    authorized = folder / "authorized_keys"
    authorized.write_text((folder / "client.pub").read_text())
    public = " ".join((folder / "host.pub").read_text().split()[:2])
    return Keys(folder / "host", public, folder / "client", authorized, folder)


class Process:
    """A server process; its output is collected, its address read from it."""

    def __init__(self, name, argv, pattern, cwd=None):
        self.name = name
        self.lines = []
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
        )
        found = threading.Event()
        self.port = None

        def read():
            for line in self.proc.stdout:
                self.lines.append(line)
                match = re.search(pattern, line)
                if match and self.port is None:
                    self.port = int(match.group(1))
                    found.set()
            found.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        if not found.wait(START_TIMEOUT) or self.port is None:
            self.stop()
            raise RuntimeError(f"{name} did not start:\n{self.output()}")

    def output(self):
        return "".join(self.lines)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(5)


@dataclass
class Server:
    """A server under test, and the routes it offers for each case."""

    kind: str
    port: int
    process: Process
    # A GET that fails in the handler, answered 500 with a traceback.
    failing: str
    # The line the traceback must contain.
    traceback_line: str
    # A GET that answers after the given number of milliseconds.
    slow: str


def start_korv_serve(keys, tmp_path):
    argv = [
        binary("KORV_BIN"), "serve", "--listen", "127.0.0.1:0",
        "--host-key", str(keys.host_key), "--authorized-keys", str(keys.authorized_keys),
        "--data", str(tmp_path / "store.redb"),
    ]
    process = Process("korv serve", argv, r"listening on 127\.0\.0\.1:(\d+)")
    return Server("korv-serve", process.port, process, "/boom",
                  "the flux capacitor is not charged", "/delay/{ms}")


def start_interop(keys):
    argv = [binary("KORV_INTEROP_SERVER"), str(keys.host_key), str(keys.authorized_keys)]
    process = Process("interop server", argv, r"listening on 127\.0\.0\.1:(\d+)")
    return Server("library", process.port, process, "/fail", "the disk is full", "/slow/{ms}")


@pytest.fixture(params=["korv-serve", "library"])
def rust_server(request, keys, tmp_path):
    """Our server: `korv serve`, then a server made with the library."""
    if request.param == "korv-serve":
        server = start_korv_serve(keys, tmp_path)
    else:
        server = start_interop(keys)
    yield server
    server.process.stop()


@pytest.fixture
def legacy_server(keys):
    """korv 0.2.1's own KorvServer with its README's routes."""
    argv = [sys.executable, str(HERE / "sample_server.py"), str(keys.host_key),
            str(keys.authorized_keys)]
    process = Process("korv 0.2.1 server", argv, r"listening on 127\.0\.0\.1:(\d+)")
    yield process
    process.stop()
