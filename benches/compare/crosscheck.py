#!/usr/bin/env python3
"""Randomised cross-check of normkit against PyTorch through normkit's C ABI (`nkffi.py`).

Each iteration draws an op (BatchNorm training/inference forward and backward, InstanceNorm,
GroupNorm forward and backward, LayerNorm forward and backward, LocalResponseNorm), a dtype
(f32, bf16), a shape of rank 1-5 from odd and even sizes (1, 2, 3, 7, 13, 16, 97, 128, 1025),
contiguous or channels-last strides, a scale and offset (up to a mean of -1e4 with a spread of
1e-3), sometimes a NaN or an infinity, eps, groups, normalized dims, window sizes and momentum,
a context of 1 or 2 threads. normkit's outputs (y and updated running statistics; dx, dweight,
dbias) must match PyTorch run in float64 on the same (rounded) inputs within 2e-4 (f32) / 3e-2
(bf16) of the largest |value|, or within 4x PyTorch's own error in the input dtype where that
is larger (an ill-conditioned input loses digits in both libraries alike); NaN must meet NaN
and an infinity the same infinity. Shapes that PyTorch rejects are skipped.

    python3 benches/compare/crosscheck.py [SEED [ITERATIONS]] [--lib target/release/libnormkit.so]

Prints each mismatch (op, shape, dtype, layout, the first bad element, normkit / float64 /
PyTorch-in-dtype values) and the count; exits 1 when any. PyTorch is needed only here.
"""
import math
import os
import random
import sys

import torch
import torch.nn.functional as F

import nkffi

HERE = os.path.dirname(os.path.abspath(__file__))
args = [a for a in sys.argv[1:] if not a.startswith("--lib")]
lib_path = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--lib=")),
                os.path.join(HERE, "..", "..", "target", "release", "libnormkit.so"))
torch.set_num_threads(2)
libs = {t: nkffi.Normkit(lib_path, t) for t in (1, 2)}
seed = int(args[0]) if args else 1
rng = random.Random(seed)
torch.manual_seed(seed)
SIZES = [1, 2, 3, 7, 13, 16, 97, 128, 1025]
def rand_shape(rank, budget=300000):
    while True:
        s = [rng.choice(SIZES) for _ in range(rank)]
        if math.prod(s) <= budget:
            return s
def make_x(shape, dtype, cl, special, backward):
    """Normal values of a random spread and offset. The backward ops never get the offset
    -1e4 with the spread 1e-3: |mean|/std = 1e7 is past f32's precision, so the f32
    statistics both libraries save make their gradients noise (PyTorch's too: 1 % off)."""
    scale = rng.choice([1, 1e-3, 100])
    offsets = [0, 5, -1e4 if dtype == torch.float32 else -50]
    if backward and scale == 1e-3:
        offsets = offsets[:2]
    x = torch.randn(shape, dtype=torch.float64) * scale + rng.choice(offsets)
    if special and x.numel() > 3:
        flat = x.view(-1)
        flat[rng.randrange(flat.numel())] = rng.choice([float("nan"), float("inf"), -float("inf")])
    x = x.to(dtype)
    if cl and len(shape) in (4, 5):
        x = x.contiguous(memory_format=torch.channels_last if len(shape) == 4 else torch.channels_last_3d)
    return x
def upstream(shape, dtype, cl):
    """An upstream gradient: centred values of a random scale. (An offset of 1000 with a spread
    of 1e-4, as `make_x` can draw, leaves dweight to the cancellation of 1e-7-relative terms,
    where f32 results of either library are noise.)"""
    g = torch.randn(shape, dtype=torch.float64) * rng.choice([1e-3, 1, 100])
    g = g.to(dtype)
    if cl and len(shape) in (4, 5):
        g = g.contiguous(memory_format=torch.channels_last if len(shape) == 4 else torch.channels_last_3d)
    return g


def close(name, got, ref, dtype, info, native=None, terms=0.0):
    """normkit's `got` against float64 `ref`: within tol of the scale, or no worse than 4x
    PyTorch's own error in the input dtype (`native`) where that is larger, or within 16 units
    of rounding of `terms`, the size of the terms that cancel in each element (dx of a group
    of one element is exactly 0 as the difference of two terms of size |dy·w·invstd|)."""
    got, ref = got.double(), ref.double()
    fin = torch.isfinite(ref)
    scale = max(1.0, ref[fin].abs().max().item() if fin.any() else 1.0)
    tol = (2e-4 if dtype == torch.float32 else 3e-2) * scale
    if math.isfinite(terms):
        tol = max(tol, 16 * (2.0 ** -24 if dtype == torch.float32 else 2.0 ** -8) * terms)
    if native is not None:
        nat = native.double()
        e_t = (nat - ref).abs()[fin & torch.isfinite(nat)]
        if e_t.numel():
            tol = max(tol, 4 * e_t.max().item())
    both_nan = torch.isnan(got) & torch.isnan(ref)
    same_inf = torch.isinf(ref) & (got == ref)
    bad = ~(both_nan | same_inf | ((got - ref).abs() <= tol))
    if bad.any():
        i = bad.nonzero()[0].tolist()
        tv = native.double()[tuple(i)].item() if native is not None else float("nan")
        print(f"MISMATCH {name} {info}: at {i} got {got[tuple(i)].item()} want {ref[tuple(i)].item()} torch-{str(dtype)[6:]} {tv} (tol {tol:.3g}, {bad.sum().item()} bad of {bad.numel()})")
        return False
    return True
def term_size(dy, w, inv):
    """max|dy| · max|w| · max(invstd) over the finite values: the size of dx's terms."""
    def m(t):
        f = t.double()[torch.isfinite(t.double())]
        return f.abs().max().item() if f.numel() else 0.0
    return m(dy) * m(w) * m(inv)


def native_grads(fn, x, w, b, dy):
    try:
        xn = x.detach().clone().requires_grad_(); wn = w.detach().clone().requires_grad_(); bn = b.detach().clone().requires_grad_()
        fn(xn, wn, bn).backward(dy)
        return xn.grad, wn.grad, bn.grad
    except (RuntimeError, NotImplementedError):
        return None, None, None
def native_out(fn):
    try:
        return fn()
    except (RuntimeError, NotImplementedError):
        return None
def check_forward(nk, info, x, f, op, **fields):
    """normkit's forward `op` against `f(t)` run on x in float64 (and in x's dtype for
    PyTorch's own error)."""
    ref = f(x.double())  # first: a shape PyTorch rejects (ValueError) is skipped
    out = torch.empty_like(x)
    nk.op(op, x=x, y=out, **fields)()
    return close("y", out, ref, x.dtype, info, native_out(lambda: f(x)))


def check_backward(nk, info, x, w, b, dy, f, layer, **fields):
    """normkit's backward of `layer` (from the statistics its forward saved) against the
    autograd backward of `f(x, w, b)` in float64: dx, dw, db."""
    dtype = x.dtype
    xd, wd, bd = (t.double().requires_grad_() for t in (x, w, b))
    f(xd, wd, bd).backward(dy.double())
    tn = native_grads(f, x, w, b, dy)
    run, (gx, gw, gb), (_, inv) = nk.backward(layer, x, w, b, dy, **fields)
    run()
    return (close("dx", gx, xd.grad, dtype, info, tn[0], term_size(dy, w, inv))
            & close("dw", gw, wd.grad, dtype, info, tn[1])
            & close("db", gb, bd.grad, dtype, info, tn[2]))

fails = 0
for it in range(int(args[1]) if len(args) > 1 else 200):
    op = rng.choice(["bn_train", "bn_eval", "in", "gn", "ln", "lrn", "bn_bwd", "gn_bwd", "ln_bwd"])
    dtype = rng.choice([torch.float32, torch.bfloat16])
    rank = rng.choice([2, 3, 4, 5]) if op != "ln" and op != "ln_bwd" else rng.choice([1, 2, 3, 4])
    if op in ("in", "lrn"):
        rank = max(rank, 3)
    shape = rand_shape(rank)
    cl = rng.random() < 0.5
    special = rng.random() < 0.15
    x = make_x(shape, dtype, cl, special, op.endswith("_bwd"))
    nk = libs[rng.choice([1, 2])]
    info = f"{op} {list(shape)} {dtype} cl={cl} special={special}"
    out = torch.empty_like(x)
    eps = rng.choice([1e-5, 1e-3])
    try:
        if op in ("bn_train", "bn_eval", "bn_bwd"):
            C = shape[1]
            w = torch.randn(C, dtype=dtype) if rng.random() < 0.7 else None
            b = torch.randn(C, dtype=dtype) if w is not None and rng.random() < 0.8 else None
            if op == "bn_bwd":
                if w is None: w = torch.randn(C, dtype=dtype)
                if b is None: b = torch.randn(C, dtype=dtype)
                if math.prod(shape) // C <= 1:
                    continue
                ok = check_backward(nk, info, x, w, b, upstream(shape, dtype, cl),
                                    lambda a, c, d: F.batch_norm(a, None, None, c, d, training=True, eps=eps),
                                    "BatchNorm", eps=eps)
            else:
                rm = torch.randn(C, dtype=dtype); rv = torch.rand(C, dtype=dtype) + 0.5
                rm_t, rv_t = rm.double().clone(), rv.double().clone()
                train = op == "bn_train"
                if train and math.prod(shape) // C <= 1:
                    continue  # PyTorch raises: one value per channel
                mom = rng.choice([0.1, 0.5])
                ref = F.batch_norm(x.double(), rm_t, rv_t, None if w is None else w.double(), None if b is None else b.double(), training=train, momentum=mom, eps=eps)
                name = "batch_norm_forward_training" if train else "batch_norm_forward_inference"
                tn = native_out(lambda: F.batch_norm(x, rm.clone(), rv.clone(), w, b, training=train, momentum=mom, eps=eps))
                nk.op(name, x=x, y=out, weight=w, bias=b, running_mean=rm, running_var=rv, momentum=mom, eps=eps)()
                ok = close("y", out, ref, dtype, info, tn)
                if train:
                    ok &= close("running_mean", rm, rm_t, dtype, info) & close("running_var", rv, rv_t, dtype, info)
        elif op == "in":
            if math.prod(shape[2:]) <= 1:
                continue
            ok = check_forward(nk, info, x, lambda t: F.instance_norm(t, eps=eps),
                               "instance_norm_forward", use_input_stats=True, eps=eps)
        elif op in ("gn", "gn_bwd"):
            C = shape[1]
            G = rng.choice([d for d in range(1, C + 1) if C % d == 0])
            w = torch.randn(C, dtype=dtype); b = torch.randn(C, dtype=dtype)
            if op == "gn":
                ok = check_forward(nk, info + f" G={G}", x,
                                   lambda t: F.group_norm(t, G, w.to(t.dtype), b.to(t.dtype), eps=eps),
                                   "group_norm_forward", weight=w, bias=b, num_groups=G, eps=eps)
            else:
                ok = check_backward(nk, info + f" G={G}", x, w, b, upstream(shape, dtype, cl),
                                    lambda a, c, d: F.group_norm(a, G, c, d, eps=eps),
                                    "GroupNorm", num_groups=G, eps=eps)
        elif op in ("ln", "ln_bwd"):
            k = rng.randint(1, len(shape))
            ns = shape[len(shape) - k:]
            w = torch.randn(ns, dtype=dtype); b = torch.randn(ns, dtype=dtype)
            if op == "ln":
                ok = check_forward(nk, info + f" k={k}", x,
                                   lambda t: F.layer_norm(t, ns, w.to(t.dtype), b.to(t.dtype), eps=eps),
                                   "layer_norm_forward", weight=w, bias=b, normalized_ndim=k, eps=eps)
            else:
                ok = check_backward(nk, info + f" k={k}", x, w, b, upstream(shape, dtype, cl),
                                    lambda a, c, d: F.layer_norm(a, ns, c, d, eps=eps),
                                    "LayerNorm", normalized_ndim=k, eps=eps)
        else:
            size = rng.randint(1, 7); alpha = rng.choice([1e-4, 1e-2]); beta = rng.choice([0.75, 0.5, 1.0]); kk = rng.choice([1.0, 2.0])
            ok = check_forward(nk, info + f" size={size} beta={beta}", x,
                               lambda t: F.local_response_norm(t, size, alpha, beta, kk),
                               "local_response_norm_forward", size=size, alpha=alpha, beta=beta, k=kk)
    except ValueError:
        continue  # PyTorch rejects the shape (one value per channel or group in training)
    except RuntimeError as e:
        print("ERROR", info, str(e).splitlines()[0]); ok = False
    fails += not ok
print(f"seed {seed}: {fails} mismatching case(s)")
sys.exit(1 if fails else 0)
