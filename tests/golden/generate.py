#!/usr/bin/env python3
"""Generates the golden fixtures of normkit's conformance tests from PyTorch (CPU).

Run from the repository root:  python3 tests/golden/generate.py
Deterministic: every random tensor comes from one seeded torch.Generator, and each family
re-seeds it, so regenerating with the same PyTorch build gives byte-identical files.

Only the generator needs PyTorch; the Rust tests read the committed JSON files.
The schema is described in tests/golden/README.md.
"""

import copy
import json
import math
import os
import struct
import sys
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

warnings.filterwarnings("ignore")
torch.set_num_threads(1)

SEED = 20240611
OUT_DIR = os.path.dirname(os.path.abspath(__file__))

DT = {"f32": torch.float32, "f64": torch.float64, "f16": torch.float16, "bf16": torch.bfloat16}

# Tolerances (spec §10, loosened to be safe): outputs and float state.
TOL = {
    "f32": {"rtol": 1e-4, "atol": 1e-5},
    "f64": {"rtol": 1e-10, "atol": 1e-10},
    "f16": {"rtol": 2e-3, "atol": 2e-3},
    "bf16": {"rtol": 1e-2, "atol": 1e-2},
}

GEN = torch.Generator().manual_seed(SEED)


def reseed(offset):
    GEN.manual_seed(SEED + offset)


# ----------------------------------------------------------------------------- encoding


def _f32_short(v):
    """Shortest decimal that parses (as f64) and rounds (to f32) back to the f32 value v."""
    for p in range(6, 10):
        s = "%.*g" % (p, v)
        if struct.unpack("f", struct.pack("f", float(s)))[0] == v:
            return float(s)
    return v


def enc_value(v, dtype_name):
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    if dtype_name == "f32":
        return _f32_short(v)
    return v  # f64: repr roundtrips; f16/bf16 values are exact short binary fractions


def flat(t, dtype_name=None):
    """Flat list in logical row-major order of the element values of t."""
    if dtype_name is None:
        dtype_name = name_of(t.dtype)
    vals = t.detach().contiguous().reshape(-1).to(torch.float64).tolist()
    return [enc_value(v, dtype_name) for v in vals]


def name_of(dtype):
    for k, v in DT.items():
        if v == dtype:
            return k
    raise ValueError(dtype)


# ----------------------------------------------------------------------------- data


def randn(shape, dtype, scale=1.0, offset=0.0):
    """Random values generated in float64, then rounded to dtype (so exactly representable)."""
    x = torch.randn(shape, generator=GEN, dtype=torch.float64) * scale + offset
    if dtype == torch.float64:
        x = short64(x)
    return x.to(dtype)


def short64(x):
    """float64 data with 7 significant digits (keeps the fixtures small; still exact values)."""
    return torch.tensor([float("%.7g" % v) for v in x.reshape(-1).tolist()], dtype=torch.float64).reshape(x.shape)


def rand(shape, dtype, lo=0.0, hi=1.0):
    x = torch.rand(shape, generator=GEN, dtype=torch.float64) * (hi - lo) + lo
    if dtype == torch.float64:
        x = short64(x)
    return x.to(dtype)


def to_format(x, fmt):
    if fmt == "channels_last":
        if x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        if x.dim() == 5:
            return x.contiguous(memory_format=torch.channels_last_3d)
        raise ValueError("channels_last needs rank 4 or 5")
    return x.contiguous()


def tol_for(dtype_name, scale=1.0):
    t = TOL[dtype_name]
    return {"rtol": t["rtol"] * scale, "atol": t["atol"] * scale}


def check_close(name, got, ref, tol, what):
    """Generator self-check: PyTorch's value must be within the recorded tolerance of a float64
    reference, so a correct implementation can meet it. Returns the max normalised error."""
    got = got.detach().to(torch.float64).reshape(-1)
    ref = ref.detach().to(torch.float64).reshape(-1)
    worst = 0.0
    for g, r in zip(got.tolist(), ref.tolist()):
        if math.isnan(g) or math.isnan(r):
            if not (math.isnan(g) and math.isnan(r)):
                raise AssertionError(f"{name}: {what}: NaN mismatch got {g} ref {r}")
            continue
        if math.isinf(g) or math.isinf(r):
            if g != r:
                raise AssertionError(f"{name}: {what}: inf mismatch got {g} ref {r}")
            continue
        bound = tol["atol"] + tol["rtol"] * abs(r)
        worst = max(worst, abs(g - r) / bound)
    if worst > 1.0:
        raise AssertionError(f"{name}: {what}: PyTorch differs from float64 reference by {worst:.2f}x tolerance")
    return worst


# ----------------------------------------------------------------------------- modules

STATE_KEYS = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


def module_state(m):
    st = {}
    for k in STATE_KEYS:
        t = getattr(m, k, None)
        if t is None or isinstance(t, nn.parameter.UninitializedTensorMixin):
            continue
        if k == "num_batches_tracked":
            st[k] = int(t.item())
        else:
            st[k] = flat(t)
    return st


def build_module(layer, param_dtype):
    kind = layer["kind"]
    kw = {}
    if kind.startswith("Lazy"):
        cls = getattr(nn, kind)
        for k in ("eps", "momentum", "affine", "track_running_stats", "bias"):
            if k in layer:
                kw[k] = layer[k]
        return cls(dtype=param_dtype, **kw)
    if kind.startswith("BatchNorm") or kind.startswith("InstanceNorm"):
        cls = getattr(nn, kind)
        return cls(
            layer["num_features"],
            eps=layer["eps"],
            momentum=layer["momentum"],
            affine=layer["affine"],
            track_running_stats=layer["track_running_stats"],
            bias=layer["bias"],
            dtype=param_dtype,
        )
    if kind == "GroupNorm":
        return nn.GroupNorm(
            layer["num_groups"], layer["num_channels"], eps=layer["eps"], affine=layer["affine"],
            bias=layer["bias"], dtype=param_dtype,
        )
    if kind == "LayerNorm":
        return nn.LayerNorm(
            layer["normalized_shape"], eps=layer["eps"], elementwise_affine=layer["elementwise_affine"],
            bias=layer["bias"], dtype=param_dtype,
        )
    if kind == "LocalResponseNorm":
        return nn.LocalResponseNorm(layer["size"], alpha=layer["alpha"], beta=layer["beta"], k=layer["k"])
    raise ValueError(kind)


def randomise_state(m, param_dtype, running=True):
    """Non-trivial initial parameters / running stats, exactly representable in param_dtype."""
    with torch.no_grad():
        if getattr(m, "weight", None) is not None:
            m.weight.copy_(randn(m.weight.shape, param_dtype, 0.5, 1.0))
        if getattr(m, "bias", None) is not None:
            m.bias.copy_(randn(m.bias.shape, param_dtype, 0.5))
        if running and getattr(m, "running_mean", None) is not None:
            m.running_mean.copy_(randn(m.running_mean.shape, param_dtype, 0.2))
            m.running_var.copy_(rand(m.running_var.shape, param_dtype, 0.5, 1.5))


def ref_forward(m, x64, kind):
    """A float64 PyTorch run of the same module (deep-copied state) on the exact input values."""
    import copy

    return m(x64), m


def run_case(case, module, inputs, modes, fmt="contiguous", deviation=None, ref_tol_scale=1.0, sets=None,
             check_ref=True, f64_expected=False):
    """Runs `module` over the step inputs and records the steps in `case`.

    deviation: None | "groupnorm_channels_last" | "lrn_low_precision_rank" | "lrn_f16_overflow";
    for those the expected output is computed from contiguous / upcast input (see README)."""
    dname = case["dtype"]
    out_tol = case["tol"]
    state_tol = case["state_tol"]
    steps = []
    for i, (x, mode) in enumerate(zip(inputs, modes)):
        step = {"mode": mode}
        if sets and i in sets:
            step["set"] = sets[i]
            for k, v in sets[i].items():
                setattr(module, k, v)
        module.train(mode == "train")
        import copy

        uninit = any(isinstance(t, nn.parameter.UninitializedTensorMixin)
                     for t in list(module.parameters()) + list(module.buffers()))
        if uninit:
            before = build_module(case["layer"], torch.float64)
        else:
            before = copy.deepcopy(module).to(torch.float64)
        xin = to_format(x, fmt) if fmt != "contiguous" else x
        if f64_expected:
            m64 = copy.deepcopy(module).to(torch.float64)
            y = m64(x.to(torch.float64)).to(x.dtype)
            with torch.no_grad():
                for k in ("running_mean", "running_var", "num_batches_tracked"):
                    if getattr(module, k, None) is not None:
                        getattr(module, k).copy_(getattr(m64, k))
        elif deviation == "groupnorm_channels_last":
            y = module(x.contiguous())
        elif deviation in ("lrn_low_precision_rank", "lrn_f16_overflow"):
            y = module(x.to(torch.float64)).to(x.dtype)
        else:
            y = module(xin)
        if check_ref and x.numel() > 0 and not f64_expected:
            before.train(mode == "train")
            yref, after_ref = ref_forward(before, x.to(torch.float64), case["layer"]["kind"])
            yref = yref.to(x.dtype)
            # compare PyTorch's low-precision result with the float64 result rounded to dtype
            check_close(case["name"], y, yref, {k: v * ref_tol_scale for k, v in out_tol.items()},
                        f"step {i} output")
            st_ref = module_state(after_ref)
            st = module_state(module)
            for k in st:
                if k == "num_batches_tracked":
                    continue
                # running stats live in param dtype
                a = torch.tensor([v if not isinstance(v, str) else float(v) for v in st[k]], dtype=torch.float64)
                b = torch.tensor([v if not isinstance(v, str) else float(v) for v in st_ref[k]],
                                 dtype=torch.float64)
                check_close(case["name"], a, b, state_tol, f"step {i} state {k}")
        step["shape"] = list(x.shape)
        step["input"] = flat(x)
        step["output"] = flat(y)
        step["state"] = module_state(module)
        steps.append(step)
    case["steps"] = steps
    if fmt != "contiguous":
        case["memory_format"] = fmt
    if deviation:
        case["pytorch_deviation"] = deviation
    return case


def new_case(name, layer, dname, pdt="same", fmt="contiguous", tol_scale=1.0):
    state_dname = dname if pdt == "same" else pdt
    return {
        "name": name,
        "layer": layer,
        "dtype": dname,
        "param_dtype": pdt,
        "memory_format": fmt,
        "tol": tol_for(dname, tol_scale),
        "state_tol": tol_for(state_dname, tol_scale),
    }


def module_case(name, layer, dname, shapes, modes, pdt="same", fmt="contiguous", init_random=True, scale=1.0,
                offset=0.0, deviation=None, tol_scale=1.0, sets=None, inputs=None, init_state=None,
                check_ref=True, f64_expected=False):
    dtype = DT[dname]
    param_dtype = DT[pdt] if pdt != "same" else dtype
    case = new_case(name, layer, dname, pdt, fmt, tol_scale)
    m = build_module(layer, param_dtype)
    if init_random and not layer["kind"].startswith("Lazy"):
        randomise_state(m, param_dtype)
    if init_state:
        with torch.no_grad():
            for k, v in init_state.items():
                getattr(m, k).copy_(torch.tensor(v, dtype=param_dtype))
    if not layer["kind"].startswith("Lazy"):
        case["init_state"] = module_state(m)
    if inputs is None:
        inputs = [randn(s, dtype, scale, offset) for s in shapes]
    if f64_expected:
        case["expected_source"] = "float64_reference"
        case["tol"] = {"rtol": 1e-3, "atol": 1e-3}
    return run_case(case, m, inputs, modes, fmt, deviation, 1.0, sets, check_ref, f64_expected)


# ----------------------------------------------------------------------------- functional


def fcase(name, op, dname, pdt, args, tensors, outputs, saved=None, tol_scale=1.0, extra=None):
    c = {"name": name, "op": op, "dtype": dname, "param_dtype": pdt, "args": args,
         "tol": tol_for(dname, tol_scale), "state_tol": tol_for(dname if pdt == "same" else pdt, tol_scale)}
    c["shape"] = list(tensors["input"].shape)
    for k, t in tensors.items():
        c[k] = None if t is None else flat(t)
    for k, t in outputs.items():
        c[k] = None if t is None else flat(t)
    if saved is not None:
        # normkit's saved statistics: float32 for f32/f16/bf16 inputs, float64 for f64 inputs.
        c["saved_dtype"] = "f64" if dname == "f64" else "f32"
        c["save_mean"] = flat(saved[0], c["saved_dtype"])
        c["save_invstd"] = flat(saved[1], c["saved_dtype"])
        c["saved_tol"] = tol_for(c["saved_dtype"])
    if extra:
        c.update(extra)
    return c


def saved_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------- errors


def expect_error(name, condition, layer, shape, mode="train", dname="f32", pdt="same", functional=None,
                 init=None, kind_hint=None, state_after=True, target="layer", values=None):
    dtype = DT[dname]
    x = randn(shape, dtype) if values is None else torch.tensor(values, dtype=dtype).reshape(shape)
    err = None
    m = None
    try:
        if target == "constructor":
            build_module(layer, dtype)
        elif target == "layer":
            m = build_module(layer, DT[pdt] if pdt != "same" else dtype)
            if init:
                init(m)
            m.train(mode == "train")
            m(x)
        else:
            functional(x)
    except Exception as e:  # noqa: BLE001
        err = f"{type(e).__name__}: {e}"
    if err is None:
        raise AssertionError(f"error case {name} did not raise")
    c = {"name": name, "condition": condition, "target": target, "dtype": dname, "param_dtype": pdt,
         "mode": mode, "shape": list(shape), "input": flat(x), "pytorch_error": err.split("\n")[0][:300],
         "error_kind": kind_hint}
    if layer is not None:
        c["layer"] = layer
    if functional is not None:
        c["args"] = functional.args
    if m is not None and state_after:
        c["state_after"] = module_state(m)
    return c


class Fn:
    """A callable with its JSON-able argument description."""

    def __init__(self, f, args):
        self.f = f
        self.args = args

    def __call__(self, x):
        return self.f(x)


# ============================================================================= families


def bn_layer(kind, c, eps=1e-5, momentum=0.1, affine=True, track=True, bias=True):
    return {"kind": kind, "num_features": c, "eps": eps, "momentum": momentum, "affine": affine,
            "track_running_stats": track, "bias": bias}


COMBOS = [  # (affine, track, momentum, bias)
    (True, True, 0.1, True),
    (False, True, None, True),
    (True, False, 0.1, True),
    (False, False, 0.1, True),
    (True, True, 0.3, False),
]


def gen_batch_norm():
    reseed(1)
    cases, fcases, errors = [], [], []
    shapes = {
        "BatchNorm1d_2d": lambda c: (5, c),
        "BatchNorm1d_3d": lambda c: (2, c, 3),
        "BatchNorm2d": lambda c: (2, c, 3, 2),
        "BatchNorm3d": lambda c: (2, c, 2, 1, 3),
    }
    chans = [3, 7, 1, 13]
    for variant, shp in shapes.items():
        kind = variant.split("_")[0]
        for di, dname in enumerate(DT):
            combos = COMBOS if dname in ("f32", "f64") else COMBOS[:2] + COMBOS[3:4]
            for ci, (affine, track, mom, bias) in enumerate(combos):
                c = chans[(di + ci) % len(chans)]
                if c == 13 and kind == "BatchNorm3d":
                    c = 5
                layer = bn_layer(kind, c, momentum=mom, affine=affine, track=track, bias=bias)
                fmts = ["contiguous"]
                if kind in ("BatchNorm2d", "BatchNorm3d") and (ci % 2 == 0 or dname in ("f16", "bf16")):
                    fmts.append("channels_last")
                for fmt in fmts:
                    name = f"{variant}_{dname}_a{int(affine)}_t{int(track)}_m{mom}_b{int(bias)}_c{c}_{fmt}"
                    s = shp(c)
                    s2 = (s[0] + 1,) + s[1:]
                    cases.append(module_case(name, layer, dname, [s, s2, s, s2],
                                             ["train", "train", "train", "eval"], fmt=fmt))
        # mixed precision: f16/bf16 input, f32 params and running stats
        for dname in ("f16", "bf16"):
            c = 3
            layer = bn_layer(kind, c)
            s = shp(c)
            for fmt in (["contiguous", "channels_last"] if kind in ("BatchNorm2d", "BatchNorm3d") else ["contiguous"]):
                cases.append(module_case(f"{variant}_{dname}_mixed_f32_params_{fmt}", layer, dname, [s, s, s],
                                         ["train", "train", "eval"], pdt="f32", fmt=fmt))

    # spec §2.4 worked example (float64) and momentum=None cumulative average
    x = torch.tensor([[1, 10], [2, 20], [4, 60]], dtype=torch.float64)
    cases.append(module_case("spec_2_4_worked_example", bn_layer("BatchNorm1d", 2), "f64", None,
                             ["train", "eval"], init_random=False, inputs=[x, x]))
    cases.append(module_case("spec_2_4_momentum_none_cumulative", bn_layer("BatchNorm1d", 2, momentum=None), "f64",
                             None, ["train", "train", "eval"], init_random=False, inputs=[x, 2 * x, x]))
    for dname in ("f32", "bf16"):
        cases.append(module_case(f"momentum_none_cumulative_4_steps_{dname}",
                                 bn_layer("BatchNorm2d", 3, momentum=None), dname,
                                 [(2, 3, 2, 2), (3, 3, 1, 2), (2, 3, 2, 2), (2, 3, 3, 1), (2, 3, 2, 2)],
                                 ["train"] * 4 + ["eval"]))
    # zero batch: counter increments, stats unchanged
    cases.append(module_case("zero_batch_n0_increments_counter", bn_layer("BatchNorm2d", 3), "f32",
                             [(0, 3, 4, 4), (2, 3, 2, 2)], ["train", "eval"]))
    cases.append(module_case("zero_spatial_increments_counter", bn_layer("BatchNorm1d", 2), "f64",
                             [(3, 2, 0), (4, 2, 2)], ["train", "train"]))
    # track_running_stats flipped after construction
    cases.append(module_case("track_running_stats_flipped_off", bn_layer("BatchNorm2d", 3), "f32",
                             [(2, 3, 2, 2)] * 4, ["train", "train", "eval", "train"],
                             sets={1: {"track_running_stats": False}}))
    # odd sizes
    cases.append(module_case("odd_C97_N3", bn_layer("BatchNorm1d", 97), "f32", [(3, 97), (2, 97)], ["train", "eval"]))
    cases.append(module_case("odd_L97_N1", bn_layer("BatchNorm1d", 2), "f64", [(1, 2, 97), (1, 2, 97)],
                             ["train", "eval"]))
    cases.append(module_case("odd_C13_HW7", bn_layer("BatchNorm2d", 13), "f32", [(1, 13, 7, 1), (2, 13, 1, 7)],
                             ["train", "eval"], fmt="channels_last"))
    # momentum used literally
    cases.append(module_case("momentum_1_5_literal", bn_layer("BatchNorm1d", 2, momentum=1.5), "f64",
                             [(4, 2)], ["train"], init_random=False))
    # constant channel: variance 0 -> output = bias
    xc = torch.full((3, 2, 2), 2.5, dtype=torch.float32)
    cases.append(module_case("constant_channel_gives_bias", bn_layer("BatchNorm1d", 2), "f32", None,
                             ["train", "eval"], inputs=[xc, xc]))
    # eval with eps = 0 and nonzero running var
    cases.append(module_case("eval_eps_zero", bn_layer("BatchNorm2d", 2, eps=0.0), "f64", [(2, 2, 2, 2)],
                             ["eval"]))
    # large mean, small std (float32), compared against float64 module run
    cases.append(module_case("large_mean_1e4_std_1e-2", bn_layer("BatchNorm2d", 3), "f32",
                             [(4, 3, 5, 5), (4, 3, 5, 5)], ["train", "eval"], scale=1e-2, offset=1e4,
                             fmt="channels_last", f64_expected=True))
    # Lazy
    for kind, shp in (("LazyBatchNorm1d", (4, 5)), ("LazyBatchNorm2d", (2, 3, 2, 3)),
                      ("LazyBatchNorm3d", (2, 2, 2, 1, 3))):
        for dname in ("f32", "f64"):
            cases.append(module_case(f"{kind}_{dname}_defaults", {"kind": kind}, dname, [shp, shp, shp],
                                     ["train", "train", "eval"]))
    cases.append(module_case("LazyBatchNorm1d_first_call_eval", {"kind": "LazyBatchNorm1d"}, "f32", [(1, 3), (3, 3)],
                             ["eval", "train"]))
    cases.append(module_case("LazyBatchNorm2d_no_affine_momentum_none",
                             {"kind": "LazyBatchNorm2d", "affine": False, "momentum": None}, "f32",
                             [(2, 4, 2, 2), (2, 4, 2, 2), (2, 4, 2, 2)], ["train", "train", "eval"]))

    # ---------------- functional: torch.native_batch_norm
    for dname in DT:
        for pdt in (["same"] if dname in ("f32", "f64") else ["same", "f32"]):
            for training in (True, False):
                for affine in (True, False):
                    for shape in ((4, 3), (2, 5, 3, 2)):
                        dtype = DT[dname]
                        pd = dtype if pdt == "same" else DT[pdt]
                        C = shape[1]
                        x = randn(shape, dtype)
                        w = randn((C,), pd, 0.5, 1.0) if affine else None
                        b = randn((C,), pd, 0.5) if affine else None
                        rm0 = randn((C,), pd, 0.2)
                        rv0 = rand((C,), pd, 0.5, 1.5)
                        rm, rv = rm0.clone(), rv0.clone()
                        mom, eps = 0.2, 1e-3
                        y, sm, si = torch.native_batch_norm(x, w, b, rm, rv, training, mom, eps)
                        saved = None
                        if training:
                            sd = saved_dtype(dtype)
                            _, sm, si = torch.native_batch_norm(
                                x.to(sd), None if w is None else w.to(sd), None if b is None else b.to(sd),
                                rm0.clone().to(sd), rv0.clone().to(sd), True, mom, eps)
                            saved = (sm, si)
                        fcases.append(fcase(
                            f"native_batch_norm_{dname}_{pdt}_{'train' if training else 'eval'}_a{int(affine)}_{len(shape)}d",
                            "batch_norm", dname, pdt, {"training": training, "momentum": mom, "eps": eps},
                            {"input": x, "weight": w, "bias": b, "running_mean": rm0, "running_var": rv0},
                            {"output": y, "running_mean_after": rm, "running_var_after": rv}, saved))
    # training without running stats
    x = randn((3, 4, 5), torch.float64)
    y, sm, si = torch.native_batch_norm(x, None, None, None, None, True, 0.1, 1e-5)
    fcases.append(fcase("native_batch_norm_f64_train_no_running_stats", "batch_norm", "f64", "same",
                        {"training": True, "momentum": 0.1, "eps": 1e-5},
                        {"input": x, "weight": None, "bias": None, "running_mean": None, "running_var": None},
                        {"output": y}, (sm, si)))

    # ---------------- errors
    errors.append(expect_error("bn1d_batch_of_one_training", "batch_of_one_training", bn_layer("BatchNorm1d", 3),
                               (1, 3), kind_hint="InvalidArgument"))
    errors.append(expect_error("bn2d_batch_of_one_training", "batch_of_one_training", bn_layer("BatchNorm2d", 3),
                               (1, 3, 1, 1), kind_hint="InvalidArgument"))
    errors.append(expect_error("bn_untracked_eval_batch_of_one", "batch_of_one_training",
                               bn_layer("BatchNorm1d", 3, track=False), (1, 3, 1), mode="eval",
                               kind_hint="InvalidArgument"))
    errors.append(expect_error("bn_eps_zero_training", "eps_nonpositive_training", bn_layer("BatchNorm1d", 3, eps=0.0),
                               (4, 3), kind_hint="InvalidArgument"))
    errors.append(expect_error("bn_eps_negative_eval", "eps_negative", bn_layer("BatchNorm1d", 3, eps=-1.0),
                               (4, 3), mode="eval", kind_hint="InvalidArgument"))
    errors.append(expect_error("bn_channel_mismatch_tracking", "channel_mismatch", bn_layer("BatchNorm2d", 4),
                               (2, 3, 2, 2), kind_hint="ShapeMismatch"))
    errors.append(expect_error("bn_channel_mismatch_eval", "channel_mismatch", bn_layer("BatchNorm2d", 4),
                               (2, 3, 2, 2), mode="eval", kind_hint="ShapeMismatch"))
    errors.append(expect_error("bn_channel_mismatch_affine_untracked", "channel_mismatch",
                               bn_layer("BatchNorm1d", 4, track=False), (2, 3), kind_hint="ShapeMismatch"))
    errors.append(expect_error("bn2d_wrong_rank_3d", "wrong_rank", bn_layer("BatchNorm2d", 3), (2, 3, 4),
                               kind_hint="ShapeMismatch"))
    errors.append(expect_error("bn1d_wrong_rank_4d", "wrong_rank", bn_layer("BatchNorm1d", 3), (2, 3, 2, 2),
                               kind_hint="ShapeMismatch"))
    errors.append(expect_error("bn3d_wrong_rank_4d", "wrong_rank", bn_layer("BatchNorm3d", 3), (2, 3, 2, 2),
                               kind_hint="ShapeMismatch"))
    errors.append(expect_error("bn1d_wrong_rank_1d", "wrong_rank", bn_layer("BatchNorm1d", 3), (3,),
                               kind_hint="ShapeMismatch"))
    errors.append(expect_error(
        "native_bn_eval_missing_running_stats", "missing_running_stats", None, (4, 3), mode="eval",
        functional=Fn(lambda x: F.batch_norm(x, None, None, training=False), {"training": False, "eps": 1e-5,
                                                                              "momentum": 0.1}),
        target="functional", kind_hint="InvalidArgument"))
    errors.append(expect_error(
        "bn_mixed_dtype_f32_input_f64_params", "dtype_mismatch", bn_layer("BatchNorm1d", 3), (4, 3), pdt="f64",
        kind_hint="UnsupportedDType"))
    return {"family": "batch_norm", "cases": cases, "functional": fcases, "errors": errors}


def in_layer(kind, c, eps=1e-5, momentum=0.1, affine=False, track=False, bias=True):
    return {"kind": kind, "num_features": c, "eps": eps, "momentum": momentum, "affine": affine,
            "track_running_stats": track, "bias": bias}


def gen_instance_norm():
    reseed(2)
    cases, fcases, errors = [], [], []
    shapes = {
        "InstanceNorm1d_3d": ("InstanceNorm1d", lambda c: (2, c, 5)),
        "InstanceNorm1d_unbatched": ("InstanceNorm1d", lambda c: (c, 6)),
        "InstanceNorm2d": ("InstanceNorm2d", lambda c: (2, c, 3, 2)),
        "InstanceNorm2d_unbatched": ("InstanceNorm2d", lambda c: (c, 2, 3)),
        "InstanceNorm3d": ("InstanceNorm3d", lambda c: (2, c, 2, 1, 3)),
    }
    combos = [  # affine, track, momentum, bias
        (False, False, 0.1, True),
        (True, True, 0.1, True),
        (False, True, None, True),
        (True, False, 0.1, False),
    ]
    chans = [3, 1, 7, 2]
    for variant, (kind, shp) in shapes.items():
        for di, dname in enumerate(DT):
            cl = combos if dname in ("f32", "f64") else combos[:2]
            for ci, (affine, track, mom, bias) in enumerate(cl):
                c = chans[(di + ci) % len(chans)]
                layer = in_layer(kind, c, momentum=mom, affine=affine, track=track, bias=bias)
                s = shp(c)
                fmts = ["contiguous"]
                if len(s) >= 4 and "unbatched" not in variant and ci % 2 == 1:
                    fmts.append("channels_last")
                for fmt in fmts:
                    name = f"{variant}_{dname}_a{int(affine)}_t{int(track)}_m{mom}_b{int(bias)}_c{c}_{fmt}"
                    cases.append(module_case(name, layer, dname, [s, s, s, s], ["train", "train", "eval", "eval"],
                                             fmt=fmt))
        for dname in ("f16", "bf16"):
            s = shp(3)
            cases.append(module_case(f"{variant}_{dname}_mixed_f32_params", in_layer(kind, 3, affine=True, track=True),
                                     dname, [s, s, s], ["train", "train", "eval"], pdt="f32"))

    # spec §4.3 worked example
    x = torch.tensor([[[1, 2, 4], [0, 0, 3]], [[2, 2, 5], [1, 1, 1]]], dtype=torch.float64)
    cases.append(module_case("spec_4_3_worked_example", in_layer("InstanceNorm1d", 2, track=True), "f64", None,
                             ["train", "eval"], init_random=False, inputs=[x, x]))
    # eps = 0 with a constant plane -> 0
    ones = torch.ones(1, 2, 4, dtype=torch.float32)
    cases.append(module_case("eps0_constant_plane_gives_zero", in_layer("InstanceNorm1d", 2, eps=0.0), "f32", None,
                             ["train"], inputs=[ones]))
    cases.append(module_case("eps0_constant_plane_affine", in_layer("InstanceNorm2d", 2, eps=0.0, affine=True),
                             "f64", None, ["train"], inputs=[torch.full((2, 2, 2, 2), -3.0, dtype=torch.float64)]))
    # tracked eval with L = 1
    cases.append(module_case("tracked_eval_L1", in_layer("InstanceNorm1d", 3, track=True), "f32", [(2, 3, 1)],
                             ["eval"]))
    # odd sizes
    cases.append(module_case("odd_L97", in_layer("InstanceNorm1d", 1, affine=True, track=True), "f32",
                             [(1, 1, 97), (2, 1, 97)], ["train", "eval"]))
    cases.append(module_case("odd_C13_7x1", in_layer("InstanceNorm2d", 13, affine=True), "f32",
                             [(1, 13, 7, 1)], ["train"], fmt="channels_last"))
    # channel mismatch without affine: accepted (warning only)
    cases.append(module_case("channel_mismatch_no_affine_accepted", in_layer("InstanceNorm1d", 3), "f32",
                             [(2, 4, 5)], ["train"]))
    # large mean
    cases.append(module_case("large_mean_1e4_std_1e-2", in_layer("InstanceNorm2d", 3, affine=True), "f32",
                             [(2, 3, 6, 6)], ["train"], scale=1e-2, offset=1e4, fmt="channels_last", f64_expected=True))
    # Lazy (defaults affine + tracking)
    for kind, shp in (("LazyInstanceNorm1d", (2, 3, 5)), ("LazyInstanceNorm2d", (2, 3, 2, 3)),
                      ("LazyInstanceNorm3d", (2, 2, 2, 1, 3))):
        for dname in ("f32", "f64"):
            cases.append(module_case(f"{kind}_{dname}_defaults", {"kind": kind}, dname, [shp, shp, shp],
                                     ["train", "train", "eval"]))

    # functional: F.instance_norm with running stats
    for dname in DT:
        for use_input_stats in (True, False):
            dtype = DT[dname]
            x = randn((2, 3, 4), dtype)
            w = randn((3,), dtype, 0.5, 1.0)
            b = randn((3,), dtype, 0.5)
            rm0 = randn((3,), dtype, 0.2)
            rv0 = rand((3,), dtype, 0.5, 1.5)
            rm, rv = rm0.clone(), rv0.clone()
            y = F.instance_norm(x, rm, rv, w, b, use_input_stats, 0.2, 1e-3)
            fcases.append(fcase(f"instance_norm_{dname}_use_input_stats{int(use_input_stats)}", "instance_norm",
                                dname, "same", {"use_input_stats": use_input_stats, "momentum": 0.2, "eps": 1e-3},
                                {"input": x, "weight": w, "bias": b, "running_mean": rm0, "running_var": rv0},
                                {"output": y, "running_mean_after": rm, "running_var_after": rv}))
    x = randn((2, 3, 2, 3), torch.float32)
    y = F.instance_norm(x, eps=1e-5)
    fcases.append(fcase("instance_norm_f32_no_stats_no_affine", "instance_norm", "f32", "same",
                        {"use_input_stats": True, "momentum": 0.1, "eps": 1e-5},
                        {"input": x, "weight": None, "bias": None, "running_mean": None, "running_var": None},
                        {"output": y}))

    errors.append(expect_error("in_spatial_of_one_training", "batch_of_one_training", in_layer("InstanceNorm1d", 3),
                               (2, 3, 1), kind_hint="InvalidArgument"))
    errors.append(expect_error("in_untracked_eval_spatial_of_one", "batch_of_one_training",
                               in_layer("InstanceNorm1d", 3), (2, 3, 1), mode="eval", kind_hint="InvalidArgument"))
    errors.append(expect_error("in_unbatched_spatial_of_one", "batch_of_one_training", in_layer("InstanceNorm1d", 3),
                               (3, 1), kind_hint="InvalidArgument"))
    errors.append(expect_error("in_channel_mismatch_affine", "channel_mismatch",
                               in_layer("InstanceNorm2d", 3, affine=True), (2, 4, 2, 2), kind_hint="ShapeMismatch"))
    errors.append(expect_error("in_channel_mismatch_tracking_no_affine", "channel_mismatch",
                               in_layer("InstanceNorm1d", 3, track=True), (2, 4, 5), kind_hint="ShapeMismatch"))
    errors.append(expect_error("in1d_wrong_rank_1d", "wrong_rank", in_layer("InstanceNorm1d", 3), (3,),
                               kind_hint="ShapeMismatch"))
    errors.append(expect_error("in2d_wrong_rank_2d", "wrong_rank", in_layer("InstanceNorm2d", 3), (3, 4),
                               kind_hint="ShapeMismatch"))
    errors.append(expect_error("in3d_wrong_rank_6d", "wrong_rank", in_layer("InstanceNorm3d", 1), (1, 1, 2, 2, 2, 2),
                               kind_hint="ShapeMismatch"))
    errors.append(expect_error("lazy_in1d_unbatched_infers_dim1", "channel_mismatch",
                               {"kind": "LazyInstanceNorm1d"}, (3, 5), kind_hint="ShapeMismatch"))
    return {"family": "instance_norm", "cases": cases, "functional": fcases, "errors": errors}


def gn_layer(g, c, eps=1e-5, affine=True, bias=True):
    return {"kind": "GroupNorm", "num_groups": g, "num_channels": c, "eps": eps, "affine": affine, "bias": bias}


def gen_group_norm():
    reseed(3)
    cases, fcases, errors = [], [], []
    configs = [  # (G, C, shape)
        (2, 4, (3, 4)),
        (1, 3, (2, 3, 5)),
        (3, 6, (2, 6, 2, 3)),
        (7, 7, (2, 7, 3)),
        (2, 4, (2, 4, 2, 1, 3)),
        (1, 1, (1, 1, 13)),
        (13, 13, (2, 13)),
    ]
    for dname in DT:
        for gi, (G, C, shape) in enumerate(configs):
            for affine, bias in ((True, True), (False, True), (True, False)):
                if dname in ("f16", "bf16") and (affine, bias) == (True, False):
                    continue
                layer = gn_layer(G, C, affine=affine, bias=bias)
                fmts = ["contiguous"] + (["channels_last"] if len(shape) >= 4 else [])
                for fmt in fmts:
                    dev = "groupnorm_channels_last" if fmt == "channels_last" else None
                    name = f"gn_G{G}_C{C}_{len(shape)}d_{dname}_a{int(affine)}_b{int(bias)}_{fmt}"
                    s2 = (shape[0] + 1,) + shape[1:]
                    # C == G with 2-D input: one element per group; PyTorch's fused multiply-add leaves
                    # ~r·|x|·ulp garbage instead of exactly beta (spec §10), hence a looser tolerance.
                    ts = 10.0 if (G == C and len(shape) == 2) else 1.0
                    cases.append(module_case(name, layer, dname, [shape, s2, shape], ["train", "train", "eval"],
                                             fmt=fmt, deviation=dev, tol_scale=ts))
        if dname in ("f16", "bf16"):
            cases.append(module_case(f"gn_mixed_f32_params_{dname}", gn_layer(2, 4), dname,
                                     [(2, 4, 3, 2), (2, 4, 3, 2)], ["train", "eval"], pdt="f32", fmt="channels_last",
                                     deviation="groupnorm_channels_last"))
    # spec §7.3 worked example
    x = (torch.arange(8, dtype=torch.float64) ** 2).reshape(1, 4, 2)
    cases.append(module_case("spec_7_3_worked_example", gn_layer(2, 4), "f64", None, ["train"], init_random=False,
                             inputs=[x]))
    # odd sizes
    cases.append(module_case("odd_spatial_97", gn_layer(1, 2), "f32", [(1, 2, 97)], ["train"]))
    # one element per group with N = 2 -> ~0 (+ bias); PyTorch with affine gives tiny FMA garbage
    cases.append(module_case("one_element_per_group_n2", gn_layer(4, 4, affine=False), "f32", [(2, 4)], ["train"]))
    # eps = 0, constant group -> NaN
    cases.append(module_case("eps0_constant_group_nan", gn_layer(2, 4, eps=0.0, affine=False), "f64", None, ["train"],
                             inputs=[torch.tensor([[1.0, 1.0, 2.0, 3.0]], dtype=torch.float64).reshape(1, 4, 1)
                                     .expand(1, 4, 2).contiguous()], check_ref=False))
    # constant input: exactly 0 (PyTorch channels-last gives 3e-5; normkit must give the contiguous result)
    cases.append(module_case("constant_input_channels_last", gn_layer(2, 4, affine=False), "f32", None, ["train"],
                             inputs=[torch.full((2, 4, 3, 3), 7.25)], fmt="channels_last",
                             deviation="groupnorm_channels_last"))
    # large mean, small std: contiguous PyTorch (error 0.0047 vs f64), channels_last deviation; the expected values
    # for these two cases come from a float64 run on the same (float32) input values, rounded to float32.
    for fmt in ("contiguous", "channels_last"):
        reseed(33)
        x = randn((2, 4, 8, 8), torch.float32, 0.01, 1000.0)
        case = new_case(f"large_mean_1e3_std_1e-2_f64_reference_{fmt}", gn_layer(2, 4, affine=False), "f32", "same",
                        fmt)
        m = build_module(case["layer"], torch.float64)
        y = m(x.to(torch.float64)).to(torch.float32)
        case["init_state"] = {}
        case["steps"] = [{"mode": "train", "shape": list(x.shape), "input": flat(x), "output": flat(y), "state": {}}]
        case["tol"] = {"rtol": 1e-3, "atol": 1e-3}
        case["expected_source"] = "float64_reference"
        if fmt == "channels_last":
            case["pytorch_deviation"] = "groupnorm_channels_last"
        cases.append(case)

    # functional: native_group_norm
    for dname in DT:
        for pdt in (["same"] if dname in ("f32", "f64") else ["same", "f32"]):
            for affine in (True, False):
                for (G, shape) in ((2, (2, 4, 3)), (3, (3, 6)), (1, (1, 5, 2, 2))):
                    dtype = DT[dname]
                    pd = dtype if pdt == "same" else DT[pdt]
                    N, C = shape[0], shape[1]
                    hw = 1
                    for d in shape[2:]:
                        hw *= d
                    x = randn(shape, dtype)
                    w = randn((C,), pd, 0.5, 1.0) if affine else None
                    b = randn((C,), pd, 0.5) if affine else None
                    eps = 1e-4
                    y, _, _ = torch.native_group_norm(x, w, b, N, C, hw, G, eps)
                    sd = saved_dtype(dtype)
                    _, mean, rstd = torch.native_group_norm(x.to(sd), None, None, N, C, hw, G, eps)
                    fcases.append(fcase(f"native_group_norm_{dname}_{pdt}_G{G}_a{int(affine)}_{len(shape)}d",
                                        "group_norm", dname, pdt, {"num_groups": G, "eps": eps},
                                        {"input": x, "weight": w, "bias": b}, {"output": y}, (mean, rstd)))

    errors.append(expect_error("gn_groups_not_dividing_ctor", "groups_not_dividing", gn_layer(2, 5), (2, 5, 3),
                               target="constructor", kind_hint="InvalidArgument"))
    errors.append(expect_error("gn_groups_not_dividing_functional", "groups_not_dividing", None, (3, 5, 2),
                               functional=Fn(lambda x: F.group_norm(x, 2), {"num_groups": 2, "eps": 1e-5}),
                               target="functional", kind_hint="InvalidArgument"))
    errors.append(expect_error("gn_groups_zero_ctor", "groups_zero", gn_layer(0, 4), (2, 4, 3), target="constructor",
                               kind_hint="InvalidArgument"))
    errors.append(expect_error("gn_pseudo_batch_of_one", "batch_of_one_training", gn_layer(4, 4), (1, 4),
                               kind_hint="InvalidArgument"))
    errors.append(expect_error("gn_pseudo_batch_of_one_eval", "batch_of_one_training", gn_layer(4, 4), (1, 4),
                               mode="eval", kind_hint="InvalidArgument"))
    errors.append(expect_error("gn_channel_mismatch", "channel_mismatch", gn_layer(2, 4), (3, 6, 5),
                               kind_hint="ShapeMismatch"))
    errors.append(expect_error("gn_wrong_rank_1d", "wrong_rank", gn_layer(1, 4), (4,), kind_hint="ShapeMismatch"))
    errors.append(expect_error("gn_zero_spatial", "empty_spatial", gn_layer(2, 4), (2, 4, 0),
                               kind_hint="InvalidArgument"))
    return {"family": "group_norm", "cases": cases, "functional": fcases, "errors": errors}


def ln_layer(ns, eps=1e-5, affine=True, bias=True):
    return {"kind": "LayerNorm", "normalized_shape": list(ns), "eps": eps, "elementwise_affine": affine, "bias": bias}


def gen_layer_norm():
    reseed(4)
    cases, fcases, errors = [], [], []
    configs = [  # normalized_shape, input shapes
        ((5,), [(3, 5), (2, 2, 5)]),
        ((7,), [(7,), (1, 7)]),
        ((3, 4), [(2, 3, 4), (1, 2, 3, 4)]),
        ((2, 3, 2), [(2, 2, 3, 2), (2, 3, 2)]),
        ((1,), [(4, 1), (2, 1)]),
        ((13,), [(2, 13), (1, 13)]),
        ((97,), [(2, 97), (1, 97)]),
        ((3, 2), [(2, 3, 3, 2), (1, 3, 3, 2)]),  # rank 4: both layouts
    ]
    for dname in DT:
        for ci, (ns, shapes) in enumerate(configs):
            for affine, bias in ((True, True), (False, True), (True, False)):
                if dname in ("f16", "bf16") and (affine, bias) == (True, False):
                    continue
                layer = ln_layer(ns, affine=affine, bias=bias)
                fmts = ["contiguous"] + (["channels_last"] if len(shapes[0]) == 4 else [])
                for fmt in fmts:
                    if fmt == "channels_last" and len(shapes[1]) != 4:
                        continue
                    name = f"ln_{'x'.join(map(str, ns))}_{dname}_a{int(affine)}_b{int(bias)}_{fmt}"
                    cases.append(module_case(name, layer, dname, [shapes[0], shapes[1], shapes[0]],
                                             ["train", "train", "eval"], fmt=fmt))
        if dname in ("f16", "bf16"):
            cases.append(module_case(f"ln_mixed_f32_params_{dname}", ln_layer((6,)), dname, [(3, 6), (2, 6)],
                                     ["train", "eval"], pdt="f32"))
    # spec §6.3 worked example
    cases.append(module_case("spec_6_3_worked_example", ln_layer((4,)), "f64", None, ["train"], init_random=False,
                             inputs=[torch.tensor([[1.0, 2, 4, 8]], dtype=torch.float64)]))
    # constant row -> 0 (eps > 0), with affine -> bias
    cases.append(module_case("constant_row_gives_bias", ln_layer((4,)), "f32", None, ["train"],
                             inputs=[torch.tensor([[3.0, 3, 3, 3], [1, 2, 3, 4]])]))
    cases.append(module_case("eps0_constant_row_nan", ln_layer((4,), eps=0.0, affine=False), "f64", None, ["train"],
                             inputs=[torch.tensor([[3.0, 3, 3, 3], [1, 2, 3, 4]], dtype=torch.float64)],
                             check_ref=False))
    cases.append(module_case("zero_rows_empty", ln_layer((4,)), "f32", [(0, 4)], ["train"]))
    cases.append(module_case("large_mean_1e4_std_1e-2", ln_layer((64,)), "f32", [(3, 64)], ["train"], scale=1e-2,
                             offset=1e4, f64_expected=True))

    # functional: native_layer_norm
    for dname in DT:
        for pdt in (["same"] if dname in ("f32", "f64") else ["same", "f32"]):
            for affine in (True, False):
                for ns, shape in (((4,), (3, 4)), ((2, 3), (2, 2, 3)), ((5,), (5,))):
                    dtype = DT[dname]
                    pd = dtype if pdt == "same" else DT[pdt]
                    x = randn(shape, dtype)
                    w = randn(ns, pd, 0.5, 1.0) if affine else None
                    b = randn(ns, pd, 0.5) if affine else None
                    y, _, _ = torch.native_layer_norm(x, list(ns), w, b, 1e-5)
                    sd = saved_dtype(dtype)
                    _, mean, rstd = torch.native_layer_norm(x.to(sd), list(ns), None, None, 1e-5)
                    fcases.append(fcase(f"native_layer_norm_{dname}_{pdt}_{'x'.join(map(str, ns))}_a{int(affine)}",
                                        "layer_norm", dname, pdt, {"normalized_shape": list(ns), "eps": 1e-5},
                                        {"input": x, "weight": w, "bias": b}, {"output": y}, (mean, rstd)))

    errors.append(expect_error("ln_normalized_shape_mismatch", "normalized_shape_mismatch", ln_layer((4,)), (2, 3),
                               kind_hint="ShapeMismatch"))
    errors.append(expect_error("ln_normalized_shape_mismatch_multi", "normalized_shape_mismatch", ln_layer((3, 4)),
                               (2, 4, 3), kind_hint="ShapeMismatch"))
    errors.append(expect_error("ln_input_rank_too_small", "normalized_shape_mismatch", ln_layer((2, 3)), (3,),
                               kind_hint="ShapeMismatch"))
    errors.append(expect_error(
        "ln_empty_normalized_shape", "normalized_shape_empty", None, (2, 3), target="functional",
        functional=Fn(lambda x: F.layer_norm(x, []), {"normalized_shape": [], "eps": 1e-5}),
        kind_hint="InvalidArgument"))
    return {"family": "layer_norm", "cases": cases, "functional": fcases, "errors": errors}


def lrn_layer(size, alpha=1e-4, beta=0.75, k=1.0):
    return {"kind": "LocalResponseNorm", "size": size, "alpha": alpha, "beta": beta, "k": k}


def gen_lrn():
    reseed(5)
    cases, fcases, errors = [], [], []
    configs = [  # size, alpha, beta, k, shape
        (1, 1e-4, 0.75, 1.0, (2, 3, 4)),
        (2, 0.5, 0.75, 1.0, (2, 5, 3)),
        (3, 1.0, 0.5, 2.0, (1, 7, 2, 3)),
        (4, 0.3, 0.75, 1.0, (2, 6, 2, 2)),
        (5, 0.2, 1.0, 1.5, (1, 4, 2, 1, 3)),
        (7, 1.0, 0.75, 1.0, (2, 3, 2)),  # size > C
        (6, 0.7, 0.6, 0.5, (1, 13, 1, 2, 1, 2)),  # rank 6
        (3, 0.1, 0.75, 1.0, (1, 2, 97)),
    ]
    for dname in DT:
        for (size, alpha, beta, k, shape) in configs:
            layer = lrn_layer(size, alpha, beta, k)
            fmts = ["contiguous"] + (["channels_last"] if len(shape) in (4, 5) else [])
            for fmt in fmts:
                dev = "lrn_low_precision_rank" if dname in ("f16", "bf16") and len(shape) >= 4 else None
                name = f"lrn_size{size}_{len(shape)}d_{dname}_{fmt}"
                s2 = (shape[0] + 1,) + shape[1:]
                cases.append(module_case(name, layer, dname, [shape, s2], ["train", "eval"], fmt=fmt, deviation=dev,
                                         scale=2.0))
    # spec §8.3 worked examples
    x = torch.tensor([1.0, 2, 3, 4], dtype=torch.float64).reshape(1, 4, 1)
    for size in (2, 3):
        cases.append(module_case(f"spec_8_3_worked_example_size{size}", lrn_layer(size, 1.0, 1.0, 1.0), "f64", None,
                                 ["train"], inputs=[x]))
    # f16 overflow: PyTorch squares in f16 -> inf -> output 0; normkit is correct: f64 reference
    for shape in ((2, 4, 5), (1, 3, 2, 3)):
        reseed(55)
        case = new_case(f"lrn_f16_large_values_{len(shape)}d", lrn_layer(3, 1e-4, 0.75, 1.0), "f16")
        xh = randn(shape, torch.float16, 300.0)
        m = build_module(case["layer"], torch.float64)
        y = m(xh.to(torch.float64)).to(torch.float16)
        case["init_state"] = {}
        case["steps"] = [{"mode": "train", "shape": list(shape), "input": flat(xh), "output": flat(y), "state": {}}]
        case["pytorch_deviation"] = "lrn_f16_overflow"
        case["expected_source"] = "float64_reference"
        cases.append(case)
    cases.append(module_case("lrn_empty_input", lrn_layer(3), "f32", [(0, 3, 4)], ["train"]))
    cases.append(module_case("lrn_large_mean_1e4_std_1e-2", lrn_layer(3, 1e-4, 0.75, 1.0), "f32", [(2, 5, 4)],
                             ["train"], scale=1e-2, offset=1e4,
                             f64_expected=True))

    for dname in DT:
        x = randn((2, 4, 3), DT[dname])
        y = F.local_response_norm(x, 3, 0.4, 0.8, 1.2)
        fcases.append(fcase(f"local_response_norm_{dname}", "local_response_norm", dname, "same",
                            {"size": 3, "alpha": 0.4, "beta": 0.8, "k": 1.2}, {"input": x}, {"output": y}))
    errors.append(expect_error("lrn_size_zero", "lrn_size_zero", lrn_layer(0), (1, 3, 4), kind_hint="InvalidArgument"))
    errors.append(expect_error("lrn_wrong_rank_2d", "wrong_rank", lrn_layer(2), (2, 3), kind_hint="ShapeMismatch"))
    return {"family": "local_response_norm", "cases": cases, "functional": fcases, "errors": errors}


def main():
    files = {
        "batch_norm.json": gen_batch_norm,
        "instance_norm.json": gen_instance_norm,
        "group_norm.json": gen_group_norm,
        "layer_norm.json": gen_layer_norm,
        "local_response_norm.json": gen_lrn,
    }
    total = 0
    for fname, fn in files.items():
        data = fn()
        data = {"torch_version": torch.__version__.split("+")[0], "seed": SEED, **data}
        text = json.dumps(data, separators=(",", ":"), allow_nan=False)
        path = os.path.join(OUT_DIR, fname)
        with open(path, "w") as f:
            f.write(text)
            f.write("\n")
        total += len(text)
        print(f"{fname}: {len(data['cases'])} module cases, {len(data['functional'])} functional, "
              f"{len(data['errors'])} errors, {len(text) / 1024:.0f} KiB")
    print(f"total {total / 1024:.0f} KiB")


if __name__ == "__main__":
    sys.exit(main())
