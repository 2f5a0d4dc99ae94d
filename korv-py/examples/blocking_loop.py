"""The blocking client calling `get('/hello')` in a loop: requests/s and
latency percentiles.

    python korv-py/examples/blocking_loop.py PORT CLIENT_KEY KNOWN_HOSTS [REQUESTS]

Against `korv serve --listen 127.0.0.1:PORT ...` or `hello_server.py`; an
unknown host key is recorded in KNOWN_HOSTS.
"""

import sys
import time

from korv import KorvClient


def main():
    port, key, known_hosts = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    total = int(sys.argv[4]) if len(sys.argv) > 4 else 20000
    client = KorvClient(host='127.0.0.1', port=port, client_keys=[key],
                        known_hosts=known_hosts, accept_new=True)
    for _ in range(200):  # warm up
        client.get('/hello')
    latencies = []
    started = time.perf_counter()
    for _ in range(total):
        sent = time.perf_counter()
        client.get('/hello')
        latencies.append(time.perf_counter() - sent)
    elapsed = time.perf_counter() - started
    latencies.sort()
    p50, p99 = latencies[total // 2] * 1e6, latencies[int(total * 0.99)] * 1e6
    print(f'{total / elapsed:.0f} requests/s, p50 {p50:.0f} µs, p99 {p99:.0f} µs')
    client.close()


if __name__ == '__main__':
    main()
