#!/usr/bin/env bash
# The simulator against the real server, for CI: builds the release binaries, starts `livebattle`
# on a free loopback port with a callback token and a throwaway data directory, sends a few seconds of signed Tencent battle
# webhooks (duplicates and out-of-order deliveries included) with `livebattle-simulate --verify`
# and four SSE clients checking the event stream (`--watch-sse 4`), stops the server, and exits non-zero on any HTTP error, verification mismatch or server crash.
#
# Knobs (environment): SIM_BATTLES (40), SIM_RATE (20), SIM_SEED (random; the simulator prints
# it, so a failing mix can be replayed), SIM_GRACE_MS (1000, the server's response grace).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/server-lib.sh

battles="${SIM_BATTLES:-40}"
rate="${SIM_RATE:-20}"
grace="${SIM_GRACE_MS:-1000}"
app="1400000001"
token="simulate-ci-token-$$"
target="${CARGO_TARGET_DIR:-target}"

cargo build --release -p livebattle-server -p livebattle-simulate --bins

work="$(mktemp -d)"
server_pid=""
cleanup() {
  stop_server "$server_pid" 50
  rm -rf "$work"
}
trap cleanup EXIT

"$target/release/livebattle" \
  --listen 127.0.0.1:0 \
  --sdk-app-id "$app" \
  --token "$token" \
  --response-grace-ms "$grace" \
  --data-dir "$work/data" \
  >"$work/stdout" 2>"$work/server.log" &
server_pid=$!

# The server prints one line on stdout: `listening on ADDR`.
addr=""
for _ in $(seq 1 100); do
  addr="$(sed -n 's/^listening on //p' "$work/stdout" | head -n 1)"
  [ -n "$addr" ] && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "simulate-ci: livebattle exited before listening; its log:" >&2
    cat "$work/server.log" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$addr" ]; then
  echo "simulate-ci: livebattle did not report its address within 10 s" >&2
  cat "$work/server.log" >&2
  exit 1
fi
echo "simulate-ci: livebattle listening on $addr"

seed_args=()
if [ -n "${SIM_SEED:-}" ]; then
  seed_args=(--seed "$SIM_SEED")
fi

status=0
"$target/release/livebattle-simulate" \
  --url "http://$addr/callback" \
  --sdk-app-id "$app" \
  --token "$token" \
  --battles "$battles" \
  --rate "$rate" \
  --min-duration-ms 1000 \
  --max-duration-ms 3000 \
  --min-timeout-ms 1000 \
  --max-timeout-ms 2000 \
  --response-grace-ms "$grace" \
  --verify \
  --watch-sse 4 \
  "${seed_args[@]}" || status=$?

if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "simulate-ci: livebattle died during the run; its log:" >&2
  tail -n 50 "$work/server.log" >&2
  exit 1
fi
if [ "$status" -ne 0 ]; then
  echo "simulate-ci: the simulator failed (exit $status); the server log's tail:" >&2
  tail -n 30 "$work/server.log" >&2
  exit "$status"
fi
echo "simulate-ci: ok"
