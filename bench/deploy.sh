#!/usr/bin/env bash
# Deploy benchmark: deploy of an image already in the registry until the first 200 through the router,
# vs a bare `docker run` of the same image until its first HTTP answer; median of RUNS each, ratio and
# difference printed (goal: within 500 ms of the docker run floor). Then a redeploy under a paced load
# of RATE requests/s for 12 s: requests answered and failed.
#
# The cluster is the manager test cluster, built in process by manager/examples/deploy_bench.rs: a real
# ZooKeeper, two supervisors in two zones, each on its own dockerd in a network namespace, a router, the
# registry and the manager. Everything it made is removed on exit.
#
# Usage: bench/deploy.sh [RUNS]   (default 5; env RATE=400, PROFILE=release|dev; needs root, zookeeper,
#        docker.io, busybox-static, iproute2, iptables)
set -euo pipefail
RUNS=${1:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROFILE=${PROFILE:-release}
export NO_PROXY=127.0.0.1 no_proxy=127.0.0.1
unset HTTP_PROXY http_proxy HTTPS_PROXY https_proxy ALL_PROXY || true
[ "$(id -u)" = 0 ] || { echo "bench/deploy.sh needs root (network namespaces, dockerd)" >&2; exit 1; }
echo "building the deploy benchmark ($PROFILE)..." >&2
cd "$ROOT"
if [ "$PROFILE" = release ]; then
  cargo run -q --release -p atlantis-manager --example deploy_bench -- "$RUNS"
else
  cargo run -q -p atlantis-manager --example deploy_bench -- "$RUNS"
fi
