"""The blocking client calling `get('/hello')` in a loop: requests/s and
latency percentiles.

    python korv-py/examples/blocking_loop.py PORT CLIENT_KEY KNOWN_HOSTS [REQUESTS]
        [--seconds S] [--warmup W] [--server-pid PID] [--json]

Against `korv serve --listen 127.0.0.1:PORT ...` or `hello_server.py`; an
unknown host key is recorded in KNOWN_HOSTS. Sends REQUESTS requests (20,000
by default), or runs for S seconds with --seconds, after W seconds (or 200
requests) of warm-up. With --json it prints one line with the keys of `korv
bench --json` that apply, and the CPU time of this process and of the server
process PID (with --server-pid) over the measured loop.
"""

import argparse
import json
import os
import time

from korv import KorvClient


def cpu_seconds(pid):
    """utime + stime of process PID from /proc/PID/stat, in seconds; None
    when it cannot be read."""
    try:
        with open(f'/proc/{pid}/stat') as stat:
            fields = stat.read().rsplit(')', 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
    except (OSError, IndexError, ValueError):
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('port', type=int)
    parser.add_argument('key')
    parser.add_argument('known_hosts')
    parser.add_argument('requests', type=int, nargs='?', default=20000)
    parser.add_argument('--seconds', type=float)
    parser.add_argument('--warmup', type=float)
    parser.add_argument('--server-pid', type=int)
    parser.add_argument('--json', action='store_true')
    args = parser.parse_args()

    client = KorvClient(host='127.0.0.1', port=args.port, client_keys=[args.key],
                        known_hosts=args.known_hosts, accept_new=True)
    if args.warmup is None:
        for _ in range(200):
            client.get('/hello')
    else:
        until = time.perf_counter() + args.warmup
        while time.perf_counter() < until:
            client.get('/hello')
    server = cpu_seconds(args.server_pid) if args.server_pid else None
    own = time.process_time()
    latencies = []
    started = time.perf_counter()
    end = started + args.seconds if args.seconds is not None else None
    while (len(latencies) < args.requests) if end is None else (time.perf_counter() < end):
        sent = time.perf_counter()
        client.get('/hello')
        latencies.append(time.perf_counter() - sent)
    elapsed = time.perf_counter() - started
    own = time.process_time() - own
    if server is not None:
        after = cpu_seconds(args.server_pid)
        server = None if after is None else after - server
    total = len(latencies)
    latencies.sort()
    p50 = latencies[total // 2] * 1e6
    p99 = latencies[min(total - 1, int(total * 0.99))] * 1e6
    if args.json:
        print(json.dumps({
            'answered': total,
            'errors': 0,
            'seconds': elapsed,
            'requests_per_second': total / elapsed,
            'latency_us': {'p50': round(p50), 'p99': round(p99)},
            'cpu': {'client_seconds': own, 'server_seconds': server},
        }), flush=True)
    else:
        print(f'{total / elapsed:.0f} requests/s, p50 {p50:.0f} µs, p99 {p99:.0f} µs')
    client.close()


if __name__ == '__main__':
    main()
