#!/usr/bin/env bash
# WebSockets over HTTP/3 vs HTTP/2 (and HTTP/1.1) through one gateway (BENCHMARKS.md, issue 16):
# one TLS listener with h2 and h3 plus a plain one, all routed to the same echo upstream (`bench
# upstream`); `bench handshakes` and `bench bulk` over each carrier (`--http 1.1|2|3`), alternated
# for ROUNDS rounds. On h2/h3 each handshake worker holds one connection and opens a new extended
# CONNECT stream per handshake (RFC 8441 / RFC 9220). Loopback only; stops by itself.
#   usage: bash bench/h3-vs-h2.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-5}
sy=${CARGO_TARGET_DIR:-target}/release/switchyard
cargo build --release --locked --quiet
out=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$out"' EXIT
wait_port() { for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; exit 1; }

"$sy" bench upstream --listen 127.0.0.1:19200 2>"$out/upstream.log" &
pids+=($!)
wait_port 19200
cat >"$out/switchyard.toml" <<TOML
[[listener]]
bind = "127.0.0.1:18290"

[[listener]]
bind = "127.0.0.1:18291"
http2 = true
http3 = true
tls = { cert = "$PWD/certs/server.pem", key = "$PWD/certs/server-key.pem" }

[upstreams.echo]
servers = ["127.0.0.1:19200"]

[[route]]
path = "/ws"
fallback = "echo"
TOML
"$sy" --log-format json --log-level warn run --config "$out/switchyard.toml" 2>"$out/switchyard.log" &
gw=$!
pids+=($gw)
wait_port 18291
echo "commit $(git rev-parse --short HEAD), $(date -u +%F), $rounds rounds x ${seconds}s"
for round in $(seq "$rounds"); do
  for http in 1.1 2 3; do
    if [ "$http" = 1.1 ]; then target=ws://127.0.0.1:18290/ws; else target=wss://localhost:18291/ws; fi
    for mode in handshakes bulk; do
      echo -n "round $round HTTP/$http $mode: "
      "$sy" bench "$mode" --target "$target" --http "$http" --ca certs/ca.pem --pid "$gw" \
        --duration "${seconds}s" --label "h$http" 2>&1 >/dev/null | tail -1
    done
  done
done
