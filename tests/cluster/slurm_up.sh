#!/usr/bin/env bash
# Start a private one-node SLURM (munged + slurmctld + slurmd) under DIR for the tests.
#
#   tests/cluster/slurm_up.sh DIR        # prints the path of DIR/env.sh (source it, then sbatch/squeue)
#   tests/cluster/slurm_down.sh DIR      # stops the daemons
#
# Installs Debian's slurm-wlm and munge first when they are missing and this is root with apt
# (CI runs as root on a fresh machine). Everything else is per DIR: munge key and socket, spool and
# state folders, logs, and free TCP ports, so that several test runs on one host never meet.
# Exit 3 with one `error:` line when SLURM is absent and cannot be installed here.
set -euo pipefail

dir=${1:?usage: slurm_up.sh DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        echo "error: slurm-wlm/munge are not installed and cannot be installed here (needs root and apt-get)" >&2
        exit 3
    fi
    # flock: two test sessions starting at once must not run apt side by side.
    if ! flock /tmp/.bioptimus-slurm-apt.lock bash -c '
        command -v slurmctld >/dev/null && command -v munged >/dev/null && exit 0
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge' \
        >"$dir/apt.log" 2>&1; then
        echo "error: apt-get install slurm-wlm munge failed; see $dir/apt.log" >&2
        exit 3
    fi
fi

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
ctld_port=$(free_port)
slurmd_port=$(free_port)
while [[ $slurmd_port == "$ctld_port" ]]; do slurmd_port=$(free_port); done
# The node is named like the host, as on a real cluster, so that `scontrol show hostnames` gives a
# name that resolves (the sbatch scripts rendezvous on it); clusters on one host differ by ports/paths.
cluster="t$(basename "$dir" | tr -c 'a-zA-Z0-9\n' 'x' | tail -c 12)$RANDOM"
node=$(hostname -s)
cpus=${SLURM_TEST_CPUS:-4}

mkdir -p "$dir"/{munge,spool/ctld,spool/d,log,run}
chmod 700 "$dir/munge"
mungekey --create --keyfile="$dir/munge/munge.key" --force >/dev/null 2>&1 ||
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$dir/munge/munge.key"
munged --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.sock" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
    --seed-file="$dir/munge/munged.seed" --force

cat >"$dir/slurm.conf" <<EOF
ClusterName=$cluster
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits cred_expire + 1 s before it may start again (default 120 s)
AuthInfo=socket=$dir/munge/munge.sock,cred_expire=20
StateSaveLocation=$dir/spool/ctld
SlurmdSpoolDir=$dir/spool/d/%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
KillWait=30
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$node NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF" -i
slurmd -f "$SLURM_CONF" -N "$node"

cat >"$dir/env.sh" <<EOF
export SLURM_CONF=$dir/slurm.conf
export SLURM_TEST_NODE=$node
EOF

for _ in $(seq 120); do
    if sinfo -h -N -o '%T' 2>/dev/null | grep -qx idle; then
        echo "$dir/env.sh"
        exit 0
    fi
    sleep 0.5
done
echo "error: SLURM node $node did not become idle within 60 s; see $dir/log/slurmctld.log and slurmd.log" >&2
exit 4
