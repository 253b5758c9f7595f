# shellcheck shell=bash disable=SC2034
# Shared by tools/slurm/start.sh and tools/slurm/stop.sh (sourced, not run).
# Paths, names and the pid bookkeeping of the local single-node Slurm cluster.

STATE=${MIMIC_SLURM_STATE:-/var/lib/mimic-slurm}   # everything this tool owns lives here
PIDS=$STATE/pids        # <daemon>.pid: "PID STARTTIME" of each daemon start.sh started
LOGS=$STATE/log         # <daemon>.log (the daemon's own log) and <daemon>.out (its stdout/stderr)
RUN=$STATE/run          # slurm's own pid files, the MariaDB socket
ETC=/etc/slurm
CLUSTER=${MIMIC_SLURM_CLUSTER:-mimic}
DB_PORT=${MIMIC_SLURM_DB_PORT:-3307}   # private MariaDB on 127.0.0.1, not the system one on 3306
DB_SOCK=$RUN/mysqld/mysqld.sock
MYCNF=$STATE/my.cnf
# start order; stop goes the other way
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

log() { printf '[slurm %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_root() {
    [ "$(id -u)" -eq 0 ] && return 0
    if command -v sudo >/dev/null 2>&1; then exec sudo -- "$@"; fi
    die "must run as root (no sudo found)"
}

# start time (clock ticks after boot) of a process, from /proc/PID/stat; fails if it is gone or a zombie
proc_starttime() {
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }            # drop "pid (comm) "
    # shellcheck disable=SC2086
    set -- $s              # $1 = state, ..., $20 = starttime
    [ "$1" != Z ] && [ "$1" != X ] || return 1
    echo "${20}"
}

# our_pid NAME: print the pid of daemon NAME if start.sh started it and it still runs
# (same pid, same start time, same command name), else fail.
our_pid() {
    local f=$PIDS/$1.pid pid st now comm
    [ -r "$f" ] || return 1
    read -r pid st <"$f" || return 1
    [ -n "$pid" ] && [ -n "$st" ] || return 1
    now=$(proc_starttime "$pid") || return 1
    [ "$now" = "$st" ] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [ "$comm" = "$1" ] || return 1
    echo "$pid"
}

# foreign_pids NAME: live processes called NAME that start.sh did not start
foreign_pids() {
    local mine p comm out=()
    mine=$(our_pid "$1") || mine=
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        comm=$(cat "/proc/$p/comm" 2>/dev/null) || continue
        if [ "$comm" != "$1" ] || [ "$p" = "$mine" ]; then continue; fi
        proc_starttime "$p" >/dev/null || continue   # zombie
        out+=("$p")
    done
    echo "${out[*]}"
}

# stop_daemon NAME [TIMEOUT_S]: SIGTERM the recorded pid, SIGKILL after the timeout
stop_daemon() {
    local name=$1 timeout=${2:-30} pid i
    if pid=$(our_pid "$name"); then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < timeout * 10; i++)); do
            our_pid "$name" >/dev/null || break
            sleep 0.1
        done
        if our_pid "$name" >/dev/null; then
            log "$name (pid $pid) still there after ${timeout}s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
        fi
        rm -f "$PIDS/$name.pid"
        return 0
    fi
    rm -f "$PIDS/$name.pid"
    return 1
}
