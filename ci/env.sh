# Source this file (`source ci/env.sh`) before building or running SyncDiff.
# - puts the project's virtualenv first on PATH (so `python` is the venv's, and tch finds libtorch
#   through the torch wheel: LIBTORCH_USE_PYTORCH=1);
# - lets OpenMPI run as root and oversubscribe cores, only when the current user is root
#   (containers, CI); on a cluster account nothing about MPI is changed.
# Idempotent; safe to source from other scripts.
SYNCDIFF_VENV="${SYNCDIFF_VENV:-$HOME/.cache/syncdiff/venv}"
export SYNCDIFF_VENV
if [ ! -x "$SYNCDIFF_VENV/bin/python" ]; then
  echo "ci/env.sh: no virtualenv at $SYNCDIFF_VENV; run 'bash ci/setup.sh' first" >&2
  return 1 2>/dev/null || exit 1
fi
export VIRTUAL_ENV="$SYNCDIFF_VENV"
case ":$PATH:" in
  *":$SYNCDIFF_VENV/bin:"*) ;;
  *) export PATH="$SYNCDIFF_VENV/bin:$PATH" ;;
esac
export LIBTORCH_USE_PYTORCH=1
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1
  export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  export OMPI_MCA_rmaps_base_oversubscribe=1
fi
