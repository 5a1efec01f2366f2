#!/usr/bin/env python3
"""Generates tests/golden/backward.json: PyTorch golden gradients for normkit's backward ops.

Run from the repository root:  python3 tests/golden/generate_backward.py
Deterministic (one seeded torch.Generator, single thread): regenerating with the same PyTorch
build gives a byte-identical file. Only the generator needs PyTorch; the Rust test
(tests/golden_backward.rs) reads the committed JSON. Schema: tests/golden/README.md, "Backward".

For every case the gradients come from autograd through the torch.nn.functional op (the input,
the affine parameters and the upstream gradient are leaves / given values). Each case is also
run in float64 on the exact same values (contiguous); PyTorch's own result is recorded only when
it lies within HALF the recorded tolerance of that float64 result (so any implementation that is
itself within half the tolerance of the exact gradient passes). Otherwise:
  * for f16/bf16 the float64 result rounded to the dtype is stored instead
    (`expected_source: "float64_reference"`, `pytorch_max_err` gives PyTorch's own error in
    units of the tolerance);
  * for f32/f64 the generator fails (the tolerance would not be attainable).
"""

import json
import math
import os
import sys
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate import DT, flat, short64  # noqa: E402  (encoding shared with the forward fixtures)

warnings.filterwarnings("ignore")
torch.set_num_threads(1)

SEED = 20240612
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "backward.json")
GEN = torch.Generator().manual_seed(SEED)

# Base tolerances of gradients (pass iff |got - exp| <= atol + rtol*|exp|). atol is multiplied by
# max(1, max|exp|) of the tensor, and for the parameter gradients (sums over the reduction set)
# both are multiplied by PARAM_SCALE.
TOL = {
    "f64": (1e-10, 1e-10),
    "f32": (1e-4, 1e-5),
    "f16": (5e-3, 5e-3),
    "bf16": (2e-2, 2e-2),
}
PARAM_SCALE = 2.0
LOW = ("f16", "bf16")


def randn(shape, dtype, scale=1.0, offset=0.0):
    x = torch.randn(shape, generator=GEN, dtype=torch.float64) * scale + offset
    if dtype == torch.float64:
        x = short64(x)
    return x.to(dtype)


def rand(shape, dtype, lo, hi):
    x = torch.rand(shape, generator=GEN, dtype=torch.float64) * (hi - lo) + lo
    if dtype == torch.float64:
        x = short64(x)
    return x.to(dtype)


def fmt(x, memory_format):
    if memory_format == "channels_last":
        return x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x.contiguous()


def run_op(op, args, x, w, b, rm, rv):
    if op == "batch_norm":
        training = args["training"]
        return F.batch_norm(x, None if training else rm, None if training else rv, w, b, training=training,
                            momentum=0.1, eps=args["eps"])
    if op == "instance_norm":
        use = args["use_input_stats"]
        return F.instance_norm(x, None if use else rm, None if use else rv, w, b, use_input_stats=use,
                               momentum=0.1, eps=args["eps"])
    if op == "group_norm":
        return F.group_norm(x, args["num_groups"], w, b, args["eps"])
    if op == "layer_norm":
        return F.layer_norm(x, args["normalized_shape"], w, b, args["eps"])
    if op == "local_response_norm":
        return F.local_response_norm(x, args["size"], args["alpha"], args["beta"], args["k"])
    raise ValueError(op)


def grads(op, args, x, g, w, b, rm, rv, x_format, g_format):
    """Autograd gradients (grad_input, grad_weight, grad_bias) of sum(g * op(x))."""
    x = fmt(x.detach().clone(), x_format).requires_grad_()
    w = None if w is None else w.detach().clone().requires_grad_()
    b = None if b is None else b.detach().clone().requires_grad_()
    rm = None if rm is None else rm.clone()
    rv = None if rv is None else rv.clone()
    y = run_op(op, args, x, w, b, rm, rv)
    y.backward(fmt(g, g_format))
    return x.grad, (None if w is None else w.grad), (None if b is None else b.grad)


def tol_of(dname, ref, param=False, mag=0.0):
    rtol, atol = TOL[dname]
    s = PARAM_SCALE if param else 1.0
    mag = max([1.0, mag] + [abs(v) for v in ref.reshape(-1).tolist() if math.isfinite(v)])
    return {"rtol": rtol * s, "atol": atol * s * mag}


def term_scale(op, args, x, g, w, rm, rv):
    """max |g·γ·r| (float64): the size of the terms whose difference grad_input is. In training
    grad_input = γ·r·(g − mean(g) − x̂·mean(g·x̂)) can cancel to ~0 (e.g. two elements per group),
    so the absolute tolerance is relative to these terms, not to the (tiny) result."""
    if op == "local_response_norm" or x.numel() == 0:
        return 0.0
    eps = args["eps"]
    nd = x.dim()
    if op == "layer_norm":
        dims = tuple(range(nd - len(args["normalized_shape"]), nd))
        var = x.var(dim=dims, unbiased=False, keepdim=True)
    elif op == "group_norm":
        G = args["num_groups"]
        xv = x.reshape(x.shape[0], G, -1)
        var = xv.var(dim=2, unbiased=False, keepdim=True).expand_as(xv).reshape(x.shape)
    elif (op == "batch_norm" and not args["training"]) or (op == "instance_norm" and not args["use_input_stats"]):
        var = rv.reshape((1, -1) + (1,) * (nd - 2))
    elif op == "batch_norm":
        var = x.var(dim=tuple(d for d in range(nd) if d != 1), unbiased=False, keepdim=True)
    else:
        var = x.var(dim=tuple(range(2, nd)), unbiased=False, keepdim=True)
    t = g * (var + eps).rsqrt()
    if w is not None:
        t = t * (w if op == "layer_norm" else w.reshape((1, -1) + (1,) * (nd - 2)))
    return t.abs().max().item() if t.numel() else 0.0


def max_err(got, ref, tol):
    worst = 0.0
    for gv, rv in zip(got.to(torch.float64).reshape(-1).tolist(), ref.to(torch.float64).reshape(-1).tolist()):
        if math.isnan(gv) or math.isnan(rv) or math.isinf(gv) or math.isinf(rv):
            if not (gv == rv or (math.isnan(gv) and math.isnan(rv))):
                return math.inf
            continue
        worst = max(worst, abs(gv - rv) / (tol["atol"] + tol["rtol"] * abs(rv)))
    return worst


CASES = []
NAMES = set()


def case(name, op, dname, shape, args, pdt="same", affine=(True, True), fmt_x="contiguous",
         fmt_g="contiguous", scale=1.0, offset=0.0, deviation=None):
    """Records one case. affine = (has weight, has bias); pdt "same" or "f32" (mixed)."""
    assert name not in NAMES, name
    NAMES.add(name)
    dt = DT[dname]
    pdt_t = dt if pdt == "same" else DT[pdt]
    x = randn(shape, dt, scale, offset)
    g = randn(shape, dt)
    if op == "layer_norm":
        pshape = tuple(args["normalized_shape"])
    elif op == "local_response_norm":
        pshape = None
    else:
        pshape = (shape[1],)
    w = rand(pshape, pdt_t, 0.5, 1.5) if pshape and affine[0] else None
    b = randn(pshape, pdt_t, 0.5) if pshape and affine[1] else None
    running = (op == "batch_norm" and not args["training"]) or (op == "instance_norm" and not args["use_input_stats"])
    rm = randn(pshape, pdt_t, 0.5, offset) if running else None
    rv = rand(pshape, pdt_t, 0.5, 2.0 * max(scale, 1e-30) ** 2) if running else None

    def up(t):
        return None if t is None else t.to(torch.float64)

    ref = grads(op, args, up(x), up(g), up(w), up(b), up(rm), up(rv), "contiguous", "contiguous")
    pname = dname if pdt == "same" else pdt
    tols = [tol_of(dname, ref[0], mag=term_scale(op, args, up(x), up(g), up(w), up(rm), up(rv))), None if ref[1] is None else tol_of(pname, ref[1], True),
            None if ref[2] is None else tol_of(pname, ref[2], True)]
    if deviation == "lrn_low_precision_rank":
        got, worst = None, math.inf  # PyTorch raises NotImplementedError for this dtype and rank
    else:
        got = grads(op, args, x, g, w, b, rm, rv, fmt_x, fmt_g)
        worst = max(max_err(gt, rt, t) for gt, rt, t in zip(got, ref, tols) if rt is not None)
    c = {"name": name, "op": op, "dtype": dname, "param_dtype": pdt, "args": args, "memory_format": fmt_x,
         "grad_output_format": fmt_g, "shape": list(shape), "input": flat(x),
         "weight": None if w is None else flat(w), "bias": None if b is None else flat(b),
         "running_mean": None if rm is None else flat(rm), "running_var": None if rv is None else flat(rv),
         "grad_output": flat(g), "tol": tols[0]}
    if tols[1] is not None or tols[2] is not None:
        c["param_tol"] = tols[1] or tols[2]
        if tols[1] and tols[2]:
            c["param_tol"] = {k: max(tols[1][k], tols[2][k]) for k in ("rtol", "atol")}
            tols[1] = tols[2] = c["param_tol"]
        worst = worst if got is None else max(max_err(gt, rt, t) for gt, rt, t in zip(got, ref, tols)
                                              if rt is not None)
    if worst <= 0.5:
        exp = got
    elif dname in LOW:
        exp = [None if t is None else t.to(dt if i == 0 else pdt_t) for i, t in enumerate(ref)]
        c["expected_source"] = "float64_reference"
        if math.isfinite(worst):
            c["pytorch_max_err"] = round(worst, 3)
    else:
        raise AssertionError(f"{name}: PyTorch is {worst:.2f}x the tolerance away from float64")
    if deviation:
        c["pytorch_deviation"] = deviation
    c["grad_input"] = flat(exp[0], dname)
    c["grad_weight"] = None if exp[1] is None else flat(exp[1], pname)
    c["grad_bias"] = None if exp[2] is None else flat(exp[2], pname)
    CASES.append(c)


DTYPES = [("f32", "same"), ("f64", "same"), ("f16", "same"), ("f16", "f32"), ("bf16", "same"), ("bf16", "f32")]


def tag(dname, pdt):
    return dname if pdt == "same" else f"{dname}_p{pdt}"


def gen_batch_norm():
    for dname, pdt in DTYPES:
        t = tag(dname, pdt)
        for training in (True, False):
            mode = "train" if training else "eval"
            args = {"training": training, "eps": 1e-5}
            case(f"bn_{mode}_4d_{t}", "batch_norm", dname, (2, 3, 4, 5), args, pdt)
            case(f"bn_{mode}_4d_{t}_cl", "batch_norm", dname, (2, 3, 4, 5), args, pdt, fmt_x="channels_last",
                 fmt_g="channels_last")
            case(f"bn_{mode}_4d_{t}_cl_gcontig", "batch_norm", dname, (3, 4, 3, 2), args, pdt,
                 fmt_x="channels_last")
            case(f"bn_{mode}_3d_{t}", "batch_norm", dname, (3, 5, 7), args, pdt)
            case(f"bn_{mode}_2d_{t}", "batch_norm", dname, (13, 7), args, pdt)
    for dname in ("f32", "f64"):
        for training in (True, False):
            mode = "train" if training else "eval"
            args = {"training": training, "eps": 1e-3}
            case(f"bn_{mode}_5d_{dname}_cl3d", "batch_norm", dname, (2, 3, 2, 3, 4), args, fmt_x="channels_last",
                 fmt_g="channels_last")
            case(f"bn_{mode}_n1_{dname}", "batch_norm", dname, (1, 7, 13), args)
            case(f"bn_{mode}_c1_odd_{dname}", "batch_norm", dname, (2, 1, 97), args)
            case(f"bn_{mode}_no_affine_{dname}", "batch_norm", dname, (4, 3, 5), args, affine=(False, False))
            case(f"bn_{mode}_weight_only_{dname}", "batch_norm", dname, (4, 3, 5), args, affine=(True, False))
            case(f"bn_{mode}_bias_only_{dname}", "batch_norm", dname, (4, 3, 5), args, affine=(False, True))
            case(f"bn_{mode}_scaled_{dname}", "batch_norm", dname, (3, 4, 6), args, scale=20.0, offset=-3.0)


def gen_instance_norm():
    for dname, pdt in DTYPES:
        t = tag(dname, pdt)
        for use in (True, False):
            mode = "train" if use else "eval_running"
            args = {"use_input_stats": use, "eps": 1e-5}
            case(f"in_{mode}_1d_{t}", "instance_norm", dname, (2, 3, 13), args, pdt)
            case(f"in_{mode}_2d_{t}_cl", "instance_norm", dname, (2, 4, 3, 5), args, pdt, fmt_x="channels_last",
                 fmt_g="channels_last")
    for dname in ("f32", "f64"):
        for use in (True, False):
            mode = "train" if use else "eval_running"
            args = {"use_input_stats": use, "eps": 1e-5}
            case(f"in_{mode}_3d_{dname}_cl3d_gcontig", "instance_norm", dname, (1, 2, 2, 3, 4), args,
                 fmt_x="channels_last")
            case(f"in_{mode}_no_affine_{dname}", "instance_norm", dname, (3, 2, 7), args, affine=(False, False))
            case(f"in_{mode}_weight_only_{dname}", "instance_norm", dname, (2, 3, 1, 7), args, affine=(True, False))
            case(f"in_{mode}_odd_{dname}", "instance_norm", dname, (1, 3, 97), args)


def gen_group_norm():
    for dname, pdt in DTYPES:
        t = tag(dname, pdt)
        for g in (1, 2, 6):
            case(f"gn_g{g}_3d_{t}", "group_norm", dname, (2, 6, 5), {"num_groups": g, "eps": 1e-5}, pdt)
        case(f"gn_g2_4d_{t}_cl", "group_norm", dname, (2, 4, 3, 3), {"num_groups": 2, "eps": 1e-5}, pdt,
             fmt_x="channels_last", fmt_g="channels_last")
    for dname in ("f32", "f64"):
        case(f"gn_g3_2d_{dname}", "group_norm", dname, (13, 6), {"num_groups": 3, "eps": 1e-5})
        case(f"gn_g1_2d_{dname}", "group_norm", dname, (7, 6), {"num_groups": 1, "eps": 1e-5})
        case(f"gn_gC_4d_{dname}_cl_gcontig", "group_norm", dname, (2, 4, 2, 3), {"num_groups": 4, "eps": 1e-5},
             fmt_x="channels_last")
        case(f"gn_g2_5d_{dname}_cl3d", "group_norm", dname, (1, 4, 2, 2, 3), {"num_groups": 2, "eps": 1e-4},
             fmt_x="channels_last", fmt_g="channels_last")
        case(f"gn_g7_odd_{dname}", "group_norm", dname, (1, 7, 13), {"num_groups": 7, "eps": 1e-5})
        case(f"gn_g1_odd_{dname}", "group_norm", dname, (2, 1, 97), {"num_groups": 1, "eps": 1e-5})
        case(f"gn_no_affine_{dname}", "group_norm", dname, (2, 6, 4), {"num_groups": 3, "eps": 1e-5},
             affine=(False, False))
        case(f"gn_weight_only_{dname}", "group_norm", dname, (2, 6, 4), {"num_groups": 2, "eps": 1e-5},
             affine=(True, False))
        case(f"gn_scaled_{dname}", "group_norm", dname, (2, 4, 6), {"num_groups": 2, "eps": 1e-5}, scale=20.0,
             offset=5.0)


def gen_layer_norm():
    for dname, pdt in DTYPES:
        t = tag(dname, pdt)
        case(f"ln_1d_ns_{t}", "layer_norm", dname, (2, 5, 7), {"normalized_shape": [7], "eps": 1e-5}, pdt)
        case(f"ln_2d_ns_{t}", "layer_norm", dname, (2, 3, 4, 5), {"normalized_shape": [4, 5], "eps": 1e-5}, pdt)
        case(f"ln_2d_ns_{t}_cl", "layer_norm", dname, (2, 3, 2, 3), {"normalized_shape": [2, 3], "eps": 1e-5},
             pdt, fmt_x="channels_last", fmt_g="channels_last")
    for dname in ("f32", "f64"):
        case(f"ln_ns97_{dname}", "layer_norm", dname, (3, 97), {"normalized_shape": [97], "eps": 1e-5})
        case(f"ln_3d_ns_{dname}", "layer_norm", dname, (2, 3, 4, 5), {"normalized_shape": [3, 4, 5], "eps": 1e-5})
        case(f"ln_whole_{dname}", "layer_norm", dname, (13,), {"normalized_shape": [13], "eps": 1e-5})
        case(f"ln_ns1_{dname}", "layer_norm", dname, (4, 1), {"normalized_shape": [1], "eps": 1e-5})
        case(f"ln_no_affine_1d_{dname}", "layer_norm", dname, (3, 7), {"normalized_shape": [7], "eps": 1e-5},
             affine=(False, False))
        case(f"ln_no_affine_2d_{dname}_cl", "layer_norm", dname, (2, 3, 2, 4),
             {"normalized_shape": [2, 4], "eps": 1e-5}, affine=(False, False), fmt_x="channels_last")
        case(f"ln_weight_only_{dname}", "layer_norm", dname, (3, 2, 6), {"normalized_shape": [2, 6], "eps": 1e-5},
             affine=(True, False))
        case(f"ln_scaled_{dname}", "layer_norm", dname, (4, 9), {"normalized_shape": [9], "eps": 1e-3},
             scale=20.0, offset=5.0)


def gen_lrn():
    configs = [  # size, alpha, beta, k, shape, x format
        (1, 1e-4, 0.75, 1.0, (2, 3, 4), "contiguous"),
        (2, 0.5, 0.75, 1.0, (2, 5, 3), "contiguous"),
        (3, 1.0, 0.5, 2.0, (1, 7, 2, 3), "channels_last"),
        (4, 0.3, 0.75, 1.0, (2, 6, 2, 2), "contiguous"),
        (5, 0.2, 1.0, 1.5, (1, 4, 2, 1, 3), "channels_last"),
        (7, 1.0, 0.75, 1.0, (2, 3, 2), "contiguous"),  # size > C (odd)
        (4, 0.8, 0.6, 1.0, (2, 3, 5), "contiguous"),  # size > C (even)
        (6, 0.7, 0.6, 0.5, (1, 13, 1, 2, 1, 2), "contiguous"),  # rank 6
        (3, 0.1, 0.75, 1.0, (1, 2, 97), "contiguous"),
    ]
    for dname in ("f32", "f64"):
        for (size, alpha, beta, k, shape, f) in configs:
            args = {"size": size, "alpha": alpha, "beta": beta, "k": k}
            case(f"lrn_size{size}_{len(shape)}d_c{shape[1]}_{dname}", "local_response_norm", dname, shape, args,
                 fmt_x=f, fmt_g=f)
        case(f"lrn_size3_4d_{dname}_cl_gcontig", "local_response_norm", dname, (2, 5, 2, 3),
             {"size": 3, "alpha": 0.5, "beta": 0.75, "k": 1.0}, fmt_x="channels_last")
    for dname in LOW:
        for size in (2, 3, 5):
            case(f"lrn_size{size}_3d_{dname}", "local_response_norm", dname, (2, 4, 5),
                 {"size": size, "alpha": 0.4, "beta": 0.75, "k": 1.0})
        case(f"lrn_size3_4d_{dname}", "local_response_norm", dname, (1, 4, 2, 3),
             {"size": 3, "alpha": 0.4, "beta": 0.75, "k": 1.0}, deviation="lrn_low_precision_rank")


def gen_empty():
    """Zero-size inputs (spec §2.6, §11): empty grad_input, zero parameter gradients."""
    for training in (True, False):
        mode = "train" if training else "eval"
        case(f"bn_{mode}_empty_batch_f32", "batch_norm", "f32", (0, 3, 4), {"training": training, "eps": 1e-5})
    case("gn_empty_batch_f32", "group_norm", "f32", (0, 4, 3), {"num_groups": 2, "eps": 1e-5})
    case("ln_empty_rows_f32", "layer_norm", "f32", (0, 5), {"normalized_shape": [5], "eps": 1e-5})
    case("lrn_empty_batch_f32", "local_response_norm", "f32", (0, 3, 4),
         {"size": 3, "alpha": 1e-4, "beta": 0.75, "k": 1.0})


def main():
    gen_batch_norm()
    gen_instance_norm()
    gen_group_norm()
    gen_layer_norm()
    gen_lrn()
    gen_empty()
    data = {"torch_version": torch.__version__.split("+")[0], "seed": SEED, "family": "backward", "cases": CASES}
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    with open(OUT, "w") as f:
        f.write(text)
        f.write("\n")
    by_op = {}
    for c in CASES:
        by_op[c["op"]] = by_op.get(c["op"], 0) + 1
    f64ref = [c["name"] for c in CASES if c.get("expected_source")]
    print(f"backward.json: {len(CASES)} cases {by_op}, {len(text) / 1024:.0f} KiB")
    print(f"float64_reference ({len(f64ref)}): {f64ref}")


if __name__ == "__main__":
    sys.exit(main())
