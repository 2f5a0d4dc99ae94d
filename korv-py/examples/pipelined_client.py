"""Requests with callbacks, a fixed number in flight, on either package
(Korv's or the original `korv==0.2.1`): the original client's best rate is
with about 1,000 callbacks in flight.

    python korv-py/examples/pipelined_client.py PORT CLIENT_KEY [REQUESTS] [IN_FLIGHT] [KNOWN_HOSTS]

Korv's client checks the host key: give KNOWN_HOSTS (it records an unknown
key there). The original ignores it. Prints the requests/s.
"""

import os
import sys
import threading
import time

import korv
from korv import KorvClient


def main():
    port, key = int(sys.argv[1]), sys.argv[2]
    total = int(sys.argv[3]) if len(sys.argv) > 3 else 20000
    in_flight = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
    known_hosts = sys.argv[5] if len(sys.argv) > 5 else None
    if hasattr(korv, 'KorvError'):  # Korv's package: trust on first use
        client = KorvClient(host='127.0.0.1', port=port, client_keys=[key],
                            known_hosts=known_hosts, accept_new=True)
    else:
        client = KorvClient(host='127.0.0.1', port=port, client_keys=[key], known_hosts=None)
    slots = threading.Semaphore(in_flight)
    answered = []
    done = threading.Event()

    def callback(response):
        answered.append(response['body'])
        if len(answered) == total:
            done.set()
        slots.release()

    started = time.perf_counter()
    for _ in range(total):
        slots.acquire()
        client.get('/hello', callback=callback)
    finished = done.wait(120)
    elapsed = time.perf_counter() - started
    print(f'{len(answered)} of {total} answered in {elapsed:.2f} s: '
          f'{len(answered) / elapsed:.0f} requests/s ({in_flight} in flight)'
          + ('' if finished else ' INCOMPLETE'))
    # The original's client thread never ends on its own.
    os._exit(0 if finished else 1)


if __name__ == '__main__':
    main()
