# Sourced by the scripts that run the real server (soak.sh, simulate-ci.sh).

# stop_server PID [TENTHS]: SIGTERM, up to TENTHS × 0.1 s (default 100) for a graceful
# shutdown, then SIGKILL; nothing when PID is empty or already gone.
stop_server() {
  local pid="$1" tenths="${2:-100}"
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 "$tenths"); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
