"""OpenSSH's `ssh -W` carrying a gzip member made by hand: the bytes on the
wire, with no korv code on the client side."""

import gzip
import json
import subprocess
import zlib

from conftest import CALL_TIMEOUT
from legacy_client import one_member


def ssh_w(server, keys, payload):
    return subprocess.run(
        ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
         "-o", "StrictHostKeyChecking=yes",
         "-o", f"UserKnownHostsFile={keys.known_hosts(server.port)}",
         "-i", str(keys.client_key), "-p", str(server.port),
         "-W", "localhost:8022", "127.0.0.1"],
        input=payload, capture_output=True, timeout=CALL_TIMEOUT,
    )


def test_ssh_w_with_a_hand_made_gzip_member(rust_server, keys):
    text = '{"id":1764505207.123456,"verb":"GET","resource":"/hello","body":null}'
    member = gzip.compress(text.encode(), mtime=0)
    ssh = ssh_w(rust_server, keys, member)
    assert ssh.returncode == 0, ssh.stderr.decode(errors="replace")
    assert ssh.stdout[:2] == b"\x1f\x8b", ssh.stdout[:16]
    answer = one_member(ssh.stdout)
    content = gzip.decompress(ssh.stdout).decode()
    # The id comes back as the same JSON text.
    assert '"request_id":1764505207.123456,' in content, content
    assert answer["code"] == 200
    assert answer["body"] == {"msg": "Hello World!"}
    assert isinstance(answer["id"], float)


def test_ssh_w_with_two_members_and_a_broken_one(rust_server, keys):
    first = gzip.compress(b'{"id":1.5,"verb":"GET","resource":"/hello","body":null}')
    second = gzip.compress(b'{"id":2.5,"verb":"STORE","resource":"/echo","body":null}')
    not_json = gzip.compress(b'this is not JSON')
    ssh = ssh_w(rust_server, keys, first + second + not_json + first[:10])
    assert ssh.returncode == 0, ssh.stderr.decode(errors="replace")
    answers = []
    rest = ssh.stdout
    while rest:
        inflater = zlib.decompressobj(wbits=31)
        content = inflater.decompress(rest)
        answers.append(json.loads(content))
        rest = inflater.unused_data
    by_id = {answer["request_id"]: answer for answer in answers if answer["request_id"]}
    assert by_id[1.5]["code"] == 200
    # STORE without a body: the same 400 as version 1, with the id.
    assert by_id[2.5]["code"] == 400
    # Not JSON, then a truncated member: 400s with request_id 0.
    zeros = [answer for answer in answers if answer["request_id"] == 0]
    assert [answer["code"] for answer in zeros] == [400, 400], answers
