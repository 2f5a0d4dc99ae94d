"""Channel types `korv serve` does not serve are refused once, and the
connection lives on.

asyncssh, like OpenSSH, takes a second `SSH_MSG_CHANNEL_OPEN_FAILURE` for one
channel as a protocol error and drops the whole connection, with every stream
on it. russh 0.65.1 as published sent that second failure for the channel
types it refuses itself (vendor/russh/PATCHES.md, patch 1); these tests open
each such type from asyncssh, then make a request on the same connection.
"""

import asyncio
import json
import struct

import asyncssh
import pytest
from asyncssh.packet import String

from conftest import CALL_TIMEOUT, start_korv_serve

# RFC 4254 section 5.1's reason codes.
ADMINISTRATIVELY_PROHIBITED = 1
UNKNOWN_CHANNEL_TYPE = 3

# The types russh answers itself, before any handler of Korv's sees them,
# with the extra data each carries.
REFUSED_BY_THE_SESSION = [
    (b"x-no-such-type@korv.invalid", (), UNKNOWN_CHANNEL_TYPE),
    (b"auth-agent@openssh.com", (), ADMINISTRATIVELY_PROHIBITED),
    (b"forwarded-streamlocal@openssh.com", (String("/tmp/korv.sock"), String("")),
     ADMINISTRATIVELY_PROHIBITED),
]


@pytest.fixture
def server(keys, tmp_path):
    server = start_korv_serve(keys, tmp_path)
    yield server
    server.process.stop()


async def open_refused(conn, chantype, args):
    """Opens a channel of `chantype`; returns the refusal's reason code."""
    channel = conn.create_unix_channel()
    with pytest.raises(asyncssh.ChannelOpenError) as refused:
        await channel._open(chantype, *args)
    return refused.value.code


async def get_hello(conn):
    """GET /hello on a new `korv` subsystem channel of `conn`."""
    writer, reader, _ = await conn.open_session(subsystem="korv", encoding=None)
    request = json.dumps({"id": 1, "verb": "GET", "resource": "/hello"}).encode()
    writer.write(struct.pack(">I", len(request)) + request)
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    answer = json.loads(await reader.readexactly(length))
    writer.close()
    return answer


async def refusals_then_a_request(server, keys, types):
    async with asyncssh.connect(
        "127.0.0.1", server.port, username="korv",
        client_keys=[str(keys.client_key)],
        known_hosts=str(keys.known_hosts(server.port)),
    ) as conn:
        codes = [await open_refused(conn, chantype, args) for chantype, args, _ in types]
        # A second failure for any of those channels was sent before the
        # answer to this request: asyncssh would have dropped the connection
        # on reading it, and this request would fail.
        return codes, await get_hello(conn)


@pytest.mark.parametrize("chantype,args,reason", REFUSED_BY_THE_SESSION,
                         ids=[t[0].decode() for t in REFUSED_BY_THE_SESSION])
def test_a_refused_channel_type_gets_one_failure_and_the_connection_serves_on(
        server, keys, chantype, args, reason):
    codes, answer = asyncio.run(asyncio.wait_for(
        refusals_then_a_request(server, keys, [(chantype, args, reason)]), CALL_TIMEOUT))
    assert codes == [reason]
    assert answer == {"request_id": 1, "code": 200, "body": {"msg": "Hello World!"}}


def test_every_refused_type_in_turn_on_one_connection(server, keys):
    codes, answer = asyncio.run(asyncio.wait_for(
        refusals_then_a_request(server, keys, REFUSED_BY_THE_SESSION), CALL_TIMEOUT))
    assert codes == [reason for _, _, reason in REFUSED_BY_THE_SESSION]
    assert answer["code"] == 200
