#!/usr/bin/env bash
# The demo, README's first command: SyncDiff learns lip sync on synthetic talking faces on a CPU.
#
#   bash launch/demo.sh            # set-up and build on a fresh machine, then 6-11 minutes
#
# 1. set-up (ci/setup.sh) and build;
# 2. `syncdiff-dataprep synth`: 8 speakers x 12 clips of 3 s (faces whose mouth follows espeak-ng
#    speech; the true opening of every frame beside each clip), then `syncdiff-dataprep lrs2` for
#    the train / val / test splits (configs/demo.yaml: 64x64 pixel space);
# 3. `mpirun -n 2 syncdiff-train --config configs/demo.yaml`, checkpointing to a local object-store
#    directory; SIGUSR1 at step STOP_AT stops it (checkpoint, exit 0), then `--resume auto`
#    continues to the last step;
# 4. `syncdiff ckpt export` + `syncdiff generate` for the 8 held-out test clips, once with their
#    own audio and once driven by another speaker's test clip;
# 5. `syncdiff eval --openings` and a report: the mouth opening read from the generated frames
#    against the true opening, for the model, for "copy the identity frame", and for the model
#    driven by another clip's audio. Exit status 1 when the report misses the bar below.
#
# Everything lands under data/demo, checkpoints/demo, runs/demo (git-ignored). DEMO_STEPS and
# STOP_AT override the schedule (e.g. DEMO_STEPS=100 STOP_AT=50 for a quick smoke run of the
# plumbing; it misses the bar). The stop comes at the first logged step >= STOP_AT (log.interval).
# Generation runs under the config's bf16 where the CPU computes bf16 natively (AVX512-BF16 or
# AMX flags in /proc/cpuinfo), else in fp32 on two worker threads; DEMO_PRECISION=fp32|bf16
# chooses. Training is fp32 either way.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

STEPS="${DEMO_STEPS:-1200}"
if [ -n "${DEMO_PRECISION:-}" ]; then
  PRECISION=$DEMO_PRECISION
elif grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null; then
  PRECISION=bf16
else
  PRECISION=fp32
fi
case "$PRECISION" in
  fp32 | bf16) ;;
  *) echo "DEMO_PRECISION=$PRECISION: expected fp32 or bf16" >&2; exit 2 ;;
esac
STOP_AT="${STOP_AT:-$((STEPS / 2))}"
OUT=data/demo
log() { echo "[demo $(date +%H:%M:%S)] $*"; }

bash ci/setup.sh
# shellcheck source=ci/env.sh
source ci/env.sh
log "building (first build: ~10 minutes on 2 cores)"
cargo build --workspace --locked --bins
BIN=target/debug
START=$(date +%s)

# ---- data ----
if [ ! -f "$OUT/lrs2/test.txt" ]; then
  log "synthesising 96 clips into $OUT/lrs2"
  rm -rf "$OUT/lrs2"
  "$BIN/syncdiff-dataprep" synth --out "$OUT/lrs2" --speakers 8 --clips-per-speaker 12 --seconds 3
fi
for split in train val test; do
  # --rebuild: shards left by an earlier demo with other settings are rebuilt, not refused.
  "$BIN/syncdiff-dataprep" lrs2 --root "$OUT/lrs2" --split "$split" --out "$OUT/$split" --config configs/demo.yaml --rebuild
done

# ---- training, stopped with SIGUSR1 and resumed ----
rm -rf checkpoints/demo runs/demo
TRAIN=(mpirun -n 2 "$BIN/syncdiff-train" --config configs/demo.yaml --set "train.steps=$STEPS")
mkdir -p runs
log "training: ${TRAIN[*]} (SIGUSR1 at step $STOP_AT, then --resume auto)"
"${TRAIN[@]}" --resume never --set log.progress=false > runs/demo-train-1.log 2>&1 &
PID=$!
last_step() { grep -o "step [0-9]*/$STEPS" runs/demo-train-1.log 2>/dev/null | tail -1 | sed 's/step //; s#/.*##'; }
until [ "$(last_step || true)" -ge "$STOP_AT" ] 2>/dev/null; do
  if ! kill -0 "$PID" 2>/dev/null; then
    tail -5 runs/demo-train-1.log; log "training ended before step $STOP_AT"; exit 1
  fi
  sleep 1
done
# mpirun forwards SIGUSR1 to every rank: they agree on a step, checkpoint, exit 0.
kill -USR1 "$PID"
wait "$PID"
grep -E "stopped on request|checkpoint step" runs/demo-train-1.log | tail -2
"${TRAIN[@]}" --resume auto --set log.progress=false | tee runs/demo-train-2.log | grep -E "resum|finished|val " || true
grep -q "finished after" runs/demo-train-2.log || { log "resumed training failed (runs/demo-train-2.log)"; exit 1; }
TRAIN_END=$(date +%s)
LOSS=$(grep -o "last loss [0-9.]*" runs/demo-train-2.log | tail -1 | cut -d' ' -f3)

# ---- generation for the held-out clips: own audio, and the next speaker's audio ----
LAST=$(printf "step-%09d" "$STEPS")
rm -rf "$OUT/bundle" "$OUT/gt" "$OUT/gt-other" "$OUT/gen" "$OUT/gen-other"
"$BIN/syncdiff" ckpt export "checkpoints/demo/$LAST" --out "$OUT/bundle"
mkdir -p "$OUT/gt" "$OUT/gt-other"
: > "$OUT/pairs.txt"
mapfile -t CLIPS < "$OUT/lrs2/test.txt"
for i in "${!CLIPS[@]}"; do
  id=${CLIPS[$i]}; other=${CLIPS[$(((i + 1) % ${#CLIPS[@]}))]}; name=${id//\//-}
  ln -sf "$PWD/$OUT/lrs2/main/$id.mp4" "$OUT/gt/$name.mp4"
  ln -sf "$PWD/$OUT/lrs2/main/$id.mouth.txt" "$OUT/gt/$name.mouth.txt"
  ln -sf "$PWD/$OUT/lrs2/main/$other.mouth.txt" "$OUT/gt-other/$name.mouth.txt"
  echo "$OUT/lrs2/main/$id.mp4 $OUT/lrs2/main/$id.mp4 $OUT/gen/$name.mp4" >> "$OUT/pairs.txt"
  echo "$OUT/lrs2/main/$id.mp4 $OUT/lrs2/main/$other.mp4 $OUT/gen-other/$name.mp4" >> "$OUT/pairs.txt"
done
GEN=(--precision "$PRECISION")
# fp32: two single-threaded workers beat libtorch's two intra-op threads (51 against 57 s for the 16
# videos on a 2-vCPU Xeon with AMX, libtorch on its own BLAS; 80 against 101 s when it ran on OpenBLAS).
if [ "$PRECISION" = fp32 ]; then GEN+=(--workers 2); fi
log "generating $(wc -l < "$OUT/pairs.txt") videos (batches of 8, ${GEN[*]}; bf16 where the CPU has AVX512-BF16 or AMX)"
"$BIN/syncdiff" generate --checkpoint "$OUT/bundle" --list "$OUT/pairs.txt" --batch 8 "${GEN[@]}"
GEN_END=$(date +%s)

# ---- evaluation ----
"$BIN/syncdiff" eval --pred "$OUT/gen" --gt "$OUT/gt" --openings --report "$OUT/eval-model.json"
"$BIN/syncdiff" eval --pred "$OUT/gen-other" --gt "$OUT/gt" --openings --report "$OUT/eval-other.json" > /dev/null
"$BIN/syncdiff" eval --pred "$OUT/gen-other" --gt "$OUT/gt" --truth-dir "$OUT/gt-other" --openings \
  --report "$OUT/eval-other-vs-other.json" > /dev/null

# A strip for the README: ground truth, generated with its audio, generated with other audio.
first=${CLIPS[0]//\//-}
pick="select='not(mod(n\,8))',scale=96:96,tile=8x1"
ffmpeg -v error -y -i "$OUT/gt/$first.mp4" -i "$OUT/gen/$first.mp4" -i "$OUT/gen-other/$first.mp4" \
  -filter_complex "[0]$pick[a];[1]$pick[b];[2]$pick[c];[a][b][c]vstack=inputs=3" \
  -frames:v 1 "$OUT/strip.png"
END=$(date +%s)

python - "$OUT" "$STEPS" "$LOSS" "$((TRAIN_END - START))" "$((GEN_END - TRAIN_END))" "$((END - START))" "$PRECISION" <<'EOF'
import json, sys
out, steps, loss, train_s, gen_s, total_s, precision = sys.argv[1:]
s = lambda name: json.load(open(f"{out}/{name}.json"))["summary"]
model, other, vs_other = s("eval-model"), s("eval-other"), s("eval-other-vs-other")
print(f"\n== SyncDiff CPU demo: {steps} steps (stopped with SIGUSR1 at the middle and resumed), "
      f"final loss {loss}; generated in {precision}")
print(f"   data + training {train_s} s, generation of 16 videos {gen_s} s, total after the build {total_s} s")
print(f"   mouth-opening reader's own error on ground-truth frames: {model['reader_mae']:.3f}\n")
print(f"{'':44} {'MAE':>7} {'corr(truth)':>12} {'corr(other clip)':>17}")
rows = [("(1) model, own audio", model["open_mae"], model["open_corr"], None),
        ("(2) copy the identity frame", model["copy_id_mae"], None, None),
        ("(3) model driven by another clip's audio", other["open_mae"], other["open_corr"],
         vs_other["open_corr"])]
f = lambda v: "-" if v is None else f"{v:.3f}"
for name, mae, c, co in rows:
    print(f"{name:44} {f(mae):>7} {f(c):>12} {f(co):>17}")
checks = [
    ("model MAE below copy-identity", model["open_mae"] < model["copy_id_mae"]),
    ("model MAE below other-audio", model["open_mae"] < other["open_mae"]),
    ("corr(model, truth) >= 0.7", (model["open_corr"] or 0) >= 0.7),
    ("corr(other-audio output, truth) <= 0.2", (other["open_corr"] or 0) <= 0.2),
    ("corr(other-audio output, other clip) >= 0.5", (vs_other["open_corr"] or 0) >= 0.5),
]
print()
for name, ok in checks:
    print(f"   {'PASS' if ok else 'MISS'}  {name}")
print(f"\nvideos: {out}/gen, {out}/gen-other; strip: {out}/strip.png; reports: {out}/eval-*.json")
sys.exit(0 if all(ok for _, ok in checks) else 1)
EOF
