#!/usr/bin/env bash
# Benchmark: letterbox's DNS server against NSD and Knot, on one machine, in one run.
#
# All three serve the same zone (the output of `letterbox zone` for the 3-account fixture)
# on loopback, on different ports, with 2 server threads each and rate limiting off, and
# get the same dnsperf query mix (MX, A, AAAA, TXT and NXDOMAIN) for the same duration.
# dnsperf 2.10 (Debian 12) has no latency histogram, so p99 comes from its per-query
# verbose lines. Prints a table of QPS, mean and p99 latency and letterbox's ratios.
set -euo pipefail

DURATION=${DURATION:-15}
THREADS=${THREADS:-2}
CLIENTS=${CLIENTS:-4}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${LETTERBOX_BIN:-$ROOT/target/release/letterbox}
FIXTURE=$ROOT/tests/fixtures/dns
WORK=$(mktemp -d /tmp/letterbox-bench-dns.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

for tool in dnsperf nsd knotd "$BIN"; do
    command -v "$tool" >/dev/null || { echo "bench-dns: $tool not found" >&2; exit 1; }
done

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The same zone for everyone; letterbox with its rate limiting off, like the others.
sed 's/^rate_limit = .*/rate_limit = 0/' "$FIXTURE/accounts.toml" > "$WORK/letterbox.toml"
mkdir -p "$WORK/state"
cp -r "$FIXTURE/state/dkim" "$WORK/state/"
"$BIN" zone "$WORK/letterbox.toml" --state "$WORK/state" > "$WORK/example.org.zone"

# The query mix: positive MX, A, AAAA and TXT answers and NXDOMAIN, in equal parts.
cat > "$WORK/queries" <<'Q'
example.org MX
alice.example.org MX
mail.example.org A
example.org A
mail.example.org AAAA
files.example.org AAAA
example.org TXT
_dmarc.example.org TXT
nobody.example.org A
nothing.example.org MX
Q

wait_for() { # port
    for _ in $(seq 100); do
        dig +time=1 +tries=1 @127.0.0.1 -p "$1" example.org SOA +short 2>/dev/null | grep -q . && return 0
        sleep 0.1
    done
    echo "bench-dns: server on port $1 did not answer" >&2
    return 1
}

LB_PORT=$(free_port)
"$BIN" dns serve "$WORK/letterbox.toml" --listen "127.0.0.1:$LB_PORT" --state "$WORK/state" \
    --threads "$THREADS" 2>"$WORK/letterbox.log" &
PIDS+=($!)

NSD_PORT=$(free_port)
mkdir -p "$WORK/nsd"
cat > "$WORK/nsd/nsd.conf" <<C
server:
    ip-address: 127.0.0.1@$NSD_PORT
    server-count: $THREADS
    username: ""
    chroot: ""
    database: ""
    zonesdir: "$WORK"
    pidfile: "$WORK/nsd/nsd.pid"
    xfrdfile: "$WORK/nsd/xfrd.state"
    zonelistfile: "$WORK/nsd/zone.list"
    logfile: "$WORK/nsd/nsd.log"
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
    verbosity: 0
remote-control:
    control-enable: no
zone:
    name: example.org
    zonefile: "$WORK/example.org.zone"
C
nsd -d -c "$WORK/nsd/nsd.conf" &
PIDS+=($!)

KNOT_PORT=$(free_port)
mkdir -p "$WORK/knot"
cat > "$WORK/knot/knot.conf" <<C
server:
    listen: 127.0.0.1@$KNOT_PORT
    rundir: "$WORK/knot"
    udp-workers: $THREADS
    tcp-workers: 1
    background-workers: 1
database:
    storage: "$WORK/knot"
log:
  - target: stderr
    any: error
zone:
  - domain: example.org
    file: "$WORK/example.org.zone"
C
knotd -c "$WORK/knot/knot.conf" &
PIDS+=($!)

wait_for "$LB_PORT"
wait_for "$NSD_PORT"
wait_for "$KNOT_PORT"

# One dnsperf run per server; verbose output gives each query's latency for the p99.
run() { # name port
    dnsperf -s 127.0.0.1 -p "$2" -d "$WORK/queries" -l "$DURATION" -c "$CLIENTS" -T 1 \
        -q 200 -v > "$WORK/$1.out" 2>&1
    grep '^> ' "$WORK/$1.out" | awk '{ print $NF * 1000 }' | sort -g > "$WORK/$1.lat"
    local n p99
    n=$(wc -l < "$WORK/$1.lat")
    p99=$(sed -n "$(( (n * 99 + 99) / 100 ))p" "$WORK/$1.lat")
    awk -v name="$1" -v p99="${p99:-0}" '
        /Queries per second:/ { qps = $4 }
        /Average Latency \(s\):/ { mean = $4 * 1000 }
        /Queries lost:/ { lost = $3 }
        END { printf "%s %.0f %.3f %.3f %s\n", name, qps, mean, p99, lost }' "$WORK/$1.out"
}

{
    run letterbox "$LB_PORT"
    run nsd "$NSD_PORT"
    run knot "$KNOT_PORT"
} > "$WORK/results"

printf "DNS benchmark: dnsperf, %ss per server, %s clients, %s server threads, loopback\n" \
    "$DURATION" "$CLIENTS" "$THREADS"
awk '
    { name[NR] = $1; qps[NR] = $2; mean[NR] = $3; p99[NR] = $4; lost[NR] = $5 }
    END {
        printf "%-10s %12s %14s %13s %8s %18s\n", "server", "QPS", "mean (ms)", "p99 (ms)", "lost", "letterbox/peer QPS"
        for (i = 1; i <= NR; i++) {
            ratio = (i == 1) ? "-" : sprintf("%.2f", qps[1] / qps[i])
            printf "%-10s %12d %14.3f %13.3f %8s %18s\n", name[i], qps[i], mean[i], p99[i], lost[i], ratio
        }
    }' "$WORK/results"
for name in letterbox nsd knot; do
    printf "%-10s %s\n" "$name" "$(grep -m1 'Response codes:' "$WORK/$name.out" | sed 's/^ *Response codes: *//')"
done
