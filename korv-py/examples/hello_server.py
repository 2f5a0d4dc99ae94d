"""The `hello` server of the original Korv's README, runnable on either
package: Korv's (`pip install ./korv-py`) or the original
(`pip install korv==0.2.1`), which take the same code.

    python korv-py/examples/hello_server.py PORT HOST_KEY AUTHORIZED_KEYS

Drive it with `korv bench /hello --port PORT -i CLIENT_KEY --known-hosts FILE
--accept-new --concurrency 64` (Korv's package only: the original speaks
another framing) or with `pipelined_client.py` (either package). Ctrl-C or
SIGTERM stops it.
"""

import logging
import sys

from korv import KorvServer


def hello(request):
    return 200, {'msg': 'Hello World!'}


if __name__ == '__main__':
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    port, host_key, authorized_keys = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    k = KorvServer(port=port, host_keys=[host_key], authorized_client_keys=authorized_keys)
    k.add_callback('GET', '/hello', hello)
    k.start()
