#!/usr/bin/env bash
# Each binary links only what its host needs (docs/development.md, "Crates"):
#   - syncdiff-train (training cluster): no face front-end, so no dlib, OpenBLAS or LAPACK;
#   - syncdiff (inference box) and syncdiff-dataprep (data preparation host): no MPI.
# Checked twice: in cargo's crate graph (normal and build dependencies: what the binaries are
# built from) and in the built binaries' dynamic libraries (ldd).
#
#   bash ci/crate-graph.sh               # build the three binaries, check both
#   bash ci/crate-graph.sh --self-test   # the checks find what they look for where it is
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=ci/env.sh
source ci/env.sh

fail=0
# The crates of PACKAGE's graph, one name per line.
crates() { cargo tree -p "$1" -e normal,build --prefix none --format '{p}' --locked | awk '{print $1}' | sort -u; }
# PACKAGE's graph has none of the crates named by the regular expression.
graph_without() {
  local found
  found="$(crates "$1" | grep -E "^($2)$" | tr '\n' ' ' || true)"
  if [ -n "$found" ]; then
    echo "FAIL: $1 depends on $found(must not: $3)"
    fail=1
  else
    echo "ok: $1's crate graph has no ${2//|/, }"
  fi
}
# BINARY loads none of the libraries named by the regular expression.
ldd_without() {
  local found
  found="$(ldd "$1" | awk '{print $1}' | grep -E "^($2)" | tr '\n' ' ' || true)"
  if [ -n "$found" ]; then
    echo "FAIL: $1 loads $found(must not: $3)"
    fail=1
  else
    echo "ok: $(basename "$1") loads no ${2//|/, }"
  fi
}

face='dlib-face-recognition|syncdiff-dataprep|syncdiff-inference'
mpi='mpi|mpi-sys|build-probe-mpi|syncdiff-trainer'
face_libs='libdlib|libopenblas|libblas|liblapack'
mpi_libs='libmpi'

if [ "${1:-}" = "--self-test" ]; then
  # The same checks must fail where the crates are: dlib in dataprep's graph, MPI in the trainer's.
  for check in "graph_without syncdiff-dataprep $face" "graph_without syncdiff-trainer $mpi"; do
    fail=0
    # shellcheck disable=SC2086
    $check "self-test" >/dev/null
    if [ "$fail" = 0 ]; then
      echo "crate-graph self-test: '$check' passed but must fail" >&2
      exit 1
    fi
  done
  echo "crate-graph self-test: both checks fail where the crates are"
  exit 0
fi

graph_without syncdiff-trainer "$face" "a training node detects no faces"
graph_without syncdiff-inference "$mpi" "generation and evaluation run without MPI"
graph_without syncdiff-dataprep "$mpi" "data preparation runs without MPI"

# Built as the test stage builds them (the feature only adds test-only faults), so nothing is
# compiled twice.
cargo build --workspace --bins --locked --features syncdiff-trainer/fault-injection
ldd_without target/debug/syncdiff-train "$face_libs" "a training node detects no faces"
ldd_without target/debug/syncdiff "$mpi_libs" "generation and evaluation run without MPI"
ldd_without target/debug/syncdiff-dataprep "$mpi_libs" "data preparation runs without MPI"

if [ "$fail" != 0 ]; then
  echo "crate-graph: a binary links what its host does not need (docs/development.md, Crates)" >&2
  exit 1
fi
echo "crate-graph: every binary links only what its host needs"
