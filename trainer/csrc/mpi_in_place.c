/* What the mpi crates do not export, compiled against the MPI found at build time:
   - MPI_IN_PLACE, a macro whose value differs between MPI implementations (OpenMPI, MPICH);
   - a bfloat16 sum (MPI has no bfloat16 type): the gradient all-reduce under
     dist.reduce_dtype: bf16 sends 16-bit words as MPI_UINT16_T and adds them with this
     operation, each sum widened to float32 and rounded back to bfloat16 to nearest even (the
     rounding of libtorch's float32 -> bfloat16 conversion). */
#include <mpi.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

void *syncdiff_mpi_in_place(void) { return MPI_IN_PLACE; }

static float bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static uint16_t f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    return (uint16_t)((u >> 16) | 0x0040u); /* NaN stays a (quiet) NaN */
  }
  u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest, ties to even */
  return (uint16_t)(u >> 16);
}

static void bf16_sum(void *in, void *inout, int *len, MPI_Datatype *type) {
  (void)type;
  const uint16_t *a = (const uint16_t *)in;
  uint16_t *b = (uint16_t *)inout;
  for (int i = 0; i < *len; i++) {
    b[i] = f32_to_bf16(bf16_to_f32(a[i]) + bf16_to_f32(b[i]));
  }
}

static MPI_Op bf16_sum_op = MPI_OP_NULL;
static int bf16_sum_rc = MPI_SUCCESS;
static pthread_once_t bf16_sum_once = PTHREAD_ONCE_INIT;

static void create_bf16_sum(void) { bf16_sum_rc = MPI_Op_create(bf16_sum, 1, &bf16_sum_op); }

/* Sums `count` bfloat16 values at `buf` over `comm`, in place. Returns MPI's error code. */
int syncdiff_bf16_allreduce(void *buf, int count, MPI_Comm comm) {
  pthread_once(&bf16_sum_once, create_bf16_sum);
  if (bf16_sum_rc != MPI_SUCCESS) {
    return bf16_sum_rc;
  }
  return MPI_Allreduce(MPI_IN_PLACE, buf, count, MPI_UINT16_T, bf16_sum_op, comm);
}

/* bfloat16 rounding of one float32 as this file does it (for the tests). */
uint16_t syncdiff_f32_to_bf16(float f) { return f32_to_bf16(f); }
