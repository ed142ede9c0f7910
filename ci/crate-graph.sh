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
# BINARY (a path) loads none of the libraries named by the regular expression. It cannot pass
# vacuously: the binary must exist and ldd must list libtorch_cpu among its libraries.
ldd_without() {
  local out found
  if [ ! -x "$1" ] || ! out="$(ldd "$1" 2>&1)" || ! grep -q 'libtorch_cpu\.so' <<<"$out"; then
    echo "FAIL: $1: missing, or ldd lists no libtorch_cpu.so: ${out:-no output}"
    fail=1
    return
  fi
  found="$(awk '{print $1}' <<<"$out" | grep -E "^($2)" | tr '\n' ' ' || true)"
  if [ -n "$found" ]; then
    echo "FAIL: $1 loads $found(must not: $3)"
    fail=1
  else
    echo "ok: $(basename "$1") loads no ${2//|/, }"
  fi
}

# The path of each of the three command-line tools, as cargo reports them (the target directory
# may be anywhere: CARGO_TARGET_DIR). Built as the test stage builds them (the feature only adds
# test-only faults), so nothing is compiled twice.
declare -A bin
tools() {
  local line
  while read -r line; do
    bin[$(basename "$line")]="$line"
  done < <(cargo build --workspace --bins --locked --features syncdiff-trainer/fault-injection \
    --message-format=json-render-diagnostics | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    exe = m.get("executable") if m.get("reason") == "compiler-artifact" else None
    if exe and exe.rsplit("/", 1)[-1] in ("syncdiff-train", "syncdiff", "syncdiff-dataprep"):
        print(exe)
')
  for name in syncdiff-train syncdiff syncdiff-dataprep; do
    if [ -z "${bin[$name]:-}" ]; then
      echo "crate-graph: cargo reported no $name binary" >&2
      exit 1
    fi
  done
}

face='dlib-face-recognition|syncdiff-dataprep|syncdiff-inference'
mpi='mpi|mpi-sys|build-probe-mpi|syncdiff-trainer'
face_libs='libdlib|libopenblas|libblas|liblapack'
mpi_libs='libmpi'

if [ "${1:-}" = "--self-test" ]; then
  # Each check must fail where what it looks for is: dlib in dataprep's graph, MPI in the
  # trainer's, dlib's libraries in `syncdiff`, MPI in `syncdiff-train`, and a missing binary.
  tools
  for check in "graph_without syncdiff-dataprep $face" "graph_without syncdiff-trainer $mpi" \
    "ldd_without ${bin[syncdiff]} $face_libs" "ldd_without ${bin[syncdiff-train]} $mpi_libs" \
    "ldd_without ${bin[syncdiff]}.missing $mpi_libs"; do
    fail=0
    # shellcheck disable=SC2086
    $check "self-test" >/dev/null
    if [ "$fail" = 0 ]; then
      echo "crate-graph self-test: '$check' passed but must fail" >&2
      exit 1
    fi
  done
  echo "crate-graph self-test: all five checks fail where what they look for is"
  exit 0
fi

graph_without syncdiff-trainer "$face" "a training node detects no faces"
graph_without syncdiff-inference "$mpi" "generation and evaluation run without MPI"
graph_without syncdiff-dataprep "$mpi" "data preparation runs without MPI"

tools
ldd_without "${bin[syncdiff-train]}" "$face_libs" "a training node detects no faces"
ldd_without "${bin[syncdiff]}" "$mpi_libs" "generation and evaluation run without MPI"
ldd_without "${bin[syncdiff-dataprep]}" "$mpi_libs" "data preparation runs without MPI"

if [ "$fail" != 0 ]; then
  echo "crate-graph: a binary links what its host does not need (docs/development.md, Crates)" >&2
  exit 1
fi
echo "crate-graph: every binary links only what its host needs"
