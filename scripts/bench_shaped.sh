#!/usr/bin/env bash
# `lasp bench sp` over a bandwidth-limited network on this one machine: a network namespace of its own whose
# loopback is shaped by tc (token bucket), every rank started inside it with Open MPI restricted to TCP on
# that loopback. Shared memory would make communication almost free and hide what LASP-2 is for.
# The namespace is removed when the script ends, also when it is interrupted.
# usage: scripts/bench_shaped.sh RATE RANKS [lasp bench sp options...]   e.g. scripts/bench_shaped.sh 1gbit 4
#        (needs root, as `ip netns` does)
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:?rate, e.g. 1gbit}
ranks=${2:?number of ranks}
shift 2
ns="lasp-bench-$$"
cleanup() { ip netns del "$ns" 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" tc qdisc add dev lo root tbf rate "$rate" burst 256kb latency 50ms
echo "network namespace $ns: loopback shaped to $rate"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
ip netns exec "$ns" mpirun --oversubscribe --bind-to none -np "$ranks" --mca pml ob1 --mca btl self,tcp \
  --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo build/lasp bench sp "$@"
