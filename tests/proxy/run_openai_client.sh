#!/usr/bin/env bash
# ctest driver: the official `openai` npm package (installed here on first
# use) talks to taotoken-proxy, which talks to taotoken-sim. Everything
# started here binds 127.0.0.1 and is stopped on exit.
# usage: run_openai_client.sh SIM_BIN PROXY_BIN NPM_DIR
set -euo pipefail
sim_bin=$1 proxy_bin=$2 npm_dir=$3
here=$(cd "$(dirname "$0")" && pwd)

if [[ ! -d "$npm_dir/node_modules/openai" ]]; then
  mkdir -p "$npm_dir"
  (cd "$npm_dir" && npm install --no-audit --no-fund --loglevel=error openai@4 >/dev/null)
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$sim_bin" --port-file "$work/sim.port" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do [[ -s $work/sim.port ]] && break; sleep 0.05; done
sim_port=$(cat "$work/sim.port")

key=internal-key-for-node-test
TAOTOKEN_PROXY_KEYS=$key TAOTOKEN_PROXY_DB="$work/usage.db" TAOTOKEN_API_KEY=upstream-key \
  "$proxy_bin" --port 0 --upstream "http://127.0.0.1:$sim_port/v1" >"$work/proxy.out" 2>"$work/proxy.err" &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$work/proxy.out" 2>/dev/null && break; sleep 0.05; done
proxy_url=$(sed -n 's/.*listening on \(http:\/\/[0-9.:]*\).*/\1/p' "$work/proxy.out")
[[ -n "$proxy_url" ]] || { echo "proxy did not start:"; cat "$work/proxy.err"; exit 1; }

cp "$here/openai_client.mjs" "$npm_dir/"
PROXY_URL="$proxy_url/v1" PROXY_KEY=$key node "$npm_dir/openai_client.mjs"
