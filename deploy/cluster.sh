#!/usr/bin/env bash
# The multi-replica setup as local processes: Redis on 6390, the sandboxes on
# 8081-8083, gateway replicas on 8080 and 8090. Ctrl-C stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

redis-server --port 6390 --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
  --loglevel warning &
pids+=($!)
$BIN/gateway sandbox &
pids+=($!)
for port in 8080 8090; do
  sed "s/port: 8080}/port: $port}/" deploy/cluster.yaml > "$work/gateway-$port.yaml"
  $BIN/gateway serve --config "$work/gateway-$port.yaml" &
  pids+=($!)
done
echo "cluster: gateway replicas on :8080 and :8090 (key demo-key), Redis on :6390."
echo "Reload a replica: kill -HUP <pid>; its config is in $work. Ctrl-C stops everything."
wait
