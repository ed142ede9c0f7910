#!/usr/bin/env bash
# Quality against sampling steps and audio guidance on the demo's trained model (the table in
# docs/generate.md). Run after launch/demo.sh, which leaves the model and the test jobs:
#
#   bash launch/demo-sweep.sh                       # the table's settings (~1 hour on 2 cores)
#   bash launch/demo-sweep.sh ddim:20 dpmpp-2m:5:2  # SAMPLER:STEPS[:GUIDANCE[:FINAL_X0]]
#
# For each setting: `syncdiff generate` the demo's 16 jobs (8 held-out clips with their own
# audio, and driven by the next clip's audio) with those flags, `syncdiff eval --openings`, and
# one row: the demo's bar metrics (MAE and correlation with the true opening; for the other
# audio, MAE, correlation with the true opening and with the driving clip's opening) and the
# generation time. Outputs under data/demo/sweep/<setting>/; the table also goes to
# data/demo/sweep/table.md. Guidance > 1 needs a model trained with train.audio_dropout > 0.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=ci/env.sh
source ci/env.sh
OUT=data/demo
BIN=target/debug
[ -f "$OUT/pairs.txt" ] && [ -d "$OUT/bundle" ] || {
  echo "demo-sweep: no $OUT/pairs.txt or $OUT/bundle: run launch/demo.sh first" >&2
  exit 1
}
if [ $# -eq 0 ]; then
  set -- ddim:10 ddim:20 ddim:40 ddim:10:1:true dpmpp-2m:3 dpmpp-2m:5 dpmpp-2m:10 \
    dpmpp-2m:5:1.5 dpmpp-2m:5:2 dpmpp-2m:5:3
fi
mkdir -p "$OUT/sweep"
rows="$OUT/sweep/rows.jsonl"
: > "$rows"
for setting in "$@"; do
  IFS=: read -r sampler steps guidance final <<< "$setting"
  guidance=${guidance:-1}
  final=${final:-false}
  name="$sampler-$steps-g$guidance$([ "$final" = true ] && echo -x0 || true)"
  dir="$OUT/sweep/$name"
  rm -rf "$dir"
  mkdir -p "$dir"
  sed "s#$OUT/gen/#$dir/gen/#; s#$OUT/gen-other/#$dir/gen-other/#" "$OUT/pairs.txt" > "$dir/pairs.txt"
  echo "[sweep $(date +%H:%M:%S)] $name"
  start=$(date +%s.%N)
  "$BIN/syncdiff" generate --checkpoint "$OUT/bundle" --list "$dir/pairs.txt" --batch 8 \
    --sampler "$sampler" --steps "$steps" --guidance "$guidance" --final-x0 "$final" > "$dir/generate.log"
  end=$(date +%s.%N)
  "$BIN/syncdiff" eval --pred "$dir/gen" --gt "$OUT/gt" --openings --report "$dir/own.json" > /dev/null
  "$BIN/syncdiff" eval --pred "$dir/gen-other" --gt "$OUT/gt" --openings --report "$dir/other.json" > /dev/null
  "$BIN/syncdiff" eval --pred "$dir/gen-other" --gt "$OUT/gt" --truth-dir "$OUT/gt-other" --openings \
    --report "$dir/other-vs-other.json" > /dev/null
  python - "$dir" "$name" "$start" "$end" >> "$rows" <<'EOF'
import json, sys
d, name, start, end = sys.argv[1:]
s = lambda f: json.load(open(f"{d}/{f}.json"))["summary"]
own, other, vs = s("own"), s("other"), s("other-vs-other")
print(json.dumps({"setting": name, "mae": own["open_mae"], "corr": own["open_corr"],
                  "other_mae": other["open_mae"], "other_corr": other["open_corr"],
                  "other_vs_other": vs["open_corr"], "gen_s": float(end) - float(start)}))
EOF
  tail -1 "$rows"
done
python - "$rows" <<'EOF' | tee "$OUT/sweep/table.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| setting | MAE | corr(truth) | other-audio MAE | corr(other-audio, truth) | corr(other-audio, other clip) | generation s (16 videos) |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    f = lambda k: "-" if r[k] is None else f"{r[k]:.3f}"
    print(f"| {r['setting']} | {f('mae')} | {f('corr')} | {f('other_mae')} | {f('other_corr')} | "
          f"{f('other_vs_other')} | {r['gen_s']:.0f} |")
EOF
