#!/usr/bin/env bash
# bench.sh runs rootlesskit's network benchmark (its CI's
# hack/benchmark-iperf3-net.sh DRIVER MTU: an `iperf3 -s` in the parent's
# network namespace, `iperf3 -c 10.0.2.1` (gvisor-tap-vsock) or
# `-c 10.0.2.2` (slirp4netns, pasta) from the child) for several builds
# and drivers, interleaved, ROUNDS rounds of DURATION seconds each, at MTU
# 1500 and 65520, both directions (-R: parent to child). It prints one
# line per run and a summary of medians:
#
#   Gbit/s     iperf3's received rate
#   parent s/GB  CPU seconds of rootlesskit's parent process and its
#                helpers (slirp4netns, pasta) per GB received
#   child s/GB   CPU seconds of rootlesskit's child process (it copies
#                frames between the TAP and the socket) per GB
#
# CPU times are read from /proc/PID/stat (utime+stime, all threads) just
# before and after iperf3, from inside the child; without --pidns the
# child sees the host's /proc.
#
# Builds: bin/rootlesskit-stock (./prepare.sh -stock bin) and
# bin/rootlesskit (go build -o bin/rootlesskit
# github.com/rootless-containers/rootlesskit/v3/cmd/rootlesskit), the
# patched one also with NETLRO=nomerge (framed, no merging) and as
# "child" with NETLRO_CHILD=batch (the child batches its copies too).
#
# As root: everything runs in a network namespace of its own (t23bench),
# whose loopback the iperf3 server listens on; rootlesskit's user
# namespace needs newuidmap, newgidmap and getsubids, which stub scripts
# (rootstubs.sh, first in PATH) replace: as root they write
# /proc/PID/{uid,gid}_map directly and report 100000-165535 as root's
# subordinate range, so /etc/subuid is not touched. pasta refuses to run
# as root unless given --runas 0, so a wrapper first in PATH adds it (and
# --pid, to tell the benchmark which process it is); it also wants an
# external interface to copy: the namespace gets a veth pair
# (198.51.100.1/24, default route through it; nothing leaves).
#
# Usage: [NAMES="stock patched ..."] [ONLY1500="nomerge ..."] ./bench.sh [ROUNDS [DURATION [MTUS]]]
# (defaults: all six, 3 rounds, 10 s, "1500 65520"; ONLY1500: names run
# at MTU 1500 only)
set -euo pipefail
cd "$(dirname "$0")"
rounds=${1:-3}
duration=${2:-10}
mtus=${3:-1500 65520}
netns=t23bench

if [ "$(id -u)" != 0 ]; then
  echo "bench.sh: needs root here (a network namespace of its own); unprivileged, run rootlesskit's own hack/benchmark-iperf3-net.sh" >&2
  exit 1
fi
for exe in bin/rootlesskit bin/rootlesskit-stock; do
  [ -x "$exe" ] || { echo "bench.sh: $exe missing; see the header" >&2; exit 1; }
done

work=$(mktemp -d /tmp/t23bench.XXXXXX)
cleanup() {
  [ -n "${server:-}" ] && kill "$server" 2>/dev/null || true
  ip netns del "$netns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
sh rootstubs.sh "$work/bin"
export PATH="$work/bin:$PATH"

ip netns del "$netns" 2>/dev/null || true
ip netns add "$netns"
ip -n "$netns" link set lo up
# pasta copies the addresses and routes of an external interface: a
# veth pair, both ends in this namespace, with a documentation address.
ip -n "$netns" link add t23ext0 type veth peer name t23ext1
ip -n "$netns" addr add 198.51.100.1/24 dev t23ext0
ip -n "$netns" link set t23ext0 up
ip -n "$netns" link set t23ext1 up
ip -n "$netns" route add default via 198.51.100.2 dev t23ext0
ip netns exec "$netns" iperf3 -s >/dev/null 2>&1 &
server=$!

# cpu PIDS... prints the utime+stime ticks of the processes.
cat >"$work/measure.sh" <<'MEASURE'
#!/bin/sh
# Run by rootlesskit's child: $1 is the server address, $2 the output
# prefix, the rest iperf3's flags. Its parent is rootlesskit's child.
c=$PPID
p=$(awk '/^PPid:/{print $2}' /proc/$c/status)
ticks() { # ticks PID...: utime+stime of each, summed
  for pid in "$@"; do awk '{print $14+$15}' /proc/$pid/stat 2>/dev/null || echo 0; done | awk '{s+=$1} END {print s+0}'
}
helpers() { # the parent, its children but the rootlesskit child (slirp4netns), and pasta, which daemonizes
  echo $p
  cat /proc/$p/task/*/children 2>/dev/null | tr ' ' '\n' | grep -vx "$c" | grep .
  cat "$PASTA_PIDFILE" 2>/dev/null
}
addr=$1 out=$2; shift 2
pb=$(ticks $(helpers)); cb=$(ticks $c)
iperf3 -c "$addr" -J "$@" >"$out.json"
pa=$(ticks $(helpers)); ca=$(ticks $c)
echo "$((pa - pb)) $((ca - cb))" >"$out.cpu"
MEASURE
chmod +x "$work/measure.sh"
hz=$(getconf CLK_TCK)

# run NAME MTU DIR: one benchmark run; prints its line.
run() {
  local name=$1 mtu=$2 dir=$3 exe=bin/rootlesskit net=gvisor-tap-vsock addr=10.0.2.1 env=()
  case $name in
    stock) exe=bin/rootlesskit-stock ;;
    patched) ;;
    nomerge) env=(NETLRO=nomerge) ;;
    child) env=(NETLRO_CHILD=batch) ;;
    slirp4netns) exe=bin/rootlesskit-stock net=slirp4netns addr=10.0.2.2 ;;
    pasta) exe=bin/rootlesskit-stock net=pasta addr=10.0.2.2 ;;
  esac
  local out="$work/$name-$mtu$dir" state="$work/state-$name"
  rm -rf "$state" "$out".*
  local flags=(-t "$duration")
  [ "$dir" = -R ] && flags+=(-R)
  rm -f "$work/pasta.pid"
  if ! env "${env[@]}" PASTA_PIDFILE="$work/pasta.pid" timeout $((duration + 60)) ip netns exec "$netns" "$exe" --state-dir="$state" \
      --net="$net" --mtu="$mtu" -- "$work/measure.sh" "$addr" "$out" "${flags[@]}" >"$out.log" 2>&1 ||
      [ ! -s "$out.cpu" ]; then
    echo "$name mtu=$mtu ${dir:-up} FAILED: $(tail -3 "$out.log" | tr '\n' ' ')"
    return
  fi
  read -r pt ct <"$out.cpu"
  python3 - "$out.json" "$pt" "$ct" "$hz" "$name" "$mtu" "${dir:-up}" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
pt, ct, hz = (float(x) for x in sys.argv[2:5])
r = j["end"]["sum_received"]
gb = r["bytes"] / 1e9
print(f"{sys.argv[5]:<12} mtu={sys.argv[6]:<6} {sys.argv[7]:<3} {r['bits_per_second']/1e9:6.2f} Gbit/s "
      f"parent {pt/hz/gb:6.2f} s/GB child {ct/hz/gb:6.2f} s/GB ({gb:.2f} GB)")
PY
}

echo "# $(date -u '+%F %T') $(nproc) CPUs, $(uptime | sed 's/.*load/load/'); rounds=$rounds duration=${duration}s"
names=(${NAMES:-stock patched nomerge child slirp4netns pasta})
for ((round = 1; round <= rounds; round++)); do
  for mtu in $mtus; do
    for dir in "" -R; do
      # Interleave, and turn the order around every other round.
      order=("${names[@]}")
      if ((round % 2 == 0)); then
        order=(); for ((i = ${#names[@]} - 1; i >= 0; i--)); do order+=("${names[$i]}"); done
      fi
      for name in "${order[@]}"; do
        [ "$mtu" != 1500 ] && [ -n "${ONLY1500:-}" ] && [[ " $ONLY1500 " == *" $name "* ]] && continue
        run "$name" "$mtu" "$dir"
      done
    done
  done
done | tee "$work/runs"
echo "# $(date -u '+%F %T') $(uptime | sed 's/.*load/load/')"
python3 - "$work/runs" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\S+)\s+mtu=(\d+)\s+(\S+)\s+([\d.]+) Gbit/s parent\s+([\d.]+) s/GB child\s+([\d.]+) s/GB", line)
    if m:
        runs.setdefault(m.group(1, 2, 3), []).append([float(x) for x in m.group(4, 5, 6)])
print("# medians: name, MTU, direction, Gbit/s, parent s/GB, child s/GB, runs")
for (name, mtu, d), v in sorted(runs.items(), key=lambda kv: (int(kv[0][1]), kv[0][2], kv[0][0])):
    med = [statistics.median(col) for col in zip(*v)]
    print(f"{name:<12} {mtu:>6} {d:<3} {med[0]:6.2f} {med[1]:6.2f} {med[2]:6.2f} {len(v)}")
PY
