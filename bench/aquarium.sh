#!/usr/bin/env bash
# Aquarium benchmark: how long `aquarium up` takes to a served sample app.
#   cold:    binaries already built, empty data directory (plan, namespaces, every component started,
#            the sample app built with our builder and deployed through the manager)
#   warm:    `up` again with everything running (the common case: "is my cluster up?")
#   restart: after `aquarium down` (data kept): every process started again, the app redeployed
# Each is the median of RUNS runs. Goal: warm under 60 s (issue 17).
#
# Usage: bench/aquarium.sh [RUNS]                 (default 3; needs root and the packages of .ci/install)
#        PROFILE=debug bench/aquarium.sh           uses target/debug (default release; built first)
#        BIN_DIR=DIR bench/aquarium.sh             uses the binaries in DIR, builds nothing
set -euo pipefail
RUNS=${1:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROFILE=${PROFILE:-release}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -z "${BIN_DIR:-}" ]; then
  flag=$([ "$PROFILE" = release ] && echo --release || true)
  (cd "$ROOT" && cargo build --locked --bins $flag -p atlantis-aquarium -p atlantis-manager \
    -p atlantis-supervisor -p atlantis-router -p atlantis-registry -p atlantis-builder -p atlantis-cli)
  BIN_DIR=$TARGET/$PROFILE
fi
AQ=$BIN_DIR/aquarium
DATA=$(mktemp -d /tmp/atlantis-aqbench-XXXXXX)
cleanup() { "$AQ" --data-dir "$DATA" down --purge >/dev/null 2>&1 || true; rm -rf "$DATA"; }
trap cleanup EXIT

# Seconds taken by one `aquarium up`, which must succeed.
up() {
  local t0 t1
  t0=$(date +%s.%N)
  "$AQ" --data-dir "$DATA" up --bin-dir "$BIN_DIR" --no-build --no-install >"$DATA.last.log" 2>&1 ||
    { cat "$DATA.last.log" >&2; exit 1; }
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f\n", b - a }' 
}
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f", m}'; }

cold=(); warm=(); restart=()
for _ in $(seq "$RUNS"); do
  "$AQ" --data-dir "$DATA" down --purge >/dev/null 2>&1 || true
  mkdir -p "$DATA"
  cold+=("$(up)")
  warm+=("$(up)")
  "$AQ" --data-dir "$DATA" down >/dev/null
  restart+=("$(up)")
  "$AQ" --data-dir "$DATA" verify >/dev/null
done
rm -f "$DATA.last.log"
echo "aquarium up to a served app, $PROFILE binaries, median of $RUNS (seconds)"
printf '%-10s %8s   %s\n' case median "all runs"
printf '%-10s %8s   %s\n' cold "$(printf '%s\n' "${cold[@]}" | median)" "$(printf '%.2f ' "${cold[@]}")"
printf '%-10s %8s   %s\n' warm "$(printf '%s\n' "${warm[@]}" | median)" "$(printf '%.2f ' "${warm[@]}")"
printf '%-10s %8s   %s\n' restart "$(printf '%s\n' "${restart[@]}" | median)" "$(printf '%.2f ' "${restart[@]}")"
