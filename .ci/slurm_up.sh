#!/usr/bin/env bash
# Start a one-node Slurm on this machine for tests/functional/test_slurm.py: Debian's slurm-wlm and munge,
# configured and logged under $NEMO_RPO_SLURM_DIR (default /tmp/nemo-rpo-slurm), daemons run as root.
# Stop it with .ci/slurm_down.sh. Clients find it through the SLURM_CONF written to $DIR/env:
#   bash .ci/slurm_up.sh && . /tmp/nemo-rpo-slurm/env && sinfo
#
# Exit status: 0 = up; 3 = this machine cannot have one (not root, no apt-get, the package mirror
# unreachable): callers skip the Slurm test; anything else = the setup itself is broken: callers fail.
set -euo pipefail

DIR=${NEMO_RPO_SLURM_DIR:-/tmp/nemo-rpo-slurm}
HERE=$(cd "$(dirname "$0")" && pwd)
unavailable() {
  echo "slurm_up: no local Slurm: $*" >&2
  exit 3
}

[ "$(id -u)" = 0 ] || unavailable "needs root (daemons, apt-get)"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
  || ! command -v sbatch >/dev/null; then
  command -v apt-get >/dev/null || unavailable "slurm-wlm is not installed and there is no apt-get"
  echo "slurm_up: installing slurm-wlm and munge" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o Acquire::Retries=3 update -qq >&2 || unavailable "apt-get update failed"
  apt-get -o Acquire::Retries=3 install -y -qq --no-install-recommends slurm-wlm munge >&2 \
    || unavailable "apt-get install slurm-wlm munge failed"
fi

bash "$HERE/slurm_down.sh" # a previous run's daemons, if any
rm -rf "$DIR"
mkdir -p "$DIR/state" "$DIR/spool"

# munge: reuse a running munged, else start one as the munge user (Debian's package creates the key).
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- munged
  touch "$DIR/munged.ours"
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break || sleep 0.2; done
  munge -n | unmunge >/dev/null
fi

HOST=$(hostname -s)
CPUS=$(( $(nproc) < 2 ? 2 : $(nproc) )) # the test runs two 1-CPU jobs at once; slurmd accepts more than it has
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
cat >"$DIR/slurm.conf" <<EOF
# One-node test cluster written by .ci/slurm_up.sh; no cgroups, no accounting.
ClusterName=nemorpo
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=6917
SlurmdPort=6918
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
# finished jobs stay visible to 'scontrol show job' for an hour (the test reads their times)
MinJobAge=3600
KillWait=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
echo "export SLURM_CONF=$DIR/slurm.conf" >"$DIR/env"
export SLURM_CONF=$DIR/slurm.conf

broken() {
  echo "slurm_up: $*; logs:" >&2
  tail -n 20 "$DIR"/slurmctld.log "$DIR"/slurmd.log >&2 2>/dev/null || true
  bash "$HERE/slurm_down.sh"
  exit 1
}
slurmctld -f "$SLURM_CONF" -c || broken "slurmctld did not start"
slurmd -f "$SLURM_CONF" || broken "slurmd did not start"

# The node registers within seconds; 'srun true' proves munge, controller and slurmd work together.
for _ in $(seq 60); do
  state=$(sinfo -h -N -n "$HOST" -o %T 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 1
done
[ "$state" = idle ] || broken "node $HOST is '${state:-unknown}', not idle, after 60 s"
timeout 120 srun -N1 -n1 -t 1 true || broken "a trivial 'srun true' failed"
echo "slurm_up: one-node Slurm up ($HOST, $CPUS CPUs, ${MEM_MB} MB); SLURM_CONF=$SLURM_CONF" >&2
