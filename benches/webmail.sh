#!/usr/bin/env bash
# Benchmark: the webmail (issue #14), on one machine, in one run: time to first byte and time
# to a full inbox page at 1 and at 10 concurrent sessions, through the appliance's path
# against the same Roundcube reached directly; and the memory of the webmail's two
# containers, idle and under that load.
#
# letterbox: `letterbox run` in a server network namespace (as tests/mail_webmail.rs runs
# it), with trixie's containerd, the mail and webmail images, and one account, alice, with
# 20 messages in her INBOX. A client namespace reaches https://192.0.2.10/: the agent's
# forwarder carries each connection into the webmail's namespace, with a PROXY header, to
# nginx, which passes index.php to PHP-FPM (Roundcube), which talks IMAP to the front's
# proxy (through the agent's forwarder again), which talks to alice's box.
# The peer: the same nginx, Roundcube and mail path, reached from inside the webmail's own
# namespace at 127.0.0.1:443 (the client writes the PROXY header itself): no forwarder on
# the way in. The ratio says what the appliance's way in costs.
#
# Each session logs in once (Roundcube's login form and its CSRF token), then asks for its
# inbox ROUNDS times, each time as a browser does: the mail page (?_task=mail; its first
# byte is the time to first byte) and the message list it fetches (the _action=list call,
# with the session's token), whose end is the time to a full inbox page. Sessions keep their
# TLS connection, as a browser does. 1 and 10 sessions at once; medians and pages/s.
# Memory: the PSS summed over each container's processes (its cgroup's), idle (after a
# login, PHP-FPM's workers ended: pm.process_idle_timeout is 60 s, so idle is measured 65 s
# after the load) and at the end of the 10-session load (workers running). Goal from the
# issue: at most 60 MB in use when idle.
# ROUNDS may be set in the environment; LETTERBOX_BIN, MAIL_IMAGE, WEBMAIL_IMAGE and
# CONTAINERD_TRIXIE say where the parts are. A missed goal is reported, not an error.
set -euo pipefail

ROUNDS=${ROUNDS:-30}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${LETTERBOX_BIN:-$ROOT/target/release/letterbox}
ARCH=$(dpkg --print-architecture)
MAIL_IMAGE=${MAIL_IMAGE:-$ROOT/out/letterbox-mail-$ARCH}
WEBMAIL_IMAGE=${WEBMAIL_IMAGE:-$ROOT/out/letterbox-webmail-$ARCH}
CONTAINERD_TRIXIE=${CONTAINERD_TRIXIE:-$ROOT/.cache/containerd-trixie}
PASSWORD="correct horse battery"
SERVER_V4=192.0.2.10
GOAL_IDLE_MB=60
GOAL_RATIO=0.9

fail() { echo "bench-webmail: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "needs root (network namespaces, containerd)"
for tool in "$BIN" ip nsenter python3 swaks; do
    command -v "$tool" >/dev/null || fail "$tool not found"
done
[ -f "$MAIL_IMAGE/index.json" ] || fail "no mail image at $MAIL_IMAGE (make mail-image builds it)"
[ -f "$WEBMAIL_IMAGE/index.json" ] || fail "no webmail image at $WEBMAIL_IMAGE (make webmail-image builds it)"
[ -x "$CONTAINERD_TRIXIE/bin/runc" ] || fail "no runc in $CONTAINERD_TRIXIE (make containerd-trixie fetches it)"
for cgroup in /sys/fs/cgroup/letterbox /sys/fs/cgroup/memory/letterbox; do
    [ ! -e "$cgroup/front-postfix" ] || fail "another letterbox mail system runs on this host ($cgroup/front-postfix)"
done

ID=$$
WORK=$(mktemp -d /tmp/letterbox-bench-webmail.XXXXXX)
SERVER_NS=lbw-srv-$ID
CLIENT_NS=lbw-cli-$ID
STATE=$WORK/state
SOCKET=$WORK/control.sock
AGENT_PID=
cleanup() {
    set +e
    if [ -n "$AGENT_PID" ]; then
        kill "$AGENT_PID" 2>/dev/null
        for _ in $(seq 150); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$AGENT_PID" 2>/dev/null
    fi
    for pid in $(pgrep -f "$STATE/containerd/containerd.sock"); do kill -9 "$pid"; done
    wait 2>/dev/null
    grep -o " $WORK/[^ ]*" /proc/self/mounts | sort -r | while read -r m; do umount -l "$m"; done
    for ns in "$SERVER_NS" "$CLIENT_NS"; do ip netns del "$ns" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$SERVER_NS"
ip netns add "$CLIENT_NS"
ip -n "$SERVER_NS" link add "lbw${ID}s" type veth peer name "lbw${ID}c"
ip -n "$SERVER_NS" link set "lbw${ID}c" netns "$CLIENT_NS"
ip -n "$CLIENT_NS" addr add 192.0.2.20/24 dev "lbw${ID}c"
for link in "lbw${ID}c" lo; do ip -n "$CLIENT_NS" link set "$link" up; done
ip -n "$SERVER_NS" link set lo up

hash=$(printf '%s\n' "$PASSWORD" | "$BIN" passwd)
cat > "$WORK/letterbox.toml" <<C
version = 1

[system]
hostname = "mail"
domain = "example.org"

[[interface]]
name = "lbw${ID}s"
ipv4 = ["$SERVER_V4/24"]

[dns]
listen = ["$SERVER_V4:53"]

[[account]]
name = "alice"
password_hash = "$hash"
C
nsenter --net="/run/netns/$SERVER_NS" -- "$BIN" run "$WORK/letterbox.toml" --state "$STATE" \
    --socket "$SOCKET" --mail-image "$MAIL_IMAGE" --webmail-image "$WEBMAIL_IMAGE" \
    --containerd-dir "$CONTAINERD_TRIXIE/bin" --containerd-dir "$CONTAINERD_TRIXIE/root/usr/bin" \
    </dev/null >/dev/null 2>"$WORK/agent.log" &
AGENT_PID=$!

diagnostics() {
    echo "--- units:"; "$BIN" ctl --socket "$SOCKET" units || true
    for f in webmail/webmail-nginx.log webmail/webmail-php.log front/front-dovecot.log; do
        echo "--- $f:"; tail -20 "$STATE/$f" 2>/dev/null || true
    done
    echo "--- agent log:"; tail -40 "$WORK/agent.log"
}
wait_until() { # seconds description command...
    local limit=$1 what=$2
    shift 2
    for _ in $(seq $((limit * 10))); do
        "$@" >/dev/null 2>&1 && return 0
        kill -0 "$AGENT_PID" 2>/dev/null || { diagnostics >&2; fail "the agent exited while waiting for $what"; }
        sleep 0.1
    done
    diagnostics >&2
    fail "$what: not within ${limit}s"
}
in_client() { ip netns exec "$CLIENT_NS" "$@"; }
in_webmail() { nsenter --net="$STATE/netns/_webmail" -- "$@"; }

wait_until 300 "port 25" in_client swaks --server "$SERVER_V4" --quit-after EHLO
wait_until 300 "the webmail on 443" in_client python3 -c '
import ssl, urllib.request
urllib.request.urlopen("https://192.0.2.10/", context=ssl._create_unverified_context(), timeout=5)'
for n in $(seq 20); do
    in_client swaks --server "$SERVER_V4" --from someone@example.net --to box@alice.example.org \
        --header "Subject: message $n" --body "Body of message $n." >/dev/null
done

cat > "$WORK/load.py" <<'PY'
"""Sessions logging in to Roundcube and asking for their inbox; prints one JSON line."""
import http.client, json, re, socket, ssl, statistics, sys, threading, time, urllib.parse

host, port, proxy, sessions, rounds, password = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "proxy", int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
TLS = ssl._create_unverified_context()

class Connection(http.client.HTTPSConnection):
    """HTTPS to nginx; for the peer, after the PROXY header the agent would have written."""
    def connect(self):
        sock = socket.create_connection((self.host, self.port), timeout=60)
        if proxy:
            sock.sendall(b"PROXY TCP4 192.0.2.20 127.0.0.1 40000 443\r\n")
        self.sock = TLS.wrap_socket(sock, server_hostname="mail.example.org")

class Session:
    def __init__(self):
        self.conn = Connection(host, port)
        self.cookies = {}

    def request(self, method, path, body=None, headers=None):
        headers = dict(headers or {})
        headers["Host"] = "mail.example.org"
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        start = time.monotonic()
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        first_byte = time.monotonic() - start
        data = response.read()
        for value in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = value.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        return response.status, data.decode("utf-8", "replace"), first_byte, time.monotonic() - start

    def login(self):
        _, page, _, _ = self.request("GET", "/")
        token = re.search(r'name="_token" value="([^"]+)"', page).group(1)
        form = urllib.parse.urlencode({"_token": token, "_task": "login", "_action": "login",
                                       "_timezone": "UTC", "_user": "alice", "_pass": password})
        status, _, _, _ = self.request("POST", "/?_task=login", body=form)
        if status != 302:
            sys.exit(f"login: HTTP {status}")

    def inbox(self):
        status, page, first_byte, _ = self.request("GET", "/?_task=mail&_mbox=INBOX")
        start = time.monotonic() - first_byte
        token = re.search(r'"request_token":"([^"]+)"', page)
        if status != 200 or not token:
            sys.exit(f"the inbox page: HTTP {status}, no request_token")
        status, listing, _, _ = self.request(
            "GET", "/?_task=mail&_action=list&_mbox=INBOX&_remote=1",
            headers={"X-Roundcube-Request": token.group(1)})
        if status != 200 or "message 1" not in listing:
            sys.exit(f"the message list: HTTP {status}")
        return first_byte, time.monotonic() - start

first_bytes, pages, errors = [], [], []
def run():
    try:
        session = Session()
        session.login()
        for _ in range(rounds):
            first_byte, page = session.inbox()
            first_bytes.append(first_byte)
            pages.append(page)
    except BaseException as e:
        errors.append(repr(e))

threads = [threading.Thread(target=run) for _ in range(sessions)]
start = time.monotonic()
for t in threads: t.start()
for t in threads: t.join()
elapsed = time.monotonic() - start
if errors:
    sys.exit("; ".join(errors[:3]))
print(json.dumps({"ttfb_ms": 1000 * statistics.median(first_bytes),
                  "page_ms": 1000 * statistics.median(pages),
                  "pages_per_s": len(pages) / elapsed}))
PY

cat > "$WORK/memory.py" <<'PY'
"""PSS in MB summed over the processes of each cgroup named on the command line."""
import sys
def pss(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return sum(int(l.split()[1]) for l in f if l.startswith("Pss:"))
    except OSError:
        return 0
total = 0
for procs in sys.argv[1:]:
    with open(procs) as f:
        total += sum(pss(int(p)) for p in f.read().split())
print(f"{total / 1024:.1f}")
PY
cgroup_procs() { # unit
    local dir
    for dir in /sys/fs/cgroup/letterbox/$1 /sys/fs/cgroup/memory/letterbox/$1; do
        [ -f "$dir/cgroup.procs" ] && { echo "$dir/cgroup.procs"; return; }
    done
    fail "no cgroup for $1"
}
memory() { python3 "$WORK/memory.py" "$(cgroup_procs webmail-nginx)" "$(cgroup_procs webmail-php)"; }

letterbox() { in_client python3 "$WORK/load.py" "$SERVER_V4" 443 direct "$1" "$ROUNDS" "$PASSWORD"; }
peer() { in_webmail python3 "$WORK/load.py" 127.0.0.1 443 proxy "$1" "$ROUNDS" "$PASSWORD"; }
field() { python3 -c 'import json, sys; print(round(json.loads(sys.argv[1])[sys.argv[2]], 1))' "$1" "$2"; }

# A warm-up (Roundcube's first requests fill PHP's opcache), then each count of sessions,
# the peer and letterbox taking turns.
letterbox 1 >/dev/null
declare -A result
for sessions in 1 10; do
    result[peer$sessions]=$(peer "$sessions")
    result[letterbox$sessions]=$(letterbox "$sessions")
    [ "$sessions" = 10 ] && loaded_mb=$(memory)
done
sleep 65
idle_mb=$(memory)

echo
echo "bench-webmail: $ROUNDS inbox pages per session (page + message list, 20 messages), through the agent (letterbox) and straight to nginx in the webmail's namespace (peer)"
printf '%-9s %-10s %10s %12s %10s\n' sessions path "TTFB ms" "full page ms" "pages/s"
for sessions in 1 10; do
    for path in peer letterbox; do
        r=${result[$path$sessions]}
        printf '%-9s %-10s %10s %12s %10s\n' "$sessions" "$path" "$(field "$r" ttfb_ms)" \
            "$(field "$r" page_ms)" "$(field "$r" pages_per_s)"
    done
done
for sessions in 1 10; do
    ratio=$(python3 -c 'import json, sys; a, b = (json.loads(x)["pages_per_s"] for x in sys.argv[1:]); print(f"{a / b:.2f}")' \
        "${result[letterbox$sessions]}" "${result[peer$sessions]}")
    met=$(python3 -c "print('met' if $ratio >= $GOAL_RATIO else 'MISSED')")
    echo "pages/s, letterbox/peer at $sessions session(s): ${ratio}x (goal >= ${GOAL_RATIO}x: $met)"
done
met=$(python3 -c "print('met' if $idle_mb <= $GOAL_IDLE_MB else 'MISSED')")
echo "memory (PSS, nginx + PHP-FPM): ${idle_mb} MB idle (goal <= ${GOAL_IDLE_MB} MB: $met), ${loaded_mb} MB at the end of the 10-session load"
