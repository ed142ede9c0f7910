#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian machine for building, testing and running SyncDiff.
#
#   bash ci/setup.sh          # installs what is missing, prints what it installs
#   source ci/env.sh          # afterwards, in every shell that builds or runs the project
#
# A second run on a ready machine only checks and finishes in seconds.
# The Python virtualenv lives outside the clone (SYNCDIFF_VENV, default ~/.cache/syncdiff/venv),
# so every clone on the same machine shares it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${SYNCDIFF_VENV:-$HOME/.cache/syncdiff/venv}"
req="$here/requirements.txt"

log() { printf '[setup] %s\n' "$*"; }

# --- Debian packages -------------------------------------------------------------------------
apt_pkgs=(openmpi-bin libopenmpi-dev libclang-dev clang pkg-config ffmpeg espeak-ng python3-venv procps)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  log "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages present: ${apt_pkgs[*]}"
fi

# --- Python virtualenv ------------------------------------------------------------------------
stamp="$venv/.syncdiff-requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  log "virtualenv up to date: $venv"
else
  if [ ! -x "$venv/bin/python" ]; then
    log "creating virtualenv $venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
  fi
  log "installing Python packages from ci/requirements.txt (torch is ~4.7 GB; a few minutes)"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "$req"
  echo "$want" >"$stamp"
  log "installed: $(tr '\n' ' ' < <(grep -v '^#' "$req"))"
fi

# cudarc's dynamic loader looks for libnccl.so; the wheel ships only libnccl.so.2.
nccl_dir="$("$venv/bin/python" - <<'PY'
import importlib.util, os
spec = importlib.util.find_spec("nvidia")
paths = list(spec.submodule_search_locations) if spec else []
for base in paths:
    d = os.path.join(base, "nccl", "lib")
    if os.path.exists(os.path.join(d, "libnccl.so.2")):
        print(d)
        break
PY
)"
if [ -n "$nccl_dir" ] && [ ! -e "$nccl_dir/libnccl.so" ]; then
  ln -s libnccl.so.2 "$nccl_dir/libnccl.so"
  log "linked $nccl_dir/libnccl.so -> libnccl.so.2"
fi

# --- Rust toolchain components ----------------------------------------------------------------
for c in rustfmt clippy; do
  if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
    log "installing rustup component $c"
    rustup component add "$c"
  fi
done

log "ready. Next: source ci/env.sh"
