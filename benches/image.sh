#!/usr/bin/env bash
# Image benchmark: build time cold (empty package cache) and warm (cache filled, one
# configuration value changed), sizes, executables in the root filesystem, and boot
# time under QEMU from the serial log's timestamps.
# Peers for comparison: gokrazy (in-process, no root), pi-gen (privileged Docker, tens of
# minutes), Bottlerocket (12 min to 4 h); Talos ships 12 executables.
set -euo pipefail
cd "$(dirname "$0")/.."

agent=target-aarch64/aarch64-unknown-linux-gnu/release/letterbox
cargo build --quiet
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
# "[   12.345678] letterbox: ..." lines as the kernel prints them from /dev/kmsg: the
# kernel's clock, zero at kernel start. (The agent's own console lines, "letterbox: INFO",
# are left out: they replay early lines later.)
stamp() {
    grep -a -E "$1" "$work/console.log" | grep -a -v -E 'letterbox: (INFO|WARN|ERROR) ' |
        head -n1 | sed -E 's/^\[ *([0-9.]+)\].*/\1/'
}
echo "kernel start -> agent start:   $(stamp '\] letterbox: .*starting') s"
echo "kernel start -> root mounted:  $(stamp 'switched to the read-only root') s"
echo "kernel start -> network up:    $(stamp '\] letterbox: changes applied') s"
dns=$(stamp 'letterbox: .*(dns|DNS).*(serving|listening)' || true)
echo "kernel start -> DNS serving:   ${dns:-n/a (DNS not in the agent yet)} s"
echo "kernel start -> login prompt:  $(stamp 'login prompt on') s"
