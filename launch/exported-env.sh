# Sourced by mpirun-cluster.sh and preflight.sh: the environment variables every rank needs,
# named for Open MPI's `-x` (its mpirun does not pass the environment to other nodes). Names
# only: values never appear on a command line, so credentials stay out of `ps` and logs.
#
#   source launch/exported-env.sh; exported_env_args   # fills the array ENV_ARGS

# The variables: the binary's libraries and threads, the virtualenv (libtorch), NCCL's settings,
# and object-storage credentials (AWS_*, GOOGLE_*, AZURE_*).
exported_env_name() {
  case "$1" in
    PATH|LD_LIBRARY_PATH|OMP_NUM_THREADS|VIRTUAL_ENV|SYNCDIFF_VENV|LIBTORCH_USE_PYTORCH|RUST_BACKTRACE|NCCL_*|AWS_*|GOOGLE_*|AZURE_*)
      return 0 ;;
  esac
  return 1
}

# ENV_ARGS=(-x NAME ...) for every such variable set in this shell.
exported_env_args() {
  ENV_ARGS=()
  local name
  while read -r name; do
    if exported_env_name "$name"; then ENV_ARGS+=(-x "$name"); fi
  done < <(compgen -e)
}
