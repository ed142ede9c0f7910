#!/usr/bin/env bash
# A real one-machine SLURM (Debian slurm-wlm: munged, slurmctld, slurmd) in a directory of its own,
# for the tests that submit the project's sbatch scripts, and for trying them by hand:
#
#   bash ci/slurm-local.sh start DIR [CTLD_PORT SLURMD_PORT]   # prints: export SLURM_CONF=DIR/slurm.conf
#   SLURM_CONF=DIR/slurm.conf sbatch --gpus-per-node=0 --ntasks-per-node=2 --cpus-per-task=1 ...
#   bash ci/slurm-local.sh stop DIR                               # cancels the jobs, stops the daemons
#
# One node (this machine, its CPUs), one partition "test", no cgroups (proctrack/linuxproc,
# task/none), no accounting database. Jobs run as the submitting user; the daemons run as the
# current user (root in CI). Everything it writes stays under DIR: the munge key and socket, the
# config, the controller's state, the spool, the logs (DIR/log). Ports default to 16817/16818.
# A requeued job waits `cred_expire` before it starts again: 120 s by default, 10 s here.
set -euo pipefail

die() { echo "slurm-local.sh: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: slurm-local.sh start|stop DIR [CTLD_PORT SLURMD_PORT]"
cmd=$1
D=$(mkdir -p "$2" && cd "$2" && pwd)
CTLD_PORT=${3:-16817}
SLURMD_PORT=${4:-16818}
export SLURM_CONF="$D/slurm.conf"

stop_pidfile() {
  local f=$1
  [ -f "$f" ] || return 0
  local pid
  pid=$(cat "$f" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

case "$cmd" in
start)
  for b in munged slurmctld slurmd sbatch; do
    command -v "$b" >/dev/null || die "no $b on PATH: install Debian's slurm-wlm and munge (ci/setup.sh does)"
  done
  mkdir -p "$D/munge" "$D/spool" "$D/state" "$D/log"
  chmod 700 "$D/munge"
  if [ ! -f "$D/munge/munge.key" ]; then
    head -c 1024 /dev/urandom >"$D/munge/munge.key"
    chmod 400 "$D/munge/munge.key"
  fi
  munged --force --key-file="$D/munge/munge.key" --socket="$D/munge/munge.socket" \
    --pid-file="$D/munge/munged.pid" --log-file="$D/log/munged.log" --seed-file="$D/munge/seed" \
    || die "munged did not start (see $D/log/munged.log)"
  host=$(hostname -s)
  cpus=$(nproc)
  user=$(id -un)
  cat >"$SLURM_CONF" <<EOF
# Written by ci/slurm-local.sh: a one-machine test cluster.
ClusterName=syncdifftest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$D/munge/munge.socket,cred_expire=10
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool/%n
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
JobRequeue=1
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=3600
KillWait=10
SlurmdTimeout=30
InactiveLimit=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=1000 State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  slurmctld -f "$SLURM_CONF" || die "slurmctld did not start (see $D/log/slurmctld.log)"
  slurmd -f "$SLURM_CONF" -N "$host" || die "slurmd did not start (see $D/log/slurmd.log)"
  for _ in $(seq 1 100); do
    if sinfo -h -o %T 2>/dev/null | grep -q idle; then
      echo "export SLURM_CONF=$SLURM_CONF"
      exit 0
    fi
    sleep 0.2
  done
  die "the node did not become idle in 20 s (see $D/log/slurmctld.log and slurmd.log)"
  ;;
stop)
  [ -f "$SLURM_CONF" ] || exit 0
  # Cancel the jobs and let their steps end (KillWait) before the daemons go.
  scancel --quiet --user="$(id -un)" 2>/dev/null || true
  for _ in $(seq 1 150); do
    [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
    sleep 0.2
  done
  stop_pidfile "$D/slurmd.pid"
  stop_pidfile "$D/slurmctld.pid"
  stop_pidfile "$D/munge/munged.pid"
  ;;
*) die "unknown command $cmd (start or stop)" ;;
esac
