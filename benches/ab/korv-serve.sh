#!/usr/bin/env bash
# Same-run A/B of two `korv` binaries (e.g. built from two commits): each
# serves on 127.0.0.1, then, alternating in rounds, 100 sequential
# `korv get /hello` (a new SSH connection each: TCP, key exchange,
# authentication, one request) and a 2 s `korv bench` at c=64 on one
# connection. Prints one line per measurement.
#   benches/ab/korv-serve.sh A_BINARY B_BINARY [ROUNDS]
set -u
A=$1 B=$2 ROUNDS=${3:-7}
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT; cd "$dir"
ssh-keygen -q -t ed25519 -N '' -f id && ssh-keygen -q -t ed25519 -N '' -f host && cp id.pub ak
start() { # bin port
  $1 serve --listen 127.0.0.1:$2 --host-key host --authorized-keys ak --data $dir/store-$2.redb >$dir/log-$2 2>&1 &
  echo $!
}
pa=$(start $A 18101); pb=$(start $B 18102)
for p in 18101 18102; do for i in $(seq 100); do grep -q listening $dir/log-$p && break; sleep 0.1; done; done
name() { [ "$1" = 18101 ] && echo A || echo B; }
C="-F none -i id --known-hosts kh --accept-new"
for p in 18101 18102; do $B get korv://127.0.0.1:$p/hello $C >/dev/null; done
for round in $(seq $ROUNDS); do
  for p in 18101 18102; do
    t0=$(date +%s.%N); for i in $(seq 100); do $B get korv://127.0.0.1:$p/hello $C >/dev/null || echo FAIL; done; t1=$(date +%s.%N)
    echo "connect+GET x100 $(name $p) round $round: $(echo "$t1 - $t0" | bc) s"
  done
  for p in 18101 18102; do
    $B bench korv://127.0.0.1:$p/hello $C --concurrency 64 --duration 2s --json | python3 -c "import json,sys; r=json.load(sys.stdin); print('bench c=64 $(name $p) round $round:', round(r['requests_per_second']), 'req/s p50', r['latency_us']['p50'])"
  done
done
kill $pa $pb
