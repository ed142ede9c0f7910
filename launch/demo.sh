#!/usr/bin/env bash
# The demo, README's first command. On a fresh machine it sets up and builds first.
#
# Today it shows the distributed runtime: the debug configuration resolved and dry-run on 2 MPI
# ranks (batch split, placement of each rank, a real all-reduce). The full demo (synthetic data,
# training with a preemption and resume, generation, evaluation) grows here with the later issues.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash ci/setup.sh
# shellcheck source=ci/env.sh
source ci/env.sh
echo "[demo] building (first build: ~10 minutes on 2 cores)"
cargo build --workspace --locked --bins

echo "[demo] mpirun -n 2 syncdiff-train --config configs/debug.yaml --dry-run"
mpirun -n 2 target/debug/syncdiff-train --config configs/debug.yaml --dry-run
echo "[demo] mpirun -n 2 syncdiff-train --config configs/syncdiff-lrs2.yaml --dry-run"
mpirun -n 2 target/debug/syncdiff-train --config configs/syncdiff-lrs2.yaml --dry-run
