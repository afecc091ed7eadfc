#!/usr/bin/env bash
# Stop what scripts/slurm-up.sh started: cancel every job, wait for an empty queue,
# then stop slurmd, slurmctld and (if slurm-up.sh started it) munged, by their pid
# files in M3RCR_SLURM_DIR. Does nothing when nothing of ours runs; safe in a trap.
set -uo pipefail

DIR="${M3RCR_SLURM_DIR:-/tmp/m3rcr-slurm}"
export SLURM_CONF="$DIR/slurm.conf"

say() { echo "slurm-down: $*" >&2; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

cancel_jobs() {
    alive "$DIR/slurmctld.pid" || return 0
    local jobs
    jobs="$(squeue -h -o %A 2>/dev/null || true)"
    [ -n "$jobs" ] || return 0
    say "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
    # shellcheck disable=SC2086 - one job id a word
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 150); do
        [ -z "$(squeue -h -o %A 2>/dev/null)" ] && return 0
        sleep 0.2
    done
    say "queue not empty after 30 s"
}

stop() {  # stop the processes of these pid files together: TERM, then KILL after 10 s
    local name pid
    local -A pids=()
    for name in "$@"; do
        # only a live process of that name: a stale pid file may name someone else's
        [ -s "$DIR/$name.pid" ] && pid="$(cat "$DIR/$name.pid")" \
            && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] \
            && kill -TERM "$pid" 2>/dev/null && pids[$name]=$pid
        rm -f "$DIR/$name.pid"
    done
    for name in "${!pids[@]}"; do
        pid="${pids[$name]}"
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name ($pid) ignored TERM: KILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        say "$name ($pid) stopped"
    done
}

[ -d "$DIR" ] || exit 0
cancel_jobs
stop slurmd slurmctld
stop munged  # last: the Slurm daemons talk to it while they stop
exit 0
