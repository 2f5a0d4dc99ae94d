"""korv 0.2.1's own server, with the routes of its README's sample server.

    python sample_server.py HOST_KEY AUTHORIZED_KEYS

``GET /hello`` and ``GET /echo`` are the README's; ``GET /boom`` raises, to get
korv 0.2.1's 500 with its traceback string. ``KorvServer.start()`` listens on
a fixed port and prints nothing, so this starts the same server class the way
``start()`` does, on 127.0.0.1 and a free port, and prints the address.
"""

import asyncio
import sys

import asyncssh
from korv import KorvServer


def hello(request):
    """Callback for the /hello endpoint"""

    return 200, {'msg': 'Hello World!'}


def echo(request):
    """Callback for the /echo endpoint"""

    return 200, {'msg': f'{request}'}


def boom(request):
    raise RuntimeError('boom on purpose')


def main():
    host_key, authorized_keys = sys.argv[1], sys.argv[2]
    k = KorvServer(host_keys=[host_key], authorized_client_keys=authorized_keys)
    k.add_callback('GET', '/hello', hello)
    k.add_callback('GET', '/echo', echo)
    k.add_callback('GET', '/boom', boom)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    acceptor = loop.run_until_complete(asyncssh.create_server(
        KorvServer, '127.0.0.1', 0,
        server_host_keys=[host_key],
        authorized_client_keys=authorized_keys,
    ))
    print(f"listening on 127.0.0.1:{acceptor.get_port()}", flush=True)
    loop.run_forever()


if __name__ == '__main__':
    main()
