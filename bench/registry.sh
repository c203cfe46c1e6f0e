#!/usr/bin/env bash
# Registry benchmark: the same multi-layer image (>= 200 MB) pushed and pulled with skopeo against
# atlantis-registry and Debian's docker-registry (the Go reference registry, filesystem storage) in one
# run. Prints seconds, MB/s and our/their throughput ratio for push and pull, each server's peak RSS, and
# our peak RSS while a 1 GB blob is pushed (goal: < 64 MB) next to the Go registry's for the same push.
#
# Usage: bench/registry.sh            (env: LAYERS=4 LAYER_MB=50 RUNS=3 BIG_MB=1024 KEEP=0)
# Needs: skopeo, docker-registry, curl, jq, sha256sum, tar; builds atlantis-registry in release mode.
set -euo pipefail

LAYERS=${LAYERS:-4}
LAYER_MB=${LAYER_MB:-50}
RUNS=${RUNS:-3}
BIG_MB=${BIG_MB:-1024}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
for bin in skopeo docker-registry curl jq sha256sum tar; do
  command -v "$bin" >/dev/null || { echo "bench needs $bin (apt-get install skopeo docker-registry curl jq)" >&2; exit 1; }
done
export NO_PROXY=127.0.0.1 no_proxy=127.0.0.1
unset HTTP_PROXY http_proxy HTTPS_PROXY https_proxy ALL_PROXY AWS_CA_BUNDLE || true

echo "building atlantis-registry (release)..." >&2
(cd "$ROOT" && cargo build --release -q -p atlantis-registry)
OURS_BIN="$TARGET/release/atlantis-registry"

W=$(mktemp -d /tmp/atlantis-regbench-XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  [ "${KEEP:-0}" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
peak_rss_mb() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
wait_http() { # url pid log
  for _ in $(seq 400); do
    kill -0 "$2" 2>/dev/null || { echo "server died:" >&2; tail -20 "$3" >&2; exit 1; }
    curl -s -o /dev/null "$1" && return 0; sleep 0.05
  done
  echo "server at $1 did not answer" >&2; exit 1
}

start_ours() { # dir -> sets PORT, PID
  PORT=$(free_port)
  mkdir -p "$1"
  printf 'listen = "127.0.0.1:%s"\n[storage]\nkind = "filesystem"\nroot = "%s/data"\n' "$PORT" "$1" > "$1/config.toml"
  RUST_LOG=warn "$OURS_BIN" --config "$1/config.toml" >"$1/log" 2>&1 &
  PID=$!; PIDS+=("$PID")
  wait_http "http://127.0.0.1:$PORT/v2/" "$PID" "$1/log"
}

start_go() { # dir -> sets PORT, PID
  PORT=$(free_port)
  mkdir -p "$1"
  cat > "$1/config.yml" <<YML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: "$1/data"}, delete: {enabled: true}}
http: {addr: "127.0.0.1:$PORT"}
YML
  docker-registry serve "$1/config.yml" >"$1/log" 2>&1 &
  PID=$!; PIDS+=("$PID")
  wait_http "http://127.0.0.1:$PORT/v2/" "$PID" "$1/log"
}

# Stops a server, recording its peak RSS (VmHWM, read while it is still alive) into RSS_MAX.
stop() { RSS_LAST=$(peak_rss_mb "$1" 2>/dev/null || echo "?"); kill "$1"; wait "$1" 2>/dev/null || true; RSS_MAX=$(awk -v a="${RSS_MAX:-0}" -v b="$RSS_LAST" 'BEGIN {print (b>a)?b:a}'); }

# ---- the image: an OCI layout with LAYERS layers of LAYER_MB random bytes each (incompressible) ----
echo "making a ${LAYERS}x${LAYER_MB} MB image..." >&2
IMG="$W/image"; mkdir -p "$IMG/blobs/sha256"
put_blob() { local d; d=$(sha256sum "$1" | cut -d' ' -f1); mv "$1" "$IMG/blobs/sha256/$d"; echo "$d"; }
LAYER_JSON=""; DIFFS=""; TOTAL=0
for i in $(seq "$LAYERS"); do
  mkdir -p "$W/l$i"; head -c "$((LAYER_MB * 1024 * 1024))" /dev/urandom > "$W/l$i/data$i.bin"
  tar --sort=name --mtime=@0 --owner=0 --group=0 -C "$W/l$i" -cf "$W/l$i.tar" . ; rm -rf "$W/l$i"
  size=$(stat -c %s "$W/l$i.tar"); d=$(put_blob "$W/l$i.tar"); TOTAL=$((TOTAL + size))
  LAYER_JSON="$LAYER_JSON${LAYER_JSON:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$d\",\"size\":$size}"
  DIFFS="$DIFFS${DIFFS:+,}\"sha256:$d\""
done
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[%s]}}' "$DIFFS" > "$W/config.json"
csize=$(stat -c %s "$W/config.json"); cd_=$(put_blob "$W/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
  "$cd_" "$csize" "$LAYER_JSON" > "$W/manifest.json"
msize=$(stat -c %s "$W/manifest.json"); MD=$(put_blob "$W/manifest.json")
echo '{"imageLayoutVersion":"1.0.0"}' > "$IMG/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"v1"}}]}' \
  "$MD" "$msize" > "$IMG/index.json"
MB=$(awk -v b="$TOTAL" 'BEGIN {printf "%.1f", b/1048576}')
echo "image: $LAYERS layers, $MB MB, manifest sha256:$MD" >&2

SKOPEO=(skopeo --insecure-policy copy --preserve-digests -q)
declare -A BEST_PUSH BEST_PULL CPU RSS
bench_once() { # name start_fn run: one push and one pull against a fresh server; keeps the best times
  local name=$1 dir="$W/$1" run=$3
  RSS_MAX=${RSS[$name]:-0}
  $2 "$dir"
  local ref="docker://127.0.0.1:$PORT/bench/img:run$run" out="$W/pull-$name-$run"
  c0=$(cpu_s "$PID"); t0=$(now); "${SKOPEO[@]}" --dest-tls-verify=false "oci:$IMG:v1" "$ref"; t1=$(now); c1=$(cpu_s "$PID")
  "${SKOPEO[@]}" --src-tls-verify=false "$ref" "oci:$out:v1"; t2=$(now); c2=$(cpu_s "$PID")
  got=$(jq -r '.manifests[0].digest' "$out/index.json")
  [ "$got" = "sha256:$MD" ] || { echo "$name: pulled $got, pushed sha256:$MD" >&2; exit 1; }
  for b in "$IMG"/blobs/sha256/*; do cmp -s "$b" "$out/blobs/sha256/$(basename "$b")" || { echo "$name: blob $(basename "$b") differs" >&2; exit 1; }; done
  rm -rf "$out"
  local push pull
  push=$(echo "$t1 - $t0" | bc); pull=$(echo "$t2 - $t1" | bc)
  echo "  run $run $name: push ${push}s pull ${pull}s" >&2
  BEST_PUSH[$name]=$(awk -v a="${BEST_PUSH[$name]:-999999}" -v b="$push" 'BEGIN {print (b<a)?b:a}')
  BEST_PULL[$name]=$(awk -v a="${BEST_PULL[$name]:-999999}" -v b="$pull" 'BEGIN {print (b<a)?b:a}')
  CPU[$name]="$(echo "$c1 - $c0" | bc)/$(echo "$c2 - $c1" | bc)"
  stop "$PID"; RSS[$name]=$RSS_MAX; rm -rf "$dir/data"
}

# Runs alternate between the servers so that load from elsewhere on the machine hits both alike.
for run in $(seq "$RUNS"); do
  bench_once ours start_ours "$run"
  bench_once go start_go "$run"
done
OURS_PUSH=${BEST_PUSH[ours]}; OURS_PULL=${BEST_PULL[ours]}; OURS_RSS=${RSS[ours]}; OURS_CPU=${CPU[ours]}
GO_PUSH=${BEST_PUSH[go]}; GO_PULL=${BEST_PULL[go]}; GO_RSS=${RSS[go]}; GO_CPU=${CPU[go]}

# ---- 1 GB blob: one monolithic streamed POST, peak RSS of each server ----
echo "pushing a ${BIG_MB} MB blob..." >&2
head -c "$((BIG_MB * 1024 * 1024))" /dev/urandom > "$W/big.bin"
BIGD=$(sha256sum "$W/big.bin" | cut -d' ' -f1)
big_push() { # name start_fn
  $2 "$W/big-$1"
  local loc t0 t1 code
  t0=$(now)
  # Chunked session like docker and skopeo: POST, one streamed PATCH, PUT ?digest=.
  loc=$(curl -sf -X POST -D - -o /dev/null "http://127.0.0.1:$PORT/v2/bench/big/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:" {print $2}')
  case "$loc" in http*) ;; *) loc="http://127.0.0.1:$PORT$loc" ;; esac
  loc=$(curl -sf -X PATCH -H 'Content-Type: application/octet-stream' -T "$W/big.bin" -D - -o /dev/null "$loc" | tr -d '\r' | awk 'tolower($1)=="location:" {print $2}')
  case "$loc" in http*) ;; *) loc="http://127.0.0.1:$PORT$loc" ;; esac
  case "$loc" in *\?*) sep='&' ;; *) sep='?' ;; esac
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT "$loc${sep}digest=sha256:$BIGD")
  t1=$(now)
  [ "$code" = 201 ] || { echo "$1: 1 GB push answered $code" >&2; exit 1; }
  BIG_S=$(echo "$t1 - $t0" | bc); BIG_RSS=$(peak_rss_mb "$PID")
  t0=$(now)
  curl -sf -o "$W/big.out" "http://127.0.0.1:$PORT/v2/bench/big/blobs/sha256:$BIGD"
  t1=$(now)
  [ "$(sha256sum "$W/big.out" | cut -d' ' -f1)" = "$BIGD" ] || { echo "$1: 1 GB pull differs" >&2; exit 1; }
  rm -f "$W/big.out"
  BIG_PULL_S=$(echo "$t1 - $t0" | bc)
  RSS_MAX=0; stop "$PID"
}
big_push ours start_ours; OURS_BIG_S=$BIG_S; OURS_BIG_RSS=$BIG_RSS; OURS_BIG_PULL=$BIG_PULL_S
big_push go start_go; GO_BIG_S=$BIG_S; GO_BIG_RSS=$BIG_RSS; GO_BIG_PULL=$BIG_PULL_S

rate() { awk -v mb="$1" -v s="$2" 'BEGIN {printf "%.1f", mb/s}'; }
ratio() { awk -v ours="$1" -v theirs="$2" 'BEGIN {printf "%.2f", theirs/ours}'; }
echo
echo "registry benchmark: $LAYERS x $LAYER_MB MB image ($MB MB), skopeo, best of $RUNS run(s), $(nproc) cores"
printf '%-22s %8s %8s %10s %10s %9s %16s\n' "" "push s" "pull s" "push MB/s" "pull MB/s" "peak RSS" "server CPU s p/p"
printf '%-22s %8.2f %8.2f %10s %10s %8sM %16s\n' "atlantis-registry" "$OURS_PUSH" "$OURS_PULL" "$(rate "$MB" "$OURS_PUSH")" "$(rate "$MB" "$OURS_PULL")" "$OURS_RSS" "$OURS_CPU"
printf '%-22s %8.2f %8.2f %10s %10s %8sM %16s\n' "docker-registry (Go)" "$GO_PUSH" "$GO_PULL" "$(rate "$MB" "$GO_PUSH")" "$(rate "$MB" "$GO_PULL")" "$GO_RSS" "$GO_CPU"
echo "skopeo throughput ratio ours/theirs: push $(ratio "$OURS_PUSH" "$GO_PUSH")x, pull $(ratio "$OURS_PULL" "$GO_PULL")x (goal 1.5x)"
echo "${BIG_MB} MB blob, curl (PATCH stream + PUT, then GET):"
printf '  %-20s push %6.2fs (%s MB/s)  pull %6.2fs (%s MB/s)  peak RSS %sM\n' "atlantis-registry" "$OURS_BIG_S" "$(rate "$BIG_MB" "$OURS_BIG_S")" "$OURS_BIG_PULL" "$(rate "$BIG_MB" "$OURS_BIG_PULL")" "$OURS_BIG_RSS"
printf '  %-20s push %6.2fs (%s MB/s)  pull %6.2fs (%s MB/s)  peak RSS %sM\n' "docker-registry (Go)" "$GO_BIG_S" "$(rate "$BIG_MB" "$GO_BIG_S")" "$GO_BIG_PULL" "$(rate "$BIG_MB" "$GO_BIG_PULL")" "$GO_BIG_RSS"
echo "  ratio ours/theirs: push $(ratio "$OURS_BIG_S" "$GO_BIG_S")x, pull $(ratio "$OURS_BIG_PULL" "$GO_BIG_PULL")x; our peak RSS goal < 64M"
