#!/usr/bin/env bash
# Benchmark: letterbox's DNS server against NSD and Knot, on one machine, in one run.
#
# All three serve the same zone (the output of `letterbox zone` for the 3-account fixture)
# on loopback, on different ports, with 2 server threads each and rate limiting off, and
# get the same dnsperf query mix (MX, A, AAAA, TXT and NXDOMAIN, with EDNS) for the same
# duration, taking turns in an order rotated every round. No server is pinned to a CPU.
# dnsperf 2.10 (Debian 12) has no latency histogram, so p99 comes from its per-query
# verbose lines. Prints a table of QPS, mean latency (at full load and at a fixed load),
# p99 latency, the average response size (to show the answers are comparable) and
# letterbox's ratios to each peer.
# DURATION (s per server), ROUNDS, CLIENTS and THREADS may be set in the environment.
set -euo pipefail

DURATION=${DURATION:-30}
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
    # Like letterbox and Knot: no NS in the authority section of every answer, so the
    # responses (and the work) are comparable; see the response size column.
    minimal-responses: yes
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

# The servers take turns, ROUNDS times, so that load from elsewhere on the machine
# falls on all three alike; each gets DURATION seconds of throughput runs in all.
# Throughput runs push as hard as dnsperf can (QPS: the median of the rounds; mean
# latency, which at full load mostly measures queueing). dnsperf's per-query verbose
# output costs the client enough CPU to cap the rate on a small machine, so latency
# comes from separate runs at a fixed offered load (LATENCY_QPS), the same for every
# server: the mean from dnsperf's summary, p99 from the per-query lines.
ROUNDS=${ROUNDS:-3}
LATENCY_QPS=${LATENCY_QPS:-20000}
LATENCY_SECONDS=${LATENCY_SECONDS:-3}
# EDNS (-e) for every server alike, as real resolvers send it.
measure() { # name port round
    dnsperf -s 127.0.0.1 -p "$2" -d "$WORK/queries" -l "$((DURATION / ROUNDS))" \
        -c "$CLIENTS" -T 1 -q 200 -e > "$WORK/$1.tput.$3.out" 2>&1
    dnsperf -s 127.0.0.1 -p "$2" -d "$WORK/queries" -l "$LATENCY_SECONDS" \
        -c "$CLIENTS" -T 1 -Q "$LATENCY_QPS" -e -v > "$WORK/$1.lat.$3.out" 2>&1
}
summarize() { # name
    cat "$WORK/$1".lat.*.out | grep '^> ' | awk '{ print $NF * 1000 }' | sort -g > "$WORK/$1.lat"
    local n p99 qps fixed_mean
    n=$(wc -l < "$WORK/$1.lat")
    fixed_mean=$(cat "$WORK/$1".lat.*.out | awk '
        /Average Latency \(s\):/ { mean += $4 * 1000; rounds++ }
        END { print mean / rounds }')
    p99=$(sed -n "$(( (n * 99 + 99) / 100 ))p" "$WORK/$1.lat")
    qps=$(grep -h 'Queries per second:' "$WORK/$1".tput.*.out | awk '{ print $4 }' | sort -g \
        | sed -n "$(( (ROUNDS + 1) / 2 ))p")
    # "Average packet size: request 40, response 120": the response size, per round.
    cat "$WORK/$1".tput.*.out \
        | awk -v name="$1" -v p99="${p99:-0}" -v qps="$qps" -v fixed="$fixed_mean" '
        /Average Latency \(s\):/ { mean += $4 * 1000; rounds++ }
        /Queries lost:/ { lost += $3 }
        /Average packet size:/ { size += $NF; sizes++ }
        END { printf "%s %.0f %.3f %.3f %.3f %d %.0f\n", name, qps, mean / rounds, fixed, p99, lost,
            size / sizes }'
}

SERVERS=(letterbox nsd knot)
declare -A PORT=([letterbox]=$LB_PORT [nsd]=$NSD_PORT [knot]=$KNOT_PORT)
for round in $(seq "$ROUNDS"); do
    # Rotate who goes first, so that no server always runs on a warmer (or busier) machine.
    for i in 0 1 2; do
        name=${SERVERS[$(( (i + round - 1) % 3 ))]}
        measure "$name" "${PORT[$name]}" "$round"
    done
done
for name in letterbox nsd knot; do summarize "$name"; done > "$WORK/results"

printf "DNS benchmark: dnsperf, %ss per server in %s turns, %s clients, %s server threads, loopback\n" \
    "$DURATION" "$ROUNDS" "$CLIENTS" "$THREADS"
printf "QPS and \"full\" mean latency at full load; \"fixed\" latencies at %s queries/s offered\n" \
    "$LATENCY_QPS"
printf "ratios are letterbox / peer: QPS above 1 is better, mean and p99 below 1 are better\n"
awk '
    { name[NR] = $1; qps[NR] = $2; mean[NR] = $3; fixed[NR] = $4; p99[NR] = $5; lost[NR] = $6
      size[NR] = $7 }
    function ratio(a, b) { return b > 0 ? sprintf("%.2f", a / b) : "n/a" }
    END {
        printf "%-10s %8s %6s | %6s %6s | %6s %5s | %6s %6s %6s %6s\n", "", "", "full", \
            "fixed", "fixed", "", "", "", "full", "fixed", "fixed"
        printf "%-10s %8s %6s | %6s %6s | %6s %5s | %6s %6s %6s %6s\n", "server", "QPS", "mean", \
            "mean", "p99", "lost", "bytes", "QPS", "mean", "mean", "p99"
        for (i = 1; i <= NR; i++) {
            q = (i == 1) ? "-" : ratio(qps[1], qps[i])
            m = (i == 1) ? "-" : ratio(mean[1], mean[i])
            f = (i == 1) ? "-" : ratio(fixed[1], fixed[i])
            p = (i == 1) ? "-" : ratio(p99[1], p99[i])
            printf "%-10s %8d %6.3f | %6.3f %6.3f | %6s %5d | %6s %6s %6s %6s\n", name[i], qps[i], \
                mean[i], fixed[i], p99[i], lost[i], size[i], q, m, f, p
        }
        print "latencies in ms; bytes: the mean response size"
    }' "$WORK/results"
for name in letterbox nsd knot; do
    printf "%-10s %s\n" "$name" "$(grep -m1 'Response codes:' "$WORK/$name.tput.1.out" | sed 's/^ *Response codes: *//')"
done
