#!/usr/bin/env bash
# Side-by-side benchmark: the same echo upstream and the same load tool (`switchyard bench`)
# against direct, switchyard, nginx, HAProxy and Caddy, interleaved, in rounds; medians go into
# BENCHMARKS.md between the `compare:begin/end` markers, with an SVG chart beside it.
#
# Everything listens on 127.0.0.1 and every process started here is stopped at exit.
# Usage: bash bench/compare.sh [ROUNDS] [SECONDS]   (defaults 2 and 5)
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-2}
secs=${2:-5}
idle_tunnels=${IDLE_TUNNELS:-6000}
out=target/compare
mkdir -p "$out"
results="$out/results.jsonl"
: >"$results"

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v caddy >/dev/null || need+=(caddy)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
cargo build --release --locked -q
sy=${CARGO_TARGET_DIR:-target}/release/switchyard

# Idle tunnels need two descriptors each in the proxy and one here.
ulimit -n "$(ulimit -Hn)"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on 127.0.0.1:$1" >&2
  return 1
}

upstream=19000
"$sy" bench upstream --listen "127.0.0.1:$upstream" 2>"$out/upstream.log" &
pids+=($!)
wait_port $upstream

# switchyard, access log on (the default info level), written to a file as an operator would.
cat >"$out/switchyard.toml" <<TOML
[[listener]]
bind = "127.0.0.1:18081"

[limits]
max_connections = 100000
max_connections_per_ip = 100000

[upstreams.echo]
servers = ["127.0.0.1:$upstream"]

[[route]]
path = "/ws"
fallback = "echo"
TOML
"$sy" --log-format "${SWITCHYARD_LOG_FORMAT:-json}" run --config "$out/switchyard.toml" 2>"$out/switchyard.log" &
pid_switchyard=$!
pids+=($pid_switchyard)

mkdir -p "$out/nginx"
cat >"$out/nginx/nginx.conf" <<CONF
daemon off;
worker_processes auto;
worker_rlimit_nofile 20000;
pid $PWD/$out/nginx/nginx.pid;
error_log stderr warn;
events { worker_connections 20000; }
http {
  access_log off;
  client_body_temp_path $PWD/$out/nginx/body;
  proxy_temp_path $PWD/$out/nginx/proxy;
  fastcgi_temp_path $PWD/$out/nginx/fastcgi;
  uwsgi_temp_path $PWD/$out/nginx/uwsgi;
  scgi_temp_path $PWD/$out/nginx/scgi;
  upstream echo { server 127.0.0.1:$upstream; }
  server {
    listen 127.0.0.1:18082 backlog=4096;
    location /ws {
      proxy_pass http://echo;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout 3600s;
      proxy_buffering off;
    }
  }
}
CONF
nginx -p "$PWD/$out/nginx" -c "$PWD/$out/nginx/nginx.conf" 2>"$out/nginx.log" &
pid_nginx=$!
pids+=($pid_nginx)

cat >"$out/haproxy.cfg" <<CONF
global
  maxconn 9000
  nbthread $(nproc)
defaults
  mode http
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
frontend fe
  bind 127.0.0.1:18083
  default_backend be
backend be
  server echo 127.0.0.1:$upstream
CONF
haproxy -db -f "$out/haproxy.cfg" 2>"$out/haproxy.log" &
pid_haproxy=$!
pids+=($pid_haproxy)

cat >"$out/Caddyfile" <<CONF
{
  admin off
  auto_https off
}
http://127.0.0.1:18084 {
  bind 127.0.0.1
  reverse_proxy 127.0.0.1:$upstream
}
CONF
caddy run --config "$out/Caddyfile" --adapter caddyfile 2>"$out/caddy.log" &
pid_caddy=$!
pids+=($pid_caddy)

for p in 18081 18082 18083 18084; do wait_port $p; done

# label port pid
targets=(
  "direct $upstream -"
  "switchyard 18081 $pid_switchyard"
  "nginx 18082 $pid_nginx"
  "haproxy 18083 $pid_haproxy"
  "caddy 18084 $pid_caddy"
)
modes=(
  "handshakes --workers 50"
  "echo --tunnels 100 --size 64"
  "bulk --tunnels 1 --size 65536"
  "bulk --tunnels 8 --size 65536"
)

# Idle footprint first, on fresh processes: after the load modes an allocator keeps freed
# memory, and new idle tunnels would fit into it without growing the RSS.
for t in "${targets[@]}"; do
  read -r label port pid <<<"$t"
  # The upstream itself for `direct`: its RSS per tunnel is the floor every proxy adds to.
  [ "$pid" = - ] && pid=${pids[0]}
  echo "$label: idle $idle_tunnels" >&2
  "$sy" bench idle --tunnels "$idle_tunnels" --sources 32 --target "ws://127.0.0.1:$port/ws" \
    --pid "$pid" --label "$label" | sed "s/^{/{\"round\":1,\"args\":\"idle\",/" >>"$results"
done

for round in $(seq "$rounds"); do
  for mode in "${modes[@]}"; do
    for t in "${targets[@]}"; do
      read -r label port pid <<<"$t"
      pidarg=()
      [ "$pid" = - ] || pidarg=(--pid "$pid")
      echo "round $round: $label: $mode" >&2
      # shellcheck disable=SC2086
      "$sy" bench $mode --target "ws://127.0.0.1:$port/ws" --duration "${secs}s" \
        --label "$label" "${pidarg[@]}" | sed "s/^{/{\"round\":$round,\"args\":\"$mode\",/" >>"$results"
    done
  done
done

commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo +changes)
python3 bench/report.py "$results" BENCHMARKS.md bench/compare.svg "$commit" \
  "IDLE_TUNNELS=$idle_tunnels bash bench/compare.sh $rounds $secs"
echo "results: $results; table and chart written to BENCHMARKS.md and bench/compare.svg" >&2
