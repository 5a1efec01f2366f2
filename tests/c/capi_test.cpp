// C++17 test of the normkit C ABI: the header compiles as C++, the layout matches DLPack's
// DLTensor, versions agree, and RAII wrappers run LayerNorm/BatchNorm forward and an error
// path; the functional LayerNorm/BatchNorm backward and a module's backward + get_grad
// against central finite differences of a float64 reference written here; and a
// SyncBatchNorm module through a C++ communicator callback table (loopback ranks, and a
// failing callback).
#include "normkit.h"

#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <utility>
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

using Vec = std::vector<double>;
using Shape = std::vector<int64_t>;
constexpr double kEps = 1e-5;  // normkit's (and PyTorch's) default eps

void check_close(const Vec &got, const Vec &want, double tol, const char *what, int line) {
  bool ok = got.size() == want.size();
  for (size_t i = 0; ok && i < got.size(); ++i) {
    if (!(std::fabs(got[i] - want[i]) <= tol * (1.0 + std::fabs(want[i])))) {
      std::fprintf(stderr, "capi_test.cpp:%d: %s[%zu] = %.17g, want %.17g\n", line, what, i,
                   got[i], want[i]);
      ok = false;
    }
  }
  check(ok, what, line);
}
#define CHECK_CLOSE(got, want, tol) check_close((got), (want), (tol), #got, __LINE__)

// Float64 references, written from the definitions (not from normkit).

// LayerNorm over rows of `cols` values: (x - mean) / sqrt(var + eps) * w + b (biased var).
Vec ref_layer_norm(const Vec &x, const Vec &w, const Vec &b, size_t cols) {
  Vec y(x.size());
  for (size_t r = 0; r < x.size() / cols; ++r) {
    double mean = 0, var = 0;
    for (size_t j = 0; j < cols; ++j) mean += x[r * cols + j] / static_cast<double>(cols);
    for (size_t j = 0; j < cols; ++j) {
      double d = x[r * cols + j] - mean;
      var += d * d / static_cast<double>(cols);
    }
    for (size_t j = 0; j < cols; ++j)
      y[r * cols + j] = (x[r * cols + j] - mean) / std::sqrt(var + kEps) * w[j] + b[j];
  }
  return y;
}

// Training BatchNorm of an (n, c, l) batch with per-channel batch statistics.
Vec ref_batch_norm(const Vec &x, const Vec &w, const Vec &b, size_t c, size_t l) {
  size_t n = x.size() / (c * l);
  double count = static_cast<double>(n * l);
  Vec y(x.size());
  for (size_t k = 0; k < c; ++k) {
    double mean = 0, var = 0;
    for (size_t i = 0; i < n; ++i)
      for (size_t j = 0; j < l; ++j) mean += x[(i * c + k) * l + j] / count;
    for (size_t i = 0; i < n; ++i)
      for (size_t j = 0; j < l; ++j) {
        double d = x[(i * c + k) * l + j] - mean;
        var += d * d / count;
      }
    for (size_t i = 0; i < n; ++i)
      for (size_t j = 0; j < l; ++j) {
        size_t e = (i * c + k) * l + j;
        y[e] = (x[e] - mean) / std::sqrt(var + kEps) * w[k] + b[k];
      }
  }
  return y;
}

// d/dp of the loss sum(g * f(p)) by central differences.
Vec numeric_grad(Vec p, const Vec &g, const std::function<Vec(const Vec &)> &f) {
  const double h = 1e-5;
  auto loss = [&](const Vec &q) {
    Vec y = f(q);
    double s = 0;
    for (size_t i = 0; i < y.size(); ++i) s += g[i] * y[i];
    return s;
  };
  Vec out(p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    double v = p[i];
    p[i] = v + h;
    double up = loss(p);
    p[i] = v - h;
    double down = loss(p);
    p[i] = v;
    out[i] = (up - down) / (2 * h);
  }
  return out;
}

Vec wave(size_t n, double a, double b) {
  Vec v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::sin(a * static_cast<double>(i) + b) * 2.0 + 0.3;
  return v;
}

// A reference forward y = f(x, weight, bias).
using Ref = std::function<Vec(const Vec &, const Vec &, const Vec &)>;

// dx, dweight and dbias against central differences of the loss sum(g * ref(x, w, b)).
void check_grads(const Ref &ref, const Vec &x, const Vec &w, const Vec &b, const Vec &g,
                 const Vec &dx, const Vec &dw, const Vec &db, int line) {
  check_close(dx, numeric_grad(x, g, [&](const Vec &p) { return ref(p, w, b); }), 1e-7, "dx",
              line);
  check_close(dw, numeric_grad(w, g, [&](const Vec &p) { return ref(x, p, b); }), 1e-7, "dw",
              line);
  check_close(db, numeric_grad(b, g, [&](const Vec &p) { return ref(x, w, p); }), 1e-7, "db",
              line);
}

// The tensors of one functional forward (saving its statistics) and its backward.
struct Case {
  Vec x, g, w, b, y, mean, invstd, dx, dw, db;
  Shape sx, sp, ss;  // input, parameter and saved-statistics shapes
  normkit_tensor_t tx, tg, tw, tb, ty, tm, ti, tdx, tdw, tdb;

  Case(Vec x_, Vec g_, Vec w_, Vec b_, Shape sx_, Shape sp_, Shape ss_)
      : x(std::move(x_)), g(std::move(g_)), w(std::move(w_)), b(std::move(b_)), y(x.size()),
        mean(static_cast<size_t>(ss_[0])), invstd(mean.size()), dx(x.size()), dw(w.size()),
        db(b.size()), sx(std::move(sx_)), sp(std::move(sp_)), ss(std::move(ss_)),
        tx(view(x, sx)), tg(view(g, sx)), tw(view(w, sp)), tb(view(b, sp)), ty(view(y, sx)),
        tm(view(mean, ss)), ti(view(invstd, ss)), tdx(view(dx, sx)), tdw(view(dw, sp)),
        tdb(view(db, sp)) {}
  Case(const Case &) = delete;  // the views point into the members
  Case &operator=(const Case &) = delete;

  // Runs the forward (initialised by finit) and the backward (binit) of one op on the
  // tensors, then checks y, dx, dweight and dbias against `ref`.
  template <class F, class B>
  void run(normkit_context_t *ctx, normkit_status_t (*finit)(F *),
           normkit_status_t (*forward)(normkit_context_t *, const F *),
           normkit_status_t (*binit)(B *),
           normkit_status_t (*backward)(normkit_context_t *, const B *), const Ref &ref,
           int line) {
    F f;
    check(finit(&f) == NORMKIT_STATUS_OK, "forward args init", line);
    f.x = &tx;
    f.y = &ty;
    f.weight = &tw;
    f.bias = &tb;
    f.save_mean = &tm;
    f.save_invstd = &ti;
    check(forward(ctx, &f) == NORMKIT_STATUS_OK, "forward", line);
    B a;
    check(binit(&a) == NORMKIT_STATUS_OK, "backward args init", line);
    a.x = &tx;
    a.grad_output = &tg;
    a.weight = &tw;
    a.save_mean = &tm;
    a.save_invstd = &ti;
    a.grad_input = &tdx;
    a.grad_weight = &tdw;
    a.grad_bias = &tdb;
    check(backward(ctx, &a) == NORMKIT_STATUS_OK, "backward", line);
    check_close(y, ref(x, w, b), 1e-12, "y", line);
    check_grads(ref, x, w, b, g, dx, dw, db, line);
  }
};

// Functional LayerNorm and BatchNorm backward (from the forward's saved statistics) against
// finite differences of the references.
void test_functional_backward(normkit_context_t *ctx) {
  Case ln(wave(8, 0.9, 0.1), wave(8, 1.7, 0.5), {1.5, -0.5, 2.0, 0.25}, {0.1, 0.2, -0.3, 0.0},
          {2, 4}, {4}, {2});
  ln.run(ctx, normkit_layer_norm_args_init, normkit_layer_norm_forward,
         normkit_layer_norm_backward_args_init, normkit_layer_norm_backward,
         [](const Vec &x, const Vec &w, const Vec &b) { return ref_layer_norm(x, w, b, 4); },
         __LINE__);
  Case bn(wave(12, 0.7, 0.2), wave(12, 1.3, 0.9), {1.5, -0.5}, {0.1, 0.2}, {3, 2, 2}, {2}, {2});
  bn.run(ctx, normkit_batch_norm_args_init, normkit_batch_norm_forward_training,
         normkit_norm_backward_args_init, normkit_batch_norm_backward,
         [](const Vec &x, const Vec &w, const Vec &b) { return ref_batch_norm(x, w, b, 2, 2); },
         __LINE__);
}

// A float64 BatchNorm1d (or SyncBatchNorm) module with C channels and weight/bias set.
ModulePtr make_batch_norm(normkit_context_t *ctx, int32_t kind, Vec w, Vec b) {
  normkit_batch_norm_config_t cfg;
  CHECK(normkit_batch_norm_config_init(&cfg) == NORMKIT_STATUS_OK);
  cfg.kind = kind;
  cfg.num_features = static_cast<int64_t>(w.size());
  cfg.param_dtype.bits = 64;
  normkit_module_t *raw = nullptr;
  CHECK(normkit_batch_norm_create(ctx, &cfg, &raw) == NORMKIT_STATUS_OK);
  ModulePtr m(raw);
  Shape sc{static_cast<int64_t>(w.size())};
  normkit_tensor_t tw = view(w, sc), tb = view(b, sc);
  CHECK(normkit_module_set_state(ctx, m.get(), "weight", &tw) == NORMKIT_STATUS_OK);
  CHECK(normkit_module_set_state(ctx, m.get(), "bias", &tb) == NORMKIT_STATUS_OK);
  return m;
}

Vec get_state(normkit_context_t *ctx, const normkit_module_t *m, const char *name, size_t n) {
  Vec v(n);
  Shape s{static_cast<int64_t>(n)};
  normkit_tensor_t t = view(v, s);
  CHECK(normkit_module_get_state(ctx, m, name, &t) == NORMKIT_STATUS_OK);
  return v;
}

int64_t batches_tracked(normkit_context_t *ctx, const normkit_module_t *m) {
  int64_t n = -1;
  Shape s{1};
  normkit_tensor_t t{};
  t.data = &n;
  t.device = normkit_device_t{NORMKIT_DEVICE_CPU, 0};
  t.ndim = 1;
  t.dtype = normkit_dtype_t{NORMKIT_DTYPE_CODE_INT, 64, 1};
  t.shape = s.data();
  CHECK(normkit_module_get_state(ctx, m, "num_batches_tracked", &t) == NORMKIT_STATUS_OK);
  return n;
}

// One training step of a module: y and dx (the module keeps its parameter gradients).
struct StepResult {
  Vec y, dx;
};
StepResult train_step(normkit_context_t *ctx, normkit_module_t *m, Vec x, Vec g, Shape sx) {
  StepResult r{Vec(x.size()), Vec(x.size())};
  normkit_tensor_t tx = view(x, sx), ty = view(r.y, sx), tg = view(g, sx), tdx = view(r.dx, sx);
  CHECK(normkit_module_forward(ctx, m, &tx, &ty) == NORMKIT_STATUS_OK);
  CHECK(normkit_module_backward(ctx, m, &tx, &tg, &tdx) == NORMKIT_STATUS_OK);
  return r;
}

Vec get_grad(normkit_module_t *m, const char *name, size_t n) {
  Vec v(n);
  Shape s{static_cast<int64_t>(n)};
  normkit_tensor_t t = view(v, s);
  CHECK(normkit_module_get_grad(m, name, &t) == NORMKIT_STATUS_OK);
  return v;
}

// BatchNorm1d module: backward after a training forward, gradients accumulated over two
// backwards, get_grad, zero_grad.
void test_module_backward(normkit_context_t *ctx) {
  const size_t c = 2, l = 3;
  Vec w{0.75, 1.25}, b{-0.2, 0.4};
  Vec x = wave(4 * c * l, 0.45, 0.3), g = wave(4 * c * l, 2.1, 0.7);
  Shape sx{4, 2, 3};
  ModulePtr m = make_batch_norm(ctx, NORMKIT_KIND_1D, w, b);
  StepResult r = train_step(ctx, m.get(), x, g, sx);
  Ref ref = [&](const Vec &xx, const Vec &ww, const Vec &bb) {
    return ref_batch_norm(xx, ww, bb, c, l);
  };
  CHECK_CLOSE(r.y, ref(x, w, b), 1e-12);
  Vec dw = get_grad(m.get(), "weight", c);
  check_grads(ref, x, w, b, g, r.dx, dw, get_grad(m.get(), "bias", c), __LINE__);
  // a second backward of the same forward accumulates, as PyTorch's .grad does
  normkit_tensor_t tx = view(x, sx), tg = view(g, sx);
  CHECK(normkit_module_backward(ctx, m.get(), &tx, &tg, nullptr) == NORMKIT_STATUS_OK);
  for (double &v : dw) v *= 2;
  CHECK_CLOSE(get_grad(m.get(), "weight", c), dw, 1e-12);
  CHECK(normkit_module_zero_grad(m.get()) == NORMKIT_STATUS_OK);
  Vec none(c);
  Shape sc{2};
  normkit_tensor_t tn = view(none, sc);
  CHECK(normkit_module_get_grad(m.get(), "weight", &tn) == NORMKIT_STATUS_NO_GRADIENT);
}

// A C++ communicator behind the C callback table: `peers` extra ranks that mirror this one
// (each contributes this rank's payload), or failing collectives. Counts the calls.
struct Loopback {
  int peers = 0;
  bool fail = false;
  int gathers = 0, reduces = 0;

  static normkit_status_t all_gather(void *u, const double *send, double *recv, size_t n) {
    auto *self = static_cast<Loopback *>(u);
    ++self->gathers;
    if (self->fail) return NORMKIT_STATUS_BACKEND;
    for (int r = 0; r <= self->peers; ++r) std::memcpy(recv + r * n, send, n * sizeof(double));
    return NORMKIT_STATUS_OK;
  }
  static normkit_status_t all_reduce_sum(void *u, double *data, size_t n) {
    auto *self = static_cast<Loopback *>(u);
    ++self->reduces;
    if (self->fail) return NORMKIT_STATUS_BACKEND;
    for (size_t i = 0; i < n; ++i) data[i] *= self->peers + 1;
    return NORMKIT_STATUS_OK;
  }
  normkit_communicator_t table() {
    normkit_communicator_t c;
    CHECK(normkit_communicator_init(&c) == NORMKIT_STATUS_OK);
    c.user_data = this;
    c.world_size = peers + 1;
    c.rank = 0;
    c.all_gather = all_gather;
    c.all_reduce_sum = all_reduce_sum;
    return c;
  }
};

Vec twice(const Vec &v) {
  Vec out = v;
  out.insert(out.end(), v.begin(), v.end());
  return out;
}

// SyncBatchNorm modules through C++ callback tables, against plain BatchNorm modules.
void test_sync_batch_norm(normkit_context_t *ctx) {
  const size_t c = 2, l = 3, n = 3;
  Vec w{1.5, -0.5}, b{0.1, 0.2};
  Shape sx{3, 2, 3}, s2x{6, 2, 3};
  Vec x0 = wave(n * c * l, 0.8, 0.1), g0 = wave(n * c * l, 1.9, 0.3);

  // One rank: the table is never called (world_size 1 is BatchNorm), and the result is
  // plain BatchNorm's.
  {
    Loopback self;
    normkit_communicator_t comm = self.table();
    ModulePtr sync = make_batch_norm(ctx, NORMKIT_KIND_SYNC, w, b);
    ModulePtr plain = make_batch_norm(ctx, NORMKIT_KIND_1D, w, b);
    CHECK(normkit_module_set_communicator(sync.get(), &comm) == NORMKIT_STATUS_OK);
    for (int step = 0; step < 2; ++step) {
      Vec x = wave(n * c * l, 0.8, 0.1 * step), g = wave(n * c * l, 1.9, 0.3 * step);
      StepResult s = train_step(ctx, sync.get(), x, g, sx);
      StepResult p = train_step(ctx, plain.get(), x, g, sx);
      CHECK_CLOSE(s.y, p.y, 0.0);
      CHECK_CLOSE(s.dx, p.dx, 0.0);
    }
    CHECK(self.gathers == 0 && self.reduces == 0);
    CHECK_CLOSE(get_state(ctx, sync.get(), "running_var", c),
                get_state(ctx, plain.get(), "running_var", c), 0.0);
  }

  // Two ranks, the peer mirroring this one: the global batch is this batch twice, so y and
  // dx equal plain BatchNorm's over [x; x] (first half) and the running statistics equal its
  // (unbiased with the doubled count); one all-gather per forward, one all-reduce per
  // backward.
  {
    Loopback mirror;
    mirror.peers = 1;
    normkit_communicator_t comm = mirror.table();
    ModulePtr sync = make_batch_norm(ctx, NORMKIT_KIND_SYNC, w, b);
    ModulePtr plain = make_batch_norm(ctx, NORMKIT_KIND_1D, w, b);
    CHECK(normkit_module_set_communicator(sync.get(), &comm) == NORMKIT_STATUS_OK);
    for (int step = 0; step < 2; ++step) {
      Vec x = wave(n * c * l, 0.8, 0.1 * step), g = wave(n * c * l, 1.9, 0.3 * step);
      StepResult s = train_step(ctx, sync.get(), x, g, sx);
      StepResult p = train_step(ctx, plain.get(), twice(x), twice(g), s2x);
      CHECK_CLOSE(s.y, Vec(p.y.begin(), p.y.begin() + static_cast<long>(x.size())), 1e-12);
      CHECK_CLOSE(s.dx, Vec(p.dx.begin(), p.dx.begin() + static_cast<long>(x.size())), 1e-12);
    }
    CHECK(mirror.gathers == 2 && mirror.reduces == 2);
    CHECK_CLOSE(get_state(ctx, sync.get(), "running_mean", c),
                get_state(ctx, plain.get(), "running_mean", c), 1e-12);
    CHECK_CLOSE(get_state(ctx, sync.get(), "running_var", c),
                get_state(ctx, plain.get(), "running_var", c), 1e-12);
    // this rank's parameter gradients are half the doubled batch's
    Vec gw = get_grad(plain.get(), "weight", c);
    for (double &v : gw) v /= 2;
    CHECK_CLOSE(get_grad(sync.get(), "weight", c), gw, 1e-12);
  }

  // A failing callback: NORMKIT_STATUS_COMMUNICATOR naming the callback and its status, with
  // the running statistics and the counter unchanged; the same for the backward's all-reduce.
  {
    Loopback broken;
    broken.peers = 1;
    normkit_communicator_t comm = broken.table();
    ModulePtr sync = make_batch_norm(ctx, NORMKIT_KIND_SYNC, w, b);
    CHECK(normkit_module_set_communicator(sync.get(), &comm) == NORMKIT_STATUS_OK);
    train_step(ctx, sync.get(), x0, g0, sx);  // a good step first: non-default statistics
    Vec mean = get_state(ctx, sync.get(), "running_mean", c);
    Vec var = get_state(ctx, sync.get(), "running_var", c);
    broken.fail = true;
    Vec x = x0, y(x.size()), g = g0, dx(x.size());
    normkit_tensor_t tx = view(x, sx), ty = view(y, sx), tg = view(g, sx), tdx = view(dx, sx);
    CHECK(normkit_module_forward(ctx, sync.get(), &tx, &ty) == NORMKIT_STATUS_COMMUNICATOR);
    std::string msg = normkit_last_error_message();
    CHECK(msg.find("all_gather") != std::string::npos);
    CHECK(msg.find(std::to_string(NORMKIT_STATUS_BACKEND)) != std::string::npos);
    CHECK_CLOSE(get_state(ctx, sync.get(), "running_mean", c), mean, 0.0);
    CHECK_CLOSE(get_state(ctx, sync.get(), "running_var", c), var, 0.0);
    CHECK(batches_tracked(ctx, sync.get()) == 1);
    // the backward of the last good forward, whose all-reduce now fails
    broken.fail = false;
    CHECK(normkit_module_forward(ctx, sync.get(), &tx, &ty) == NORMKIT_STATUS_OK);
    broken.fail = true;
    CHECK(normkit_module_backward(ctx, sync.get(), &tx, &tg, &tdx) ==
          NORMKIT_STATUS_COMMUNICATOR);
    CHECK(std::string(normkit_last_error_message()).find("all_reduce_sum") != std::string::npos);
    CHECK(broken.gathers == 3 && broken.reduces == 2);
  }
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
  cfg.device = normkit_device_t{NORMKIT_DEVICE_CPU, 0}; // host vectors below
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

  test_functional_backward(ctx.get());
  test_module_backward(ctx.get());
  test_sync_batch_norm(ctx.get());

  if (failures != 0) {
    std::fprintf(stderr, "capi_test.cpp: %d checks failed\n", failures);
    return 1;
  }
  std::printf("capi_test.cpp: all checks passed\n");
  return 0;
}
