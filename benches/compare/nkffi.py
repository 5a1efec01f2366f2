"""normkit's C ABI (include/normkit.h) through ctypes, on PyTorch's tensors: the ops the standard
cases time, for `compare.py --in-process`.

The two libraries then run in one process on the same memory (normkit reads PyTorch's input,
parameter and statistics tensors in place and writes its outputs into tensors PyTorch
allocated), so neither side's timing depends on where its own buffers happened to land: on this
project's Zen 4 VM one C scale loop ran at 13.7 to 27 GB/s over fresh mappings of its two
buffers within the hour (docs/perf/cpu.md, round 20). Only the structs and functions used here
are declared; their layouts follow include/normkit.h (the _init functions set struct_size, which
the library checks).
"""

import ctypes as C
import math

import torch

OK = 0
DEVICE_CPU = 1
CODE_FLOAT, CODE_BFLOAT = 2, 4
DTYPES = {torch.float32: (CODE_FLOAT, 32), torch.float64: (CODE_FLOAT, 64),
          torch.float16: (CODE_FLOAT, 16), torch.bfloat16: (CODE_BFLOAT, 16)}


class Device(C.Structure):
    _fields_ = [("device_type", C.c_int32), ("device_id", C.c_int32)]


class DType(C.Structure):
    _fields_ = [("code", C.c_uint8), ("bits", C.c_uint8), ("lanes", C.c_uint16)]


class Tensor(C.Structure):
    _fields_ = [("data", C.c_void_p), ("device", Device), ("ndim", C.c_int32),
                ("dtype", DType), ("shape", C.POINTER(C.c_int64)),
                ("strides", C.POINTER(C.c_int64)), ("byte_offset", C.c_uint64)]


class ContextConfig(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("abi_version", C.c_uint32), ("device", Device),
                ("stream", C.c_void_p), ("cpu_num_threads", C.c_int32), ("flags", C.c_uint32)]


P = C.POINTER(Tensor)


class BatchNormArgs(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("momentum_cumulative", C.c_bool), ("x", P),
                ("y", P), ("weight", P), ("bias", P), ("running_mean", P), ("running_var", P),
                ("num_batches_tracked", C.POINTER(C.c_int64)), ("save_mean", P),
                ("save_invstd", P), ("momentum", C.c_double), ("eps", C.c_double)]


class InstanceNormArgs(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("use_input_stats", C.c_bool), ("x", P), ("y", P),
                ("weight", P), ("bias", P), ("running_mean", P), ("running_var", P),
                ("save_mean", P), ("save_invstd", P), ("momentum", C.c_double),
                ("eps", C.c_double)]


class GroupNormArgs(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("x", P), ("y", P), ("weight", P), ("bias", P),
                ("save_mean", P), ("save_invstd", P), ("num_groups", C.c_int64),
                ("eps", C.c_double)]


class LayerNormArgs(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("normalized_ndim", C.c_int32), ("x", P),
                ("y", P), ("weight", P), ("bias", P), ("save_mean", P), ("save_invstd", P),
                ("eps", C.c_double)]


class LrnArgs(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("x", P), ("y", P), ("size", C.c_int64),
                ("alpha", C.c_double), ("beta", C.c_double), ("k", C.c_double)]


class NormBackwardArgs(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("accumulate", C.c_bool), ("x", P),
                ("grad_output", P), ("weight", P), ("save_mean", P), ("save_invstd", P),
                ("running_mean", P), ("running_var", P), ("grad_input", P),
                ("grad_weight", P), ("grad_bias", P), ("eps", C.c_double)]


class GroupNormBackwardArgs(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("accumulate", C.c_bool), ("x", P),
                ("grad_output", P), ("weight", P), ("save_mean", P), ("save_invstd", P),
                ("grad_input", P), ("grad_weight", P), ("grad_bias", P),
                ("num_groups", C.c_int64)]


class LayerNormBackwardArgs(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("accumulate", C.c_bool),
                ("normalized_ndim", C.c_int32), ("x", P), ("grad_output", P), ("weight", P),
                ("save_mean", P), ("save_invstd", P), ("grad_input", P), ("grad_weight", P),
                ("grad_bias", P)]


# each op's argument struct, and each struct's _init function
OPS = {
    "batch_norm_forward_training": BatchNormArgs,
    "batch_norm_forward_inference": BatchNormArgs,
    "instance_norm_forward": InstanceNormArgs,
    "group_norm_forward": GroupNormArgs,
    "layer_norm_forward": LayerNormArgs,
    "local_response_norm_forward": LrnArgs,
    "batch_norm_backward": NormBackwardArgs,
    "group_norm_backward": GroupNormBackwardArgs,
    "layer_norm_backward": LayerNormBackwardArgs,
}
INITS = {BatchNormArgs: "batch_norm_args_init", InstanceNormArgs: "instance_norm_args_init",
         GroupNormArgs: "group_norm_args_init", LayerNormArgs: "layer_norm_args_init",
         LrnArgs: "local_response_norm_args_init", NormBackwardArgs: "norm_backward_args_init",
         GroupNormBackwardArgs: "group_norm_backward_args_init",
         LayerNormBackwardArgs: "layer_norm_backward_args_init"}


class Normkit:
    """libnormkit loaded, with one CPU context of `threads` threads."""

    def __init__(self, path, threads):
        self.lib = C.CDLL(path)
        self.lib.normkit_last_error_message.restype = C.c_char_p
        cfg = ContextConfig()
        self.check("context_config_init", self.lib.normkit_context_config_init(C.byref(cfg)))
        cfg.device = Device(DEVICE_CPU, 0)
        cfg.cpu_num_threads = threads
        self.ctx = C.c_void_p()
        self.check("context_create",
                   self.lib.normkit_context_create(C.byref(cfg), C.byref(self.ctx)))
        self.keep = []  # shape/stride arrays the views point to

    def close(self):
        if self.ctx:
            self.lib.normkit_context_destroy(self.ctx)
            self.ctx = None

    def check(self, what, status):
        if status != OK:
            msg = self.lib.normkit_last_error_message()
            raise RuntimeError(f"normkit_{what}: status {status}: "
                               f"{msg.decode() if msg else 'no message'}")

    def view(self, t):
        """A normkit_tensor_t over torch tensor `t` (None for None), kept alive with `self`."""
        if t is None:
            return None
        code, bits = DTYPES[t.dtype]
        shape = (C.c_int64 * t.dim())(*t.shape)
        strides = (C.c_int64 * t.dim())(*t.stride())
        self.keep += [shape, strides, t]
        v = Tensor(t.data_ptr(), Device(DEVICE_CPU, 0), t.dim(), DType(code, bits, 1), shape,
                   strides, 0)
        self.keep.append(v)
        return C.pointer(v)

    def op(self, name, **fields):
        """A zero-argument callable running normkit_`name` with these args (tensors as torch
        tensors or None; other fields as values)."""
        struct = OPS[name]
        args = struct()
        self.check(INITS[struct], getattr(self.lib, "normkit_" + INITS[struct])(C.byref(args)))
        for k, v in fields.items():
            setattr(args, k, self.view(v) if isinstance(v, torch.Tensor) else v)
        self.keep.append(args)
        fn = getattr(self.lib, "normkit_" + name)
        ctx, ref = self.ctx, C.byref(args)

        def run():
            status = fn(ctx, ref)
            if status != OK:
                self.check(name, status)
        return run

    def backward(self, layer, x, w, b, dy, **fields):
        """normkit's backward of `layer` ("BatchNorm", "GroupNorm" with `num_groups`,
        "LayerNorm" with `normalized_ndim`; `eps`) from the float32 statistics its forward
        saves, run here once: (run, (dx, dweight, dbias), (save_mean, save_invstd)), `run`
        a zero-argument callable that writes the three gradients."""
        if layer.startswith("BatchNorm"):
            ops, stats = ("batch_norm_forward_training", "batch_norm_backward"), x.shape[1]
        elif layer == "GroupNorm":
            ops, stats = ("group_norm_forward", "group_norm_backward"), x.shape[0] * fields["num_groups"]
        else:
            norm = math.prod(x.shape[x.dim() - fields["normalized_ndim"]:])
            ops, stats = ("layer_norm_forward", "layer_norm_backward"), x.numel() // norm
        mean, inv = torch.empty(stats), torch.empty(stats)
        self.op(ops[0], x=x, y=torch.empty_like(x), weight=w, bias=b, save_mean=mean,
                save_invstd=inv, **fields)()
        grads = (torch.empty_like(x), torch.empty_like(w), torch.empty_like(b))
        bwd = {k: v for k, v in fields.items() if k != "eps" or layer.startswith("BatchNorm")}
        run = self.op(ops[1], x=x, grad_output=dy, weight=w, save_mean=mean, save_invstd=inv,
                      grad_input=grads[0], grad_weight=grads[1], grad_bias=grads[2], **bwd)
        return run, grads, (mean, inv)
