#!/usr/bin/env bash
# Instruction profile of the webhook hot path with callgrind (repeatable on a busy machine).
#
#   bash scripts/profile-webhooks.sh [MODE] [REQUESTS]     # MODE: in-memory (default), bare, durable,
#                                                          # or binary: the release `livebattle`
#                                                          # binary itself, in memory, with its log
#                                                          # subscriber (the bench's servers have none)
#
# Builds the `webhooks` bench with line tables (its own target dir, so the optimised code is the
# release code plus debug info), starts `webhooks --serve MODE` under
# `valgrind --tool=callgrind --instr-atstart=no`, turns instrumentation on once it listens, sends
# exactly REQUESTS (default 20000) signed Create/End callbacks over 16 keep-alive connections from
# an uninstrumented client, stops the server (SIGTERM) and prints instructions per request and the
# top functions (inclusive and self). The raw callgrind file is kept as
# $OUT_DIR/callgrind.webhooks-MODE.out (OUT_DIR defaults to a temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-in-memory}"
requests="${2:-20000}"
target="${PROFILE_TARGET_DIR:-target/profile}"
out_dir="${OUT_DIR:-$(mktemp -d)}"
mkdir -p "$out_dir"
out="$out_dir/callgrind.webhooks-$mode.out"

CARGO_PROFILE_BENCH_DEBUG=line-tables-only CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
  CARGO_TARGET_DIR="$target" cargo bench -p livebattle-server --bench webhooks --no-run 2>&1 |
  tail -n 1
bin="$(ls -t "$target"/release/deps/webhooks-* | grep -v '\.d$' | head -n 1)"

log="$out_dir/serve-$mode.log"
if [ "$mode" = binary ]; then
  CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_TARGET_DIR="$target" \
    cargo build --release -p livebattle-server --bin livebattle 2>&1 | tail -n 1
  serve=("$target/release/livebattle" --listen 127.0.0.1:0 --sdk-app-id 1400000001
    --token bench-token --in-memory)
else
  serve=("$bin" --serve "$mode")
fi
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
  "${serve[@]}" >"$log" 2>"$out_dir/valgrind-$mode.log" &
pid=$!
addr=""
for _ in $(seq 1 600); do
  addr="$(sed -n 's/^listening on //p' "$log" | head -n 1)"
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { echo "the server did not start" >&2; cat "$out_dir/valgrind-$mode.log" >&2; exit 1; }

# Warm-up (connections, allocator, lazy statics), uncounted; then the counted run.
"$bin" --drive "$addr" --requests 2000 --connections 16 >/dev/null
callgrind_control -i on "$pid" >/dev/null

"$bin" --drive "$addr" --requests "$requests" --connections 16
callgrind_control -i off "$pid" >/dev/null
kill -TERM "$pid"
wait "$pid" || true

total="$(callgrind_annotate "$out" 2>/dev/null | sed -n 's/^\([0-9,]*\) (100.0%).*PROGRAM TOTALS.*/\1/p' | tr -d ,)"
echo "mode $mode: $total instructions for $requests requests = $((total / requests)) per request"
echo "--- inclusive (top 45)"
# (`|| true`: `head` closing the pipe early is not a failure under pipefail.)
callgrind_annotate --inclusive=yes "$out" 2>/dev/null | sed -n '/^Ir/,$p' | head -n 48 || true
echo "--- self (top 35)"
callgrind_annotate "$out" 2>/dev/null | sed -n '/^Ir/,$p' | head -n 38 || true
echo "raw: $out"
