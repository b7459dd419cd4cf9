#!/usr/bin/env bash
# `lasp bench sp` over a bandwidth-limited network on this one machine. Shared memory would make
# communication almost free and hide what LASP-2 is for, so every rank talks Open MPI TCP over links shaped
# by tc (token bucket). Two topologies:
#   switch (default): a cluster in miniature. Each rank runs in a network namespace of its own with one
#     veth link into a bridge (the switch); the link is shaped to RATE in both directions, so every rank has
#     its own full-duplex RATE "NIC" and the switch is non-blocking, as between the nodes of a cluster.
#   shared: every rank in one namespace whose loopback is shaped to RATE: all traffic of all ranks shares one
#     RATE link (a hub), which penalises collectives that move more bytes in total.
# With more ranks than cores, each rank also gets a fixed share of the cores (cgroup CPU quota, cores/ranks
# each): a rank that waits leaves its share idle, as a GPU that waits does, instead of lending the core to
# another rank, which would hide every wait (--no-cpu-cap turns this off).
# Namespaces are removed when the script ends, also when it is interrupted.
# usage: scripts/bench_shaped.sh RATE RANKS [--topology switch|shared] [--no-cpu-cap] [lasp bench sp options...]
#        e.g. scripts/bench_shaped.sh 1gbit 4 --seq-lens 8192      (needs root, as `ip netns` does)
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:?rate, e.g. 1gbit}
ranks=${2:?number of ranks}
shift 2
topology=switch cpu_cap=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --topology) topology=${2:?switch or shared}; shift 2;;
    --no-cpu-cap) cpu_cap=0; shift;;
    *) break;;
  esac
done
case "$topology" in switch|shared) ;; *) echo "--topology: expected switch or shared, got '$topology'" >&2; exit 2;; esac
[[ "$ranks" =~ ^[1-9][0-9]*$ ]] || { echo "RANKS: expected a positive integer, got '$ranks'" >&2; exit 2; }
(( ranks <= 250 )) || { echo "RANKS: at most 250 (one /24 subnet), got $ranks" >&2; exit 2; }

ns="lasp-bench-$$"
cgroot=/sys/fs/cgroup/cpu
namespaces=() cgroups=()
cleanup() {
  for n in "${namespaces[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  for g in "${cgroups[@]}"; do rmdir "$g" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Token bucket (this kernel has no netem). The bucket must stay small: a full bucket lets a message of its
# size through at memory speed, and LASP-1's and LASP-2's d x d states are messages of 32-512 KB. So burst =
# 0.2 ms of the rate, at least 16 KB (less starves the qdisc's timer at Gbit rates).
[[ "$rate" =~ ^([0-9]+)(kbit|mbit|gbit)$ ]] || { echo "RATE: expected a number with kbit, mbit or gbit (e.g. 1gbit), got '$rate'" >&2; exit 2; }
case "${BASH_REMATCH[2]}" in kbit) bits=$((BASH_REMATCH[1] * 1000));; mbit) bits=$((BASH_REMATCH[1] * 1000000));; gbit) bits=$((BASH_REMATCH[1] * 1000000000));; esac
burst=$((bits / 8 / 5000)); (( burst >= 16384 )) || burst=16384
tbf="tbf rate $rate burst $burst latency 50ms"
# What the links really give: one 64 KiB message (the size of a small state) and a 8 MiB stream, r0 -> r1.
link_check() {
  ip netns exec "$2" /usr/bin/python3 -c '
import socket, sys
s = socket.create_server((sys.argv[1], 5099)); c, _ = s.accept()
for n in (65536, 65536, 8 << 20):
    got = 0
    while got < n: got += len(c.recv(1 << 20))
    c.sendall(b"k")' "$3" &
  local server=$!
  sleep 0.3
  ip netns exec "$1" /usr/bin/python3 -c '
import socket, sys, time
c = socket.create_connection((sys.argv[1], 5099)); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
out = []
for n in (65536, 65536, 8 << 20):
    time.sleep(0.1); t = time.perf_counter(); c.sendall(b"x" * n); c.recv(1); dt = time.perf_counter() - t
    out.append((n, dt))
print("link check r0 -> r1: 64 KiB message in %.2f ms, 8 MiB at %.0f Mbit/s" % (out[1][1] * 1e3, out[2][0] * 8 / out[2][1] / 1e6))' "$3"
  wait "$server"
}
add_ns() { ip netns add "$1"; namespaces+=("$1"); ip netns exec "$1" ip link set lo up; }

cores=$(nproc --all)
(( ranks > cores )) || cpu_cap=0
if (( cpu_cap )); then
  [[ -w "$cgroot" ]] || { echo "the CPU cap needs the cgroup v1 cpu controller at $cgroot (writable); found none. Use --no-cpu-cap to run without it" >&2; exit 1; }
  for ((r = 0; r < ranks; r++)); do
    g="$cgroot/$ns-r$r"; mkdir "$g"; cgroups+=("$g")
    echo 10000 > "$g/cpu.cfs_period_us"                        # 10 ms periods: fine-grained sharing
    echo $((10000 * cores / ranks)) > "$g/cpu.cfs_quota_us"
  done
  echo "each rank capped at $cores/$ranks of a core"
fi

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
mpi=(mpirun --oversubscribe --bind-to none -np "$ranks" --mca pml ob1 --mca btl self,tcp)
if [[ "$topology" == shared ]]; then
  add_ns "$ns"
  ip netns exec "$ns" ip link set lo mtu 1500  # Ethernet frames: a 64 KB loopback frame would never fit the bucket
  ip netns exec "$ns" tc qdisc add dev lo root $tbf
  echo "network namespace $ns: loopback shaped to $rate, shared by all $ranks ranks"
  launcher_ns="$ns" rank_ns=""
  mpi+=(--mca btl_tcp_if_include lo --mca oob_tcp_if_include lo)
else
  subnet=10.213.0
  add_ns "$ns-switch"
  ip netns exec "$ns-switch" ip link add sw type bridge
  ip netns exec "$ns-switch" ip addr add "$subnet.254/24" dev sw
  ip netns exec "$ns-switch" ip link set sw up
  for ((r = 0; r < ranks; r++)); do
    add_ns "$ns-r$r"
    ip link add nic netns "$ns-r$r" type veth peer name "port$r" netns "$ns-switch"
    ip netns exec "$ns-switch" ip link set "port$r" master sw
    ip netns exec "$ns-switch" ip link set "port$r" up
    ip netns exec "$ns-r$r" ip addr add "$subnet.$((r + 1))/24" dev nic
    ip netns exec "$ns-r$r" ip link set nic up
    ip netns exec "$ns-r$r" tc qdisc add dev nic root $tbf          # uplink
    ip netns exec "$ns-switch" tc qdisc add dev "port$r" root $tbf  # downlink
  done
  echo "$ranks network namespaces $ns-r*: one $rate full-duplex link each into the bridge of $ns-switch"
  (( ranks >= 2 )) && link_check "$ns-r0" "$ns-r1" "$subnet.2"
  # mpirun runs in the switch's namespace; its PMIx server must accept the ranks' connections over the links.
  export PMIX_MCA_ptl_tcp_remote_connections=1 PMIX_MCA_ptl_tcp_if_include=sw
  launcher_ns="$ns-switch" rank_ns="$ns-r"
  mpi+=(--mca btl_tcp_if_include "$subnet.0/24" --mca oob_tcp_if_include sw)
fi
# Each rank joins its cgroup, then its network namespace. nsenter, unlike `ip netns exec`, enters only the
# network namespace and leaves the /sys mounts (and with them the cgroup tree) as they are.
rank_launch='r=$OMPI_COMM_WORLD_RANK
[ -z "$0" ] || echo $$ > "$0$r/cgroup.procs"
[ -z "$1" ] && shift 1 || { n="$1$r"; shift 1; set -- nsenter --net="/run/netns/$n" "$@"; }
exec "$@"'
cg_prefix=""; (( cpu_cap )) && cg_prefix="$cgroot/$ns-r"
nsenter --net="/run/netns/$launcher_ns" "${mpi[@]}" sh -c "$rank_launch" "$cg_prefix" "$rank_ns" \
  build/lasp bench sp "$@"
