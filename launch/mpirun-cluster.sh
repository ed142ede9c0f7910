#!/usr/bin/env bash
# SyncDiff with Open MPI's mpirun and a hostfile, without SLURM: preflight, then one rank per GPU.
# See docs/cluster.md.
#
#   launch/mpirun-cluster.sh                                  # 1 node x 6 GPUs: this machine
#   launch/mpirun-cluster.sh --hostfile hosts                 # 2 nodes x 6 GPUs, hosts holding:
#                                                             #   node-a slots=6
#                                                             #   node-b slots=6
#   launch/mpirun-cluster.sh --hostfile hosts -- --set log.interval=100
#
# What it runs for 2 nodes (printed before it starts):
#   mpirun -n 12 --hostfile hosts --map-by ppr:6:node --bind-to none \
#     -x PATH -x LD_LIBRARY_PATH -x OMP_NUM_THREADS -x NCCL_DEBUG -x AWS_ACCESS_KEY_ID ... \
#     <repo>/target/release/syncdiff-train --config configs/syncdiff-lrs2.yaml --resume auto
# --map-by ppr:6:node puts 6 ranks on each node (rank r uses GPU <node-local rank>); --bind-to none
# leaves each rank all cores (it takes cores/6 threads itself). Open MPI does not pass the
# environment to other nodes: -x names the variables to export (PATH, LD_LIBRARY_PATH,
# OMP_NUM_THREADS, NCCL_*, and the object-store credentials AWS_*, GOOGLE_*, AZURE_*); only names
# appear on the command line, never values.
#
# Options:
#   --hostfile FILE       Open MPI hostfile ("host slots=6" per line); without it: this machine only
#   --gpus-per-node N     ranks per node (default 6)
#   --config FILE         default configs/syncdiff-lrs2.yaml
#   --no-preflight        skip launch/preflight.sh
#   -- ARGS...            syncdiff-train arguments (--set KEY=VALUE ..., --resume never|auto|URL)
# Environment: SYNCDIFF_BIN (directory of syncdiff-train; default target/release, then
# target/debug), MPIRUN_ARGS (extra mpirun arguments, split on spaces, e.g. the MPI network:
# "--mca btl_tcp_if_include IFACE --mca oob_tcp_if_include IFACE"), NCCL_*, credentials.
# Needs: passwordless ssh between the nodes, and the repository, its virtualenv, the data set and
# the config at the same path on every node.
#
# Stop with a checkpoint: kill -USR1 <pid of mpirun> (this script becomes mpirun: its pid), or
# kill -USR1 any rank. Every rank stops after the same step, writes a checkpoint and exits 0; run
# the same command again to continue (--resume auto).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOSTFILE="" GPUS=6 CONFIG="configs/syncdiff-lrs2.yaml" PREFLIGHT=1
TRAIN_ARGS=()
die() { echo "mpirun-cluster: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --hostfile) [ $# -ge 2 ] || die "--hostfile needs a file"; HOSTFILE="$2"; shift 2 ;;
    --gpus-per-node) [ $# -ge 2 ] || die "--gpus-per-node needs a number"; GPUS="$2"; shift 2 ;;
    --config) [ $# -ge 2 ] || die "--config needs a file"; CONFIG="$2"; shift 2 ;;
    --no-preflight) PREFLIGHT=0; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) die "unknown argument '$1' (syncdiff-train arguments go after --)" ;;
  esac
done
[[ "$GPUS" =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node '$GPUS' is not a positive number"
[ -f "$CONFIG" ] || die "no configuration file '$CONFIG'"
command -v mpirun >/dev/null 2>&1 || die "mpirun is not on PATH (source ci/env.sh)"

if [ -n "$HOSTFILE" ]; then
  [ -f "$HOSTFILE" ] || die "no hostfile '$HOSTFILE'"
  NODES="$(awk '{sub(/#.*/, "")} NF {print $1}' "$HOSTFILE" | sort -u | grep -c .)"
  [ "$NODES" -gt 0 ] || die "hostfile '$HOSTFILE' lists no hosts"
else
  NODES=1
fi
NP=$((NODES * GPUS))

# The binary, by absolute path (remote nodes start it from the same path).
if [ -n "${SYNCDIFF_BIN:-}" ]; then
  BIN="$(cd "$SYNCDIFF_BIN" 2>/dev/null && pwd)/syncdiff-train"
elif [ -x "$ROOT/target/release/syncdiff-train" ]; then
  BIN="$ROOT/target/release/syncdiff-train"
  if [ "$ROOT/target/debug/syncdiff-train" -nt "$BIN" ]; then
    echo "note: target/debug/syncdiff-train is newer than target/release (a stale release build?); SYNCDIFF_BIN=target/debug uses it" >&2
  fi
else
  BIN="$ROOT/target/debug/syncdiff-train"
fi
[ -x "$BIN" ] || die "no syncdiff-train at $BIN: build it (source ci/env.sh && cargo build --release --workspace --bins) or set SYNCDIFF_BIN"
SYNCDIFF_BIN="$(dirname "$BIN")"
export SYNCDIFF_BIN

export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
# Example: export NCCL_SOCKET_IFNAME=^lo,docker    (see docs/cluster.md)
# Example: export NCCL_IB_HCA=mlx5
cores="$(nproc 2>/dev/null || echo "$GPUS")"
threads=$((cores / GPUS))
[ "$threads" -ge 1 ] || threads=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$threads}"

# Variables every rank needs, exported by name (the list: launch/exported-env.sh).
# shellcheck source=launch/exported-env.sh
source "$ROOT/launch/exported-env.sh"
exported_env_args

read -r -a SITE_ARGS <<<"${MPIRUN_ARGS:-}"
MPI=(mpirun -n "$NP")
[ -z "$HOSTFILE" ] || MPI+=(--hostfile "$HOSTFILE")
MPI+=(--map-by "ppr:$GPUS:node" --bind-to none "${ENV_ARGS[@]}" "${SITE_ARGS[@]}")

# --resume auto unless the caller chose one.
RESUME=(--resume auto)
SETS=()
for ((i = 0; i < ${#TRAIN_ARGS[@]}; i++)); do
  case "${TRAIN_ARGS[$i]}" in
    --resume|--resume=*) RESUME=() ;;
    --set) SETS+=(--set "${TRAIN_ARGS[$((i + 1))]:-}") ;;
    --set=*) SETS+=("${TRAIN_ARGS[$i]}") ;;
  esac
done

echo "[mpirun-cluster] $NODES node(s) x $GPUS GPUs = $NP ranks; config $CONFIG; binary $BIN"
if [ "$PREFLIGHT" = 1 ]; then
  pre=("$ROOT/launch/preflight.sh" --config "$CONFIG" --np "$NP" --map-by "ppr:$GPUS:node" "${SETS[@]}")
  [ -z "$HOSTFILE" ] || pre+=(--hostfile "$HOSTFILE")
  [ "${#SITE_ARGS[@]}" -eq 0 ] || pre+=(-- "${SITE_ARGS[@]}")
  if ! "${pre[@]}"; then
    echo "[mpirun-cluster] preflight failed: not starting (fix the FAIL lines, or --no-preflight)" >&2
    exit 1
  fi
fi

CMD=("${MPI[@]}" "$BIN" --config "$CONFIG" "${RESUME[@]}" "${TRAIN_ARGS[@]}")
echo "[mpirun-cluster] ${CMD[*]}"
echo "[mpirun-cluster] stop with a checkpoint: kill -USR1 $$"
# exec: this process becomes mpirun, which forwards SIGUSR1 to every rank.
exec "${CMD[@]}"
