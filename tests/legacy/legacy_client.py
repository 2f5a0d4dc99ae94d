"""korv 0.2.1's KorvClient, unchanged, with what the tests need around it.

- Calls with a callback wait for it with a timeout (korv 0.2.1's blocking
  ``get`` polls forever when no answer comes).
- Every channel-data message the client receives is counted by the
  ``request_id`` it carries, after checking that it holds exactly one gzip
  member of one JSON object (korv 0.2.1 reads each message as one whole
  answer).
- ``close()`` closes the channel and stops the client's event loop thread,
  which korv 0.2.1 never stops.
"""

import gzip
import json
import threading
import zlib
from collections import Counter

from korv import KorvClient

from conftest import CALL_TIMEOUT


def one_member(data):
    """The JSON object in `data`, which must be exactly one gzip member."""
    inflater = zlib.decompressobj(wbits=31)
    content = inflater.decompress(data) + inflater.flush()
    assert inflater.eof, "the message ends inside a gzip member"
    assert inflater.unused_data == b"", "a second member follows in the same message"
    message = json.loads(content.decode("utf-8"))
    assert isinstance(message, dict)
    return message


class LegacyClient:
    def __init__(self, port, keys, known_hosts):
        self.client = KorvClient(
            host="127.0.0.1", port=port, client_keys=[str(keys.client_key)],
            known_hosts=str(known_hosts),
        )
        self.session = self.client._session
        self.received = Counter()
        self.messages = []
        self.broken = []
        deliver = self.session.data_received

        def counting(data, datatype):
            try:
                message = one_member(data)
                self.received[message.get("request_id")] += 1
                self.messages.append(message)
            except Exception as err:  # noqa: BLE001 - recorded, asserted by the tests
                self.broken.append((err, data))
            deliver(data, datatype)

        self.session.data_received = counting

    def call(self, verb, resource, body=None, timeout=CALL_TIMEOUT):
        """One request with a callback; returns the answer."""
        done = threading.Event()
        answers = []

        def callback(response):
            answers.append(response)
            done.set()

        self.send(verb, resource, body, callback)
        assert done.wait(timeout), f"no answer to {verb} {resource} within {timeout} s"
        return answers[0]

    def send(self, verb, resource, body, callback):
        method = {"GET": self.client.get, "STORE": self.client.store,
                  "UPDATE": self.client.update, "DELETE": self.client.delete}[verb]
        method(resource, body, callback=callback)

    def get_blocking(self, resource, timeout=CALL_TIMEOUT):
        """korv 0.2.1's `get` without a callback, in a thread with a timeout."""
        answers = []
        thread = threading.Thread(
            target=lambda: answers.append(self.client.get(resource)), daemon=True
        )
        thread.start()
        thread.join(timeout)
        assert answers, f"no answer to GET {resource} within {timeout} s"
        return answers[0]

    def close(self):
        loop = self.client._loop
        loop.call_soon_threadsafe(self.session._chan.close)
        loop.call_soon_threadsafe(loop.stop)
