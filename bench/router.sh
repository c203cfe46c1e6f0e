#!/usr/bin/env bash
# Router benchmark: one nginx backend, then atlantis-router, HAProxy and nginx in front of it, measured with
# the same wrk settings: first one worker thread each, then all cores, then (phase "c256") all cores with
# 256 connections to the one backend (idle backend connection pools must follow demand, not churn). Then
# our router with 10 vs 10,000
# rules, and the time from a rule change written to ZooKeeper to the first request routed by it.
#
# Usage: bench/router.sh   (env: BENCH_SECONDS=10, BENCH_ROUNDS=3, BENCH_CONNS=64, SKIP_BUILD=1, CHANGES=100,
#                           BENCH_CAP=0.5, BENCH_PHASES="single all capped c256")
# Targets are measured in interleaved rounds and the median is reported, so a load spike on a shared
# machine hits every target alike.
#
# On a small machine wrk, the backend and the proxy share the cores, so the proxy is only part of the CPU
# each request costs and rps moves much less than the proxy's own cost. A third phase ("capped") therefore
# gives each proxy the same CPU budget (BENCH_CAP of one core, a cgroup CPU quota) and one worker thread:
# the proxy is then the bottleneck, and rps says how much each proxy serves with the same CPU. Needs root
# and the cgroup cpu controller (v1 or v2); skipped with a note otherwise.
# Needs: zookeeper, nginx, haproxy, wrk, curl, python3 (Debian packages), and cargo unless SKIP_BUILD=1.
# Prints rps, p50, p99 and CPU time per request (the proxy's own user+system time / requests) per target,
# and our ratio to each; performance is reported, never asserted.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
SECS=${BENCH_SECONDS:-10}
CONNS=${BENCH_CONNS:-64}
CHANGES=${CHANGES:-100}
ROUNDS=${BENCH_ROUNDS:-3}
CORES=$(nproc)

for bin in java nginx haproxy wrk curl python3; do
  command -v "$bin" >/dev/null || { echo "bench needs $bin (apt-get install zookeeper nginx haproxy wrk curl python3)" >&2; exit 1; }
done
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  (cd "$REPO" && cargo build --release -q -p atlantis-router --bin atlantis-router --example bench_tool)
fi
ROUTER=$TARGET/release/atlantis-router
TOOL=$TARGET/release/examples/bench_tool

W=$(mktemp -d /tmp/atlantis-router-bench.XXXXXX); chmod 755 "$W"  # nginx workers run as another user
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap 'cleanup; uncap_all' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url [host]
  for _ in $(seq 300); do
    curl -s -o /dev/null --noproxy '*' -H "Host: ${2:-x}" -f "$1" && return 0; sleep 0.05
  done
  echo "timed out waiting for $1" >&2; return 1
}
start() { # name cmd...  (background, logs to $W/name.log)
  local name=$1; shift
  "$@" >"$W/$name.log" 2>&1 &
  PIDS+=($!)
  eval "PID_$name=$!"
}
stop() { # name
  local v="PID_$1"; local p=${!v}
  kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true
}

# ZooKeeper.
ZKP=$(free_port); mkdir -p "$W/zk/data"
cat >"$W/zk/zoo.cfg" <<EOF
tickTime=2000
dataDir=$W/zk/data
clientPort=$ZKP
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=srvr,conf
EOF
start zk java -Xmx256m -cp /usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar \
  -Dorg.slf4j.simpleLogger.defaultLogLevel=warn org.apache.zookeeper.server.quorum.QuorumPeerMain "$W/zk/zoo.cfg"
for _ in $(seq 200); do echo srvr | nc -w1 127.0.0.1 "$ZKP" 2>/dev/null | grep -q '^Mode:' && break; sleep 0.05; done

# Backend: nginx serving a small static file.
BP=$(free_port); mkdir -p "$W/www"; printf 'hello from the backend\n' >"$W/www/index.html"
cat >"$W/backend.conf" <<EOF
worker_processes $CORES; daemon off; pid $W/backend.pid; error_log $W/backend.err;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$BP; location = /healthz { return 200 "ok\n"; }
    location = /nginx_status { stub_status; } location / { root $W/www; } } }
EOF
start backend nginx -c "$W/backend.conf"
wait_http "http://127.0.0.1:$BP/"

RP=$(free_port)    # our routed port (10 rules)
RP10K=$(free_port) # a second router's port (10,000 rules)
"$TOOL" seed "127.0.0.1:$ZKP" /bench "$RP" "127.0.0.1:$BP" 10 >/dev/null

start_router() { # name root port workers
  local sp; sp=$(free_port)
  cat >"$W/$1.toml" <<EOF
status_addr = "127.0.0.1:$sp"
listen_ip = "127.0.0.1"
host = "bench-router"
workers = $4
access_log = false
[zookeeper]
servers = "127.0.0.1:$ZKP"
region = "bench"
root = "$2"
EOF
  # A snapshot file of its own (a top-level key, so it goes before the [zookeeper] table).
  sed -i "1i snapshot_path = \"$W/$1.snapshot.json\"" "$W/$1.toml"
  RUST_LOG=warn start "$1" "$ROUTER" --config "$W/$1.toml"
  wait_http "http://127.0.0.1:$3/" app9.bench
}

start_haproxy() { # threads
  HP=$(free_port)
  cat >"$W/haproxy.cfg" <<EOF
global
  nbthread $1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  option forwardfor
frontend f
  bind 127.0.0.1:$HP
  default_backend b
backend b
  balance leastconn
  server s1 127.0.0.1:$BP check inter 5s
EOF
  start haproxy haproxy -db -f "$W/haproxy.cfg"
  wait_http "http://127.0.0.1:$HP/"
}

start_nginx() { # workers
  NP=$(free_port)
  cat >"$W/proxy.conf" <<EOF
worker_processes $1; daemon off; pid $W/proxy.pid; error_log $W/proxy.err;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000;
  upstream b { server 127.0.0.1:$BP; keepalive 256; }
  server { listen 127.0.0.1:$NP;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } } }
EOF
  start nginxproxy nginx -c "$W/proxy.conf"
  wait_http "http://127.0.0.1:$NP/"
}

# CPU time (user + system, all threads) of a process and its children, in clock ticks.
cpu_ticks() { # pid
  local t=0 p f a
  for p in $1 $(ps -o pid= --ppid "$1" 2>/dev/null); do
    for f in /proc/"$p"/task/*/stat; do
      [ -r "$f" ] || continue
      read -r -a a <"$f" || continue
      t=$((t + a[13] + a[14]))
    done
  done
  echo "$t"
}
TICK=$(getconf CLK_TCK)

# The CPU budget of the capped phase: a cgroup (v2 if its cpu controller is on, else v1) per proxy.
CAP=${BENCH_CAP:-0.5}
CGROOT=""
if [ -w /sys/fs/cgroup/cgroup.subtree_control ] && grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
  CGROOT=/sys/fs/cgroup CGV=2
elif [ -w /sys/fs/cgroup/cpu/cgroup.procs ] && [ -e /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
  CGROOT=/sys/fs/cgroup/cpu CGV=1
fi
CGROUPS=()
cap_cpu() { # pid: moves the process and its children (all threads) into a group capped at $CAP cores
  local g=$CGROOT/atlantis-bench-$$-$1 period=10000 p
  mkdir "$g"; CGROUPS+=("$g")
  local quota; quota=$(python3 -c "import sys; print(int(float(sys.argv[1])*$period))" "$CAP")
  if [ "$CGV" = 2 ]; then echo "$quota $period" >"$g/cpu.max"
  else echo "$period" >"$g/cpu.cfs_period_us"; echo "$quota" >"$g/cpu.cfs_quota_us"; fi
  for p in $1 $(ps -o pid= --ppid "$1" 2>/dev/null); do echo "$p" >"$g/cgroup.procs"; done
}
uncap_all() { # the processes are stopped first; an empty group can be removed
  local g
  for g in "${CGROUPS[@]}"; do rmdir "$g" 2>/dev/null || true; done
  CGROUPS=()
}
# One wrk run; appends "rps p50_ms p99_ms cpu_us_per_request" to $W/results/<label>. CPU per request is the
# proxy's own CPU time divided by the requests served: on a shared machine it moves much less than rps.
mkdir -p "$W/results"
to_ms() { python3 -c 'import sys,re; v=sys.argv[1]; m=re.match(r"([\d.]+)(us|ms|s)$",v); n=float(m.group(1)); print(round(n/1000 if m.group(2)=="us" else n*1000 if m.group(2)=="s" else n,3))' "$1"; }
run_wrk() { # label port threads conns host pid
  local label=$1 port=$2 threads=$3 conns=$4 host=$5 pid=$6 out c0 c1 reqs
  wrk -t"$threads" -c"$conns" -d1s -H "Host: $host" "http://127.0.0.1:$port/" >/dev/null 2>&1 || true
  c0=$(cpu_ticks "$pid")
  out=$(wrk -t"$threads" -c"$conns" -d"${SECS}s" --latency -H "Host: $host" "http://127.0.0.1:$port/")
  c1=$(cpu_ticks "$pid")
  if echo "$out" | grep -q 'Non-2xx'; then echo "$out" >&2; echo "$label answered errors" >&2; exit 1; fi
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  echo "$(echo "$out" | awk '/^Requests\/sec/ {print $2}') $(to_ms "$(echo "$out" | awk '$1=="50%" {print $2}')") $(to_ms "$(echo "$out" | awk '$1=="99%" {print $2}')") $(python3 -c "import sys; print(round((int(sys.argv[2])-int(sys.argv[1]))/int(sys.argv[3])*1e6/int(sys.argv[4]),2))" "$c0" "$c1" "$TICK" "$reqs")" >>"$W/results/$label"
}
# Median over the rounds of each column; prints a line and sets RPS_, P99_ and CPU_<label>.
# Connections the backend accepted (nginx stub_status).
backend_accepts() { curl -s "http://127.0.0.1:$BP/nginx_status" | awk 'NR==3 {print $1}'; }
counted() { # label port threads conns host pid: run_wrk, and record the backend connections it opened
  local before; before=$(backend_accepts)
  run_wrk "$@"
  echo $(( $(backend_accepts) - before )) >>"$W/results/$1.accepts"
}

median() { # label
  local rps p50 p99 cpu key=${1//-/_}
  read -r rps p50 p99 cpu < <(python3 -c '
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
print(*(statistics.median(c) for c in zip(*rows)))' "$W/results/$1")
  printf '%-22s rps=%8.0f  p50=%6.2fms  p99=%6.2fms  cpu=%6.2fus/req  (median of %s runs)\n' "$1" "$rps" "$p50" "$p99" "$cpu" "$(wc -l <"$W/results/$1")"
  printf -v "RPS_$key" '%s' "$rps"
  printf -v "P99_$key" '%s' "$p99"
  printf -v "CPU_$key" '%s' "$cpu"
}
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')" "$1" "$2"; }

echo "machine: $CORES cores, load average before: $(cut -d' ' -f1-3 /proc/loadavg); wrk ${SECS}s x $ROUNDS interleaved rounds, $CONNS connections per thread-set"
PHASES="single all"
if [ -n "$CGROOT" ]; then PHASES="$PHASES capped"; else echo "note: no writable cgroup cpu controller: the capped phase is skipped"; fi
PHASES="$PHASES c256"
# BENCH_PHASES="single c256" runs only those phases (and skips the rules and change-latency parts).
ONLY=${BENCH_PHASES:-}
if [ -n "$ONLY" ]; then PHASES=$ONLY; fi
for phase in $PHASES; do
  case $phase in
    single|capped) T=1; C=$CONNS; RW=1 ;;
    all) T=$CORES; C=$((CONNS * 2)); RW=0 ;;
    c256) T=$CORES; C=256; RW=0 ;;
  esac
  if [ $phase = capped ]; then
    echo "== capped: 1 worker thread per proxy, each limited to $CAP of a core (cgroup v$CGV quota), wrk -t$T -c$C =="
  elif [ $phase = c256 ]; then
    echo "== c256: $T worker thread(s) per proxy, 256 connections to the one backend, wrk -t$T -c$C =="
  else
    echo "== $phase: $T worker thread(s) per proxy, wrk -t$T -c$C =="
  fi
  start_router atl /bench "$RP" "$RW"; start_haproxy "$T"; start_nginx "$T"
  if [ $phase = capped ]; then cap_cpu "$PID_atl"; cap_cpu "$PID_haproxy"; cap_cpu "$PID_nginxproxy"; fi
  for _ in $(seq "$ROUNDS"); do
    counted backend-$phase "$BP" "$T" "$C" x "$PID_backend"
    counted atlantis-$phase "$RP" "$T" "$C" app9.bench "$PID_atl"
    counted haproxy-$phase "$HP" "$T" "$C" x "$PID_haproxy"
    counted nginx-$phase "$NP" "$T" "$C" x "$PID_nginxproxy"
  done
  stop atl; stop haproxy; stop nginxproxy; uncap_all
  for t in backend atlantis haproxy nginx; do median "$t-$phase"; done
  echo "backend connections opened per run (median; the backend's own row is wrk's): $(for t in backend atlantis haproxy nginx; do
    printf '%s %s  ' "$t" "$(python3 -c 'import statistics,sys; print(int(statistics.median(int(l) for l in open(sys.argv[1]) if l.strip())))' "$W/results/$t-$phase.accepts")"; done)"
  a=atlantis_$phase; h=haproxy_$phase; n=nginx_$phase
  ar=RPS_$a ap=P99_$a ac=CPU_$a hr=RPS_$h hp=P99_$h hc=CPU_$h nr=RPS_$n np=P99_$n nc=CPU_$n
  echo "ratio atlantis/haproxy ($phase): rps x$(ratio "${!ar}" "${!hr}"), p99 x$(ratio "${!ap}" "${!hp}"), cpu/request x$(ratio "${!ac}" "${!hc}") (p99, cpu: lower is better)"
  echo "ratio atlantis/nginx   ($phase): rps x$(ratio "${!ar}" "${!nr}"), p99 x$(ratio "${!ap}" "${!np}"), cpu/request x$(ratio "${!ac}" "${!nc}") (p99, cpu: lower is better)"
done

if [ -n "$ONLY" ]; then echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"; exit 0; fi
echo "== rules: 10 vs 10,000 host rules (1 worker thread each), request for the last host rule =="
"$TOOL" seed "127.0.0.1:$ZKP" /bench10k "$RP10K" "127.0.0.1:$BP" 10000 >/dev/null
start_router atl10 /bench "$RP" 1
start_router atl10k /bench10k "$RP10K" 1
wait_http "http://127.0.0.1:$RP10K/" app9999.bench
for _ in $(seq "$ROUNDS"); do
  run_wrk "atlantis-10-rules" "$RP" 1 "$CONNS" app9.bench "$PID_atl10"
  run_wrk "atlantis-10000-rules" "$RP10K" 1 "$CONNS" app9999.bench "$PID_atl10k"
done
median atlantis-10-rules
median atlantis-10000-rules
echo "loss at 10,000 rules: rps $(python3 -c "import sys; print(f'{(1-float(sys.argv[1])/float(sys.argv[2]))*100:.1f}%')" "$RPS_atlantis_10000_rules" "$RPS_atlantis_10_rules"), cpu/request $(python3 -c "import sys; print(f'{(float(sys.argv[1])/float(sys.argv[2])-1)*100:+.1f}%')" "$CPU_atlantis_10000_rules" "$CPU_atlantis_10_rules")"

echo "== rule change -> first routed request ($CHANGES changes, 10,000 rules in the table) =="
"$TOOL" latency "127.0.0.1:$ZKP" /bench10k "$RP10K" "$CHANGES"
stop atl10; stop atl10k
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
