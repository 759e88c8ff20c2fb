#!/bin/sh
# msagate as a target of the shared benchmark harness (/work/shared/bench):
# twistd --nodaemon msagate with a throw-away configuration in
# $BENCH_STATE/$MSA_NAME.  Takes start | stop | clean, like the anchors.
#
#   MSA_SUB_PORT    (20602) STARTTLS + AUTH listener
#   MSA_SMTPS_PORT  (20603) implicit TLS + AUTH listener
#   MSA_RELAY       smarthost (default): relay every message to the
#                   harness's relay sink 127.0.0.1:$RELAY_SINK_PORT (20026)
#                   without TLS, as Postfix does;
#                   none: leave [relay] out, for an msagate that has no
#                   relay (submission only).  Refused when msagate knows
#                   [relay]: without the section it would deliver by MX,
#                   off this machine.
#   MSA_NAME        state subdirectory (default msagate), to run several
#                   variants side by side
#   MSA_SOURCE      the msagate source tree to run (default: the checkout
#                   holding this script)
#   MSA_VENV        virtualenv with twistd and msagate's dependencies
#                   (default: the checkout's .venv)
#   MSA_SENDER      the sender the user may use (default bench@bench.test)
#   BENCH_ANCHORS   the harness's anchors directory, for common.sh
#
# msagate refuses unauthenticated submission, so it has no plain path; a
# session that only says EHLO works on the STARTTLS port.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
checkout=$(cd "$here/../.." && pwd)
. "${BENCH_ANCHORS:-/work/shared/bench/anchors}/common.sh"

S=$BENCH_STATE/${MSA_NAME:-msagate}
SUB=${MSA_SUB_PORT:-20602}; SMTPS=${MSA_SMTPS_PORT:-20603}
SINK=${RELAY_SINK_PORT:-20026}
RELAY=${MSA_RELAY:-smarthost}
SOURCE=${MSA_SOURCE:-$checkout}
VENV=${MSA_VENV:-$checkout/.venv}
SENDER=${MSA_SENDER:-bench@bench.test}

# The relay section is the last one, so that nothing else lands in it.
write_config() {
    mkdir -p "$S"
    # The same kind of certificate as every other target (RSA 2048, self
    # signed), so that TLS costs the same everywhere.
    mkcert "$S"
    # bcrypt cost 5, as benchmarks/submission.py: a realistic hash that
    # does not dominate the 20 logins of a scenario.  The password goes
    # through the environment, not the command line.
    BENCH_PASS=$BENCH_PASS "$VENV/bin/python" -c '
import os, sys, bcrypt
hashed = bcrypt.hashpw(os.environ["BENCH_PASS"].encode(), bcrypt.gensalt(5))
sys.stdout.write(sys.argv[1] + ":" + hashed.decode() + "\n")
' "$BENCH_USER" >"$S/htpasswd"
    echo "$BENCH_USER: $SENDER" >"$S/senders"
    cat >"$S/msagate.ini" <<CF
[server]
hostname = msagate.bench.test
spool = $S/spool

[tls]
certificate = $S/cert.pem
key = $S/key.pem

[listener:submission]
endpoint = tcp:$SUB:interface=127.0.0.1
tls = starttls

[listener:submissions]
endpoint = tcp:$SMTPS:interface=127.0.0.1
tls = implicit

[auth]
checker = htpasswd
htpasswd = $S/htpasswd

[senders]
map = $S/senders

[limits]
connections = 0
client_connections = 0
CF
    case $RELAY in
    smarthost)
        printf '\n[relay]\nmode = smarthost\nsmarthosts = 127.0.0.1:%s\n%s\n' \
            "$SINK" "security = none" >>"$S/msagate.ini" ;;
    none) check_no_relay ;;
    *) echo "MSA_RELAY must be smarthost or none, not $RELAY" >&2; exit 64 ;;
    esac
}

# Leaving [relay] out is only safe for an msagate that has no relay.
check_no_relay() {
    known=$(PYTHONPATH=$SOURCE "$VENV/bin/python" "$here/relayprobe.py")
    if [ "$known" != unknown ]; then
        echo "MSA_RELAY=none: this msagate has a relay; without [relay]" \
            "it would deliver by MX, off this machine." \
            "Use MSA_RELAY=smarthost." >&2
        exit 1
    fi
}

# wait_listening PID PORT...: wait until every PORT of 127.0.0.1 accepts a
# connection; give up at once when process PID has ended, or after 30 s.
wait_listening() {
    "$VENV/bin/python" - "$@" <<'PYEOF'
import os, socket, sys, time
pid, ports = int(sys.argv[1]), [int(port) for port in sys.argv[2:]]
deadline = time.monotonic() + 30
while ports and time.monotonic() < deadline:
    if not os.path.exists(f"/proc/{pid}"):
        sys.exit(f"msagate (pid {pid}) has exited")
    try:
        socket.create_connection(("127.0.0.1", ports[0]), 0.5).close()
        ports.pop(0)
    except OSError:
        time.sleep(0.05)
sys.exit(f"msagate is not listening on port {ports[0]}" if ports else 0)
PYEOF
}

start() {
    write_config
    # 1000 idle sessions need more descriptors than the usual 1024.
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    cd "$S"
    PYTHONPATH=$SOURCE "$VENV/bin/twistd" --nodaemon --pidfile= \
        --logfile "$S/twistd.log" msagate --config "$S/msagate.ini" \
        </dev/null >"$S/server.out" 2>&1 &
    echo $! >"$S/pids"
    if ! wait_listening "$(cat "$S/pids")" "$SUB" "$SMTPS"; then
        tail -n 20 "$S/server.out" "$S/twistd.log" >&2 2>/dev/null || true
        kill_pids "$S/pids"
        exit 1
    fi
    echo "PID $(cat "$S/pids")"
}

# Between cells.  Without a relay nothing reads the queue, so it is
# emptied.  With a relay the queue belongs to it: the harness has already
# waited for the sink to count every message, and a message still queued
# (a failed delivery waiting for its retry) must not vanish under the
# relay, so it is only reported.
clean() {
    queue=$S/spool/queue
    [ -d "$queue" ] || return 0
    if [ "$RELAY" = none ]; then
        find "$queue" -type f -delete
    else
        left=$(find "$queue" -type f -name '*.json' | wc -l)
        [ "$left" -eq 0 ] || echo "msagate: $left messages still queued" >&2
    fi
}

case "${1:-}" in
start) start ;;
stop) kill_pids "$S/pids" ;;
clean) clean ;;
*) echo "usage: $0 start|stop|clean" >&2; exit 64 ;;
esac
