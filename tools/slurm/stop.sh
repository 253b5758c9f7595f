#!/usr/bin/env bash
# Stop the daemons that tools/slurm/start.sh started, by the pids it recorded, and nothing else.
#   tools/slurm/stop.sh              stop all of them (slurmd, slurmctld, slurmdbd, mariadbd, munged)
#   tools/slurm/stop.sh slurmdbd     stop only slurmdbd (a cluster without accounting: sacct fails,
#                                    squeue/sbatch still work); start.sh brings it back
# Names: munged (munge), mariadbd (mariadb, mysql), slurmdbd, slurmctld, slurmd, all.
# Jobs still running keep their slurmstepd processes; scancel them first if that matters.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tools/slurm/lib.sh
. "$HERE/lib.sh"

want=()
for a in "$@"; do
    case $a in
        -h | --help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        all) want=("${DAEMONS[@]}") ;;
        munge | munged) want+=(munged) ;;
        mariadb | mariadbd | mysql | mysqld) want+=(mariadbd) ;;
        slurmdbd | slurmctld | slurmd) want+=("$a") ;;
        *) die "unknown daemon '$a' (one of: ${DAEMONS[*]}, all)" ;;
    esac
done
[ ${#want[@]} -gt 0 ] || want=("${DAEMONS[@]}")
need_root "$HERE/stop.sh" "$@"

stopped=() idle=()
for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do   # reverse start order
    d=${DAEMONS[i]}
    [[ " ${want[*]} " == *" $d "* ]] || continue
    if stop_daemon "$d" 30; then stopped+=("$d"); else idle+=("$d"); fi
done
log "stopped: ${stopped[*]:-none}${idle:+; not running (or not started by start.sh): ${idle[*]}}"
