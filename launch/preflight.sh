#!/usr/bin/env bash
# Checks an allocation before a long SyncDiff run. Run it where the job will run: inside the SLURM
# allocation, or on the launch node with the hostfile the job will use.
#
#   launch/preflight.sh --config configs/syncdiff-lrs2.yaml                        # this node / allocation
#   launch/preflight.sh --config configs/syncdiff-lrs2.yaml --np 12 --hostfile hosts --map-by ppr:6:node
#   launch/preflight.sh --launcher srun --config configs/syncdiff-lrs2.yaml -- --mpi=pmix   # in sbatch
#
# Each check prints "[preflight] OK ..." or "[preflight] FAIL ..." and the next one runs anyway:
#   config  the configuration resolves (syncdiff-train --print-config), dist.backend
#   a       the launcher reaches every node: `hostname` on every rank, ranks per host
#   b       one process per node: GPUs (nvidia-smi -L) and the NCCL library (ldconfig, torch wheel)
#   c       syncdiff-train --preflight on every rank: MPI, device, gradient backend (one all-reduce),
#           one data sample; rank 0 writes and deletes a probe file under checkpoint.url. Each rank
#           prints "[rank r/N] host H device D <backend> all-reduce ok dataset ok (C clips, S
#           steps/epoch) ..." and a failed check "error: [rank r/N] preflight <check>: <reason>".
# Exit status: 0 when every check passed, 1 when any failed, 2 for a usage error.
#
# Options:
#   --config FILE       training configuration (required)
#   --set KEY=VALUE     configuration override passed to syncdiff-train (repeatable)
#   --np N              ranks for checks a and c (default: the launcher's, i.e. every slot / task)
#   --hostfile FILE     mpirun hostfile
#   --map-by SPEC       mpirun mapping for checks a and c, e.g. ppr:6:node (only if the default is wrong)
#   --launcher L        mpirun (default; written for Open MPI) or srun (inside a SLURM allocation)
#   -- ARGS...          extra launcher arguments for every launch (not -n or --map-by: use the options)
# Environment:
#   SYNCDIFF_BIN        directory holding syncdiff-train (default target/release, then target/debug)
#   SYNCDIFF_VENV       the virtualenv whose torch wheel may carry NCCL (default ~/.cache/syncdiff/venv)
#   PREFLIGHT_TIMEOUT_S time limit of check c in seconds (default 600); checks a and b get 120 s
set -uo pipefail

SELF_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$SELF_DIR/$(basename "${BASH_SOURCE[0]}")"
ROOT="$(cd "$SELF_DIR/.." && pwd)"

usage() {
  sed -n '2,/^set -uo/p' "$SELF" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# ---- per-node probe (run by check b on every node; prints one tab-separated line) ---------------
# NODE <host> <nvidia-smi GPU count> <CUDA_VISIBLE_DEVICES or -> <GPU names or -> <NCCL path or -> <note or ->
node_probe() {
  local py="$1" host gpus=0 names="-" cvd="-" nccl="-" note="-" list ld d
  host="$(hostname)"
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then cvd="${CUDA_VISIBLE_DEVICES:-none}"; fi
  if command -v nvidia-smi >/dev/null 2>&1 && list="$(nvidia-smi -L 2>/dev/null)"; then
    gpus="$(printf '%s\n' "$list" | grep -c '^GPU ')"
    names="$(printf '%s\n' "$list" | sed -n 's/^GPU [0-9]*: \(.*\) (UUID.*/\1/p' | sort | uniq -c |
      awk '{c = $1; $1 = ""; printf "%s%dx%s", sep, c, $0; sep = ","}')"
    [ -n "$names" ] || names="-"
  fi
  for ld in ldconfig /sbin/ldconfig /usr/sbin/ldconfig; do
    if command -v "$ld" >/dev/null 2>&1; then
      nccl="$("$ld" -p 2>/dev/null | awk '/libnccl\.so/ {print $NF; exit}')"
      break
    fi
  done
  if [ -z "$nccl" ] || [ "$nccl" = "-" ]; then
    nccl="-"
    [ -x "$py" ] || py="$(command -v python3 || true)"
    if [ -n "$py" ]; then
      # The CUDA torch wheel ships NCCL as nvidia/nccl/lib/libnccl.so.2 (ci/setup.sh adds libnccl.so).
      d="$("$py" - <<'PY' 2>/dev/null
import importlib.util, os
spec = importlib.util.find_spec("nvidia")
for base in (list(spec.submodule_search_locations) if spec else []):
    d = os.path.join(base, "nccl", "lib")
    if os.path.exists(os.path.join(d, "libnccl.so.2")):
        print(d)
        break
PY
)"
      if [ -n "$d" ]; then
        nccl="$d/libnccl.so.2"
        [ -e "$d/libnccl.so" ] || note="no libnccl.so link next to libnccl.so.2 (bash ci/setup.sh adds it)"
      fi
    fi
  fi
  printf 'NODE\t%s\t%s\t%s\t%s\t%s\t%s\n' "$host" "$gpus" "$cvd" "$names" "$nccl" "$note"
}

if [ "${1:-}" = "--node-probe" ]; then
  node_probe "${2:-}"
  exit 0
fi

# ---- arguments ------------------------------------------------------------------------------------
CONFIG="" NP="" HOSTFILE="" MAP_BY="" LAUNCHER="mpirun"
SETS=() EXTRA=()
die_usage() { echo "preflight: $*" >&2; echo "usage: launch/preflight.sh --config CONFIG [--np N] [--hostfile FILE] [--map-by SPEC] [--launcher mpirun|srun] [--set K=V]... [-- launcher args]  (--help)" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --config) [ $# -ge 2 ] || die_usage "--config needs a file"; CONFIG="$2"; shift 2 ;;
    --config=*) CONFIG="${1#*=}"; shift ;;
    --set) [ $# -ge 2 ] || die_usage "--set needs KEY=VALUE"; SETS+=(--set "$2"); shift 2 ;;
    --set=*) SETS+=(--set "${1#*=}"); shift ;;
    --np|-n) [ $# -ge 2 ] || die_usage "--np needs a number"; NP="$2"; shift 2 ;;
    --np=*) NP="${1#*=}"; shift ;;
    --hostfile) [ $# -ge 2 ] || die_usage "--hostfile needs a file"; HOSTFILE="$2"; shift 2 ;;
    --hostfile=*) HOSTFILE="${1#*=}"; shift ;;
    --map-by) [ $# -ge 2 ] || die_usage "--map-by needs a spec"; MAP_BY="$2"; shift 2 ;;
    --map-by=*) MAP_BY="${1#*=}"; shift ;;
    --launcher) [ $# -ge 2 ] || die_usage "--launcher needs mpirun or srun"; LAUNCHER="$2"; shift 2 ;;
    --launcher=*) LAUNCHER="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
done
[ -n "$CONFIG" ] || die_usage "--config is required"
[ -f "$CONFIG" ] || die_usage "no configuration file '$CONFIG'"
[ -z "$NP" ] || [[ "$NP" =~ ^[1-9][0-9]*$ ]] || die_usage "--np '$NP' is not a positive number"
[ -z "$HOSTFILE" ] || [ -f "$HOSTFILE" ] || die_usage "no hostfile '$HOSTFILE'"
case "$LAUNCHER" in
  mpirun) ;;
  srun) [ -n "${SLURM_JOB_ID:-}" ] || die_usage "--launcher srun runs inside a SLURM allocation (no SLURM_JOB_ID)"
        [ -z "$HOSTFILE$MAP_BY" ] || die_usage "--hostfile and --map-by are mpirun options" ;;
  *) die_usage "--launcher '$LAUNCHER': mpirun or srun" ;;
esac
command -v "$LAUNCHER" >/dev/null 2>&1 || { echo "[preflight] FAIL $LAUNCHER is not on PATH (source ci/env.sh, or load the site's MPI module)"; exit 1; }

# ---- helpers --------------------------------------------------------------------------------------
FAILED=0
ok() { echo "[preflight] OK $*"; }
fail() { echo "[preflight] FAIL $*"; FAILED=1; }
info() { echo "[preflight]    $*"; }

TMP="$(mktemp -d "${TMPDIR:-/tmp}/syncdiff-preflight.XXXXXX")" || { echo "[preflight] FAIL cannot create a temporary directory"; exit 1; }
trap 'rm -rf "$TMP"' EXIT

# Runs a command with a time limit (signals reach it from an interactive shell: --foreground).
limited() {
  local seconds="$1"; shift
  if command -v timeout >/dev/null 2>&1; then
    timeout --foreground --kill-after=15 "$seconds" "$@"
  else
    "$@"
  fi
}

# Open MPI's mpirun does not pass the environment to other nodes: name the variables to export
# (names only; values never appear on the command line).
OMPI=0
if [ "$LAUNCHER" = mpirun ] && mpirun --version 2>&1 | grep -qi 'open mpi'; then OMPI=1; fi
ENV_ARGS=()
if [ "$OMPI" = 1 ]; then
  # shellcheck source=launch/exported-env.sh
  source "$SELF_DIR/exported-env.sh"
  exported_env_args
fi

# The launch prefix for N ranks (checks a and c).
ranks_launch() {
  local -a cmd=("$LAUNCHER")
  [ -z "$NP" ] || cmd+=(-n "$NP")
  if [ "$LAUNCHER" = mpirun ]; then
    [ -z "$HOSTFILE" ] || cmd+=(--hostfile "$HOSTFILE")
    [ -z "$MAP_BY" ] || cmd+=(--map-by "$MAP_BY")
    cmd+=("${ENV_ARGS[@]}")
  fi
  cmd+=("${EXTRA[@]}")
  printf '%s\0' "${cmd[@]}"
}

# The launch prefix for one process per node (check b).
node_launch() {
  local -a cmd=("$LAUNCHER")
  if [ "$LAUNCHER" = mpirun ]; then
    [ -z "$HOSTFILE" ] || cmd+=(--hostfile "$HOSTFILE")
    cmd+=(--map-by ppr:1:node "${ENV_ARGS[@]}")
  else
    local nn="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
    cmd+=(--nodes="$nn" --ntasks="$nn" --ntasks-per-node=1)
  fi
  cmd+=("${EXTRA[@]}")
  printf '%s\0' "${cmd[@]}"
}

# How many nodes the job should span: the hostfile's hosts, the SLURM allocation, or this node.
expected_nodes() {
  if [ -n "$HOSTFILE" ]; then
    awk '{sub(/#.*/, "")} NF {print $1}' "$HOSTFILE" | sort -u | grep -c .
  elif [ -n "${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-}}" ]; then
    echo "${SLURM_JOB_NUM_NODES:-$SLURM_NNODES}"
  else
    echo 1
  fi
}

tail_of() { tail -n "${2:-5}" "$1" | sed 's/^/[preflight]      | /'; }

# ---- the binary -----------------------------------------------------------------------------------
BIN=""
find_bin() {
  local c
  if [ -n "${SYNCDIFF_BIN:-}" ]; then
    c="$SYNCDIFF_BIN/syncdiff-train"
    if [ -x "$c" ]; then BIN="$(cd "$(dirname "$c")" && pwd)/syncdiff-train"; return 0; fi
    fail "no executable syncdiff-train in SYNCDIFF_BIN=$SYNCDIFF_BIN"
    return 1
  fi
  for c in "$ROOT/target/release/syncdiff-train" "$ROOT/target/debug/syncdiff-train"; do
    if [ -x "$c" ]; then
      BIN="$c"
      if [ "$c" = "$ROOT/target/release/syncdiff-train" ] && [ "$ROOT/target/debug/syncdiff-train" -nt "$c" ]; then
        info "note: target/debug/syncdiff-train is newer than target/release; SYNCDIFF_BIN=target/debug uses it"
      fi
      return 0
    fi
  done
  fail "no syncdiff-train in $ROOT/target/release or target/debug: build it (source ci/env.sh && cargo build --release --workspace --bins) or set SYNCDIFF_BIN to its directory"
  return 1
}

# ---- config: resolve it, read dist.backend --------------------------------------------------------
BACKEND="auto"
check_config() {
  local out="$TMP/config.yaml" err="$TMP/config.err" url dataset
  if [ -n "$BIN" ]; then
    if ! "$BIN" --config "$CONFIG" "${SETS[@]}" --print-config >"$out" 2>"$err"; then
      fail "config $CONFIG does not resolve:"; tail_of "$err"
      return
    fi
  else
    cp "$CONFIG" "$out"   # no binary: read the file as written (overrides not applied)
  fi
  section_key() { awk -v s="$1:" -v k="$2:" '$0 == s {in_s = 1; next} /^[^ #]/ {in_s = 0} in_s && $1 == k {print $2; exit}' "$out"; }
  BACKEND="$(section_key dist backend)"; BACKEND="${BACKEND:-auto}"
  url="$(section_key checkpoint url)"; dataset="$(section_key data dataset)"
  case "$BACKEND" in
    auto|nccl|mpi) ok "config $CONFIG: dist.backend $BACKEND, data.dataset ${dataset:-?}, checkpoint.url ${url:-?}" ;;
    *) fail "config $CONFIG: dist.backend '$BACKEND' (auto, nccl or mpi)" ;;
  esac
}

# ---- a: the launcher reaches every node -----------------------------------------------------------
declare -A RANKS_ON=()
NRANKS=""
check_reach() {
  local -a cmd; local out="$TMP/reach.out" err="$TMP/reach.err" rc n c h hosts want summary
  mapfile -d '' -t cmd < <(ranks_launch)
  info "a: ${cmd[*]} hostname"
  limited 120 "${cmd[@]}" hostname >"$out" 2>"$err"; rc=$?
  if [ "$rc" -ne 0 ]; then
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      fail "a: $LAUNCHER hostname did not finish in 120 s (a node unreachable, ssh asking for a password?)"
    else
      fail "a: $LAUNCHER hostname exited $rc:"
    fi
    tail_of "$err"
    return
  fi
  n="$(grep -c . "$out")"
  while read -r c h; do RANKS_ON["$h"]="$c"; done < <(grep . "$out" | sort | uniq -c)
  hosts="${#RANKS_ON[@]}"
  summary="$(grep . "$out" | sort | uniq -c | awk '{printf "%s%s x%d", sep, $2, $1; sep = ", "}')"
  want="$(expected_nodes)"
  NRANKS="$n"
  if [ -n "$NP" ] && [ "$n" -ne "$NP" ]; then
    fail "a: $n of $NP ranks answered: $summary"
  elif [ "$hosts" -lt "$want" ]; then
    fail "a: ranks reached $hosts of $want nodes ($summary); is the MPI built for this launcher / the hostfile right?"
  else
    ok "a: $LAUNCHER reaches $hosts node(s), $n rank(s): $summary"
  fi
}

# ---- b: GPUs and NCCL on each node -----------------------------------------------------------------
check_gpus() {
  local -a cmd; local out="$TMP/nodes.out" err="$TMP/nodes.err" rc py
  local tag host gpus cvd names nccl note visible r gpu_nodes=0 cpu_nodes=0 msg
  py="${SYNCDIFF_VENV:-$HOME/.cache/syncdiff/venv}/bin/python"
  mapfile -d '' -t cmd < <(node_launch)
  info "b: ${cmd[*]} bash $SELF --node-probe"
  limited 120 "${cmd[@]}" bash "$SELF" --node-probe "$py" >"$out" 2>"$err"; rc=$?
  if [ "$rc" -ne 0 ] || ! grep -q '^NODE' "$out"; then
    fail "b: the per-node probe failed (exit $rc); is this repository on a file system every node sees?"
    tail_of "$err"
    return
  fi
  while IFS=$'\t' read -r tag host gpus cvd names nccl note; do
    [ "$tag" = NODE ] || continue
    visible="$gpus"
    if [ "$cvd" != "-" ]; then
      case "$cvd" in none|NoDevFiles|-1) visible=0 ;; *) visible="$(tr ',' '\n' <<<"$cvd" | grep -c .)" ;; esac
      [ "$visible" -le "$gpus" ] || visible="$gpus"
    fi
    r="${RANKS_ON[$host]:-}"
    if [ "$visible" -gt 0 ]; then
      gpu_nodes=$((gpu_nodes + 1))
      msg="b: $host: $visible GPU(s) visible"
      [ "$visible" -eq "$gpus" ] || msg+=" of $gpus"
      msg+=" (${names//,/, })"
      [ "$cvd" = "-" ] || msg+=", CUDA_VISIBLE_DEVICES=$cvd"
      [ -z "$r" ] || msg+=", $r rank(s)"
      if [ -n "$r" ] && [ "$r" -gt "$visible" ]; then
        fail "$msg: more ranks than GPUs (one rank per GPU; every rank must see all of its node's GPUs)"
      elif [ "$BACKEND" != mpi ] && [ "$nccl" = "-" ]; then
        fail "$msg; no NCCL library (not in ldconfig -p, not in the torch wheel's nvidia/nccl/lib)"
      elif [ "$BACKEND" = mpi ]; then
        ok "$msg; dist.backend mpi: gradients over MPI, NCCL not used"
      else
        ok "$msg; NCCL $nccl"
        [ "$note" = "-" ] || info "   note: $note"
      fi
    else
      cpu_nodes=$((cpu_nodes + 1))
      if [ "$BACKEND" = nccl ]; then
        fail "b: $host: no GPUs, but dist.backend is nccl (use auto or mpi on CPU nodes)"
      else
        ok "b: $host: no GPUs; ranks there use the CPU and the MPI backend (dist.backend $BACKEND)"
      fi
    fi
  done <"$out"
  if [ "$gpu_nodes" -gt 0 ] && [ "$cpu_nodes" -gt 0 ] && [ "$BACKEND" != mpi ]; then
    fail "b: $gpu_nodes node(s) with GPUs and $cpu_nodes without: with dist.backend $BACKEND the ranks would pick different gradient backends"
  fi
}

# ---- c: the framework's own per-rank check ---------------------------------------------------------
check_framework() {
  local -a cmd; local out="$TMP/framework.out" rc limit="${PREFLIGHT_TIMEOUT_S:-600}" lines n world
  if [ -z "$BIN" ]; then
    fail "c: skipped: no syncdiff-train binary (see above)"
    return
  fi
  mapfile -d '' -t cmd < <(ranks_launch)
  info "c: ${cmd[*]} $BIN --config $CONFIG${SETS[*]:+ ${SETS[*]}} --preflight"
  limited "$limit" "${cmd[@]}" "$BIN" --config "$CONFIG" "${SETS[@]}" --preflight 2>&1 | tee "$out"
  rc="${PIPESTATUS[0]}"
  # One line per rank: "[rank r/N] host H device D backend B dataset ok (C clips) ..."
  lines="$(grep -E '^\[rank [0-9]+/[0-9]+\] host .* dataset ok' "$out" |
    sed -E 's/^\[rank ([0-9]+)\//\1\t&/' | sort -n -k1,1 | cut -f2-)"
  n="$(grep -c . <<<"$lines")"
  world="$(sed -nE '1s/^\[rank [0-9]+\/([0-9]+)\].*/\1/p' <<<"$lines")"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    fail "c: syncdiff-train --preflight did not finish in $limit s ($n rank(s) reported ok); PREFLIGHT_TIMEOUT_S raises the limit"
  elif [ "$rc" -ne 0 ]; then
    fail "c: syncdiff-train --preflight exited $rc ($n rank(s) reported ok); the failing rank and check:"
    grep -E '^error|MPI_ABORT' "$out" | head -n 12 | sed 's/^/[preflight]      | /'
  elif [ -n "$NRANKS" ] && [ "$n" -ne "$NRANKS" ]; then
    fail "c: exit 0 but $n of $NRANKS ranks printed their '[rank r/N] host ... dataset ok' line"
  elif [ "$n" -eq 0 ] || { [ -n "$world" ] && [ "$n" -ne "$world" ]; }; then
    fail "c: exit 0 but $n rank line(s) for a world of ${world:-?}"
  else
    ok "c: syncdiff-train --preflight passed on all $n ranks:"
    sed 's/^/[preflight]      /' <<<"$lines"
  fi
}

# ---- run ------------------------------------------------------------------------------------------
echo "[preflight] $(date '+%F %T') config $CONFIG, launcher $LAUNCHER${NP:+, -n $NP}${HOSTFILE:+, hostfile $HOSTFILE}${SLURM_JOB_ID:+, SLURM job $SLURM_JOB_ID}"
find_bin && info "binary $BIN"
check_config
check_reach
check_gpus
check_framework
if [ "$FAILED" -ne 0 ]; then
  echo "[preflight] FAILED: fix the FAIL lines above before starting the job"
  exit 1
fi
echo "[preflight] all checks passed"
