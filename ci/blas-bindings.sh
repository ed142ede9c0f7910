#!/usr/bin/env bash
# Which BLAS does libtorch run on? libtorch_cpu.so (the torch wheel: MKL inside) defines and
# exports sgemm_, dgemm_, cblas_* and ~100 other BLAS/LAPACK symbols and calls them through the
# dynamic linker; dlib brings Debian's OpenBLAS, which defines the same names. Whichever library
# comes first in a process's search order wins. This script asks the dynamic linker itself: each
# binary is relocated without being run (the `ldd -r` mode, with LD_DEBUG=bindings), and every
# BLAS/LAPACK symbol that libtorch_cpu.so and OpenBLAS both define must bind, for libtorch_cpu's
# own calls, to libtorch_cpu.so.
#
#   bash ci/blas-bindings.sh                 # build every target (tests, benches, the CLIs), check all
#   bash ci/blas-bindings.sh BIN...          # check these binaries
#   bash ci/blas-bindings.sh --self-test     # shows that a binary with OpenBLAS first fails the check
#
# It cannot pass vacuously: the symbols in question come from the two libraries' own tables (at
# least 50), every binary that loads libtorch_cpu.so must show bindings of them, and at least the
# three command-line tools must be among the binaries checked.
set -euo pipefail
# Binaries named on the command line are resolved before the script moves to the repository.
args=()
for a in "$@"; do
  case "$a" in -*) args+=("$a") ;; *) args+=("$(realpath -m -- "$a")") ;; esac
done
set -- "${args[@]+"${args[@]}"}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=ci/env.sh
source ci/env.sh

torch_lib="$(python -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
openblas="$(ldconfig -p | awk '/libopenblas\.so\.0 .*x86-64/ {print $NF; exit}')"
if [ -z "$openblas" ]; then
  echo "blas-bindings: libopenblas.so.0 not found (bash ci/setup.sh installs it)" >&2
  exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# The contested names: BLAS/LAPACK symbols defined by both libtorch_cpu.so and OpenBLAS.
blas_names() { nm -D --defined-only "$1" | awk '$2 ~ /^[TW]$/ && $3 ~ /^(cblas_[a-z0-9_]+|[a-z][a-z0-9]+_)$/ {print $3}' | sort -u; }
comm -12 <(blas_names "$torch_lib/libtorch_cpu.so") <(blas_names "$openblas") >"$tmp/contested"
n_contested=$(wc -l <"$tmp/contested")
if [ "$n_contested" -lt 50 ]; then
  echo "blas-bindings: only $n_contested names defined by both libtorch_cpu.so and $openblas; expected >= 50" >&2
  exit 1
fi

# check BIN: 0 when libtorch_cpu's contested symbols bind to itself, or BIN does not load it.
check() {
  local bin="$1" report="$tmp/report"
  if [ ! -f "$bin" ] || [ ! -x "$bin" ]; then
    printf 'FAIL        %s: not an executable file\n' "$bin"
    return 1
  fi
  LD_TRACE_LOADED_OBJECTS=1 LD_WARN=yes LD_BIND_NOW=1 LD_DEBUG=bindings "$bin" >/dev/null 2>"$report" || true
  if ! grep -q '^ *[0-9]*:.*binding file ' "$report"; then
    printf 'FAIL        %s: the dynamic linker reported no bindings (not a dynamic executable?)\n' "$bin"
    return 1
  fi
  if ! grep -q 'libtorch_cpu\.so' "$report"; then
    echo "no libtorch  $bin"
    return 2
  fi
  # "binding file <from> [0] to <to> [0]: normal symbol `name' ..."
  awk -v contested="$tmp/contested" '
    BEGIN { while ((getline s < contested) > 0) want[s] = 1 }
    /binding file [^ ]*libtorch_cpu\.so \[/ {
      from = $4; to = $7; sym = $11; gsub(/[`\x27]/, "", sym)
      if (!(sym in want)) next
      seen++
      if (to !~ /libtorch_cpu\.so$/) { bad++; if (!example) example = sym " -> " to }
    }
    END {
      if (seen == 0) { print "NO REPORT"; exit 1 }
      if (bad > 0) { printf "%d of %d to other libraries (e.g. %s)\n", bad, seen, example; exit 1 }
      printf "%d bound to libtorch_cpu.so\n", seen
    }' "$report" >"$tmp/verdict" && { printf 'ok          %s: %s\n' "$bin" "$(cat "$tmp/verdict")"; return 0; }
  printf 'FAIL        %s: libtorch_cpu.so BLAS/LAPACK bindings: %s\n' "$bin" "$(cat "$tmp/verdict")"
  return 1
}

run_checks() {
  local failed=0 checked=0 cli=0 r
  for bin in "$@"; do
    r=0
    check "$bin" || r=$?
    case $r in
      0) checked=$((checked + 1)) ;;
      2) ;;
      *) failed=$((failed + 1)) ;;
    esac
    case "$(basename "$bin")" in syncdiff | syncdiff-train | syncdiff-dataprep) [ $r -eq 0 ] && cli=$((cli + 1)) ;; esac
  done
  echo "blas-bindings: $checked binaries bind libtorch's $n_contested contested BLAS/LAPACK names to libtorch_cpu.so; $failed do not"
  [ "$failed" -eq 0 ] || return 1
  if [ $# -gt 3 ] && [ "$cli" -lt 3 ]; then
    echo "blas-bindings: the three command-line tools were not all checked" >&2
    return 1
  fi
}

self_test() {
  # One C file that calls sgemm_, linked with OpenBLAS named first, then with libtorch_cpu
  # first: the first must fail the check, the second pass.
  printf 'extern void sgemm_(void);\nint main(int c, char **v) { if (c > 5) sgemm_(); return 0; }\n' >"$tmp/t.c"
  local torch=(-L"$torch_lib" -Wl,-rpath,"$torch_lib" -ltorch_cpu)
  cc -o "$tmp/reversed" "$tmp/t.c" -Wl,--no-as-needed -lopenblas "${torch[@]}"
  cc -o "$tmp/ordered" "$tmp/t.c" -Wl,--no-as-needed "${torch[@]}" -lopenblas
  local ok=1
  echo "self-test: a binary linked with OpenBLAS first must FAIL, one with libtorch_cpu first pass:"
  if check "$tmp/reversed"; then echo "self-test: OpenBLAS first was not caught" >&2; ok=0; fi
  if ! check "$tmp/ordered"; then echo "self-test: libtorch_cpu first was refused" >&2; ok=0; fi
  [ $ok -eq 1 ] && echo "blas-bindings: self-test passed (OpenBLAS first fails, libtorch_cpu first passes)"
  [ $ok -eq 1 ]
}

if [ "${1:-}" = "--self-test" ]; then
  self_test
elif [ $# -gt 0 ]; then
  run_checks "$@"
else
  self_test
  cargo build --workspace --all-targets --locked --features syncdiff-trainer/fault-injection \
    --message-format=json-render-diagnostics >"$tmp/build.json"
  mapfile -t bins < <(python - "$tmp/build.json" <<'PY'
import json, sys
seen = set()
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    exe = m.get("executable") if m.get("reason") == "compiler-artifact" else None
    if exe and exe not in seen:
        seen.add(exe)
        print(exe)
PY
  )
  if [ "${#bins[@]}" -lt 10 ]; then
    echo "blas-bindings: cargo reported ${#bins[@]} executables; expected the tests, benches and tools" >&2
    exit 1
  fi
  run_checks "${bins[@]}"
fi
