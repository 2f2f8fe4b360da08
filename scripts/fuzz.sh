#!/usr/bin/env bash
# Fuzz the webhook parser: scripts/fuzz.sh [seconds] (default 60).
# Installs cargo-fuzz when missing, seeds fuzz/corpus/webhook from the documented Tencent samples
# (../shared/fixtures/tencent beside the repository), and runs the `webhook` target.
# cargo fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
set -euo pipefail

seconds="${1:-60}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fixtures="${LIVEBATTLE_FIXTURES:-$root/../shared/fixtures/tencent}"
corpus="$root/fuzz/corpus/webhook"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi

mkdir -p "$corpus"
seed() { # name query body-file
    { printf '%s\n' "$2"; cat "$3"; } >"$corpus/seed-$1"
}
q="contenttype=json&ClientIP=127.0.0.1&OptPlatform=RESTAPI"
if [ -d "$fixtures" ]; then
    seed create "SdkAppid=1400000001&CallbackCommand=Live.CallbackAfterCreateBattle&$q" "$fixtures/create_battle.json"
    seed start "SdkAppid=1400000001&CallbackCommand=Live.CallbackAfterStartBattle&$q" "$fixtures/start_battle.json"
    seed end "SdkAppid=1400000001&CallbackCommand=Live.CallbackAfterEndBattle&$q" "$fixtures/end_battle.json"
    # Signed with the fuzz target's token at its clock (1739954005): reaches the signed path.
    sign="$(printf '%s' "xxxxyyyy1739954005" | sha256sum | cut -d' ' -f1)"
    seed signed "SdkAppid=1400000002&CallbackCommand=Live.CallbackAfterEndBattle&$q&Sign=$sign&RequestTime=1739954005" "$fixtures/end_battle.json"
else
    echo "fuzz.sh: no fixtures at $fixtures; starting from an empty corpus" >&2
fi
printf '%s\n%s' "SdkAppid=1400000001&CallbackCommand=Live.CallbackAfterDestroyRoom&$q" \
    '{"CallbackCommand":"Live.CallbackAfterDestroyRoom","RoomId":"pk-3","EventTime":1739954005000,"EventType":"DestroyBySystem"}' \
    >"$corpus/seed-destroy"
printf '%s\n%s' "SdkAppid=1400000001&CallbackCommand=Group.CallbackAfterSendMsg" \
    '{"CallbackCommand":"Group.CallbackAfterSendMsg"}' >"$corpus/seed-other"

cd "$root/fuzz"
RUSTC_BOOTSTRAP=1 cargo fuzz run webhook "$corpus" -- -max_total_time="$seconds" -max_len=8192
