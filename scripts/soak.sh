#!/usr/bin/env bash
# Soak: the simulator against the real release server for SOAK_SECS (default 600), with battles
# of realistic lengths, a short retention so ended battles are evicted during the run, and the
# server's resident memory (and the data dir's size on disk) sampled every SOAK_SAMPLE_SECS. Exits non-zero on any simulator error
# or verification mismatch (never on a figure).
#
#   bash scripts/soak.sh                          # 10 minutes
#   LIVEBATTLE_BENCH_SMOKE=1 bash scripts/soak.sh # 20 seconds, short battles (CI)
#
# Knobs (environment):
#   SOAK_SECS (600)           total length; battles are created for SOAK_SECS - 200 s, then the
#                             longest ones (up to 120 s + quirks) finish
#   SOAK_RATE (1000)          new battles per second (each ≈ 2.9 webhooks with the default mix)
#   SOAK_RETENTION_SECS (150) the server's --retention-secs. Keep it above the longest battle: a
#                             battle the server ended itself (response_timeout) is evicted
#                             retention after that, and Tencent's End for it, which may come up
#                             to a battle's length later, would then find it gone (the simulator
#                             reports a mismatch: 404 instead of the End's reason)
#   SOAK_STORAGE (durable)    durable (a temp --data-dir) or memory (--in-memory)
#   SOAK_SAMPLE_SECS (10)     RSS sampling interval
#   SOAK_CONNECTIONS (128)    the simulator's keep-alive connections (each carries one request
#                             at a time, as Tencent's deliveries do)
#   SOAK_SSE (4)              SSE clients on /v1/events checking every notification arrives, in
#                             order, once (the simulator's --watch-sse; 0 for none)
#   SOAK_OUT                  where the samples and the simulator's summary go (a temp file)
#   SOAK_MIN_MS/SOAK_MAX_MS   battle Duration range (30000..120000)
#   SOAK_CREATE_SECS          how long new battles are created (SOAK_SECS - 200)
#   SOAK_SERVER_ARGS          more livebattle flags, e.g. "--dedupe-horizon-secs 60" (evicted
#                             ids are remembered for an hour by default: their memory grows
#                             with every eviction until then)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/server-lib.sh

if [ "${LIVEBATTLE_BENCH_SMOKE:-}" = 1 ]; then
  secs="${SOAK_SECS:-20}"; rate="${SOAK_RATE:-20}"; retention="${SOAK_RETENTION_SECS:-5}"
  sample="${SOAK_SAMPLE_SECS:-2}"; min_ms="${SOAK_MIN_MS:-1000}"; max_ms="${SOAK_MAX_MS:-3000}"
  create_secs=$((secs - 8))
else
  secs="${SOAK_SECS:-600}"; rate="${SOAK_RATE:-1000}"; retention="${SOAK_RETENTION_SECS:-150}"
  sample="${SOAK_SAMPLE_SECS:-10}"; min_ms="${SOAK_MIN_MS:-30000}"; max_ms="${SOAK_MAX_MS:-120000}"
  create_secs=$((secs - 200))
fi
create_secs="${SOAK_CREATE_SECS:-$create_secs}"
storage="${SOAK_STORAGE:-durable}"
out="${SOAK_OUT:-$(mktemp)}"
app="1400000001"
token="soak-token-$$"
target="${CARGO_TARGET_DIR:-target}"

cargo build --release -p livebattle-server -p livebattle-simulate --bins 2>&1 | tail -n 1

work="$(mktemp -d)"
server_pid=""
sampler_pid=""
cleanup() {
  [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null || true
  stop_server "$server_pid" 100
  rm -rf "$work"
}
trap cleanup EXIT

storage_args=(--data-dir "$work/data")
[ "$storage" = memory ] && storage_args=(--in-memory)
"$target/release/livebattle" --listen 127.0.0.1:0 --sdk-app-id "$app" --token "$token" \
  --retention-secs "$retention" --response-grace-ms 3000 "${storage_args[@]}" ${SOAK_SERVER_ARGS:-} \
  >"$work/stdout" 2>"$work/server.log" &
server_pid=$!
addr=""
for _ in $(seq 1 100); do
  addr="$(sed -n 's/^listening on //p' "$work/stdout" | head -n 1)"
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { echo "soak: livebattle did not start" >&2; cat "$work/server.log" >&2; exit 1; }

{
  echo "# soak: $(date -u +%FT%TZ), storage=$storage, rate=$rate battles/s for ${create_secs} s, durations ${min_ms}..${max_ms} ms, retention ${retention} s, server flags: ${SOAK_SERVER_ARGS:-none}, $(nproc) CPUs"
  echo "# elapsed_s  rss_mib  disk_mib  battles_live  battles_ended  evicted_total  events_total"
} >"$out"
metric() { sed -n "s/^$1 //p" "$work/metrics" | head -n 1; }
(
  t0=$(date +%s)
  while kill -0 "$server_pid" 2>/dev/null; do
    rss_kib=$(sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$server_pid/status" 2>/dev/null || echo 0)
    curl -s "http://$addr/metrics" >"$work/metrics" 2>/dev/null || true
    live=0
    for s in pending awaiting_response running; do
      n=$(metric "livebattle_battles{state=\"$s\"}"); live=$((live + ${n:-0}))
    done
    disk_mib=$(du -sm "$work/data" 2>/dev/null | cut -f1 || true)
    printf '%10d  %7.1f  %8s  %12d  %13s  %13s  %12s\n' "$(( $(date +%s) - t0 ))" \
      "$(echo "$rss_kib / 1024" | bc -l)" "${disk_mib:--}" "$live" "$(metric 'livebattle_battles{state="ended"}')" \
      "$(metric livebattle_battles_evicted_total)" "$(metric livebattle_events_total)" >>"$out"
    sleep "$sample"
  done
) &
sampler_pid=$!

status=0
"$target/release/livebattle-simulate" --url "http://$addr/callback" --sdk-app-id "$app" \
  --token "$token" --rate "$rate" --duration-s "$create_secs" \
  --min-duration-ms "$min_ms" --max-duration-ms "$max_ms" \
  --min-timeout-ms 5000 --max-timeout-ms 15000 --response-grace-ms 3000 \
  --max-inflight 1024 --connections "${SOAK_CONNECTIONS:-128}" --verify \
  --watch-sse "${SOAK_SSE:-4}" >"$work/sim.out" 2>"$work/sim.err" || status=$?
# One more retention period, so the last battles are evicted too; keep sampling.
sleep $((retention + 2 * sample))
kill "$sampler_pid" 2>/dev/null || true
sampler_pid=""

{
  echo "# simulator exit status $status; its summary:"
  grep -E '^(scenarios|quirks|summary|sse):' "$work/sim.out" | sed 's/^/# /'
  echo "# first simulator errors (if any):"
  head -n 5 "$work/sim.err" | sed 's/^/# /'
} >>"$out"
cat "$out"
if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "soak: livebattle died; its log:" >&2
  tail -n 30 "$work/server.log" >&2
  exit 1
fi
exit "$status"
