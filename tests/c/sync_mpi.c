/* SyncBatchNorm across 3 MPI processes through the normkit C ABI.
 *
 * One batch (N = 7, C = 3, L = 2, float32) is split unevenly: rank 0 holds samples 0..3,
 * rank 1 none (an empty local batch), rank 2 samples 4..6. Each rank runs a SyncBatchNorm
 * module whose communicator callbacks are MPI_Allgather / MPI_Allreduce on MPI_COMM_WORLD,
 * for 3 training steps with backward, then one eval forward. Every rank also runs a plain
 * BatchNorm over the whole concatenated batch in its own process (the single-process
 * reference; deterministic, so identical on every rank) and checks its slice of y and dx,
 * the running statistics and the counter against it, and that grad_weight/grad_bias summed
 * over the ranks (MPI_Allreduce) equal the full-batch ones. Built and run by
 * tests/capi_mpi.rs: mpirun -np 3. */
#include "normkit.h"

#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <string.h>

enum { N = 7, C = 3, L = 2, E = N * C * L };
static const int first[3] = {0, 4, 4}, count[3] = {4, 0, 3};

static int rank = -1, failures = 0, checks = 0;

#define OK(call)                                                                       \
  do {                                                                                 \
    normkit_status_t s_ = (call);                                                      \
    checks++;                                                                          \
    if (s_ != NORMKIT_STATUS_OK) {                                                     \
      failures++;                                                                      \
      fprintf(stderr, "rank %d: %s:%d: %s returned %d: %s\n", rank, __FILE__, __LINE__, \
              #call, (int)s_, normkit_last_error_message());                           \
    }                                                                                  \
  } while (0)

static void close_to(const char *what, int step, const float *got, const float *want, int n) {
  for (int i = 0; i < n; i++) {
    checks++;
    if (!(fabsf(got[i] - want[i]) <= 1e-5f * fmaxf(1.0f, fabsf(want[i])))) {
      failures++;
      fprintf(stderr, "rank %d step %d: %s[%d] = %.9g, want %.9g\n", rank, step, what, i,
              (double)got[i], (double)want[i]);
    }
  }
}

static normkit_status_t mpi_all_gather(void *user_data, const double *send, double *recv,
                                       size_t n) {
  MPI_Comm comm = *(MPI_Comm *)user_data;
  return MPI_Allgather(send, (int)n, MPI_DOUBLE, recv, (int)n, MPI_DOUBLE, comm) == MPI_SUCCESS
             ? NORMKIT_STATUS_OK
             : NORMKIT_STATUS_COMMUNICATOR;
}

static normkit_status_t mpi_all_reduce_sum(void *user_data, double *data, size_t n) {
  MPI_Comm comm = *(MPI_Comm *)user_data;
  return MPI_Allreduce(MPI_IN_PLACE, data, (int)n, MPI_DOUBLE, MPI_SUM, comm) == MPI_SUCCESS
             ? NORMKIT_STATUS_OK
             : NORMKIT_STATUS_COMMUNICATOR;
}

static normkit_tensor_t f32(float *data, int32_t ndim, int64_t *shape) {
  normkit_tensor_t t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.device.device_type = NORMKIT_DEVICE_CPU;
  t.ndim = ndim;
  t.dtype.code = NORMKIT_DTYPE_CODE_FLOAT;
  t.dtype.bits = 32;
  t.dtype.lanes = 1;
  t.shape = shape;
  return t;
}

static normkit_module_t *make_module(normkit_context_t *ctx, int32_t kind) {
  normkit_batch_norm_config_t cfg;
  normkit_module_t *m = NULL;
  float w[C] = {1.5f, -0.5f, 2.0f}, b[C] = {0.25f, 0.0f, -1.0f};
  int64_t cs[1] = {C};
  normkit_tensor_t tw = f32(w, 1, cs), tb = f32(b, 1, cs);
  OK(normkit_batch_norm_config_init(&cfg));
  cfg.kind = kind;
  cfg.num_features = C;
  OK(normkit_batch_norm_create(ctx, &cfg, &m));
  OK(normkit_module_set_state(ctx, m, "weight", &tw));
  OK(normkit_module_set_state(ctx, m, "bias", &tb));
  return m;
}

static void state(normkit_context_t *ctx, normkit_module_t *m, const char *name, float *out) {
  int64_t cs[1] = {C};
  normkit_tensor_t t = f32(out, 1, cs);
  OK(normkit_module_get_state(ctx, m, name, &t));
}

static int64_t counter(normkit_context_t *ctx, normkit_module_t *m) {
  int64_t v = -1, one[1] = {1};
  normkit_tensor_t t = f32(NULL, 1, one);
  t.data = &v;
  t.dtype.code = NORMKIT_DTYPE_CODE_INT;
  t.dtype.bits = 64;
  OK(normkit_module_get_state(ctx, m, "num_batches_tracked", &t));
  return v;
}

static void grads(normkit_module_t *m, float *w, float *b) {
  int64_t cs[1] = {C};
  normkit_tensor_t tw = f32(w, 1, cs), tb = f32(b, 1, cs);
  OK(normkit_module_get_grad(m, "weight", &tw));
  OK(normkit_module_get_grad(m, "bias", &tb));
}

int main(int argc, char **argv) {
  int provided = 0, size = 0, total_failures = 0, total_checks = 0;
  MPI_Comm world = MPI_COMM_WORLD;
  normkit_context_t *ctx = NULL;
  normkit_context_config_t ccfg;
  normkit_communicator_t comm;
  normkit_module_t *sync, *plain;
  float x[E], g[E], y[E], dx[E], ry[E], rdx[E], dummy[1];
  int64_t full[3] = {N, C, L}, local[3] = {0, C, L};

  /* The callbacks run on this (the calling) thread: MPI_THREAD_SINGLE is enough. */
  MPI_Init_thread(&argc, &argv, MPI_THREAD_SINGLE, &provided);
  MPI_Comm_rank(world, &rank);
  MPI_Comm_size(world, &size);
  if (size != 3 || provided < MPI_THREAD_SINGLE) {
    fprintf(stderr, "sync_mpi: needs 3 ranks and MPI_THREAD_SINGLE (got %d, %d)\n", size,
            provided);
    MPI_Abort(world, 2);
  }
  local[0] = count[rank];

  OK(normkit_context_config_init(&ccfg));
  ccfg.device.device_type = NORMKIT_DEVICE_CPU;
  ccfg.cpu_num_threads = 1;
  OK(normkit_context_create(&ccfg, &ctx));
  sync = make_module(ctx, NORMKIT_KIND_SYNC);
  plain = make_module(ctx, NORMKIT_KIND_1D);
  OK(normkit_communicator_init(&comm));
  comm.user_data = &world;
  comm.world_size = size;
  comm.rank = rank;
  comm.all_gather = mpi_all_gather;
  comm.all_reduce_sum = mpi_all_reduce_sum;
  OK(normkit_module_set_communicator(sync, &comm));

  for (int step = 0; step <= 3; step++) {
    int eval = step == 3, off = first[rank] * C * L, n = count[rank] * C * L;
    normkit_tensor_t tx = f32(x, 3, full), ty = f32(ry, 3, full), tg = f32(g, 3, full),
                     tdx = f32(rdx, 3, full);
    /* this rank's slice: a view into the same arrays (data pointer at the slice) */
    normkit_tensor_t lx = f32(n ? x + off : dummy, 3, local), ly = f32(n ? y + off : dummy, 3, local);
    normkit_tensor_t lg = f32(n ? g + off : dummy, 3, local), ldx = f32(n ? dx + off : dummy, 3, local);
    float rm[C], rv[C], prm[C], prv[C], gw[C], gb[C], pgw[C], pgb[C], sum[2 * C];
    for (int i = 0; i < E; i++) {
      x[i] = (float)(sin(0.37 * i + step) * (1 + (i % C)) + 0.1 * step * (i % 5));
      g[i] = (float)(cos(0.23 * i - step) - 0.1 * (i % 3));
    }
    if (eval) {
      OK(normkit_module_set_training(sync, false));
      OK(normkit_module_set_training(plain, false));
    }
    OK(normkit_module_forward(ctx, sync, &lx, &ly));
    OK(normkit_module_forward(ctx, plain, &tx, &ty));
    close_to("y", step, y + off, ry + off, n);
    if (!eval) {
      OK(normkit_module_zero_grad(sync));
      OK(normkit_module_zero_grad(plain));
      OK(normkit_module_backward(ctx, sync, &lx, &lg, &ldx));
      OK(normkit_module_backward(ctx, plain, &tx, &tg, &tdx));
      close_to("dx", step, dx + off, rdx + off, n);
      grads(sync, gw, gb);
      grads(plain, pgw, pgb);
      memcpy(sum, gw, sizeof gw);
      memcpy(sum + C, gb, sizeof gb);
      MPI_Allreduce(MPI_IN_PLACE, sum, 2 * C, MPI_FLOAT, MPI_SUM, world);
      close_to("sum over ranks of grad_weight", step, sum, pgw, C);
      close_to("sum over ranks of grad_bias", step, sum + C, pgb, C);
    }
    state(ctx, sync, "running_mean", rm);
    state(ctx, sync, "running_var", rv);
    state(ctx, plain, "running_mean", prm);
    state(ctx, plain, "running_var", prv);
    close_to("running_mean", step, rm, prm, C);
    close_to("running_var", step, rv, prv, C);
    checks++;
    if (counter(ctx, sync) != counter(ctx, plain) || counter(ctx, sync) != (eval ? 3 : step + 1)) {
      failures++;
      fprintf(stderr, "rank %d step %d: counter %lld, reference %lld\n", rank, step,
              (long long)counter(ctx, sync), (long long)counter(ctx, plain));
    }
  }

  normkit_module_destroy(sync);
  normkit_module_destroy(plain);
  normkit_context_destroy(ctx);
  MPI_Allreduce(&failures, &total_failures, 1, MPI_INT, MPI_SUM, world);
  MPI_Allreduce(&checks, &total_checks, 1, MPI_INT, MPI_SUM, world);
  if (rank == 0) {
    if (total_failures)
      fprintf(stderr, "sync_mpi: %d of %d checks failed\n", total_failures, total_checks);
    else
      printf("sync_mpi: all %d checks passed on 3 ranks\n", total_checks);
  }
  MPI_Finalize();
  return total_failures ? 1 : 0;
}
