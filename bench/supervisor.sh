#!/usr/bin/env bash
# Benchmark: supervisor API deploy (until healthy) vs a bare `docker run` (until the first HTTP answer).
#
# Starts its own dockerd in a network namespace (recipe A of services.md), imports a busybox httpd image
# built locally, runs the release supervisor binary standalone (no ZooKeeper; firewall on, rules in the
# namespace), then takes the median over N runs of each:
#   supervisor: POST /v1/containers until it answers 201 (the container passed its health check)
#   anchor:     docker run -d -p ... until curl gets the first HTTP answer on the published port
# and prints both and the ratio supervisor/anchor. Everything it made is removed on exit.
#
# Usage: bench/supervisor.sh [RUNS]   (default 10; needs root, dockerd, busybox-static, curl, jq)
#        SUP_LOG=/tmp/sup.log RUST_LOG=info bench/supervisor.sh   keeps the supervisor's log
set -euo pipefail
RUNS=${1:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SUF=$$
NS=atlbench$SUF
VH=ab${SUF}h
VC=ab${SUF}c
# A /30 in 10.252.x.y chosen from the PID, unlikely to collide with the tests' 10.200-251 range.
B=$(( (SUF / 64) % 256 )); C=$(( (SUF % 64) * 4 ))
HOST_IP=10.252.$B.$((C + 1))
NS_IP=10.252.$B.$((C + 2))
W=$(mktemp -d /tmp/atlantis-bench-XXXXXX)
DOCKERD_PID=""
SUP_PID=""

cleanup() {
  set +e
  if [ -n "${SUP_LOG:-}" ] && [ -f "$W/sup.log" ]; then cp "$W/sup.log" "$SUP_LOG"; fi
  if [ -n "$SUP_PID" ]; then kill "$SUP_PID" 2>/dev/null; wait "$SUP_PID" 2>/dev/null; fi
  if [ -n "$DOCKERD_PID" ]; then
    docker -H "unix://$W/docker.sock" ps -aq 2>/dev/null | xargs -r docker -H "unix://$W/docker.sock" rm -f >/dev/null 2>&1
    kill "$DOCKERD_PID" 2>/dev/null; wait "$DOCKERD_PID" 2>/dev/null
  fi
  grep -o " $W[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount 2>/dev/null
  ip link del "$VH" 2>/dev/null
  ip netns del "$NS" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT

for bin in dockerd docker curl jq nsenter ip; do
  command -v "$bin" >/dev/null || { echo "missing $bin (see .ci/install)" >&2; exit 1; }
done

echo "building the release supervisor..." >&2
(cd "$ROOT" && cargo build --release -q -p atlantis-supervisor)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SUP_BIN=$TARGET/release/atlantis-supervisor

# The host: a namespace with a veth, and dockerd inside it.
ip netns add "$NS"
ip -n "$NS" link set lo up
ip link add "$VH" type veth peer name "$VC" netns "$NS"
ip addr add "$HOST_IP/30" dev "$VH" && ip link set "$VH" up
ip -n "$NS" addr add "$NS_IP/30" dev "$VC" && ip -n "$NS" link set "$VC" up
nsenter --net="/run/netns/$NS" dockerd --data-root "$W/data" --exec-root "$W/exec" -H "unix://$W/docker.sock" \
  --pidfile "$W/dockerd.pid" >"$W/dockerd.log" 2>&1 &
DOCKERD_PID=$!
export DOCKER_HOST="unix://$W/docker.sock"
for _ in $(seq 400); do docker info >/dev/null 2>&1 && break; kill -0 $DOCKERD_PID || { tail "$W/dockerd.log"; exit 1; }; sleep 0.05; done

# The image: Debian's static busybox serving /www (with /healthz) on 8080.
R=$W/rootfs; mkdir -p "$R/bin" "$R/www" "$R/etc" "$R/tmp"
cp /bin/busybox "$R/bin/" && chroot "$R" /bin/busybox --install -s /bin
echo "hello from busybox container" >"$R/www/index.html"; echo ok >"$R/www/healthz"
echo 'root:x:0:0:root:/:/bin/sh' >"$R/etc/passwd"; echo 'root:x:0:' >"$R/etc/group"
tar -C "$R" -cf "$W/rootfs.tar" .
docker import -c 'CMD ["/bin/busybox","httpd","-f","-p","8080","-h","/www"]' "$W/rootfs.tar" atlantis-bench/busybox:1 >/dev/null

# The supervisor.
TOKEN=bench-token-0123456789abcdef
(umask 077; echo "$TOKEN" >"$W/token")
cat >"$W/supervisor.toml" <<TOML
listen = "127.0.0.1:0"
host = "bench-host"
zone = "bench"
region = "bench"
token_file = "$W/token"
data_dir = "$W/sup"
[docker]
socket = "$W/docker.sock"
subnet = "172.30.0.0"
prefix_len = 24
[ports]
min_port = 42000
per_slot = 2
publish_ip = "$NS_IP"
[firewall]
netns = "/run/netns/$NS"
cluster_networks = ["$HOST_IP/30"]
[limits]
stop_timeout_ms = 500
TOML
RUST_LOG=${RUST_LOG:-warn} "$SUP_BIN" --config "$W/supervisor.toml" >"$W/sup.log" 2>&1 &
SUP_PID=$!
ADDR=""
for _ in $(seq 400); do
  ADDR=$(sed -n 's/^listening on //p' "$W/sup.log"); [ -n "$ADDR" ] && break
  kill -0 $SUP_PID || { cat "$W/sup.log"; exit 1; }; sleep 0.05
done
API="http://$ADDR/v1"
AUTH="Authorization: Bearer $TOKEN"

now_ns() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

sup_times=(); run_times=()
for i in $(seq "$RUNS"); do
  cid=$(printf 'bench-0123456-prod-%06d' "$i")
  spec=$(jq -nc --arg id "$cid" '{container_id:$id, app:"bench", sha:"0123456789", env:"prod",
    image:"atlantis-bench/busybox:1", cpu_millis:500, memory_mb:64, ports:[8080]}')
  t0=$(now_ns)
  code=$(curl -s -o "$W/deploy.json" -w '%{http_code}' -H "$AUTH" -H 'content-type: application/json' -d "$spec" "$API/containers")
  t1=$(now_ns)
  [ "$code" = 201 ] || { echo "deploy failed: $code $(cat "$W/deploy.json")" >&2; exit 1; }
  port=$(jq -r '.ports[0].host_port' "$W/deploy.json")
  curl -sf -o /dev/null "http://$NS_IP:$port/" || { echo "deployed container does not answer" >&2; exit 1; }
  sup_times+=($(( (t1 - t0) / 1000 )))
  curl -sf -o /dev/null -X DELETE -H "$AUTH" "$API/containers/$cid"

  t0=$(now_ns)
  docker run -d -q --name "anchor$i" -p "$NS_IP:43000:8080" atlantis-bench/busybox:1 >/dev/null
  until curl -s -o /dev/null "http://$NS_IP:43000/healthz"; do sleep 0.005; done
  t1=$(now_ns)
  run_times+=($(( (t1 - t0) / 1000 )))
  docker rm -f "anchor$i" >/dev/null
done

sup_med=$(printf '%s\n' "${sup_times[@]}" | median)
run_med=$(printf '%s\n' "${run_times[@]}" | median)
echo "runs: $RUNS"
echo "supervisor deploy until healthy, median: $(awk -v v="$sup_med" 'BEGIN {printf "%.1f ms", v/1000}')"
echo "bare docker run until first HTTP answer, median (anchor): $(awk -v v="$run_med" 'BEGIN {printf "%.1f ms", v/1000}')"
echo "ratio supervisor/anchor: $(awk -v a="$sup_med" -v b="$run_med" 'BEGIN {printf "%.2f", a/b}')"
