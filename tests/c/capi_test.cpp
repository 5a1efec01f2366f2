// C++17 test of the normkit C ABI: the header compiles as C++, the layout matches DLPack's
// DLTensor, versions agree, and a RAII wrapper runs LayerNorm/BatchNorm and an error path.
#include "normkit.h"

#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

static_assert(sizeof(normkit_tensor_t) == 48, "normkit_tensor_t size");
static_assert(alignof(normkit_tensor_t) == 8, "normkit_tensor_t align");
static_assert(offsetof(normkit_tensor_t, device) == 8, "device");
static_assert(offsetof(normkit_tensor_t, ndim) == 16, "ndim");
static_assert(offsetof(normkit_tensor_t, dtype) == 20, "dtype");
static_assert(offsetof(normkit_tensor_t, shape) == 24, "shape");
static_assert(offsetof(normkit_tensor_t, strides) == 32, "strides");
static_assert(offsetof(normkit_tensor_t, byte_offset) == 40, "byte_offset");
static_assert(NORMKIT_STATUS_OK == 0, "OK is 0");

namespace {

int failures = 0;

void check(bool ok, const char *what, int line) {
  if (!ok) {
    ++failures;
    std::fprintf(stderr, "capi_test.cpp:%d: %s failed (last error: %s)\n", line, what,
                 normkit_last_error_message());
  }
}
#define CHECK(x) check((x), #x, __LINE__)

struct ContextDeleter {
  void operator()(normkit_context_t *c) const { normkit_context_destroy(c); }
};
struct ModuleDeleter {
  void operator()(normkit_module_t *m) const { normkit_module_destroy(m); }
};
using Context = std::unique_ptr<normkit_context_t, ContextDeleter>;
using ModulePtr = std::unique_ptr<normkit_module_t, ModuleDeleter>;

normkit_tensor_t view(std::vector<double> &v, std::vector<int64_t> &shape) {
  normkit_tensor_t t{};
  t.data = v.data();
  t.device = normkit_device_t{NORMKIT_DEVICE_CPU, 0};
  t.ndim = static_cast<int32_t>(shape.size());
  t.dtype = normkit_dtype_t{NORMKIT_DTYPE_CODE_FLOAT, 64, 1};
  t.shape = shape.data();
  return t;
}

}  // namespace

int main() {
  uint32_t major = 0, minor = 0, patch = 0;
  normkit_version(&major, &minor, &patch);
  CHECK(major == NORMKIT_VERSION_MAJOR && minor == NORMKIT_VERSION_MINOR &&
        patch == NORMKIT_VERSION_PATCH);
  CHECK(std::string(normkit_version_string()) == NORMKIT_VERSION_STRING);
  CHECK(normkit_abi_version() == NORMKIT_ABI_VERSION);

  normkit_context_config_t cfg;
  CHECK(normkit_context_config_init(&cfg) == NORMKIT_STATUS_OK);
  cfg.cpu_num_threads = 1;
  normkit_context_t *raw = nullptr;
  CHECK(normkit_context_create(&cfg, &raw) == NORMKIT_STATUS_OK);
  Context ctx(raw);

  // Functional LayerNorm (spec §6.3).
  std::vector<double> x{1, 2, 4, 8}, y(4);
  std::vector<int64_t> shape{1, 4};
  normkit_tensor_t tx = view(x, shape), ty = view(y, shape);
  normkit_layer_norm_args_t ln;
  CHECK(normkit_layer_norm_args_init(&ln) == NORMKIT_STATUS_OK);
  ln.x = &tx;
  ln.y = &ty;
  CHECK(normkit_layer_norm_forward(ctx.get(), &ln) == NORMKIT_STATUS_OK);
  const double want[4] = {-1.0257545754961932, -0.6527529116793956, 0.09325041595419938,
                          1.5852570712213894};
  for (int i = 0; i < 4; ++i) CHECK(std::fabs(y[i] - want[i]) < 1e-12);

  // BatchNorm1d module: train then eval (spec §2.4).
  normkit_batch_norm_config_t bn;
  CHECK(normkit_batch_norm_config_init(&bn) == NORMKIT_STATUS_OK);
  bn.kind = NORMKIT_KIND_1D;
  bn.num_features = 2;
  bn.param_dtype.bits = 64;
  normkit_module_t *mraw = nullptr;
  CHECK(normkit_batch_norm_create(ctx.get(), &bn, &mraw) == NORMKIT_STATUS_OK);
  ModulePtr m(mraw);
  std::vector<double> bx{1, 10, 2, 20, 4, 60}, by(6);
  std::vector<int64_t> bshape{3, 2};
  normkit_tensor_t tbx = view(bx, bshape), tby = view(by, bshape);
  CHECK(normkit_module_forward(ctx.get(), m.get(), &tbx, &tby) == NORMKIT_STATUS_OK);
  CHECK(std::fabs(by[0] - -1.069041531450298) < 1e-12);
  CHECK(normkit_module_set_training(m.get(), false) == NORMKIT_STATUS_OK);
  CHECK(normkit_module_forward(ctx.get(), m.get(), &tbx, &tby) == NORMKIT_STATUS_OK);
  CHECK(std::fabs(by[5] - 6.769423854320988) < 1e-12);

  // An error: status, and a message naming the function and the argument.
  normkit_status_t s = normkit_module_forward(ctx.get(), m.get(), nullptr, &tby);
  CHECK(s == NORMKIT_STATUS_NULL_POINTER);
  std::string msg = normkit_last_error_message();
  CHECK(msg.find("normkit_module_forward") != std::string::npos);
  CHECK(msg.find("x") != std::string::npos);

  if (failures != 0) {
    std::fprintf(stderr, "capi_test.cpp: %d checks failed\n", failures);
    return 1;
  }
  std::printf("capi_test.cpp: all checks passed\n");
  return 0;
}
