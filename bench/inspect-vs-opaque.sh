#!/usr/bin/env bash
# Inspected vs opaque tunnels through one gateway (BENCHMARKS.md, issue 13): an opaque route and
# an `inspect = true` route to the same frame-echoing upstream (`bench upstream --frames`: an
# inspected route refuses the masked frames a raw echo would send back), `bench bulk` on each,
# alternated for ROUNDS rounds. Loopback only; stops by itself.
#   usage: bash bench/inspect-vs-opaque.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-6}
sy=${CARGO_TARGET_DIR:-target}/release/switchyard
cargo build --release --locked --quiet
out=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$out"' EXIT
wait_port() { for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; exit 1; }

"$sy" bench upstream --frames --listen 127.0.0.1:19100 2>"$out/upstream.log" &
pids+=($!)
wait_port 19100
cat >"$out/switchyard.toml" <<TOML
[[listener]]
bind = "127.0.0.1:18191"

[upstreams.echo]
servers = ["127.0.0.1:19100"]

[[route]]
path = "/opaque"
fallback = "echo"

[[route]]
path = "/inspected"
fallback = "echo"
inspect = true
TOML
"$sy" --log-format json run --config "$out/switchyard.toml" 2>"$out/switchyard.log" &
gw=$!
pids+=($gw)
wait_port 18191
echo "commit $(git rev-parse --short HEAD), $(date -u +%F), $rounds rounds x ${seconds}s"
for round in $(seq "$rounds"); do
  for path in opaque inspected; do
    echo -n "round $round $path: "
    "$sy" bench bulk --target "ws://127.0.0.1:18191/$path" --pid "$gw" --duration "${seconds}s" \
      --label "$path" 2>&1 >/dev/null | tail -1
  done
done
echo "engines used: $(grep -o '"engine":"[a-z]*"' "$out/switchyard.log" | sort | uniq -c | tr -s ' ' | tr '\n' ' ')"
