#!/usr/bin/env bash
# Stop the private SLURM that tests/cluster/slurm_up.sh started under DIR (only its own daemons).
set -uo pipefail

dir=${1:?usage: slurm_down.sh DIR}
# The cluster is private to DIR, so every job on it is ours; slurmstepd outlives slurmd otherwise.
if [[ -f $dir/slurm.conf ]]; then
    SLURM_CONF=$dir/slurm.conf scancel --quiet --user="$(id -un)" 2>/dev/null
    for _ in $(seq 20); do
        [[ -z $(SLURM_CONF=$dir/slurm.conf squeue -h 2>/dev/null) ]] && break
        sleep 0.5
    done
fi
# Whatever a job of this cluster left running (task processes carry its SLURM_CONF): killed by pid.
for environ in /proc/[0-9]*/environ; do
    if { tr '\0' '\n' <"$environ"; } 2>/dev/null | grep -qxF "SLURM_CONF=$dir/slurm.conf"; then
        pid=${environ#/proc/}
        pid=${pid%/environ}
        [[ $pid != "$$" ]] && kill -9 "$pid" 2>/dev/null
    fi
done
for pidfile in "$dir/run/slurmd.pid" "$dir/run/slurmctld.pid" "$dir/munge/munged.pid"; do
    [[ -s $pidfile ]] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
done
exit 0
