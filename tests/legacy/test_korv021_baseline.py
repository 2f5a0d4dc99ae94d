"""korv 0.2.1's client against its own server: the harness itself, and what
korv 0.2.1 does on its own (the behaviour our server and client match)."""

from legacy_client import LegacyClient


def test_korv021_client_and_server_together(legacy_server, keys):
    client = LegacyClient(legacy_server.port, keys, keys.known_hosts(legacy_server.port))
    try:
        answer = client.call("GET", "/hello")
        assert answer["code"] == 200
        assert answer["body"] == {"msg": "Hello World!"}
        assert isinstance(answer["id"], float) and isinstance(answer["request_id"], float)
        # A 404 has no body; an exception is a 500 with one traceback string.
        missing = client.call("GET", "/nothing")
        assert missing["code"] == 404 and missing["body"] is None
        boom = client.call("GET", "/boom")
        assert boom["code"] == 500
        assert boom["body"]["message"] == "boom on purpose"
        assert isinstance(boom["body"]["traceback"], str)
        assert "RuntimeError: boom on purpose" in boom["body"]["traceback"]
        assert client.broken == []
    finally:
        client.close()
