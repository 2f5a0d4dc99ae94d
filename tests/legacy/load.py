"""korv 0.2.1's own KorvClient as a closed-loop load generator.

    python load.py --port PORT --key CLIENT_KEY --known-hosts FILE \\
        [--host 127.0.0.1] [--resource /hello] [--concurrency 64] [--seconds 10]

Keeps CONCURRENCY requests in flight on one connection (each answer's
callback sends the next request) for SECONDS, against any server korv 0.2.1's
client can call: `korv serve`, a library server, or korv 0.2.1's own server
(`sample_server.py`). Prints one JSON line: requests answered, seconds,
requests per second, answers by code.
"""

import argparse
import json
import threading
import time
from collections import Counter

from korv import KorvClient


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--known-hosts", required=True)
    parser.add_argument("--resource", default="/hello")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    client = KorvClient(host=args.host, port=args.port, client_keys=[args.key],
                        known_hosts=args.known_hosts)
    codes = Counter()
    lock = threading.Lock()
    finished = threading.Event()
    in_flight = [0]
    deadline = [None]

    def callback(response):
        with lock:
            codes[response["code"]] += 1
            if time.monotonic() < deadline[0]:
                send()
                return
            in_flight[0] -= 1
            if in_flight[0] == 0:
                finished.set()

    def send():
        client.get(args.resource, callback=callback)

    started = time.monotonic()
    deadline[0] = started + args.seconds
    with lock:
        in_flight[0] = args.concurrency
        for _ in range(args.concurrency):
            send()
    finished.wait(args.seconds + 60)
    elapsed = time.monotonic() - started
    answered = sum(codes.values())
    print(json.dumps({
        "requests": answered,
        "seconds": round(elapsed, 3),
        "requests_per_second": round(answered / elapsed, 1),
        "concurrency": args.concurrency,
        "codes": {str(code): n for code, n in sorted(codes.items())},
    }), flush=True)
    loop = client._loop
    loop.call_soon_threadsafe(client._session._chan.close)
    loop.call_soon_threadsafe(loop.stop)


if __name__ == "__main__":
    main()
