#!/usr/bin/env bash
# The test suite, as CI runs it (.ci/run calls this): set-up, format, lints, build, tests.
# On a fresh machine the set-up installs everything first (see docs/setup.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

stage() { printf '\n== %s (%s) ==\n' "$1" "$(date +%T)"; }
start=$(date +%s)

stage "set-up"
bash ci/setup.sh
# shellcheck source=ci/env.sh
source ci/env.sh

stage "cargo fmt --check"
cargo fmt --all -- --check

stage "cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

stage "cargo clippy -p syncdiff-model (without the cli feature, as a library user builds it)"
cargo clippy -p syncdiff-model --lib --locked -- -D warnings

stage "BLAS bindings: every binary (tools, tests, benches) runs libtorch on its own BLAS"
bash ci/blas-bindings.sh

stage "crate graph: each binary links only what its host needs (no dlib in training, no MPI in inference)"
bash ci/crate-graph.sh --self-test
bash ci/crate-graph.sh

stage "cargo test"
cargo test --workspace --locked --features syncdiff-trainer/fault-injection

printf '\nci/test.sh: all stages passed in %d s\n' "$(( $(date +%s) - start ))"
