"""load.py, the korv 0.2.1 client load used for benchmarks, still runs."""

import json
import subprocess
import sys

from conftest import HERE


def run_load(server_port, keys, seconds):
    done = subprocess.run(
        [sys.executable, str(HERE / "load.py"), "--port", str(server_port),
         "--key", str(keys.client_key), "--known-hosts", str(keys.known_hosts(server_port)),
         "--concurrency", "16", "--seconds", str(seconds)],
        capture_output=True, text=True, timeout=seconds + 60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_load_against_our_server_and_korv_0_2_1s(rust_server, legacy_server, keys):
    for port in (rust_server.port, legacy_server.port):
        report = run_load(port, keys, 1)
        assert report["requests"] >= 16
        assert report["codes"] == {"200": report["requests"]}
        # The cipher every SSH row of the benchmark uses, not asyncssh's
        # own first choice (chacha20-poly1305).
        assert report["cipher"] == "aes128-gcm@openssh.com", report
