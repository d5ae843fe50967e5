# Shell helpers for guest-side scenario scripts (bash), sourced before the test's own commands.
#
# The guest init runs the script with RESULTS set to the run directory, which is shared with the host (hostfs):
# everything written there is read back by tests/e2e/uml.py.  Conventions:
#   $RESULTS/NAME.log   pppd's own log (`debug logfile`), one per pppd started with pppd_start NAME
#   $RESULTS/NAME.rc    an exit status (pppd_wait, record)
#   $RESULTS/NAME.addr  `ip -o addr show ppp0` once the link is up (wait_ppp_up)
#   $RESULTS/guest-NAME.mark   the guest tells the host something happened (mark NAME)
#   $RESULTS/host-NAME.mark    the host tells the guest (wait_host_mark NAME TIMEOUT)

PPP_TTY=${PPP_TTY:-/dev/ttyS0}
PPP_SPEED=${PPP_SPEED:-115200}

say() { echo "[$(date +%H:%M:%S.%N | cut -c1-12)] $*"; }

# pid_running PID: true while PID exists and is not a zombie (a finished child not yet reaped).
pid_running() {
    local state
    state=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

# pppd_start NAME [pppd options...]: start pppd on the serial line in the background.
# Always given: the tty and speed, nodetach, debug, logfile $RESULTS/NAME.log, local, nocrtscts.
pppd_start() {
    local name=$1
    shift
    say "pppd_start $name: $*"
    pppd "$PPP_TTY" "$PPP_SPEED" nodetach debug logfile "$RESULTS/$name.log" local nocrtscts "$@" \
        >"$RESULTS/$name.out" 2>&1 &
    echo $! >"$RESULTS/$name.pid"
}

pppd_pid() { cat "$RESULTS/$1.pid"; }

# pppd_wait NAME TIMEOUT: wait for pppd NAME to exit; its status goes to $RESULTS/NAME.rc and is returned.
# After TIMEOUT seconds pppd is killed (TERM, then KILL) and the status file says "timeout" (returns 124).
pppd_wait() {
    local name=$1 timeout=$2 pid i rc
    pid=$(pppd_pid "$name")
    for ((i = 0; i < timeout * 10; i++)); do
        pid_running "$pid" || break
        sleep 0.1
    done
    if pid_running "$pid"; then
        say "pppd_wait $name: still running after ${timeout}s, killing it"
        kill -TERM "$pid" 2>/dev/null
        for ((i = 0; i < 50; i++)); do pid_running "$pid" || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        echo timeout >"$RESULTS/$name.rc"
        return 124
    fi
    wait "$pid"
    rc=$?
    echo "$rc" >"$RESULTS/$name.rc"
    say "pppd_wait $name: exit status $rc"
    return "$rc"
}

# pppd_stop NAME [TIMEOUT]: SIGTERM pppd NAME (it sends LCP Terminate-Request) and wait for it.
pppd_stop() {
    local name=$1 timeout=${2:-10}
    kill -TERM "$(pppd_pid "$name")" 2>/dev/null
    pppd_wait "$name" "$timeout"
}

# ppp_is_up CALLER IFACE SAVE_AS: if IFACE has an IPv4 address, save `ip -o addr show IFACE` into
# $RESULTS/SAVE_AS.addr and say so in CALLER's name (returns 0); else returns 1.
ppp_is_up() {
    ip -o -4 addr show dev "$2" 2>/dev/null | grep -q ' inet ' || return 1
    ip -o addr show dev "$2" >"$RESULTS/$3.addr"
    say "$1: $2 is up: $(ip -o -4 addr show dev "$2")"
}

# wait_ppp_up TIMEOUT [SAVE_AS] [IFACE]: wait until IFACE (ppp0) has an IPv4 address; save `ip -o addr show IFACE`
# into $RESULTS/SAVE_AS.addr (default: IFACE.addr).  Returns 1 on timeout.
wait_ppp_up() {
    local timeout=${1:-20} save=${2:-} ifc=${3:-ppp0} i
    for ((i = 0; i < timeout * 10; i++)); do
        ppp_is_up wait_ppp_up "$ifc" "${save:-$ifc}" && return 0
        sleep 0.1
    done
    say "wait_ppp_up: $ifc not up after ${timeout}s"
    return 1
}

# wait_ppp_up_within SECONDS [SAVE_AS] [IFACE]: wait_ppp_up bounded by the clock rather than by a count of
# looks, for a guest that may be slow (each look starts a program): returns 1 once SECONDS have passed.
wait_ppp_up_within() {
    local timeout=${1:-20} save=${2:-} ifc=${3:-ppp0} end=$((SECONDS + ${1:-20}))
    while [ "$SECONDS" -lt "$end" ]; do
        ppp_is_up wait_ppp_up_within "$ifc" "${save:-$ifc}" && return 0
        sleep 0.1
    done
    say "wait_ppp_up_within: $ifc not up after ${timeout}s"
    return 1
}

# wait_listening PORT TIMEOUT: wait until a TCP socket in the guest listens on PORT.  Returns 1 on timeout.
wait_listening() {
    local port=$1 timeout=${2:-20} i
    for ((i = 0; i < timeout * 10; i++)); do
        ss -Hltn "sport = :$port" 2>/dev/null | grep -q . && return 0
        sleep 0.1
    done
    say "wait_listening: nothing listens on port $port after ${timeout}s"
    return 1
}

# record NAME COMMAND...: run COMMAND; its output goes to $RESULTS/NAME.out, its status to $RESULTS/NAME.rc.
record() {
    local name=$1 rc
    shift
    "$@" >"$RESULTS/$name.out" 2>&1
    rc=$?
    echo "$rc" >"$RESULTS/$name.rc"
    return "$rc"
}

# mark NAME: tell the host (it waits with Guest.wait_mark(NAME)).
mark() {
    say "mark $1"
    : >"$RESULTS/guest-$1.mark"
}

# wait_host_mark NAME TIMEOUT: wait for the host's Guest.mark(NAME).  Returns 1 on timeout.
wait_host_mark() {
    local name=$1 timeout=${2:-30} i
    for ((i = 0; i < timeout * 10; i++)); do
        [ -e "$RESULTS/host-$name.mark" ] && return 0
        sleep 0.1
    done
    say "wait_host_mark $name: nothing after ${timeout}s"
    return 1
}
