#!/bin/sh
# bench.sh measures the tunproxy example end to end, with real tools at
# both ends: an unmodified iperf3 -c in a client namespace whose default
# route goes into a TUN device, an unmodified iperf3 -s in a server
# namespace reached through the proxy's own dials, both directions, 1 and
# 8 streams, for every receive path, with the proxy's CPU seconds per GB;
# then verified transfers under the mixed impairment, and throughput,
# merge ratio and CPU per GB at 1, 8, 64 and 1000 connections. It writes
# a CPU profile of the proxy per path and prints the top of the default
# path's.
#
# Needs root (network namespaces, a TUN device) and iperf3.
#
# Usage: examples/tunproxy/bench.sh [seconds per iperf3 run, default 10]
set -eu
cd "$(dirname "$0")/../.."
secs=${1:-10}
prof=${PPROF_DIR:-/tmp/tunproxy-pprof}
mkdir -p "$prof"
uptime
go test -count=1 -timeout 60m -v \
	-run 'TestIperf3ThroughProxy|TestVerifiedThroughProxyMixed|TestManyConnectionsThroughProxy' \
	./examples/tunproxy -args -tunproxy.full -tunproxy.time "$secs" -tunproxy.pprof "$prof"
uptime
echo "CPU profiles of the proxy, one per path: $prof/*.pprof"
go tool pprof -top -nodecount=30 "$prof/netlro-vnet-up-1.pprof" 2>/dev/null | head -40
