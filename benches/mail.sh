#!/usr/bin/env bash
# Benchmark: letterbox's mail path (front → box) against a plain Postfix, on one machine, in
# one run; the memory of a box and of the agent; the time from `account add` (a new box) to
# an IMAP login through it (issues #11 and #12).
#
# letterbox: `letterbox run` in a server network namespace (as tests/mail_e2e.rs runs it),
# with trixie's containerd (`make containerd-trixie`) and the mail image (`make mail-image`),
# and two accounts, alice and bob. Mail goes to port 25 of the front's Postfix, which hands
# it over LMTP to alice's box (Dovecot, in its container), which writes her Maildir.
# The peer: the same Postfix 3.10 binaries, from the same image's layer unpacked into a
# private tree, run with chroot in a namespace of its own (no container, no LMTP hop): its
# virtual(8) writes box@bench.example's Maildir. Its main.cf keeps the front's settings that
# matter on this path (restrictions, queue, fsync defaults); it offers no TLS, which
# smtp-source never asks for anyway.
#
# The load: Postfix's smtp-source (the image's) from a client namespace linked to both, the
# same MESSAGES of SIZE bytes over SESSIONS parallel sessions (one message per connection,
# as mail from the Internet arrives), ROUNDS times, the two taking turns in an order swapped
# every round. A round's time runs from smtp-source's start until the last message is in
# the Maildir (new/ and cur/, polled every 10 ms); its rate is the median of the rounds.
#
# Memory, with both boxes idle after the load: the PSS summed over each box's processes
# (its cgroup's), the containerd shim beside each box (its own process), the agent's RSS
# and PSS, and what every account shares (the front, containerd), for the budget of a 1 GB
# Pi 3. Also the boxes' memory limits, the OOM kills in them during the load and the
# deliveries the front deferred, which explain a slow round.
#
# Add → login (issue #11's "create box → IMAP login", issue #12's "from the command to a
# working IMAP login"): `ctl account add benchN --password-stdin`, a new account and box
# each round, then an IMAP login as benchN through the front's 993 (Python's imaplib) tried
# every 20 ms until it works; the time from the add command's start to that login, median
# of LOGIN_ROUNDS, against the goal. Logins are tried once the add has returned: before
# the account exists a login is refused, and each refusal costs Dovecot's failure delay
# (2 s) and raises its per-address penalty, which would slow the login being timed. Each
# round deletes its account again (`account del benchN --purge`).
# Restart → login: `ctl restart box-alice` (the box stopped, its container deleted, created
# and started again from the imported image), then the same login as alice; medians of
# LOGIN_ROUNDS from the command, and from the old box's end (its init gone) to the login.
# A missed goal is reported, not an error: the script fails only when the run itself does.
# MESSAGES, SESSIONS, SIZE, ROUNDS, LOGIN_ROUNDS and BOX_MEMORY (each box's memory_limit)
# may be set in the environment;
# LETTERBOX_BIN, MAIL_IMAGE and CONTAINERD_TRIXIE say where the parts are; LOGS=DIR keeps
# the agent's, the containers' and the peer's logs there.
set -euo pipefail

MESSAGES=${MESSAGES:-2000}
SESSIONS=${SESSIONS:-10}
SIZE=${SIZE:-4096}
ROUNDS=${ROUNDS:-3}
LOGIN_ROUNDS=${LOGIN_ROUNDS:-5}
BOX_MEMORY=${BOX_MEMORY:-64M}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${LETTERBOX_BIN:-$ROOT/target/release/letterbox}
MAIL_IMAGE=${MAIL_IMAGE:-$ROOT/out/letterbox-mail-$(dpkg --print-architecture)}
CONTAINERD_TRIXIE=${CONTAINERD_TRIXIE:-$ROOT/.cache/containerd-trixie}
PASSWORD="correct horse battery"
SERVER_V4=192.0.2.10
PEER_V4=198.51.100.10
# Goals from issue #11.
GOAL_RATIO=0.9
GOAL_BOX_MB=30
GOAL_AGENT_MB=15
GOAL_LOGIN_S=1

fail() { echo "bench-mail: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "needs root (network namespaces, containerd, chroot)"
for tool in "$BIN" ip nsenter chroot python3 tar; do
    command -v "$tool" >/dev/null || fail "$tool not found"
done
[ -f "$MAIL_IMAGE/index.json" ] || fail "no mail image at $MAIL_IMAGE (make mail-image builds it)"
if [ ! -x "$CONTAINERD_TRIXIE/bin/runc" ] || [ ! -x "$CONTAINERD_TRIXIE/root/usr/bin/containerd" ]; then
    fail "no containerd and runc in $CONTAINERD_TRIXIE (make containerd-trixie fetches them)"
fi
# The agent names its containers' cgroups /letterbox/UNIT on the one host (cgroup v2, or
# v1's memory hierarchy).
for cgroup in /sys/fs/cgroup/letterbox /sys/fs/cgroup/memory/letterbox; do
    [ ! -e "$cgroup/front-postfix" ] || fail "another letterbox mail system runs on this host ($cgroup/front-postfix)"
done

ID=$$
WORK=$(mktemp -d /tmp/letterbox-bench-mail.XXXXXX)
SERVER_NS=lbb-srv-$ID
PEER_NS=lbb-peer-$ID
CLIENT_NS=lbb-cli-$ID
PEER=$WORK/peer
STATE=$WORK/state
SOCKET=$WORK/control.sock
AGENT_PID=
cleanup() {
    set +e
    if [ -n "${LOGS:-}" ]; then
        mkdir -p "$LOGS"
        cp "$WORK/agent.log" "$PEER/var/log/postfix.log" "$LOGS/"
        (cd "$STATE" && find front boxes -name '*.log' -exec cp --parents {} "$LOGS/" \;)
    fi
    if [ -n "$AGENT_PID" ]; then
        kill "$AGENT_PID" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$AGENT_PID" 2>/dev/null
    fi
    [ -x "$PEER/usr/sbin/postfix" ] && chroot "$PEER" /usr/sbin/postfix stop >/dev/null 2>&1
    # The containerd shims outlive containerd by design; they name its socket.
    for pid in $(pgrep -f "$STATE/containerd/containerd.sock"); do kill -9 "$pid"; done
    wait 2>/dev/null
    grep -o " $WORK/[^ ]*" /proc/self/mounts | sort -r | while read -r m; do umount -l "$m"; done
    for ns in "$SERVER_NS" "$PEER_NS" "$CLIENT_NS"; do ip netns del "$ns" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# The client namespace, linked to the server's (192.0.2.0/24) and to the peer's
# (198.51.100.0/24).
ip netns add "$SERVER_NS"
ip netns add "$PEER_NS"
ip netns add "$CLIENT_NS"
ip -n "$SERVER_NS" link add "lbb${ID}s" type veth peer name "lbb${ID}c"
ip -n "$SERVER_NS" link set "lbb${ID}c" netns "$CLIENT_NS"
ip -n "$CLIENT_NS" addr add 192.0.2.20/24 dev "lbb${ID}c"
ip -n "$PEER_NS" link add "lbb${ID}p" type veth peer name "lbb${ID}d"
ip -n "$PEER_NS" link set "lbb${ID}d" netns "$CLIENT_NS"
ip -n "$PEER_NS" addr add "$PEER_V4/24" dev "lbb${ID}p"
ip -n "$CLIENT_NS" addr add 198.51.100.20/24 dev "lbb${ID}d"
for link in "lbb${ID}c" "lbb${ID}d" lo; do ip -n "$CLIENT_NS" link set "$link" up; done
for link in "lbb${ID}p" lo; do ip -n "$PEER_NS" link set "$link" up; done
ip -n "$SERVER_NS" link set lo up

# The peer: the image's one layer (the image's own users, links and spool modes).
mkdir -p "$PEER"
layer=$(python3 -c '
import json, sys
image = sys.argv[1]
index = json.load(open(image + "/index.json"))
digest = index["manifests"][0]["digest"].split(":")[1]
manifest = json.load(open(image + "/blobs/sha256/" + digest))
[layer] = manifest["layers"]
print(image + "/blobs/sha256/" + layer["digest"].split(":")[1])' "$MAIL_IMAGE")
tar -xzf "$layer" --numeric-owner -C "$PEER"
# The front's services (chroot = n), and virtual(8), which the front has no use for.
cp "$ROOT/tests/golden/mail/front/postfix/master.cf" "$PEER/etc/postfix/master.cf"
echo "virtual   unix  -       n       n       -       -       virtual" >> "$PEER/etc/postfix/master.cf"
cat > "$PEER/etc/postfix/main.cf" <<'C'
# The peer: the front's main.cf (tests/golden/mail/front/postfix/main.cf) where it matters
# for mail from the Internet, delivering to a local Maildir instead of over LMTP to a box.
compatibility_level = 3.10
myhostname = mail.bench.example
mydomain = bench.example
myorigin = $myhostname
smtpd_banner = $myhostname ESMTP
inet_interfaces = all
inet_protocols = ipv4
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 no local mailboxes here
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8 [::1]/128

virtual_mailbox_domains = bench.example
virtual_mailbox_base = /var/vmail
virtual_mailbox_maps = inline:{ { box@bench.example = box/Maildir/ } }
virtual_uid_maps = static:20240
virtual_gid_maps = static:20240

smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination
smtpd_recipient_restrictions = reject_non_fqdn_recipient
allow_percent_hack = no
swap_bangpath = no
resolve_dequoted_address = no
allow_untrusted_routing = no
strict_rfc821_envelopes = yes
smtpd_helo_required = yes
disable_vrfy_command = yes

queue_directory = /var/spool/postfix
data_directory = /var/lib/postfix
maillog_file = /var/log/postfix.log
C
mkdir -p "$PEER/var/vmail/box" "$PEER/var/log"
chown 20240:20240 "$PEER/var/vmail/box"
# `ip netns exec` gives the command a mount namespace of its own: /dev and /proc are
# mounted in the tree for the peer alone.
ip netns exec "$PEER_NS" sh -c "mount --rbind /dev '$PEER/dev' && mount -t proc proc '$PEER/proc' \
    && exec chroot '$PEER' /usr/sbin/postfix start-fg" > "$WORK/peer.out" 2>&1 &

# letterbox, as tests/mail_e2e.rs runs it.
hash=$(printf '%s\n' "$PASSWORD" | "$BIN" passwd)
cat > "$WORK/letterbox.toml" <<C
version = 1

[system]
hostname = "mail"
domain = "example.org"

[[interface]]
name = "lbb${ID}s"
ipv4 = ["$SERVER_V4/24"]

[dns]
listen = ["$SERVER_V4:53"]

[containers]
memory_limit = "$BOX_MEMORY"

[[account]]
name = "alice"
password_hash = "$hash"

[[account]]
name = "bob"
password_hash = "$hash"
C
# nsenter, not `ip netns exec`: runc needs the host's /sys with its cgroup mount. nsenter
# execs the agent, so $! is the agent's pid.
nsenter --net="/run/netns/$SERVER_NS" -- "$BIN" run "$WORK/letterbox.toml" --state "$STATE" \
    --socket "$SOCKET" --mail-image "$MAIL_IMAGE" \
    --containerd-dir "$CONTAINERD_TRIXIE/bin" --containerd-dir "$CONTAINERD_TRIXIE/root/usr/bin" \
    </dev/null >/dev/null 2>"$WORK/agent.log" &
AGENT_PID=$!

ctl() { "$BIN" ctl --socket "$SOCKET" "$@"; }
# The pid of UNIT's container init at its last start ("UNIT started (pid N)").
started_pid() { # unit
    ctl logs "$1" -n 200 2>/dev/null | sed -n "s/.*$1 started (pid \([0-9]*\)).*/\1/p" | tail -1
}
diagnostics() {
    echo "--- units:"; ctl units || true
    for f in front/front-postfix.log front/front-dovecot.log boxes/alice/box.log; do
        echo "--- $f:"; tail -20 "$STATE/$f" 2>/dev/null || true
    done
    echo "--- agent log:"; tail -40 "$WORK/agent.log"
    echo "--- peer:"; tail -20 "$WORK/peer.out" "$PEER/var/log/postfix.log" 2>/dev/null || true
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
all_started() {
    for unit in front-postfix front-dovecot box-alice box-bob; do
        [ -n "$(started_pid "$unit")" ] || return 1
    done
}
answers() { # address
    ip netns exec "$CLIENT_NS" python3 -c '
import smtplib, sys
smtplib.SMTP(sys.argv[1], 25, timeout=5).quit()' "$1"
}

cat > "$WORK/bench.py" <<'PY'
import imaplib, os, ssl, statistics, subprocess, sys, time

def maildir_count(maildir):
    return sum(len(os.listdir(os.path.join(maildir, d)))
               for d in ("new", "cur") if os.path.isdir(os.path.join(maildir, d)))

def load(maildir, count, command):
    """Seconds from smtp-source's start until `count` more messages are in `maildir`."""
    target = maildir_count(maildir) + count
    start = time.monotonic()
    source = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    while maildir_count(maildir) < target:
        if source.poll() not in (None, 0):
            sys.exit(f"smtp-source failed ({source.returncode})")
        if time.monotonic() - start > 900:
            sys.exit(f"{maildir}: {maildir_count(maildir)} of {target} messages after 900 s")
        time.sleep(0.01)
    elapsed = time.monotonic() - start
    if source.wait() != 0:
        sys.exit(f"smtp-source failed ({source.returncode})")
    print(f"{elapsed:.3f}")

def descendants(pid):
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found

def rollup(pid, field):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return sum(int(l.split()[1]) for l in f if l.startswith(field + ":"))
    except OSError:
        return 0

def memory(kind, what):
    """Processes, summed PSS and summed RSS in kB: of a cgroup (its cgroup.procs file), of
    a process and its descendants (tree), or of one process."""
    if kind == "cgroup":
        with open(what) as f:
            procs = [int(p) for p in f.read().split()]
    elif kind == "tree":
        procs = descendants(int(what))
    else:
        procs = [int(what)]
    print(len(procs), sum(rollup(p, "Pss") for p in procs), sum(rollup(p, "Rss") for p in procs))

def tls():
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context

def login(host, user, password):
    try:
        imap = imaplib.IMAP4_SSL(host, 993, ssl_context=tls(), timeout=5)
        imap.login(user, password)
        imap.logout()
        return True
    except (OSError, imaplib.IMAP4.error):
        return False

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

def add_login(host, user, password, *add):
    """Seconds from the add command's start until a login as `user` works, and until the
    command returned; the logins refused after it returned."""
    start = time.monotonic()
    done = subprocess.run(add, input=password + "\n", capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(add)}: {done.stdout}{done.stderr}")
    added = time.monotonic()
    refused = 0
    while not login(host, user, password):
        refused += 1
        if time.monotonic() - start > 120:
            sys.exit(f"no IMAP login as {user} within 120 s")
        time.sleep(0.02)
    end = time.monotonic()
    print(f"{end - start:.3f} {added - start:.3f} {refused}")

def restart_login(host, user, password, old_pid, *restart):
    """Seconds from the restart command until a login works on the new box (logins are
    tried once the old box's init is gone), and from the old init's end to that login."""
    start = time.monotonic()
    subprocess.run(restart, check=True, stdout=subprocess.DEVNULL)
    while alive(old_pid):
        if time.monotonic() - start > 120:
            sys.exit(f"the old box (pid {old_pid}) is still running after 120 s")
        time.sleep(0.005)
    gone = time.monotonic()
    while not login(host, user, password):
        if time.monotonic() - start > 120:
            sys.exit("no IMAP login within 120 s")
        time.sleep(0.02)
    end = time.monotonic()
    print(f"{end - start:.3f} {end - gone:.3f}")

if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "load":
        load(args[0], int(args[1]), args[2:])
    elif command == "memory":
        memory(*args)
    elif command == "login":
        sys.exit(0 if login(*args) else 1)
    elif command == "add-login":
        add_login(*args)
    elif command == "restart-login":
        restart_login(args[0], args[1], args[2], int(args[3]), *args[4:])
PY
bench() { python3 "$WORK/bench.py" "$@"; }

wait_until 300 "the mail containers' start" all_started
wait_until 60 "port 25 of the front" answers "$SERVER_V4"
wait_until 60 "port 25 of the peer" answers "$PEER_V4"
wait_until 60 "alice's IMAP login through the front" \
    ip netns exec "$CLIENT_NS" python3 "$WORK/bench.py" login "$SERVER_V4" alice "$PASSWORD"

LB_MAILDIR=$STATE/mail/alice/Maildir
PEER_MAILDIR=$PEER/var/vmail/box/Maildir
send() { # name count
    local maildir to server
    if [ "$1" = letterbox ]; then
        maildir=$LB_MAILDIR to=box@alice.example.org server=$SERVER_V4
    else
        maildir=$PEER_MAILDIR to=box@bench.example server=$PEER_V4
    fi
    bench load "$maildir" "$2" ip netns exec "$CLIENT_NS" chroot "$PEER" /usr/sbin/smtp-source \
        -s "$SESSIONS" -m "$2" -l "$SIZE" -f sender@example.net -t "$to" "$server:25"
}

# Not timed: the first connections, processes and Maildirs of each.
send letterbox 50 >/dev/null || { diagnostics >&2; fail "warm-up mail to letterbox"; }
send peer 50 >/dev/null || { diagnostics >&2; fail "warm-up mail to the peer"; }
echo "bench-mail: $ROUNDS rounds of $MESSAGES messages each" >&2
for round in $(seq "$ROUNDS"); do
    order=(peer letterbox)
    [ $((round % 2)) = 0 ] && order=(letterbox peer)
    for name in "${order[@]}"; do
        seconds=$(send "$name" "$MESSAGES") || { diagnostics >&2; fail "round $round, $name"; }
        echo "$name $seconds" >> "$WORK/rounds"
        echo "bench-mail: round $round, $name: ${seconds}s" >&2
    done
done

# Memory, the boxes idle after the load.
sleep 2
cgroup_of() { # unit: its cgroup directory (v2, or v1's memory hierarchy)
    local dir
    for dir in /sys/fs/cgroup/letterbox/$1 /sys/fs/cgroup/memory/letterbox/$1; do
        [ -f "$dir/cgroup.procs" ] && { echo "$dir"; return; }
    done
    fail "no cgroup for $1"
}
unit_memory() { # unit: its cgroup's processes
    local dir
    dir=$(cgroup_of "$1")
    bench memory cgroup "$dir/cgroup.procs"
}
shim_memory() { # unit: the containerd shim that is the parent of its init, alone
    bench memory process "$(awk '{ print $4 }' "/proc/$(started_pid "$1")/stat")"
}
for unit in box-alice box-bob; do
    box=$(unit_memory "$unit")
    shim=$(shim_memory "$unit")
    echo "$unit $box $shim" >> "$WORK/boxes"
done
{
    agent_pss=$(awk '/^Pss:/ { print $2 }' "/proc/$AGENT_PID/smaps_rollup")
    agent_rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$AGENT_PID/status")
    echo "agent 1 $agent_pss $agent_rss"
    containerd=$(pgrep -P "$AGENT_PID" -x containerd)
    echo "containerd $(bench memory process "$containerd")"
    for unit in front-postfix front-dovecot; do
        front=$(unit_memory "$unit")
        echo "$unit $front"
        echo "$unit-shim $(shim_memory "$unit")"
    done
} > "$WORK/shared"
# What the load did to the boxes: their memory limit and the OOM kills in them (each one a
# delivery the front defers and tries again; counted since the box's last start, its cgroup
# being made anew each start), how often each was started, and the front's deferrals.
oom_kills() { # cgroup directory
    cat "$1/memory.events" "$1/memory.oom_control" 2>/dev/null | awk '$1 == "oom_kill" { print $2 }'
}
memory_limit() { # cgroup directory
    cat "$1/memory.max" "$1/memory.limit_in_bytes" 2>/dev/null | head -1
}
for unit in box-alice box-bob; do
    starts=$(grep -c "$unit started (pid" "$WORK/agent.log" || true)
    if dir=$(cgroup_of "$unit" 2>/dev/null); then
        echo "$unit $starts $(memory_limit "$dir") $(oom_kills "$dir")"
    else
        echo "$unit $starts"
    fi
done > "$WORK/ooms"
deferred=$(grep -c "status=deferred" "$STATE/front/front-postfix.log" || true)

# Add → login, a new account each round, deleted again after it.
for round in $(seq "$LOGIN_ROUNDS"); do
    name=bench$round
    times=$(ip netns exec "$CLIENT_NS" python3 "$WORK/bench.py" add-login "$SERVER_V4" "$name" \
        "$PASSWORD" "$BIN" ctl --socket "$SOCKET" account add "$name" --password-stdin) \
        || { diagnostics >&2; fail "add → login, round $round"; }
    echo "$times" >> "$WORK/adds"
    echo "bench-mail: add → login, add returned, logins refused after $round: $times" >&2
    ctl account del "$name" --purge >/dev/null || { diagnostics >&2; fail "account del $name --purge"; }
    [ ! -e "$STATE/mail/$name" ] || fail "account del $name --purge left $STATE/mail/$name"
done
listed=$(ctl account list) || fail "account list"
! grep -qw "bench[0-9]*" <<< "$listed" || fail "bench accounts left after the rounds: $listed"

# Restart → login.
for round in $(seq "$LOGIN_ROUNDS"); do
    old=$(started_pid box-alice)
    times=$(ip netns exec "$CLIENT_NS" python3 "$WORK/bench.py" restart-login "$SERVER_V4" alice \
        "$PASSWORD" "$old" "$BIN" ctl --socket "$SOCKET" restart box-alice) \
        || { diagnostics >&2; fail "restart → login, round $round"; }
    [ "$(started_pid box-alice)" != "$old" ] || fail "box-alice was not started again"
    echo "$times" >> "$WORK/logins"
    echo "bench-mail: restart → login, old box gone → login $round: $times (s)" >&2
done

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
peer_s=$(awk '$1 == "peer" { print $2 }' "$WORK/rounds" | median)
lb_s=$(awk '$1 == "letterbox" { print $2 }' "$WORK/rounds" | median)
add_s=$(awk '{ print $1 }' "$WORK/adds" | median)
added_s=$(awk '{ print $2 }' "$WORK/adds" | median)
login_s=$(awk '{ print $1 }' "$WORK/logins" | median)
created_s=$(awk '{ print $2 }' "$WORK/logins" | median)
goal() { # met?
    if [ "$1" = 1 ]; then echo "met"; else echo "MISSED"; fi
}

printf "Mail benchmark: smtp-source, %s messages of %s bytes over %s sessions (one message per\n" \
    "$MESSAGES" "$SIZE" "$SESSIONS"
printf "connection), %s rounds each, taking turns; timed from smtp-source's start to the last\n" "$ROUNDS"
printf "message in the Maildir; msg/s: the median round\n"
awk -v n="$MESSAGES" -v lb="$lb_s" -v peer="$peer_s" -v goal="$GOAL_RATIO" '
    $1 == "letterbox" { l = l sprintf(" %6.2f", $2) }
    $1 == "peer" { p = p sprintf(" %6.2f", $2) }
    END {
        printf "%-28s %8s %8s | %s\n", "", "msg/s", "median s", "rounds (s)"
        printf "%-28s %8.1f %8.2f |%s\n", "letterbox (front -> box)", n / lb, lb, l
        printf "%-28s %8.1f %8.2f |%s\n", "Postfix -> Maildir (peer)", n / peer, peer, p
        r = peer / lb
        printf "ratio letterbox / peer: %.2f (goal >= %.1f: %s)\n", r, goal, (r >= goal ? "met" : "MISSED")
    }' "$WORK/rounds"
echo
echo "Memory, both boxes idle after the load (PSS summed over the processes; MB = 1024 kB)"
awk -v goal="$GOAL_BOX_MB" '
    BEGIN { printf "%-18s %5s %9s %9s | %9s %9s\n", "box", "procs", "PSS MB", "RSS MB", "shim PSS", "shim RSS" }
    { printf "%-18s %5d %9.1f %9.1f | %9.1f %9.1f   goal <= %d MB (box PSS): %s\n", $1, $2, $3 / 1024,
        $4 / 1024, $6 / 1024, $7 / 1024, goal, $3 / 1024 <= goal ? "met" : "MISSED" }' "$WORK/boxes"
awk -v goal="$GOAL_AGENT_MB" '
    BEGIN { printf "%-18s %5s %9s %9s\n", "shared", "procs", "PSS MB", "RSS MB" }
    { line = sprintf("%-18s %5d %9.1f %9.1f", $1, $2, $3 / 1024, $4 / 1024)
      if ($1 == "agent") line = line sprintf("   goal <= %d MB (agent RSS): %s", goal,
          $4 / 1024 <= goal ? "met" : "MISSED")
      print line }' "$WORK/shared"
awk 'NF == 2 { printf "%-18s started %d times, NOT RUNNING after the load (no cgroup)\n", $1, $2 }
    NF == 4 { printf "%-18s started %d times, memory limit %.0f MB, OOM kills since its last start: %d\n",
        $1, $2, $3 / 1048576, $4 }' "$WORK/ooms"
echo "front-postfix  deliveries deferred (and tried again): $deferred"
awk 'FNR == NR { box += $3 + $6; boxes++; next } { shared += $3 }
    END { per = box / boxes / 1024; fixed = shared / 1024
        printf "20 accounts: %.0f MB shared + 20 x %.1f MB (box + shim) = %.0f MB\n", fixed, per,
            fixed + 20 * per }' "$WORK/boxes" "$WORK/shared"
echo
printf "Add -> login: \`ctl account add benchN --password-stdin\` (a new account and box each\n"
printf "round), then an IMAP login as benchN through the front's 993 tried every 20 ms from the\n"
printf "command's return until it works. Medians of %s.\n" "$LOGIN_ROUNDS"
printf "add -> login      %.2f s (rounds: %s) goal <= %s s: %s\n" "$add_s" \
    "$(awk '{ printf "%s ", $1 }' "$WORK/adds" | sed 's/ $//')" "$GOAL_LOGIN_S" \
    "$(goal "$(awk -v s="$add_s" -v g="$GOAL_LOGIN_S" 'BEGIN { print (s <= g) ? 1 : 0 }')")"
printf "add returned      %.2f s (rounds: %s)\n" "$added_s" \
    "$(awk '{ printf "%s ", $2 }' "$WORK/adds" | sed 's/ $//')"
printf "logins refused after the add returned: %s\n" "$(awk '{ printf "%s ", $3 }' "$WORK/adds" | sed 's/ $//')"
echo
printf "Restart -> login: \`ctl restart box-alice\` (the box stopped, its container deleted,\n"
printf "created and started again from the imported image) until a login as alice works;\n"
printf "\"created\": from the old box's end (its init gone). Medians of %s.\n" "$LOGIN_ROUNDS"
printf "restart -> login  %.2f s (rounds: %s)\n" "$login_s" \
    "$(awk '{ printf "%s ", $1 }' "$WORK/logins" | sed 's/ $//')"
printf "created -> login  %.2f s (rounds: %s)\n" "$created_s" \
    "$(awk '{ printf "%s ", $2 }' "$WORK/logins" | sed 's/ $//')"
