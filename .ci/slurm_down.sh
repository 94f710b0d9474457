#!/usr/bin/env bash
# Stop the one-node Slurm that .ci/slurm_up.sh started: cancel its jobs, then stop the daemons it started
# (by the pid files under $NEMO_RPO_SLURM_DIR), munged only if slurm_up.sh started it. Safe to run twice.
set -uo pipefail

DIR=${NEMO_RPO_SLURM_DIR:-/tmp/nemo-rpo-slurm}
[ -f "$DIR/slurm.conf" ] || exit 0
export SLURM_CONF=$DIR/slurm.conf

stop() { # stop <pidfile> <program>: TERM, then KILL after 10 s, only if the pid is still that program
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 0
  [ -n "$pid" ] && grep -q "$2" "/proc/$pid/comm" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null
}

if [ -f "$DIR/slurmctld.pid" ] && timeout 10 squeue -h -o %i >/dev/null 2>&1; then
  jobs=$(timeout 10 squeue -h -o %i)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086
    timeout 10 scancel $jobs
    for _ in $(seq 30); do [ -z "$(timeout 10 squeue -h -o %i)" ] && break; sleep 1; done
  fi
fi
stop "$DIR/slurmd.pid" slurmd
stop "$DIR/slurmctld.pid" slurmctld
if [ -f "$DIR/munged.ours" ]; then
  stop /run/munge/munged.pid munged
  rm -f "$DIR/munged.ours"
fi
rm -f "$DIR/slurmd.pid" "$DIR/slurmctld.pid"
