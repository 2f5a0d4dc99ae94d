"""Requests with callbacks, a fixed number in flight, on either package
(Korv's or the original `korv==0.2.1`): the original client's best rate is
with about 1,000 callbacks in flight.

    python korv-py/examples/pipelined_client.py PORT CLIENT_KEY [REQUESTS] [IN_FLIGHT] [KNOWN_HOSTS]
        [--server-pid PID] [--json]

Korv's client checks the host key: give KNOWN_HOSTS (it records an unknown
key there). The original ignores it. Prints the requests/s; with --json, one
line with the keys of `korv bench --json` that apply, and the CPU time of
this process and of the server process PID (with --server-pid).
"""

import argparse
import json
import os
import threading
import time

import korv
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
    parser.add_argument('requests', type=int, nargs='?', default=20000)
    parser.add_argument('in_flight', type=int, nargs='?', default=1000)
    parser.add_argument('known_hosts', nargs='?')
    parser.add_argument('--server-pid', type=int)
    parser.add_argument('--json', action='store_true')
    args = parser.parse_args()
    total, in_flight = args.requests, args.in_flight
    if hasattr(korv, 'KorvError'):  # Korv's package: trust on first use
        client = KorvClient(host='127.0.0.1', port=args.port, client_keys=[args.key],
                            known_hosts=args.known_hosts, accept_new=True)
    else:
        client = KorvClient(host='127.0.0.1', port=args.port, client_keys=[args.key],
                            known_hosts=None)
    slots = threading.Semaphore(in_flight)
    answered = []
    done = threading.Event()

    def callback(response):
        answered.append(response['body'])
        if len(answered) == total:
            done.set()
        slots.release()

    server = cpu_seconds(args.server_pid) if args.server_pid else None
    own = time.process_time()
    started = time.perf_counter()
    for _ in range(total):
        slots.acquire()
        client.get('/hello', callback=callback)
    finished = done.wait(120)
    elapsed = time.perf_counter() - started
    own = time.process_time() - own
    if server is not None:
        after = cpu_seconds(args.server_pid)
        server = None if after is None else after - server
    if args.json:
        report = {
            'answered': len(answered),
            'errors': total - len(answered),
            'seconds': elapsed,
            'requests_per_second': len(answered) / elapsed,
            'concurrency': in_flight,
            'cpu': {'client_seconds': own, 'server_seconds': server},
        }
        session = getattr(client, '_session', None)  # the original's asyncssh session
        if session is not None:
            connection = session._chan.get_extra_info('connection')
            report['cipher'] = connection.get_extra_info('send_cipher')
        print(json.dumps(report), flush=True)
    else:
        print(f'{len(answered)} of {total} answered in {elapsed:.2f} s: '
              f'{len(answered) / elapsed:.0f} requests/s ({in_flight} in flight)'
              + ('' if finished else ' INCOMPLETE'))
    # The original's client thread never ends on its own.
    os._exit(0 if finished else 1)


if __name__ == '__main__':
    main()
