#!/usr/bin/env bash
# Image benchmark: build time cold (empty package cache) and warm (cache filled, one
# configuration value changed), sizes, executables in the root filesystem, and boot
# time under QEMU from the serial log's timestamps. Exits 1 when a build fails or the
# boot does not reach its login prompt with every timing found.
#
# Letterbox's figures only: no peer image builder (gokrazy, pi-gen, Bottlerocket,
# Talos) is built or booted here, so none is quoted.
set -euo pipefail
cd "$(dirname "$0")/.."

agent=target-aarch64/aarch64-unknown-linux-gnu/release/letterbox
"${CARGO:-cargo}" build --quiet
bin=target/debug/letterbox
work=$(mktemp -d)
qemu_pid=
cleanup() {
    if [ -n "$qemu_pid" ]; then kill "$qemu_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    echo "image.sh: $*" >&2
    exit 1
}

seconds() { awk '/^time:/ { print $2 }' "$1"; }

# Builds $1 into $2 with the summary in $3 (its errors too); further arguments go to build.
build() {
    local config=$1 out=$2 summary=$3
    shift 3
    "$bin" build "$config" -o "$out" --agent "$agent" "$@" >"$summary" 2>&1 ||
        fail "building $out failed: $(tail -n 20 "$summary")"
}

echo "== image build =="
build tests/fixtures/qemu-letterbox.toml "$work/cold.img" "$work/cold.txt" --cache "$work/cache"
echo "cold (empty cache, downloads):         $(seconds "$work/cold.txt") s"

# Warm: the project's cache, filled by the cold build's packages, one value changed.
mkdir -p .cache/debs
cp -n "$work"/cache/debs/* .cache/debs/ 2>/dev/null || true
sed 's/^hostname = "mail"/hostname = "post"/' tests/fixtures/qemu-letterbox.toml >"$work/warm.toml"
build "$work/warm.toml" "$work/warm0.img" "$work/warm0.txt"
sed 's/^hostname = "mail"/hostname = "mx"/' tests/fixtures/qemu-letterbox.toml >"$work/warm.toml"
build "$work/warm.toml" "$work/warm.img" "$work/warm.txt"
echo "warm (cache filled, hostname changed): $(seconds "$work/warm.txt") s"
if grep -q "all from the cache" "$work/warm.txt"; then
    echo "warm build downloaded nothing"
else
    echo "warm build downloaded packages"
fi

echo "== sizes =="
grep -E '^(size|packages|contents):' "$work/warm.txt"

echo "== boot under qemu-system-aarch64 -M raspi3b (TCG) =="
build tests/fixtures/qemu-letterbox.toml "$work/boot.img" "$work/boot.txt"
# A port the kernel says is free now, for QEMU's DNS forward (another QEMU or a
# concurrent run may hold any fixed one).
dns_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin" qemu "$work/boot.img" --dns-port "$dns_port" </dev/null >"$work/console.log" 2>&1 &
qemu_pid=$!
login_timeout=600
for _ in $(seq "$login_timeout"); do
    grep -q "login prompt on" "$work/console.log" && break
    kill -0 "$qemu_pid" 2>/dev/null ||
        fail "QEMU exited before the login prompt; the console's last lines:
$(tail -n 30 "$work/console.log")"
    sleep 1
done
grep -q "login prompt on" "$work/console.log" ||
    fail "no login prompt within ${login_timeout} s; the console's last lines:
$(tail -n 30 "$work/console.log")"
sleep 2
# The agent's console lines, "[   12.345678] letterbox: INFO  ...", carry its clock:
# seconds since boot, zero at kernel start (a wall clock follows once it is set). A
# message of several lines carries it on its first line only: a match on a line without a
# stamp is timed by the agent line it continues. (Its /dev/kmsg copies, "letterbox:" with
# no level, are rate-limited by the kernel and skipped; early lines are replayed with
# their original stamps once the console is up, so the first match is the right one.)
stamp() {
    local at
    at=$(tr -d '\r' <"$work/console.log" | pat="$1" awk '
        /\[ *[0-9]+\.[0-9]+\]/ { agent = 0 }
        match($0, /\[ *[0-9]+\.[0-9]+\]( [0-9TZ:-]+)? letterbox: (INFO|WARN|ERROR) /) {
            agent = 1
            last = substr($0, RSTART + 1)
            last = substr(last, 1, index(last, "]") - 1)
            sub(/^ +/, "", last)
        }
        agent && $0 ~ ENVIRON["pat"] { print last; exit }')
    [ -n "$at" ] || fail "no agent console line matching '$1' to time"
    echo "$at"
}
# Each in its own assignment, so that a missing line ends the script (set -e).
agent_start=$(stamp 'starting \(as PID 1\)')
root_mounted=$(stamp 'switched to the read-only root')
network_up=$(stamp '(changes applied|no changes)$')
# The DNS unit may start a moment after the login prompt.
for _ in $(seq 60); do
    grep -q "dns: serving" "$work/console.log" && break
    sleep 1
done
dns_serving=$(stamp 'dns: serving')
login_prompt=$(stamp 'login prompt on')
echo "kernel start -> agent start:   $agent_start s"
echo "kernel start -> root mounted:  $root_mounted s"
echo "kernel start -> network up:    $network_up s"
echo "kernel start -> DNS serving:   $dns_serving s"
echo "kernel start -> login prompt:  $login_prompt s"
echo "(no peer figures: none is measured by this script)"
