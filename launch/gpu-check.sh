#!/usr/bin/env bash
# Checks the first GPU node of a new cluster before a long SyncDiff job: a few minutes, no
# downloads. Run it on the GPU node from the repository, after `bash ci/setup.sh`:
#
#   launch/gpu-check.sh
#   launch/gpu-check.sh --reps 10 --precisions bf16,fp16     # shorter timing
#
# Steps (each prints "[gpu-check] OK ...", "SKIP ..." with the reason, or "FAIL ..."; the next
# one runs anyway):
#   0  the node: GPUs (nvidia-smi -L), and libtorch sees CUDA
#   1  the CUDA-only tests (cargo test ... -- cuda::):
#      - the debug model's training step on CUDA equals the same step on the CPU (same weights,
#        same batch; fp32, TF32 off; gradients within 1e-4 relative L2, loss within 1e-5)
#      - NCCL across every GPU of the node: training with the all-reduce overlapped with the
#        backward pass ends bit-identical to the same run without overlap (needs 2 GPUs)
#   2  step time of the paper's UNet at 64x64 latents, batch 8, under fp32, TF32, bf16 and fp16,
#      next to the same diffusers model in PyTorch eager with torch.autocast on the same GPU
#      (interleaved, median and 95% interval), with the GPU memory each process holds
#      (cargo bench --bench gpu_step)
# Exit status: 0 when every step passed (skips included), 1 when any failed, 2 for a usage error.
#
# Options:
#   --reps N            timed repetitions per precision in step 2 (default 20)
#   --precisions LIST   comma-separated subset of fp32,tf32,bf16,fp16 for step 2 (default all)
#   --skip-timing       steps 0 and 1 only
# Environment: CUDA_VISIBLE_DEVICES chooses the GPUs as usual.
set -uo pipefail

SELF_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SELF_DIR/.." && pwd)"
REPS=20
PRECISIONS=fp32,tf32,bf16,fp16
TIMING=1

usage() {
  sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS="${2:?--reps needs a number}"; shift 2 ;;
    --precisions) PRECISIONS="${2:?--precisions needs a list}"; shift 2 ;;
    --skip-timing) TIMING=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu-check: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$REPS" in ''|*[!0-9]*) echo "gpu-check: --reps: not a number: $REPS" >&2; exit 2 ;; esac

FAILED=0
say() { echo "[gpu-check] $*"; }
fail() { say "FAIL $*"; FAILED=1; }

cd "$ROOT" || exit 2
if [ ! -f ci/env.sh ]; then
  echo "gpu-check: $ROOT/ci/env.sh not found: run from a SyncDiff checkout" >&2
  exit 2
fi

# ---- 0: the node ---------------------------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1 || ! LIST="$(nvidia-smi -L 2>/dev/null)" ||
   ! printf '%s\n' "$LIST" | grep -q '^GPU '; then
  say "FAIL step 0: no GPU on $(hostname) (nvidia-smi -L lists none): run this on a GPU node"
  exit 1
fi
say "OK step 0: $(printf '%s\n' "$LIST" | grep -c '^GPU ') GPU(s) on $(hostname): $(printf '%s\n' "$LIST" | sed -n '1s/^GPU 0: \(.*\) (UUID.*/\1/p')"
# shellcheck source=/dev/null
source ci/env.sh || { say "FAIL step 0: ci/env.sh failed: run bash ci/setup.sh first"; exit 1; }

# ---- 1: CUDA-only tests --------------------------------------------------------------------------
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
say "step 1: building and running the CUDA-only tests (the first build takes minutes)"
if cargo test -p syncdiff-trainer --test it --locked -- cuda:: --nocapture --test-threads=1 >"$LOG" 2>&1; then
  grep -E '^cuda vs cpu:' "$LOG" | sed 's/^/[gpu-check]   /'
  if grep -q 'skipped:' "$LOG"; then
    grep 'skipped:' "$LOG" | sed 's/^/[gpu-check] SKIP step 1: /'
  fi
  say "OK step 1: CUDA-only tests passed"
else
  tail -n 40 "$LOG"
  fail "step 1: a CUDA-only test failed (output above)"
fi

# ---- 2: step time per precision ------------------------------------------------------------------
if [ "$TIMING" = 1 ]; then
  say "step 2: paper UNet step per precision vs PyTorch eager ($REPS repetitions each)"
  if BENCH_REPS="$REPS" BENCH_PRECISIONS="$PRECISIONS" \
      cargo bench -p syncdiff-trainer --bench gpu_step --locked >"$LOG" 2>&1; then
    grep -E '^paper UNet|skipped' "$LOG" | sed 's/^/[gpu-check]   /'
    say "OK step 2: timings above (ours / PyTorch; memory: CUDA context + caching allocator)"
  else
    tail -n 40 "$LOG"
    fail "step 2: the gpu_step bench failed (output above)"
  fi
else
  say "SKIP step 2: --skip-timing"
fi

if [ "$FAILED" = 0 ]; then
  say "all steps passed"
fi
exit "$FAILED"
