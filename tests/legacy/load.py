"""korv 0.2.1's own KorvClient as a closed-loop load generator.

    python load.py --port PORT --key CLIENT_KEY --known-hosts FILE \\
        [--host 127.0.0.1] [--resource /hello] [--concurrency 64] [--seconds 10] \\
        [--warmup 0] [--server-pid PID] [--cipher aes128-gcm@openssh.com]

Keeps CONCURRENCY requests in flight on one connection (each answer's
callback sends the next request) for WARMUP + SECONDS, against any server
korv 0.2.1's client can call: `korv serve`, a library server, or korv 0.2.1's
own server (`sample_server.py`). Answers that arrive during the warm-up are
not counted. Prints one JSON line with the keys of `korv bench --json` that
apply: requests answered in the window, seconds, requests per second, latency
percentiles (korv 0.2.1's request id is the time it was sent, and the answer
echoes it), answers by code, the negotiated cipher, and the CPU time of this
process and of the server process SERVER_PID over the window.

The connection uses CIPHER (AES-128-GCM unless told), as every SSH row of
`cargo xtask bench` does where it can, so that a server's CPU per request is
compared at the same cipher: left to itself, asyncssh prefers
chacha20-poly1305, which costs a server more per packet.
"""

import argparse
import json
import os
import threading
import time
from collections import Counter

import asyncssh
from korv import KorvClient


def use_cipher(name):
    """Makes every asyncssh connection of this process offer only the
    cipher NAME: korv 0.2.1's KorvClient has no argument for it."""
    create_connection = asyncssh.create_connection

    def with_cipher(*args, **kwargs):
        kwargs.setdefault("encryption_algs", [name])
        return create_connection(*args, **kwargs)

    asyncssh.create_connection = with_cipher


def cpu_seconds(pid):
    """utime + stime of process PID from /proc/PID/stat, in seconds; None
    when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def percentile(sorted_values, fraction):
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--known-hosts", required=True)
    parser.add_argument("--resource", default="/hello")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=0.0)
    parser.add_argument("--server-pid", type=int)
    parser.add_argument("--cipher", default="aes128-gcm@openssh.com")
    args = parser.parse_args()
    use_cipher(args.cipher)

    client = KorvClient(host=args.host, port=args.port, client_keys=[args.key],
                        known_hosts=args.known_hosts)
    codes = Counter()
    latencies = []
    lock = threading.Lock()
    finished = threading.Event()
    in_flight = [0]
    # The window: answers count from `recording` on; none is sent after `end`.
    started = time.monotonic()
    recording = started + args.warmup
    end = recording + args.seconds
    cpu = {}

    def sample(key):
        cpu[key] = (time.process_time(),
                    cpu_seconds(args.server_pid) if args.server_pid else None)

    def callback(response):
        now = time.monotonic()
        latency = time.time() - response["request_id"]
        with lock:
            if now >= recording:
                if "start" not in cpu:
                    sample("start")
                codes[response["code"]] += 1
                latencies.append(latency)
            if now < end:
                send()
                return
            in_flight[0] -= 1
            if in_flight[0] == 0:
                sample("end")
                finished.set()

    def send():
        client.get(args.resource, callback=callback)

    with lock:
        in_flight[0] = args.concurrency
        for _ in range(args.concurrency):
            send()
    finished.wait(args.warmup + args.seconds + 60)
    if "end" not in cpu:
        sample("end")
    elapsed = max(time.monotonic() - recording, 1e-9)
    answered = sum(codes.values())
    latencies.sort()
    report = {
        "answered": answered,
        "errors": 0 if finished.is_set() else in_flight[0],
        "seconds": round(elapsed, 3),
        "requests_per_second": round(answered / elapsed, 1),
        "concurrency": args.concurrency,
        "latency_us": {
            "p50": round(percentile(latencies, 0.5) * 1e6),
            "p99": round(percentile(latencies, 0.99) * 1e6),
        },
        "codes": {str(code): n for code, n in sorted(codes.items())},
    }
    connection = client._session._chan.get_extra_info("connection")
    if connection is not None:
        report["cipher"] = connection.get_extra_info("send_cipher")
    if "start" in cpu:
        (client0, server0), (client1, server1) = cpu["start"], cpu["end"]
        report["cpu"] = {
            "client_seconds": client1 - client0,
            "server_seconds": None if server0 is None or server1 is None else server1 - server0,
        }
    # "requests" stays the count answered, as before the window existed.
    report["requests"] = answered
    print(json.dumps(report), flush=True)
    loop = client._loop
    loop.call_soon_threadsafe(client._session._chan.close)
    loop.call_soon_threadsafe(loop.stop)


if __name__ == "__main__":
    main()
