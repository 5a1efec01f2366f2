/* C11 test of the normkit C ABI: layout, versions, golden values for every layer (the verified
 * PyTorch numbers of shared/spec/pytorch-semantics.md), train/eval with running statistics,
 * strides/byte_offset/misalignment/in-place, and every documented error path.
 * Built and run by tests/capi_link.rs against the cdylib and the staticlib (and valgrind). */
#include "normkit.h"

#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The test-only panic hook (deliberately not in the header). */
normkit_status_t normkit_debug_panic(const char *message);

_Static_assert(sizeof(normkit_device_t) == 8, "normkit_device_t size");
_Static_assert(sizeof(normkit_dtype_t) == 4, "normkit_dtype_t size");
_Static_assert(sizeof(normkit_tensor_t) == 48, "normkit_tensor_t size");
_Static_assert(_Alignof(normkit_tensor_t) == 8, "normkit_tensor_t align");
_Static_assert(offsetof(normkit_tensor_t, data) == 0, "data");
_Static_assert(offsetof(normkit_tensor_t, device) == 8, "device");
_Static_assert(offsetof(normkit_tensor_t, device.device_id) == 12, "device_id");
_Static_assert(offsetof(normkit_tensor_t, ndim) == 16, "ndim");
_Static_assert(offsetof(normkit_tensor_t, dtype) == 20, "dtype");
_Static_assert(offsetof(normkit_tensor_t, dtype.bits) == 21, "bits");
_Static_assert(offsetof(normkit_tensor_t, dtype.lanes) == 22, "lanes");
_Static_assert(offsetof(normkit_tensor_t, shape) == 24, "shape");
_Static_assert(offsetof(normkit_tensor_t, strides) == 32, "strides");
_Static_assert(offsetof(normkit_tensor_t, byte_offset) == 40, "byte_offset");

static int failures = 0;
static int checks = 0;

#define CHECK(cond)                                                              \
  do {                                                                           \
    checks++;                                                                    \
    if (!(cond)) {                                                               \
      failures++;                                                                \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);   \
    }                                                                            \
  } while (0)

#define OK(call)                                                                 \
  do {                                                                           \
    normkit_status_t s_ = (call);                                                \
    checks++;                                                                    \
    if (s_ != NORMKIT_STATUS_OK) {                                               \
      failures++;                                                                \
      fprintf(stderr, "%s:%d: %s returned %d (%s): %s\n", __FILE__, __LINE__,    \
              #call, (int)s_, normkit_status_string(s_),                         \
              normkit_last_error_message());                                     \
    }                                                                            \
  } while (0)

/* The call fails with `want`, and the last error names `fn` and contains `needle`. */
#define FAILS(want, fn, needle, call)                                            \
  expect_failure((call), (want), fn, needle, #call, __LINE__)

static void expect_failure(normkit_status_t got, normkit_status_t want, const char *fn,
                           const char *needle, const char *text, int line) {
  const char *msg = normkit_last_error_message();
  checks++;
  if (got != want || msg == NULL || strlen(msg) == 0 || strstr(msg, fn) == NULL ||
      (needle != NULL && strstr(msg, needle) == NULL)) {
    failures++;
    fprintf(stderr, "line %d: %s returned %d, want %d; message \"%s\" (want \"%s\" and \"%s\")\n",
            line, text, (int)got, (int)want, msg ? msg : "(null)", fn, needle ? needle : "");
  }
  normkit_clear_last_error();
}

static void close_to(const double *got, const double *want, size_t n, double tol, int line) {
  for (size_t i = 0; i < n; i++) {
    checks++;
    if (!(fabs(got[i] - want[i]) <= tol)) {
      failures++;
      fprintf(stderr, "line %d: element %zu: got %.17g, want %.17g\n", line, i, got[i], want[i]);
    }
  }
}
#define CLOSE(got, want, n) close_to((got), (want), (n), 1e-12, __LINE__)

static normkit_tensor_t f64_tensor(double *data, int32_t ndim, int64_t *shape) {
  normkit_tensor_t t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.device.device_type = NORMKIT_DEVICE_CPU;
  t.ndim = ndim;
  t.dtype.code = NORMKIT_DTYPE_CODE_FLOAT;
  t.dtype.bits = 64;
  t.dtype.lanes = 1;
  t.shape = shape;
  return t;
}

static normkit_context_t *make_cpu_context(int32_t threads) {
  normkit_context_config_t cfg;
  normkit_context_t *ctx = NULL;
  OK(normkit_context_config_init(&cfg));
  cfg.device.device_type = NORMKIT_DEVICE_CPU;
  cfg.cpu_num_threads = threads;
  OK(normkit_context_create(&cfg, &ctx));
  return ctx;
}

/* ---------------------------------------------------------------------------------------- */

static void test_versions(void) {
  uint32_t major = 99, minor = 99, patch = 99;
  char composed[64];
  normkit_version(&major, &minor, &patch);
  CHECK(major == NORMKIT_VERSION_MAJOR);
  CHECK(minor == NORMKIT_VERSION_MINOR);
  CHECK(patch == NORMKIT_VERSION_PATCH);
  snprintf(composed, sizeof composed, "%u.%u.%u", (unsigned)major, (unsigned)minor,
           (unsigned)patch);
  CHECK(strcmp(composed, NORMKIT_VERSION_STRING) == 0);
  CHECK(strcmp(normkit_version_string(), NORMKIT_VERSION_STRING) == 0);
  CHECK(normkit_abi_version() == NORMKIT_ABI_VERSION);
  normkit_version(NULL, NULL, NULL); /* NULLs are skipped */
}

static void test_spin_wait(void) {
  uint64_t before = normkit_cpu_spin_wait();
  normkit_set_cpu_spin_wait(0);
  CHECK(normkit_cpu_spin_wait() == 0);
  normkit_set_cpu_spin_wait(750);
  CHECK(normkit_cpu_spin_wait() == 750);
  normkit_set_cpu_spin_wait(before);
  CHECK(normkit_cpu_spin_wait() == before);
}

static void test_caller_teams(void) {
  bool before = normkit_cpu_caller_teams();
  normkit_set_cpu_caller_teams(false);
  CHECK(!normkit_cpu_caller_teams());
  normkit_set_cpu_caller_teams(true);
  CHECK(normkit_cpu_caller_teams());
  normkit_set_cpu_caller_teams(before);
  CHECK(normkit_cpu_caller_teams() == before);
}

static void test_vector_width(void) {
  uint32_t before = normkit_cpu_vector_width();
  CHECK(before == 0 || before == 256 || before == 512);
  CHECK(normkit_set_cpu_vector_width(256) == NORMKIT_STATUS_OK);
  CHECK(normkit_cpu_vector_width() == 256);
  CHECK(normkit_set_cpu_vector_width(512) == NORMKIT_STATUS_OK);
  CHECK(normkit_cpu_vector_width() == 512);
  CHECK(normkit_set_cpu_vector_width(128) == NORMKIT_STATUS_INVALID_ARGUMENT);
  CHECK(strstr(normkit_last_error_message(), "normkit_set_cpu_vector_width") != NULL);
  CHECK(strstr(normkit_last_error_message(), "got 128") != NULL);
  CHECK(normkit_cpu_vector_width() == 512);
  CHECK(normkit_set_cpu_vector_width(before) == NORMKIT_STATUS_OK);
  CHECK(normkit_cpu_vector_width() == before);
}

static void test_status_strings(void) {
  CHECK(NORMKIT_STATUS_OK == 0);
  CHECK(strcmp(normkit_status_string(NORMKIT_STATUS_OK), "success") == 0);
  CHECK(strcmp(normkit_status_string(NORMKIT_STATUS_NULL_POINTER), "NULL pointer") == 0);
  CHECK(strcmp(normkit_status_string(12345), "unknown status") == 0);
  CHECK(strcmp(normkit_status_string(-1), "unknown status") == 0);
}

static void test_context(void) {
  normkit_context_config_t cfg;
  normkit_context_t *ctx = NULL;
  normkit_context_t *sentinel = (normkit_context_t *)&cfg;
  normkit_device_t dev;
  void *stream = (void *)&dev;

  OK(normkit_context_config_init(&cfg));
  CHECK(cfg.struct_size == sizeof cfg);
  CHECK(cfg.abi_version == NORMKIT_ABI_VERSION);
  CHECK(cfg.device.device_type == NORMKIT_DEVICE_AUTO);

  /* AUTO resolves to CUDA device 0 when the library was built with CUDA and finds a GPU,
     else to the CPU. */
  OK(normkit_context_create(&cfg, &ctx));
  OK(normkit_context_get_device(ctx, &dev));
  CHECK(dev.device_type == NORMKIT_DEVICE_CPU || dev.device_type == NORMKIT_DEVICE_CUDA);
  const int have_cuda = dev.device_type == NORMKIT_DEVICE_CUDA;
  OK(normkit_context_get_stream(ctx, &stream));
  CHECK(stream == NULL);
  if (!have_cuda) { /* a CPU context stores any stream value */
    OK(normkit_context_set_stream(ctx, (void *)0x1234));
    OK(normkit_context_get_stream(ctx, &stream));
    CHECK(stream == (void *)0x1234);
  }
  normkit_context_destroy(ctx);
  normkit_context_destroy(NULL); /* no-op */

  /* Errors; the out-parameter stays untouched. */
  ctx = sentinel;
  FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_context_create", "config",
        normkit_context_create(NULL, &ctx));
  FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_context_create", "out",
        normkit_context_create(&cfg, NULL));
  cfg.device.device_type = NORMKIT_DEVICE_CUDA;
  if (!have_cuda) {
    FAILS(NORMKIT_STATUS_DEVICE_UNAVAILABLE, "normkit_context_create", "CUDA",
          normkit_context_create(&cfg, &ctx));
  }
  cfg.device.device_type = 77;
  FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_context_create", "device_type",
        normkit_context_create(&cfg, &ctx));
  cfg.device.device_type = NORMKIT_DEVICE_CPU;
  cfg.cpu_num_threads = -2;
  FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_context_create", "cpu_num_threads",
        normkit_context_create(&cfg, &ctx));
  /* past the bound (1024): rejected, not a pool of that many threads */
  cfg.cpu_num_threads = 100000;
  FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_context_create", "got 100000",
        normkit_context_create(&cfg, &ctx));
  cfg.cpu_num_threads = 0;
  cfg.abi_version = NORMKIT_ABI_VERSION + 1;
  FAILS(NORMKIT_STATUS_ABI_MISMATCH, "normkit_context_create", "abi_version",
        normkit_context_create(&cfg, &ctx));
  cfg.abi_version = NORMKIT_ABI_VERSION;
  cfg.struct_size = 4;
  FAILS(NORMKIT_STATUS_STRUCT_SIZE, "normkit_context_create", "struct_size",
        normkit_context_create(&cfg, &ctx));
  CHECK(ctx == sentinel);
  FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_context_config_init", "config",
        normkit_context_config_init(NULL));
  FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_context_get_device", "ctx",
        normkit_context_get_device(NULL, &dev));
}

static void test_last_error(void) {
  char small[8];
  char big[512];
  size_t needed = 0;
  normkit_context_t *ctx = NULL;
  normkit_clear_last_error();
  CHECK(strcmp(normkit_last_error_message(), "") == 0);
  CHECK(normkit_context_create(NULL, &ctx) == NORMKIT_STATUS_NULL_POINTER);
  CHECK(normkit_last_error_copy(small, sizeof small, &needed) == NORMKIT_STATUS_BUFFER_TOO_SMALL);
  CHECK(needed == strlen(normkit_last_error_message()) + 1);
  CHECK(strlen(small) == sizeof small - 1);
  CHECK(normkit_last_error_copy(NULL, 0, &needed) == NORMKIT_STATUS_BUFFER_TOO_SMALL);
  OK(normkit_last_error_copy(big, sizeof big, &needed));
  CHECK(strcmp(big, normkit_last_error_message()) == 0);
  CHECK(strstr(big, "normkit_context_create: config: must not be NULL") != NULL);
  /* A successful call does not clear it. */
  CHECK(normkit_abi_version() == NORMKIT_ABI_VERSION);
  CHECK(strlen(normkit_last_error_message()) > 0);
  normkit_clear_last_error();
  CHECK(strcmp(normkit_last_error_message(), "") == 0);
}

static void test_panic_boundary(void) {
  FAILS(NORMKIT_STATUS_PANIC, "normkit_debug_panic", "boom from C",
        normkit_debug_panic("boom from C"));
  FAILS(NORMKIT_STATUS_PANIC, "normkit_debug_panic", "panic", normkit_debug_panic(NULL));
}

/* ---------------------------------------------------------------------------------------- */
/* Functional ops: golden values of the spec's worked examples (float64). */

static void test_functional_batch_norm(normkit_context_t *ctx) {
  double x[6] = {1, 10, 2, 20, 4, 60}, y[6], rm[2] = {0, 0}, rv[2] = {1, 1};
  double sm[2], si[2];
  int64_t xs[2] = {3, 2}, cs[1] = {2};
  int64_t nbt = 0;
  normkit_tensor_t tx = f64_tensor(x, 2, xs), ty = f64_tensor(y, 2, xs);
  normkit_tensor_t trm = f64_tensor(rm, 1, cs), trv = f64_tensor(rv, 1, cs);
  normkit_tensor_t tsm = f64_tensor(sm, 1, cs), tsi = f64_tensor(si, 1, cs);
  normkit_batch_norm_args_t a;
  const double y_train[6] = {-1.069041531450298, -0.9258200898530504, -0.2672603828625746,
                             -0.4629100449265252, 1.3363019143128718, 1.3887301347795757};
  const double rm_want[2] = {0.23333333333333336, 3.0}, rv_want[2] = {1.1333333333333333, 70.9};
  const double y_eval[6] = {0.7201547576015879, 0.8313327540394195, 1.6594870501253982,
                            2.018950974095733,  3.538151635173019,  6.769423854320988};
  const double sm_want[2] = {7.0 / 3.0, 30.0};

  OK(normkit_batch_norm_args_init(&a));
  CHECK(a.momentum == 0.1 && a.eps == 1e-5 && !a.momentum_cumulative);
  a.x = &tx;
  a.y = &ty;
  a.running_mean = &trm;
  a.running_var = &trv;
  a.num_batches_tracked = &nbt;
  a.save_mean = &tsm;
  a.save_invstd = &tsi;
  OK(normkit_batch_norm_forward_training(ctx, &a));
  CLOSE(y, y_train, 6);
  CLOSE(rm, rm_want, 2);
  CLOSE(rv, rv_want, 2);
  CLOSE(sm, sm_want, 2);
  CHECK(nbt == 1);
  CHECK(fabs(si[0] - 1.0 / sqrt(14.0 / 9.0 + 1e-5)) < 1e-12);
  OK(normkit_batch_norm_forward_inference(ctx, &a));
  CLOSE(y, y_eval, 6);
  CLOSE(rm, rm_want, 2); /* inference does not modify the running statistics */
  CHECK(nbt == 1);

  /* momentum=None: x then 2x gives a cumulative average. */
  {
    double x2[6];
    const double rm_c[2] = {3.5, 45.0}, rv_c[2] = {5.833333333333332, 1750.0};
    normkit_tensor_t tx2 = f64_tensor(x2, 2, xs);
    for (int i = 0; i < 6; i++) x2[i] = 2 * x[i];
    rm[0] = rm[1] = 0;
    rv[0] = rv[1] = 1;
    nbt = 0;
    a.momentum_cumulative = true;
    a.save_mean = a.save_invstd = NULL;
    OK(normkit_batch_norm_forward_training(ctx, &a));
    a.x = &tx2;
    OK(normkit_batch_norm_forward_training(ctx, &a));
    CLOSE(rm, rm_c, 2);
    close_to(rv, rv_c, 2, 1e-9, __LINE__);
    CHECK(nbt == 2);
    a.momentum_cumulative = false;
    a.num_batches_tracked = NULL;
    FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_batch_norm_forward_training", "momentum",
          (a.momentum_cumulative = true, normkit_batch_norm_forward_training(ctx, &a)));
    a.momentum_cumulative = false;
    a.x = &tx;
  }

  /* Errors. */
  {
    normkit_batch_norm_args_t bad = a;
    double one[2] = {1, 2}, four[4] = {0, 0, 0, 0};
    int64_t s12[2] = {1, 2}, s4[1] = {4};
    normkit_tensor_t t12 = f64_tensor(one, 2, s12), t4 = f64_tensor(four, 1, s4);
    FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_batch_norm_forward_training", "ctx",
          normkit_batch_norm_forward_training(NULL, &a));
    FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_batch_norm_forward_training", "args",
          normkit_batch_norm_forward_training(ctx, NULL));
    bad.x = NULL;
    FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_batch_norm_forward_training", "x",
          normkit_batch_norm_forward_training(ctx, &bad));
    bad = a;
    bad.struct_size = 8;
    FAILS(NORMKIT_STATUS_STRUCT_SIZE, "normkit_batch_norm_forward_training", "struct_size",
          normkit_batch_norm_forward_training(ctx, &bad));
    bad = a;
    bad.x = &t12;
    bad.y = &t12;
    bad.running_mean = bad.running_var = NULL;
    FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_batch_norm_forward_training",
          "more than 1 value per channel", normkit_batch_norm_forward_training(ctx, &bad));
    bad = a;
    bad.running_mean = &t4;
    FAILS(NORMKIT_STATUS_SHAPE_MISMATCH, "normkit_batch_norm_forward_training", "running_mean",
          normkit_batch_norm_forward_training(ctx, &bad));
    bad = a;
    bad.eps = -1;
    FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_batch_norm_forward_inference", "eps",
          normkit_batch_norm_forward_inference(ctx, &bad));
    bad = a;
    bad.running_mean = NULL;
    FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_batch_norm_forward_inference",
          "running_mean", normkit_batch_norm_forward_inference(ctx, &bad));
    bad = a;
    bad.save_mean = &t4;
    FAILS(NORMKIT_STATUS_SHAPE_MISMATCH, "normkit_batch_norm_forward_training", "save_mean",
          normkit_batch_norm_forward_training(ctx, &bad));
  }
}

static void test_functional_instance_norm(normkit_context_t *ctx) {
  double x[12] = {1, 2, 4, 0, 0, 3, 2, 2, 5, 1, 1, 1}, y[12], rm[2] = {0, 0}, rv[2] = {1, 1};
  double sm[4];
  int64_t xs[3] = {2, 2, 3}, cs[1] = {2}, ss[1] = {4};
  normkit_tensor_t tx = f64_tensor(x, 3, xs), ty = f64_tensor(y, 3, xs);
  normkit_tensor_t trm = f64_tensor(rm, 1, cs), trv = f64_tensor(rv, 1, cs);
  normkit_tensor_t tsm = f64_tensor(sm, 1, ss);
  normkit_instance_norm_args_t a;
  const double y_want[12] = {-1.0690415314502977, -0.2672603828625746, 1.3363019143128716,
                             -0.7071050134262237, -0.7071050134262237, 1.4142100268524473,
                             -0.7071050134262238, -0.7071050134262238, 1.4142100268524471,
                             0.0, 0.0, 0.0};
  const double rm_want[2] = {0.2666666666666667, 0.1}, rv_want[2] = {1.1666666666666667, 1.05};
  const double sm_want[4] = {7.0 / 3.0, 1.0, 3.0, 1.0};
  OK(normkit_instance_norm_args_init(&a));
  CHECK(a.use_input_stats);
  a.x = &tx;
  a.y = &ty;
  a.running_mean = &trm;
  a.running_var = &trv;
  a.save_mean = &tsm;
  OK(normkit_instance_norm_forward(ctx, &a));
  CLOSE(y, y_want, 12);
  CLOSE(rm, rm_want, 2);
  CLOSE(rv, rv_want, 2);
  CLOSE(sm, sm_want, 4);
  a.use_input_stats = false;
  a.running_mean = NULL;
  FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_instance_norm_forward", "running_mean",
        normkit_instance_norm_forward(ctx, &a));
}

static void test_functional_layer_norm(normkit_context_t *ctx) {
  double x[4] = {1, 2, 4, 8}, y[4], w[4] = {1, 1, 1, 1}, b[4] = {0, 0, 0, 0}, sm[1], si[1];
  int64_t xs[2] = {1, 4}, ws[1] = {4}, ss[1] = {1};
  normkit_tensor_t tx = f64_tensor(x, 2, xs), ty = f64_tensor(y, 2, xs);
  normkit_tensor_t tw = f64_tensor(w, 1, ws), tb = f64_tensor(b, 1, ws);
  normkit_tensor_t tsm = f64_tensor(sm, 1, ss), tsi = f64_tensor(si, 1, ss);
  normkit_layer_norm_args_t a;
  const double want[4] = {-1.0257545754961932, -0.6527529116793956, 0.09325041595419938,
                          1.5852570712213894};
  OK(normkit_layer_norm_args_init(&a));
  CHECK(a.normalized_ndim == 1);
  a.x = &tx;
  a.y = &ty;
  a.weight = &tw;
  a.bias = &tb;
  a.save_mean = &tsm;
  a.save_invstd = &tsi;
  OK(normkit_layer_norm_forward(ctx, &a));
  CLOSE(y, want, 4);
  CHECK(fabs(sm[0] - 3.75) < 1e-12);
  a.normalized_ndim = 3;
  FAILS(NORMKIT_STATUS_SHAPE_MISMATCH, "normkit_layer_norm_forward", "normalized_ndim",
        normkit_layer_norm_forward(ctx, &a));
  a.normalized_ndim = 2;
  FAILS(NORMKIT_STATUS_SHAPE_MISMATCH, "normkit_layer_norm_forward", "weight",
        normkit_layer_norm_forward(ctx, &a));
}

static void test_functional_group_norm(normkit_context_t *ctx) {
  double x[8], y[8], sm[2];
  int64_t xs[3] = {1, 4, 2}, ss[1] = {2};
  normkit_tensor_t tx = f64_tensor(x, 3, xs), ty = f64_tensor(y, 3, xs);
  normkit_tensor_t tsm = f64_tensor(sm, 1, ss);
  normkit_group_norm_args_t a;
  const double want[8] = {-0.9999995918369845, -0.7142854227407032, 0.14285708454814064,
                          1.571427930029547,   -1.2561833513793492, -0.526786566707469,
                          0.3646983923359401,  1.418271525750878};
  for (int i = 0; i < 8; i++) x[i] = (double)(i * i);
  OK(normkit_group_norm_args_init(&a));
  a.x = &tx;
  a.y = &ty;
  a.num_groups = 2;
  a.save_mean = &tsm;
  OK(normkit_group_norm_forward(ctx, &a));
  CLOSE(y, want, 8);
  CHECK(fabs(sm[0] - 3.5) < 1e-12 && fabs(sm[1] - 31.5) < 1e-12);
  a.num_groups = 1;
  FAILS(NORMKIT_STATUS_SHAPE_MISMATCH, "normkit_group_norm_forward", "save_mean",
        normkit_group_norm_forward(ctx, &a));
  a.save_mean = NULL;
  a.num_groups = 3;
  FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_group_norm_forward", "num_groups",
        normkit_group_norm_forward(ctx, &a));
  a.num_groups = -1;
  FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_group_norm_forward", "num_groups",
        normkit_group_norm_forward(ctx, &a));
}

static void test_functional_lrn(normkit_context_t *ctx) {
  double x[4] = {1, 2, 3, 4}, y[4];
  int64_t xs[3] = {1, 4, 1};
  normkit_tensor_t tx = f64_tensor(x, 3, xs), ty = f64_tensor(y, 3, xs);
  normkit_local_response_norm_args_t a;
  const double want2[4] = {0.6666666666666666, 0.5714285714285714, 0.4, 0.2962962962962963};
  const double want3[4] = {0.37499999999999994, 0.3529411764705882, 0.28125,
                           0.42857142857142855};
  OK(normkit_local_response_norm_args_init(&a));
  CHECK(a.alpha == 1e-4 && a.beta == 0.75 && a.k == 1.0);
  a.x = &tx;
  a.y = &ty;
  FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_local_response_norm_forward", "size",
        normkit_local_response_norm_forward(ctx, &a));
  a.alpha = a.beta = a.k = 1.0;
  a.size = 2;
  OK(normkit_local_response_norm_forward(ctx, &a));
  CLOSE(y, want2, 4);
  a.size = 3;
  OK(normkit_local_response_norm_forward(ctx, &a));
  CLOSE(y, want3, 4);
}

/* Memory layouts: strides, byte_offset, misaligned data, in place, f32/f16 dtypes. */
static void test_layouts(normkit_context_t *ctx) {
  const double want[4] = {-1.0257545754961932, -0.6527529116793956, 0.09325041595419938,
                          1.5852570712213894};
  normkit_layer_norm_args_t a;
  OK(normkit_layer_norm_args_init(&a));

  { /* Transposed input: a (2,4) tensor stored as (4,2); both rows equal. */
    double x[8] = {1, 1, 2, 2, 4, 4, 8, 8}, y[8];
    int64_t shape[2] = {2, 4}, strides[2] = {1, 2};
    normkit_tensor_t tx = f64_tensor(x, 2, shape), ty = f64_tensor(y, 2, shape);
    tx.strides = strides;
    a.x = &tx;
    a.y = &ty;
    OK(normkit_layer_norm_forward(ctx, &a));
    CLOSE(y, want, 4);
    CLOSE(y + 4, want, 4);
  }
  { /* byte_offset, and data misaligned for double (offset 1 byte). */
    unsigned char xb[1 + 4 * sizeof(double)], yb[3 + 4 * sizeof(double)];
    double x[4] = {1, 2, 4, 8}, y[4];
    int64_t shape[2] = {1, 4};
    normkit_tensor_t tx = f64_tensor((double *)(void *)xb, 2, shape);
    normkit_tensor_t ty = f64_tensor((double *)(void *)yb, 2, shape);
    memcpy(xb + 1, x, sizeof x);
    memset(yb, 0x5a, sizeof yb);
    tx.byte_offset = 1;
    ty.byte_offset = 3;
    a.x = &tx;
    a.y = &ty;
    OK(normkit_layer_norm_forward(ctx, &a));
    memcpy(y, yb + 3, sizeof y);
    CLOSE(y, want, 4);
    CHECK(yb[0] == 0x5a && yb[1] == 0x5a && yb[2] == 0x5a); /* bytes before the view untouched */
  }
  { /* In place: y is exactly x. */
    double x[4] = {1, 2, 4, 8};
    int64_t shape[2] = {1, 4};
    normkit_tensor_t tx = f64_tensor(x, 2, shape);
    a.x = &tx;
    a.y = &tx;
    OK(normkit_layer_norm_forward(ctx, &a));
    CLOSE(x, want, 4);
  }
  { /* Partial overlap is an error; so are negative strides and overlapping outputs. */
    double buf[6] = {1, 2, 4, 8, 0, 0};
    int64_t shape[2] = {1, 4}, neg[2] = {4, -1}, zero[2] = {4, 0};
    normkit_tensor_t tx = f64_tensor(buf, 2, shape), ty = f64_tensor(buf + 2, 2, shape);
    a.x = &tx;
    a.y = &ty;
    FAILS(NORMKIT_STATUS_UNSUPPORTED_LAYOUT, "normkit_layer_norm_forward", "overlaps",
          normkit_layer_norm_forward(ctx, &a));
    ty = f64_tensor(buf, 2, shape);
    tx.strides = neg;
    tx.data = buf + 3;
    FAILS(NORMKIT_STATUS_UNSUPPORTED_LAYOUT, "normkit_layer_norm_forward", "negative",
          normkit_layer_norm_forward(ctx, &a));
    {
      double out[4];
      normkit_tensor_t tout = f64_tensor(out, 2, shape);
      tx = f64_tensor(buf, 2, shape);
      tout.strides = zero;
      a.y = &tout;
      FAILS(NORMKIT_STATUS_UNSUPPORTED_LAYOUT, "normkit_layer_norm_forward", "strides",
            normkit_layer_norm_forward(ctx, &a));
    }
  }
  { /* f32 and f16 (binary16 bit patterns of 1, 2, 4, 8). */
    float xf[4] = {1, 2, 4, 8}, yf[4];
    uint16_t xh[4] = {0x3c00, 0x4000, 0x4400, 0x4800}, yh[4];
    int64_t shape[2] = {1, 4};
    normkit_tensor_t tx = f64_tensor((double *)(void *)xf, 2, shape);
    normkit_tensor_t ty = f64_tensor((double *)(void *)yf, 2, shape);
    tx.dtype.bits = ty.dtype.bits = 32;
    a.x = &tx;
    a.y = &ty;
    OK(normkit_layer_norm_forward(ctx, &a));
    for (int i = 0; i < 4; i++) CHECK(fabs(yf[i] - want[i]) < 1e-5);
    tx.data = xh;
    ty.data = yh;
    tx.dtype.bits = ty.dtype.bits = 16;
    OK(normkit_layer_norm_forward(ctx, &a));
    CHECK(yh[3] == 0x3e57); /* 1.58525... rounded to binary16 = 1.5849609375 */
  }
  { /* Tensor validation errors. */
    double x[4] = {1, 2, 4, 8}, y[4];
    int64_t shape[2] = {1, 4}, bad_shape[2] = {1, -4}, other[2] = {2, 2};
    normkit_tensor_t tx = f64_tensor(x, 2, shape), ty = f64_tensor(y, 2, shape), t;
    a.x = &tx;
    a.y = &ty;
    t = tx;
    a.x = &t;
    t.dtype.code = 7;
    FAILS(NORMKIT_STATUS_UNSUPPORTED_DTYPE, "normkit_layer_norm_forward", "x: dtype",
          normkit_layer_norm_forward(ctx, &a));
    t = tx;
    t.dtype.lanes = 2;
    FAILS(NORMKIT_STATUS_UNSUPPORTED_DTYPE, "normkit_layer_norm_forward", "lanes",
          normkit_layer_norm_forward(ctx, &a));
    t = tx;
    t.dtype.code = NORMKIT_DTYPE_CODE_INT;
    FAILS(NORMKIT_STATUS_UNSUPPORTED_DTYPE, "normkit_layer_norm_forward", "int64",
          normkit_layer_norm_forward(ctx, &a));
    t = tx;
    t.ndim = 9;
    FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_layer_norm_forward", "ndim",
          normkit_layer_norm_forward(ctx, &a));
    t.ndim = -1;
    FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_layer_norm_forward", "ndim",
          normkit_layer_norm_forward(ctx, &a));
    t = tx;
    t.shape = bad_shape;
    FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_layer_norm_forward", "negative",
          normkit_layer_norm_forward(ctx, &a));
    t = tx;
    t.shape = NULL;
    FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_layer_norm_forward", "x.shape",
          normkit_layer_norm_forward(ctx, &a));
    t = tx;
    t.data = NULL;
    FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_layer_norm_forward", "x.data",
          normkit_layer_norm_forward(ctx, &a));
    t = tx;
    t.device.device_type = NORMKIT_DEVICE_CUDA;
    FAILS(NORMKIT_STATUS_DEVICE_MISMATCH, "normkit_layer_norm_forward", "device",
          normkit_layer_norm_forward(ctx, &a));
    t = tx;
    t.shape = other;
    FAILS(NORMKIT_STATUS_SHAPE_MISMATCH, "normkit_layer_norm_forward", "output",
          normkit_layer_norm_forward(ctx, &a));
    t = tx;
    t.dtype.bits = 32;
    FAILS(NORMKIT_STATUS_UNSUPPORTED_DTYPE, "normkit_layer_norm_forward", "dtype",
          normkit_layer_norm_forward(ctx, &a));
  }
}

/* ---------------------------------------------------------------------------------------- */
/* Modules. */

static void get_state(normkit_context_t *ctx, normkit_module_t *m, const char *name,
                      double *out, int64_t n) {
  int64_t shape[1];
  normkit_tensor_t t;
  shape[0] = n;
  t = f64_tensor(out, 1, shape);
  OK(normkit_module_get_state(ctx, m, name, &t));
}

static int64_t get_counter(normkit_context_t *ctx, normkit_module_t *m) {
  int64_t v = -1, shape[1] = {1};
  normkit_tensor_t t = f64_tensor(NULL, 1, shape);
  t.data = &v;
  t.dtype.code = NORMKIT_DTYPE_CODE_INT;
  OK(normkit_module_get_state(ctx, m, "num_batches_tracked", &t));
  return v;
}

static void test_module_batch_norm(normkit_context_t *ctx) {
  double x[6] = {1, 10, 2, 20, 4, 60}, y[6], rm[2], rv[2];
  int64_t xs[2] = {3, 2}, x4[4] = {3, 2, 1, 1};
  normkit_tensor_t tx = f64_tensor(x, 2, xs), ty = f64_tensor(y, 2, xs);
  normkit_batch_norm_config_t cfg;
  normkit_module_t *m = NULL, *sentinel = (normkit_module_t *)&cfg, *out = sentinel;
  const char *name = NULL;
  bool flag = false;
  size_t count = 0;
  int64_t numel = 0;
  const double y_train[6] = {-1.069041531450298, -0.9258200898530504, -0.2672603828625746,
                             -0.4629100449265252, 1.3363019143128718, 1.3887301347795757};
  const double rm_want[2] = {0.23333333333333336, 3.0}, rv_want[2] = {1.1333333333333333, 70.9};
  const double y_eval[6] = {0.7201547576015879, 0.8313327540394195, 1.6594870501253982,
                            2.018950974095733,  3.538151635173019,  6.769423854320988};

  OK(normkit_batch_norm_config_init(&cfg));
  CHECK(cfg.eps == 1e-5 && cfg.momentum == 0.1 && cfg.affine && cfg.track_running_stats);
  FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_batch_norm_create", "kind",
        normkit_batch_norm_create(ctx, &cfg, &out));
  cfg.kind = 42;
  FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_batch_norm_create", "kind",
        normkit_batch_norm_create(ctx, &cfg, &out));
  cfg.kind = NORMKIT_KIND_1D;
  cfg.num_features = -1;
  FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_batch_norm_create", "num_features",
        normkit_batch_norm_create(ctx, &cfg, &out));
  cfg.num_features = 2;
  cfg.param_dtype.bits = 8;
  FAILS(NORMKIT_STATUS_UNSUPPORTED_DTYPE, "normkit_batch_norm_create", "param_dtype",
        normkit_batch_norm_create(ctx, &cfg, &out));
  cfg.param_dtype.bits = 64;
  cfg.struct_size = 3;
  FAILS(NORMKIT_STATUS_STRUCT_SIZE, "normkit_batch_norm_create", "struct_size",
        normkit_batch_norm_create(ctx, &cfg, &out));
  cfg.struct_size = sizeof cfg;
  CHECK(out == sentinel);
  OK(normkit_batch_norm_create(ctx, &cfg, &m));

  OK(normkit_module_name(m, &name));
  CHECK(strcmp(name, "BatchNorm1d") == 0);
  OK(normkit_module_is_training(m, &flag));
  CHECK(flag);
  OK(normkit_module_state_count(m, &count));
  CHECK(count == 5);
  OK(normkit_module_state_name(m, 4, &name));
  CHECK(strcmp(name, "num_batches_tracked") == 0);
  FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_module_state_name", "index",
        normkit_module_state_name(m, 5, &name));
  OK(normkit_module_state_numel(m, "running_var", &numel));
  CHECK(numel == 2);

  /* train step, then eval */
  OK(normkit_module_forward(ctx, m, &tx, &ty));
  CLOSE(y, y_train, 6);
  get_state(ctx, m, "running_mean", rm, 2);
  get_state(ctx, m, "running_var", rv, 2);
  CLOSE(rm, rm_want, 2);
  CLOSE(rv, rv_want, 2);
  CHECK(get_counter(ctx, m) == 1);
  OK(normkit_module_set_training(m, false));
  OK(normkit_module_forward(ctx, m, &tx, &ty));
  CLOSE(y, y_eval, 6);
  CHECK(get_counter(ctx, m) == 1);

  /* state round trip: write running stats and the counter, read them back */
  {
    double w[2] = {2, 3}, back[2];
    int64_t ws[1] = {2}, n = 41, one[1] = {1};
    normkit_tensor_t tw = f64_tensor(w, 1, ws), tn = f64_tensor(NULL, 1, one);
    tn.data = &n;
    tn.dtype.code = NORMKIT_DTYPE_CODE_INT;
    OK(normkit_module_set_state(ctx, m, "weight", &tw));
    get_state(ctx, m, "weight", back, 2);
    CLOSE(back, w, 2);
    OK(normkit_module_set_state(ctx, m, "num_batches_tracked", &tn));
    CHECK(get_counter(ctx, m) == 41);
    FAILS(NORMKIT_STATUS_UNSUPPORTED_DTYPE, "normkit_module_set_state", "int64",
          normkit_module_set_state(ctx, m, "num_batches_tracked", &tw));
    FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_module_get_state", "no_such",
          normkit_module_get_state(ctx, m, "no_such", &tw));
    FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_module_get_state", "name",
          normkit_module_get_state(ctx, m, NULL, &tw));
    ws[0] = 1;
    FAILS(NORMKIT_STATUS_SHAPE_MISMATCH, "normkit_module_get_state", "elements",
          normkit_module_get_state(ctx, m, "weight", &tw));
    FAILS(NORMKIT_STATUS_SHAPE_MISMATCH, "normkit_module_set_state", "elements",
          normkit_module_set_state(ctx, m, "bias", &tw));
    OK(normkit_module_reset_parameters(m));
    CHECK(get_counter(ctx, m) == 0);
  }

  /* shapes that disagree with the kind or the configuration */
  {
    double x3[6] = {1, 2, 3, 4, 5, 6}, y3[6];
    int64_t s3[2] = {2, 3};
    normkit_tensor_t t3 = f64_tensor(x3, 2, s3), u3 = f64_tensor(y3, 2, s3);
    normkit_tensor_t t4 = f64_tensor(x, 4, x4), u4 = f64_tensor(y, 4, x4);
    FAILS(NORMKIT_STATUS_SHAPE_MISMATCH, "normkit_module_forward", "BatchNorm1d",
          normkit_module_forward(ctx, m, &t4, &u4));
    FAILS(NORMKIT_STATUS_SHAPE_MISMATCH, "normkit_module_forward", "elements",
          normkit_module_forward(ctx, m, &t3, &u3));
    FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_module_forward", "module",
          normkit_module_forward(ctx, NULL, &t3, &u3));
    FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_module_forward", "y",
          normkit_module_forward(ctx, m, &t3, NULL));
  }
  normkit_module_destroy(m);
  normkit_module_destroy(NULL);

  /* Lazy: state cannot be read before the first input; the first input materialises it. */
  cfg.lazy = true;
  cfg.kind = NORMKIT_KIND_2D;
  OK(normkit_batch_norm_create(ctx, &cfg, &m));
  OK(normkit_module_is_initialized(m, &flag));
  CHECK(!flag);
  OK(normkit_module_name(m, &name));
  CHECK(strcmp(name, "LazyBatchNorm2d") == 0);
  FAILS(NORMKIT_STATUS_NOT_INITIALIZED, "normkit_module_state_numel", "running_mean",
        normkit_module_state_numel(m, "running_mean", &numel));
  FAILS(NORMKIT_STATUS_NOT_INITIALIZED, "normkit_module_get_state", "weight",
        normkit_module_get_state(ctx, m, "weight", &tx));
  {
    normkit_tensor_t t4 = f64_tensor(x, 4, x4), u4 = f64_tensor(y, 4, x4);
    OK(normkit_module_forward(ctx, m, &t4, &u4));
    CLOSE(y, y_train, 6);
  }
  OK(normkit_module_is_initialized(m, &flag));
  CHECK(flag);
  OK(normkit_module_name(m, &name));
  CHECK(strcmp(name, "BatchNorm2d") == 0);
  get_state(ctx, m, "running_var", rv, 2);
  CLOSE(rv, rv_want, 2);
  normkit_module_destroy(m);

  cfg.kind = NORMKIT_KIND_SYNC;
  FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_batch_norm_create", "lazy",
        normkit_batch_norm_create(ctx, &cfg, &out));
  cfg.lazy = false;
  OK(normkit_batch_norm_create(ctx, &cfg, &m));
  OK(normkit_module_name(m, &name));
  CHECK(strcmp(name, "SyncBatchNorm") == 0);
  OK(normkit_module_forward(ctx, m, &tx, &ty));
  CLOSE(y, y_train, 6);
  normkit_module_destroy(m);
}

static void test_module_instance_norm(normkit_context_t *ctx) {
  double x[12] = {1, 2, 4, 0, 0, 3, 2, 2, 5, 1, 1, 1}, y[12], rm[2], rv[2];
  int64_t xs[3] = {2, 2, 3};
  normkit_tensor_t tx = f64_tensor(x, 3, xs), ty = f64_tensor(y, 3, xs);
  normkit_instance_norm_config_t cfg;
  normkit_module_t *m = NULL;
  bool flag = true;
  const double y_want[12] = {-1.0690415314502977, -0.2672603828625746, 1.3363019143128716,
                             -0.7071050134262237, -0.7071050134262237, 1.4142100268524473,
                             -0.7071050134262238, -0.7071050134262238, 1.4142100268524471,
                             0.0, 0.0, 0.0};
  const double rm_want[2] = {0.2666666666666667, 0.1}, rv_want[2] = {1.1666666666666667, 1.05};
  OK(normkit_instance_norm_config_init(&cfg));
  CHECK(!cfg.affine && !cfg.track_running_stats && !cfg.lazy);
  cfg.kind = NORMKIT_KIND_1D;
  cfg.num_features = 2;
  cfg.track_running_stats = true;
  cfg.param_dtype.bits = 64;
  OK(normkit_instance_norm_create(ctx, &cfg, &m));
  OK(normkit_module_forward(ctx, m, &tx, &ty));
  CLOSE(y, y_want, 12);
  get_state(ctx, m, "running_mean", rm, 2);
  get_state(ctx, m, "running_var", rv, 2);
  CLOSE(rm, rm_want, 2);
  CLOSE(rv, rv_want, 2);
  normkit_module_destroy(m);

  OK(normkit_lazy_instance_norm_config_init(&cfg));
  CHECK(cfg.lazy && cfg.affine && cfg.track_running_stats);
  cfg.kind = NORMKIT_KIND_1D;
  cfg.param_dtype.bits = 64;
  OK(normkit_instance_norm_create(ctx, &cfg, &m));
  OK(normkit_module_is_initialized(m, &flag));
  CHECK(!flag);
  FAILS(NORMKIT_STATUS_NOT_INITIALIZED, "normkit_module_get_state", "LazyInstanceNorm1d",
        normkit_module_get_state(ctx, m, "running_mean", &tx));
  OK(normkit_module_forward(ctx, m, &tx, &ty));
  CLOSE(y, y_want, 12);
  normkit_module_destroy(m);
  cfg.kind = NORMKIT_KIND_SYNC;
  FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_instance_norm_create", "kind",
        normkit_instance_norm_create(ctx, &cfg, &m));
}

static void test_module_group_layer_lrn(normkit_context_t *ctx) {
  normkit_module_t *m = NULL;
  { /* GroupNorm(2, 4) */
    double x[8], y[8];
    int64_t xs[3] = {1, 4, 2};
    normkit_tensor_t tx = f64_tensor(x, 3, xs), ty = f64_tensor(y, 3, xs);
    normkit_group_norm_config_t cfg;
    const double want[8] = {-0.9999995918369845, -0.7142854227407032, 0.14285708454814064,
                            1.571427930029547,   -1.2561833513793492, -0.526786566707469,
                            0.3646983923359401,  1.418271525750878};
    for (int i = 0; i < 8; i++) x[i] = (double)(i * i);
    OK(normkit_group_norm_config_init(&cfg));
    cfg.num_groups = 3;
    cfg.num_channels = 4;
    cfg.param_dtype.bits = 64;
    FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_group_norm_create", "num_groups",
          normkit_group_norm_create(ctx, &cfg, &m));
    cfg.num_groups = 2;
    OK(normkit_group_norm_create(ctx, &cfg, &m));
    OK(normkit_module_forward(ctx, m, &tx, &ty));
    CLOSE(y, want, 8);
    normkit_module_destroy(m);
  }
  { /* LayerNorm([4]) */
    double x[4] = {1, 2, 4, 8}, y[4], x5[5] = {1, 2, 3, 4, 5}, y5[5];
    int64_t xs[2] = {1, 4}, s5[2] = {1, 5};
    normkit_tensor_t tx = f64_tensor(x, 2, xs), ty = f64_tensor(y, 2, xs);
    normkit_tensor_t t5 = f64_tensor(x5, 2, s5), u5 = f64_tensor(y5, 2, s5);
    normkit_layer_norm_config_t cfg;
    size_t count = 0;
    const double want[4] = {-1.0257545754961932, -0.6527529116793956, 0.09325041595419938,
                            1.5852570712213894};
    OK(normkit_layer_norm_config_init(&cfg));
    FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_layer_norm_create", "normalized_ndim",
          normkit_layer_norm_create(ctx, &cfg, &m));
    cfg.normalized_ndim = 1;
    cfg.normalized_shape[0] = 4;
    cfg.param_dtype.bits = 64;
    OK(normkit_layer_norm_create(ctx, &cfg, &m));
    OK(normkit_module_state_count(m, &count));
    CHECK(count == 2);
    OK(normkit_module_forward(ctx, m, &tx, &ty));
    CLOSE(y, want, 4);
    FAILS(NORMKIT_STATUS_SHAPE_MISMATCH, "normkit_module_forward", "LayerNorm",
          normkit_module_forward(ctx, m, &t5, &u5));
    normkit_module_destroy(m);
  }
  { /* LocalResponseNorm(2, alpha=1, beta=1, k=1) */
    double x[4] = {1, 2, 3, 4}, y[4];
    int64_t xs[3] = {1, 4, 1};
    normkit_tensor_t tx = f64_tensor(x, 3, xs), ty = f64_tensor(y, 3, xs);
    normkit_local_response_norm_config_t cfg;
    size_t count = 1;
    const double want[4] = {0.6666666666666666, 0.5714285714285714, 0.4, 0.2962962962962963};
    OK(normkit_local_response_norm_config_init(&cfg));
    FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_local_response_norm_create", "size",
          normkit_local_response_norm_create(ctx, &cfg, &m));
    cfg.size = 2;
    cfg.alpha = cfg.beta = cfg.k = 1.0;
    OK(normkit_local_response_norm_create(ctx, &cfg, &m));
    OK(normkit_module_state_count(m, &count));
    CHECK(count == 0);
    OK(normkit_module_forward(ctx, m, &tx, &tx)); /* in place */
    CLOSE(x, want, 4);
    (void)ty;
    normkit_module_destroy(m);
  }
}

/* ---------------------------------------------------------------------------------------- */
/* Backward: golden gradients (spec §2.9), finite differences, modules, error paths. */

/* The spec's worked example: BatchNorm x (3, 2), weight [2, 0.5], bias 0, g. */
static const double bn_x[6] = {1, 10, 2, 20, 4, 60};
static const double bn_g[6] = {1, 0, 0, 1, -1, 2};
static const double bn_dx[6] = {0.22908916406663332,  -0.006613000996075388,
                                -0.3436182832772034,  0.008266250625125437,
                                0.11452911921056969,  -0.0016532496290500485};
static const double bn_dw[2] = {-2.4053434457631697, 2.3145502246326264};
static const double bn_db[2] = {0.0, 3.0};

static void test_functional_backward_batch_norm(normkit_context_t *ctx) {
  double x[6], g[6], y[6], w[2] = {2, 0.5}, sm[2], si[2], dx[6], dw[2], db[2];
  double rm[2] = {0.5, 3}, rv[2] = {2, 70};
  int64_t xs[2] = {3, 2}, cs[1] = {2};
  normkit_tensor_t tx = f64_tensor(x, 2, xs), tg = f64_tensor(g, 2, xs), ty = f64_tensor(y, 2, xs);
  normkit_tensor_t tw = f64_tensor(w, 1, cs), tsm = f64_tensor(sm, 1, cs),
                   tsi = f64_tensor(si, 1, cs);
  normkit_tensor_t tdx = f64_tensor(dx, 2, xs), tdw = f64_tensor(dw, 1, cs),
                   tdb = f64_tensor(db, 1, cs);
  normkit_tensor_t trm = f64_tensor(rm, 1, cs), trv = f64_tensor(rv, 1, cs);
  normkit_batch_norm_args_t fa;
  normkit_norm_backward_args_t b, bad;
  memcpy(x, bn_x, sizeof x);
  memcpy(g, bn_g, sizeof g);

  OK(normkit_batch_norm_args_init(&fa));
  fa.x = &tx;
  fa.y = &ty;
  fa.weight = &tw;
  fa.save_mean = &tsm;
  fa.save_invstd = &tsi;
  OK(normkit_batch_norm_forward_training(ctx, &fa));

  OK(normkit_norm_backward_args_init(&b));
  CHECK(b.struct_size == sizeof b && b.eps == 1e-5 && !b.accumulate && b.grad_input == NULL);
  b.x = &tx;
  b.grad_output = &tg;
  b.weight = &tw;
  b.save_mean = &tsm;
  b.save_invstd = &tsi;
  b.grad_input = &tdx;
  b.grad_weight = &tdw;
  b.grad_bias = &tdb;
  OK(normkit_batch_norm_backward(ctx, &b));
  CLOSE(dx, bn_dx, 6);
  CLOSE(dw, bn_dw, 2);
  CLOSE(db, bn_db, 2);

  /* accumulate adds into grad_weight/grad_bias; grad_input NULL is not computed. */
  b.accumulate = true;
  b.grad_input = NULL;
  OK(normkit_batch_norm_backward(ctx, &b));
  for (int c = 0; c < 2; c++) {
    CHECK(fabs(dw[c] - 2 * bn_dw[c]) < 1e-12);
    CHECK(fabs(db[c] - 2 * bn_db[c]) < 1e-12);
  }
  b.accumulate = false;
  b.grad_input = &tdx;

  /* in place: grad_input may be grad_output itself */
  b.grad_input = &tg;
  OK(normkit_batch_norm_backward(ctx, &b));
  CLOSE(g, bn_dx, 6);
  memcpy(g, bn_g, sizeof g);
  b.grad_input = &tdx;

  /* Frozen BatchNorm: running statistics + eps. dx = g*w/sqrt(rv+eps),
   * dw = sum g*(x-rm)/sqrt(rv+eps), db = sum g. */
  b.save_mean = b.save_invstd = NULL;
  b.running_mean = &trm;
  b.running_var = &trv;
  b.eps = 1e-3;
  OK(normkit_batch_norm_backward(ctx, &b));
  for (int c = 0; c < 2; c++) {
    double r = 1.0 / sqrt(rv[c] + 1e-3), sw = 0, sb = 0;
    for (int n = 0; n < 3; n++) {
      CHECK(fabs(dx[n * 2 + c] - g[n * 2 + c] * w[c] * r) < 1e-12);
      sw += g[n * 2 + c] * (x[n * 2 + c] - rm[c]) * r;
      sb += g[n * 2 + c];
    }
    CHECK(fabs(dw[c] - sw) < 1e-12);
    CHECK(fabs(db[c] - sb) < 1e-12);
  }

  /* Errors: nothing written on failure. */
  {
    double four[4] = {0, 0, 0, 0};
    int64_t s4[1] = {4};
    normkit_tensor_t t4 = f64_tensor(four, 1, s4);
    double before[6];
    memcpy(before, dx, sizeof dx);
    bad = b;
    FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_batch_norm_backward", "ctx",
          normkit_batch_norm_backward(NULL, &b));
    FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_batch_norm_backward", "args",
          normkit_batch_norm_backward(ctx, NULL));
    FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_norm_backward_args_init", "args",
          normkit_norm_backward_args_init(NULL));
    bad.grad_output = NULL;
    FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_batch_norm_backward", "grad_output",
          normkit_batch_norm_backward(ctx, &bad));
    bad = b;
    bad.running_mean = bad.running_var = NULL;
    FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_batch_norm_backward", "save_mean",
          normkit_batch_norm_backward(ctx, &bad));
    bad.save_mean = &tsm;
    FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_batch_norm_backward", "save_invstd",
          normkit_batch_norm_backward(ctx, &bad));
    bad = b;
    bad.running_var = NULL;
    FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_batch_norm_backward", "running_var",
          normkit_batch_norm_backward(ctx, &bad));
    bad = b;
    bad.save_mean = &tsm;
    bad.save_invstd = &tsi;
    FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_batch_norm_backward", "not both",
          normkit_batch_norm_backward(ctx, &bad));
    bad = b;
    bad.eps = -1;
    FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_batch_norm_backward", "eps",
          normkit_batch_norm_backward(ctx, &bad));
    bad = b;
    bad.grad_weight = &t4;
    FAILS(NORMKIT_STATUS_SHAPE_MISMATCH, "normkit_batch_norm_backward", "grad_weight",
          normkit_batch_norm_backward(ctx, &bad));
    bad = b;
    bad.grad_input = &tw;
    FAILS(NORMKIT_STATUS_SHAPE_MISMATCH, "normkit_batch_norm_backward", "grad_input",
          normkit_batch_norm_backward(ctx, &bad));
    bad = b;
    bad.grad_weight = &tdb; /* two outputs, same memory */
    FAILS(NORMKIT_STATUS_UNSUPPORTED_LAYOUT, "normkit_batch_norm_backward", "overlaps",
          normkit_batch_norm_backward(ctx, &bad));
    bad = b;
    bad.struct_size = 4;
    FAILS(NORMKIT_STATUS_STRUCT_SIZE, "normkit_batch_norm_backward", "struct_size",
          normkit_batch_norm_backward(ctx, &bad));
    CLOSE(dx, before, 6);
  }
}

/* Forward of one op family on f64 data with a per-channel (or elementwise) weight. */
typedef void (*forward_fn)(normkit_context_t *ctx, normkit_tensor_t *x, normkit_tensor_t *w,
                           normkit_tensor_t *y, normkit_tensor_t *sm, normkit_tensor_t *si);
/* Its backward from the saved statistics. */
typedef normkit_status_t (*backward_fn)(normkit_context_t *ctx, normkit_tensor_t *x,
                                        normkit_tensor_t *g, normkit_tensor_t *w,
                                        normkit_tensor_t *sm, normkit_tensor_t *si,
                                        normkit_tensor_t *dx, normkit_tensor_t *dw,
                                        normkit_tensor_t *db);

static void fwd_instance(normkit_context_t *ctx, normkit_tensor_t *x, normkit_tensor_t *w,
                         normkit_tensor_t *y, normkit_tensor_t *sm, normkit_tensor_t *si) {
  normkit_instance_norm_args_t a;
  OK(normkit_instance_norm_args_init(&a));
  a.x = x, a.y = y, a.weight = w, a.save_mean = sm, a.save_invstd = si;
  OK(normkit_instance_norm_forward(ctx, &a));
}
static normkit_status_t bwd_instance(normkit_context_t *ctx, normkit_tensor_t *x,
                                     normkit_tensor_t *g, normkit_tensor_t *w,
                                     normkit_tensor_t *sm, normkit_tensor_t *si,
                                     normkit_tensor_t *dx, normkit_tensor_t *dw,
                                     normkit_tensor_t *db) {
  normkit_norm_backward_args_t b;
  OK(normkit_norm_backward_args_init(&b));
  b.x = x, b.grad_output = g, b.weight = w, b.save_mean = sm, b.save_invstd = si;
  b.grad_input = dx, b.grad_weight = dw, b.grad_bias = db;
  return normkit_instance_norm_backward(ctx, &b);
}
static void fwd_group(normkit_context_t *ctx, normkit_tensor_t *x, normkit_tensor_t *w,
                      normkit_tensor_t *y, normkit_tensor_t *sm, normkit_tensor_t *si) {
  normkit_group_norm_args_t a;
  OK(normkit_group_norm_args_init(&a));
  a.num_groups = 2;
  a.x = x, a.y = y, a.weight = w, a.save_mean = sm, a.save_invstd = si;
  OK(normkit_group_norm_forward(ctx, &a));
}
static normkit_status_t bwd_group(normkit_context_t *ctx, normkit_tensor_t *x,
                                  normkit_tensor_t *g, normkit_tensor_t *w, normkit_tensor_t *sm,
                                  normkit_tensor_t *si, normkit_tensor_t *dx,
                                  normkit_tensor_t *dw, normkit_tensor_t *db) {
  normkit_group_norm_backward_args_t b;
  OK(normkit_group_norm_backward_args_init(&b));
  CHECK(b.num_groups == 1 && b.struct_size == sizeof b);
  b.num_groups = 2;
  b.x = x, b.grad_output = g, b.weight = w, b.save_mean = sm, b.save_invstd = si;
  b.grad_input = dx, b.grad_weight = dw, b.grad_bias = db;
  return normkit_group_norm_backward(ctx, &b);
}
static void fwd_layer(normkit_context_t *ctx, normkit_tensor_t *x, normkit_tensor_t *w,
                      normkit_tensor_t *y, normkit_tensor_t *sm, normkit_tensor_t *si) {
  normkit_layer_norm_args_t a;
  OK(normkit_layer_norm_args_init(&a));
  a.normalized_ndim = 1;
  a.x = x, a.y = y, a.weight = w, a.save_mean = sm, a.save_invstd = si;
  OK(normkit_layer_norm_forward(ctx, &a));
}
static normkit_status_t bwd_layer(normkit_context_t *ctx, normkit_tensor_t *x,
                                  normkit_tensor_t *g, normkit_tensor_t *w, normkit_tensor_t *sm,
                                  normkit_tensor_t *si, normkit_tensor_t *dx,
                                  normkit_tensor_t *dw, normkit_tensor_t *db) {
  normkit_layer_norm_backward_args_t b;
  OK(normkit_layer_norm_backward_args_init(&b));
  CHECK(b.normalized_ndim == 1 && b.struct_size == sizeof b);
  b.x = x, b.grad_output = g, b.weight = w, b.save_mean = sm, b.save_invstd = si;
  b.grad_input = dx, b.grad_weight = dw, b.grad_bias = db;
  return normkit_layer_norm_backward(ctx, &b);
}

/* Checks dx and dweight of one op against central differences of L = sum(g * y), and dbias
 * against sum(g) over everything but the parameter's axis (checked through L's derivative by
 * bias, i.e. the same central difference with a bias tensor would be linear: skipped; the
 * analytic identity dbias = dL/dbias is checked via finite differences of the weight's
 * partner below). x has shape (N=2, C=4, L=3); the weight has `wn` elements. */
static void check_by_differences(normkit_context_t *ctx, const char *what, forward_fn fwd,
                                 backward_fn bwd, int wn, int nstat) {
  enum { N = 2, C = 4, L = 3, E = N * C * L };
  double x[E], g[E], y[E], w[C * L], sm[N * C], si[N * C], dx[E], dw[C * L], db[C * L];
  int64_t xs[3] = {N, C, L}, ws[1] = {wn}, ss[1] = {nstat};
  normkit_tensor_t tx = f64_tensor(x, 3, xs), tg = f64_tensor(g, 3, xs), ty = f64_tensor(y, 3, xs);
  normkit_tensor_t tw = f64_tensor(w, 1, ws), tsm = f64_tensor(sm, 1, ss), tsi = f64_tensor(si, 1, ss);
  normkit_tensor_t tdx = f64_tensor(dx, 3, xs), tdw = f64_tensor(dw, 1, ws), tdb = f64_tensor(db, 1, ws);
  const double h = 1e-6;
  double worst = 0;
  for (int i = 0; i < E; i++) {
    x[i] = sin(1.3 * i + 0.2) * 3 + (i % 5);
    g[i] = cos(0.7 * i) - 0.25;
  }
  for (int i = 0; i < wn; i++) w[i] = 0.5 + 0.25 * i;
  fwd(ctx, &tx, &tw, &ty, &tsm, &tsi);
  OK(bwd(ctx, &tx, &tg, &tw, &tsm, &tsi, &tdx, &tdw, &tdb));
  for (int k = 0; k < E + wn; k++) {
    double *p = k < E ? &x[k] : &w[k - E], keep = *p, lp = 0, lm = 0, num, ana;
    *p = keep + h;
    fwd(ctx, &tx, &tw, &ty, &tsm, &tsi);
    for (int i = 0; i < E; i++) lp += g[i] * y[i];
    *p = keep - h;
    fwd(ctx, &tx, &tw, &ty, &tsm, &tsi);
    for (int i = 0; i < E; i++) lm += g[i] * y[i];
    *p = keep;
    num = (lp - lm) / (2 * h);
    ana = k < E ? dx[k] : dw[k - E];
    if (fabs(num - ana) > worst) worst = fabs(num - ana);
  }
  checks++;
  if (!(worst < 1e-6)) {
    failures++;
    fprintf(stderr, "%s backward: max |analytic - numeric| = %g\n", what, worst);
  }
  /* dbias: L is linear in the bias with slope sum(g) over the bias's broadcast positions. */
  {
    double total = 0, sum_db = 0;
    for (int i = 0; i < E; i++) total += g[i];
    for (int i = 0; i < wn; i++) sum_db += db[i];
    CHECK(fabs(total - sum_db) < 1e-9);
  }
}

static void fwd_lrn(normkit_context_t *ctx, normkit_tensor_t *x, normkit_tensor_t *w,
                    normkit_tensor_t *y, normkit_tensor_t *sm, normkit_tensor_t *si) {
  normkit_local_response_norm_args_t a;
  (void)w, (void)sm, (void)si;
  OK(normkit_local_response_norm_args_init(&a));
  a.size = 3, a.alpha = 0.5, a.beta = 0.75, a.k = 2;
  a.x = x, a.y = y;
  OK(normkit_local_response_norm_forward(ctx, &a));
}

static void test_functional_backward_others(normkit_context_t *ctx) {
  check_by_differences(ctx, "instance_norm", fwd_instance, bwd_instance, 4, 8);
  check_by_differences(ctx, "group_norm", fwd_group, bwd_group, 4, 4);
  check_by_differences(ctx, "layer_norm", fwd_layer, bwd_layer, 3, 8);

  /* LRN: dx by central differences. */
  {
    double x[24], g[24], y[24], dx[24], worst = 0;
    int64_t xs[3] = {2, 4, 3};
    normkit_tensor_t tx = f64_tensor(x, 3, xs), tg = f64_tensor(g, 3, xs),
                     ty = f64_tensor(y, 3, xs), tdx = f64_tensor(dx, 3, xs);
    normkit_local_response_norm_backward_args_t b;
    for (int i = 0; i < 24; i++) {
      x[i] = sin(0.9 * i) * 2;
      g[i] = cos(0.3 * i);
    }
    OK(normkit_local_response_norm_backward_args_init(&b));
    CHECK(b.size == 0 && b.alpha == 1e-4 && b.beta == 0.75 && b.k == 1.0);
    b.x = &tx, b.grad_output = &tg, b.grad_input = &tdx;
    FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_local_response_norm_backward", "size",
          normkit_local_response_norm_backward(ctx, &b));
    b.size = 3, b.alpha = 0.5, b.beta = 0.75, b.k = 2;
    OK(normkit_local_response_norm_backward(ctx, &b));
    for (int k = 0; k < 24; k++) {
      double keep = x[k], lp = 0, lm = 0;
      x[k] = keep + 1e-6;
      fwd_lrn(ctx, &tx, NULL, &ty, NULL, NULL);
      for (int i = 0; i < 24; i++) lp += g[i] * y[i];
      x[k] = keep - 1e-6;
      fwd_lrn(ctx, &tx, NULL, &ty, NULL, NULL);
      for (int i = 0; i < 24; i++) lm += g[i] * y[i];
      x[k] = keep;
      if (fabs((lp - lm) / 2e-6 - dx[k]) > worst) worst = fabs((lp - lm) / 2e-6 - dx[k]);
    }
    CHECK(worst < 1e-6);
    b.grad_input = NULL;
    FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_local_response_norm_backward", "grad_input",
          normkit_local_response_norm_backward(ctx, &b));
  }

  /* Group/layer error paths: the saved statistics are required. */
  {
    double x[8] = {0}, g[8] = {0}, s2[2] = {0}, s8[8];
    int64_t xs[2] = {2, 4}, s2s[1] = {2};
    normkit_tensor_t tx = f64_tensor(x, 2, xs), tg = f64_tensor(g, 2, xs),
                     ts = f64_tensor(s2, 1, s2s), tdx = f64_tensor(s8, 2, xs);
    normkit_group_norm_backward_args_t gb;
    normkit_layer_norm_backward_args_t lb;
    OK(normkit_group_norm_backward_args_init(&gb));
    gb.x = &tx, gb.grad_output = &tg, gb.grad_input = &tdx, gb.save_invstd = &ts;
    FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_group_norm_backward", "save_mean",
          normkit_group_norm_backward(ctx, &gb));
    gb.save_mean = &ts;
    gb.num_groups = 3;
    FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_group_norm_backward", "num_groups",
          normkit_group_norm_backward(ctx, &gb));
    gb.num_groups = -1;
    FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_group_norm_backward", "num_groups",
          normkit_group_norm_backward(ctx, &gb));
    OK(normkit_layer_norm_backward_args_init(&lb));
    lb.x = &tx, lb.grad_output = &tg, lb.grad_input = &tdx, lb.save_mean = &ts;
    FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_layer_norm_backward", "save_invstd",
          normkit_layer_norm_backward(ctx, &lb));
    lb.save_invstd = &ts;
    lb.normalized_ndim = 3;
    FAILS(NORMKIT_STATUS_SHAPE_MISMATCH, "normkit_layer_norm_backward", "normalized_ndim",
          normkit_layer_norm_backward(ctx, &lb));
  }
}

static void test_module_backward(normkit_context_t *ctx) {
  double x[6], g[6], y[6], dx[6], w[2] = {2, 0.5}, dw[2], db[2], rm[2];
  int64_t xs[2] = {3, 2}, cs[1] = {2}, other[2] = {2, 3};
  normkit_tensor_t tx = f64_tensor(x, 2, xs), tg = f64_tensor(g, 2, xs), ty = f64_tensor(y, 2, xs);
  normkit_tensor_t tdx = f64_tensor(dx, 2, xs), tw = f64_tensor(w, 1, cs);
  normkit_tensor_t tdw = f64_tensor(dw, 1, cs), tdb = f64_tensor(db, 1, cs), trm = f64_tensor(rm, 1, cs);
  normkit_tensor_t t23 = f64_tensor(x, 2, other);
  normkit_batch_norm_config_t cfg;
  normkit_module_t *m = NULL;
  memcpy(x, bn_x, sizeof x);
  memcpy(g, bn_g, sizeof g);
  OK(normkit_batch_norm_config_init(&cfg));
  cfg.kind = NORMKIT_KIND_1D;
  cfg.num_features = 2;
  cfg.param_dtype.bits = 64;
  OK(normkit_batch_norm_create(ctx, &cfg, &m));
  OK(normkit_module_set_state(ctx, m, "weight", &tw));

  FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_module_backward", "forward",
        normkit_module_backward(ctx, m, &tx, &tg, &tdx));
  FAILS(NORMKIT_STATUS_NO_GRADIENT, "normkit_module_get_grad", "weight",
        normkit_module_get_grad(m, "weight", &tdw));
  OK(normkit_module_forward(ctx, m, &tx, &ty));
  OK(normkit_module_backward(ctx, m, &tx, &tg, &tdx));
  CLOSE(dx, bn_dx, 6);
  OK(normkit_module_get_grad(m, "weight", &tdw));
  OK(normkit_module_get_grad(m, "bias", &tdb));
  CLOSE(dw, bn_dw, 2);
  CLOSE(db, bn_db, 2);
  /* parameter gradients accumulate, as PyTorch's .grad; grad_input may be NULL */
  OK(normkit_module_backward(ctx, m, &tx, &tg, NULL));
  OK(normkit_module_get_grad(m, "weight", &tdw));
  for (int c = 0; c < 2; c++) CHECK(fabs(dw[c] - 2 * bn_dw[c]) < 1e-12);
  OK(normkit_module_zero_grad(m));
  FAILS(NORMKIT_STATUS_NO_GRADIENT, "normkit_module_get_grad", "bias",
        normkit_module_get_grad(m, "bias", &tdb));

  /* eval: frozen BatchNorm, dx = g * w / sqrt(running_var + eps) */
  OK(normkit_module_set_training(m, false));
  OK(normkit_module_forward(ctx, m, &tx, &ty));
  OK(normkit_module_backward(ctx, m, &tx, &tg, &tdx));
  get_state(ctx, m, "running_var", rm, 2);
  for (int i = 0; i < 6; i++) CHECK(fabs(dx[i] - g[i] * w[i % 2] / sqrt(rm[i % 2] + 1e-5)) < 1e-12);

  /* errors */
  FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_module_get_grad", "running_mean",
        normkit_module_get_grad(m, "running_mean", &trm));
  FAILS(NORMKIT_STATUS_SHAPE_MISMATCH, "normkit_module_get_grad", "dst",
        normkit_module_get_grad(m, "weight", &tdx));
  FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_module_get_grad", "name",
        normkit_module_get_grad(m, NULL, &tdw));
  FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_module_get_grad", "module",
        normkit_module_get_grad(NULL, "weight", &tdw));
  FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_module_zero_grad", "module",
        normkit_module_zero_grad(NULL));
  FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_module_backward", "grad_output",
        normkit_module_backward(ctx, m, &tx, NULL, &tdx));
  FAILS(NORMKIT_STATUS_SHAPE_MISMATCH, "normkit_module_backward", "input",
        normkit_module_backward(ctx, m, &t23, &tg, &tdx));
  normkit_module_destroy(m);
}

/* ---------------------------------------------------------------------------------------- */
/* Communicator: a fake two-rank group whose other rank holds a copy of this rank's batch, and
 * one whose collectives fail. */

typedef struct fake_group {
  int gathers, reduces;
  normkit_status_t fail_with; /* returned by every callback when not OK */
} fake_group;

static normkit_status_t fake_all_gather(void *user_data, const double *send, double *recv,
                                        size_t count) {
  fake_group *f = (fake_group *)user_data;
  f->gathers++;
  if (f->fail_with != NORMKIT_STATUS_OK) return f->fail_with;
  memcpy(recv, send, count * sizeof *send);
  memcpy(recv + count, send, count * sizeof *send);
  return NORMKIT_STATUS_OK;
}

static normkit_status_t fake_all_reduce(void *user_data, double *data, size_t count) {
  fake_group *f = (fake_group *)user_data;
  f->reduces++;
  if (f->fail_with != NORMKIT_STATUS_OK) return f->fail_with;
  for (size_t i = 0; i < count; i++) data[i] *= 2;
  return NORMKIT_STATUS_OK;
}

static void test_communicator(normkit_context_t *ctx) {
  double x[6], g[6], y[6], y_plain[6], dx[6], rm[2], rv[2];
  int64_t xs[2] = {3, 2}, nbt = -1;
  normkit_tensor_t tx = f64_tensor(x, 2, xs), tg = f64_tensor(g, 2, xs), ty = f64_tensor(y, 2, xs);
  normkit_tensor_t typ = f64_tensor(y_plain, 2, xs), tdx = f64_tensor(dx, 2, xs);
  normkit_batch_norm_config_t cfg;
  normkit_communicator_t comm, bad;
  normkit_module_t *sync = NULL, *plain = NULL;
  fake_group fg = {0, 0, NORMKIT_STATUS_OK};
  const double rm_plain[2] = {0.23333333333333336, 3.0};
  memcpy(x, bn_x, sizeof x);
  memcpy(g, bn_g, sizeof g);

  OK(normkit_communicator_init(&comm));
  CHECK(comm.struct_size == sizeof comm && comm.world_size == 1 && comm.rank == 0 &&
        comm.all_gather == NULL && comm.all_reduce_sum == NULL && comm.user_data == NULL);
  comm.user_data = &fg;
  comm.world_size = 2;
  comm.rank = 1;
  comm.all_gather = fake_all_gather;
  comm.all_reduce_sum = fake_all_reduce;

  OK(normkit_batch_norm_config_init(&cfg));
  cfg.kind = NORMKIT_KIND_1D;
  cfg.num_features = 2;
  cfg.param_dtype.bits = 64;
  OK(normkit_batch_norm_create(ctx, &cfg, &plain));
  cfg.kind = NORMKIT_KIND_SYNC;
  OK(normkit_batch_norm_create(ctx, &cfg, &sync));

  /* set_communicator: only SyncBatchNorm; the table is validated */
  FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_module_set_communicator", "SyncBatchNorm",
        normkit_module_set_communicator(plain, &comm));
  FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_module_set_communicator", "module",
        normkit_module_set_communicator(NULL, &comm));
  bad = comm;
  bad.rank = 2;
  FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_module_set_communicator", "comm.rank",
        normkit_module_set_communicator(sync, &bad));
  bad = comm;
  bad.world_size = 0;
  FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_module_set_communicator", "comm.world_size",
        normkit_module_set_communicator(sync, &bad));
  bad = comm;
  bad.all_reduce_sum = NULL;
  FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_module_set_communicator", "comm.all_reduce_sum",
        normkit_module_set_communicator(sync, &bad));
  bad = comm;
  bad.struct_size = 8;
  FAILS(NORMKIT_STATUS_STRUCT_SIZE, "normkit_module_set_communicator", "struct_size",
        normkit_module_set_communicator(sync, &bad));

  /* A failing all_gather: COMMUNICATOR naming the callback and its status; running statistics
   * and counter unchanged. */
  OK(normkit_module_set_communicator(sync, &comm));
  fg.fail_with = NORMKIT_STATUS_BACKEND;
  FAILS(NORMKIT_STATUS_COMMUNICATOR, "normkit_module_forward", "all_gather",
        normkit_module_forward(ctx, sync, &tx, &ty));
  CHECK(fg.gathers == 1);
  CHECK(normkit_module_forward(ctx, sync, &tx, &ty) == NORMKIT_STATUS_COMMUNICATOR);
  CHECK(strstr(normkit_last_error_message(), "status 302") != NULL);
  get_state(ctx, sync, "running_mean", rm, 2);
  get_state(ctx, sync, "running_var", rv, 2);
  CHECK(rm[0] == 0 && rm[1] == 0 && rv[0] == 1 && rv[1] == 1);
  CHECK(get_counter(ctx, sync) == 0);

  /* Working collectives: the other rank holds a copy of this batch, so the outputs and dx
   * equal a plain BatchNorm's; the running variance uses the global count 6. */
  fg.fail_with = NORMKIT_STATUS_OK;
  fg.gathers = 0;
  OK(normkit_module_forward(ctx, sync, &tx, &ty));
  OK(normkit_module_forward(ctx, plain, &tx, &typ));
  CHECK(fg.gathers == 1);
  close_to(y, y_plain, 6, 1e-12, __LINE__);
  get_state(ctx, sync, "running_mean", rm, 2);
  get_state(ctx, sync, "running_var", rv, 2);
  CLOSE(rm, rm_plain, 2);
  for (int c = 0; c < 2; c++) {
    double mean = (x[c] + x[2 + c] + x[4 + c]) / 3, ss = 0;
    for (int n = 0; n < 3; n++) ss += (x[n * 2 + c] - mean) * (x[n * 2 + c] - mean);
    CHECK(fabs(rv[c] - (0.9 + 0.1 * (2 * ss) / 5)) < 1e-12);
  }
  CHECK(get_counter(ctx, sync) == 1);
  OK(normkit_module_backward(ctx, sync, &tx, &tg, &tdx));
  CHECK(fg.reduces == 1);
  {
    double dx_plain[6];
    normkit_tensor_t tdp = f64_tensor(dx_plain, 2, xs);
    OK(normkit_module_backward(ctx, plain, &tx, &tg, &tdp));
    close_to(dx, dx_plain, 6, 1e-12, __LINE__);
  }
  /* a failing all_reduce in backward */
  fg.fail_with = 7;
  FAILS(NORMKIT_STATUS_COMMUNICATOR, "normkit_module_backward", "status 7",
        normkit_module_backward(ctx, sync, &tx, &tg, &tdx));
  fg.fail_with = NORMKIT_STATUS_OK;
  /* eval and a cleared communicator never call the callbacks */
  fg.gathers = fg.reduces = 0;
  OK(normkit_module_set_training(sync, false));
  OK(normkit_module_forward(ctx, sync, &tx, &ty));
  OK(normkit_module_set_training(sync, true));
  OK(normkit_module_set_communicator(sync, NULL));
  OK(normkit_module_forward(ctx, sync, &tx, &ty));
  CHECK(fg.gathers == 0 && fg.reduces == 0);

  /* Functional SyncBatchNorm with the same fake group. */
  {
    double sm[2], si[2], count = -1, dw[2], db[2];
    normkit_tensor_t tsm = f64_tensor(sm, 1, xs + 1), tsi = f64_tensor(si, 1, xs + 1);
    normkit_tensor_t tdw = f64_tensor(dw, 1, xs + 1), tdb = f64_tensor(db, 1, xs + 1);
    normkit_batch_norm_args_t fa;
    normkit_norm_backward_args_t b;
    double w[2] = {2, 0.5};
    normkit_tensor_t tw = f64_tensor(w, 1, xs + 1);
    rm[0] = rm[1] = 0;
    rv[0] = rv[1] = 1;
    nbt = 0;
    OK(normkit_batch_norm_args_init(&fa));
    fa.x = &tx, fa.y = &ty, fa.weight = &tw, fa.save_mean = &tsm, fa.save_invstd = &tsi;
    {
      normkit_tensor_t trm = f64_tensor(rm, 1, xs + 1), trv = f64_tensor(rv, 1, xs + 1);
      fa.running_mean = &trm, fa.running_var = &trv, fa.num_batches_tracked = &nbt;
      fg.fail_with = NORMKIT_STATUS_INTERNAL;
      FAILS(NORMKIT_STATUS_COMMUNICATOR, "normkit_sync_batch_norm_forward", "all_gather",
            normkit_sync_batch_norm_forward(ctx, &fa, &comm, &count));
      CHECK(count == -1 && nbt == 0 && rm[0] == 0 && rv[1] == 1);
      fg.fail_with = NORMKIT_STATUS_OK;
      FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_sync_batch_norm_forward", "global_count",
            normkit_sync_batch_norm_forward(ctx, &fa, &comm, NULL));
      FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_sync_batch_norm_forward", "comm",
            normkit_sync_batch_norm_forward(ctx, &fa, NULL, &count));
      OK(normkit_sync_batch_norm_forward(ctx, &fa, &comm, &count));
      fa.running_mean = fa.running_var = NULL;
      fa.num_batches_tracked = NULL;
    }
    CHECK(count == 6);
    CHECK(nbt == 1);
    CLOSE(rm, rm_plain, 2);
    OK(normkit_norm_backward_args_init(&b));
    b.x = &tx, b.grad_output = &tg, b.weight = &tw, b.save_mean = &tsm, b.save_invstd = &tsi;
    b.grad_input = &tdx, b.grad_weight = &tdw, b.grad_bias = &tdb;
    FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_sync_batch_norm_backward", "global_count",
          normkit_sync_batch_norm_backward(ctx, &b, &comm, -1));
    OK(normkit_sync_batch_norm_backward(ctx, &b, &comm, count));
    CLOSE(dx, bn_dx, 6); /* the spec's golden dx: the other rank's copy changes nothing */
    CLOSE(dw, bn_dw, 2); /* this rank's parameter gradients */
    CLOSE(db, bn_db, 2);
  }
  normkit_module_destroy(sync);
  normkit_module_destroy(plain);
}

/* Ops from several threads at once, each with its own context of 2 or 3 CPU threads (with
 * caller teams each calling thread works with workers of its own, ended with the thread):
 * every result bit-identical to a one-thread run. 256x1024 elements, above the size below which
 * an op stays on its caller. */
enum { MT_ROWS = 256, MT_COLS = 1024, MT_THREADS = 4, MT_REPS = 3 };
static double mt_x[MT_ROWS * MT_COLS], mt_want[MT_ROWS * MT_COLS];

static int32_t mt_layer_norm(normkit_context_t *ctx, double *y) {
  int64_t xs[2] = {MT_ROWS, MT_COLS};
  normkit_tensor_t tx = f64_tensor(mt_x, 2, xs), ty = f64_tensor(y, 2, xs);
  normkit_layer_norm_args_t a;
  int32_t st = normkit_layer_norm_args_init(&a);
  if (st != NORMKIT_STATUS_OK) return st;
  a.x = &tx;
  a.y = &ty;
  return normkit_layer_norm_forward(ctx, &a);
}

static void *mt_worker(void *arg) {
  intptr_t id = (intptr_t)arg;
  normkit_context_config_t cfg;
  normkit_context_t *ctx = NULL;
  double *y = malloc(sizeof mt_want);
  intptr_t bad = 0;
  if (y == NULL || normkit_context_config_init(&cfg) != NORMKIT_STATUS_OK) return (void *)1;
  cfg.device.device_type = NORMKIT_DEVICE_CPU;
  cfg.cpu_num_threads = 2 + (int32_t)(id % 2);
  if (normkit_context_create(&cfg, &ctx) != NORMKIT_STATUS_OK) {
    free(y);
    return (void *)1;
  }
  for (int r = 0; r < MT_REPS; r++) {
    memset(y, 0, sizeof mt_want);
    if (mt_layer_norm(ctx, y) != NORMKIT_STATUS_OK || memcmp(y, mt_want, sizeof mt_want) != 0)
      bad++;
  }
  normkit_context_destroy(ctx);
  free(y);
  return (void *)bad;
}

static void test_threads(void) {
  pthread_t t[MT_THREADS];
  normkit_context_t *one = make_cpu_context(1);
  for (size_t i = 0; i < MT_ROWS * MT_COLS; i++)
    mt_x[i] = 100.0 + (double)((i * 7919) % 1013) / 97.0;
  OK(mt_layer_norm(one, mt_want));
  normkit_context_destroy(one);
  CHECK(mt_want[0] != 0.0 || mt_want[1] != 0.0);
  for (intptr_t i = 0; i < MT_THREADS; i++)
    CHECK(pthread_create(&t[i], NULL, mt_worker, (void *)i) == 0);
  for (int i = 0; i < MT_THREADS; i++) {
    void *bad = (void *)1;
    CHECK(pthread_join(t[i], &bad) == 0);
    CHECK(bad == NULL);
  }
}

int main(void) {
  normkit_context_t *ctx;
  test_versions();
  test_spin_wait();
  test_caller_teams();
  test_vector_width();
  test_status_strings();
  test_context();
  test_last_error();
  test_panic_boundary();
  test_threads();
  ctx = make_cpu_context(2);
  test_functional_batch_norm(ctx);
  test_functional_instance_norm(ctx);
  test_functional_layer_norm(ctx);
  test_functional_group_norm(ctx);
  test_functional_lrn(ctx);
  test_layouts(ctx);
  test_module_batch_norm(ctx);
  test_module_instance_norm(ctx);
  test_module_group_layer_lrn(ctx);
  test_functional_backward_batch_norm(ctx);
  test_functional_backward_others(ctx);
  test_module_backward(ctx);
  test_communicator(ctx);
  normkit_context_destroy(ctx);
  if (failures != 0) {
    fprintf(stderr, "capi_test.c: %d of %d checks failed\n", failures, checks);
    return 1;
  }
  printf("capi_test.c: all %d checks passed\n", checks);
  return 0;
}
