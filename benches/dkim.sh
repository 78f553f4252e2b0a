#!/usr/bin/env bash
# Benchmark: what DKIM signing costs on the submission path (issue #12): messages per second
# with the agent's milter in the path (signing) as a ratio to the same path without it, and
# the agent's memory (the milter is a unit of the agent) idle and after the signing rounds.
#
# letterbox: `letterbox run` in a server network namespace with trixie's containerd and the
# mail image, accounts alice and bob, as benches/mail.sh runs it (this script has no peer
# Postfix and no smtp-source: it compares letterbox with itself, so it is a script of its
# own, which `make bench-dkim` runs alone).
#
# The load: a Python client (smtplib, one thread a session) in a client namespace sends
# MESSAGES messages of SIZE bytes from alice to bob through the front's submission port
# PORT (465, implicit TLS; or 587 with STARTTLS), logged in as alice, over SESSIONS parallel
# sessions, each reconnecting (TLS handshake and AUTH again) after PER_CONNECTION messages.
# A round's time runs from the client's start until the last message is in bob's Maildir
# (new/ and cur/, polled every 10 ms).
#
# The two modes, the same client, the same Postfix: "signing" is the product as rendered
# (smtpd_milters and non_smtpd_milters point at the agent's milter socket); "plain" is the
# same main.cf with those two lines emptied. The bench switches by writing the one or the
# other over STATE/front/postfix/main.cf (in place: the container sees the file it was
# given) and sending SIGHUP to the front's Postfix master (the container's init: `postfix
# start-fg` execs it), which is what `postfix reload` does. This is a bench-only
# edit of a rendered file, not a product setting: the agent renders main.cf again, with
# its milter, at the unit's next start. After each switch one message is sent and read
# back until it shows the new mode (untimed). The modes take turns, ROUNDS rounds each, the
# order swapped every round; each mode's time is the median of its rounds.
#
# Every round's messages are read back from bob's Maildir (by their Subject, which names the
# round): in a signing round each must carry a DKIM-Signature, in a plain round none may;
# otherwise the run fails. A round ends when every one of its messages is there; a message
# delivered twice (a box's LMTP process killed after saving it, so Postfix delivers it
# again) counts once and is reported.
#
# Memory: the agent's PSS and RSS (smaps_rollup, status) idle (every unit up, the keys made,
# the welcome mails signed, before the load), after a warm-up without signing (what the
# rest of the agent, e.g. the routing socketmap, takes for the load), after each signing
# round, and its peak RSS during the load (VmHWM, reset after the idle reading). Also the
# agent's CPU time a message in each mode (/proc/PID/stat, all its threads), which tells
# signing's cost from waiting.
# The goal, signing/plain >= 0.8, is reported, not an error: the script fails only when
# the run itself does.
# MESSAGES, SESSIONS, PER_CONNECTION, SIZE, ROUNDS and PORT may be set in the environment;
# LETTERBOX_BIN, MAIL_IMAGE and CONTAINERD_TRIXIE say where the parts are; LOGS=DIR keeps
# the agent's and the containers' logs there.
set -euo pipefail

MESSAGES=${MESSAGES:-500}
SESSIONS=${SESSIONS:-4}
PER_CONNECTION=${PER_CONNECTION:-25}
SIZE=${SIZE:-4096}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-465}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${LETTERBOX_BIN:-$ROOT/target/release/letterbox}
MAIL_IMAGE=${MAIL_IMAGE:-$ROOT/out/letterbox-mail-$(dpkg --print-architecture)}
CONTAINERD_TRIXIE=${CONTAINERD_TRIXIE:-$ROOT/.cache/containerd-trixie}
PASSWORD="correct horse battery"
SERVER_V4=192.0.2.10
ALICE=box@alice.example.org
BOB=box@bob.example.org
# Goal from issue #12: throughput with signing, as a share of the same path without.
GOAL_RATIO=0.8

fail() { echo "bench-dkim: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "needs root (network namespaces, containerd)"
for tool in "$BIN" ip nsenter python3; do
    command -v "$tool" >/dev/null || fail "$tool not found"
done
case $PORT in 465 | 587) ;; *) fail "PORT is 465 or 587, not $PORT" ;; esac
[ -f "$MAIL_IMAGE/index.json" ] || fail "no mail image at $MAIL_IMAGE (make mail-image builds it)"
if [ ! -x "$CONTAINERD_TRIXIE/bin/runc" ] || [ ! -x "$CONTAINERD_TRIXIE/root/usr/bin/containerd" ]; then
    fail "no containerd and runc in $CONTAINERD_TRIXIE (make containerd-trixie fetches them)"
fi
for cgroup in /sys/fs/cgroup/letterbox /sys/fs/cgroup/memory/letterbox; do
    [ ! -e "$cgroup/front-postfix" ] || fail "another letterbox mail system runs on this host ($cgroup/front-postfix)"
done

ID=$$
WORK=$(mktemp -d /tmp/letterbox-bench-dkim.XXXXXX)
SERVER_NS=lbd-srv-$ID
CLIENT_NS=lbd-cli-$ID
STATE=$WORK/state
SOCKET=$WORK/control.sock
AGENT_PID=
cleanup() {
    set +e
    if [ -n "${LOGS:-}" ]; then
        mkdir -p "$LOGS"
        cp "$WORK/agent.log" "$LOGS/"
        (cd "$STATE" && find front boxes -name '*.log' -exec cp --parents {} "$LOGS/" \;)
    fi
    if [ -n "$AGENT_PID" ]; then
        kill "$AGENT_PID" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$AGENT_PID" 2>/dev/null
    fi
    # The containerd shims outlive containerd by design; they name its socket.
    for pid in $(pgrep -f "$STATE/containerd/containerd.sock"); do kill -9 "$pid"; done
    wait 2>/dev/null
    grep -o " $WORK/[^ ]*" /proc/self/mounts | sort -r | while read -r m; do umount -l "$m"; done
    for ns in "$SERVER_NS" "$CLIENT_NS"; do ip netns del "$ns" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$SERVER_NS"
ip netns add "$CLIENT_NS"
ip -n "$SERVER_NS" link add "lbd${ID}s" type veth peer name "lbd${ID}c"
ip -n "$SERVER_NS" link set "lbd${ID}c" netns "$CLIENT_NS"
ip -n "$CLIENT_NS" addr add 192.0.2.20/24 dev "lbd${ID}c"
for link in "lbd${ID}c" lo; do ip -n "$CLIENT_NS" link set "$link" up; done
ip -n "$SERVER_NS" link set lo up

hash=$(printf '%s\n' "$PASSWORD" | "$BIN" passwd)
cat > "$WORK/letterbox.toml" <<C
version = 1

[system]
hostname = "mail"
domain = "example.org"

[[interface]]
name = "lbd${ID}s"
ipv4 = ["$SERVER_V4/24"]

[dns]
listen = ["$SERVER_V4:53"]

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
started_pid() { # unit: the pid of its container init at its last start
    ctl logs "$1" -n 200 2>/dev/null | sed -n "s/.*$1 started (pid \([0-9]*\)).*/\1/p" | tail -1
}
diagnostics() {
    echo "--- units:"; ctl units || true
    for f in front/front-postfix.log front/front-dovecot.log boxes/bob/box.log; do
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
all_started() {
    for unit in front-postfix front-dovecot box-alice box-bob; do
        [ -n "$(started_pid "$unit")" ] || return 1
    done
}
keys_made() { [ "$(find "$STATE/dkim" -name '*.key' 2>/dev/null | wc -l)" -ge 2 ]; }

cat > "$WORK/bench.py" <<'PY'
import email, email.parser, email.policy, email.utils, os, smtplib, ssl, sys, threading, time

def tls():
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context

def connect(host, port, user, password):
    if port == 465:
        smtp = smtplib.SMTP_SSL(host, port, context=tls(), timeout=60)
    else:
        smtp = smtplib.SMTP(host, port, timeout=60)
        smtp.starttls(context=tls())
    smtp.ehlo("client.example.net")
    smtp.login(user, password)
    return smtp

def message(sender, to, tag, n, size):
    line = "The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = (line * (size // len(line) + 1))[:size]
    return (f"From: Alice <{sender}>\r\nTo: Bob <{to}>\r\nSubject: dkim-bench {tag} {n}\r\n"
            f"Date: {email.utils.formatdate()}\r\n"
            f"Message-ID: <{tag}.{n}.{time.time_ns()}@alice.example.org>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
            + body).encode()

def names(maildir):
    """The messages in a Maildir, by their unique part (flags moved to cur/ stripped), with
    their paths."""
    found = {}
    for sub in ("new", "cur"):
        try:
            for n in os.listdir(os.path.join(maildir, sub)):
                found[n.split(":")[0]] = os.path.join(maildir, sub, n)
        except FileNotFoundError:
            pass
    return found

def send(host, port, user, password, sender, to, tag, count, sessions, per_connection, size):
    """Sends `count` messages over `sessions` threads, reconnecting every `per_connection`."""
    numbers = iter(range(count))
    lock = threading.Lock()
    errors = []
    def session():
        try:
            while True:
                with lock:
                    batch = [n for _, n in zip(range(per_connection), numbers)]
                if not batch:
                    return
                smtp = connect(host, port, user, password)
                for n in batch:
                    smtp.sendmail(sender, [to], message(sender, to, tag, n, size))
                smtp.quit()
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
    threads = [threading.Thread(target=session) for _ in range(sessions)]
    for t in threads:
        t.start()
    return threads, errors

def read(file):
    """The message's Subject and its DKIM-Signature headers."""
    with open(file, "rb") as f:
        parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parse(f)
    return parsed["Subject"] or "", parsed.get_all("DKIM-Signature") or []

class Arrivals:
    """The messages of one tag that arrived in a Maildir since it was made: a message
    delivered twice (a box's LMTP process killed after saving it, so Postfix delivers it
    again) is counted once, and counted as a duplicate."""
    def __init__(self, maildir, tag):
        self.maildir, self.prefix = maildir, f"dkim-bench {tag} "
        self.before = names(maildir)
        self.read = {}
    def update(self):
        for name, file in names(self.maildir).items():
            if name not in self.before and name not in self.read:
                self.read[name] = read(file)
        return {subject for subject, _ in self.read.values() if subject.startswith(self.prefix)}
    def ours(self):
        return [(n, s) for n, (subject, s) in self.read.items() if subject.startswith(self.prefix)]

def check(mode, tag, arrivals):
    """Each message must (signing) or must not (plain) carry a DKIM-Signature; returns the
    signature algorithms seen."""
    algorithms = set()
    for name, signatures in arrivals.ours():
        if mode == "signing" and not signatures:
            sys.exit(f"signing round {tag}: {name} carries no DKIM-Signature")
        if mode == "plain" and signatures:
            sys.exit(f"plain round {tag}: {name} carries a DKIM-Signature")
        for s in signatures:
            tags = dict(t.strip().split("=", 1) for t in s.split(";") if "=" in t)
            algorithms.add(tags.get("a", "?").strip())
    return algorithms

def round_(mode, maildir, host, port, user, password, sender, to, tag, count, sessions,
           per_connection, size):
    """One timed round: seconds from the client's start until all `count` messages are in
    `maildir`; each is read back and checked. Prints the seconds, the signature algorithms
    seen and the duplicate deliveries."""
    arrivals = Arrivals(maildir, tag)
    target = len(arrivals.before) + count
    start = time.monotonic()
    threads, errors = send(host, port, user, password, sender, to, tag, count, sessions,
                           per_connection, size)
    # Counting files is cheap; the new ones are read only once there are enough of them.
    while len(names(maildir)) < target or len(arrivals.update()) < count:
        if errors:
            sys.exit(f"{mode} round {tag}: {errors[0]}")
        if time.monotonic() - start > 900:
            sys.exit(f"{maildir}: {len(arrivals.update())} of {count} messages after 900 s")
        time.sleep(0.01)
    elapsed = time.monotonic() - start
    for t in threads:
        t.join()
    if errors:
        sys.exit(f"{mode} round {tag}: {errors[0]}")
    algorithms = check(mode, tag, arrivals)
    print(f"{elapsed:.3f} {','.join(sorted(algorithms)) or '-'} {len(arrivals.ours()) - count}")

def probe(mode, maildir, host, port, user, password, sender, to, tag):
    """Sends one message at a time until one arrives as `mode` has it (signed or not):
    the front's Postfix has taken the switch. Untimed."""
    deadline = time.monotonic() + 60
    for attempt in range(1000):
        arrivals = Arrivals(maildir, f"{tag}.{attempt}")
        smtp = connect(host, port, user, password)
        smtp.sendmail(sender, [to], message(sender, to, f"{tag}.{attempt}", 0, 100))
        smtp.quit()
        while not arrivals.update():
            if time.monotonic() > deadline:
                sys.exit(f"probe {tag}: not delivered within 60 s")
            time.sleep(0.01)
        if all(bool(s) == (mode == "signing") for _, s in arrivals.ours()):
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    sys.exit(f"the front's Postfix did not switch to {mode} within 60 s")

def memory(pid):
    """The process's PSS, RSS and peak RSS (VmHWM), in kB."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        pss = sum(int(l.split()[1]) for l in f if l.startswith("Pss:"))
    status = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status"))
    print(pss, int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0]))

def ready(host, port, user, password):
    connect(host, port, user, password).quit()

if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "round":
        mode, maildir, host, port, user, password, sender, to, tag = args[:9]
        count, sessions, per_connection, size = map(int, args[9:13])
        round_(mode, maildir, host, int(port), user, password, sender, to, tag, count,
               sessions, per_connection, size)
    elif command == "probe":
        mode, maildir, host, port, user, password, sender, to, tag = args
        probe(mode, maildir, host, int(port), user, password, sender, to, tag)
    elif command == "memory":
        memory(args[0])
    elif command == "ready":
        ready(args[0], int(args[1]), args[2], args[3])
PY
client() { ip netns exec "$CLIENT_NS" python3 "$WORK/bench.py" "$@"; }

wait_until 300 "the mail containers' start" all_started
wait_until 60 "alice's login on port $PORT" client ready "$SERVER_V4" "$PORT" alice "$PASSWORD"
wait_until 60 "the DKIM keys in $STATE/dkim" keys_made

# The two main.cf files: the product's, and the same without the milter.
MAIN_CF=$STATE/front/postfix/main.cf
cp "$MAIN_CF" "$WORK/main.cf.signing"
sed -e 's/^smtpd_milters = .*/smtpd_milters =/' -e 's/^non_smtpd_milters = .*/non_smtpd_milters =/' \
    "$MAIN_CF" > "$WORK/main.cf.plain"
grep -q '^smtpd_milters = unix:' "$WORK/main.cf.signing" && grep -q '^non_smtpd_milters = .' "$WORK/main.cf.signing" \
    || fail "$MAIN_CF has no smtpd_milters and non_smtpd_milters lines to take out"
[ "$(diff "$WORK/main.cf.signing" "$WORK/main.cf.plain" | grep -c '^>')" = 2 ] \
    || fail "taking the milter out of $MAIN_CF changed other lines than the two"
postfix_master() { # the front's Postfix master: `postfix start-fg` execs it as the container's init
    local pid
    pid=$(started_pid front-postfix)
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = master ] \
        || fail "front-postfix's init (pid ${pid:-none}) is not Postfix's master"
    echo "$pid"
}
MAILDIR=$STATE/mail/bob/Maildir
PROBES=0
switch() { # mode
    local master
    master=$(postfix_master)
    cat "$WORK/main.cf.$1" > "$MAIN_CF"
    kill -HUP "$master"
    PROBES=$((PROBES + 1))
    client probe "$1" "$MAILDIR" "$SERVER_V4" "$PORT" alice "$PASSWORD" "$ALICE" "$BOB" "probe$PROBES" \
        || { diagnostics >&2; fail "switching to $1"; }
}
timed() { # mode tag count
    client round "$1" "$MAILDIR" "$SERVER_V4" "$PORT" alice "$PASSWORD" "$ALICE" "$BOB" "$2" "$3" \
        "$SESSIONS" "$PER_CONNECTION" "$SIZE"
}
agent_memory() { python3 "$WORK/bench.py" memory "$AGENT_PID"; }
# The agent's CPU time (user and system, every thread) in clock ticks: where the signing goes.
agent_cpu() { sed 's/.*) //' "/proc/$AGENT_PID/stat" | awk '{ print $12 + $13 }'; }
TICKS=$(getconf CLK_TCK)

# A unit restarted during the load makes its times meaningless (and, as the containers'
# names are the host's, is most likely another letterbox started on this host meanwhile).
unit_failures() { grep -c "WARN  unit .* failed" "$WORK/agent.log" || true; }
sleep 2
failures=$(unit_failures)
echo "idle $(agent_memory)" > "$WORK/memory"
# The peak RSS from here on is the load's, not the start's (the image import): 5 resets it.
echo 5 > "/proc/$AGENT_PID/clear_refs"
# Not timed: the first connections and processes of each mode; the memory after the one
# without signing is what the rest of the agent takes for this load.
switch plain
timed plain warm-plain 50 >/dev/null || { diagnostics >&2; fail "warm-up without signing"; }
echo "plain-warm $(agent_memory)" >> "$WORK/memory"
switch signing
timed signing warm-signing 50 >/dev/null || { diagnostics >&2; fail "warm-up with signing"; }
mode=signing
echo "bench-dkim: $ROUNDS rounds of $MESSAGES messages each, port $PORT" >&2
for round in $(seq "$ROUNDS"); do
    order=(signing plain)
    [ $((round % 2)) = 0 ] && order=(plain signing)
    for name in "${order[@]}"; do
        [ "$name" = "$mode" ] || { switch "$name"; mode=$name; }
        cpu_before=$(agent_cpu)
        result=$(timed "$name" "r$round-$name" "$MESSAGES") || { diagnostics >&2; fail "round $round, $name"; }
        cpu=$(($(agent_cpu) - cpu_before))
        echo "$name $result $cpu" >> "$WORK/rounds"
        read -r seconds algorithms duplicates <<< "$result"
        echo "bench-dkim: round $round, $name: ${seconds}s, the agent's CPU $((cpu * 1000 / TICKS)) ms (DKIM-Signature a=: $algorithms; delivered twice: $duplicates)" >&2
        [ "$name" = signing ] && echo "signing-r$round $(agent_memory)" >> "$WORK/memory"
    done
done
echo "end $(agent_memory)" >> "$WORK/memory"
[ "$(unit_failures)" = "$failures" ] || { diagnostics >&2; fail "a unit failed during the load: no numbers"; }

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
signing_s=$(awk '$1 == "signing" { print $2 }' "$WORK/rounds" | median)
plain_s=$(awk '$1 == "plain" { print $2 }' "$WORK/rounds" | median)
algorithms=$(awk '$1 == "signing" { print $3 }' "$WORK/rounds" | sort -u | paste -sd' ')

printf "DKIM benchmark: submission (port %s, AUTH as alice) from alice to bob, %s messages of %s\n" \
    "$PORT" "$MESSAGES" "$SIZE"
printf "bytes over %s sessions (%s messages a connection), %s rounds each, taking turns;\n" \
    "$SESSIONS" "$PER_CONNECTION" "$ROUNDS"
printf "timed from the client's start to the last message in bob's Maildir; msg/s: the median\n"
printf "round. Every message was read back: each signing round's carried DKIM-Signatures\n"
printf "(a=%s), no plain round's did.\n" "$algorithms"
awk -v n="$MESSAGES" -v sig="$signing_s" -v plain="$plain_s" -v goal="$GOAL_RATIO" '
    $1 == "signing" { s = s sprintf(" %6.2f", $2) }
    $1 == "plain" { p = p sprintf(" %6.2f", $2) }
    END {
        printf "%-32s %8s %8s | %s\n", "", "msg/s", "median s", "rounds (s)"
        printf "%-32s %8.1f %8.2f |%s\n", "milter in the path (signing)", n / sig, sig, s
        printf "%-32s %8.1f %8.2f |%s\n", "milter out of the path (plain)", n / plain, plain, p
        r = plain / sig
        printf "ratio signing / plain: %.2f (goal >= %.1f: %s)\n", r, goal, (r >= goal ? "met" : "MISSED")
    }' "$WORK/rounds"
awk -v n="$MESSAGES" -v ticks="$TICKS" '$1 == "signing" { s += $4; sc += $5; sr++ } $1 == "plain" { p += $4; pc += $5; pr++ }
    END { printf "delivered twice (a box'"'"'s LMTP process killed after saving): signing %d, plain %d\n", s, p
        printf "the agent'"'"'s CPU a message (mean over the rounds): signing %.2f ms, plain %.2f ms\n",
            sc / sr / n / ticks * 1000, pc / pr / n / ticks * 1000 }' "$WORK/rounds"
echo
echo "Memory of the agent, where the milter runs (MB = 1024 kB)"
awk '
    BEGIN { printf "%-34s %8s %8s\n", "", "PSS MB", "RSS MB" }
    $1 == "idle" { idle = $3 }
    $1 == "plain-warm" { warm = $3 }
    $1 ~ /^signing-r/ && $3 > signed { signed = $3 }
    $1 == "end" { hwm = $4 }
    { what = $1 == "idle" ? "idle (before the load)" : $1 == "plain-warm" ? "after mail without signing" : \
          $1 == "end" ? "at the end" : "after signing round " substr($1, 10)
      printf "%-34s %8.1f %8.1f\n", what, $2 / 1024, $3 / 1024 }
    END {
        printf "peak RSS (VmHWM) during the load: %.1f MB\n", hwm / 1024
        printf "the milter signing (highest after a signing round): RSS %+.1f MB against idle, %+.1f MB against mail without signing\n",
            (signed - idle) / 1024, (signed - warm) / 1024
    }' "$WORK/memory"
