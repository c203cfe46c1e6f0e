#!/usr/bin/env bash
# Placement benchmark: CONTAINERS containers (default 10,000, as APPS=100 releases) placed over HOSTS
# (default 1,000) simulated hosts in 3 zones by the manager's real placement code, with the fleet read
# from and the instance nodes written to a real ZooKeeper (transactions of BATCH=500 creates, 8 in flight), then
# started on in-memory fake supervisors that refuse anything over capacity. Goal: all placed in under
# 5 s, no host over capacity, zones within one container of each other. Then the manager API's read
# latency (p50, p99) under CLIENTS=200 concurrent clients for SECONDS=10 s against a real manager.
#
# Usage: bench/placement.sh   (env HOSTS, CONTAINERS, APPS, BATCH, CLIENTS, SECONDS, PROFILE=release|dev;
#        needs zookeeper and a JRE, see .ci/install). Exit status 1 when the placement goal is missed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROFILE=${PROFILE:-release}
export NO_PROXY=127.0.0.1 no_proxy=127.0.0.1
unset HTTP_PROXY http_proxy HTTPS_PROXY https_proxy ALL_PROXY || true
cd "$ROOT"
echo "building the placement benchmark ($PROFILE)..." >&2
if [ "$PROFILE" = release ]; then
  cargo run -q --release -p atlantis-manager --example placement_bench
else
  cargo run -q -p atlantis-manager --example placement_bench
fi
