/* C11 test of the normkit C ABI: layout, versions, golden values for every layer (the verified
 * PyTorch numbers of shared/spec/pytorch-semantics.md), train/eval with running statistics,
 * strides/byte_offset/misalignment/in-place, and every documented error path.
 * Built and run by tests/capi_link.rs against the cdylib and the staticlib (and valgrind). */
#include "normkit.h"

#include <math.h>
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

  /* AUTO resolves to the CPU (no CUDA backend in this build). */
  OK(normkit_context_create(&cfg, &ctx));
  OK(normkit_context_get_device(ctx, &dev));
  CHECK(dev.device_type == NORMKIT_DEVICE_CPU);
  OK(normkit_context_get_stream(ctx, &stream));
  CHECK(stream == NULL);
  OK(normkit_context_set_stream(ctx, (void *)0x1234));
  OK(normkit_context_get_stream(ctx, &stream));
  CHECK(stream == (void *)0x1234);
  normkit_context_destroy(ctx);
  normkit_context_destroy(NULL); /* no-op */

  /* Errors; the out-parameter stays untouched. */
  ctx = sentinel;
  FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_context_create", "config",
        normkit_context_create(NULL, &ctx));
  FAILS(NORMKIT_STATUS_NULL_POINTER, "normkit_context_create", "out",
        normkit_context_create(&cfg, NULL));
  cfg.device.device_type = NORMKIT_DEVICE_CUDA;
  FAILS(NORMKIT_STATUS_DEVICE_UNAVAILABLE, "normkit_context_create", "CUDA",
        normkit_context_create(&cfg, &ctx));
  cfg.device.device_type = 77;
  FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_context_create", "device_type",
        normkit_context_create(&cfg, &ctx));
  cfg.device.device_type = NORMKIT_DEVICE_CPU;
  cfg.cpu_num_threads = -2;
  FAILS(NORMKIT_STATUS_INVALID_ARGUMENT, "normkit_context_create", "cpu_num_threads",
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

int main(void) {
  normkit_context_t *ctx;
  test_versions();
  test_status_strings();
  test_context();
  test_last_error();
  test_panic_boundary();
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
  normkit_context_destroy(ctx);
  if (failures != 0) {
    fprintf(stderr, "capi_test.c: %d of %d checks failed\n", failures, checks);
    return 1;
  }
  printf("capi_test.c: all %d checks passed\n", checks);
  return 0;
}
