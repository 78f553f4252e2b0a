#!/usr/bin/env bash
# Image benchmark: build time cold (empty package cache) and warm (cache filled, one
# configuration value changed), sizes, executables in the root filesystem, and boot
# time under QEMU from the serial log's timestamps.
# Peers for comparison: gokrazy (in-process, no root), pi-gen (privileged Docker, tens of
# minutes), Bottlerocket (12 min to 4 h); Talos ships 12 executables.
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

seconds() { awk '/^time:/ { print $2 }' "$1"; }

echo "== image build =="
"$bin" build tests/fixtures/qemu-letterbox.toml -o "$work/cold.img" --agent "$agent" \
    --cache "$work/cache" >"$work/cold.txt" 2>/dev/null
echo "cold (empty cache, downloads):       $(seconds "$work/cold.txt") s"

# Warm: the project's cache, filled by the cold build's packages, one value changed.
mkdir -p .cache/debs
cp -n "$work"/cache/debs/* .cache/debs/ 2>/dev/null || true
sed 's/^hostname = "mail"/hostname = "post"/' tests/fixtures/qemu-letterbox.toml >"$work/warm.toml"
"$bin" build "$work/warm.toml" -o "$work/warm0.img" --agent "$agent" >/dev/null 2>&1
sed 's/^hostname = "mail"/hostname = "mx"/' tests/fixtures/qemu-letterbox.toml >"$work/warm.toml"
"$bin" build "$work/warm.toml" -o "$work/warm.img" --agent "$agent" >"$work/warm.txt" 2>/dev/null
echo "warm (cache filled, hostname changed): $(seconds "$work/warm.txt") s"
grep -q "all from the cache" "$work/warm.txt" && echo "warm build downloaded nothing"

echo "== sizes =="
grep -E '^(size|packages|contents):' "$work/warm.txt"

echo "== boot under qemu-system-aarch64 -M raspi3b (TCG) =="
"$bin" build tests/fixtures/qemu-letterbox.toml -o "$work/boot.img" --agent "$agent" >/dev/null 2>&1
"$bin" qemu "$work/boot.img" --dns-port 25353 </dev/null >"$work/console.log" 2>&1 &
qemu_pid=$!
for _ in $(seq 600); do
    grep -q "login prompt on" "$work/console.log" && break
    sleep 1
done
sleep 2
# The agent's console lines, "[   12.345678] letterbox: INFO  ...", carry its clock:
# seconds since boot, zero at kernel start. (Its /dev/kmsg copies are rate-limited by
# the kernel, and early lines are replayed with their original stamps once the console
# is up, so the first match by content is the right one.)
stamp() {
    grep -a -E "letterbox: (INFO|WARN|ERROR) .*$1" "$work/console.log" | head -n1 |
        sed -E 's/^.*\[ *([0-9.]+)\] letterbox: .*/\1/'
}
echo "kernel start -> agent start:   $(stamp 'starting \(as PID 1\)') s"
echo "kernel start -> root mounted:  $(stamp 'switched to the read-only root') s"
echo "kernel start -> network up:    $(stamp 'changes applied') s"
dns=$(stamp 'dns: serving' || true)
echo "kernel start -> DNS serving:   ${dns:-n/a (DNS not in the agent yet)} s"
echo "kernel start -> login prompt:  $(stamp 'login prompt on') s"
