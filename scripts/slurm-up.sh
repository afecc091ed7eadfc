#!/usr/bin/env bash
# Start a private single-node Slurm (munged, slurmctld, slurmd) on this machine, without
# systemd. Needs root and Debian's `slurmctld slurmd slurm-client munge`.
#
#   eval "$(scripts/slurm-up.sh)"     # prints: export SLURM_CONF=...
#   ...                               # sbatch, dask-jobqueue, the tests
#   scripts/slurm-down.sh             # cancels the jobs, stops what this script started
#
# Settings (environment): M3RCR_SLURM_DIR (state, logs, config; default
# /tmp/m3rcr-slurm), M3RCR_SLURM_GPUS (fake GPUs on the node, default 2),
# M3RCR_SLURM_PORT (slurmctld port, default 16817; slurmd takes the next one).
# Already running (a pid file of ours with a live process): prints the line and exits 0.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
DIR="${M3RCR_SLURM_DIR:-/tmp/m3rcr-slurm}"
GPUS="${M3RCR_SLURM_GPUS:-2}"
PORT="${M3RCR_SLURM_PORT:-16817}"
CONF="$DIR/slurm.conf"
NODE="$(hostname -s)"
export SLURM_CONF="$CONF"

say() { echo "slurm-up: $*" >&2; }
die() { say "$*"; exit 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

[ "$(id -u)" -eq 0 ] || die "needs root (slurmd starts jobs as their users)"
for tool in munged slurmctld slurmd sinfo scontrol; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] \
        || die "$tool not found: apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge"
done

if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid"; then
    say "already running ($CONF)"
    echo "export SLURM_CONF=$CONF"
    exit 0
fi

# ---------------------------------------------------------------- munge
start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        say "munged already running: using it"
        return
    fi
    [ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do
        [ -s /run/munge/munged.pid ] && break
        sleep 0.1
    done
    cp /run/munge/munged.pid "$DIR/munged.pid"  # ours to stop in slurm-down.sh
    say "munged started (pid $(cat "$DIR/munged.pid"))"
}

# ---------------------------------------------------------------- config
gpu_files() {  # /dev/null for one fake GPU; distinct files for more
    local files=(/dev/null /dev/zero /dev/full /dev/random /dev/urandom)
    [ "$GPUS" -le "${#files[@]}" ] || die "at most ${#files[@]} fake GPUs"
    local IFS=,
    echo "${files[*]:0:$GPUS}"
}

write_config() {
    # the node as slurmd sees it (nproc would follow OMP_NUM_THREADS, which Dask sets
    # to 1 in its parent process); memory a little under what it reports
    local hardware cpus memory
    hardware="$(/usr/sbin/slurmd -C | head -n 1)"
    cpus="$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hardware")"
    memory="$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$hardware")"
    memory=$((memory * 9 / 10))
    mkdir -p "$DIR/state" "$DIR/spool"
    sed -e "s|@NODE@|$NODE|g" -e "s|@DIR@|$DIR|g" -e "s|@CPUS@|$cpus|g" \
        -e "s|@MEMORY@|$memory|g" -e "s|@GPUS@|$GPUS|g" \
        -e "s|@CTLD_PORT@|$PORT|g" -e "s|@SLURMD_PORT@|$((PORT + 1))|g" \
        "$HERE/slurm/slurm.conf.in" >"$CONF"
    sed -e "s|@NODE@|$NODE|g" -e "s|@GPUS@|$GPUS|g" -e "s|@GPU_FILES@|$(gpu_files)|g" \
        "$HERE/slurm/gres.conf.in" >"$DIR/gres.conf"
}

# ---------------------------------------------------------------- daemons
wait_idle() {
    local state=""
    for _ in $(seq 300); do
        state="$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)"
        case "$state" in
            idle*|mixed*|allocated*) say "node $NODE $state"; return 0 ;;
        esac
        sleep 0.1
    done
    say "node $NODE not ready (state: ${state:-none}); last log lines:"
    tail -n 20 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
    return 1
}

mkdir -p "$DIR"
write_config
start_munge
/usr/sbin/slurmctld -f "$CONF"   # daemonises; pid in $DIR/slurmctld.pid
/usr/sbin/slurmd -f "$CONF"
wait_idle || { bash "$HERE/slurm-down.sh" >&2 || true; die "Slurm did not start"; }
echo "export SLURM_CONF=$CONF"
