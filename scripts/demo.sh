#!/usr/bin/env bash
# `make demo`: runs what exists of the system on loopback for DEMO_SECONDS
# (default 20) and stops it cleanly.
#
# Today that is the proxy daemon's runtime: it starts with its shard down and
# retries every 2 s; a stand-in shard (a bare TCP listener, until muta-shard
# exists) appears and is connected; a few TCP clients connect; the shard dies
# and is reconnected; SIGTERM stops everything with exit code 0. The MUTA
# protocols are not attached yet, so no game traffic flows.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${DEMO_SECONDS:-20}
dir=target/demo
mkdir -p "$dir"

echo "== building (release)"
cargo build --locked --release --quiet

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
shard_port=$(free_port)
sed -e 's/^listen = .*/listen = "127.0.0.1:0"/' proxy.cfg > "$dir/proxy.cfg"
echo "shard = 127.0.0.1:$shard_port" > "$dir/shards.cfg"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

# A stand-in shard: accepts connections and prints how many bytes arrive.
stand_in_shard() {
    python3 -u -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
while True:
    c, a = s.accept(); print(f"[stand-in shard] proxy connected from {a[0]}:{a[1]}", flush=True)
' "$shard_port" &
    shard_pid=$!
    pids+=("$shard_pid")
}

echo "== starting muta-proxy (shard on 127.0.0.1:$shard_port, not listening yet)"
RUST_LOG=${RUST_LOG:-muta_proxy=debug} target/release/muta-proxy \
    --config "$dir/proxy.cfg" --shards "$dir/shards.cfg" 2> >(tee "$dir/proxy.log" >&2) &
proxy=$!
pids+=("$proxy")

step=$((secs / 5)); [ "$step" -ge 3 ] || step=3
sleep "$step"
echo "== stand-in shard starts listening"
stand_in_shard
sleep "$step"
client_port=$(sed -n 's/.*listening for clients on 127.0.0.1:\([0-9]*\).*/\1/p' "$dir/proxy.log" | head -1)
echo "== 3 clients connect to 127.0.0.1:$client_port and send a few bytes"
python3 -c '
import socket, sys, time
cs = [socket.create_connection(("127.0.0.1", int(sys.argv[1]))) for _ in range(3)]
for c in cs: c.sendall(b"hello proxy")
time.sleep(1)
for c in cs: c.close()
' "$client_port"
sleep "$step"
echo "== the stand-in shard dies; it comes back $step s later"
kill "$shard_pid"; wait "$shard_pid" 2>/dev/null || true
sleep "$step"
stand_in_shard
sleep "$step"
echo "== SIGTERM"
kill -TERM "$proxy"
status=0; wait "$proxy" || status=$?
echo "== muta-proxy exited with status $status"
exit "$status"
