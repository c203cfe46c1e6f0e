#!/usr/bin/env bash
# Builder benchmark: the busybox sample app built and pushed to the same registry (atlantis-registry) by
#   ours:   atlantis-builder build APP --push 127.0.0.1:PORT/apps/busybox-web:SHA
#   docker: docker build (legacy builder, a Dockerfile equivalent to the busybox template: FROM scratch,
#           the same busybox root, the app in /app, the same ENV/EXPOSE/WORKDIR/LABEL/CMD) + docker push
# in two cases, each the median of RUNS runs:
#   cold:     empty layer cache (ours) / --no-cache and no images (docker), and an empty registry
#   one-file: after a warm build and push, one file of the app changed, then build + push again
# Prints the medians and the ratios docker/ours. Goals: 3x faster cold, a one-file rebuild under 1 s.
#
# dockerd runs in its own network namespace (recipe A of services.md) and the registry runs inside it on
# its 127.0.0.1, which docker treats as plain HTTP; our builder runs in the namespace too (nsenter).
#
# Usage: bench/builder.sh [RUNS]   (default 5; needs root, dockerd, busybox-static, curl, nsenter, ip)
#        BUILDER_BIN=... REGISTRY_BIN=... bench/builder.sh   uses those binaries instead of building them
set -euo pipefail
RUNS=${1:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SUF=$$
NS=atlbb$SUF
VH=bb${SUF}h
VC=bb${SUF}c
B=$(( (SUF / 64) % 256 )); C=$(( (SUF % 64) * 4 ))
HOST_IP=10.253.$B.$((C + 1))
NS_IP=10.253.$B.$((C + 2))
W=$(mktemp -d /tmp/atlantis-bbench-XXXXXX)
DOCKERD_PID=""
REG_PID=""
PORT=5000
SHA=1a2b3c4

cleanup() {
  set +e
  [ -n "$REG_PID" ] && { kill "$REG_PID" 2>/dev/null; wait "$REG_PID" 2>/dev/null; }
  if [ -n "$DOCKERD_PID" ]; then
    docker ps -aq 2>/dev/null | xargs -r docker rm -f >/dev/null 2>&1
    kill "$DOCKERD_PID" 2>/dev/null; wait "$DOCKERD_PID" 2>/dev/null
  fi
  grep -o " $W[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount 2>/dev/null
  ip link del "$VH" 2>/dev/null
  ip netns del "$NS" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT

for bin in dockerd docker curl nsenter ip; do
  command -v "$bin" >/dev/null || { echo "missing $bin (see .ci/install)" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "missing /bin/busybox (apt-get install busybox-static)" >&2; exit 1; }

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -z "${BUILDER_BIN:-}" ]; then
  echo "building atlantis-builder and atlantis-registry (release)..." >&2
  (cd "$ROOT" && cargo build --release -q -p atlantis-builder -p atlantis-registry)
fi
BUILDER=${BUILDER_BIN:-$TARGET/release/atlantis-builder}
REGISTRY=${REGISTRY_BIN:-$TARGET/release/atlantis-registry}

ip netns add "$NS"
ip -n "$NS" link set lo up
ip link add "$VH" type veth peer name "$VC" netns "$NS"
ip addr add "$HOST_IP/30" dev "$VH" && ip link set "$VH" up
ip -n "$NS" addr add "$NS_IP/30" dev "$VC" && ip -n "$NS" link set "$VC" up
nsenter --net="/run/netns/$NS" dockerd --data-root "$W/data" --exec-root "$W/exec" -H "unix://$W/docker.sock" \
  --pidfile "$W/dockerd.pid" >"$W/dockerd.log" 2>&1 &
DOCKERD_PID=$!
export DOCKER_HOST="unix://$W/docker.sock" DOCKER_BUILDKIT=0
for _ in $(seq 400); do docker info >/dev/null 2>&1 && break; kill -0 $DOCKERD_PID || { tail "$W/dockerd.log"; exit 1; }; sleep 0.05; done

in_ns() { nsenter --net="/run/netns/$NS" "$@"; }

# A fresh, empty registry in the namespace on 127.0.0.1:$PORT.
fresh_registry() {
  if [ -n "$REG_PID" ]; then
    kill -0 "$REG_PID" 2>/dev/null || { echo "the registry died:" >&2; grep -v "^ " "$W/reg.log" | tail -5 >&2; exit 1; }
    kill "$REG_PID"; wait "$REG_PID" 2>/dev/null || true
  fi
  rm -rf "$W/reg"; mkdir -p "$W/reg"
  printf 'listen = "127.0.0.1:%s"\n[storage]\nkind = "filesystem"\nroot = "%s/reg/data"\n' "$PORT" "$W" > "$W/reg/config.toml"
  RUST_LOG=warn nsenter --net="/run/netns/$NS" "$REGISTRY" --config "$W/reg/config.toml" >"$W/reg.log" 2>&1 &
  REG_PID=$!
  for _ in $(seq 400); do
    in_ns curl -s -o /dev/null "http://127.0.0.1:$PORT/v2/" && return 0
    kill -0 "$REG_PID" 2>/dev/null || { tail "$W/reg.log" >&2; exit 1; }; sleep 0.02
  done
  echo "registry did not answer" >&2; exit 1
}

# The app (the busybox sample) and its Dockerfile twin, with the busybox root prepared once (like our
# template's base material, which comes from the busybox-static package).
APP=$W/app
cp -r "$ROOT/builder/samples/busybox-web" "$APP"
CTX=$W/ctx; mkdir -p "$CTX/rootfs/bin" "$CTX/rootfs/etc" "$CTX/rootfs/tmp"
cp /bin/busybox "$CTX/rootfs/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$CTX/rootfs/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$CTX/rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$CTX/rootfs/etc/group"
chmod 1777 "$CTX/rootfs/tmp"
cat > "$CTX/Dockerfile" <<EOF
FROM scratch
COPY rootfs/ /
COPY app/ /app/
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin GREETING="hello from the busybox template"
EXPOSE 8080
WORKDIR /app
LABEL atlantis.sha=$SHA atlantis.app=busybox-web
CMD ["/bin/sh", "/app/start.sh"]
EOF
sync_app() { rm -rf "$CTX/app"; cp -r "$APP" "$CTX/app"; }

REF=127.0.0.1:$PORT/apps/busybox-web:$SHA
now() { date +%s.%N; }
ours() { in_ns "$BUILDER" build "$APP" --push "$REF" --cache-dir "$1" -q >/dev/null; }
theirs() { docker build -q "${@}" -t "$REF" "$CTX" >/dev/null && docker push -q "$REF" >/dev/null; }
median() { sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }
touch_file() { echo "change $1 $(date +%s%N)" >> "$APP/www/index.html"; }

OURS_COLD=(); DOCKER_COLD=(); OURS_ONE=(); DOCKER_ONE=()
for i in $(seq "$RUNS"); do
  echo "run $i/$RUNS..." >&2
  # Ours, cold: empty cache, empty registry.
  fresh_registry; rm -rf "$W/cache"
  t0=$(now); ours "$W/cache"; t1=$(now)
  OURS_COLD+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')")
  # Ours, one file changed after that warm build.
  touch_file "ours-$i"
  t0=$(now); ours "$W/cache"; t1=$(now)
  OURS_ONE+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')")

  # Docker, cold: no images, no build cache, empty registry.
  fresh_registry
  docker image ls -q | xargs -r docker rmi -f >/dev/null 2>&1 || true
  sync_app
  t0=$(now); theirs --no-cache; t1=$(now)
  DOCKER_COLD+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')")
  # Docker, one file changed after that warm build.
  touch_file "docker-$i"; sync_app
  t0=$(now); theirs; t1=$(now)
  DOCKER_ONE+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')")
done

oc=$(printf '%s\n' "${OURS_COLD[@]}" | median); dc=$(printf '%s\n' "${DOCKER_COLD[@]}" | median)
oo=$(printf '%s\n' "${OURS_ONE[@]}" | median); do1=$(printf '%s\n' "${DOCKER_ONE[@]}" | median)
echo
echo "busybox-web, build + push, median of $RUNS (seconds)"
printf '%-10s %10s %10s %16s\n' case ours docker docker/ours
printf '%-10s %10s %10s %15.1fx\n' cold "$oc" "$dc" "$(awk -v a="$dc" -v b="$oc" 'BEGIN {print a / b}')"
printf '%-10s %10s %10s %15.1fx\n' one-file "$oo" "$do1" "$(awk -v a="$do1" -v b="$oo" 'BEGIN {print a / b}')"
echo "all runs: ours cold ${OURS_COLD[*]} | ours one-file ${OURS_ONE[*]}"
echo "          docker cold ${DOCKER_COLD[*]} | docker one-file ${DOCKER_ONE[*]}"
